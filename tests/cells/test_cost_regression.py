"""A known regression, caught by instructions: a native binary (tests/fixtures/native_health,
compiled here, standing in for the Zig server: none is built on this machine) and the same
binary with a fixed extra amount of work per request, both counted under callgrind; `compare
--fail-on 'instructions>+1%'` fails on it and names the function the work went to.

The same check on the real python server (tests/fixtures/extra_work: a sha256 per request, put
in by a servers.toml entry; the function named is Python's own sha256 module's
`sha_transform`) starts two Python servers under callgrind, 70 s of CI: it is
benchmarks/cost_precision.py's, which runs it with three fresh servers a side and fails
unless the gate catches the regression and names that function."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.helpers import bench, native_server


def cost_pair(
    tmp_path: Path, servers: str, names: tuple[str, str]
) -> tuple[list[dict[str, float]], subprocess.CompletedProcess[str]]:
    """The health workload's cost on two servers of `servers` (a servers.toml), each a run
    into one run folder: their endpoint's cost, and `compare` of the two gated at +1%."""
    path = tmp_path / "servers.toml"
    path.write_text(servers)
    cost = ("--workload", "health", "--cost", "--cost-block", "10", "--cost-blocks", "3")
    run_id = "20261207T000000Z-0c05"
    common = ("--servers", str(path), "--out", str(tmp_path), "--run-id", run_id)
    for server in names:
        out = bench("run", "--server", server, *common, *cost, cwd=tmp_path, timeout_s=900)
        assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    results = [tmp_path / run_id / f"{name}-sqlite-memory.json" for name in names]
    figures = [json.loads(p.read_text())["endpoints"][0]["cost"] for p in results]
    gate = ("--fail-on", "instructions>+1%")
    return figures, bench("compare", *map(str, results), *gate, cwd=tmp_path)


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("cc") is None, reason="no C compiler to build the fixture")
def test_a_native_server_s_regression_is_named_by_its_function(tmp_path: Path) -> None:
    servers = native_server(tmp_path, "native", 0) + native_server(tmp_path, "native-extra", 20_000)
    figures, out = cost_pair(tmp_path, servers, ("native", "native-extra"))
    # a compiled loop and the kernel's sockets: the same count in every block
    assert figures[0]["spread_pct"] < 1, figures
    assert figures[1]["per_request"] > figures[0]["per_request"] + 20_000, figures
    assert out.returncode == 1, out.stdout + out.stderr
    where = out.stdout.split("### Where the cost went", 1)[1]
    top = next(line for line in where.splitlines() if line.startswith("| `"))
    assert top.startswith("| `extra_work (health_server)` | 0 |"), where
    assert "| `main (health_server)` |" in where  # the same function on both sides
