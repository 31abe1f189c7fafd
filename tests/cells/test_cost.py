"""--cost: the real Prefect server under callgrind, its requests counted in small blocks; the
bad input refused in one line; valgrind missing skips the cell with the fix; a dump that is
missing or empty fails it, never a zero."""

from __future__ import annotations

import gzip
import io
import os
import signal
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import httpx
import psutil
import pytest
from rich.console import Console

from bench.cells.commands import EXIT_USAGE
from bench.cells.runner import run_cell
from bench.core.errors import VerificationError
from bench.core.process import wait_until
from bench.cost import callgrind
from bench.cost.blocks import Counted, _sender
from bench.cost.callgrind import CostError, read_total
from bench.engine.model import EngineRequest
from bench.observe.progress import Progress
from bench.results import Cost, EndpointResult
from bench.results.merge import merge
from bench.servers.adapter import ServerSetup
from bench.servers.python import HOLD_STILL
from bench.servers.registry import make_server
from tests.helpers import bench

CELL = ("run", "--server", "python", "--db", "sqlite", "--broker", "memory")
needs_valgrind = pytest.mark.skipif(
    callgrind.missing_tools() is not None, reason="valgrind is not installed"
)


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--rate", "5"], "give it without --rate"),
        (["--rate-sweep", "1:5:1"], "give it without --rate-sweep"),
        (["--soak", "1h"], "give it without --soak"),
        (["--concurrency", "4"], "--concurrency 1 or none (not 4)"),
        (["--concurrency", "1,4"], "--concurrency 1 or none (not 1,4)"),
        (["--url", "http://127.0.0.1:9/api"], "give it without --url"),
        (["--workload", "events"], "not the events scenario"),
        (["--cost-block", "0"], "--cost-block"),
        (["--cost-blocks", "0"], "--cost-blocks"),
    ],
)
def test_bad_cost_runs_are_refused_in_one_line(tmp_path: Path, args: list[str], says: str) -> None:
    out = bench(*CELL, "--cost", *args, cwd=tmp_path, timeout_s=60)
    assert out.returncode == EXIT_USAGE, out.stderr
    assert says in out.stderr and out.stderr.count("\n") == 1, out.stderr
    assert not (tmp_path / "results").exists()


def test_cost_means_one_user_and_no_services(cell_run) -> None:  # type: ignore[no-untyped-def]
    config = cell_run(cost=True).config
    assert config.concurrency == [1] and config.no_services
    assert (config.cost_block, config.cost_blocks) == (50, 3)


def test_a_server_of_several_api_processes_is_refused(cell_run, progress) -> None:  # type: ignore[no-untyped-def]
    run = cell_run("python-scaled", "postgres", "redis", workload="health", cost=True)
    result = run_cell(run, progress())
    assert result.status == "failed"
    assert result.error == (
        "--cost counts one API process: give --server-workers 1 (the python-scaled server "
        "would run 2)"
    )


def test_services_counted_apart_need_a_server_that_runs_them_apart(cell_run, progress) -> None:  # type: ignore[no-untyped-def]
    run = cell_run(workload="flow-runs", cost=True, cost_services=True)
    assert not run.config.no_services  # the services process is what it counts
    result = run_cell(run, progress())
    assert result.status == "failed"
    assert result.error is not None
    assert result.error.startswith(
        "--cost-services counts the services in a process of their own: the python server "
        "runs them in its API process"
    )


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--workload", "flow-runs", "--cost-services"], "give it with --cost"),
        (["--cost", "--cost-services"], "give it with a scenario of flow runs"),
    ],
)
def test_cost_services_without_what_it_needs_is_refused_in_one_line(
    tmp_path: Path, args: list[str], says: str
) -> None:
    out = bench(*CELL, *args, cwd=tmp_path, timeout_s=60)
    assert out.returncode == EXIT_USAGE, out.stderr
    assert says in out.stderr and out.stderr.count("\n") == 1, out.stderr


