"""The command line as a user meets it: one clear line for bad input, exit codes, Ctrl-C."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

import psutil
import pytest

from bench.cells.commands import VERBOSE_ENV
from bench.cli import (
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_SKIPPED,
    EXIT_USAGE,
    _bug,
    build_parser,
    main,
)
from bench.core.process import wait_until
from bench.report import collect
from bench.results import write_result
from tests.helpers import RESOURCES, StandIn, bench, stand_in


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--server", "nginx"], "unknown server 'nginx' (known: python, python-scaled, zig)"),
        (["--db", "mysql"], "unknown db 'mysql'"),
        (["--broker", "kafka"], "unknown broker 'kafka'"),
        (["--workload", "bogus"], "unknown workload 'bogus'"),
        (["--duration", "0"], "--duration: input should be greater than 0"),
        (["--duration", "-1"], "--duration: input should be greater than 0"),
        (["--duration", "fast"], "invalid float value: 'fast'"),
        (["--warmup", "-1"], "--warmup: input should be greater than or equal to 0"),
        (["--concurrency", "1,0"], "--concurrency: input should be greater than or equal to 1"),
        (["--concurrency", "1,x"], "whole numbers separated by commas"),
        (["--concurrency", ""], "whole numbers separated by commas"),
        (["--run-id", "../escape"], "letters, digits"),
        (["--rate", "0"], "--rate: input should be greater than 0"),
        (["--rate", "lots"], "invalid float value: 'lots'"),
        (["--rate", "inf"], "--rate: input should be a finite number"),
        (["--duration", "nan"], "--duration: input should be a finite number"),
        (["--engine-procs", "0"], "--engine-procs: input should be greater than or equal to 1"),
        (["--server-cpus", "9999"], "is not usable here"),
        (["--client-cpus", "a,b"], "whole numbers separated by commas"),
        (["--tasks", "0"], "--tasks: input should be greater than or equal to 1"),
        (["--tasks", "many"], "invalid int value: 'many'"),
        (["--deployments", "0"], "--deployments: input should be greater than or equal to 1"),
        (["--speedup", "0"], "--speedup: input should be greater than 0"),
        (
            ["--workload", "workers", "--no-services"],
            "--workload workers needs the server's scheduler, which --no-services turns off",
        ),
        (["--workload", "workers", "--rate", "5"], "--rate: workers poll at their own pace"),
        (["--readers", "0"], "--readers: input should be greater than or equal to 1"),
        (
            ["--server-workers", "0"],
            "--server-workers: input should be greater than or equal to 1",
        ),
        (["--workload", "mixed", "--rate", "5"], "--rate: mixed runs its writers and readers"),
        (["--provider", "podman"], "unknown provider 'podman' (known: external, docker, local)"),
        (["--url", "ftp://127.0.0.1/api"], "--url must be an http:// URL"),
        (["--url", "http://192.0.2.1:4200/api"], "--url must point to this machine"),
        (
            ["--url", "http://127.0.0.2:4200/api"],
            "got 127.0.0.2: a load test of a host you do not own is an attack; give --allow-remote",
        ),
        (["--url", "http://bench-server.example/api"], "got bench-server.example: a load test"),
        (["--allow-remote", "--url", "ftp://127.0.0.2/api"], "--url must be an http:// URL"),
        (["--prefect-version", "3.4.25"], "--prefect-version 3.4.25: this environment ("),
        (
            ["--server", "zig", "--prefect-version", "3.9.1"],
            "--prefect-version: the zig server does not run this environment's Prefect",
        ),
        (["--preload", "0"], "--preload: input should be greater than or equal to 1"),
        (["--preload", "-5"], "--preload: input should be greater than or equal to 1"),
        (["--preload", "lots"], "invalid int value: 'lots'"),
        (["--preload-shape", "tasks=1"], "--preload-shape is the shape of a --preload"),
        (["--preload", "10", "--preload-shape", "x=1"], "--preload-shape: expected KEY=N"),
        (
            ["--preload", "10", "--url", "http://127.0.0.1:9/api"],
            "--preload seeds the database of a server the tool starts, not a --url",
        ),
    ],
)
def test_bad_input_is_one_clear_line(
    tmp_path: Path, args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    _one_clear_line(["run", "--out", str(tmp_path), *args], message, capsys)
    assert list(tmp_path.iterdir()) == []  # nothing started, nothing written


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--prefect-python", "3.9.1=/bin/sh"], "give two or more, each once"),
        (
            ["--prefect-python", "3.9.1=/bin/sh", "--prefect-python", "3.9.1=/bin/sh"],
            "give two or more, each once",
        ),
        (["--prefect-python", "3.9.1"], "'3.9.1' is not VERSION=PYTHON"),
        (["--prefect-python", "3.9.1=/no/such/python"], "is not an interpreter one can run"),
        (["--json", "r.json"], "--json writes one result to one path: use `run`, not `matrix`"),
    ],
)
def test_bad_matrix_input_is_one_clear_line(
    tmp_path: Path, args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    _one_clear_line(["matrix", "--out", str(tmp_path), *args], message, capsys)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--history", "file"], "--history: {tmp}/file is not a folder"),
        (["--out", "file/out"], "cannot write the report into {tmp}/file/out: Not a directory"),
    ],
)
def test_bad_report_input_is_one_clear_line(
    tmp_path: Path, args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "file").write_text("")
    (tmp_path / "results").mkdir()
    argv = ["report", str(tmp_path / "results"), "--out", str(tmp_path / "out")]
    argv += [str(tmp_path / a) if "file" in a else a for a in args]
    _one_clear_line(argv, message.format(tmp=tmp_path), capsys)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file", "results"]  # nothing written


def _one_clear_line(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    # in this process (a new interpreter per case would cost a second each): main() as the
    # entry point calls it, with its SIGTERM handler put back afterwards
    handler = signal.getsignal(signal.SIGTERM)
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse's own errors
        code = exc.code
    finally:
        signal.signal(signal.SIGTERM, handler)
    err = capsys.readouterr().err
    assert code == EXIT_USAGE
    assert message in err
    assert len(err.strip().splitlines()) == 1, err


def test_help_lists_every_workload_and_provider(tmp_path: Path) -> None:
    out = bench("run", "--help", cwd=tmp_path)
    assert out.returncode == 0
    text = " ".join(out.stdout.split())
    assert (
        "seed, lifecycle, flow-runs, events, workers, ui, mixed, health:" in text
        and "external, docker, local:" in text
    )
    assert "--zig-binary PATH" in text and "(default 1,4,16,64)" in text


def test_unwritable_results_folder(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    out = bench("run", "--out", str(blocker / "results"), cwd=tmp_path)
    assert out.returncode == EXIT_USAGE
    assert "cannot write results into" in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1


def test_existing_json_path_is_not_overwritten(tmp_path: Path) -> None:
    target = tmp_path / "keep.json"
    target.write_text("{}")
    out = bench("run", "--out", str(tmp_path), "--json", str(target), cwd=tmp_path)
    assert out.returncode == EXIT_USAGE
    assert "never overwritten" in out.stderr
    assert target.read_text() == "{}"


def test_url_not_answering_fails_with_a_result(tmp_path: Path) -> None:
    out = bench(
        "run",
        "--url",
        "http://127.0.0.1:1/api",
        "--out",
        str(tmp_path),
        "--json",
        str(tmp_path / "copy.json"),
        cwd=tmp_path,
    )
    assert out.returncode == EXIT_FAILED
    assert "does not answer" in out.stdout
    copy = json.loads((tmp_path / "copy.json").read_text())
    assert copy["status"] == "failed" and copy["cell"]["server"] == "external"
    assert len(list(tmp_path.glob("*/external.json"))) == 1


def test_skipped_cell_exit_code(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BENCH_ZIG_")}
    out = subprocess.run(
        [sys.executable, "-m", "bench", "run", "--server", "zig", "--out", str(tmp_path)],
        capture_output=True, text=True, cwd=tmp_path, timeout=120, env=env,
    )  # fmt: skip
    assert out.returncode == EXIT_SKIPPED
    (path,) = tmp_path.glob("*/zig-sqlite-memory.json")
    result = json.loads(path.read_text())
    assert result["status"] == "skipped" and "--zig-binary" in result["error"]
    # the config is stored as the command line built it
    assert result["config"]["workload"] == "seed" and result["config"]["concurrency"] == [
        1,
        4,
        16,
        64,
    ]


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_interrupt_stops_the_server_and_writes_a_partial_result(
    tmp_path: Path, sig: signal.Signals
) -> None:
    temp_dirs_before = set(Path(tempfile.gettempdir()).glob("prefect-bench-*"))
    log = tmp_path / "out.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "bench",
                "run",
                "--out",
                str(tmp_path / "results"),
                "--duration",
                "30",
                "--warmup",
                "0",
                "--concurrency",
                "1",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=tmp_path,
        )
    try:
        wait_until(lambda: "measuring" in log.read_text(), timeout_s=120, interval_s=0.1)
        server_pids = [
            p.pid
            for p in psutil.Process(proc.pid).children(recursive=True)
            if "prefect" in " ".join(p.cmdline())
        ]
        assert server_pids, "the server should be running"
        started = time.monotonic()
        proc.send_signal(sig)
        assert proc.wait(timeout=60) == EXIT_INTERRUPTED
        assert time.monotonic() - started < 30, "stopping must not wait for the window to end"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert not [pid for pid in server_pids if psutil.pid_exists(pid)]
    (path,) = (tmp_path / "results").glob("*/python-sqlite-memory.json")
    result = json.loads(path.read_text())
    assert result["status"] == "failed" and result["error"] == "interrupted"
    assert result["server"]["startup_s"] > 0
    assert set(Path(tempfile.gettempdir()).glob("prefect-bench-*")) <= temp_dirs_before


def test_report_writes_files_and_prints_whole_tables_into_a_pipe(tmp_path: Path) -> None:
    resources = RESOURCES / "report"
    out = bench("report", str(resources), "--out", str(tmp_path / "out"), cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "out" / "report.md").read_text().startswith("# prefect-bench report")
    assert (tmp_path / "out" / "report.html").exists()
    # resources/report/bad holds unreadable results: warned of on stderr, not in the output
    assert "warning: " in out.stderr and "warning: " not in out.stdout
    # not a terminal: rows are not wrapped at 80 columns, so cell names stay whole
    assert re.search(r"zig\s+sqlite\s+memory\s+ok", out.stdout), out.stdout[:2000]


def test_report_against_a_baseline_folder(tmp_path: Path) -> None:
    [zig] = [r for r in collect([RESOURCES / "report"])[0] if r.cell.name == "zig-sqlite-memory"]
    for side, scale in (("before", 1.0), ("after", 0.5)):
        for i in range(4):
            eps = [
                ep.model_copy(update={"rps": ep.rps * scale * (1 + i / 100)})
                for ep in zig.endpoints
            ]
            run = zig.model_copy(update={"run_id": f"{side}{i}", "endpoints": eps})
            write_result(run, tmp_path / side / f"{side}{i}" / "zig-sqlite-memory.json")
    out = bench("report", "after", "--baseline", "before", "missing", "--out", "out", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "warning: baseline: missing: no such file or directory" in out.stderr
    report = (tmp_path / "out" / "report.md").read_text()
    assert "## Against the baseline" in report
    assert "0.50× p=0.029" in report


# -- one line per failure (issue 21, part 3) ---------------------------------------------------

TRACEBACK = "Traceback (most recent call last)"


class _AnswersAList(StandIn):
    """A server the seed workload does not expect: /api/health answers, and creating a flow
    answers 201 with a JSON list where the workload reads an object's id, so that the cell
    meets an exception prefect-bench did not expect (a bug) halfway through."""

    answers: ClassVar[dict[str, tuple[int, bytes]]] = {
        "/api/health": (200, b"true"),
        "/api/flows/": (201, b"[]"),
    }


@pytest.fixture
def answers_a_list() -> Iterator[str]:
    """The API URL of an _AnswersAList server on a free port of 127.0.0.1."""
    with stand_in(_AnswersAList) as url:
        yield url


@pytest.mark.parametrize("verbose", [False, True])
def test_a_bug_in_a_cell_is_one_line_and_its_traceback_is_in_the_cells_log(
    answers_a_list: str, tmp_path: Path, verbose: bool
) -> None:
    flags = ["-v"] if verbose else []
    out = bench("run", "--url", answers_a_list, "--workload", "seed", "--out", "results",
                "--run-id", "r1", *flags, cwd=tmp_path)  # fmt: skip
    assert out.returncode == EXIT_FAILED, out.stderr
    log = Path("results", "r1", "external", "cell.log")
    error = (
        "internal error (a bug): TypeError: list indices must be integers or slices, not str "
        f"(traceback in {log})"
    )
    assert out.stdout.splitlines()[-1] == f"external: failed: {error}"
    assert (TRACEBACK in out.stderr) is verbose and TRACEBACK not in out.stdout
    kept = (tmp_path / log).read_text()
    assert (
        TRACEBACK in kept and "in created_id" in kept and f"external failed: {error[:60]}" in kept
    )
    result = json.loads((tmp_path / "results" / "r1" / "external.json").read_text())
    assert result["status"] == "failed" and result["error"] == error


BROKEN_SERVER = """
[servers.broken]
command = ["{python}", "-c", "raise RuntimeError('cannot open the database: boom')"]
dbs = ["sqlite"]
brokers = ["memory"]
"""


@pytest.mark.parametrize("verbose", [False, True])
def test_a_server_that_does_not_start_is_one_line_naming_its_cause(
    tmp_path: Path, verbose: bool
) -> None:
    (tmp_path / "servers.toml").write_text(BROKEN_SERVER)
    flags = ["-v"] if verbose else []
    out = bench("run", "--server", "broken", "--servers", "servers.toml", "--out", "results",
                "--run-id", "r1", *flags, cwd=tmp_path)  # fmt: skip
    assert out.returncode == EXIT_FAILED, out.stderr
    folder = Path("results", "r1", "broken-sqlite-memory")
    assert out.stdout.splitlines()[-1] == (
        "broken-sqlite-memory: failed: the broken server exited with code 1 before answering: "
        f"RuntimeError: cannot open the database: boom (log: {folder / 'server.log'})"
    )
    # -v: the server's log's last lines (its own traceback), then ours that raised the error
    assert (TRACEBACK in out.stderr) is verbose
    assert ("the last lines of" in out.stderr and "in _start_on" in out.stderr) is verbose
    kept = (tmp_path / folder / "cell.log").read_text()
    assert f"the last lines of {folder / 'server.log'}:" in kept and "in _start_on" in kept


def test_another_os_is_refused_in_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(sys, "platform", "darwin")
    assert main(["report", "nowhere"]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert err == (
        "prefect-bench: error: prefect-bench runs on Linux (it reads /proc and pins processes "
        "to CPUs); this is darwin: run it in a Linux machine, VM or container\n"
    )


def test_a_matrix_where_every_cell_was_skipped_says_why_and_exits_non_zero(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("BENCH_ZIG_BINARY", raising=False)
    monkeypatch.delenv("BENCH_ZIG_SRC", raising=False)
    out = bench("matrix", "--server", "zig", "--db", "sqlite", "--broker", "memory",
                "--out", "results", cwd=tmp_path)  # fmt: skip
    assert out.returncode == EXIT_SKIPPED, out.stdout + out.stderr
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith("prefect-bench: every cell was skipped: no zig prefect-server given"), (
        last
    )


@pytest.mark.parametrize("quiet", [False, True])
def test_run_url_without_a_workload_names_the_one_it_measures_progress_on_stderr(
    health_only: str, tmp_path: Path, quiet: bool
) -> None:
    flags = ["-q"] if quiet else []
    out = bench("run", "--url", health_only, "--duration", "0.5", "--warmup", "0",
                "--concurrency", "1", "--out", "results", *flags, cwd=tmp_path)  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr
    said = f"no --workload given: measuring health at {health_only} (GET /health only"
    assert out.stderr.startswith(said)
    # stdout: the command's output alone, whether quiet or not; the progress: stderr, or none
    lines = out.stdout.splitlines()
    assert len(lines) == 2 and lines[0].startswith("result: ") and lines[1] == "external: ok"
    assert ("health c=1:" in out.stderr) is not quiet
    assert (len(out.stderr.splitlines()) == 1) is quiet, out.stderr


def test_a_failed_cell_of_a_matrix_is_its_one_line_and_v_reaches_the_cell(
    tmp_path: Path,
) -> None:
    (tmp_path / "servers.toml").write_text(BROKEN_SERVER)
    out = bench("matrix", "--servers", "servers.toml", "--server", "broken", "--db", "sqlite",
                "--broker", "memory", "--out", "results", "-v", cwd=tmp_path)  # fmt: skip
    assert out.returncode == EXIT_FAILED, out.stderr
    assert re.search(
        r"^broken-sqlite-memory: failed: the broken server exited with code 1 before "
        r"answering: RuntimeError: cannot open the database: boom \(log: \S+server.log\)$",
        out.stdout,
        re.MULTILINE,
    ), out.stdout
    assert TRACEBACK in out.stderr  # the cell's process was verbose too


def test_a_bug_outside_a_cell_is_one_line_and_its_traceback_is_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    try:
        {}["missing"]
    except KeyError as exc:
        bug = exc
    assert _bug(bug, verbose=False, argv=["report", "results"]) == EXIT_FAILED
    (kept,) = tmp_path.glob("prefect-bench-traceback-*.log")
    assert capsys.readouterr().err == (
        f"prefect-bench: error: internal error (a bug): KeyError: 'missing' (traceback in {kept})\n"
    )
    text = kept.read_text()
    assert "prefect-bench report results" in text and TRACEBACK in text and "KeyError" in text
    # -v: printed before the line instead
    assert _bug(bug, verbose=True, argv=["report"]) == EXIT_FAILED
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith(TRACEBACK)
    assert err[-1] == "prefect-bench: error: internal error (a bug): KeyError: 'missing'"
    assert len(list(tmp_path.glob("prefect-bench-traceback-*.log"))) == 1


@pytest.mark.parametrize(
    "argv", [["run"], ["matrix"], ["report"], ["compare", "a", "b"], ["conformance"]]
)
def test_verbose_is_an_option_of_every_command_or_the_environments(
    argv: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(VERBOSE_ENV, raising=False)
    assert not build_parser().parse_known_args(argv)[0].verbose
    for flag in ("-v", "--verbose"):
        assert build_parser().parse_known_args([*argv, flag])[0].verbose
    monkeypatch.setenv(VERBOSE_ENV, "1")  # how a matrix's cells are told, and nox's sessions
    assert build_parser().parse_known_args(argv)[0].verbose


def test_a_results_folder_that_cannot_be_written_fails_in_one_line_leaving_nothing(
    tmp_path: Path,
) -> None:
    # a file where the results folder should be: what a read-only or full folder also does
    # (fault_soak.py injects those two; a test cannot make them without root's mounts)
    blocked = tmp_path / "results"
    blocked.write_text("not a folder\n")
    out = bench(
        *("run", "--server", "python", "--db", "sqlite", "--workload", "health"),
        *("--concurrency", "1", "--duration", "0.5", "--warmup", "0", "--out", str(blocked)),
        cwd=tmp_path,
    )
    assert out.returncode == 2, out.stderr  # found before any server starts
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith("prefect-bench: error: cannot write") and str(blocked) in last, last
    assert blocked.read_text() == "not a folder\n" and sorted(tmp_path.iterdir()) == [blocked]
