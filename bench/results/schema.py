"""The result of one cell of one run: its schema (the JSON document a cell writes).

Schema history (bump SCHEMA_VERSION when a key is renamed or its meaning changes;
adding an optional key is not a bump):
- 1 (2026-11-26): first version, as in DESIGN.md section 7.
- 2 (2026-12-01): `scenarios` (DESIGN.md section 7), for scenario workloads such as
  flow-runs; a version 1 result reads as one without scenarios. Added since (optional):
  a scenario's `lag_ms`, `lag_hdr`, `lag_probes`, `lag_unresolved` (the events workload);
  a scenario's `timings` and `server_side` (the workers workload); `server_host` and a
  service's `host` (a server or service on another host than the load); a cell's `version`
  and the environment's `resolution` (Prefect versions as a dimension); a step's `retries`
  and `retry_s` (the Prefect client's retries); `soak` (--soak: its windows over time); an
  endpoint's `cost` (--cost: instructions per request under callgrind); a scenario's and a
  step's `cost` (--cost of a scenario workload: per run of it, per occurrence); an endpoint's and a
  scenario's `profile` (--profile: the server sampled during the window). A cost cell's timed
  figures (rps, latency) are those of its requests under callgrind: `--cost` is a measurement
  setting, so they are never set beside a wall-clock cell's.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PlainSerializer

from bench.config.run import RunConfig
from bench.results.combine import Across, ByKey, Combine, Filled, Latency, Weighted
from bench.results.machine_state import MachineState

SCHEMA_VERSION = 2
READABLE_VERSIONS = (1, 2)

Status = Literal["ok", "failed", "skipped"]
# a failed result's error when the cell was stopped before it finished (older results: status)
INTERRUPTED = "interrupted"
# how a scenario's services cost (--cost-services) is named beside its steps
SERVICES_STEP = "(its services)"


class Cell(BaseModel):
    """One (server, db, broker) combination, and the Prefect version where a run compared
    several."""

    model_config = ConfigDict(frozen=True)

    server: str
    db: str = ""
    broker: str = ""
    version: str = Field(
        default="",
        description="the Prefect version of a run comparing several (PREFECT_VERSION=3.8.0,"
        "3.9.1): each is a cell of its own; empty: the one installed",
    )

    @property
    def label(self) -> str:
        """The server as reports name it: `python`, or `python@3.8.0` of one version."""
        return f"{self.server}@{self.version}" if self.version else self.server

    @property
    def name(self) -> str:
        """server[@version]-db-broker; just the server's where db and broker are unknown."""
        return "-".join(part for part in (self.label, self.db, self.broker) if part)


class LatencyMs(BaseModel):
    """Latency summary in milliseconds, from the endpoint's HDR histogram.

    Merged, it is re-read from the merged histogram (`Latency`); these rules are for parts
    without one, weighted by their sizes."""

    min: Annotated[float, Combine.MIN]
    mean: Annotated[float, Weighted()]
    p50: Annotated[float, Weighted()]
    p90: Annotated[float, Weighted()]
    p99: Annotated[float, Weighted()]
    p999: Annotated[float, Weighted()]
    max: Annotated[float, Combine.MAX]


def _rounded(digits: int) -> PlainSerializer:
    """Kept exact in memory, written with `digits` decimals: more would only be noise."""
    return PlainSerializer(
        lambda value: None if value is None else round(value, digits), when_used="json"
    )


_Rate = Annotated[float, _rounded(1)]
_CpuS = Annotated[float, _rounded(9)]

# Rules that differ across processes (shares of one window, side by side) and across
# repetitions (windows one after another), used by several fields below.
_WINDOW = Across(processes=Combine.FIRST, repetitions=Combine.SUM)  # one window; their total
_RATE = Across(processes=Combine.SUM, repetitions=Combine.MEAN)  # shares add up; runs average
_SLICES = Across(processes=Combine.SLICES, repetitions=Combine.CONCAT)  # the noise in each run
_PROCS = Across(processes=Combine.COUNT, repetitions=Combine.FIRST)
# The engine judges the open model's rate from counts a result does not keep (sends due and
# sends it let slip): it gives the verdict to the merge of its processes.
_RATE_HELD = Across(processes=Combine.GIVEN, repetitions=Combine.ALL)
_TALLY = ByKey(Combine.SUM, sorted=True)


