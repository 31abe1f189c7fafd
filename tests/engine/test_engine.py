"""The engine against real local HTTP servers (no mocks): counts, error kinds, timing, processes."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from typing import Any

import psutil
import pytest
from hdrh.histogram import HdrHistogram

from bench.core.errors import ConfigError
from bench.engine import (
    UNIQUE_TOKEN,
    EngineRequest,
    LoadSpec,
    Scenario,
    Target,
    VirtualUser,
    choose_procs,
    decode_histogram,
    measure,
    measure_scenario,
    shutdown,
    worker_pids,
)
from bench.engine.measure import measure_duet, measure_together
from bench.engine.pool import get_pool
from bench.engine.wire import request_factory
from bench.results import Measurement
from tests.engine.scripted_server import Server
from tests.helpers import ROOT


def ok_json(body: bytes) -> str | None:
    return None if json.loads(body) == {"ok": True} else f"unexpected body {body!r}"


def always_wrong(body: bytes) -> str | None:
    return f"wrong: {body[:20]!r}"


def blocks_the_engine(body: bytes) -> str | None:
    """A validation that holds the engine's event loop for 50 ms: an engine that falls behind."""
    time.sleep(0.05)
    return None


@pytest.fixture(scope="module")
def server() -> Iterator[Server]:
    with Server() as s:
        yield s


@pytest.fixture(scope="module", autouse=True)
def engine_pool() -> Iterator[None]:
    """The engine's processes live across measurements (that is the point of the pool); this
    module stops them at its end and checks that they are gone."""
    yield
    pids = get_pool().pids()
    shutdown()
    assert not any(_running(pid) for pid in pids)


@pytest.fixture(autouse=True)
def no_leftover_processes() -> Iterator[None]:
    """Overrides conftest's check: no child process may outlive a test, except the engine
    pool's workers (stopped by `engine_pool` at the end of this module)."""
    me = psutil.Process()
    before = {p.pid for p in me.children(recursive=True)}
    yield
    allowed = before | set(worker_pids())
    left = [p for p in me.children(recursive=True) if p.pid not in allowed]
    _, alive = psutil.wait_procs(left, timeout=10)
    assert not alive, f"processes left running: {[(p.pid, p.name()) for p in alive]}"


def run(
    server: Server,
    path: str,
    *,
    method: str = "GET",
    body: bytes | None = None,
    validate: object = None,
    **spec: object,
) -> Measurement:
    params: dict[str, object] = {"concurrency": 4, "duration_s": 1.0, "warmup_s": 0.2}
    params.update(spec)
    request = EngineRequest(method, path, body=body, validate=validate)  # type: ignore[arg-type]
    return measure(server.target, request, LoadSpec(**params))  # type: ignore[arg-type]


def assert_consistent(m: Measurement) -> None:
    """Invariants of every measurement."""
    assert m.requests == m.successes + sum(m.errors.values())
    assert decode_histogram(m).get_total_count() == m.successes
    assert m.duration_s > 0
    if m.rps_slices is not None:  # the slices' successes add up to the window's
        slice_s = m.duration_s / len(m.rps_slices)
        assert sum(rate * slice_s for rate in m.rps_slices) == pytest.approx(m.successes)
    if m.successes:
        lat = m.latency_ms
        assert lat is not None
        assert lat.min <= lat.p50 <= lat.p90 <= lat.p99 <= lat.p999 <= lat.max
        assert m.hdr is not None
        decoded = HdrHistogram.decode(m.hdr)
        assert lat.max == pytest.approx(decoded.get_max_value() / 1000, abs=0.001)


# Closed model


def test_content_length_responses(server: Server) -> None:
    m = run(server, "/ok", validate=ok_json)
    assert_consistent(m)
    assert m.errors == {}
    assert m.problems == []
    assert m.requests > 0 and m.rps > 0
    assert m.engine_procs == 1
    assert m.client_cpu_s_per_request and m.client_cpu_s_per_request > 0
    assert m.offered_rps is None and m.late_sends is None
    assert server.hits["/ok"] >= m.requests
    assert m.rps_slices is not None and len(m.rps_slices) == 2  # 1 s in ~0.5 s slices
    assert all(rate > 0 for rate in m.rps_slices)


