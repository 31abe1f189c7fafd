"""Load shaping: when the next request goes out (closed model: on each answer; open: on a clock).

A pacer is told when a connection becomes ready to send (`ready`) or is lost (`lost`), and
calls `conn.send(intended_ns, now_ns)`; latency is measured from `intended_ns`.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
from collections import deque
from collections.abc import Iterable
from time import monotonic_ns
from typing import Protocol


class Sender(Protocol):
    def send(self, intended_ns: int, now_ns: int) -> None: ...


class Pacer(Protocol):
    late_sends: int
    lagging_sends: int
    intended_sends: int

    def start(self, ready: Iterable[Sender]) -> None: ...
    def ready(self, conn: Sender, now_ns: int) -> None: ...
    def lost(self, conn: Sender) -> None: ...
    def stop(self) -> None: ...


class ClosedPacer:
    """Each connection sends its next request as soon as the previous one is answered."""

    def __init__(self) -> None:
        self.late_sends = 0
        self.lagging_sends = 0
        self.intended_sends = 0
        self._started = False

    def start(self, ready: Iterable[Sender]) -> None:
        self._started = True
        now = monotonic_ns()
        for conn in ready:
            conn.send(now, now)

    def ready(self, conn: Sender, now_ns: int) -> None:
        if self._started:
            conn.send(now_ns, now_ns)

    def lost(self, conn: Sender) -> None:
        pass

    def stop(self) -> None:
        self._started = False


# Event loop timers have millisecond resolution (libuv); below that they would spin the CPU.
_MIN_TIMER_S = 0.001

# With a timerfd: the shortest sleep between two wake-ups of the pacer.
_MIN_WAKE_GAP_NS = 100_000

# A send that leaves this long after its intended time although a connection was free was held
# up by the engine itself (a busy event loop, a starved process): the engine's lag, not the
# server's. Above the worst timer delay of the event loop fallback (~1 ms).
ENGINE_LAG_NS = 2_000_000

_CLOCK_MONOTONIC = 1
_TFD_TIMER_ABSTIME = 1
_TFD_NONBLOCK = os.O_NONBLOCK  # equal on Linux, by definition
_TFD_CLOEXEC = os.O_CLOEXEC


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


class _Itimerspec(ctypes.Structure):
    _fields_ = [("it_interval", _Timespec), ("it_value", _Timespec)]


class TimerFd:
    """A Linux timerfd on CLOCK_MONOTONIC (the clock of time.monotonic_ns), armed at absolute
    times: wake-ups to the microsecond where event loop timers round to the millisecond."""

    def __init__(self) -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        self._settime = libc.timerfd_settime
        fd = libc.timerfd_create(_CLOCK_MONOTONIC, _TFD_NONBLOCK | _TFD_CLOEXEC)
        if fd < 0:
            raise OSError(ctypes.get_errno(), "timerfd_create failed")
        self.fd: int = fd
        self._spec = _Itimerspec()
        self._spec_ref = ctypes.byref(self._spec)

    def arm(self, when_ns: int) -> None:
        value = self._spec.it_value
        value.tv_sec, value.tv_nsec = divmod(max(when_ns, 1), 1_000_000_000)
        if self._settime(self.fd, _TFD_TIMER_ABSTIME, self._spec_ref, None) != 0:
            raise OSError(ctypes.get_errno(), "timerfd_settime failed")

    def clear(self) -> None:
        with contextlib.suppress(BlockingIOError):
            os.read(self.fd, 8)

    def close(self) -> None:
        os.close(self.fd)


def _timerfd() -> TimerFd | None:
    try:
        return TimerFd()
    except (OSError, AttributeError):  # not Linux: fall back to event loop timers
        return None


class OpenPacer:
    """A fixed schedule of `rate` requests/s from `start_ns`, spread over the idle connections.

    A scheduled send that finds every connection busy waits in a backlog for the next free one
    and counts as late (if its intended time is in the window); its latency still runs from the
    intended time (coordinated omission correction, as in wrk2). A send that found a free
    connection but left more than ENGINE_LAG_NS late counts as lagging: the engine, not the
    server, failed to hold the schedule there. Sends go out a little after
    their intended time (tens of µs with a timerfd, up to 0.1 ms more above 10k requests/s per
    process where sends are batched; up to ~1 ms with event loop timers where there is no
    timerfd); that delay is part of the measured latency.
    """

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        rate: float,
        start_ns: int,
        window_start_ns: int,
        window_end_ns: int,
    ) -> None:
        if rate <= 0:
            raise ValueError("rate must be positive")
        self._loop = loop
        self._interval_ns = 1e9 / rate
        self._start_ns = start_ns
        self._w_start = window_start_ns
        self._w_end = window_end_ns
        self._i = 0
        self._next_ns = start_ns
        self._idle: list[Sender] = []
        self._backlog: deque[int] = deque()
        self._timer: asyncio.TimerHandle | None = None
        self._timerfd: TimerFd | None = None
        self._started = False
        self.late_sends = 0
        self.lagging_sends = 0
        self.intended_sends = 0

    def _advance(self) -> int:
        due = self._next_ns
        if self._w_start <= due < self._w_end:
            self.intended_sends += 1
        self._i += 1
        self._next_ns = self._start_ns + int(self._i * self._interval_ns)
        return due

    def start(self, ready: Iterable[Sender]) -> None:
        self._started = True
        self._idle.extend(ready)
        self._timerfd = _timerfd()
        if self._timerfd is not None:
            self._loop.add_reader(self._timerfd.fd, self._on_timerfd)
        self._tick()

    def ready(self, conn: Sender, now_ns: int) -> None:
        if not self._started:
            return
        if self._backlog:
            conn.send(self._backlog.popleft(), now_ns)
        elif self._next_ns <= now_ns:  # due while this loop was busy: the timer is behind
            self._send(conn, self._advance(), now_ns)
        else:
            self._idle.append(conn)

    def _send(self, conn: Sender, due: int, now: int) -> None:
        if now - due > ENGINE_LAG_NS and self._w_start <= due < self._w_end:
            self.lagging_sends += 1
        conn.send(due, now)

    def lost(self, conn: Sender) -> None:
        if conn in self._idle:
            self._idle.remove(conn)

    def stop(self) -> None:
        self._started = False
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._timerfd is not None:
            self._loop.remove_reader(self._timerfd.fd)
            self._timerfd.close()
            self._timerfd = None

    def _on_timerfd(self) -> None:
        assert self._timerfd is not None
        self._timerfd.clear()
        self._tick()

    def _tick(self) -> None:
        if not self._started:
            return
        now = monotonic_ns()
        idle = self._idle
        while self._next_ns <= now:
            due = self._advance()
            if idle:
                self._send(idle.pop(), due, now)
            else:
                self._backlog.append(due)
                if self._w_start <= due < self._w_end:
                    self.late_sends += 1
        if self._timerfd is not None:
            # each wake-up costs a sleep and a switch back (tens of µs on a VM): at high rates
            # take sends in small batches, at most one wake-up per _MIN_WAKE_GAP_NS
            self._timerfd.arm(max(self._next_ns, now + _MIN_WAKE_GAP_NS))
        else:
            delay = (self._next_ns - monotonic_ns()) / 1e9
            self._timer = self._loop.call_later(max(delay, _MIN_TIMER_S), self._tick)
