"""Servers measured together (`run --server A --beside B`): in each round both servers started
afresh and up at once, each endpoint's windows alternating between them, each server's rounds
written as its cell's repetitions and paired by `compare RUN --before A --after B`. The
measured pair is the native fixture (tests/fixtures/native_health, compiled here) and the same
server with milliseconds of extra work per request: it starts at once, where two real Prefect
servers took 70 s of CI for the same checks (the python server's own cell is tested in
tests/cells/test_runner.py)."""

from __future__ import annotations

import json
import math
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from bench.cells.commands import EXIT_INTERRUPTED, EXIT_USAGE
from bench.cells.together import paired_state
from bench.cli import main
from bench.compare.gate import counted, parse_rule
from bench.core.process import wait_until
from bench.results import load_result
from tests.compare.test_paired import drifting_run
from tests.helpers import bench, extra_work_server, native_server

# A known slowdown: the python server hashing 256 KB per request (tests/fixtures/extra_work),
# several times a GET /health's own time.
SERVERS = extra_work_server("python-extra", 262144)


RUN = ("run", "--server", "python")
MATRIX = ("matrix", "--together", "--db", "sqlite", "--broker", "memory")
PAIR = ("--server", "python", "--server", "python-extra")


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        ([*RUN, "--beside", "python"], "--beside: each server once (python, python)"),
        ([*RUN, "--beside", "python-extra", "--workload", "flow-runs"], "not flow-runs"),
        ([*RUN, "--beside", "python-extra"], "give --repeat N"),
        ([*RUN, "--beside", "python-extra", "--repeat", "1"], "give --repeat N (2 or more) or"),
        ([*RUN, "--beside", "python-extra", "--repeat", "2", "--cost"], "not with --cost"),
        ([*RUN, "--beside", "python-extra", "--repeat", "2", "--json", "x.json"], "--json"),
        ([*RUN, "--beside", "nobody", "--repeat", "2"], "nobody"),
        ([*MATRIX, "--server", "python", "--repeat", "2"], "python-sqlite-memory has none beside"),
        ([*MATRIX, *PAIR, "--workload", "flow-runs", "--repeat", "2"], "--together measures req"),
        ([*MATRIX, *PAIR, "--repeat", "2", "--cost"], "--together measures plain timed windows"),
        ([*MATRIX, *PAIR], "--together pairs rounds: give --repeat N"),
        # --fail-on decides when rounds stop: refused where none wait for it
        ([*RUN, "--fail-on", "rps<-5%", "--repeat", "auto"], "--fail-on decides when"),
        ([*RUN, "--beside", "python-extra", "--fail-on", "rps<-5%", "--repeat", "3"], "decides"),
        ([*RUN, "--beside", "python-extra", "--fail-on", "rps<5", "--repeat", "auto"], "expected"),
        (["matrix", *PAIR, "--repeat", "auto", "--fail-on", "rps<-5%"], "--fail-on decides"),
        # --duet: two servers at once, each pinned with its load by the duet itself
        ([*RUN, "--duet", "--repeat", "2"], "--duet is how servers measured together are"),
        (["matrix", *PAIR, "--duet", "--repeat", "2"], "or --together (matrix)"),
        ([*MATRIX, *PAIR, "--server", "python-scaled", "--duet", "--repeat", "2"], "not 3"),
        (
            [*RUN, "--beside", "python-extra", "--duet", "--repeat", "2", "--server-cpus", "0"],
            "--duet pins each server and one load process to half the usable CPUs: not with --s",
        ),
        ([*MATRIX, *PAIR, "--duet", "--repeat", "2", "--engine-procs", "2"], "--engine-procs"),
        ([*RUN, "--alternate", "--repeat", "2"], "--alternate is how servers measured together"),
        ([*RUN, "--beside", "python-extra", "--duet", "--alternate", "--repeat", "2"], "not both"),
    ],
)
def test_what_cannot_be_measured_together_is_refused_in_one_line(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    argv: list[str],
    says: str,
) -> None:
    (tmp_path / "servers.toml").write_text(SERVERS)
    monkeypatch.chdir(tmp_path)
    assert main([*argv, "--out", str(tmp_path / "r")]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert says in err and len(err.strip().splitlines()) == 1, err
    assert not any(tmp_path.rglob("*.json"))


def gated_slowdown(folder: Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    """`compare` of native and native-extra in the run `folder`, failing on their slowdown."""
    gate = bench(
        "compare", str(folder), "--before", "native", "--after", "native-extra",
        "--fail-on", "rps<-20%", cwd=cwd,
    )  # fmt: skip
    assert gate.returncode == 1, gate.stdout + gate.stderr
    return gate


@pytest.mark.parametrize(
    ("cpus", "argv", "says"),
    [
        ({0}, ("--beside", "python-extra"), "this process may use 1 CPU"),
        ({0, 1}, ("--beside", "python-scaled"), "python-scaled runs 3 processes"),
    ],
)
def test_a_duet_without_a_cpu_for_each_process_is_refused(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    cpus: set[int],
    argv: tuple[str, ...],
    says: str,
) -> None:
    """A duet gives each server half the usable CPUs: refused with one CPU, and for a server
    of more processes (python-scaled: two API workers and its services) than its half has."""
    (tmp_path / "servers.toml").write_text(SERVERS)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: cpus)
    common = ("--duet", "--repeat", "2", "--out", str(tmp_path / "r"))
    assert main([*RUN, *argv, *common]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert says in err and len(err.strip().splitlines()) == 1, err
    assert not any(tmp_path.rglob("*.json"))


def test_two_servers_are_measured_in_a_duet_each_on_cpus_of_its_own(tmp_path: Path) -> None:
    """A duet, two servers' default: each round both started afresh, each pinned to half the
    CPUs; a slowdown of ten million loop turns a request is caught, and the verdict says how
    it was measured."""
    servers = native_server(tmp_path, "native", 0)
    servers += native_server(tmp_path, "native-extra", 10_000_000)
    (tmp_path / "servers.toml").write_text(servers)
    run_id = "20261207T000000Z-d0e7"
    folder = tmp_path / "results" / run_id
    out = bench(
        "run", "--server", "native", "--beside", "native-extra", "--workload",
        "health", "--concurrency", "1", "--duration", "0.5", "--warmup", "0.1", "--repeat", "3",
        "--out", str(tmp_path / "results"), "--run-id", run_id, cwd=tmp_path,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    usable = sorted(os.sched_getaffinity(0))
    half = len(usable) // 2
    assert f"in a duet: native on CPUs {usable[:half]}" in out.stderr, out.stderr
    for cell, cpus in (("native", usable[:half]), ("native-extra", usable[half : 2 * half])):
        results = [load_result(p) for p in folder.glob(f"{cell}-sqlite-memory*.json")]
        assert len(results) == 4 and all(r.status == "ok" for r in results)
        assert all(r.config.duet and r.server and r.server.cpus == cpus for r in results)
    gate = gated_slowdown(folder, tmp_path)
    assert "Measured in a duet, paired by round" in gate.stdout


@pytest.mark.slow
def test_two_servers_measured_together_pair_by_round_and_a_slowdown_is_caught(
    tmp_path: Path,
) -> None:
    servers = native_server(tmp_path, "native", 0)
    # ten million loop turns a request, some ms: a slowdown no round of a busy machine hides
    # (a million, about a millisecond, read -43% ± 60% in one CI run whose machine was slow)
    servers += native_server(tmp_path, "native-extra", 10_000_000)
    (tmp_path / "servers.toml").write_text(servers)
    run_id = "20261207T000000Z-7091"
    load = ("--workload", "health", "--concurrency", "1", "--duration", "1", "--warmup", "0.2")
    load += ("--repeat", "3")
    common = ("--out", str(tmp_path / "results"), "--run-id", run_id)
    out = bench(
        "run",
        "--server",
        "native",
        "--beside",
        "native-extra",
        "--alternate",
        *load,
        *common,
        cwd=tmp_path,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]

    # one window per server and round, the order turned each round: A B, B A, A B, B A
    order = re.findall(r"^  (native(?:-extra)?): health c=1:", out.stderr, re.MULTILINE)
    assert order == ["native", "native-extra", "native-extra", "native"] * 2, out.stderr

    folder = tmp_path / "results" / run_id
    for cell, other in (("native", "native-extra"), ("native-extra", "native")):
        paths = [folder / f"{cell}-sqlite-memory.json"]
        paths += [folder / f"{cell}-sqlite-memory.{k}.json" for k in (2, 3, 4)]
        results = [json.loads(p.read_text()) for p in paths]
        assert [r["repetition"] for r in results] == [1, 2, 3, 4]
        assert [bool(r["discarded"]) for r in results] == [True, False, False, False]
        assert all(r["status"] == "ok" for r in results)
        assert all(r["together_with"] == [f"{other}-sqlite-memory"] for r in results)
        assert all(len(r["endpoints"]) == 1 for r in results)
        assert results[-1]["repeat"]["stopped"] == "count"
        assert results[-1]["repeat"]["counted"] == 3
        # every round on a server started for it
        assert all(r["server"]["startup_s"] > 0 for r in results)

    gate = gated_slowdown(folder, tmp_path)
    assert "Measured together, paired by round" in gate.stdout
    assert "health c=1 rps" in gate.stderr
    report = bench("report", str(folder), "--out", str(tmp_path / "report"), cwd=tmp_path)
    assert report.returncode == 0, report.stderr
    text = (tmp_path / "report" / "report.md").read_text()
    assert "native → native-extra: measured together (run --beside, matrix --together)" in text


def test_auto_runs_rounds_until_the_pairs_total_is_within_the_target(tmp_path: Path) -> None:
    """Two copies of the native fixture, rounds until their total's paired interval is within
    ±100%: never before three counted rounds, and at the first round that reaches it."""
    servers = native_server(tmp_path, "native", 0) + native_server(tmp_path, "native-b", 0)
    (tmp_path / "servers.toml").write_text(servers)
    run_id = "20261207T000000Z-a070"
    out = bench(
        "run", "--server", "native", "--beside", "native-b", "--workload", "health",
        "--concurrency", "1", "--duration", "0.5", "--warmup", "0.1", "--repeat", "auto",
        "--target", "100", "--out", str(tmp_path / "results"), "--run-id", run_id, cwd=tmp_path,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "round 1 of at most 21 (the warm-up)" in out.stderr
    folder = tmp_path / "results" / run_id
    for cell in ("native", "native-b"):
        results = [load_result(p) for p in folder.glob(f"{cell}-sqlite-memory*.json")]
        states = [r.repeat for r in sorted(results, key=lambda r: r.repetition or 0)]
        *before, last = [s for s in states if s is not None]
        assert last.stopped == "target" and last.counted >= 3, last
        assert last.widest == "total rps, native-b" and 0 < (last.interval_pct or 0) <= 100
        assert [s.stopped for s in before] == [None] * len(before)
        # it went on only while the interval was wider than the target, or too few were counted
        assert all(s.counted < 3 or (s.interval_pct or math.inf) > 100 for s in before), before


@pytest.mark.parametrize("how", [("--alternate", "--duration", "2"), ("--duration", "4")])
def test_a_server_that_dies_fails_the_round_for_every_server(
    tmp_path: Path, how: tuple[str, ...]
) -> None:
    """Nothing half-paired: the native fixture beside the same binary stopped 3 s after its
    start (by coreutils' timeout), within its first window; the round fails for both,
    measured one after the other or in a duet, two servers' default (whose windows are at
    once: a longer one)."""
    servers = native_server(tmp_path, "native", 0)
    binary = tmp_path / "native" / "health_server"
    servers += f"""
[servers.native-dying]
command = ["timeout", "3", "{binary}", "{{port}}"]
no_services_args = []
dbs = ["sqlite"]
brokers = ["memory"]
description = "a test fixture: the native server, stopped 3 s after its start"
"""
    (tmp_path / "servers.toml").write_text(servers)
    run_id = "20261207T000000Z-d1e5"
    out = bench(
        "run", "--server", "native", "--beside", "native-dying", *how, "--workload", "health",
        "--concurrency", "1", "--warmup", "0", "--repeat", "2",
        "--out", str(tmp_path / "results"), "--run-id", run_id, cwd=tmp_path,
    )  # fmt: skip
    assert out.returncode == 1, out.stdout[-3000:] + out.stderr[-3000:]
    written = sorted((tmp_path / "results" / run_id).glob("*.json"))
    assert [p.name for p in written] == [
        "native-dying-sqlite-memory.json",
        "native-sqlite-memory.json",
    ]
    results = [json.loads(p.read_text()) for p in written]
    assert [r["status"] for r in results] == ["failed", "failed"]
    assert results[0]["error"] == results[1]["error"]
    assert "native-dying" in results[0]["error"], results[0]["error"]


def test_ctrl_c_stops_every_server_and_writes_the_round_as_interrupted(tmp_path: Path) -> None:
    """SIGINT in round 2's first window: both servers stopped, round 1 kept ok, round 2
    written interrupted for both, exit 130."""
    servers = native_server(tmp_path, "native", 0) + native_server(tmp_path, "native-b", 0)
    (tmp_path / "servers.toml").write_text(servers)
    run_id = "20261207T000000Z-c7c7"
    log = tmp_path / "out.log"
    argv = [
        sys.executable, "-m", "bench", "run", "--server", "native", "--beside", "native-b",
        "--workload", "health", "--concurrency", "1", "--warmup", "0", "--repeat", "2",
        "--duration", "1", "--out", str(tmp_path / "results"), "--run-id", run_id,
    ]  # fmt: skip
    with open(log, "w") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, cwd=tmp_path)
    try:
        wait_until(lambda: "round 2 of 3" in log.read_text(), timeout_s=60, interval_s=0.05)
        children = psutil.Process(proc.pid).children(recursive=True)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=60) == EXIT_INTERRUPTED, log.read_text()
        assert not [c for c in children if c.is_running() and c.status() != "zombie"]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    folder = tmp_path / "results" / run_id
    for cell in ("native", "native-b"):
        first = json.loads((folder / f"{cell}-sqlite-memory.json").read_text())
        second = json.loads((folder / f"{cell}-sqlite-memory.2.json").read_text())
        assert first["status"] == "ok" and first["repetition"] == 1
        assert second["error"] == "interrupted" and second["repetition"] == 2
    assert len(list(folder.glob("*.json"))) == 4


def test_a_together_matrix_measures_each_group_in_one_turn_a_round_and_resumes(
    tmp_path: Path,
) -> None:
    """`matrix --together`: the two servers of sqlite × memory take each round as one turn
    (`run --beside`), paired by round; a matrix stopped between rounds (the last round's
    results gone, as if killed before it) resumes with that round alone, not a warm-up again;
    a run whose servers have uneven rounds is refused in one line, not half-paired."""
    servers = native_server(tmp_path, "native", 0) + native_server(tmp_path, "native-b", 0)
    (tmp_path / "servers.toml").write_text(servers)
    run_id = "20261207T000000Z-7a7a"
    results = tmp_path / "results"
    out = bench(
        "matrix", "--together", "--server", "native", "--server", "native-b", "--db", "sqlite",
        "--broker", "memory", "--out", str(results), "--run-id", run_id, "--workload", "health",
        "--concurrency", "1", "--duration", "0.5", "--warmup", "0.1", "--repeat", "2",
        "--alternate", cwd=tmp_path,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    # three turns, each one round of both servers (the windows' order turned each round)
    assert re.findall(r"^round \d: .*$", out.stderr, re.MULTILINE) == [
        "round 1: native-sqlite-memory, native-b-sqlite-memory",
        "round 2: native-b-sqlite-memory, native-sqlite-memory",
        "round 3: native-sqlite-memory, native-b-sqlite-memory",
    ]
    order = re.findall(r"^  (native(?:-b)?): health c=1:", out.stderr, re.MULTILINE)
    assert order == ["native", "native-b", "native-b", "native", "native", "native-b"]
    folder = results / run_id

    def rounds(cell: str) -> list[dict]:
        paths = sorted(folder.glob(f"{cell}-sqlite-memory*.json"))
        return sorted((json.loads(p.read_text()) for p in paths), key=lambda r: r["repetition"])

    for cell, other in (("native", "native-b"), ("native-b", "native")):
        written = rounds(cell)
        assert [r["repetition"] for r in written] == [1, 2, 3]
        assert [bool(r["discarded"]) for r in written] == [True, False, False]
        assert all(r["together_with"] == [f"{other}-sqlite-memory"] for r in written)
        assert written[-1]["repeat"]["stopped"] == "count"
    gate = bench("compare", str(folder), "--before", "native", "--after", "native-b", cwd=tmp_path)
    assert "Measured together, paired by round" in gate.stdout, gate.stdout + gate.stderr

    for cell in ("native", "native-b"):
        (folder / f"{cell}-sqlite-memory.3.json").unlink()
    again = bench("matrix", "--resume", str(folder), cwd=tmp_path)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert re.findall(r"^round \d: .*$", again.stderr, re.MULTILINE) == [
        "round 3: native-sqlite-memory, native-b-sqlite-memory"
    ]
    for cell in ("native", "native-b"):
        written = rounds(cell)
        assert [r["repetition"] for r in written] == [1, 2, 3]
        assert not written[-1]["discarded"] and written[-1]["repeat"]["counted"] == 2

    (folder / "native-b-sqlite-memory.3.json").unlink()
    uneven = bench(
        "run", "--server", "native", "--beside", "native-b", "--one-repetition",
        "--out", str(results), "--run-id", run_id, "--workload", "health", "--repeat", "2",
        cwd=tmp_path,
    )  # fmt: skip
    assert uneven.returncode == EXIT_USAGE, uneven.stdout + uneven.stderr
    said = uneven.stderr.strip().splitlines()
    assert len(said) == 1 and "native-sqlite-memory 3, native-b-sqlite-memory 2" in said[0]


def test_auto_with_fail_on_runs_until_every_gated_figure_is_decided(tmp_path: Path) -> None:
    """`--repeat auto --fail-on`: rounds stop once every figure the rule gates is decided; ten
    million loop turns a request are broken and decided at the third counted round."""
    servers = native_server(tmp_path, "native", 0)
    servers += native_server(tmp_path, "native-extra", 10_000_000)
    (tmp_path / "servers.toml").write_text(servers)
    run_id = "20261207T000000Z-dec1"
    out = bench(
        "run", "--server", "native", "--beside", "native-extra", "--fail-on", "rps<-20%",
        "--workload", "health", "--concurrency", "1", "--duration", "0.5", "--warmup", "0.1",
        "--repeat", "auto", "--out", str(tmp_path / "results"), "--run-id", run_id, cwd=tmp_path,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    paths = (tmp_path / "results" / run_id).glob("native-extra-sqlite-memory*.json")
    last = max((json.loads(p.read_text()) for p in paths), key=lambda r: r["repetition"])
    state = last["repeat"]
    assert (state["stopped"], state["counted"], state["undecided"]) == ("decided", 3, [])
    assert "stopped: every gated figure decided" in out.stdout


def test_what_the_rounds_leave_undecided_is_named_with_the_rounds_to_decide_it() -> None:
    """paired_state with rules, on made-up rounds: a 30% slowdown is decided at 3 rounds; a 5%
    one against a 5% rule is not, and when the budget is spent it stops naming the figures
    still undecided (the total among them) and the rounds each would need."""
    rules = [parse_rule("rps<-5%")]
    slow = [counted(side) for side in drifting_run(3, slowdown=0.30, drift=0.02)]
    state = paired_state(slow, 3.0, math.inf, 1.0, rules)
    assert (state.stopped, state.undecided) == ("decided", [])

    near = [counted(s) for s in drifting_run(3, slowdown=0.05, drift=0.02, noise=0.1)]
    assert paired_state(near, 3.0, math.inf, 1.0, rules).stopped is None
    spent = paired_state(near, 3.0, 0.0, 1.0, rules)
    assert spent.stopped == "budget" and spent.undecided, spent
    total = next(u for u in spent.undecided if u.startswith("python-dev: total rps ("))
    assert re.search(r"\((~\d+|over \d+) rounds|on the threshold|beyond", total), total
    # without rules the same rounds stop on the total's interval alone
    assert paired_state(near, 60.0, math.inf, 1.0).stopped == "target"
