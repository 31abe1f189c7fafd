"""--repeat through the real command line: fresh servers, one result per repetition, rounds
that interleave across cells, and `auto` stopping by itself."""

from __future__ import annotations

import dataclasses
import io
from pathlib import Path

import pytest
from rich.console import Console

from bench.cells import repeat
from bench.cells.repeat import (
    WARMUP_REPETITION,
    earlier_repetitions,
    prepare,
    repetition_path,
    result_line,
    run_repetitions,
)
from bench.cells.rounds import CellRounds, order, summary
from bench.cells.runner import CellRun, listening_on
from bench.config.run import RunConfig
from bench.core.errors import ConfigError
from bench.observe.progress import Progress
from bench.report import collect
from bench.results import Cell, RepeatState, Result, load_result, result_path, write_result
from bench.servers.running import RunningServer
from tests.helpers import REPORT_RUN, bench

SHORT = ["--workload", "health", "--duration", "0.3", "--warmup", "0.1", "--concurrency", "1"]


def _ok_result() -> Result:
    [result] = [r for r in collect([REPORT_RUN])[0] if r.cell.name == "zig-sqlite-memory"]
    return result


def test_a_cell_never_overwrites_a_result_and_goes_on_from_its_repetitions(
    tmp_path: Path,
) -> None:
    first = _ok_result().model_copy(update={"repetition": 1})
    once = CellRun(first.cell, first.run_id, tmp_path, RunConfig(), server=None)
    assert prepare(once) == []
    assert list((tmp_path / first.run_id).iterdir()) == []  # writable, and the probe is gone
    write_result(first, result_path(tmp_path, first.run_id, first.cell))
    with pytest.raises(ConfigError, match="exists: results are never overwritten"):
        prepare(once)
    # repeated: the repetitions written so far, whatever order their files list in
    repeated = dataclasses.replace(once, config=RunConfig(repeat=3))
    for k in (10, 2):
        rep = first.model_copy(update={"repetition": k})
        write_result(rep, repetition_path(tmp_path, first.run_id, first.cell, k))
    assert [r.repetition for r in prepare(repeated)] == [1, 2, 10]
    copy = tmp_path / "copy.json"
    copy.write_text("{}")
    with pytest.raises(ConfigError, match=r"copy\.json exists"):
        prepare(repeated, copy)
    assert copy.read_text() == "{}"


def _fake_cells(monkeypatch: pytest.MonkeyPatch, statuses: list[str]) -> list[str]:
    """run_cell replaced: each call returns the next of `statuses` on a copy of an ok result;
    the stages the loop announced are returned as they come."""
    stages: list[str] = []
    left = iter(statuses)

    def run_cell(run: CellRun, progress: Progress) -> Result:
        return _ok_result().model_copy(update={"status": next(left)}, deep=True)

    monkeypatch.setattr(repeat, "run_cell", run_cell)
    monkeypatch.setattr(Progress, "stage", lambda self, text: stages.append(text))
    return stages


def _progress() -> Progress:
    return Progress(Console(file=io.StringIO()), "zig-sqlite-memory")