def test_without_valgrind_the_cell_is_skipped_with_the_fix(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    monkeypatch.setenv("PATH", str(bin_dir))  # no valgrind, no vgdb
    out = bench(*CELL, "--workload", "health", "--cost", "--out", "r", cwd=tmp_path)
    assert out.returncode == 3, out.stderr + out.stdout
    assert "valgrind and vgdb not found (apt-get install valgrind)" in out.stdout


@pytest.mark.parametrize(
    ("text", "says"),
    [
        (b"", "has no total"),
        (b"events: Ir\nsummary: 0\ntotals: 0\n", "counted nothing"),
        (b"events: Ir\n", "has no total"),
    ],
)
def test_an_empty_dump_fails_never_a_zero(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, text: bytes, says: str
) -> None:
    monkeypatch.setattr(callgrind, "DUMP_WAIT_S", 0.1)
    dump = tmp_path / "callgrind.out.1.1"
    dump.write_bytes(text)
    with pytest.raises(CostError, match=says):
        read_total(dump)
    with pytest.raises(CostError, match="cannot be read"):
        read_total(tmp_path / "missing")


def test_a_dump_is_read_by_its_totals(tmp_path: Path) -> None:
    dump = tmp_path / "callgrind.out.1.1"
    dump.write_bytes(b"events: Ir\nsummary: 0\nfn=(1) f\n1 5\ntotals: 640015\n")
    assert read_total(dump) == 640015


def test_blocks_make_a_figure_with_its_spread_and_idle_share() -> None:
    counted = Counted("GET flow", totals=[1_000_000, 1_010_000, 990_000], seconds=3.0)
    cost = counted.cost(10, ["x.1.callgrind.gz"], idle_per_s=10_000)
    assert cost.per_request == pytest.approx(100_000)
    assert cost.spread_pct == pytest.approx(2.0)
    assert cost.blocks == 3 and cost.requests_per_block == 10 and cost.event == "Ir"
    assert cost.idle_pct == pytest.approx(1.0)  # 30,000 of 3,000,000
    assert counted.cost(10, []).idle_pct is None


def test_repetitions_merge_their_costs() -> None:
    def part(per_request: float, spread: float) -> EndpointResult:
        cost = Cost(per_request=per_request, spread_pct=spread, blocks=3, requests_per_block=5)
        return EndpointResult(
            name="health", method="GET", path="/health", concurrency=1, requests=15,
            duration_s=1.0, rps=15.0, latency_ms=None, cost=cost,
        )  # fmt: skip

    merged = merge([part(100.0, 1.0), part(110.0, 2.0)], "repetitions")
    assert merged.cost is not None
    assert merged.cost.per_request == pytest.approx(105.0) and merged.cost.spread_pct == 2.0
    assert merged.cost.blocks == 6
    plain = part(1, 1).model_copy(update={"cost": None})
    assert merge([plain, plain], "repetitions").cost is None


def test_progress_shows_a_cost_not_the_rate_under_callgrind() -> None:
    cost = Cost(per_request=4_314_445, spread_pct=1.49, blocks=3, requests_per_block=50)
    ep = EndpointResult(
        name="GET flow", method="GET", path="/flows/{flow_id}", concurrency=1, requests=150,
        duration_s=38.0, rps=3.9, latency_ms=None, cost=cost.model_copy(update={"idle_pct": 1.47}),
    )  # fmt: skip
    out = io.StringIO()
    Progress(Console(file=out, width=200), "python-sqlite-memory").measured(ep)
    assert out.getvalue() == (
        "  GET flow: 4.314 M instructions per request (spread 1.49% over 3 blocks, ~1.5% of it "
        "idle work)\n"
    )


def test_each_request_gets_its_own_token_the_same_in_every_run() -> None:
    bodies: list[bytes] = []

    def answer(request: httpx.Request) -> httpx.Response:
        bodies.append(request.content)
        return httpx.Response(201, json={"id": "x"})

    request = EngineRequest("POST", "/api/flow_runs/", b'{"name":"{{unique}}"}', (201,))
    with httpx.Client(transport=httpx.MockTransport(answer), base_url="http://x") as client:
        send = _sender(client, "create flow_run", request)
        assert send() >= 0 and send() >= 0
    assert bodies == [b'{"name":"cost-1"}', b'{"name":"cost-2"}']


def test_a_wrong_answer_fails_the_block() -> None:
    transport = httpx.MockTransport(lambda request: httpx.Response(503, text="locked"))
    with httpx.Client(transport=transport, base_url="http://x") as client:
        send = _sender(client, "GET flow", EngineRequest("GET", "/api/flows/1"))
        with pytest.raises(VerificationError, match="GET flow answered 503 while its cost"):
            send()


def test_the_server_runs_under_the_wrap_with_its_cost_environment(tmp_path: Path) -> None:
    adapter = make_server("python")
    setup = ServerSetup("sqlite", "memory", tmp_path, tmp_path, no_services=True)
    costed = replace(setup, cost=True, wrap=("valgrind", "--tool=callgrind"))
    argv = adapter.command(4200, costed)
    assert argv[:2] == ["valgrind", "--tool=callgrind"] and argv[2:] == adapter.command(4200, setup)
    env = adapter.environment(4200, costed)
    assert env["PYTHONHASHSEED"] == "0" and env["PYTHONPATH"] == str(HOLD_STILL)
    assert "PYTHONPATH" not in adapter.environment(4200, setup)


def test_the_cost_server_s_docket_is_held_still() -> None:
    """The sitecustomize a cost cell's Python server loads: docket's polling and heartbeat
    once an hour, not every 250 ms and 2 s."""
    code = (
        "from docket import Docket, Worker; d = Docket(name='x', url='memory://'); "
        "w = Worker(d); print(w.minimum_check_interval, w.scheduling_resolution, "
        "d.heartbeat_interval)"
    )
    env = dict(os.environ, PYTHONPATH=str(HOLD_STILL))
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.stdout.split() == ["1:00:00"] * 3, out.stderr


@needs_valgrind
def test_the_real_server_s_requests_are_counted_until_it_dies(
    cell_run,
    progress,  # type: ignore[no-untyped-def]
) -> None:
    """The seed workload on the real server under callgrind (its start: 1-2 minutes), two
    blocks of 3 after a warm-up; the server SIGKILLed after the fifth endpoint: the five are
    kept, the cell fails with the server's cause."""

    def kill_server() -> None:
        (server,) = [
            p
            for p in psutil.Process().children()
            if Path(p.cwd()).name.startswith("prefect-bench-python-")
        ]
        assert "valgrind" in server.cmdline()[0]
        server.send_signal(signal.SIGKILL)
        flags = os.WEXITED | os.WNOHANG | os.WNOWAIT
        wait_until(lambda: os.waitid(os.P_PID, server.pid, flags) is not None, timeout_s=30)

    run = cell_run(workload="seed", cost=True, cost_block=3, cost_blocks=2)
    view = progress(after=5, action=kill_server)
    result = run_cell(run, view)
    assert result.status == "failed" and "was killed by SIGKILL" in (result.error or ""), result
    assert result.config.concurrency == [1] and result.config.no_services
    names = [ep.name for ep in result.endpoints]
    assert names == ["health", "GET flow", "filter flows", "GET flow_run", "filter flow_runs"]
    run_dir = run.out_dir / run.run_id
    for ep in result.endpoints:
        cost = ep.cost
        assert cost is not None, ep.name
        assert cost.blocks == 2 and cost.requests_per_block == 3 and cost.event == "Ir"
        # a request of Prefect's costs a million instructions or more; a block repeats the
        # one before it within a few %
        assert 1e6 < cost.per_request < 1e9, (ep.name, cost)
        assert cost.spread_pct < 10, (ep.name, cost)
        assert cost.idle_per_s and cost.idle_pct is not None and cost.idle_pct < 50, cost
        assert ep.requests == 6 and ep.concurrency == 1 and not ep.errors and ep.latency_ms
        assert len(cost.callgrind) == 2
        for kept in cost.callgrind:
            with gzip.open(run_dir / kept) as dump:
                assert b"events: Ir" in dump.read()
    costs = {ep.name: ep.cost.per_request for ep in result.endpoints if ep.cost}
    assert costs["filter flow_runs"] > costs["GET flow"] > costs["health"]
    # the raw dumps went with the server's folder: only the kept ones remain
    assert not list(run.cell_dir.rglob("callgrind.out.*"))
    assert (run.cell_dir / "server.log").exists()