class EndpointKey(BaseModel):
    """Which request of the workload a measurement is of."""

    name: Annotated[str, Combine.FIRST]
    method: Annotated[str, Combine.FIRST]
    path: Annotated[str, Combine.FIRST]


class Measurement(BaseModel):
    """What the engine measured in one window at one concurrency level: the part of an
    endpoint's result that `bench.engine.measure` fills, in the shape the result stores.

    How each field merges (across the engine's processes, across repetitions) is declared
    beside it (`bench.results.combine`)."""

    model_config = ConfigDict(extra="allow")

    concurrency: Annotated[int, Combine.FIRST]
    requests: Annotated[int, Combine.SUM] = Field(
        description="responses in the window, successes and errors alike"
    )
    errors: Annotated[dict[str, int], _TALLY] = Field(
        default_factory=dict, description="by HTTP status or failure kind"
    )
    duration_s: Annotated[float, _rounded(3), _WINDOW]
    rps: Annotated[_Rate, _RATE] = Field(description="successful responses per second")
    rps_slices: Annotated[list[_Rate] | None, _SLICES] = Field(
        default=None,
        description="rps of each equal slice (~0.5 s) of the window: the noise within it",
    )
    latency_ms: Annotated[LatencyMs | None, Latency(hdr="hdr", weight="successes")] = Field(
        description="of successful responses; None if none"
    )
    client_saturated: Annotated[bool, Combine.ANY] = Field(
        default=False,
        description="the load generator was the limit (CPU-bound, or late with free connections)",
    )
    hdr: Annotated[str | None, Filled("latency_ms")] = Field(
        default=None, description="HdrHistogram (µs), base64 compressed"
    )
    problems: Annotated[list[str], Combine.UNION] = Field(
        default_factory=list, description="the first few distinct errors, as the engine saw them"
    )
    client_cpu_s_per_request: Annotated[_CpuS | None, Weighted("requests")] = None
    engine_procs: Annotated[int | None, _PROCS] = None
    offered_rps: Annotated[float | None, Combine.FIRST] = Field(
        default=None, description="open model: the rate asked"
    )
    late_sends: Annotated[int | None, Combine.SUM] = Field(
        default=None,
        description="open model: sends that waited for a free connection or left > 2 ms late",
    )
    rate_held: Annotated[bool | None, _RATE_HELD] = Field(
        default=None, description="open model: achieved >= 95% of offered, <= 1% sends late"
    )

    @property
    def successes(self) -> int:
        return self.requests - sum(self.errors.values())


class Cost(BaseModel):
    """What one request of an endpoint costs the server, counted by callgrind (--cost): the
    instructions it executed (`event` Ir) while serving blocks of sequential requests,
    collection on only inside each block, the first block a warm-up left out."""

    event: Annotated[str, Combine.FIRST] = Field(
        default="Ir", description="what was counted: Ir, instructions executed"
    )
    per_request: Annotated[float, _rounded(0), Combine.MEAN] = Field(
        description="instructions per request: each counted block's total / its requests, "
        "the mean over the blocks"
    )
    spread_pct: Annotated[float, _rounded(3), Combine.MAX] = Field(
        description="(max - min) / mean of the blocks' per-request figures, in %"
    )
    blocks: Annotated[int, Combine.SUM] = Field(description="blocks counted (the warm-up not)")
    requests_per_block: Annotated[int, Combine.FIRST]
    block_per_request: Annotated[list[float], Combine.CONCAT] = Field(
        default_factory=list, description="each counted block's instructions per request"
    )
    idle_per_s: Annotated[float | None, _rounded(0), Combine.MEAN] = Field(
        default=None,
        description="instructions the server executed per second with no request to serve "
        "(its timers), counted before the endpoints",
    )
    idle_pct: Annotated[float | None, _rounded(2), Combine.MEAN] = Field(
        default=None,
        description="the share of per_request that is likely such idle work: idle_per_s x the "
        "counted blocks' wall time / their instructions, in %",
    )
    callgrind: Annotated[list[str], Combine.CONCAT] = Field(
        default_factory=list,
        description="the counted blocks' callgrind dumps, gzip-compressed, relative to the "
        "run's folder (callgrind_annotate / KCachegrind read them once gunzipped)",
    )


