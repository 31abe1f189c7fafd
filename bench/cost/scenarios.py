"""A scenario's cost (--cost of a scenario workload: flow-runs): its runs replayed one after
another by one user, in blocks of N runs (`--cost-block`, SCENARIO_BLOCK by default), callgrind's
collection on for each whole block; the first block a warm-up, K counted.

Each step's figure comes from the same runs: after each step (its answer read), once the server
is idle again (`settle`: no thread runnable and its CPU time still for SETTLE_POLL_S, so that
what it goes on with after answering, e.g. the events it reads after a websocket's pong, is
the step's), a `dump` attributes what was counted since the last one to that step. A step's
figure is its dumps' sum over a block / its occurrences in the block (a step sent twice per
run, as `GET admin/version`, counts twice); a run's (a flow run's) is the block's total / N:
its steps, and what follows its last step (`AFTER_STEPS`: the websocket's close), dumped
after each run so that no step holds the run before's. One replay gives both: a block per
step (collection on only while that step is served) would replay the whole scenario once per
step, each on/off a retranslation of the server's code.

The client's own values (ids, timestamps, the flow's name) come from a seeded generator
(`SeededValues`, in `bench.workloads.flow_runs.CLIENT_VALUES`' context), so two runs send
the same bytes; the server's own (its ids, flow runs' names, the clock) stay its own.
Services are off (--cost): the task runs whose events are sent are not recorded, the API's
cost of receiving them is what is counted; the flow runs completed are read back. With
--cost-services, a services process of their own is counted beside the API, per run
(`bench.cost.services`): collection on in it for the whole block and until it has done what
the block gave it.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import random
import statistics
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from urllib.parse import urlsplit

from bench.core.errors import VerificationError
from bench.cost.blocks import REQUEST_TIMEOUT_S, Blocks, Counted, idle
from bench.cost.callgrind import EVENT, Collector, CostError
from bench.cost.endpoints import IDLE_S, CostTarget, keep
from bench.cost.merge import merge
from bench.cost.services import ServicesTarget, drain
from bench.engine.model import LoadSpec, Target, new_histogram
from bench.engine.scenario import Scenario, ScenarioJob, ScenarioRun, StepFailed, VirtualUser
from bench.results.merge import latency_summary
from bench.results.schema import SERVICES_STEP, Cost, Delivery, ScenarioResult, StepResult
from bench.workloads.flow_runs import CLIENT_VALUES

# The scenario workloads whose runs can be replayed one at a time, one user, services off.
COSTED_WORKLOADS = ("flow-runs",)
# Scenarios per block when --cost-block is not given (a flow run: 16 steps sent).
SCENARIO_BLOCK = 10
# The unique tag of the scenario's objects (its flow's name): the same in every run.
TAG = "cost"
SEED = 22
# The seeded clock: from this instant, a millisecond per reading.
EPOCH = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
TICK = dt.timedelta(milliseconds=1)
# What follows a run's last step (its websocket's close), dumped apart: in the run's figure.
AFTER_STEPS = "(after the steps)"
# Idle: over each poll no thread of the server runnable and at most a clock tick of CPU.
SETTLE_POLL_S = 0.05
SETTLE_TIMEOUT_S = 60.0
_TICK_S = 0.01  # /proc's CPU times are in clock ticks (USER_HZ, 100 on Linux)


class SeededValues:
    """The client's ids and timestamps from a seeded generator (bench.workloads.flow_runs'
    `ClientValues`): version 4 UUIDs of `random.Random(seed)`, a clock from EPOCH that
    advances a TICK per reading."""

    def __init__(self, seed: int = SEED) -> None:
        self._random = random.Random(seed)
        self._clock = EPOCH

    def new_id(self) -> uuid.UUID:
        return uuid.UUID(int=self._random.getrandbits(128), version=4)

    def now(self) -> dt.datetime:
        self._clock += TICK
        return self._clock


def settle(pid: int, poll_s: float = SETTLE_POLL_S, timeout_s: float = SETTLE_TIMEOUT_S) -> None:
    """Wait until the process `pid` is idle: over a poll of `poll_s`, none of its threads
    runnable and its CPU time grown by a clock tick at most (a starved server is runnable, not
    idle). CostError after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    before, _ = _cpu_ticks(pid)
    while True:
        time.sleep(poll_s)
        now, running = _cpu_ticks(pid)
        if now - before <= 1 and not running:
            return
        if time.monotonic() > deadline:
            raise CostError(
                f"the server (process {pid}) was still busy {timeout_s:g} s after a step"
            )
        before = now