def test_chunked_responses(server: Server) -> None:
    m = run(server, "/chunked", validate=ok_json)
    assert_consistent(m)
    assert m.errors == {}
    assert m.successes > 0


def test_unexpected_status_is_counted_not_timed(server: Server) -> None:
    m = run(server, "/flaky")
    assert_consistent(m)
    assert set(m.errors) == {"503"}
    assert 0.2 < m.errors["503"] / m.requests < 0.45
    assert any(p.startswith("HTTP 503") for p in m.problems)


def test_connection_close_reconnects_without_errors(server: Server) -> None:
    before = server.connections
    m = run(server, "/close")
    assert_consistent(m)
    assert m.errors == {}
    assert m.successes > 10
    assert server.connections - before >= m.requests


def test_close_with_request_in_flight_is_a_disconnect(server: Server) -> None:
    m = run(server, "/drop")
    assert_consistent(m)
    assert set(m.errors) == {"disconnect"}
    assert m.successes > 5 * m.errors["disconnect"]


def test_malformed_response_is_a_protocol_error(server: Server) -> None:
    m = run(server, "/garbage")
    assert_consistent(m)
    assert set(m.errors) == {"protocol"}
    assert m.successes > m.errors["protocol"] > 0
    assert any("malformed" in p for p in m.problems)


def test_timeouts_are_counted_and_connections_replaced(server: Server) -> None:
    m = run(server, "/hang", duration_s=1.5, timeout_s=0.2)
    assert_consistent(m)
    assert set(m.errors) == {"timeout"}
    assert m.errors["timeout"] >= 1
    assert m.successes > m.errors["timeout"]


def test_run_ends_on_time_when_the_server_hangs(server: Server) -> None:
    started = time.monotonic()
    m = run(server, "/hangall", warmup_s=0.5, duration_s=1.0, timeout_s=30.0)
    elapsed = time.monotonic() - started
    assert elapsed < 1.5 + 6.0  # warmup + duration + slack; not the 30 s timeout
    assert_consistent(m)
    assert m.requests == 0 and m.rps == 0
    assert m.latency_ms is None and m.hdr is None


def test_connect_refused_is_counted_with_backoff() -> None:
    with socket.socket() as reserved:  # bound but not listening: connections are refused
        reserved.bind(("127.0.0.1", 0))
        target = Target("127.0.0.1", reserved.getsockname()[1])
        spec = LoadSpec(concurrency=2, duration_s=1.0, warmup_s=0.0)
        m = measure(target, EngineRequest("GET", "/"), spec)
    assert_consistent(m)
    assert set(m.errors) == {"connect"}
    assert 2 <= m.errors["connect"] <= 100  # backoff: not a busy loop
    assert m.successes == 0
    cpu_per_error = m.client_cpu_s_per_request or 0.0
    assert cpu_per_error * m.requests < 0.5  # the engine's CPU in the window: no busy loop
    assert any("connect" in p for p in m.problems)


def test_validation_samples_and_reports_problems(server: Server) -> None:
    m = run(server, "/ok", concurrency=2, warmup_s=0.0, validate=always_wrong)
    assert_consistent(m)
    assert set(m.errors) == {"invalid"}
    # the first response of each connection, then about 1 in 100
    assert 1 <= m.errors["invalid"] <= 2 + m.requests / 50
    assert any(p.startswith('wrong: b\'{"ok": true}') for p in m.problems)


