"""What each engine process runs: keep-alive connections on one event loop (the hot loop).

Each `Connection` is one connection slot: an asyncio Protocol that parses responses with
httptools, reconnects itself when the connection ends, and tells the pacer when it is free.
`ShareRun` owns the slots, the counts and the measurement window of one process's share of the
load. Counting: a response is counted if it completes inside the window; a connection-level
failure (connect, disconnect, timeout, protocol) is counted if it is detected inside the window.
Latencies of successes go into an array and only become a histogram after the window.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
import traceback
from array import array
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from time import monotonic_ns
from typing import cast

from httptools import (
    HttpParserCallbackError,
    HttpParserError,
    HttpParserUpgrade,
    HttpResponseParser,
)

from bench.engine.model import HISTOGRAM_MAX_US, EngineRequest, LoadSpec, Target, new_histogram
from bench.engine.pacer import ClosedPacer, OpenPacer, Pacer
from bench.engine.wire import request_factory

MAX_PROBLEMS = 10
PROBLEM_CHARS = 300
PROGRESS_S = 0.25
VALIDATE_EVERY = 100
BACKOFF_MIN_S = 0.01
BACKOFF_MAX_S = 0.2
# The window is cut in slices of about this length, whose rates show the noise within it.
SLICE_S = 0.5


@dataclass(frozen=True)
class Job:
    """One process's share of a measurement: its connections and rate out of the spec's.
    Times are time.monotonic_ns() values (CLOCK_MONOTONIC, the same in every process of the
    machine)."""

    target: Target
    request: EngineRequest
    spec: LoadSpec
    connections: int
    rate: float | None
    start_ns: int
    window_start_ns: int
    window_end_ns: int
    token_prefix: bytes

    def execute(
        self, report: Callable[[int], None] | None, interrupted: Callable[[], bool] | None
    ) -> ShareResult:
        """Run this share in this thread (the engine process's entry point)."""
        return run_share(self, report, interrupted)


@dataclass
class ShareResult:
    """What one process counted in the window."""

    requests: int
    errors: dict[str, int]
    hdr: bytes | None
    cpu_s: float
    wall_s: float
    late_sends: int
    lagging_sends: int
    intended_sends: int
    problems: list[str] = field(default_factory=list)
    # successes in each equal slice of the window (None if the window was cut short)
    slices: list[int] | None = None


class Connection(asyncio.Protocol):
    """One connection slot (asyncio.Protocol + httptools parser callbacks)."""

    __slots__ = (
        "body",
        "failures",
        "parser",
        "responses",
        "run",
        "sent_ns",
        "start_ns",
        "transport",
    )

    def __init__(self, run: ShareRun) -> None:
        self.run = run
        self.transport: asyncio.Transport | None = None
        self.parser = HttpResponseParser(self)
        self.body: list[bytes] = []
        self.start_ns = 0  # intended send time of the request in flight; 0 = none
        self.sent_ns = 0  # actual send time of the request in flight (for timeouts)
        self.responses = 0  # on the current connection
        self.failures = 0  # connections in a row that ended without a response

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self.parser = HttpResponseParser(self)
        self.body = []
        self.responses = 0
        self.start_ns = 0
        run = self.run
        if run.stopping:
            self.transport.abort()
        elif run.started:
            run.pacer.ready(self, monotonic_ns())

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except HttpParserCallbackError as exc:
            cause = exc.__context__ or exc
            if isinstance(cause, _Unsolicited):
                # e.g. a 408 before closing an idle connection: nothing was lost, just drop it
                self.run.problem(f"response with no request in flight: {data[:80]!r}")
                if self.transport is not None:
                    self.transport.abort()
            else:
                trace = "".join(traceback.format_exception(cause))
                self.fail("client", f"engine error: {trace}")
        except HttpParserError as exc:
            self.fail("protocol", f"malformed response: {exc} (data starts {data[:80]!r})")
        except HttpParserUpgrade:
            self.fail("protocol", f"unexpected protocol upgrade: {data[:80]!r}")

    def eof_received(self) -> bool | None:
        return None  # close the transport; connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        run = self.run
        run.pacer.lost(self)
        if run.stopping:
            return
        if self.start_ns:
            self.start_ns = 0
            run.error("disconnect", f"connection closed with a request in flight ({exc})")
        if self.responses == 0:
            self.failures += 1
        run.reconnect(self)

    # httptools callbacks

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        now = monotonic_ns()
        start = self.start_ns
        run = self.run
        if not start:
            raise _Unsolicited
        self.start_ns = 0
        self.responses += 1
        self.failures = 0
        parser = self.parser
        status = parser.get_status_code()
        body = self.body
        if body:
            self.body = []
        # the next request goes out first: the server is waiting, the bookkeeping is not
        if parser.should_keep_alive():
            run.pacer.ready(self, now)
        elif self.transport is not None:
            self.transport.close()  # the server said Connection: close; reconnect on lost
        if status in run.expect:
            if run.validate is not None and (
                self.responses == 1 or self.responses % VALIDATE_EVERY == 0
            ):
                problem = run.check(b"".join(body))
                if problem is not None:
                    run.error("invalid", problem, now)
                    return
            if run.w_start <= now < run.w_end:
                run.lat_append((now - start) // 1000)
        else:
            run.error(str(status), f"HTTP {status}: {b''.join(body)[:200]!r}", now)

    # called by the pacer / the run

    def send(self, intended_ns: int, now_ns: int) -> None:
        self.start_ns = intended_ns
        self.sent_ns = now_ns
        self.transport.write(self.run.next_request())  # type: ignore[union-attr]

    def fail(self, kind: str, problem: str) -> None:
        """Count a failure of this connection and drop it (it reconnects)."""
        self.start_ns = 0
        self.run.error(kind, problem)
        if self.transport is not None:
            self.transport.abort()


class _Unsolicited(Exception):
    """A response arrived with no request in flight."""


class ShareRun:
    """One process's connections, pacer, window and counts."""

    def __init__(self, job: Job, loop: asyncio.AbstractEventLoop) -> None:
        self.job = job
        self.loop = loop
        self.expect = frozenset(job.request.expect_status)
        self.validate = job.request.validate
        self.next_request = request_factory(job.request, job.target, job.token_prefix)
        self.w_start = job.window_start_ns
        self.w_end = job.window_end_ns
        self.timeout_ns = int(job.spec.timeout_s * 1e9)
        self.latencies = array("q")
        self.lat_append = self.latencies.append
        self.errors: dict[str, int] = {}
        self.problems: list[str] = []
        self.started = False
        self.stopping = False
        self.pacer: Pacer
        if job.rate is None:
            self.pacer = ClosedPacer()
        else:
            self.pacer = OpenPacer(loop, job.rate, job.start_ns, self.w_start, self.w_end)
        self.conns = [Connection(self) for _ in range(job.connections)]
        self.tasks: set[asyncio.Task[None]] = set()
        self.done: asyncio.Future[None] = loop.create_future()

    # counting

    def error(self, kind: str, problem: str, now_ns: int = 0) -> None:
        now_ns = now_ns or monotonic_ns()
        if self.w_start <= now_ns < self.w_end:
            self.errors[kind] = self.errors.get(kind, 0) + 1
        self.problem(problem)

    def problem(self, text: str) -> None:
        text = text[:PROBLEM_CHARS]
        if len(self.problems) < MAX_PROBLEMS and text not in self.problems:
            self.problems.append(text)

    def check(self, body: bytes) -> str | None:
        assert self.validate is not None
        try:
            return self.validate(body)
        except Exception as exc:
            return f"validate raised {exc!r}"

    def counted(self) -> int:
        return len(self.latencies) + sum(self.errors.values())

    # connections

    def reconnect(self, conn: Connection) -> None:
        delay = 0.0
        if conn.failures:
            delay = min(BACKOFF_MIN_S * 2 ** (conn.failures - 1), BACKOFF_MAX_S)
        self._spawn(self._connect(conn, delay))

    def _spawn(self, coro: object) -> None:
        task = self.loop.create_task(coro)  # type: ignore[arg-type]
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _connect(self, conn: Connection, delay: float) -> None:
        target = self.job.target
        while not self.stopping:
            if delay:
                await asyncio.sleep(delay)
                if self.stopping:
                    return
            try:
                await asyncio.wait_for(
                    self.loop.create_connection(lambda: conn, target.host, target.port),
                    self.job.spec.timeout_s,
                )
                return
            except (TimeoutError, OSError) as exc:
                self.error("connect", f"connect to {target.host}:{target.port}: {exc!r}")
                conn.failures += 1
                delay = min(BACKOFF_MIN_S * 2 ** (conn.failures - 1), BACKOFF_MAX_S)

    def _check_timeouts(self) -> None:
        if self.stopping:
            return
        now = monotonic_ns()
        limit = self.timeout_ns
        for conn in self.conns:
            if conn.start_ns and now - conn.sent_ns > limit:
                conn.failures += 1  # reconnect with backoff: the server may be stuck
                conn.fail("timeout", f"no response within {self.job.spec.timeout_s} s")
        self.loop.call_later(self._timeout_tick, self._check_timeouts)

    @property
    def _timeout_tick(self) -> float:
        return min(0.1, max(self.job.spec.timeout_s / 5, 0.005))

    # the run

    def stop(self) -> None:
        if self.stopping:
            return
        self.stopping = True
        self.pacer.stop()
        for conn in self.conns:
            if conn.transport is not None:
                conn.transport.abort()
        for task in list(self.tasks):
            task.cancel()
        if not self.done.done():
            self.done.set_result(None)

    async def run(
        self, report: Callable[[int], None] | None, interrupted: Callable[[], bool] | None
    ) -> ShareResult:
        for conn in self.conns:
            self._spawn(self._connect(conn, 0.0))
        await sleep_until(self.job.start_ns)
        self.started = True
        self.pacer.start([c for c in self.conns if c.transport is not None])
        self._check_timeouts()
        self._tick(report, interrupted)
        await sleep_until(self.w_start, self.done)
        cpu0 = time.process_time()
        wall0 = monotonic_ns()
        edges = slice_edges(self.w_start, self.w_end)
        marks: list[int] = []
        for edge in edges[1:-1]:  # the count is 0 at the first edge and read at the last
            self.loop.call_later(
                (edge - monotonic_ns()) / 1e9, lambda: marks.append(len(self.latencies))
            )
        await sleep_until(self.w_end, self.done)
        self.stop()
        cpu1 = time.process_time()
        wall = (monotonic_ns() - wall0) / 1e9
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.gather(*self.tasks, return_exceptions=True)
        return ShareResult(
            requests=self.counted(),
            errors=dict(self.errors),
            hdr=encode_latencies(self.latencies),
            cpu_s=cpu1 - cpu0,
            wall_s=wall,
            late_sends=self.pacer.late_sends,
            lagging_sends=self.pacer.lagging_sends,
            intended_sends=self.pacer.intended_sends,
            problems=list(self.problems),
            slices=slice_counts(marks, len(self.latencies), len(edges) - 1),
        )

    def _tick(
        self, report: Callable[[int], None] | None, interrupted: Callable[[], bool] | None
    ) -> None:
        if self.stopping:
            return
        if interrupted is not None and interrupted():
            self.stop()
            return
        if report is not None:
            report(self.counted())
        self.loop.call_later(PROGRESS_S, self._tick, report, interrupted)


async def sleep_until(when_ns: int, done: asyncio.Future[None] | None = None) -> None:
    delay = (when_ns - monotonic_ns()) / 1e9
    if delay <= 0:
        return
    if done is None:
        await asyncio.sleep(delay)
    else:
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(asyncio.shield(done), delay)


def slice_edges(start_ns: int, end_ns: int) -> list[int]:
    """The edges of the window's slices: equal, about SLICE_S long, at least one."""
    n = max(1, round((end_ns - start_ns) / (SLICE_S * 1e9)))
    return [start_ns + (end_ns - start_ns) * k // n for k in range(n + 1)]


def slice_counts(marks: list[int], total: int, n: int) -> list[int] | None:
    """Counts per slice from the running count at each inner edge; None if edges were missed
    (the window was cut short)."""
    if len(marks) != n - 1:
        return None
    running = [0, *marks, total]
    return [b - a for a, b in itertools.pairwise(running)]


def encode_latencies(latencies_us: array[int]) -> bytes | None:
    """Latencies (µs) → encoded HdrHistogram; equal values are recorded once with a count."""
    if not latencies_us:
        return None
    hist = new_histogram()
    for value, count in Counter(latencies_us).items():
        hist.record_value(min(max(value, 0), HISTOGRAM_MAX_US), count)
    return hist.encode()


def run_share(
    job: Job,
    report: Callable[[int], None] | None = None,
    interrupted: Callable[[], bool] | None = None,
) -> ShareResult:
    """Run one share on a fresh event loop (uvloop when available) in this thread.

    `report` gets the count so far every 0.25 s; if `interrupted()` (asked as often) answers
    True, the share stops at once.
    """
    with asyncio.Runner(loop_factory=event_loop_factory()) as runner:
        share = ShareRun(job, runner.get_loop())
        return runner.run(share.run(report, interrupted))


def event_loop_factory() -> Callable[[], asyncio.AbstractEventLoop]:
    """uvloop's event loop where it is installed (every engine process runs one)."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency except on Windows
        return asyncio.new_event_loop
    return uvloop.new_event_loop