def _cpu_ticks(pid: int) -> tuple[int, bool]:
    """The CPU time of every thread of `pid` (clock ticks) and whether any is runnable."""
    ticks, running = 0, False
    try:
        for stat in Path(f"/proc/{pid}/task").glob("*/stat"):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            running = running or fields[0] == "R"
            ticks += int(fields[11]) + int(fields[12])  # utime, stime
    except (OSError, IndexError, ValueError) as exc:
        raise CostError(f"the server (process {pid}) cannot be read: {exc}") from exc
    return ticks, running


@dataclass
class _Services:
    """The services process's collector and what its counted blocks counted."""

    target: ServicesTarget
    collector: Collector
    idle_per_s: float | None = None  # measured once the warm-up block is done
    totals: list[int] = field(default_factory=list)  # per counted block
    dumps: list[Path] = field(default_factory=list)  # per counted block
    seconds: float = 0.0  # the counted blocks' wall time, drains included


@dataclass
class _Step:
    """What the counted blocks counted of one step (or of AFTER_STEPS)."""

    totals: list[int] = field(default_factory=list)  # per counted block
    occurrences: list[int] = field(default_factory=list)  # per counted block
    dumps: list[list[Path]] = field(default_factory=list)  # per counted block
    seconds: float = 0.0  # the wall time its dumps covered, counted blocks


class _Counter:
    """The dumps of the blocks, each attributed to the step just done."""

    def __init__(
        self, collector: Collector, alive: Callable[[], None], services: _Services | None = None
    ) -> None:
        self.collector = collector
        self.alive = alive
        self.services = services
        self.steps: dict[str, _Step] = {}
        self.block_totals: list[int] = []  # per counted block, every dump of it
        self.block_seconds: list[float] = []
        self.counting = False  # a counted block, not the warm-up
        self._last = 0.0

    def begin(self, counting: bool) -> None:
        self.alive()
        self.counting = counting
        for step in self.steps.values():
            step.totals.append(0)
            step.occurrences.append(0)
            step.dumps.append([])
        self.block_totals.append(0)
        self.block_seconds.append(0.0)
        if self.services is not None:
            self.services.collector.on()
        self._began = time.monotonic()
        self.collector.on()
        self._last = time.monotonic()

    def step_done(self, name: str, last: bool = False) -> None:
        """Dump what the step `name` cost, once the server has settled."""
        try:
            settle(self.collector.pid)
            if last:
                self.collector.off()
            total, path = self.collector.dump(allow_zero=last)
        except CostError:
            self.alive()  # a dead server's cause first
            raise
        took = time.monotonic() - self._last
        self._last = time.monotonic()
        if not self.counting:
            path.unlink(missing_ok=True)
            return
        step = self.steps.get(name)
        if step is None:  # first seen in a counted block
            blocks = len(self.block_totals)
            step = self.steps[name] = _Step([0] * blocks, [0] * blocks, [[] for _ in range(blocks)])
        step.totals[-1] += total
        step.occurrences[-1] += name != AFTER_STEPS
        step.dumps[-1].append(path)
        step.seconds += took
        self.block_totals[-1] += total
        self.block_seconds[-1] += took

    def run_done(self) -> None:
        """A run's end: what follows its last step (its websocket's close), its own dump."""
        self.step_done(AFTER_STEPS)

    def end(self, sent: Mapping[str, int]) -> None:
        """The block's end: collection off, what was counted since the last run's end (a
        few thousand instructions, or none) with that run's; the services' once they have
        done what was `sent` (every block's so far)."""
        self.step_done(AFTER_STEPS, last=True)
        if self.services is not None:
            self._services_done(self.services, sent)
        if not self.counting:  # the warm-up's rows were only placeholders
            self.steps.clear()
            self.block_totals.clear()
            self.block_seconds.clear()

    def _services_done(self, services: _Services, sent: Mapping[str, int]) -> None:
        try:
            drain(services.target, sent, self.alive)
            settle(services.collector.pid)
            services.collector.off()
            total, path = services.collector.dump(allow_zero=True)
        except CostError:
            self.alive()
            raise
        if not self.counting:
            path.unlink(missing_ok=True)
            # its idle rate once it runs: before the warm-up it was still starting
            services.idle_per_s = idle(services.collector, IDLE_S)
            return
        if total == 0:
            raise CostError(f"the services' dump {path} counted nothing: collection was not on")
        services.totals.append(total)
        services.dumps.append(path)
        services.seconds += time.monotonic() - self._began


