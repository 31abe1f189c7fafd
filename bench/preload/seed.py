"""Seeding a fresh database through the server's own API: flows, deployments, then N flow
runs with their states, task runs and logs, sent by a few concurrent workers."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx

from bench.config.preload_shape import Shape
from bench.core.errors import BenchError, VerificationError
from bench.core.process import wait_until
from bench.workloads.base import post_json

# Requests in flight. More do not seed faster (measured: 300 runs took 59 s on SQLite at 1 or
# 3, 44-49 s on PostgreSQL at 4, 8 or 16: the python server is one process on one core), and
# on SQLite they collide: a write that finds another writer's transaction is answered 503
# "database is locked" at once, not after a wait.
CONCURRENCY = {"sqlite": 1, "postgres": 4}
# A seeding request answered 503 (SQLite's lock, held by the server's own services) is sent
# again this often, waiting twice as long each time up to 2 s: a cell's seeding must not fail
# on the lock that the measurement counts.
SEED_ATTEMPTS = 12
LOG_BATCH = 500
FAILED_EVERY = 10  # one run in ten ends Failed
AD_HOC_EVERY = 4  # one run in four belongs to no deployment
# How long the server may take to persist the events it emitted for what was seeded, and how
# long their count must stay still to be all: longer than Prefect's event persister's flush
# interval (5 s by default).
EVENTS_SETTLE_S = 90.0
EVENTS_STILL_S = 8.0


class SeedError(BenchError):
    """The server did not take a seeding request: which one, and its answer."""


@dataclass
class Seeded:
    """What the server holds once seeded, read back from it (the cache keeps this)."""

    flow_runs: int
    task_runs: int
    logs: int
    events: int
    flows: int
    deployments: int
    # the expected start times span [first, last]; the ui workload anchors its windows there
    first_start: str
    last_start: str
    requests: int = 0

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class _Seeder:
    client: httpx.AsyncClient
    shape: Shape
    total: int
    anchor: dt.datetime
    on_progress: Callable[[int], None]
    flows: list[str] = field(default_factory=list)
    deployments: list[tuple[str, str]] = field(default_factory=list)  # (flow id, deployment id)
    logs: list[dict[str, Any]] = field(default_factory=list)
    done: int = 0
    requests: int = 0
    next_run: int = 0

    async def send(self, method: str, path: str, body: Any, expect: int) -> Any:
        """One request; a 503 (SQLite's lock) is sent again (SEED_ATTEMPTS);
        any other answer than `expect` is a SeedError naming the request."""
        for attempt in range(1, SEED_ATTEMPTS + 1):
            try:
                answer = await self.client.request(method, path, json=body)
            except httpx.HTTPError as exc:
                raise SeedError(f"seeding: {method} {path} failed: {exc!r}") from exc
            self.requests += 1
            if answer.status_code != 503 or attempt == SEED_ATTEMPTS:
                break
            await asyncio.sleep(min(0.05 * 2**attempt, 2.0))
        if answer.status_code != expect:
            raise SeedError(
                f"seeding: {method} {path} answered {answer.status_code} (expected {expect}): "
                f"{answer.text[:200]}"
            )
        return answer.json() if answer.content else None

    def start_time(self, i: int) -> dt.datetime:
        """Run i's expected start: evenly over the shape's days, the last one at the anchor."""
        span = dt.timedelta(days=self.shape.days)
        return self.anchor - span * (self.total - 1 - i) / max(self.total - 1, 1)

    async def create_parents(self) -> None:
        for k in range(self.shape.flows):
            flow = await self.send("POST", "/flows/", {"name": f"preload-flow-{k}"}, 201)
            self.flows.append(flow["id"])
            for j in range(self.shape.deployments):
                body = {"name": f"preload-deployment-{k}-{j}", "flow_id": flow["id"]}
                deployment = await self.send("POST", "/deployments/", body, 201)
                self.deployments.append((flow["id"], deployment["id"]))

    async def run_one(self, i: int) -> None:
        """Flow run i: created Scheduled at its start time, forced to its end state, its task
        runs created Completed, its logs queued for the next batch."""
        if self.deployments and i % AD_HOC_EVERY:
            flow_id, deployment_id = self.deployments[i % len(self.deployments)]
        else:
            flow_id, deployment_id = self.flows[i % len(self.flows)], None
        scheduled = {"scheduled_time": self.start_time(i).isoformat()}
        body = {
            "flow_id": flow_id,
            "deployment_id": deployment_id,
            "name": f"preload-{i}",
            "tags": ["preload"],
            "state": {"type": "SCHEDULED", "state_details": scheduled},
        }
        run = await self.send("POST", "/flow_runs/", body, 201)
        end = "FAILED" if i % FAILED_EVERY == FAILED_EVERY - 1 else "COMPLETED"
        path = f"/flow_runs/{run['id']}/set_state"
        changed = await self.send("POST", path, {"state": {"type": end}, "force": True}, 201)
        if changed.get("status") != "ACCEPT":
            raise SeedError(f"seeding: POST {path} was not accepted: {str(changed)[:200]}")
        for t in range(self.shape.tasks):
            task = {
                "flow_run_id": run["id"],
                "task_key": f"preload-task-{t}",
                "dynamic_key": str(t),
                "name": f"preload-task-{t}",
                "state": {"type": "COMPLETED"},
            }
            await self.send("POST", "/task_runs/", task, 201)
        stamp = self.start_time(i).isoformat()
        self.logs.extend(
            {
                "name": "preload",
                "level": 20,
                "message": f"preload log {n} of run {i}",
                "timestamp": stamp,
                "flow_run_id": run["id"],
            }
            for n in range(self.shape.logs)
        )
        if len(self.logs) >= LOG_BATCH:
            await self.flush_logs()
        self.done += 1
        self.on_progress(self.done)

    async def flush_logs(self) -> None:
        batch, self.logs = self.logs, []
        if batch:
            await self.send("POST", "/logs/", batch, 201)

    async def worker(self) -> None:
        while self.next_run < self.total:
            i, self.next_run = self.next_run, self.next_run + 1
            await self.run_one(i)


async def _seed(
    base_url: str, total: int, shape: Shape, concurrency: int, on_progress: Callable[[int], None]
) -> _Seeder:
    limits = httpx.Limits(max_connections=concurrency)
    async with httpx.AsyncClient(base_url=base_url, timeout=60.0, limits=limits) as client:
        anchor = dt.datetime.now(dt.UTC).replace(second=0, microsecond=0)
        seeder = _Seeder(client, shape, total, anchor, on_progress)
        await seeder.create_parents()
        workers = [asyncio.create_task(seeder.worker()) for _ in range(concurrency)]
        try:
            await asyncio.gather(*workers)
        finally:
            for task in workers:
                task.cancel()
        await seeder.flush_logs()
        return seeder


def seed(
    base_url: str, total: int, shape: Shape, db: str, on_progress: Callable[[int], None]
) -> Seeded:
    """Seed `total` flow runs of `shape` through the API at `base_url` (a fresh database), and
    read back what the server holds; SeedError naming the first request it did not take."""
    seeder = asyncio.run(_seed(base_url, total, shape, CONCURRENCY.get(db, 4), on_progress))
    with httpx.Client(base_url=base_url, timeout=60.0) as client:
        flow_runs = _count(client, "/flow_runs/count")
        task_runs = _count(client, "/task_runs/count")
        events = _settled_events(client, seeder.start_time(0) - dt.timedelta(days=1))
    wanted = {"flow runs": (flow_runs, total), "task runs": (task_runs, total * shape.tasks)}
    for what, (held, sent) in wanted.items():
        if held != sent:
            raise SeedError(f"seeding: the server holds {held} {what}, {sent} were created")
    return Seeded(
        flow_runs=flow_runs,
        task_runs=task_runs,
        logs=total * shape.logs,
        events=events,
        flows=len(seeder.flows),
        deployments=len(seeder.deployments),
        first_start=seeder.start_time(0).isoformat(),
        last_start=seeder.start_time(total - 1).isoformat(),
        requests=seeder.requests,
    )


def _read(client: httpx.Client, path: str, body: Any) -> Any:
    """The decoded answer to a read-back (bench.workloads.base.post_json), a SeedError if it
    is not a 200."""
    try:
        return post_json(client, path, body)
    except VerificationError as exc:
        raise SeedError(f"seeding: {exc}") from None


def _count(client: httpx.Client, path: str) -> int:
    return int(_read(client, path, {}))


def events_total(client: httpx.Client, since: dt.datetime) -> int:
    """How many events the server holds that occurred since `since`."""
    body = {"filter": {"occurred": {"since": since.isoformat()}}, "limit": 1}
    return int(_read(client, "/events/filter", body)["total"])


def _settled_events(client: httpx.Client, since: dt.datetime) -> int:
    """The events the server emitted for the seeded runs, once persisted: their count has not
    changed for EVENTS_STILL_S (they reach the database through the broker, seconds later)."""
    seen: list[tuple[float, int]] = []  # (when, count) since the count last changed

    def settled() -> bool:
        count = events_total(client, since)
        if seen and seen[-1][1] != count:
            seen.clear()
        seen.append((time.monotonic(), count))
        return seen[-1][0] - seen[0][0] >= EVENTS_STILL_S

    with contextlib.suppress(TimeoutError):  # a server that keeps emitting: what it holds
        wait_until(settled, timeout_s=EVENTS_SETTLE_S, interval_s=1.0)
    return seen[-1][1]
