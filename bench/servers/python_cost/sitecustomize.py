"""Loaded by the python server of a --cost cell (bench/servers/python.py puts this folder on
its PYTHONPATH): holds still the timer-driven work the API process does while
no request is served, so that callgrind's count of a block of requests is the requests'.

Prefect runs a docket worker in its API process even with --no-services; it polls its
in-memory broker every 250 ms (docket.Worker's minimum_check_interval and
scheduling_resolution) and sends a heartbeat every 2 s (docket.Docket's heartbeat_interval):
measured idle under callgrind, 4.8 M instructions a second, a quarter of what GET /health costs
landing in a block or not by the clock. Here each runs once an hour. What the requests enqueue
for the worker is still enqueued (and counted); it is left unprocessed, as the services' own
cost is not a request's. Its cancellation listener reads burner_redis's pub/sub (the
memory:// broker) 10 times a second, each read a trip through a thread
(`asyncio.to_thread(queue.get, True, 0.1)`): here it waits in one read of a minute. uvicorn's
main loop ticks every 0.1 s (it refreshes the Date header once a second and looks whether a
signal asked it to exit): here it ticks when the signal comes (its handler wakes it) or once an
hour, so every response carries the Date of the server's start. What stays is Prefect's
distributors' 1 s timeouts.

The server's random bytes (`os.urandom`: the ids it makes, uuid4 and Prefect's uuid7) come
from a generator seeded with 0, so that two servers fed the same requests make the same ids
and their databases the same shape (hash seeds are fixed by PYTHONHASHSEED, [env.cost]).

The cyclic garbage collector is off: a collection lands in a block or not by the count of
allocations since the last one, and a full one is worth ~70,000 instructions a request over a
block of 50 (a seed A/A here: GET flow's first block 1.6% above its others with the collector
on; every figure within 0.4% between two servers with it off). What it would have collected
stays in memory for the few thousand requests of a cost run; the work of collecting is not
counted, so a change that makes more cyclic garbage shows in memory, not in instructions.

Being first on PYTHONPATH, this module hides any other `sitecustomize` (a server's own, on its
PYTHONPATH from servers.toml; a distribution's): it runs the next one found on sys.path, as
Python would have without it.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import functools
import gc
import importlib.util
import os
import queue
import random
import sys
import time
from pathlib import Path

gc.disable()
_SEEDED = random.Random(0)
os.urandom = _SEEDED.randbytes  # no secret here: a server only measured, on loopback

HELD_STILL = dt.timedelta(hours=1)
# How long a blocking read of burner_redis's pub/sub (docket's memory:// broker) waits at once.
SLICE_S = 60.0


def _hold(cls: type, **values: dt.timedelta) -> None:
    """`cls(...)` made with `values` for these keyword arguments, whatever its caller gives."""
    init = cls.__init__

    @functools.wraps(init)
    def held(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        init(self, *args, **(kwargs | values))

    cls.__init__ = held  # type: ignore[misc]


try:
    from docket import docket as _docket
    from docket import worker as _worker
except ImportError:  # a Prefect without docket: nothing of it polls
    pass
else:
    _hold(_worker.Worker, minimum_check_interval=HELD_STILL, scheduling_resolution=HELD_STILL)
    _hold(_docket.Docket, heartbeat_interval=HELD_STILL)

try:
    from burner_redis import pubsub as _pubsub
except ImportError:  # docket on a real Redis: its reads block in the server, not here
    pass
else:
    _get_message = _pubsub.PubSub.get_message

    async def _waits_long(self, ignore_subscribe_messages=False, timeout=0.0):  # type: ignore[no-untyped-def]
        """docket's cancellation listener reads with timeout=0.1 in a loop: one long read."""
        if timeout:
            timeout = max(timeout, SLICE_S)
        return await _get_message(self, ignore_subscribe_messages, timeout)

    async def _queue_get(self, timeout):  # type: ignore[no-untyped-def]
        """burner_redis's, reading in slices of SLICE_S instead of 0.1 s (each slice a trip
        through a thread)."""
        if timeout == 0.0:
            try:
                return self._queue.get_nowait()
            except queue.Empty:
                return None
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            left = SLICE_S if deadline is None else deadline - time.monotonic()
            if left <= 0:
                return None
            try:
                return await asyncio.to_thread(self._queue.get, True, min(left, SLICE_S))
            except queue.Empty:
                continue

    _pubsub.PubSub.get_message = _waits_long
    _pubsub.PubSub._queue_get = _queue_get

try:
    from uvicorn import server as _uvicorn
except ImportError:  # served otherwise: its own tick, if any, stays
    pass
else:
    _handle_exit = _uvicorn.Server.handle_exit

    def _wakes(self, sig, frame):  # type: ignore[no-untyped-def]
        """uvicorn's signal handler, which also wakes the main loop below at once."""
        _handle_exit(self, sig, frame)
        if (woken := getattr(self, "_woken", None)) is not None:
            woken.set()

    async def _ticks_when_woken(self):  # type: ignore[no-untyped-def]
        """uvicorn's main loop ticks every 0.1 s (the Date header once a second, the exit
        flag): here it ticks when a signal asks it to exit, or once an hour."""
        self._woken = asyncio.Event()
        while not await self.on_tick(0):
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._woken.wait(), HELD_STILL.total_seconds())

    _uvicorn.Server.handle_exit = _wakes
    _uvicorn.Server.main_loop = _ticks_when_woken


def _run_the_next_sitecustomize() -> None:
    """Execute the first `sitecustomize.py` on sys.path after this module's folder."""
    here = Path(__file__).resolve().parent
    folders = [Path(entry or ".").resolve() for entry in sys.path]
    after = folders[folders.index(here) + 1 :] if here in folders else folders
    for folder in after:
        found = folder / "sitecustomize.py"
        if found.is_file() and found.resolve() != Path(__file__).resolve():
            spec = importlib.util.spec_from_file_location("_next_sitecustomize", found)
            if spec is not None and spec.loader is not None:
                spec.loader.exec_module(importlib.util.module_from_spec(spec))
            return


_run_the_next_sitecustomize()
