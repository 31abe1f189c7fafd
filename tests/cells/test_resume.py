"""`matrix --resume`: a matrix killed or interrupted goes on where it stopped, through the real
command line; the run's request and lock; and its bad input, each one clear line.

The matrices here run stand-in servers (python's http.server answering GET /api/health with
`true`: a cell of one takes a few seconds, of a Prefect server ten or more), the second of
which starts only once a file `go` is beside its servers.toml: a cell of it is in the middle of
its run for as long as the test needs, so the kill lands there without timing.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
import pytest

from bench.cells.commands import EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE
from bench.cells.repeat import busy_s
from bench.cells.resume import (
    LOCK_FILE,
    REQUEST_FILE,
    MatrixRequest,
    hold,
    locate,
    read_request,
    write_request,
)
from bench.cells.rounds import CellRounds, due, next_round, standing, standing_line
from bench.cli import main
from bench.core.errors import ConfigError
from bench.core.process import wait_until
from bench.report import collect
from bench.report.aggregate import repetitions
from bench.results import Cell, RepeatState, Result, load_result, write_result
from tests.helpers import REPORT_RUN, bench

SHORT = ["--workload", "health", "--duration", "0.3", "--warmup", "0.1", "--concurrency", "1"]
FIRST, SECOND = "first-sqlite-memory", "second-sqlite-memory"
PYTHON = "python-sqlite-memory"
SERVE = "{python} -m http.server {port} --bind 127.0.0.1 --directory {config_dir}/site"
STANDINS = (
    "[servers.first]\n"
    'description = "not Prefect: GET /api/health answers true"\n'
    f'command = ["sh", "-c", "exec {SERVE}"]\n'
    "[servers.second]\n"
    'description = "not Prefect: GET /api/health answers true, once the file go is here"\n'
    f'command = ["sh", "-c", "until [ -e {{config_dir}}/go ]; do sleep 0.05; done; exec {SERVE}"]\n'
)


def _standin(folder: Path, go: bool) -> Path:
    """A servers.toml in `folder` with the stand-ins; the second's start waits for `go`."""
    (folder / "site" / "api").mkdir(parents=True)
    (folder / "site" / "api" / "health").write_text("true")
    if go:
        (folder / "go").touch()
    servers = folder / "servers.toml"
    servers.write_text(STANDINS)
    return servers


def _matrix_argv(out: Path, servers: Path, cells: list[str], *args: str) -> list[str]:
    """A matrix of run r, the sqlite × memory cells of the servers `cells`, into `out`."""
    return [
        *(sys.executable, "-m", "bench", "matrix", "--out", str(out), "--run-id", "r"),
        *(arg for server in cells for arg in ("--server", server)),
        *("--db", "sqlite", "--broker", "memory", "--servers", str(servers), *args, *SHORT),
    ]


def _start(argv: list[str], log: Path, cwd: Path) -> subprocess.Popen[bytes]:
    """A matrix in a process group of its own (only what this test started is signalled)."""
    with open(log, "wb") as out:
        return subprocess.Popen(
            argv,
            cwd=cwd,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env=dict(os.environ),
        )


def _kept(folder: Path) -> list[tuple[str, int | None, str, str | None]]:
    """The run's results but the interrupted ones: cell, counted repetitions so far, status,
    why it stopped; in the order of their repetitions."""
    results, warnings = collect([folder])
    assert not warnings
    return [
        (
            r.cell.name,
            r.repeat.counted if r.repeat else None,
            r.status,
            r.repeat and r.repeat.stopped,
        )
        for r in results
        if not r.interrupted
    ]


