"""--cost of a scenario workload (flow-runs): its runs replayed by one user in blocks, a dump
after each step once the server is idle; per step and per flow run, against the real Prefect
server under callgrind; a scenario that cannot be replayed refused by name in one line."""

from __future__ import annotations

import gzip
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bench.cells.commands import EXIT_USAGE
from bench.cells.runner import run_cell
from bench.cost import SCENARIO_BLOCK, callgrind, services
from bench.cost.callgrind import CostError, read_total
from bench.cost.merge import merge
from bench.cost.scenarios import EPOCH, SeededValues, figure, settle
from bench.workloads.flow_runs import (
    CLIENT_VALUES,
    _csrf_token,
    _logs,
    _state_details,
    task_events,
)
from tests.helpers import bench

CELL = ("run", "--server", "python", "--db", "sqlite", "--broker", "memory")
needs_valgrind = pytest.mark.skipif(
    callgrind.missing_tools() is not None, reason="valgrind is not installed"
)


@pytest.mark.parametrize("workload", ["events", "mixed"])
def test_a_scenario_that_cannot_be_replayed_is_refused_by_name(
    tmp_path: Path, workload: str
) -> None:
    out = bench(*CELL, "--cost", "--workload", workload, cwd=tmp_path, timeout_s=60)
    assert out.returncode == EXIT_USAGE, out.stderr
    assert f"not the {workload} scenario" in out.stderr and out.stderr.count("\n") == 1
    assert "the flow-runs scenario" in out.stderr, out.stderr
    assert not (tmp_path / "results").exists()


def test_a_flow_runs_cost_cell_counts_blocks_of_ten_runs(cell_run) -> None:  # type: ignore[no-untyped-def]
    config = cell_run(workload="flow-runs", cost=True).config
    assert config.cost_block == SCENARIO_BLOCK == 10 and config.cost_blocks == 3
    assert config.concurrency == [1] and config.no_services
    assert cell_run(workload="flow-runs", cost=True, cost_block=4).config.cost_block == 4
    assert cell_run(workload="seed", cost=True).config.cost_block == 50


def test_a_figure_is_per_occurrence_with_its_spread() -> None:
    cost = figure([2_000_000, 2_020_000, 1_980_000], [20, 20, 20], 4.0, ["a.gz"], 10_000)
    assert cost.per_request == pytest.approx(100_000)
    assert cost.spread_pct == pytest.approx(2.0)  # (101,000 - 99,000) / 100,000
    assert cost.blocks == 3 and cost.requests_per_block == 20 and cost.callgrind == ["a.gz"]
    assert cost.idle_pct == pytest.approx(40_000 / 6_000_000 * 100)
    with pytest.raises(CostError, match="missing from a counted block"):
        figure([1, 2], [1, 0], 1.0, [], None)


def _client_bytes() -> list[str]:
    """What the flow-runs client chooses itself, in one flow run's order."""
    made = [str(_state_details("run", untrackable=False)), str(_logs("run", "r", "f", 2))]
    for i in range(2):
        made += task_events("flow", "f", "run", "r", i)[2]
    return made


def test_the_client_s_ids_and_timestamps_are_the_same_in_every_cost_run() -> None:
    token = CLIENT_VALUES.set(SeededValues())
    try:
        first = _client_bytes()
        CLIENT_VALUES.set(SeededValues())
        again = _client_bytes()
    finally:
        CLIENT_VALUES.reset(token)
    assert first == again
    assert EPOCH.strftime("%Y-%m-%dT%H:%M:%S") in "".join(first)
    assert _client_bytes() != _client_bytes()  # outside a cost run: random, the clock's
    assert _csrf_token  # its client id is drawn the same way (flow_runs._new_id)


def test_settle_waits_for_an_idle_server_and_fails_on_a_busy_one() -> None:
    idle = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.3)  # past the interpreter's start
        started = time.monotonic()
        settle(idle.pid)
        assert time.monotonic() - started < 1.0
        with pytest.raises(CostError, match=r"still busy 0\.3 s after a step"):
            settle(busy.pid, timeout_s=0.3)
    finally:
        for process in (idle, busy):
            process.kill()
            process.wait()


