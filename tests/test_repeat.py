"""--repeat through the real command line: fresh servers, one result per repetition, rounds
that interleave across cells, and `auto` stopping by itself."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench.cells.repeat import WARMUP_REPETITION, earlier_repetitions
from bench.cells.rounds import CellRounds, order
from bench.cells.runner import listening_on
from bench.report import collect
from bench.results import Cell
from bench.servers.running import RunningServer

SHORT = ["--workload", "health", "--duration", "0.3", "--warmup", "0.1", "--concurrency", "1"]


def bench(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bench", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=300,
        env=dict(os.environ),
    )


def test_rounds_alternate_their_order() -> None:
    cells = [CellRounds(Cell(server="python", db=db)) for db in ("sqlite", "postgres")]
    assert [c.cell.db for c in order(cells, 1)] == ["sqlite", "postgres"]
    assert [c.cell.db for c in order(cells, 2)] == ["postgres", "sqlite"]
    assert [c.cell.db for c in order(cells, 3)] == ["sqlite", "postgres"]


@pytest.mark.slow
def test_auto_stops_by_itself_and_records_why(
    tmp_path: Path, prefect_server: RunningServer
) -> None:
    # a 100% target is met as soon as an interval can be told (3 counted repetitions after
    # the warm-up), or a few later on a busy machine
    out = bench(
        *("run", "--url", prefect_server.base_url, "--repeat", "auto", "--target", "100"),
        *("--out", str(tmp_path), *SHORT),
        cwd=tmp_path,
    )
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    (run,) = tmp_path.iterdir()
    reps = earlier_repetitions(tmp_path, run.name, Cell(server="external"))
    n = len(reps)  # how many the noise of this machine took: at least the warm-up and three
    assert n >= 4 and [r.repetition for r in reps] == list(range(1, n + 1))
    assert [p.name for p in sorted(run.glob("*.json"))] == sorted(
        ["external.json", *(f"external.{k}.json" for k in range(2, n + 1))]
    )
    assert reps[0].discarded == WARMUP_REPETITION and not any(r.discarded for r in reps[1:])
    states = [r.repeat for r in reps]
    assert all(s is not None for s in states)
    assert [s.stopped for s in states if s] == [None] * (n - 1) + ["target"]
    last = states[-1]
    assert last and last.counted == n - 1
    assert last.interval_pct is not None and last.widest_pct is not None
    assert last.widest_pct <= 100
    assert "every interval within the target" in out.stdout
    # a repeated run is read as repetitions of one cell, not as duplicates
    results, warnings = collect([tmp_path])
    assert len(results) == n and not warnings


@pytest.mark.slow
def test_matrix_runs_rounds_each_a_fresh_server(tmp_path: Path) -> None:
    # One cell keeps CI short: the order of the rounds is test_rounds_alternate_their_order's.
    out = bench(
        "matrix",
        *("--server", "python", "--db", "sqlite", "--broker", "memory", "--repeat", "2"),
        *("--keep-first", "--out", str(tmp_path), *SHORT),
        cwd=tmp_path,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "round 1: python-sqlite-memory" in out.stdout
    assert "round 2: python-sqlite-memory" in out.stdout and "round 3" not in out.stdout
    results, _ = collect([p for p in tmp_path.iterdir() if p.is_dir()])
    assert [r.repetition for r in results] == [1, 2]
    assert results[1].repeat and results[1].repeat.stopped == "count"
    assert (tmp_path / "report.md").exists()
    servers = {r.server.startup_s for r in results if r.server}
    assert len(results) == 2 and None not in servers  # each repetition started its server
    for r in results:  # pinned apart from the load generator by default
        assert r.config.server_cpus and r.config.client_cpus
        assert not set(r.config.server_cpus) & set(r.config.client_cpus)


@pytest.mark.slow
def test_a_url_server_is_the_cells_own_found_by_its_socket(prefect_server: RunningServer) -> None:
    """Behind --url the server is not our descendant: its CPU must not count as another's."""
    tree = {p.pid for p in prefect_server.process.tree()}
    assert listening_on(prefect_server.port)() & tree