@pytest.mark.slow
def test_a_matrix_killed_mid_run_and_resumed_ends_as_one_never_killed(tmp_path: Path) -> None:
    # the uninterrupted matrix runs meanwhile, in folders of its own: the same cells × repetitions
    cells, repeat = ["first", "second"], ("--repeat", "2", "--keep-first")
    (tmp_path / "whole").mkdir()
    servers = _standin(tmp_path / "whole", go=True)
    whole = _start(
        _matrix_argv(tmp_path / "whole", servers, cells, *repeat), tmp_path / "whole.log", tmp_path
    )
    (tmp_path / "cut").mkdir()
    servers = _standin(tmp_path / "cut", go=False)
    killed = _start(
        _matrix_argv(tmp_path / "cut", servers, cells, *repeat), tmp_path / "cut.log", tmp_path
    )
    run = tmp_path / "cut" / "r"
    try:
        # round 1: the first, then the second, whose start waits for `go`
        wait_until(lambda: (run / f"{FIRST}.json").exists(), timeout_s=60, interval_s=0.05)
        wait_until(lambda: (run / SECOND / "server.log").exists(), timeout_s=60, interval_s=0.05)
        started = psutil.Process(killed.pid).children(recursive=True)
        assert any("bench run" in " ".join(p.cmdline()) for p in started)
        os.killpg(killed.pid, signal.SIGKILL)
        assert killed.wait(timeout=10) == -signal.SIGKILL
        # the cell the matrix was running is told (SIGTERM as its parent dies): it stops its
        # server and writes its partial result; nothing it started outlives it
        _, alive = psutil.wait_procs(started, timeout=60)
        assert not alive, [(p.pid, p.cmdline()) for p in alive]
    finally:
        if killed.poll() is None:
            os.killpg(killed.pid, signal.SIGKILL)
            killed.wait()
    [cut] = [r for r in collect([run])[0] if r.interrupted]
    assert (cut.cell.name, cut.repetition, cut.error) == (SECOND, 1, "interrupted")
    cut_bytes = (run / f"{SECOND}.json").read_bytes()

    (tmp_path / "cut" / "go").touch()
    out = bench("matrix", "--resume", "r", "--out", str(tmp_path / "cut"), cwd=tmp_path)
    assert out.returncode == EXIT_OK, out.stdout[-3000:] + out.stderr[-3000:]
    assert f"resuming run r: round 1; {FIRST} 1 written; " in out.stderr  # progress
    assert f"{SECOND} 0 written (+1 interrupted, run again)" in out.stderr
    # the rounds go on in their order: round 1's last cell, then round 2 reversed
    assert f"round 1: {SECOND}\n" in out.stderr
    assert f"round 2: {SECOND}, {FIRST}\n" in out.stderr and "round 3" not in out.stderr
    assert out.stdout.count("prefect-bench report") == 1  # the report, once, of the whole run
    assert (run / f"{SECOND}.json").read_bytes() == cut_bytes  # kept as it was

    assert whole.wait(timeout=180) == EXIT_OK, (tmp_path / "whole.log").read_text()[-3000:]
    expected = _kept(tmp_path / "whole" / "r")
    assert expected == [
        (FIRST, 1, "ok", None),
        (FIRST, 2, "ok", "count"),
        (SECOND, 1, "ok", None),
        (SECOND, 2, "ok", "count"),
    ]
    assert _kept(run) == expected
    # the report counts two repetitions of each and names the interrupted one as left out
    counted = repetitions(collect([run])[0])
    assert {cell: rep.counted for (_, cell), rep in counted.items()} == {FIRST: 2, SECOND: 2}
    assert counted["r", SECOND].failed == ((1, "failed: interrupted"),)
    assert "repetition 1: failed: interrupted" in (tmp_path / "cut" / "report.md").read_text()