class Profile(BaseModel):
    """The server sampled while a window measured it (--profile; bench.profile): its stacks
    kept beside the result, collapsed and gzip-compressed, and drawn as a flame graph."""

    tool: Annotated[str, Combine.FIRST] = Field(description="what sampled it: py-spy 0.4.3")
    rate_hz: Annotated[int, Combine.FIRST] = Field(description="samples asked for per second")
    samples: Annotated[int, Combine.SUM] = Field(
        description="stacks sampled (idle threads left out), warmup included"
    )
    errors: Annotated[int, Combine.SUM] = Field(
        default=0,
        description="samples the profiler could not read (--nonblocking: a stack "
        "that changed while it was read)",
    )
    collapsed: Annotated[list[str], Combine.CONCAT] = Field(
        default_factory=list,
        description="the collapsed stacks (flamegraph.pl's input), gzip-compressed, relative "
        "to the run's folder",
    )
    flamegraph: Annotated[list[str], Combine.CONCAT] = Field(
        default_factory=list, description="their flame graph (SVG), relative to the run's folder"
    )


class EndpointResult(Measurement, EndpointKey):
    """One endpoint measured at one concurrency level: which request, what the engine measured,
    and what the server used meanwhile. Only repetitions merge the fields it adds."""

    server_cpu_cores: Annotated[float | None, Combine.MEAN] = Field(
        default=None, description="mean cores the server used under this load, warmup included"
    )
    server_rss_peak_mb: Annotated[float | None, Combine.MAX] = None
    other_cpu_cores: Annotated[float | None, Combine.MEAN] = Field(
        default=None, description="cores used by processes not of this cell in the window"
    )
    # Deltas of one window each: the report shows none, and a sum over the windows of
    # different server processes would say little.
    telemetry: Annotated[dict[str, Any] | None, Combine.DROP] = Field(
        default=None, description="what the database and broker did in the window (deltas)"
    )
    cost: Annotated[Cost | None, Combine.MODEL] = Field(
        default=None, description="--cost: instructions per request, counted by callgrind"
    )
    profile: Annotated[Profile | None, Combine.MODEL] = Field(
        default=None, description="--profile: the server sampled during the window"
    )


class StepResult(BaseModel):
    """One step of a scenario (an HTTP request or websocket frames) over a measurement window."""

    model_config = ConfigDict(extra="allow")

    name: Annotated[str, Combine.FIRST]
    requests: Annotated[int, Combine.SUM] = Field(
        description="steps finished in the window, failed ones included"
    )
    errors: Annotated[dict[str, int], _TALLY] = Field(
        default_factory=dict, description="by HTTP status or failure kind"
    )
    latency_ms: Annotated[LatencyMs | None, Latency(hdr="hdr", weight="successes")] = Field(
        description="of successful steps; None if none"
    )
    hdr: Annotated[str | None, Filled("latency_ms")] = Field(
        default=None, description="HdrHistogram (µs), base64 compressed"
    )
    retries: Annotated[int, Combine.SUM] = Field(
        default=0,
        description="tries sent again as the Prefect client does (their failed tries are in "
        "requests and errors)",
    )
    retry_s: Annotated[float, _rounded(3), Combine.SUM] = Field(
        default=0.0,
        description="what the retries cost: from each failed try's start to the next try's",
    )
    cost: Annotated[Cost | None, Combine.MODEL] = Field(
        default=None,
        description="--cost: instructions per occurrence of the step (requests_per_block: its "
        "occurrences per block of scenarios), counted by callgrind",
    )

    @property
    def successes(self) -> int:
        return self.requests - sum(self.errors.values())