class _CountingRun(ScenarioRun):
    """The engine's run of one user, each step done reported to the counter."""

    def __init__(self, job: ScenarioJob, counter: _Counter) -> None:
        super().__init__(job)
        self.counter = counter

    def step_done(self, step: str, started_ns: int) -> None:
        super().step_done(step, started_ns)
        self.counter.step_done(step)


@dataclass
class _Replayed:
    durations_us: list[int] = field(default_factory=list)  # the counted runs'
    latencies_us: dict[str, list[int]] = field(default_factory=dict)  # the counted steps'
    order: list[str] = field(default_factory=list)  # the steps as first sent
    counts: dict[str, int] = field(default_factory=dict)  # sent, the warm-up's included


async def _replay(
    where: Target, scenario: Scenario, blocks: Blocks, counter: _Counter
) -> _Replayed:
    spec = LoadSpec(concurrency=1, duration_s=1e9, warmup_s=0.0, timeout_s=REQUEST_TIMEOUT_S)
    job = ScenarioJob(where, scenario, spec, 1, None, 0, 0, 2**62, "cost-")
    run = _CountingRun(job, counter)
    user = VirtualUser(run, 0)
    replayed = _Replayed()
    CLIENT_VALUES.set(SeededValues())  # in this run's context (asyncio.run's task) only
    try:
        for block in range(blocks.counted + 1):
            counter.begin(counting=block > 0)
            run.step_latencies.clear()  # the counted blocks' only
            for _ in range(blocks.size):
                started = time.monotonic_ns()
                await scenario.run(user, scenario.params)
                await run.join_spawned()
                if run.spawned_failures:
                    raise run.spawned_failures[0]
                counter.run_done()
                if block > 0:
                    replayed.durations_us.append((time.monotonic_ns() - started) // 1000)
            counter.end(run.counts)
            if block > 0:
                for name, values in run.step_latencies.items():
                    replayed.latencies_us.setdefault(name, []).extend(values)
    finally:
        await user.close()
    replayed.order = list(run.step_order)
    replayed.counts = dict(run.counts)
    return replayed


def count_scenario(
    target: CostTarget,
    scenario: Scenario,
    blocks: Blocks,
    alive: Callable[[], None],
    recorded: Callable[[Scenario], Mapping[str, int]],
    services: ServicesTarget | None = None,
) -> ScenarioResult:
    """`scenario`'s cost, counted in `blocks` of its runs: per run and per step, its kept
    dumps compressed into `target.keep_dir`; with `services`, that process's cost per run.
    `recorded(scenario)` reads back what the server holds of it: each flow run sent must be
    there (and each task run, when the services recorded them). VerificationError when a step
    fails (its count would be of other work), CostError when callgrind cannot be driven."""
    parts = urlsplit(target.base_url)
    where = Target(parts.hostname or "127.0.0.1", parts.port or 80)
    scenario = replace(scenario, api_path=parts.path.rstrip("/"), probe=None, retry=None)
    collector = Collector(target.pid, target.dumps_dir)
    idle_per_s = idle(collector, IDLE_S)
    counted_services = None
    if services is not None:
        counted_services = _Services(services, Collector(services.pid, target.dumps_dir))
    counter = _Counter(collector, alive, counted_services)
    try:
        replayed = asyncio.run(_replay(where, scenario, blocks, counter))
    except StepFailed as exc:
        alive()
        raise VerificationError(f"{scenario.name} while its cost was counted: {exc}") from None
    found = recorded(scenario)
    sent = replayed.counts.get("flow_runs", 0)
    if "flow_runs" in found and found["flow_runs"] != sent:
        raise VerificationError(
            f"{scenario.name}: the server recorded {found['flow_runs']} flow runs of the {sent} "
            "completed while their cost was counted"
        )
    if services is not None and found.get("task_runs") != replayed.counts.get("task_runs"):
        raise VerificationError(
            f"{scenario.name}: the services recorded {found.get('task_runs')} task runs of the "
            f"{replayed.counts.get('task_runs')} sent while their cost was counted"
        )
    return _result(scenario, blocks, counter, replayed, target, idle_per_s, found)


def _result(
    scenario: Scenario,
    blocks: Blocks,
    counter: _Counter,
    replayed: _Replayed,
    target: CostTarget,
    idle_per_s: float,
    found: Mapping[str, int],
) -> ScenarioResult:
    every: list[str] = []
    steps: list[StepResult] = []
    for name in [*replayed.order, AFTER_STEPS]:
        counted = counter.steps.get(name)
        if counted is None:
            continue
        kept = _keep_step(name, counted, target)
        every += kept
        if name == AFTER_STEPS:
            continue
        latencies = replayed.latencies_us.get(name, [])
        hist = new_histogram()
        for value in latencies:
            hist.record_value(max(1, value))
        steps.append(
            StepResult(
                name=name,
                requests=len(latencies),
                latency_ms=latency_summary(hist),
                hdr=hist.encode().decode("ascii") if latencies else None,
                cost=figure(counted.totals, counted.occurrences, counted.seconds, kept, idle_per_s),
            )
        )
    runs = [blocks.size] * len(counter.block_totals)
    whole = figure(counter.block_totals, runs, sum(counter.block_seconds), every, idle_per_s)
    hist = new_histogram()
    for value in replayed.durations_us:
        hist.record_value(max(1, value))
    completed = len(replayed.durations_us)
    seconds = sum(counter.block_seconds)
    services = counter.services
    services_cost = None
    if services is not None:
        kept = keep(Counted(SERVICES_STEP, dumps=services.dumps), target.keep_dir, target.run_dir)
        services_cost = figure(services.totals, runs, services.seconds, kept, services.idle_per_s)
    recorded_by = ("flow_runs",) if services is None else ("flow_runs", "task_runs")
    return ScenarioResult(
        name=scenario.name,
        concurrency=1,
        duration_s=seconds,
        completed=completed,
        per_s=completed / seconds if seconds else 0.0,
        duration_ms=latency_summary(hist),
        hdr=hist.encode().decode("ascii") if completed else None,
        steps=steps,
        counts=replayed.counts,
        delivery={
            kind: Delivery(sent=replayed.counts.get(kind, 0), recorded=n, lost=0)
            for kind, n in found.items()
            if kind in recorded_by  # task runs: by the services, when they are on
        },
        cost=whole,
        services_cost=services_cost,
    )


def figure(
    totals: list[int],
    occurrences: list[int],
    seconds: float,
    kept: list[str],
    idle_per_s: float | None,
) -> Cost:
    """A figure per occurrence (of a step, of a run) over the counted blocks: each block's
    total / its occurrences, the mean over the blocks; `seconds` the wall time the totals
    cover (for the share of idle work in them)."""
    if not totals or 0 in occurrences:
        raise CostError(f"a step missing from a counted block: occurrences {occurrences}")
    per_block = [t / n for t, n in zip(totals, occurrences, strict=True)]
    mean = statistics.fmean(per_block)
    idle_pct = None
    if idle_per_s is not None and sum(totals):
        idle_pct = idle_per_s * seconds / sum(totals) * 100
    return Cost(
        event=EVENT,
        per_request=mean,
        spread_pct=(max(per_block) - min(per_block)) / mean * 100 if mean else 0.0,
        blocks=len(per_block),
        requests_per_block=occurrences[0],
        block_per_request=[round(b, 1) for b in per_block],
        idle_per_s=idle_per_s,
        idle_pct=idle_pct,
        callgrind=kept,
    )


def _keep_step(name: str, counted: _Step, target: CostTarget) -> list[str]:
    """The step's dumps, summed into one dump per counted block (bench.cost.merge), kept
    gzip-compressed: their paths."""
    summed = []
    stem = "".join(c if c.isalnum() else "-" for c in name).strip("-")
    for k, paths in enumerate(counted.dumps, start=1):
        summed.append(merge(paths, target.dumps_dir / f"{stem}.{k}.summed"))
        for path in paths:
            path.unlink(missing_ok=True)
    return keep(Counted(name, dumps=summed), target.keep_dir, target.run_dir)