def test_unique_tokens_across_processes_and_calls(server: Server) -> None:
    server.bodies.clear()
    body = b'{"name": "run-' + UNIQUE_TOKEN + b'", "tags": ["' + UNIQUE_TOKEN + b'"]}'
    m1 = run(server, "/echo", method="POST", body=body, engine_procs=2)
    m2 = run(server, "/echo", method="POST", body=body, engine_procs=2)
    for m in (m1, m2):
        assert_consistent(m)
        assert m.errors == {} and m.engine_procs == 2
    assert len(server.bodies) >= m1.requests + m2.requests
    docs = [json.loads(b) for b in server.bodies]  # Content-Length matched every body
    names = [d["name"] for d in docs]
    assert len(set(names)) == len(names)
    assert all(d["name"] == "run-" + d["tags"][0] for d in docs)


def test_progress_reports_counts_in_the_window(server: Server) -> None:
    seen: list[int] = []
    request = EngineRequest("GET", "/ok")
    spec = LoadSpec(concurrency=2, duration_s=1.5, warmup_s=0.3)
    m = measure(server.target, request, spec, progress=seen.append)
    assert len(seen) >= 3
    assert seen == sorted(seen)
    assert seen[-1] <= m.requests
    assert seen[-1] > 0


def test_processes_split_the_load_and_merge_histograms(server: Server) -> None:
    m = run(server, "/ok", engine_procs=2, concurrency=3, duration_s=1.5)
    assert_consistent(m)
    assert m.engine_procs == 2
    assert m.rps_slices is not None and len(m.rps_slices) == 3
    assert m.errors == {}
    pids = get_pool().pids()
    m = run(server, "/ok", engine_procs=2, concurrency=2, duration_s=0.5, warmup_s=0.0)
    assert get_pool().pids()[:2] == pids[:2]  # the processes are reused


def test_engine_processes_are_pinned(server: Server) -> None:
    cpu = min(os.sched_getaffinity(0))
    seen: list[set[int]] = []

    def affinity(_: int) -> None:
        seen.extend(set(psutil.Process(pid).cpu_affinity()) for pid in get_pool().pids()[:2])

    spec = LoadSpec(concurrency=2, duration_s=0.6, warmup_s=0.0, engine_procs=2, client_cpus=(cpu,))
    with pytest.warns(RuntimeWarning, match="2 engine processes on 1 cores"):
        measure(server.target, EngineRequest("GET", "/ok"), spec, progress=affinity)
    assert seen and all(s == {cpu} for s in seen)
    seen.clear()
    spec = LoadSpec(concurrency=2, duration_s=0.6, warmup_s=0.0, engine_procs=2)
    measure(server.target, EngineRequest("GET", "/ok"), spec, progress=affinity)
    assert seen and all(s == os.sched_getaffinity(0) for s in seen)


def test_bad_specs_are_config_errors(server: Server) -> None:
    def local(body: bytes) -> None:
        return None

    with pytest.raises(ConfigError, match="picklable"):
        measure(server.target, EngineRequest("GET", "/ok", validate=local), LoadSpec(1, 1, 0))
    with pytest.raises(ConfigError):
        measure(server.target, EngineRequest("GET", "/ok"), LoadSpec(0, 1, 0))
    with pytest.raises(ConfigError):
        measure(
            server.target, EngineRequest("GET", "/ok"), LoadSpec(1, 1, 0, client_cpus=(10_000,))
        )
    with pytest.raises(ConfigError, match="finite"):  # a schedule with no gaps never ends
        measure(server.target, EngineRequest("GET", "/ok"), LoadSpec(1, 1, 0, rate=float("inf")))


def test_process_count() -> None:
    cores = len(os.sched_getaffinity(0))
    assert choose_procs(LoadSpec(concurrency=1, duration_s=1, warmup_s=0, engine_procs=2)) == 1
    assert choose_procs(LoadSpec(concurrency=4, duration_s=1, warmup_s=0)) == 1
    two = tuple(sorted(os.sched_getaffinity(0)))[:2]
    assert choose_procs(LoadSpec(64, 1, 0, client_cpus=two)) == min(2, len(two))
    assert choose_procs(LoadSpec(16, 1, 0, client_cpus=two)) == 1
    with pytest.warns(RuntimeWarning, match="cores"):
        n = choose_procs(LoadSpec(concurrency=64, duration_s=1, warmup_s=0, engine_procs=cores + 1))
    assert n == cores + 1