@pytest.mark.slow
def test_ctrl_c_lets_the_cell_write_its_partial_result_and_resume_runs_it_again(
    tmp_path: Path,
) -> None:
    """A cell run once (no --repeat): interrupted, its result is kept and the rerun goes beside
    it, numbered after it."""
    argv = _matrix_argv(tmp_path / "out", _standin(tmp_path, go=False), ["second"])
    matrix = _start(argv, tmp_path / "matrix.log", tmp_path)
    run = tmp_path / "out" / "r"
    try:
        wait_until(lambda: (run / SECOND / "server.log").exists(), timeout_s=60, interval_s=0.05)
        # a Ctrl-C reaches the matrix alone (its cell has a session of its own): it hands it on
        matrix.send_signal(signal.SIGINT)
        assert matrix.wait(timeout=90) == EXIT_INTERRUPTED
    finally:
        if matrix.poll() is None:
            os.killpg(matrix.pid, signal.SIGKILL)
            matrix.wait()
    log = (tmp_path / "matrix.log").read_text()
    assert f"continue it: python -m bench matrix --resume {run}" in log
    first = load_result(run / f"{SECOND}.json")
    assert first.status == "failed" and first.error == "interrupted" and first.repetition is None

    (tmp_path / "go").touch()
    out = bench("matrix", "--resume", str(run), cwd=tmp_path)
    assert out.returncode == EXIT_OK, out.stdout[-3000:] + out.stderr[-3000:]
    again = load_result(run / f"{SECOND}.2.json")
    assert again.status == "ok" and again.repetition == 2 and again.repeat is None
    assert load_result(run / f"{SECOND}.json") == first
    assert "repetition 1: failed: interrupted" in (tmp_path / "out" / "report.md").read_text()
    # and now there is nothing left to do
    out = bench("matrix", "--resume", str(run), cwd=tmp_path)
    assert out.returncode == EXIT_OK and "run r is finished" in out.stdout


# -- bad input --------------------------------------------------------------------------------


def _result(cell: Cell, run_id: str = "r", **update: object) -> Result:
    [template] = [r for r in collect([REPORT_RUN])[0] if r.cell.name == "zig-sqlite-memory"]
    return template.model_copy(update={"run_id": run_id, "cell": cell, **update}, deep=True)


def _request(run_id: str = "r", *run_args: str) -> MatrixRequest:
    return MatrixRequest(
        run_id=run_id,
        cells=[Cell(server="python", db="sqlite", broker="memory")],
        run_args=list(run_args),
        cwd=os.getcwd(),
        started_at="2026-12-07T00:00:00Z",
    )


def _finished_run(out: Path) -> Path:
    """Run r of one cell, run once, its ok result written: nothing left to do."""
    request = _request("r", *SHORT)
    write_request(request, out / "r")
    write_result(_result(request.cells[0]), out / "r" / f"{PYTHON}.json")
    return out / "r"