class Timing(BaseModel):
    """A span the scenarios observed that is not one request, e.g. a flow run's time from its
    scheduled start to being claimed by a worker, over a measurement window."""

    name: Annotated[str, Combine.FIRST]
    count: Annotated[int, Combine.SUM] = Field(description="spans observed in the window")
    latency_ms: Annotated[LatencyMs | None, Latency(hdr="hdr", weight="count")] = Field(
        description="None if none was observed"
    )
    hdr: Annotated[str | None, Filled("latency_ms")] = Field(
        default=None, description="HdrHistogram (µs), base64 compressed"
    )


class Delivery(BaseModel):
    """What the scenarios sent over the whole measurement (warmup included) and what the
    server recorded of it, read back through its API after a bounded wait."""

    sent: Annotated[int, Combine.SUM]
    recorded: Annotated[int, Combine.SUM]
    lost: Annotated[int, Combine.SUM]


class ScenarioMeasurement(BaseModel):
    """What the engine measured of one scenario in one window at one concurrency level (virtual
    users): the part of a scenario's result that `bench.engine.measure_scenario` fills.
    How each field merges is declared beside it, as `Measurement`'s."""

    model_config = ConfigDict(extra="allow")

    concurrency: Annotated[int, Combine.FIRST]
    duration_s: Annotated[float, _rounded(3), _WINDOW]
    completed: Annotated[int, Combine.SUM] = Field(description="scenarios finished in the window")
    failed: Annotated[dict[str, int], _TALLY] = Field(
        default_factory=dict,
        description="scenarios that failed in the window, by the step that failed",
    )
    per_s: Annotated[_Rate, _RATE] = Field(description="completed scenarios per second")
    per_s_slices: Annotated[list[_Rate] | None, _SLICES] = Field(
        default=None, description="per_s of each equal slice (~0.5 s) of the window"
    )
    duration_ms: Annotated[LatencyMs | None, Latency(hdr="hdr", weight="completed")] = Field(
        description="of completed scenarios, start to end"
    )
    hdr: Annotated[str | None, Filled("duration_ms")] = Field(
        default=None, description="HdrHistogram (µs) of their durations"
    )
    steps: Annotated[list[StepResult], Combine.BY_NAME] = Field(default_factory=list)
    client_saturated: Annotated[bool, Combine.ANY] = False
    client_cpu_s_per_step: Annotated[_CpuS | None, Weighted("step_count")] = None
    engine_procs: Annotated[int | None, _PROCS] = None
    offered_rps: Annotated[float | None, Combine.FIRST] = Field(
        default=None, description="open model: starts/s asked"
    )
    late_starts: Annotated[int | None, Combine.SUM] = Field(
        default=None, description="open model: starts that waited for a free virtual user"
    )
    rate_held: Annotated[bool | None, _RATE_HELD] = None
    problems: Annotated[list[str], Combine.UNION] = Field(default_factory=list)
    counts: Annotated[dict[str, int], _TALLY] = Field(
        default_factory=dict,
        description="what the scenarios sent over the whole measurement, by kind",
    )
    lag_ms: Annotated[LatencyMs | None, Latency(hdr="lag_hdr", weight="lag_probes")] = Field(
        default=None,
        description="of the sampled items (events) the server made queryable in the window: "
        "time from sending to being found through its API",
    )
    lag_hdr: Annotated[str | None, Filled("lag_ms")] = Field(
        default=None, description="HdrHistogram (µs) of the lags"
    )
    lag_probes: Annotated[int | None, Combine.SUM] = Field(
        default=None, description="sampled items found in the window (the lag's count)"
    )
    lag_unresolved: Annotated[int | None, Combine.SUM] = Field(
        default=None,
        description="sampled items not yet found when the window ended: their lag is longer "
        "than what was left of it, or they were lost",
    )
    timings: Annotated[list[Timing], Combine.BY_NAME] = Field(
        default_factory=list, description="spans the scenario observed (workers: delays)"
    )

    @property
    def step_count(self) -> int:
        """Steps finished in the window, failed ones included: what client CPU is per."""
        return sum(step.requests for step in self.steps)