def test_request_bytes() -> None:
    target = Target("127.0.0.1", 8080)
    get = request_factory(EngineRequest("GET", "/a?b=1"), target, b"p-")
    assert get() == (
        b"GET /a?b=1 HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nUser-Agent: prefect-bench\r\n"
        b"Accept: application/json\r\nConnection: keep-alive\r\n\r\n"
    )
    post = request_factory(
        EngineRequest("POST", "/x", body=b"[" + UNIQUE_TOKEN + b"]"), target, b"p-"
    )
    first, second = post(), post()
    assert first.endswith(b"Content-Length: 5\r\n\r\n[p-1]")
    assert second.endswith(b"[p-2]")
    assert b"Content-Type: application/json\r\n" in first
    empty = request_factory(EngineRequest("POST", "/x"), target, b"p-")()
    assert empty.endswith(b"Content-Length: 0\r\n\r\n")
    # an IPv6 address is bracketed, as RFC 9110 writes a Host header
    ipv6 = request_factory(EngineRequest("GET", "/a"), Target("::1", 8080), b"p-")()
    assert b"\r\nHost: [::1]:8080\r\n" in ipv6
    assert Target("::1", 8080).authority == "[::1]:8080"


# Open model


def test_open_model_holds_the_rate(server: Server) -> None:
    m = run(server, "/ok", rate=200.0, concurrency=4, duration_s=2.0, warmup_s=0.3)
    assert_consistent(m)
    assert m.offered_rps == 200.0
    assert m.late_sends is not None
    assert m.errors == {}
    assert 0.8 * 400 <= m.requests <= 1.1 * 400


def test_unsolicited_response_on_an_idle_connection_is_not_an_error(server: Server) -> None:
    m = run(server, "/idle408", rate=20.0, concurrency=4, duration_s=1.0)
    assert_consistent(m)
    assert "protocol" not in m.errors
    assert m.successes > 10
    assert any("no request in flight" in p for p in m.problems)


def _engine_late(m: Measurement) -> int:
    """How many sends the engine itself let slip, from its problem line (0 if none)."""
    for problem in m.problems:
        if found := re.match(r"the engine sent (\d+) of \d+ requests late", problem):
            return int(found.group(1))
    return 0


def test_open_model_sees_a_stall_and_late_sends(server: Server) -> None:
    get_pool().ensure(1)  # the engine process first: its start-up would move the stall
    server.stall_at = time.monotonic() + 0.3 + 0.5  # warmup, then half a second in
    m = run(server, "/stall", rate=200.0, concurrency=4, duration_s=2.5, warmup_s=0.3)
    assert server.stall_at is None  # it did stall
    assert_consistent(m)
    assert m.late_sends is not None and m.late_sends > 50
    assert m.rate_held is False  # more than 1% of the sends were late
    # the server stalled, not the client: the engine's own late sends (> 2 ms late with a
    # connection free; this VM delays a process that long a few times a second) are few
    # beside the sends that waited for the stalled server (a clean-clone CI run here saw 31
    # of the engine's own beside 234, where a tenth was the bar: a quarter still tells them
    # apart, as an engine that could not hold the rate would be late on most sends)
    assert not m.client_saturated or _engine_late(m) < m.late_sends / 4, m.problems
    lat = m.latency_ms
    assert lat is not None
    assert lat.max >= 500 and lat.p999 >= 500  # latency from the intended send time


def test_open_model_engine_that_falls_behind_is_saturated(server: Server) -> None:
    # validation (of ~1 response in 100 per connection) blocks the loop while connections are
    # free: the sends due meanwhile leave late through no fault of the server
    m = run(server, "/ok", rate=400.0, concurrency=4, duration_s=2.0, validate=blocks_the_engine)
    assert_consistent(m)
    assert m.rate_held is False
    assert m.client_saturated
    assert any("could not hold the rate" in p for p in m.problems), m.problems


