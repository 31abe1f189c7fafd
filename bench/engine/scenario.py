"""Scenarios: each virtual user runs a chain of steps again and again, in one engine process.

A scenario is a module-level coroutine function `run(user, params)` (picklable, so engine
processes receive it by reference): it sends its steps through the `VirtualUser` it is given
(`user.http(...)`, `user.websocket(...)`), uses values from earlier answers (ids) in later
steps, and checks every answer. A step that fails (an unexpected status, a refused websocket, a
timeout, an answer that does not check) raises `StepFailed`: the scenario is counted as failed
at that step and its later steps are not sent. The engine times every step (its own histogram
and errors) and every whole scenario (from its intended start: in the open model, a start that
waited for a free user is measured from when it was due, as wrk2 does for requests).

Counting: a step or scenario counts in the window if it ends inside it. `user.count(kind, n)`
adds to counts over the whole measurement (warmup included), e.g. the task runs whose events
were sent, for the delivery check that compares them with what the server recorded.

Pacing: a scenario with an `interval_s` (closed model) is a service loop, as a Prefect
worker's: each user waits that long, ±30%, after each run before its next, and its first run
starts at a random point of one interval, so users do not poll in step.

Beside a user: `user.spawn(fn, *args)` runs the chain `fn(new_user, *args)` on a user of its
own (its own connection), as a worker starts each flow run in a process of its own, or (`loop`)
a loop beside it such as its heartbeats; it ends with the measurement, and one that fails counts
as a failed scenario at its step. `user.observe(name, µs)` records a span that is not one step
(a flow run's time from its scheduled start to being claimed); each name gets its histogram, of
the spans observed in the window.

Together: scenarios measured in one window, each with its own users (`measure_together`: flow
runs written while the UI's reads are sent), run on one event loop per process and counted
apart, each its own measurement; the process's CPU is each one's.

Lag: a scenario with a `probe` measures how long what it sent takes to become visible.
`user.trace(key, data, sent_ns)` offers an item (e.g. an event) to a sample (one per
PROBE_SPACING_S per process, at most MAX_PENDING_PROBES at a time); a probe loop asks the
server every PROBE_INTERVAL_S, with one `probe(user, pending, params)` call for all pending
items, which of them it now shows; each found item's lag is the time from its send to the
answer that showed it. Items still pending when the window ends, that had waited longer than
the longest lag found, are counted as unresolved.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import random
import time
from array import array
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Coroutine, Mapping
from dataclasses import dataclass, field
from time import monotonic_ns
from typing import Any, NamedTuple, TypeVar, cast

import websockets
from httptools import HttpParserError, HttpResponseParser
from websockets.asyncio.client import ClientConnection, connect
from websockets.protocol import State

from bench.engine.model import LoadSpec, Target
from bench.engine.retry import RetryPolicy
from bench.engine.wire import encode_request
from bench.engine.worker import (
    MAX_PROBLEMS,
    PROBLEM_CHARS,
    PROGRESS_S,
    encode_latencies,
    event_loop_factory,
    sleep_until,
    slice_counts,
    slice_edges,
)

# A failed scenario is followed by the next one after this pause, so that a server that refuses
# everything is not hammered in a busy loop (the failures are counted all the same).
FAILURE_PAUSE_S = 0.01
# Lag probes: how often the server is asked for the pending items (the lag's resolution), how
# often an item is sampled, and how many may wait at once (one query asks for all of them:
# the server's filter pages hold 50).
PROBE_INTERVAL_S = 0.1
PROBE_SPACING_S = 0.1
MAX_PENDING_PROBES = 50
# What a scenario that raised (not a failed step: a bug) counts as failed at.
RAISED = "(the scenario raised)"
# A start that leaves this late with a user free was held up by the engine. Starts are timed
# by the event loop's timers (uvloop's resolution is 1 ms), not by the request engine's
# timerfd: measured here with the server busy on the other core, they leave p50 0.3 ms, p99
# 1.4 ms, at most 2.5 ms late, so the request engine's 2 ms would call the engine the limit at
# 30 events/s and 3% of a core. Latency still runs from the intended start.
START_LAG_NS = 5_000_000

# The answer's headers the engine reads (lower case).
_READ_HEADERS = frozenset({b"retry-after", b"prefect-maintenance"})

Shares = TypeVar("Shares", "ScenarioShare", list["ScenarioShare"])
ScenarioFn = Callable[["VirtualUser", Mapping[str, Any]], Awaitable[None]]
# probe(user, pending {key: data}, params) -> the keys the server now shows
ProbeFn = Callable[
    ["VirtualUser", Mapping[str, Any], Mapping[str, Any]], Awaitable[Collection[str]]
]


@dataclass(frozen=True)
class Scenario:
    """What each virtual user runs: `run(user, params)`, a module-level coroutine function;
    the paths of its steps are relative to `api_path`. `probe`, if given, finds the items the
    users `trace` (the module docstring's Lag)."""

    name: str
    run: ScenarioFn
    params: Mapping[str, Any] = field(default_factory=dict)
    api_path: str = ""
    probe: ProbeFn | None = None
    interval_s: float | None = None
    # the Prefect client's retries, for a scenario that emulates it (bench.engine.retry);
    # each try is counted at its step, each one sent again as a retry
    retry: RetryPolicy | None = None


class StepFailed(Exception):
    """A step of a scenario did not answer as it must: `kind` is the HTTP status or a failure
    kind (connect, disconnect, timeout, invalid, websocket)."""

    def __init__(self, step: str, kind: str, problem: str) -> None:
        super().__init__(f"{step}: {problem}")
        self.step, self.kind, self.problem = step, kind, problem


@dataclass(frozen=True)
class ScenarioJob:
    """One process's share of a scenario measurement: its virtual users and start rate."""

    target: Target
    scenario: Scenario
    spec: LoadSpec
    users: int
    rate: float | None
    start_ns: int
    window_start_ns: int
    window_end_ns: int
    token_prefix: str

    def execute(
        self, report: Callable[[int], None] | None, interrupted: Callable[[], bool] | None
    ) -> ScenarioShare:
        """Run this share on a fresh event loop (uvloop when available) in this thread."""
        return _run_loop(ScenarioRun(self).run(report, interrupted))


@dataclass(frozen=True)
class TogetherJob:
    """One process's shares of scenarios measured together (the module docstring's
    Together): one ScenarioJob each, one window."""

    jobs: tuple[ScenarioJob, ...]

    def execute(
        self, report: Callable[[int], None] | None, interrupted: Callable[[], bool] | None
    ) -> list[ScenarioShare]:
        """Run the shares on one event loop; the first scenario's completions are reported."""
        return _run_loop(self._run(report, interrupted))

    async def _run(
        self, report: Callable[[int], None] | None, interrupted: Callable[[], bool] | None
    ) -> list[ScenarioShare]:
        runs = [
            ScenarioRun(job).run(report if i == 0 else None, interrupted)
            for i, job in enumerate(self.jobs)
        ]
        return list(await asyncio.gather(*runs))


@dataclass
class StepShare:
    """What one process counted of one step in the window (`retry_s`: what the retries cost,
    from each failed try's start to the next try's)."""

    requests: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    hdr: bytes | None = None
    retries: int = 0
    retry_s: float = 0.0


@dataclass
class ScenarioShare:
    """What one process counted in the window (counts: over the whole measurement)."""

    completed: int
    failed: dict[str, int]
    hdr: bytes | None
    steps: dict[str, StepShare]
    step_count: int
    cpu_s: float
    wall_s: float
    late_starts: int
    lagging_starts: int
    intended_starts: int
    problems: list[str]
    counts: dict[str, int]
    slices: list[int] | None
    lag_hdr: bytes | None = None
    lag_probes: int = 0
    lag_unresolved: int = 0
    timings: dict[str, bytes | None] = field(default_factory=dict)


class _Answer(NamedTuple):
    status: int
    body: bytes
    keep_alive: bool
    # the headers the Prefect client's retries read (bench.engine.retry)
    retry_after: str | None
    maintenance: bool


class _Broken(Exception):
    """A try that got no answer: `kind` is the engine's failure kind (timeout, connect,
    disconnect)."""

    def __init__(self, kind: str, problem: str) -> None:
        super().__init__(problem)
        self.kind, self.problem = kind, problem


class _HttpConnection(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection, one request at a time (httptools parses)."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.parser = HttpResponseParser(self)
        self.body: list[bytes] = []
        self.headers: dict[bytes, str] = {}
        self.waiter: asyncio.Future[_Answer] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except HttpParserError as exc:
            self._fail(ConnectionError(f"malformed response: {exc} ({data[:80]!r})"))

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self._fail(ConnectionError(f"connection closed with a request in flight ({exc})"))

    def on_header(self, name: bytes, value: bytes) -> None:
        name = name.lower()
        if name in _READ_HEADERS:
            self.headers[name] = value.decode("latin-1")

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        waiter, self.waiter = self.waiter, None
        body, self.body = b"".join(self.body), []
        headers, self.headers = self.headers, {}
        if waiter is not None and not waiter.done():
            waiter.set_result(
                _Answer(
                    self.parser.get_status_code(),
                    body,
                    self.parser.should_keep_alive(),
                    headers.get(b"retry-after"),
                    headers.get(b"prefect-maintenance") == "true",
                )
            )

    def _fail(self, exc: Exception) -> None:
        waiter, self.waiter = self.waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc)


class VirtualUser:
    """One virtual user: its own keep-alive HTTP connection, the steps it sends, what it counts.

    `state` is the scenario's own, kept from one run of it to the next (e.g. an open websocket).
    The probe loop's user is not `measured`: its requests are not the scenario's steps.
    """

    def __init__(self, run: ScenarioRun, index: int, measured: bool = True) -> None:
        self.run = run
        self.index = index
        self.measured = measured
        self.state: dict[str, Any] = {}
        self._conn: _HttpConnection | None = None
        self._sockets: list[ClientConnection] = []
        self._tokens = itertools.count(1)
        self.answered = False  # has had an answer (the Prefect client retries refusals then)

    def unique(self) -> str:
        """A token unique to this call in the whole measurement (e.g. for names)."""
        return f"{self.run.job.token_prefix}{self.index}-{next(self._tokens)}"

    def count(self, kind: str, n: int = 1) -> None:
        """Add `n` to what the scenarios sent of `kind` (for the delivery check)."""
        self.run.counts[kind] += n

    def observe(self, name: str, micros: int) -> None:
        """Record a span of `micros` µs under `name` (counted if observed in the window)."""
        self.run.observe(name, micros)

    def spawn(self, fn: Callable[..., Awaitable[None]], *args: Any, loop: bool = False) -> None:
        """Run `fn(user, *args)` beside this user, on a user of its own (the module docstring's
        Beside a user); `loop`: it runs until stopped (a heartbeat loop), so that a single run
        of the scenario stops it once the rest is done."""
        self.run.spawn(fn, args, loop)

    def trace(self, key: str, data: Any, sent_ns: int) -> bool:
        """Offer what was sent at `sent_ns` (monotonic_ns) to the lag sample, under `key`;
        True if it was taken (the scenario's probe gets `data` to look for it)."""
        return self.run.trace(key, data, sent_ns)

    def _done(self, step: str, started_ns: int) -> None:
        if self.measured:
            self.run.step_done(step, started_ns)

    def _retried(self, step: str, failed_try_ns: int) -> None:
        if self.measured:
            self.run.step_retried(step, failed_try_ns)

    def _failed(self, step: str, kind: str, problem: str, note: bool = True) -> StepFailed:
        """The step's failure, its error counted (measured users, in the window) and, with
        `note`, its problem noted; a try the client sends again is noted once it is known."""
        if self.measured:
            return self.run.step_failed(step, kind, problem, note)
        if note:
            self.run.problem(f"{step}: {problem}")
        return StepFailed(step, kind, problem)

    def _noted(self, failure: StepFailed, retried: bool = False) -> StepFailed:
        again = " (sent again, as the client does)" if retried else ""
        self.run.problem(f"{failure}{again}")
        return failure

    async def http(
        self,
        step: str,
        method: str,
        path: str,
        body: bytes | None = None,
        expect: tuple[int, ...] = (200,),
    ) -> bytes:
        """Send one request as step `step` and return the body of its answer; StepFailed unless
        the status is one of `expect`, after the scenario's retries (bench.engine.retry: the
        Prefect client's, tries and waits alike). `path` is relative to the API root."""
        policy = self.run.job.scenario.retry
        request = encode_request(method, self.run.api_path + path, self.run.job.target, body)
        tries = 0
        while True:
            started = monotonic_ns()
            retry_after, maintenance = None, False
            try:
                answer = await self._send(request)
            except _Broken as broken:
                problem = f"{method} {path}: {broken.problem}"
                failure = self._failed(step, broken.kind, problem, note=False)
            else:
                if answer.status in expect:
                    self._done(step, started)
                    return answer.body
                problem = f"HTTP {answer.status}: {answer.body[:200]!r}"
                failure = self._failed(step, str(answer.status), problem, note=False)
                retry_after, maintenance = answer.retry_after, answer.maintenance
            if policy is None or not policy.retried(failure.kind, self.answered):
                raise self._noted(failure)
            tries += 0 if maintenance else 1
            answered = failure.kind.isdigit()
            if tries > policy.max_retries and not answered:
                raise self._noted(failure)
            # an answer is waited for once more after the last try, as the client's loop does
            await asyncio.sleep(policy.wait_s(tries, retry_after))
            if tries > policy.max_retries:
                raise self._noted(failure)
            self._noted(failure, retried=True)
            self._retried(step, started)

    async def _send(self, request: bytes) -> _Answer:
        """One try of a request: its answer, or _Broken."""
        run = self.run
        await run.admit()
        try:
            answer = await asyncio.wait_for(self._exchange(request), run.job.spec.timeout_s)
        except TimeoutError:
            self._drop()
            raise _Broken("timeout", f"no answer within {run.job.spec.timeout_s} s") from None
        except OSError as exc:
            kind = "connect" if self._conn is None else "disconnect"
            self._drop()
            raise _Broken(kind, str(exc)) from None
        finally:
            run.land()
        self.answered = True
        if not answer.keep_alive:
            self._drop()
        return answer

    async def http_json(
        self,
        step: str,
        method: str,
        path: str,
        body: Any = None,
        expect: tuple[int, ...] = (200,),
    ) -> Any:
        """`http` with a JSON body (a Python value) and the decoded JSON answer."""
        data = None if body is None else json.dumps(body, separators=(",", ":")).encode()
        answer = await self.http(step, method, path, data, expect)
        try:
            return json.loads(answer)
        except ValueError:
            raise self._failed(step, "invalid", f"not JSON: {answer[:100]!r}") from None

    def invalid(self, step: str, problem: str) -> StepFailed:
        """The error for an answer that arrived but does not check (raise it)."""
        return self._failed(step, "invalid", problem)

    @contextlib.asynccontextmanager
    async def websocket(
        self, step: str, path: str, subprotocols: tuple[str, ...] = ()
    ) -> AsyncIterator[ClientConnection]:
        """A websocket to `path` (relative to the API root), opened as step `step`, closed
        when the block ends."""
        ws = await self._connect(step, path, subprotocols)
        try:
            yield ws
        finally:
            with contextlib.suppress(Exception):
                await ws.close()

    async def open_websocket(
        self, step: str, path: str, subprotocols: tuple[str, ...] = ()
    ) -> ClientConnection:
        """A websocket kept beyond this run of the scenario (keep it in `state`); closed when
        the measurement ends."""
        ws = await self._connect(step, path, subprotocols)
        self._sockets = [s for s in self._sockets if s.state is not State.CLOSED] + [ws]
        return ws

    async def _connect(
        self, step: str, path: str, subprotocols: tuple[str, ...]
    ) -> ClientConnection:
        run = self.run
        target = run.job.target
        uri = f"ws://{target.authority}{run.api_path}{path}"
        await run.admit()
        started = monotonic_ns()
        try:
            ws = await asyncio.wait_for(
                connect(
                    uri,
                    subprotocols=[websockets.Subprotocol(s) for s in subprotocols],
                    open_timeout=None,
                    ping_interval=None,
                    close_timeout=1,
                    user_agent_header="prefect-bench",
                ),
                run.job.spec.timeout_s,
            )
        except TimeoutError:
            raise self._failed(step, "timeout", f"websocket {path} did not open") from None
        except websockets.InvalidStatus as exc:
            status = exc.response.status_code
            raise self._failed(
                step, str(status), f"websocket {path} refused: HTTP {status}"
            ) from None
        except (OSError, websockets.WebSocketException) as exc:
            raise self._failed(step, "websocket", f"websocket {path}: {exc!r}") from None
        finally:
            run.land()
        self._done(step, started)
        return ws

    async def ws_exchange(
        self, step: str, ws: ClientConnection, frames: list[str], answer: bool = False
    ) -> str | None:
        """Send `frames` as step `step`; then wait for the server's next message (`answer`) or
        for a pong (the server has read everything sent before it); returns the message."""
        run = self.run
        await run.admit()
        started = monotonic_ns()
        try:
            async with asyncio.timeout(run.job.spec.timeout_s):
                for frame in frames:
                    await ws.send(frame)
                if answer:
                    message = await ws.recv()
                    reply = message if isinstance(message, str) else message.decode()
                else:
                    await (await ws.ping())
                    reply = None
        except TimeoutError:
            raise self._failed(step, "timeout", "no answer on the websocket") from None
        except websockets.ConnectionClosed as exc:
            # by the close code the server sent (1011: its handler raised), 1006 if none
            code = exc.rcvd.code if exc.rcvd else 1006
            raise self._failed(step, f"closed {code}", f"the server closed it: {exc}") from None
        finally:
            run.land()
        self._done(step, started)
        return reply

    async def _exchange(self, request: bytes) -> _Answer:
        conn = self._conn
        if conn is None or conn.transport is None:
            target = self.run.job.target
            loop = asyncio.get_running_loop()
            _, conn = await loop.create_connection(_HttpConnection, target.host, target.port)
            self._conn = conn
        waiter: asyncio.Future[_Answer] = asyncio.get_running_loop().create_future()
        conn.waiter = waiter
        assert conn.transport is not None
        conn.transport.write(request)
        return await waiter

    def _drop(self) -> None:
        if self._conn is not None and self._conn.transport is not None:
            self._conn.transport.abort()
        self._conn = None

    async def close(self) -> None:
        """Close its connection and the websockets it kept open."""
        self._drop()
        sockets, self._sockets = self._sockets, []
        for ws in sockets:
            with contextlib.suppress(Exception):
                await ws.close()


class ScenarioRun:
    """One process's virtual users, start schedule, window and counts."""

    def __init__(self, job: ScenarioJob) -> None:
        self.job = job
        self.api_path = job.scenario.api_path
        self.w_start = job.window_start_ns
        self.w_end = job.window_end_ns
        self.durations = array("q")
        self.step_order: dict[str, None] = {}  # the steps in the order the scenario sends them
        self.step_latencies: dict[str, array[int]] = {}
        self.step_errors: dict[str, Counter[str]] = {}
        self.step_retries: Counter[str] = Counter()
        self.step_retry_ns: Counter[str] = Counter()
        self.failed: Counter[str] = Counter()
        self.counts: Counter[str] = Counter()
        self.problems: list[str] = []
        self.late_starts = 0
        self.lagging_starts = 0
        self.intended_starts = 0
        self.idle_users = 0
        self.stopping = False
        # the steps on the wire: when the window closes they finish, and no other starts
        self.in_flight = 0
        self.landed = asyncio.Event()
        # lag sample: key -> (sent_ns, data) of what waits to be found; the lags found (µs)
        self.pending: dict[str, tuple[int, Any]] = {}
        self.last_trace_ns = 0
        self.lags = array("q")
        self.timings: dict[str, array[int]] = {}
        self.spawned: set[asyncio.Task[None]] = set()
        self.loops: set[asyncio.Task[None]] = set()
        self.spawned_failures: list[StepFailed] = []
        self._spawn_index = itertools.count(job.users)

    # what the users report

    def _in_window(self, now_ns: int) -> bool:
        return self.w_start <= now_ns < self.w_end

    def step_done(self, step: str, started_ns: int) -> None:
        now = monotonic_ns()
        self.step_order.setdefault(step)
        if self._in_window(now):
            latencies = self.step_latencies.get(step)
            if latencies is None:
                latencies = self.step_latencies[step] = array("q")
            latencies.append((now - started_ns) // 1000)

    def step_retried(self, step: str, failed_try_ns: int) -> None:
        now = monotonic_ns()
        if self._in_window(now):
            self.step_retries[step] += 1
            self.step_retry_ns[step] += now - failed_try_ns

    async def admit(self) -> None:
        """Before a step goes on the wire: once the window has closed none does (it waits to
        be cancelled), so that what was sent is exactly what the steps that began sent."""
        if self.stopping:
            await asyncio.get_running_loop().create_future()
        self.in_flight += 1

    def land(self) -> None:
        """A step admitted is off the wire (answered, failed or cancelled)."""
        self.in_flight -= 1
        if self.stopping and not self.in_flight:
            self.landed.set()

    async def _drain(self) -> None:
        """Let the steps on the wire when the window closed finish (at most the step timeout):
        what they send is sent, and counted as the scenario counts it."""
        if self.in_flight:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.landed.wait(), self.job.spec.timeout_s)

    def step_failed(self, step: str, kind: str, problem: str, note: bool = True) -> StepFailed:
        self.step_order.setdefault(step)
        if self._in_window(monotonic_ns()):
            self.step_errors.setdefault(step, Counter())[kind] += 1
        if note:
            self.problem(f"{step}: {problem}")
        return StepFailed(step, kind, problem)

    def trace(self, key: str, data: Any, sent_ns: int) -> bool:
        if self.job.scenario.probe is None or len(self.pending) >= MAX_PENDING_PROBES:
            return False
        if sent_ns - self.last_trace_ns < PROBE_SPACING_S * 1e9:
            return False
        self.last_trace_ns = sent_ns
        self.pending[key] = (sent_ns, data)
        return True

    def observe(self, name: str, micros: int) -> None:
        if self._in_window(monotonic_ns()):
            self.timings.setdefault(name, array("q")).append(max(micros, 0))

    def spawn(self, fn: Callable[..., Awaitable[None]], args: tuple[Any, ...], loop: bool) -> None:
        user = VirtualUser(self, next(self._spawn_index))
        task = asyncio.create_task(self._spawned(user, fn, args))
        self.spawned.add(task)
        task.add_done_callback(self.spawned.discard)
        if loop:
            self.loops.add(task)
            task.add_done_callback(self.loops.discard)

    async def _spawned(
        self, user: VirtualUser, fn: Callable[..., Awaitable[None]], args: tuple[Any, ...]
    ) -> None:
        try:
            await fn(user, *args)
        except StepFailed as exc:
            self.spawned_failures.append(exc)
            if self._in_window(monotonic_ns()):
                self.failed[exc.step] += 1
        except Exception as exc:
            self._raised(exc)
        finally:
            await user.close()

    def _raised(self, exc: Exception) -> None:
        self.problem(f"the scenario raised {exc!r}")
        if self._in_window(monotonic_ns()):
            self.failed[RAISED] += 1

    async def join_spawned(self) -> None:
        """Wait for the chains spawned so far, and for those they spawn; then stop the loops."""
        while chains := self.spawned - self.loops:
            await asyncio.gather(*chains, return_exceptions=True)
        for task in self.loops:
            task.cancel()
        await asyncio.gather(*self.loops, return_exceptions=True)

    def problem(self, text: str) -> None:
        text = text[:PROBLEM_CHARS]
        if len(self.problems) < MAX_PROBLEMS and text not in self.problems:
            self.problems.append(text)

    def completed(self) -> int:
        return len(self.durations)

    # the users

    async def _one(self, user: VirtualUser, intended_ns: int) -> None:
        try:
            await self.job.scenario.run(user, self.job.scenario.params)
        except StepFailed as exc:
            if self._in_window(monotonic_ns()):
                self.failed[exc.step] += 1
            await asyncio.sleep(FAILURE_PAUSE_S)
            return
        except Exception as exc:  # a bug in the scenario: told and counted, the user goes on
            self._raised(exc)
            await asyncio.sleep(FAILURE_PAUSE_S)
            return
        now = monotonic_ns()
        if self._in_window(now):
            self.durations.append((now - intended_ns) // 1000)

    async def _closed_user(self, user: VirtualUser) -> None:
        interval = self.job.scenario.interval_s
        if interval:
            await asyncio.sleep(random.uniform(0, interval))
        while not self.stopping:
            await self._one(user, monotonic_ns())
            if interval:
                await asyncio.sleep(interval * random.uniform(0.7, 1.3))

    async def _open_user(self, user: VirtualUser, starts: asyncio.Queue[int]) -> None:
        while not self.stopping:
            self.idle_users += 1
            try:
                due = await starts.get()
            finally:
                self.idle_users -= 1
            await self._one(user, due)

    async def _schedule(self, starts: asyncio.Queue[int]) -> None:
        """Put a start in the queue at each due time of the rate's fixed schedule."""
        assert self.job.rate is not None
        interval = 1e9 / self.job.rate
        for i in itertools.count():
            due = self.job.start_ns + int(i * interval)
            if due >= self.w_end:
                return
            delay = (due - monotonic_ns()) / 1e9
            if delay > 0:
                await asyncio.sleep(delay)
            in_window = self._in_window(due)
            if in_window:
                self.intended_starts += 1
                if self.idle_users <= starts.qsize():  # no user free for this start
                    self.late_starts += 1
                elif monotonic_ns() - due > START_LAG_NS:
                    self.lagging_starts += 1
            starts.put_nowait(due)

    def _unresolved(self) -> int:
        """The pending items that had waited longer than the longest lag found (all of them
        when none was found): a longer tail than the window could show, or items lost. Younger
        ones were merely sent too close to the window's end."""
        longest_ns = max(self.lags, default=0) * 1000
        return sum(1 for sent, _ in self.pending.values() if self.w_end - sent > longest_ns)

    async def _probe(self, probe: ProbeFn) -> None:
        """Ask the server for the pending items every PROBE_INTERVAL_S; a found item's lag
        counts in the window if the answer that showed it came inside it."""
        user = VirtualUser(self, -1, measured=False)
        try:
            while not self.stopping:
                await asyncio.sleep(PROBE_INTERVAL_S)
                if not self.pending:
                    continue
                asked = {key: data for key, (_, data) in self.pending.items()}
                try:
                    found = await probe(user, asked, self.job.scenario.params)
                except StepFailed:
                    continue  # the probe user noted the problem; ask again next time
                now = monotonic_ns()
                for key in found:
                    if (sent := self.pending.pop(key, None)) and self._in_window(now):
                        self.lags.append((now - sent[0]) // 1000)
        finally:
            await user.close()

    async def run(
        self, report: Callable[[int], None] | None, interrupted: Callable[[], bool] | None
    ) -> ScenarioShare:
        job = self.job
        users = [VirtualUser(self, i) for i in range(job.users)]
        await sleep_until(job.start_ns)
        tasks: list[asyncio.Task[None]] = []
        if job.scenario.probe is not None:
            tasks.append(asyncio.create_task(self._probe(job.scenario.probe)))
        if job.rate is None:
            tasks += [asyncio.create_task(self._closed_user(u)) for u in users]
        else:
            starts: asyncio.Queue[int] = asyncio.Queue()
            tasks += [asyncio.create_task(self._open_user(u, starts)) for u in users]
            tasks.append(asyncio.create_task(self._schedule(starts)))
        ticker = asyncio.create_task(self._tick(report, interrupted))
        await sleep_until(self.w_start)
        cpu0, wall0 = time.process_time(), monotonic_ns()
        edges = slice_edges(self.w_start, self.w_end)
        marks: list[int] = []
        loop = asyncio.get_running_loop()
        for edge in edges[1:-1]:
            loop.call_later((edge - monotonic_ns()) / 1e9, lambda: marks.append(self.completed()))
        # the window ends on time, or at once when the ticker sees an interruption
        await asyncio.wait({ticker}, timeout=max((self.w_end - monotonic_ns()) / 1e9, 0))
        self.stopping = True
        cpu_s, wall_s = time.process_time() - cpu0, (monotonic_ns() - wall0) / 1e9
        if not ticker.done():  # an interrupted measurement is not kept: no need to wait
            await self._drain()
        for task in [*tasks, ticker]:
            task.cancel()
        await asyncio.gather(*tasks, ticker, return_exceptions=True)
        while spawned := set(self.spawned):  # what they spawned ends with the measurement too
            for task in spawned:
                task.cancel()
            await asyncio.gather(*spawned, return_exceptions=True)
        unresolved = self._unresolved()
        await asyncio.gather(*(user.close() for user in users))
        steps = {
            name: StepShare(
                requests=len(self.step_latencies.get(name, ()))
                + sum(self.step_errors.get(name, Counter()).values()),
                errors=dict(self.step_errors.get(name, {})),
                hdr=encode_latencies(self.step_latencies.get(name, array("q"))),
                retries=self.step_retries[name],
                retry_s=self.step_retry_ns[name] / 1e9,
            )
            for name in self.step_order
        }
        return ScenarioShare(
            completed=self.completed(),
            failed=dict(self.failed),
            hdr=encode_latencies(self.durations),
            steps=steps,
            step_count=sum(s.requests for s in steps.values()),
            cpu_s=cpu_s,
            wall_s=wall_s,
            late_starts=self.late_starts,
            lagging_starts=self.lagging_starts,
            intended_starts=self.intended_starts,
            problems=list(self.problems),
            counts=dict(self.counts),
            slices=slice_counts(marks, self.completed(), len(edges) - 1),
            lag_hdr=encode_latencies(self.lags),
            lag_probes=len(self.lags),
            lag_unresolved=unresolved,
            timings={name: encode_latencies(spans) for name, spans in self.timings.items()},
        )

    async def _tick(
        self, report: Callable[[int], None] | None, interrupted: Callable[[], bool] | None
    ) -> None:
        """Report progress every PROGRESS_S; ends the run early when interrupted."""
        while True:
            if interrupted is not None and interrupted():
                return
            if report is not None:
                report(self.completed())
            await asyncio.sleep(PROGRESS_S)


def _run_loop(coro: Coroutine[Any, Any, Shares]) -> Shares:
    with asyncio.Runner(loop_factory=event_loop_factory()) as runner:
        return runner.run(coro)


async def run_once(target: Target, scenario: Scenario, timeout_s: float = 30.0) -> dict[str, int]:
    """Run `scenario` once, in this process (to verify it before measuring), with the chains
    it spawns: StepFailed if a step fails; returns what it counted."""
    spec = LoadSpec(concurrency=1, duration_s=1e9, warmup_s=0.0, timeout_s=timeout_s)
    job = ScenarioJob(target, scenario, spec, 1, None, 0, 0, 2**62, "verify-")
    run = ScenarioRun(job)
    user = VirtualUser(run, 0)
    try:
        await scenario.run(user, scenario.params)
        await run.join_spawned()
    finally:
        await user.close()
    if run.spawned_failures:
        raise run.spawned_failures[0]
    return dict(run.counts)


__all__ = ["Scenario", "ScenarioJob", "StepFailed", "TogetherJob", "VirtualUser", "run_once"]