class ScenarioResult(ScenarioMeasurement):
    """One scenario at one concurrency level: its measurement, what the server recorded of it,
    and what the server used meanwhile. Only repetitions merge the fields it adds."""

    name: Annotated[str, Combine.FIRST]
    delivery: Annotated[dict[str, Delivery], ByKey(Combine.MODEL)] = Field(
        default_factory=dict, description="by kind: flow_runs, task_runs, ..."
    )
    server_cpu_cores: Annotated[float | None, Combine.MEAN] = None
    server_rss_peak_mb: Annotated[float | None, Combine.MAX] = None
    other_cpu_cores: Annotated[float | None, Combine.MEAN] = Field(
        default=None, description="cores used by processes not of this cell in the window"
    )
    # As an endpoint's: what it says is in backend_per_flow_run.
    telemetry: Annotated[dict[str, Any] | None, Combine.DROP] = Field(
        default=None,
        description="what the database and broker did over the measurement and the drain",
    )
    backend_per_flow_run: Annotated[dict[str, float] | None, ByKey(Weighted("flow_runs_sent"))] = (
        Field(default=None, description="database transactions and Redis commands per flow run")
    )
    server_side: Annotated[dict[str, int] | None, ByKey(Combine.SUM)] = Field(
        default=None,
        description="what the server's own services did for the scenario, read back after it "
        "(workers: the runs its scheduler made due, those left unclaimed, those marked Late)",
    )
    profile: Annotated[Profile | None, Combine.MODEL] = Field(
        default=None,
        description="--profile: the server sampled during the window (the "
        "level's: its parts share it)",
    )
    cost: Annotated[Cost | None, Combine.MODEL] = Field(
        default=None,
        description="--cost: instructions per run of the scenario (per flow run; "
        "requests_per_block: runs per block), counted by callgrind",
    )
    services_cost: Annotated[Cost | None, Combine.MODEL] = Field(
        default=None,
        description="--cost-services: what the services process executed per run of the "
        "scenario (recording its task runs, persisting its events), counted by callgrind",
    )

    @property
    def flow_runs_sent(self) -> int:
        """Flow runs the scenario sent over the measurement: what backend_per_flow_run is per."""
        return self.counts.get("flow_runs", 0)


class RepeatState(BaseModel):
    """Where a repeated cell stood after a repetition (bench.cells.repeat): the intervals its
    counted repetitions reached and, in the last one, why it stopped."""

    counted: int = Field(description="ok repetitions counted so far (discarded ones not)")
    interval_pct: float | None = Field(
        default=None, description="half-width of the total's 95% interval, % of its mean"
    )
    widest: str | None = Field(default=None, description="the figure with the widest interval")
    widest_pct: float | None = Field(default=None, description="its half-width, % of its mean")
    over_budget: bool = Field(
        default=False,
        description="the budget left no time for another, which runs anyway: too few so far",
    )
    undecided: list[str] | None = Field(
        default=None,
        description="servers measured together with --fail-on: the gated figures the rounds "
        "so far leave undecided (their interval holds a threshold, or beyond one they are not "
        "yet significant), with the rounds that would decide each",
    )
    stopped: Literal["count", "target", "decided", "budget", "limit"] | None = Field(
        default=None,
        description="why no repetition follows: the count asked for, the target reached, every "
        "gated figure decided (--fail-on), the budget spent or the most `auto` runs (None: "
        "another follows)",
    )


class Preload(BaseModel):
    """--preload: what the cell's database held before the measurement, and how it got it."""

    model_config = ConfigDict(extra="allow")

    flow_runs: int
    source: Literal["made", "restored"] = Field(
        description="made: seeded through the server's API in this cell; restored: from the cache"
    )
    seconds: float = Field(description="making it (seeding and snapshot), or restoring it")
    shape: str = Field(description="--preload-shape, every key")
    counts: dict[str, int] = Field(
        default_factory=dict,
        description="what the server held once seeded: task_runs, logs, events, flows, ...",
    )
    first_start: str | None = Field(default=None, description="the earliest expected start")
    last_start: str | None = Field(default=None, description="the latest expected start")
    made_seconds: float | None = Field(
        default=None, description="restored: how long making it took, when it was made"
    )
    bytes: int | None = Field(default=None, description="the snapshot's size")
    cache: str | None = Field(default=None, description="the cache entry made or restored")
    not_cached: str | None = Field(
        default=None, description="made but not kept for the next cell: why"
    )