# Interruption


CHILD = """
import sys
from bench.engine import EngineRequest, LoadSpec, Target, measure
from bench.engine.pool import get_pool

def progress(n):
    print("pids", *get_pool().pids(), flush=True)

measure(Target("127.0.0.1", int(sys.argv[1])), EngineRequest("GET", "/ok"),
        LoadSpec(concurrency=2, duration_s=60, warmup_s=0, engine_procs=2), progress)
"""


def test_ctrl_c_leaves_no_engine_processes(server: Server) -> None:
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(server.port)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own process group, like a terminal's foreground job
    )
    try:
        assert child.stdout is not None
        line = child.stdout.readline()
        assert line.startswith("pids"), line
        pids = [int(p) for p in line.split()[1:]]
        assert len(pids) == 2
        os.killpg(child.pid, signal.SIGINT)  # Ctrl-C reaches the whole group
        child.wait(30)
        assert child.returncode != 0
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and any(_running(pid) for pid in pids):
        time.sleep(0.05)
    assert not any(_running(pid) for pid in pids)


def _running(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_a_scenario_that_is_slow_to_import_is_loaded_before_the_clock_starts(
    server: Server,
) -> None:
    from tests.engine.slow_import import ok

    scenario = Scenario("slow import", ok)
    spec = LoadSpec(concurrency=1, duration_s=0.5, warmup_s=0.1, engine_procs=1)
    m = measure_scenario(server.target, scenario, spec)
    # imported inside the window, the import would have taken all of it
    assert m.completed > 0 and m.per_s_slices is not None and all(m.per_s_slices)


async def get_path(user: VirtualUser, params: Mapping[str, Any]) -> None:
    await user.http("get", "GET", params["path"])


def test_scenarios_measured_together_each_load_their_own_server() -> None:
    """Two servers loaded by one engine at once (issue 23's interleaving): each part's users
    send to its target only."""
    with Server() as fast, Server() as slow:
        parts = [(Scenario("fast", get_path, {"path": "/ok"}), 1)]
        parts.append((Scenario("slow", get_path, {"path": "/slow"}), 1))
        spec = LoadSpec(concurrency=2, duration_s=1.0, warmup_s=0.2, engine_procs=1)
        quick, slowly = measure_together(fast.target, parts, spec, None, [fast.target, slow.target])
        # /slow answers after 0.2 s: about 5 a second; /ok back to back: far more
        assert 2 <= slowly.completed <= 6 and not slowly.failed, slowly
        assert quick.completed > 10 * slowly.completed and not quick.failed, quick
        with pytest.raises(ConfigError, match="one target per part"):
            measure_together(fast.target, parts, spec, None, [fast.target])


def test_a_duet_loads_each_server_from_a_process_on_its_own_cpus() -> None:
    """Two servers in one window (issue 23's duet): each part by one engine process pinned to
    the CPUs it names, with the whole spec's connections, sending to its own target only."""
    cpus = sorted(os.sched_getaffinity(0))
    mine = (cpus[0],), (cpus[-1],)
    seen: list[set[int]] = []

    def affinity(_: int) -> None:
        seen.extend(set(psutil.Process(pid).cpu_affinity()) for pid in get_pool().pids()[:2])

    with Server() as fast, Server() as slow:
        parts = [(fast.target, EngineRequest("GET", "/ok"), mine[0])]
        parts.append((slow.target, EngineRequest("GET", "/slow"), mine[1]))
        spec = LoadSpec(concurrency=2, duration_s=1.0, warmup_s=0.2)
        quick, slowly = measure_duet(parts, spec, affinity)
    # /slow answers after 0.2 s: about 10 a second on 2 connections; /ok back to back: far more
    assert 4 <= slowly.requests <= 12 and not slowly.errors, slowly
    assert quick.requests > 10 * slowly.requests and not quick.errors, quick
    assert quick.concurrency == slowly.concurrency == 2
    assert set(map(frozenset, seen)) == {frozenset(mine[0]), frozenset(mine[1])}
