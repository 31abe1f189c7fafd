"""The services' cost (--cost-services): a server whose services run in a process of their own
(python-scaled) has that process under callgrind too. Collection is on in it for a whole
block of runs and stays on until it has done everything the block gave it (`waiting`: the
task runs recorded, the events persisted), then a dump: its instructions per run.

What it did is items, not requests: the events the API published to the broker, consumed by
the task-run recorder, the event persister, the triggers and the distributor. Its timers
(the persister's flush every 5 s when it holds events, the consumers' blocking reads) are
counted into a block by the clock, as the API's idle work is: `idle_per_s` says how much.
The timer-driven docket services (scheduler, late runs, foreman, ...) are held still by the
cost sitecustomize (bench/servers/python_cost), as in the API process.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import httpx
import redis

from bench.core.process import wait_until
from bench.cost.callgrind import CostError
from bench.workloads.base import post_json

# How long the services may take to do what a block gave them: the first block's wait holds
# their start under callgrind (their consumers join the broker minutes after they say so).
DRAIN_TIMEOUT_S = 900.0
DRAIN_POLL_S = 0.5
# Prefect's events topic on Redis (prefect_redis.messaging: the topic's name is its stream's).
EVENTS_STREAM = "events"
# Every event the server holds, whatever its clock said: a cost run's client sends events
# from a seeded clock (bench.cost.scenarios.EPOCH).
ALL_TIME = {"since": "2000-01-01T00:00:00Z", "until": "2100-01-01T00:00:00Z"}

Waiting = Callable[[Mapping[str, int]], str | None]


@dataclass(frozen=True)
class ServicesTarget:
    """The services process counted beside the API: its pid, and what it has still to do of
    what the client sent (`waiting(sent)`, None once it has done it all)."""

    pid: int
    waiting: Waiting


def prefect_waiting(
    client: httpx.Client, broker: redis.Redis, recorded: Callable[[], Mapping[str, int]]
) -> Waiting:
    """What a Prefect server's services have still to do: the task runs the client sent not
    yet recorded (`recorded()`, read through the API), the events published to the broker
    (its events stream's entries added) not yet persisted (POST /events/filter's total)."""

    def waiting(sent: Mapping[str, int]) -> str | None:
        found = recorded()
        task_runs, expected = found.get("task_runs", 0), sent.get("task_runs", 0)
        if task_runs < expected:
            return f"{task_runs} of {expected} task runs recorded"
        try:
            published = int(broker.xinfo_stream(EVENTS_STREAM)["entries-added"])
        except KeyError:
            raise CostError(
                "--cost-services counts the events the broker was given by its stream's "
                "entries-added, which Redis reports from version 7.0 on"
            ) from None
        except redis.RedisError as exc:
            raise CostError(f"the events stream cannot be read from Redis: {exc}") from exc
        answer = post_json(client, "/events/filter", {"filter": {"occurred": ALL_TIME}, "limit": 1})
        persisted = int(answer["total"])
        if persisted < published:
            return f"{persisted} of {published} events persisted"
        return None

    return waiting


def drain(target: ServicesTarget, sent: Mapping[str, int], alive: Callable[[], None]) -> None:
    """Return once the services have done what was `sent`; CostError (a dead server's cause
    first) when they have not within DRAIN_TIMEOUT_S."""
    left: list[str] = []

    def done() -> bool:
        alive()
        left[:] = [what] if (what := target.waiting(sent)) is not None else []
        return not left

    try:
        wait_until(done, timeout_s=DRAIN_TIMEOUT_S, interval_s=DRAIN_POLL_S)
    except TimeoutError:
        raise CostError(
            f"the services had not done what a block gave them {DRAIN_TIMEOUT_S:g} s after "
            f"it: {left[0]}"
        ) from None