class SweepPoint(BaseModel):
    """One rate of a sweep: what was offered, what the server did, and whether it kept up."""

    offered_rps: float
    rps: _Rate = Field(description="successful responses per second")
    requests: int
    errors: dict[str, int] = Field(default_factory=dict)
    latency_ms: LatencyMs | None
    rate_held: bool | None
    client_saturated: bool = False
    kept: bool = Field(description="the rate held and the latency objective kept")
    hdr: str | None = None
    profile: Profile | None = Field(
        default=None, description="--profile: the server sampled during the window"
    )


class SoakWindow(BaseModel):
    """One endpoint's or scenario's window of a --soak, at its time: what a trend is drawn
    from. The result's `endpoints` / `scenarios` hold every window merged into one."""

    window: int = Field(description="from 0, in the order measured")
    at_s: float = Field(description="from the first window's start to this window's start")
    name: str
    per_s: float = Field(description="successful responses/s, or completed scenarios/s")
    p50_ms: float | None = None
    p99_ms: float | None = None
    errors: int = Field(description="error responses, or failed scenarios")
    retries: int = 0
    server_rss_mb: float | None = Field(default=None, description="the window's peak")
    server_cpu_cores: float | None = None
    db_mb: float | None = Field(
        default=None, description="PostgreSQL's database, or SQLite's file and WAL, at its end"
    )
    redis_mb: float | None = Field(default=None, description="Redis's used_memory at its end")
    redis_stream_entries: int | None = Field(
        default=None, description="the entries of the cell's Redis streams at its end"
    )
    lag_p50_ms: float | None = None
    lag_p99_ms: float | None = None
    lag_unresolved: int | None = Field(
        default=None, description="sampled items not yet found when the window ended"
    )
    lost: int | None = Field(
        default=None, description="what the window sent that the server had not recorded"
    )


class Soak(BaseModel):
    """--soak: one server under the workload, window after window."""

    planned_s: float
    window_s: float = Field(description="each window's --duration (warm-up and drain apart)")
    windows: list[SoakWindow] = Field(default_factory=list)


class SweepResult(EndpointKey):
    """One endpoint at one concurrency level over the rates of --rate-sweep."""

    concurrency: int
    slo: str = Field(description="the latency objective, e.g. p99<50ms")
    points: list[SweepPoint] = Field(default_factory=list)
    knee_rps: float | None = Field(
        default=None,
        description="the highest offered rate kept, every lower one kept too (None: not even "
        "the lowest)",
    )
    stopped_early: bool = Field(
        default=False, description="rates above were not tried: the objective was missed twice"
    )


class ServerInfo(BaseModel):
    """The server of a cell; merged over repetitions, its figures are their mean (the peak
    memory their highest)."""

    model_config = ConfigDict(extra="allow")

    name: Annotated[str, Combine.FIRST]
    version: Annotated[str | None, Combine.FIRST] = None
    startup_s: Annotated[float | None, Combine.MEAN] = None
    schema_cached: Annotated[bool | None, Combine.FIRST] = Field(
        default=None,
        description="started on a copy of its migrated SQLite schema (BENCH_SCHEMA_CACHE, as "
        "the tests run): startup_s leaves Prefect's migrations out",
    )
    processes: Annotated[dict[str, int] | None, Combine.FIRST] = Field(
        default=None,
        description="a server of several processes (python-scaled): its api_workers and "
        "services processes; CPU and memory are over all of them",
    )
    cpus: Annotated[list[int] | None, Combine.FIRST] = Field(
        default=None,
        description="the CPUs the server was pinned to; in a duet (--duet) its own, which its "
        "load generator shared",
    )
    rss_peak_mb: Annotated[float | None, Combine.MAX] = None
    rss_idle_mb: Annotated[float | None, Combine.MEAN] = None
    cpu_s: Annotated[float | None, Combine.MEAN] = None


