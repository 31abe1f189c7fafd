"""What a run was asked to do: `RunConfig`, the core settings every cell has, built once by
the command line and stored in every result as it is; and `Options`, the settings a workload or
a server adapter adds, declared beside it and stored in the same config.

Each setting is declared once, as a pydantic field made by `setting()`: its type and checks,
its default, its help, the command-line flag that gives it and whether it is a measurement
setting (one that changes what is measured: two results are like-for-like only when they
agree on every one). The command line gathers the flags from RunConfig and from every
workload's and adapter's Options; `bench.compare.settings` gathers the measurement settings.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Annotated, Any, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic.fields import FieldInfo

from bench.config.objectives import DEFAULT_SLO, parse_slo, sweep_rates
from bench.config.preload_shape import DEFAULT_SHAPE, parse_shape

PositiveSeconds = Annotated[float, Field(gt=0, allow_inf_nan=False)]
DEFAULT_WORKLOAD = "seed"
# --cost: requests per block and blocks counted (after a warm-up block)
COST_BLOCK = 50
COST_BLOCKS = 3
URL_WORKLOAD = "health"


def setting(
    flag: str | None = None,
    metavar: str | None = None,
    *,
    measurement: bool = False,
    text: str | None = None,
    **field: Any,
) -> Any:
    """A settings field (pydantic's `Field(**field)`) given on the command line as `flag`
    (None: derived, not given), `metavar` naming its value (None: a switch). `text` names how
    the command line reads the value when its type does not say (bench.cli's grammars: ints,
    cpus, repeat, and the workload and provider names); `measurement` marks a measurement
    setting."""
    extra: dict[str, str | bool] = {"measurement": measurement}
    if flag is not None:
        extra["flag"] = flag
    if metavar is not None:
        extra["metavar"] = metavar
    if text is not None:
        extra["text"] = text
    return Field(json_schema_extra=extra, **field)


def declared(model: type[BaseModel]) -> Iterator[tuple[str, FieldInfo, dict[str, Any]]]:
    """Each field of `model` made by `setting()`: its name, pydantic's FieldInfo and what
    `setting()` declared of it (flag, metavar, text, measurement)."""
    for name, info in model.model_fields.items():
        if isinstance(info.json_schema_extra, dict) and "measurement" in info.json_schema_extra:
            yield name, info, dict(info.json_schema_extra)


class RunConfig(BaseModel):
    """The core settings of a run: what every cell has, whatever its workload and server.
    Workloads and adapters add theirs (`Options`), stored here as extra fields; the engine's
    load spec for each level is derived from it (`bench.engine.LoadSpec.for_level`)."""

    model_config = ConfigDict(extra="allow")

    workload: str = setting(
        "--workload",
        "NAME",
        measurement=True,
        text="workload",
        description=f"what to send (default {DEFAULT_WORKLOAD}, {URL_WORKLOAD} with --url)",
    )
    mode: Literal["closed", "open"] = setting(
        measurement=True, default="closed", description="open when a rate is given"
    )
    duration_s: PositiveSeconds = setting(
        "--duration", "S", measurement=True, default=5.0, description="seconds measured"
    )
    warmup_s: Annotated[float, Field(ge=0, allow_inf_nan=False)] = setting(
        "--warmup",
        "S",
        measurement=True,
        default=1.0,
        description="seconds not counted before each measurement",
    )
    concurrency: list[Annotated[int, Field(ge=1)]] = setting(
        "--concurrency",
        "LIST",
        measurement=True,
        text="ints",
        default=[1, 4, 16, 64],
        min_length=1,
        description="connections (virtual users; events: websockets; workers: workers, 10 "
        "unless given) per level, comma-separated",
    )
    rate: PositiveSeconds | None = setting(
        "--rate",
        "R",
        measurement=True,
        default=None,
        description="open model: requests/s per endpoint (flow-runs: flow runs started/s; "
        "events: events/s), latency from each intended send time (default: closed model)",
    )
    engine_procs: Annotated[int, Field(ge=1)] | None = setting(
        "--engine-procs",
        "N",
        measurement=True,
        default=None,
        description="load generator processes (default: automatic)",
    )
    server_cpus: list[int] | None = setting(
        "--server-cpus",
        "LIST",
        measurement=True,
        text="cpus",
        default=None,
        description="pin the server, e.g. 0",
    )
    client_cpus: list[int] | None = setting(
        "--client-cpus",
        "LIST",
        measurement=True,
        text="cpus",
        default=None,
        description="pin the load generator, e.g. 1",
    )
    url: str | None = setting(
        "--url",
        "URL",
        default=None,
        description="measure a server that is already running, e.g. http://127.0.0.1:4200/api",
    )
    allow_remote: bool = setting(
        "--allow-remote",
        default=False,
        description="let --url name another host than this machine (127.0.0.1, localhost, "
        "::1). Load-testing a host you do not own is an attack: prefect-bench sends as fast "
        "as the server answers",
    )
    rate_sweep: str | None = setting(
        "--rate-sweep",
        "START:STOP:STEP",
        measurement=True,
        default=None,
        description="capacity: each endpoint at every rate START:STOP:STEP (requests/s, open "
        "model) until it misses --slo; the knee is the highest rate kept",
    )
    slo: str | None = setting(
        "--slo",
        "EXPR",
        measurement=True,
        default=None,
        description=f"--rate-sweep's latency objective, e.g. p99<50ms (default {DEFAULT_SLO})",
    )
    no_services: bool = setting(
        "--no-services", measurement=True, default=False, description="the server's API alone"
    )
    provider: str | None = setting(
        "--provider",
        "NAME",
        text="provider",
        default=None,
        description="how PostgreSQL/Redis are provided (default: the first that works)",
    )
    no_pin: bool = setting(
        "--no-pin",
        default=False,
        description="leave the server and the load generator unpinned (default: on 2 or more "
        "cores each gets its own: --server-cpus and --client-cpus as recorded)",
    )
    duet: bool = setting(
        "--duet",
        measurement=True,
        default=False,
        description="with --beside (matrix --together): two servers measured at the same "
        "moment, each with its load generator on CPUs of its own (half the usable CPUs each), "
        "instead of their windows alternating on the server's CPUs; the default for two "
        "servers where the machine and the other options allow it (--alternate: not)",
    )
    repeat: Annotated[int, Field(ge=1)] | Literal["auto"] | None = setting(
        "--repeat",
        "N|auto",
        text="repeat",
        default=None,
        description="repetitions of the cell, each a fresh server and database, or auto: "
        "until every figure's 95% interval is within --target or --budget is spent",
    )
    preload: Annotated[int, Field(ge=1)] | None = setting(
        "--preload",
        "N",
        measurement=True,
        default=None,
        description="flow runs (with their flows, deployments, task runs, logs and events) the "
        "cell's fresh database holds before it is measured; seeded once, then restored from a "
        "cache",
    )
    preload_shape: str | None = setting(
        "--preload-shape",
        "SPEC",
        measurement=True,
        default=None,
        description=f"--preload: what besides the flow runs, e.g. {DEFAULT_SHAPE.text()} "
        "(keys left out keep these defaults)",
    )
    target_pct: Annotated[float, Field(gt=0, le=100, allow_inf_nan=False)] = setting(
        "--target",
        "P",
        default=3.0,
        description="--repeat auto: the interval to reach, % of the mean",
    )
    budget_min: PositiveSeconds = setting(
        "--budget", "MIN", default=30.0, description="--repeat auto: minutes to spend at most"
    )
    soak_s: PositiveSeconds | None = setting(
        "--soak",
        "DURATION",
        measurement=True,
        text="duration",
        default=None,
        description="one server under the workload for DURATION (e.g. 30m, 2h): windows of "
        "--duration one after another, each reported at its time, and the slope of each figure "
        "over time (memory, database size, latency, ...)",
    )
    cost: bool = setting(
        "--cost",
        measurement=True,
        default=False,
        description="count what each request costs the server instead of timing it: the "
        "server under callgrind (valgrind), its services off, each endpoint's request sent one "
        "at a time in blocks (--cost-block, --cost-blocks) after a warm-up block; instructions "
        "per request, and the callgrind files beside the result",
    )
    cost_block: Annotated[int, Field(ge=1)] = setting(
        "--cost-block",
        "N",
        measurement=True,
        default=COST_BLOCK,
        description="--cost: requests per block (a scenario workload: its runs per block, "
        "10 unless given)",
    )
    cost_blocks: Annotated[int, Field(ge=1)] = setting(
        "--cost-blocks",
        "K",
        measurement=True,
        default=COST_BLOCKS,
        description="--cost: blocks counted per endpoint, after the warm-up block (their "
        "spread is each figure's)",
    )
    cost_services: bool = setting(
        "--cost-services",
        measurement=True,
        default=False,
        description="--cost of flow-runs on a server whose services run in a process of their "
        "own (python-scaled, --server-workers 1): that process under callgrind too, its "
        "timer-driven services held still, and its instructions per flow run (recording the task "
        "runs, persisting the events) counted beside the API's",
    )
    profile: bool = setting(
        "--profile",
        measurement=True,
        default=False,
        description="sample the server during each window at 100 Hz (py-spy for a Python "
        "server, perf record for a native one): "
        "its collapsed stacks and a flame graph beside the result, in report.html, and where "
        "the samples moved in `compare`",
    )
    keep_first: bool = setting(
        "--keep-first",
        default=False,
        description="--repeat: count the first repetition too (default: it runs as a warm-up, "
        "kept in the results, left out of every figure; a --cost cell's repetitions all count, "
        "each server's first block being its warm-up)",
    )

    @model_validator(mode="before")
    @classmethod
    def _derived_defaults(cls, data: Any) -> Any:
        """The workload defaults by target and the mode follows the rate, unless stored."""
        if isinstance(data, dict):
            data = dict(data)
            if data.get("workload") is None:
                data["workload"] = URL_WORKLOAD if data.get("url") else DEFAULT_WORKLOAD
            open_model = data.get("rate") or data.get("rate_sweep")
            data.setdefault("mode", "open" if open_model else "closed")
            if data.get("rate_sweep") and data.get("slo") is None:
                data["slo"] = DEFAULT_SLO
            if data.get("cost"):
                # one user, and the API alone: the services' timers are no request's cost
                if data.get("concurrency") is None:
                    data["concurrency"] = [1]
                data["no_services"] = not data.get("cost_services")
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
        if self.preload is not None and self.url is not None:
            raise ValueError(
                "--preload seeds the database of a server the tool starts, not a --url"
            )
        return self

    @model_validator(mode="after")
    def _soak(self) -> RunConfig:
        if self.soak_s is None:
            return self
        if len(self.concurrency) != 1:
            levels = ",".join(map(str, self.concurrency))
            raise ValueError(f"--soak runs one level: give one --concurrency (not {levels})")
        if self.repeat is not None:
            raise ValueError("--soak is one long run of one server: give it without --repeat")
        if self.rate_sweep is not None:
            raise ValueError("--soak holds one load: give it without --rate-sweep")
        if self.soak_s < 2 * self.duration_s:
            raise ValueError(
                f"--soak {self.soak_s:g} s is shorter than two windows of --duration "
                f"{self.duration_s:g} s: a trend needs at least two"
            )
        return self

    @model_validator(mode="after")
    def _cost(self) -> RunConfig:
        if self.cost_services and not self.cost:
            raise ValueError("--cost-services counts the services' cost: give it with --cost")
        if not self.cost:
            return self
        sequential = "counts requests sent one at a time, for as long as they take"
        refused = {
            "--rate": (self.rate is not None, sequential),
            "--rate-sweep": (self.rate_sweep is not None, sequential),
            "--soak": (self.soak_s is not None, sequential),
            "--url": (self.url is not None, "starts the server under callgrind itself"),
        }
        for flag, (given, why) in refused.items():
            if given:
                raise ValueError(f"--cost {why}: give it without {flag}")
        if self.concurrency != [1]:
            levels = ",".join(map(str, self.concurrency))
            raise ValueError(
                f"--cost sends one request at a time: --concurrency 1 or none (not {levels})"
            )
        return self

    @model_validator(mode="after")
    def _profile(self) -> RunConfig:
        if self.profile and self.cost:
            raise ValueError(
                "--profile samples a wall-clock run; --cost counts instructions under "
                "callgrind: give one of them"
            )
        if self.profile and self.url is not None:
            raise ValueError(
                "--profile samples a server the tool starts, not a --url: give it without --url"
            )
        return self

    @property
    def warmup_repetition(self) -> bool:
        """Whether a repeated cell runs a first repetition as a warm-up, left out of every
        figure: not with --keep-first, nor with --cost, whose servers each leave out their own
        first block (one more server under callgrind would add minutes and nothing)."""
        return self.repeat is not None and not (self.keep_first or self.cost)

    @property
    def sweep(self) -> list[float]:
        """The rates of --rate-sweep, lowest first (empty without one)."""
        return sweep_rates(self.rate_sweep) if self.rate_sweep else []


class Options(BaseModel):
    """Settings a workload or a server adapter adds to the run, declared with `setting()` in
    its own module. They are stored in the RunConfig as extra fields (results keep them as
    they kept them before they moved here); `of(config)` reads them back, typed and checked,
    with the defaults for a config that lacks them (an older result)."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    @classmethod
    def of(cls, config: RunConfig) -> Self:
        """This model's settings as `config` holds them."""
        return cls.model_validate(config.model_dump())


def measurement_fields(models: Iterable[type[BaseModel]]) -> tuple[str, ...]:
    """The measurement settings of `models`, each once, in the order they are declared."""
    return tuple(
        dict.fromkeys(
            name for model in models for name, _, how in declared(model) if how["measurement"]
        )
    )


def setting_text(value: object) -> str:
    """A setting's value as the comparisons show and compare it: 5.0 reads "5", a list
    "1,4,16", None "none"."""
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        # 5.0 reads "5"; any other float keeps every digit, so unequal values read unequal
        return str(int(value)) if value.is_integer() else repr(value)
    if isinstance(value, list | tuple):
        return ",".join(setting_text(v) for v in value)
    return str(value)


def measurement_settings(config: RunConfig, models: Iterable[type[BaseModel]]) -> dict[str, str]:
    """`config`'s measurement settings among `models`' (RunConfig and Options), field name →
    value as text: two configs measure alike exactly when these are equal."""
    stored = config.model_dump()
    values = dict(stored)
    for model in models:
        if issubclass(model, Options):
            # as `Options.of`, from the one dump: a report reads this for every result
            values |= model.model_validate(stored).model_dump()
    return {name: setting_text(values.get(name)) for name in measurement_fields(models)}