def _one_line(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """main(argv) in this process, its SIGTERM handler put back after; (exit code, out, err)."""
    handler = signal.getsignal(signal.SIGTERM)
    try:
        code = main(argv)
    finally:
        signal.signal(signal.SIGTERM, handler)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.mark.parametrize(
    ("make", "given", "message"),
    [
        (lambda out: out / "x", "missing", "--resume {out}/missing: no such run folder"),
        (
            lambda out: (out / "plain").mkdir(),
            "plain",
            "--resume {out}/plain: not a matrix's run (it has no .matrix.json, the request a "
            "matrix writes at its start)",
        ),
        (
            lambda out: (out / "r").mkdir() or (out / "r" / REQUEST_FILE).write_text("{"),
            "r",
            "{out}/r/.matrix.json: not a readable JSON file",
        ),
        (
            lambda out: (
                (out / "r").mkdir()
                or (out / "r" / REQUEST_FILE).write_text('{"schema_version": 99}')
            ),
            "r",
            "{out}/r/.matrix.json: schema_version 99 is not one this version reads (1)",
        ),
        (
            lambda out: _finished_run(out).rename(out / "renamed"),
            "renamed",
            "--resume {out}/renamed: the folder of run r, renamed",
        ),
    ],
)
def test_resume_of_what_is_not_a_run_is_one_clear_line(
    tmp_path: Path,
    make: Callable[[Path], object],
    given: str,
    message: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    make(tmp_path)
    before = sorted(tmp_path.rglob("*"))
    code, out, err = _one_line(["matrix", "--out", str(tmp_path), "--resume", given], capsys)
    assert code == EXIT_USAGE
    assert err.startswith("prefect-bench: error: " + message.format(out=tmp_path)), err
    assert err.count("\n") == 1 and not out
    assert sorted(tmp_path.rglob("*")) == before  # nothing started, nothing written


def test_resume_of_a_finished_run_says_so(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = _finished_run(tmp_path)
    code, out, err = _one_line(["matrix", "--out", str(tmp_path), "--resume", "r"], capsys)
    assert (code, err) == (EXIT_OK, "")
    assert out == (
        "run r is finished: every cell's results are written, nothing to resume (its report: "
        f"python -m bench report {folder})\n"
    )
    # by its folder, from anywhere
    code, out, _ = _one_line(["matrix", "--resume", str(folder)], capsys)
    assert code == EXIT_OK and out.startswith("run r is finished")


def test_resume_with_other_options_says_in_one_line_that_the_runs_own_are_used(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _finished_run(tmp_path)
    argv = ["matrix", "--out", str(tmp_path), "--resume", "r", "--server", "zig"]
    argv += ["--db", "postgres", "--repeat", "5", "--duration", "9"]
    code, out, err = _one_line(argv, capsys)
    assert code == EXIT_OK
    assert err == (  # a warning, on stderr
        "warning: --resume: --server --db --repeat --duration ignored: the run's own options "
        f"are used ({' '.join(SHORT)}, as it was started)\n"
    )
    assert out.startswith("run r is finished") and len(out.splitlines()) == 1


def test_a_new_matrix_into_a_matrixs_run_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _finished_run(tmp_path)
    argv = ["matrix", "--out", str(tmp_path), "--run-id", "r", "--server", "python"]
    code, out, err = _one_line([*argv, "--db", "sqlite", "--broker", "memory"], capsys)
    assert code == EXIT_USAGE and not out
    assert err == (
        f"prefect-bench: error: run r was started by a matrix already ({tmp_path}/r/"
        ".matrix.json): `matrix --resume r` continues it\n"
    )


def test_resume_of_a_run_whose_interpreter_is_gone_is_one_clear_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    request = _request().model_copy(update={"pythons": {"3.8.0": str(tmp_path / "no-python")}})
    write_request(request, tmp_path / "r")
    code, _, err = _one_line(["matrix", "--out", str(tmp_path), "--resume", "r"], capsys)
    assert code == EXIT_USAGE
    gone = f"prefect 3.8.0's interpreter is gone: {tmp_path}/no-python"
    assert err == f"prefect-bench: error: {gone}\n"


# -- the request, the lock, where a run stands ------------------------------------------------


def test_the_request_is_written_once_and_read_back(tmp_path: Path) -> None:
    request = _request("r", "--repeat", "2")
    path = write_request(request, tmp_path / "r")
    assert path == tmp_path / "r" / REQUEST_FILE
    assert json.loads(path.read_text())["schema_version"] == 1
    assert read_request(tmp_path / "r") == request
    with pytest.raises(ConfigError, match="was started by a matrix already"):
        write_request(request, tmp_path / "r")
    # a dot-file: the report and compare, reading every *.json of a run, do not see it
    assert collect([tmp_path]) == ([], [])
    assert locate("r", tmp_path) == tmp_path / "r"
    assert locate(str(tmp_path / "r"), Path("elsewhere")) == tmp_path / "r"


def test_a_run_is_held_by_one_matrix_at_a_time(tmp_path: Path) -> None:
    waited = []
    with hold(tmp_path / "r") as fd:
        assert fd >= 0 and (tmp_path / "r" / LOCK_FILE).exists()
        with (
            pytest.raises(ConfigError, match=f"run r is running: .*{LOCK_FILE}"),
            hold(tmp_path / "r", 0.3, lambda: waited.append(1)),
        ):
            pass
        assert waited == [1]  # said once that it waits
    with hold(tmp_path / "r", 0.3):  # let go of: taken at once
        pass


def _state(name: str, turns: int, done: bool = False, cut: int = 0) -> CellRounds:
    cell = Cell(server=name, db="sqlite", broker="memory")
    results = [_result(cell, repetition=k + 1) for k in range(turns)]
    results += [_result(cell, status="failed", error="interrupted") for _ in range(cut)]
    return CellRounds(cell, results, done)


@pytest.mark.parametrize(
    ("states", "round_no", "cells", "then"),
    [
        # a fresh matrix: round 1 in order, round 2 reversed
        ([("a", 0), ("b", 0), ("c", 0)], 1, ["a", "b", "c"], ["c", "b", "a"]),
        # killed in round 1 after a and b: c alone, then round 2 from c back
        ([("a", 1), ("b", 1), ("c", 0)], 1, ["c"], ["c", "b", "a"]),
        # killed in round 2 (c b a) after c, b interrupted: b and a; round 3 in order
        ([("a", 1), ("b", 1, False, 1), ("c", 2)], 2, ["b", "a"], ["a", "b", "c"]),
        # a done in round 1 (it failed, or its repetitions stopped): never again
        ([("a", 1, True), ("b", 1), ("c", 1)], 2, ["c", "b"], ["b", "c"]),
    ],
)
def test_a_resumed_matrix_starts_in_the_round_it_stopped_in(
    states: list[tuple[Any, ...]], round_no: int, cells: list[str], then: list[str]
) -> None:
    made = [_state(*s) for s in states]
    assert next_round(made) == round_no
    assert [s.cell.server for s in due(made, round_no)] == cells
    assert [s.cell.server for s in due(made, round_no + 1)] == then


def test_where_a_run_stands_is_read_from_its_results(tmp_path: Path) -> None:
    a, b = (Cell(server=s, db="sqlite", broker="memory") for s in ("a", "b"))
    write_result(_result(a, repeat=RepeatState(counted=1)), tmp_path / "r" / "a-sqlite-memory.json")
    stopped = RepeatState(counted=2, stopped="count")
    write_result(
        _result(a, repetition=2, repeat=stopped), tmp_path / "r" / "a-sqlite-memory.2.json"
    )
    write_result(
        _result(b, status="failed", error="interrupted"), tmp_path / "r" / "b-sqlite-memory.json"
    )
    states = standing([a, b], tmp_path, "r")
    assert [(s.turns, s.done) for s in states] == [(2, True), (0, False)]
    assert standing_line(states) == (
        "round 1; a-sqlite-memory 2 written, done; "
        "b-sqlite-memory 0 written (+1 interrupted, run again)"
    )


def test_the_budget_counts_the_time_cells_ran_not_the_time_the_matrix_stood_still(
    tmp_path: Path,
) -> None:
    cell = Cell(server="a", db="sqlite", broker="memory")
    folder = tmp_path / "r"
    day2 = dt.datetime(2026, 12, 8, tzinfo=dt.UTC)
    # 10 s, then killed, resumed a day later: 20 s
    for k, start in enumerate([day2 - dt.timedelta(days=1), day2]):
        end = start + dt.timedelta(seconds=10 * (k + 1))
        path = write_result(
            _result(cell, repetition=k + 1, started_at=_stamp(start), finished_at=_stamp(end)),
            folder / f"a-sqlite-memory.{k + 1}.json",
        )
        os.utime(path, (end.timestamp(), end.timestamp()))  # written as it finished
    (folder / "notes.json").write_text("[]")  # not a result: not counted
    assert busy_s(folder) == 30
    assert busy_s(folder, since=day2.timestamp() + 5) == 15
    assert busy_s(folder, since=day2.timestamp() - 3600, until=day2.timestamp() + 10) == 10


def _stamp(at: dt.datetime) -> str:
    return at.strftime("%Y-%m-%dT%H:%M:%SZ")