class ServiceInfo(BaseModel):
    model_config = ConfigDict(extra="allow")

    provider: str
    version: str | None = None
    image: str | None = None
    binary: str | None = None
    host: str | None = Field(
        default=None,
        description="the address it ran at when that is not this machine (a remote docker "
        "daemon's host); None: this machine",
    )


class Resolution(BaseModel):
    """What the environment's packages were resolved with, and what they are."""

    model_config = ConfigDict(extra="allow")

    prefect: str | None = Field(default=None, description="the Prefect version installed")
    exclude_newer: str | None = Field(
        default=None,
        description="uv's --exclude-newer the venv was resolved with: the minute after the "
        "Prefect version's release (bench.config.versions); None: not resolved by prefect-bench's "
        "nox sessions, or without uv (today's packages)",
    )
    index: str | None = None
    packages: dict[str, str] = Field(
        default_factory=dict, description="every distribution in the environment: its version"
    )


class Environment(BaseModel):
    model_config = ConfigDict(extra="allow")

    cpu_model: str
    cpu_count: int
    kernel: str
    python: str
    bench_version: str
    git_sha: str | None = None
    hostname: str | None = None
    resolution: Resolution | None = None


class Result(BaseModel):
    """The JSON document written for one cell of one run."""

    model_config = ConfigDict(extra="allow")

    schema_version: int = SCHEMA_VERSION
    run_id: str
    cell: Cell
    status: Status
    error: str | None = None
    started_at: str
    finished_at: str | None = None
    server: ServerInfo | None = None
    server_host: str | None = Field(
        default=None,
        description="the host the measured server ran on, as --url names it, when that is "
        "not this machine (the load ran on environment.hostname); None: this machine",
    )
    services: dict[str, ServiceInfo] = Field(default_factory=dict)
    config: RunConfig
    environment: Environment
    endpoints: list[EndpointResult] = Field(default_factory=list)
    scenarios: list[ScenarioResult] = Field(default_factory=list)
    sweeps: list[SweepResult] = Field(
        default_factory=list, description="--rate-sweep: each endpoint × level over the rates"
    )
    soak: Soak | None = Field(default=None, description="--soak: its windows over time")
    preload: Preload | None = Field(
        default=None, description="--preload: what the database held before, made or restored"
    )
    conformance: dict[str, Any] | None = Field(
        default=None,
        description="the real Prefect client's flow run against this server: checks and counts",
    )
    machine: MachineState | None = Field(
        default=None, description="the machine just before the cell: load, others' CPU, ..."
    )
    noisy: bool = Field(
        default=False,
        description="something made the numbers untrustworthy (other processes' CPU, a "
        "frequency governor, ...): `noise` says what",
    )
    noise: list[str] = Field(default_factory=list, description="one sentence per reason")
    repeat: RepeatState | None = Field(
        default=None, description="a repeated cell: the intervals reached and why it stopped"
    )
    repetition: int | None = Field(
        default=None,
        description="which repetition of the cell in its run (1, 2, ...; --repeat); None: the "
        "cell ran once",
    )
    discarded: str | None = Field(
        default=None,
        description="why this repetition is left out of every figure (kept for the record)",
    )
    together_with: list[str] | None = Field(
        default=None,
        description="the cells measured together with this one (`run --beside`): in each round "
        "every server started afresh and up at once, each endpoint's windows alternating "
        "between them, so the k-th repetition of each ran in the same round, its windows "
        "seconds from theirs; None: measured alone",
    )

    @property
    def interrupted(self) -> bool:
        """Whether the cell was stopped before it finished (Ctrl-C, SIGTERM, its matrix
        killed): kept, never counted, and run again by the next turn of its cell (a repetition
        numbered after it; for a cell run once, `<cell>.2.json`)."""
        return self.status == INTERRUPTED or self.error == INTERRUPTED