def test_repetitions_run_to_their_count_each_written_when_done(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    stages = _fake_cells(monkeypatch, ["ok"] * 4)
    template = _ok_result()
    run = CellRun(template.cell, template.run_id, tmp_path, RunConfig(repeat=2), server=None)
    written = []
    for result, path in run_repetitions(run, _progress(), prepare(run)):
        assert load_result(path) == result  # written before it is handed on
        written.append((result.repetition, path.name, result.repeat and result.repeat.stopped))
    # the warm-up and the two counted
    assert written == [
        (1, "zig-sqlite-memory.json", None),
        (2, "zig-sqlite-memory.2.json", None),
        (3, "zig-sqlite-memory.3.json", "count"),
    ]
    assert stages[0] == "repetition 1 (the warm-up: run and kept, not counted)"
    assert stages[1:] == ["repetition 2", "repetition 3"]


def test_cost_repetitions_all_count_each_server_leaving_out_its_own_first_block(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    stages = _fake_cells(monkeypatch, ["ok"] * 3)
    template = _ok_result()
    config = RunConfig(repeat=2, cost=True, concurrency=[1])
    run = CellRun(template.cell, template.run_id, tmp_path, config, server=None)
    results = [result for result, _ in run_repetitions(run, _progress(), prepare(run))]
    assert [(r.repetition, r.discarded) for r in results] == [(1, None), (2, None)]
    assert stages == ["repetition 1", "repetition 2"]


def test_a_round_runs_one_repetition_after_those_written_and_a_failure_ends_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _fake_cells(monkeypatch, ["ok", "ok", "failed", "ok"])
    template = _ok_result()
    run = CellRun(template.cell, template.run_id, tmp_path, RunConfig(repeat=5), server=None)
    rounds = [list(run_repetitions(run, _progress(), prepare(run), one=True)) for _ in range(2)]
    assert [[r.repetition for r, _ in got] for got in rounds] == [[1], [2]]
    # the next repetition fails: none follows, though three more were asked for
    [(failed, _)] = list(run_repetitions(run, _progress(), prepare(run)))
    assert failed.repetition == 3 and failed.status == "failed"
    # a cell run once: its one result, where a cell's result goes, and no repetition fields
    once = dataclasses.replace(run, run_id="once", config=RunConfig())
    [(result, path)] = list(run_repetitions(once, _progress(), prepare(once)))
    assert path == result_path(tmp_path, "once", template.cell)
    assert result.repetition is None and result.repeat is None


def test_a_repetitions_line_says_where_the_cell_stands() -> None:
    result = _ok_result()
    assert result_line(result) == "zig-sqlite-memory: ok"
    warmup = result.model_copy(
        update={"repetition": 1, "discarded": WARMUP_REPETITION, "repeat": RepeatState(counted=0)}
    )
    assert result_line(warmup) == "zig-sqlite-memory: ok (repetition 1, the warm-up, not counted)"
    last = result.model_copy(
        update={
            "repetition": 4,
            "repeat": RepeatState(counted=3, interval_pct=2.5, stopped="target"),
        }
    )
    assert result_line(last) == (
        "zig-sqlite-memory: ok (repetition 4, total ±2.5%; "
        "stopped: every interval within the target)"
    )


def test_a_failed_cells_line_is_one_line() -> None:
    # an error written before causes were one line (a log's last lines after it) reads as one
    error = "the zig server exited with code 1; last lines of s.log:\npanic: boom\n  at main"
    failed = _ok_result().model_copy(update={"status": "failed", "error": error})
    assert result_line(failed) == (
        "zig-sqlite-memory: failed: the zig server exited with code 1; last lines of s.log: "
        "panic: boom at main"
    )


def test_the_matrix_ends_with_each_cells_repetitions_and_why_they_stopped() -> None:
    result = _ok_result()
    stopped = RepeatState(
        counted=2, interval_pct=1.5, widest="health p50", widest_pct=4, stopped="count"
    )
    done = CellRounds(
        result.cell, [result, result.model_copy(update={"repetition": 2, "repeat": stopped})]
    )
    never = CellRounds(Cell(server="python", db="sqlite", broker="memory"))
    console = Console(file=io.StringIO(), width=200, record=True)
    console.print(summary("r1", [done, never]))
    text = console.export_text()
    assert text.startswith("run r1") and "total ±95%" in text
    rows = [line.split("│")[1:-1] for line in text.splitlines()]  # the body's rows
    assert [[cell.strip() for cell in row] for row in rows if row] == [
        ["zig-sqlite-memory", "ok", "2", "1.5%", "4% health p50", "the repetitions asked for"],
        ["python-sqlite-memory", "not run", "0", "", "", ""],
    ]


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
def test_a_url_server_is_the_cells_own_found_by_its_socket(prefect_server: RunningServer) -> None:
    """Behind --url the server is not our descendant: its CPU must not count as another's."""
    tree = {p.pid for p in prefect_server.process.tree()}
    assert listening_on(prefect_server.port)() & tree
