"""A server stall, seen by the open model and (mostly) hidden by the closed one.

The real Python Prefect server is SIGSTOPped for one second in the middle of a measurement.
The open model keeps its schedule while the server is stopped, so every request scheduled during
the stall is measured from its intended send time: the stall shows in p99.9 and max, and in the
many requests that waited half a second or more. The closed model only had its few in-flight
requests waiting (coordinated omission): its max shows the stall, but few samples do.

A timer thread stops the server and continues it in a `finally`; leaving the `stall` context
also continues it, so a failing test never leaves the server stopped.
"""

from __future__ import annotations

import contextlib
import re
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

import psutil
import pytest

from bench.engine import EngineRequest, LoadSpec, Target, decode_histogram, measure
from bench.results import Measurement
from bench.servers.adapter import ServerSetup
from bench.servers.registry import make_server
from bench.servers.running import RunningServer, start_server

pytestmark = pytest.mark.slow

RATE = 200.0  # requests/s: the Python server answers /api/health several times faster
OPEN_CONNECTIONS = 8
CLOSED_CONNECTIONS = 4
DURATION_S = 5.0
WARMUP_S = 1.0
STALL_AFTER_S = 1.5  # into the measurement window
STALL_S = 1.0
SLOW_US = 500_000  # a latency this long or longer shows the stall


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    """A Python Prefect server of this module's own: these tests stop it."""
    tmp = tmp_path_factory.mktemp("stall-server")
    setup = ServerSetup(db="sqlite", broker="memory", logdir=tmp, datadir=tmp / "data")
    with start_server(make_server("python"), setup) as running:
        yield running


def _signal_tree(procs: list[psutil.Process], sig: signal.Signals) -> None:
    for proc in procs:
        with contextlib.suppress(psutil.NoSuchProcess, ProcessLookupError):
            proc.send_signal(sig)


class Stall:
    """Stops a server's processes for `STALL_S` seconds, `STALL_AFTER_S` after `arm()`."""

    def __init__(self, server: RunningServer) -> None:
        self.procs = server.process.tree()
        self.timer: threading.Timer | None = None
        self.started_ns = 0
        self.ended_ns = 0

    def arm(self) -> None:
        if self.timer is None:
            self.timer = threading.Timer(STALL_AFTER_S, self._stall)
            self.timer.start()

    def _stall(self) -> None:
        self.started_ns = time.monotonic_ns()
        try:
            _signal_tree(self.procs, signal.SIGSTOP)
            time.sleep(STALL_S)  # the length of the stall, not a wait for something
        finally:
            _signal_tree(self.procs, signal.SIGCONT)
            self.ended_ns = time.monotonic_ns()

    def close(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer.join()
        _signal_tree(self.procs, signal.SIGCONT)  # whatever happened, the server goes on


@contextlib.contextmanager
def stall(server: RunningServer) -> Iterator[Stall]:
    s = Stall(server)
    try:
        yield s
    finally:
        s.close()


@dataclass
class StalledRun:
    measurement: Measurement
    stall_s: float

    @property
    def slow(self) -> int:
        """How many latencies were SLOW_US or longer."""
        h = decode_histogram(self.measurement)
        return sum(
            item.count_at_value_iterated_to
            for item in h.get_recorded_iterator()
            if item.value_iterated_to >= SLOW_US
        )


def _run_with_stall(server: RunningServer, spec: LoadSpec) -> StalledRun:
    """Measure GET /api/health; the server stalls STALL_AFTER_S after the window starts."""
    request = EngineRequest("GET", server.api_path + "/health")
    seen_ns: list[int] = []
    with stall(server) as s:

        def progress(counted: int) -> None:
            if counted > 0 and not seen_ns:  # only responses in the window count: it has begun
                seen_ns.append(time.monotonic_ns())
                s.arm()

        m = measure(Target("127.0.0.1", server.port), request, spec, progress)
    assert s.started_ns and s.ended_ns, "the stall did not happen during the measurement"
    # The window began before it was seen, so it ended by seen + DURATION_S at the latest.
    assert s.ended_ns < seen_ns[0] + DURATION_S * 1e9, "the stall did not end inside the window"
    server.check_alive()
    for proc in server.process.tree():  # running again
        assert proc.status() != psutil.STATUS_STOPPED, proc
    return StalledRun(m, (s.ended_ns - s.started_ns) / 1e9)


@pytest.fixture(scope="module")
def open_run(server: RunningServer) -> StalledRun:
    spec = LoadSpec(OPEN_CONNECTIONS, DURATION_S, WARMUP_S, rate=RATE)
    return _run_with_stall(server, spec)


@pytest.fixture(scope="module")
def closed_run(server: RunningServer) -> StalledRun:
    return _run_with_stall(server, LoadSpec(CLOSED_CONNECTIONS, DURATION_S, WARMUP_S))


def _describe(run: StalledRun) -> str:
    m = run.measurement
    return (
        f"requests={m.requests} rps={m.rps:.0f} errors={m.errors} latency_ms={m.latency_ms} "
        f"slow={run.slow} late_sends={m.late_sends} saturated={m.client_saturated} "
        f"stall={run.stall_s:.2f}s problems={m.problems}"
    )


def test_open_model_shows_the_stall_in_its_tail(open_run: StalledRun) -> None:
    m = open_run.measurement
    info = _describe(open_run)
    assert open_run.stall_s >= STALL_S, info
    assert not m.errors, info
    # The server held the rate: the stall delays requests, the backlog is sent afterwards.
    assert m.offered_rps == RATE
    assert m.rps >= 0.8 * RATE, info
    latency = m.latency_ms
    assert latency is not None, info
    assert latency.p999 >= SLOW_US / 1000, info
    assert latency.max >= SLOW_US / 1000, info
    # Requests due while every connection waited on the stopped server left late; the engine
    # counts them, and with more than 1% of the sends late it marks the measurement.
    assert m.late_sends is not None and m.late_sends >= RATE * STALL_S / 4, info
    assert m.rate_held is False, info
    # After a whole second stalled, the catch-up burst finds connections free while its sends
    # are already late, and the engine counts some as its own (40 of 296 and 91 of 343 seen in
    # CI: a known misclassification, left open in issue 10's note): the client is blamed
    # only if those are more than a third of the late sends.
    own = next(
        (int(x.group(1)) for p in m.problems if (x := re.match(r"the engine sent (\d+) ", p))), 0
    )
    assert not m.client_saturated or own < m.late_sends / 3, info


def test_closed_model_hides_most_of_the_stall(open_run: StalledRun, closed_run: StalledRun) -> None:
    m = closed_run.measurement
    info = f"closed: {_describe(closed_run)}; open: {_describe(open_run)}"
    assert closed_run.stall_s >= STALL_S, info
    assert not m.errors, info
    latency = m.latency_ms
    assert latency is not None and latency.max >= SLOW_US / 1000, info
    # Only the requests in flight when the server stopped waited; the open model measured every
    # request that was due during the stall (about RATE * STALL_S / 2 of them waited >= 0.5 s).
    assert closed_run.slow >= 1, info
    assert open_run.slow >= RATE * STALL_S / 8, info
    assert open_run.slow >= 5 * closed_run.slow, info
