"""What a run was asked to do: `RunConfig`, built once by the command line and stored in every
result as it is."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from bench.config.objectives import DEFAULT_SLO, parse_slo, sweep_rates
from bench.config.preload_shape import DEFAULT_SHAPE, parse_shape

PositiveSeconds = Annotated[float, Field(gt=0, allow_inf_nan=False)]
DEFAULT_WORKLOAD = "seed"
URL_WORKLOAD = "health"
WORKERS_WORKLOAD = "workers"
MIXED_WORKLOAD = "mixed"
DEFAULT_WORKERS = [10]  # workers: the workload's virtual users are its workers


class RunConfig(BaseModel):
    """What a run was asked to do. The command line builds it once (these are its defaults,
    checks and help texts), every result stores it as it is, and the engine's load spec for
    each level is derived from it (`bench.engine.LoadSpec.for_level`)."""

    model_config = ConfigDict(extra="allow")

    workload: str = Field(
        description=f"what to send (default {DEFAULT_WORKLOAD}, {URL_WORKLOAD} with --url)"
    )
    mode: Literal["closed", "open"] = Field(
        default="closed", description="open when a rate is given"
    )
    duration_s: PositiveSeconds = Field(default=5.0, description="seconds measured")
    warmup_s: Annotated[float, Field(ge=0, allow_inf_nan=False)] = Field(
        default=1.0, description="seconds not counted before each measurement"
    )
    concurrency: list[Annotated[int, Field(ge=1)]] = Field(
        default=[1, 4, 16, 64],
        min_length=1,
        description="connections (virtual users; events: websockets; workers: workers, "
        f"{DEFAULT_WORKERS[0]} unless given) per level, comma-separated",
    )
    rate: PositiveSeconds | None = Field(
        default=None,
        description="open model: requests/s per endpoint (flow-runs: flow runs started/s; "
        "events: events/s), latency from each intended send time (default: closed model)",
    )
    engine_procs: Annotated[int, Field(ge=1)] | None = Field(
        default=None, description="load generator processes (default: automatic)"
    )
    server_cpus: list[int] | None = Field(default=None, description="pin the server, e.g. 0")
    client_cpus: list[int] | None = Field(
        default=None, description="pin the load generator, e.g. 1"
    )
    url: str | None = Field(
        default=None,
        description="measure a server that is already running, e.g. http://127.0.0.1:4200/api",
    )
    allow_remote: bool = Field(
        default=False,
        description="let --url name another host than this machine (127.0.0.1, localhost, "
        "::1). Load-testing a host you do not own is an attack: prefect-bench sends as fast "
        "as the server answers",
    )
    rate_sweep: str | None = Field(
        default=None,
        description="capacity: each endpoint at every rate START:STOP:STEP (requests/s, open "
        "model) until it misses --slo; the knee is the highest rate kept",
    )
    slo: str | None = Field(
        default=None,
        description=f"--rate-sweep's latency objective, e.g. p99<50ms (default {DEFAULT_SLO})",
    )
    tasks: Annotated[int, Field(ge=1)] = Field(
        default=10, description="flow-runs, workers: tasks per flow run"
    )
    deployments: Annotated[int, Field(ge=1)] = Field(
        default=10,
        description="workers: deployments feeding the work pool, each on a schedule of every "
        "60 s / --speedup",
    )
    speedup: Annotated[float, Field(gt=0, allow_inf_nan=False)] = Field(
        default=10.0,
        description="workers: the real worker's intervals (poll 10 s, prefetch 10 s, heartbeat "
        "30 s) and the deployments' schedule divided by this, so a short window sees many polls",
    )
    readers: Annotated[int, Field(ge=1)] = Field(
        default=2,
        description="mixed: users sending the ui workload's reads, beside each level's "
        "--concurrency flow-run users",
    )
    server_workers: Annotated[int, Field(ge=1)] = Field(
        default=2,
        description="python-scaled: its API processes (prefect server start --workers N), "
        "beside its one services process",
    )
    no_services: bool = Field(default=False, description="the server's API alone")
    provider: str | None = Field(
        default=None,
        description="how PostgreSQL/Redis are provided (default: the first that works)",
    )
    no_pin: bool = Field(
        default=False,
        description="leave the server and the load generator unpinned (default: on 2 or more "
        "cores each gets its own: --server-cpus and --client-cpus as recorded)",
    )
    repeat: Annotated[int, Field(ge=1)] | Literal["auto"] | None = Field(
        default=None,
        description="repetitions of the cell, each a fresh server and database, or auto: "
        "until every figure's 95% interval is within --target or --budget is spent",
    )
    preload: Annotated[int, Field(ge=1)] | None = Field(
        default=None,
        description="flow runs (with their flows, deployments, task runs, logs and events) the "
        "cell's fresh database holds before it is measured; seeded once, then restored from a "
        "cache",
    )
    preload_shape: str | None = Field(
        default=None,
        description=f"--preload: what besides the flow runs, e.g. {DEFAULT_SHAPE.text()} "
        "(keys left out keep these defaults)",
    )
    keep_first: bool = Field(
        default=False,
        description="--repeat: count the first repetition too (default: it runs as a warm-up, "
        "kept in the results, left out of every figure)",
    )
    target_pct: Annotated[float, Field(gt=0, le=100, allow_inf_nan=False)] = Field(
        default=3.0, description="--repeat auto: the interval to reach, % of the mean"
    )
    budget_min: PositiveSeconds = Field(
        default=30.0, description="--repeat auto: minutes to spend at most"
    )

    @model_validator(mode="before")
    @classmethod
    def _derived_defaults(cls, data: Any) -> Any:
        """The workload defaults by target and the mode follows the rate, unless stored."""
        if isinstance(data, dict):
            data = dict(data)
            if data.get("workload") is None:
                data["workload"] = URL_WORKLOAD if data.get("url") else DEFAULT_WORKLOAD
            if data["workload"] == WORKERS_WORKLOAD:
                data.setdefault("concurrency", DEFAULT_WORKERS)
            open_model = data.get("rate") or data.get("rate_sweep")
            data.setdefault("mode", "open" if open_model else "closed")
            if data.get("rate_sweep") and data.get("slo") is None:
                data["slo"] = DEFAULT_SLO
        return data

    @model_validator(mode="after")
    def _sweep(self) -> RunConfig:
        try:
            if self.rate_sweep is not None:
                sweep_rates(self.rate_sweep)
        except ValueError as exc:
            raise ValueError(f"--rate-sweep: {exc}") from None
        if self.rate_sweep is not None and self.rate is not None:
            raise ValueError("--rate-sweep sweeps the rate: give it without --rate")
        if self.slo is not None:
            if self.rate_sweep is None:
                raise ValueError("--slo is the objective of a --rate-sweep: give one")
            try:
                parse_slo(self.slo)
            except ValueError as exc:
                raise ValueError(f"--slo: {exc}") from None
        return self

    @model_validator(mode="after")
    def _preload(self) -> RunConfig:
        if self.preload_shape is not None:
            if self.preload is None:
                raise ValueError("--preload-shape is the shape of a --preload: give one")
            try:
                parse_shape(self.preload_shape)
            except ValueError as exc:
                raise ValueError(f"--preload-shape: {exc}") from None
        if self.workload == WORKERS_WORKLOAD and self.no_services:
            raise ValueError(
                "--workload workers needs the server's scheduler, which --no-services turns off"
            )
        if self.workload == WORKERS_WORKLOAD and self.rate is not None:
            raise ValueError("--rate: workers poll at their own pace (see --speedup)")
        if self.workload == MIXED_WORKLOAD and self.rate is not None:
            raise ValueError("--rate: mixed runs its writers and readers in the closed model")
        if self.preload is not None and self.url is not None:
            raise ValueError(
                "--preload seeds the database of a server the tool starts, not a --url"
            )
        return self

    @property
    def sweep(self) -> list[float]:
        """The rates of --rate-sweep, lowest first (empty without one)."""
        return sweep_rates(self.rate_sweep) if self.rate_sweep else []
