"""The nox sessions as the README tells people to run them (real venvs, real server)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from bench.matrix import cells
from bench.results import load_result

pytestmark = pytest.mark.skipif(shutil.which("nox") is None, reason="nox is not installed")


def nox(
    repo_root: Path, results: Path, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    env = os.environ | {"BENCH_RESULTS_DIR": str(results)} | (env or {})
    env.pop("VIRTUAL_ENV", None)
    return subprocess.run(
        ["nox", *args], cwd=repo_root, env=env, capture_output=True, text=True, timeout=600
    )


def test_every_cell_is_a_session_named_as_the_design_says(repo_root: Path, tmp_path: Path) -> None:
    """DESIGN.md section 9: server and db always, the broker only where it is not memory."""
    out = nox(repo_root, tmp_path, "-l", "--json", "-s", "bench")
    assert out.returncode == 0, out.stderr
    sessions = [s["session"] for s in json.loads(out.stdout)]
    assert len(sessions) == 12 == len(cells())
    assert sessions[:2] == [
        "bench(server='python', db='sqlite')",
        "bench(server='python', db='sqlite', broker='redis')",
    ]
    assert "bench(server='zig', db='postgres')" in sessions
    assert "bench(server='zig', db='postgres', broker='redis')" in sessions


def test_a_broken_servers_file_breaks_neither_listing_nor_lint(
    repo_root: Path, tmp_path: Path
) -> None:
    broken = tmp_path / "servers.toml"
    broken.write_text("[servers.x\n")
    env = {"BENCH_SERVERS_FILE": str(broken)}
    listed = nox(repo_root, tmp_path, "-l", "--json", "-s", "bench", env=env)
    assert listed.returncode == 0, listed.stderr
    assert len(json.loads(listed.stdout)) == 12  # the built-in servers' cells
    lint = nox(repo_root, tmp_path, "-s", "lint", env=env)
    assert lint.returncode == 0, lint.stdout[-2000:] + lint.stderr[-2000:]
    cell = nox(repo_root, tmp_path, "-s", "bench(server='python', db='sqlite')", env=env)
    assert cell.returncode != 0
    assert "not valid TOML" in cell.stderr


@pytest.mark.slow
def test_one_cell_through_nox(repo_root: Path, tmp_path: Path) -> None:
    out = nox(
        repo_root,
        tmp_path,
        "-s",
        "bench(server='python', db='sqlite')",
        "bench(server='zig', db='sqlite')",
        "--",
        "--duration",
        "0.5",
        "--warmup",
        "0.2",
        "--concurrency",
        "1",
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    (path,) = tmp_path.glob("*/python-sqlite-memory.json")
    result = load_result(path)
    assert result.status == "ok", result.error
    assert len(result.endpoints) == 6
    for ep in result.endpoints:
        assert ep.requests > 0 and ep.rps > 0 and ep.hdr
        lat = ep.latency_ms
        assert lat and lat.min <= lat.p50 <= lat.p90 <= lat.p99 <= lat.p999 <= lat.max
    assert "BENCH_ZIG_BINARY" in out.stderr and "--zig-src" in out.stderr
    assert "skipped" in out.stderr