def test_the_services_are_drained_of_what_was_sent_or_the_cell_fails_saying_what_is_left(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    left = iter(["1 of 4 task runs recorded", "9 of 12 events persisted", None])
    seen: list[dict[str, int]] = []

    def waiting(sent):  # type: ignore[no-untyped-def]
        seen.append(dict(sent))
        return next(left)

    monkeypatch.setattr(services, "DRAIN_POLL_S", 0.01)
    services.drain(services.ServicesTarget(1, waiting), {"task_runs": 4}, lambda: None)
    assert seen == [{"task_runs": 4}] * 3
    monkeypatch.setattr(services, "DRAIN_TIMEOUT_S", 0.05)
    stuck = services.ServicesTarget(1, lambda sent: "3 of 4 task runs recorded")
    with pytest.raises(CostError, match=r"0\.05 s after it: 3 of 4 task runs recorded$"):
        services.drain(stuck, {"task_runs": 4}, lambda: None)


@pytest.mark.slow
@pytest.mark.timeout(900)
@needs_valgrind
def test_the_services_cost_per_flow_run_is_counted_in_their_own_process(
    cell_run,
    progress,  # type: ignore[no-untyped-def]
) -> None:
    """python-scaled with one API process and its services process, both under callgrind (its
    start: 1-2 minutes), flow-runs of 2 tasks in two blocks of 2 flow runs after a warm-up
    block: every API step's figure, the flow run's, their spread and the kept dumps (as on the
    python server: the API process is Prefect's one app), and the services' instructions per
    flow run, each block's counted once they had recorded its task runs and persisted its
    events. One test for both: a server under callgrind costs a minute or more to start."""
    run = cell_run(
        "python-scaled",
        "postgres",
        "redis",
        workload="flow-runs",
        tasks=2,
        cost=True,
        cost_services=True,
        cost_block=2,
        cost_blocks=2,
        server_workers=1,
    )
    result = run_cell(run, progress())
    assert result.status == "ok", result.error
    assert result.server is not None and result.server.processes == {
        "api_workers": 1,
        "services": 1,
    }
    (measured,) = result.scenarios
    run_dir = run.out_dir / run.run_id
    steps = {step.name: step for step in measured.steps}
    assert {
        "GET admin/version",
        "GET csrf-token",
        "create flow",
        "create flow_run",
        "set_state RUNNING",
        "read flow_run",
        "open events socket",
        "read flow",
        "task events",
        "set_state COMPLETED",
        "write logs",
    } <= set(steps), sorted(steps)
    every = 0.0
    for step in measured.steps:
        cost = step.cost
        assert cost is not None, step.name
        assert cost.blocks == 2 and cost.event == "Ir" and cost.requests_per_block >= 2
        # a step of Prefect's costs a hundred thousand instructions or more
        assert 1e5 < cost.per_request < 1e9, (step.name, cost)
        assert step.requests == 2 * cost.requests_per_block and step.latency_ms
        assert len(cost.callgrind) == 2
        every += cost.per_request * cost.requests_per_block / 2
    # A step's two blocks of 2 flow runs can differ a lot here: 42% (GET admin/version) and 62%
    # (create flow) in two CI runs on a slow machine, likely work the API finished after it
    # looked idle landing in the next step. Most steps stay close; the flow run's whole does.
    spreads = sorted(step.cost.spread_pct for step in measured.steps if step.cost)
    assert spreads[len(spreads) // 2] < 25, spreads
    assert steps["set_state RUNNING"].cost.per_request > steps["GET admin/version"].cost.per_request
    whole = measured.cost
    assert whole is not None and whole.blocks == 2 and whole.requests_per_block == 2
    assert whole.spread_pct < 10, whole
    # the flow run: its steps and what follows the last one (the events socket's close)
    assert every < whole.per_request < 1.2 * every, (every, whole)
    assert measured.completed == 4 and measured.delivery["flow_runs"].recorded == 6
    assert len(whole.callgrind) > len(measured.steps) * 2
    for kept in whole.callgrind:
        with gzip.open(run_dir / kept) as dump:
            text = dump.read()
        assert text.startswith(b"# callgrind format") and b"events: Ir" in text, kept
    # the raw dumps went with the server's folder: only the kept ones remain
    assert not list(run.cell_dir.rglob("callgrind.out.*"))

    api, spent = measured.cost, measured.services_cost
    assert api is not None and spent is not None
    assert spent.blocks == 2 and spent.requests_per_block == 2 and len(spent.callgrind) == 2
    # recording the task runs and persisting the events: millions of instructions a flow run,
    # 4.4x the API's with 10 tasks (a default run here)
    assert 1e6 < spent.per_request < api.per_request * 20, (spent, api)
    assert spent.spread_pct < 25 and spent.idle_per_s is not None, spent
    assert measured.delivery["task_runs"].recorded == measured.delivery["task_runs"].sent == 12
    for kept in spent.callgrind:
        with gzip.open(run_dir / kept) as dump:
            assert b"events: Ir" in dump.read(), kept


def _dump(path: Path, body: str, total: int) -> Path:
    head = "# callgrind format\nversion: 1\npid: 7\npositions: line\nevents: Ir\n"
    path.write_text(f"{head}summary: {total}\n\n{body}totals: {total}\n")
    return path


def test_a_step_s_dumps_are_summed_into_one(tmp_path: Path) -> None:
    """Names compressed once per file with the process's ids, positions relative to the last
    cost line's: summed per function and line, calls with their inclusive cost."""
    first = _dump(
        tmp_path / "callgrind.out.7.1",
        "ob=(1) /bin/python\nfl=(1) a.c\nfn=(1) main\n10 5\n+2 5\ncfn=(2) helper\n"
        "calls=2 20\n* 30\nfn=(2)\n20 20\n",
        30,
    )
    second = _dump(
        tmp_path / "callgrind.out.7.2",
        "ob=(1) /bin/python\nfl=(1) a.c\nfn=(2) helper\n20 7\nfn=(1) main\n12 1\n",
        8,
    )
    summed = merge([first, second], tmp_path / "summed")
    text = summed.read_text()
    assert text.startswith("# callgrind format\n") and "summary: 38\n" in text
    assert text.endswith("totals: 38\n")
    # each name defined on its first use, functions in order
    assert "ob=(1) /bin/python\nfl=(2) a.c\nfn=(3) helper\n20 27\n" in text
    assert "ob=(1)\nfl=(2)\nfn=(4) main\n10 5\n12 6\n" in text
    assert "cob=(1)\ncfi=(2)\ncfn=(3)\ncalls=2 20\n12 30\n" in text
    assert read_total(summed) == 38
    annotate = shutil.which("callgrind_annotate")
    if annotate:
        shown = subprocess.run([annotate, str(summed)], capture_output=True, text=True)
        assert "38 (100.0%)  PROGRAM TOTALS" in shown.stdout and "WARNING" not in shown.stderr
