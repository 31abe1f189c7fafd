"""The flow of one cell: provision → start server → fixtures → load → sample → result."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import functools
import secrets
import shutil
import tempfile
from collections.abc import Callable, Iterator, Mapping
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import psutil

from bench import cost, engine, profile
from bench.cells.soak import SoakClock
from bench.compare.capacity import STOP_AFTER_MISSES, knee
from bench.config.objectives import DEFAULT_SLO, parse_slo
from bench.config.run import RunConfig
from bench.conformance import real_client as conformance
from bench.core import ownership
from bench.core.errors import BenchError, CellSkipped, ConfigError, ServerError, VerificationError
from bench.core.failures import bug, keep, long_form, one_line
from bench.core.ports import LOOPBACK, THIS_MACHINE
from bench.core.process import wait_until
from bench.observe.machine import (
    ContainerProcesses,
    OtherCpu,
    OtherUsage,
    OurProcesses,
    machine_state,
    window_reason,
)
from bench.observe.machine import reasons as machine_reasons
from bench.observe.progress import Progress
from bench.observe.sampling import ResourceSampler, tree_cpu_s, tree_rss_mb
from bench.observe.telemetry import BackendTelemetry, per_item
from bench.preload.prepare import preload_database, verify_preloaded
from bench.results import (
    Cell,
    Delivery,
    EndpointResult,
    Measurement,
    Result,
    ScenarioResult,
    ServerInfo,
    SweepPoint,
    SweepResult,
    environment,
    utc_now,
)
from bench.results.schema import INTERRUPTED, SERVICES_STEP
from bench.servers.adapter import ServerAdapter, ServerSettings, ServerSetup
from bench.servers.running import RunningServer, start_server
from bench.services.base import RedisService
from bench.services.kinds import REDIS
from bench.workloads import ScenarioWorkload, Workload, get_workload
from bench.workloads.base import UNAVAILABLE_ATTEMPTS, Endpoint, api_client, back_off_unavailable

EXTERNAL_SERVER = "external"
# The cell's own log, in its folder beside the server's: each failure's traceback and details.
CELL_LOG = "cell.log"
# How long a scenario's sends may take to reach the server's database after a window.
DRAIN_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class CellRun:
    """One cell to run, as the CLI built it: where its result goes, the run's configuration
    (stored in the result as it is) and the server's adapter (None for `config.url`)."""

    cell: Cell
    run_id: str
    out_dir: Path
    config: RunConfig
    server: ServerAdapter | None

    @property
    def cell_dir(self) -> Path:
        """Where the cell's logs go, beside its result."""
        return self.out_dir / self.run_id / self.cell.name

    @property
    def cell_log(self) -> Path:
        """The cell's own log: why each of its failures happened, at length."""
        return self.cell_dir / CELL_LOG


@dataclass
class ServerTarget:
    """The server being measured: one we started, or one given by --url."""

    host: str
    port: int
    api_path: str
    server: RunningServer | None = None
    # what its database and broker did in each window (nothing known behind a --url)
    telemetry: BackendTelemetry = field(default_factory=BackendTelemetry.for_cell)
    # the processes of the cell (ours, and the containers' we started), not others' CPU
    ours: OurProcesses = field(default_factory=OurProcesses)
    # a --url on another host than this machine (bench.core.ports.THIS_MACHINE)
    remote: bool = False
    # --cost: the folder callgrind writes the server's dumps to (the server's own)
    dumps_dir: Path | None = None
    # --cost-services: the cell's Redis, whose events stream says what the services were given
    broker: RedisService | None = None
    # --profile: the server's processes to sample in each window, where the profiles go
    profile: profile.ProfileTarget | None = None

    @property
    def base_url(self) -> str:
        return f"http://{engine.Target(self.host, self.port).authority}{self.api_path}"


def parse_url(url: str, allow_remote: bool = False) -> ServerTarget:
    """The server a --url names; ConfigError unless it is http:// on this machine (or, with
    `allow_remote`, on any host).

    On this machine, the processes listening on its port are the cell's (their CPU is not
    another's); on another host, no process here is the server's, whatever listens on that
    port here.
    """
    parts = urlsplit(url)
    if parts.scheme != "http" or not parts.hostname:
        raise ConfigError(f"--url must be an http:// URL, got {url!r}")
    remote = parts.hostname not in THIS_MACHINE
    if remote and not allow_remote:
        raise ConfigError(
            f"--url must point to this machine ({', '.join(sorted(THIS_MACHINE))}), got "
            f"{parts.hostname}: a load test of a host you do not own is an attack; "
            "give --allow-remote to measure one you own"
        )
    host = LOOPBACK if parts.hostname == "localhost" else parts.hostname
    port = parts.port or 80
    ours = OurProcesses() if remote else OurProcesses(extra=listening_on(port, host))
    return ServerTarget(host, port, parts.path.rstrip("/"), ours=ours, remote=remote)


def new_result(run: CellRun) -> Result:
    """The cell's result as it starts: failed until it is ok."""
    return Result(
        run_id=run.run_id,
        cell=run.cell,
        status="failed",
        started_at=utc_now(),
        config=run.config,
        environment=environment(),
    )


def run_cell(run: CellRun, progress: Progress) -> Result:
    """Run one cell and return its result; failures are recorded in the result, not raised.

    A failed result's error is one line naming the cause; its long form (the details a
    BenchError carries, the traceback) is appended to the cell's log (`CellRun.cell_log`) and
    given to `progress.failure` (shown with -v). An exception prefect-bench did not expect is
    a bug, and its line says so (bench.core.failures.bug) and where its traceback is.

    A KeyboardInterrupt (Ctrl-C, or SIGTERM turned into one) stops the cell: everything is
    cleaned up and the result is failed with the error INTERRUPTED, the measurements kept.
    """
    result = new_result(run)
    try:
        _run(run, progress, result)
        result.status = "ok"
    except CellSkipped as exc:
        result.status = "skipped"
        result.error = one_line(str(exc))
    except BenchError as exc:
        result.error = one_line(str(exc))
        keep_failure(run, progress, result, exc)
    except KeyboardInterrupt:
        result.error = INTERRUPTED
    except Exception as exc:
        result.error = bug(exc)
        result.error += f" ({keep_failure(run, progress, result, exc)})"
    finally:
        result.finished_at = utc_now()
    return result


def keep_failure(run: CellRun, progress: Progress, result: Result, exc: Exception) -> str:
    """Keep the long form of the cell's failure in its log and show it (with -v); says where
    its traceback is."""
    text = long_form(exc)
    progress.failure(text)
    try:
        return f"traceback in {keep(run.cell_log, f'{run.cell.name} failed: {result.error}', text)}"
    except OSError as err:  # a full or read-only disk: the line still says what failed
        return f"its traceback could not be kept in {run.cell_log}: {err.strerror}"


def check_machine(progress: Progress, result: Result) -> None:
    """Record the machine before the cell, and mark the result noisy if it is not quiet."""
    progress.stage("checking the machine is quiet")
    result.machine = machine_state(OurProcesses())
    _noise(result, machine_reasons(result.machine), progress)


def _noise(result: Result, reasons: list[str], progress: Progress) -> None:
    for reason in reasons:
        progress.stage(f"warning: {reason}: the numbers may not be trustworthy")
    result.noise += reasons
    result.noisy = bool(result.noise)


def _run(run: CellRun, progress: Progress, result: Result) -> None:
    workload = get_workload(run.config.workload)
    check_machine(progress, result)
    with ExitStack() as stack:
        if run.server is None:
            if run.config.url is None:
                raise ConfigError("a cell needs a server to start or a --url")
            target = parse_url(run.config.url, run.config.allow_remote)
            result.server_host = target.host if target.remote else None
        else:
            target = start_target(run, run.server, progress, result, stack)
        client = stack.enter_context(api_client(target.base_url))
        try:
            client.get("/health")
        except httpx.HTTPError as exc:
            raise BenchError(f"{target.base_url} does not answer: {exc}") from exc
        if result.preload is not None:
            verify_preloaded(client, result.preload)
        if isinstance(workload, ScenarioWorkload):
            if run.config.cost:
                _count_scenario(run, workload, client, target, progress, result)
            else:
                _measure_scenarios(run, workload, client, target, progress, result)
            return
        progress.stage("creating fixtures and verifying every request")
        fixtures = workload.create_fixtures(client)
        workload.verify(client, fixtures)
        if run.config.cost:
            _count_all(run, workload, fixtures, target, progress, result)
        else:
            _measure_all(run.config, workload, fixtures, target, progress, result)


@contextmanager
def serving(run: CellRun, progress: Progress) -> Iterator[str]:
    """The cell's server started as for a measurement (its PostgreSQL and Redis provisioned),
    for another use such as the conformance check: yields its API's URL; all undone after.
    CellSkipped when the cell cannot run here, BenchError when it does not start."""
    if run.server is None:
        raise ConfigError("a cell needs a server to start")
    result = new_result(run)
    with ExitStack() as stack:
        yield start_target(run, run.server, progress, result, stack).base_url


def start_target(
    run: CellRun, adapter: ServerAdapter, progress: Progress, result: Result, stack: ExitStack
) -> ServerTarget:
    """Provision the services the cell needs and start its server; all undone by `stack`."""
    if reason := skip_reason(run, adapter):
        raise CellSkipped(reason)  # before anything is provisioned or built
    for folder in ownership.remove_dead_folders():  # what a killed run left, and only that
        progress.stage(f"removed {folder}, left by a run that was killed")
    run.cell_dir.mkdir(parents=True, exist_ok=True)
    progress.stage(f"preparing the {adapter.name} server")
    adapter.prepare(run.cell_dir)  # e.g. build it: before its version is asked
    result.server = ServerInfo(name=adapter.name, version=adapter.version(), **adapter.info())
    labels = ownership.Labels(run_id=run.run_id, cell=run.cell.name)
    datadir = stack.enter_context(_server_folder(labels))
    setup = ServerSetup(
        db=run.cell.db,
        broker=run.cell.broker,
        logdir=run.cell_dir,
        datadir=datadir,
        no_services=run.config.no_services,
        server_workers=ServerSettings.of(run.config).server_workers,
        **_provision(run, labels, progress, result, stack),
    )
    if run.config.preload:
        version = result.server.version
        result.preload = preload_database(adapter, setup, run.config, version, labels, progress)
    if run.config.cost:  # the measured server only: a --preload's seeding one runs natively
        progress.stage(f"starting the {adapter.name} server under callgrind (minutes)")
        timeout_s = max(cost.STARTUP_TIMEOUT_S, adapter.startup_timeout_s)
        wrap = cost.command_prefix(datadir)
        setup = replace(setup, cost=True, wrap=wrap, startup_timeout_s=timeout_s)
    else:
        progress.stage(f"starting the {adapter.name} server")
    server = stack.enter_context(start_server(adapter, setup))
    for started in server.processes():
        ownership.record_process(datadir, started.process)
    result.server.startup_s = round(server.startup_s, 3)
    result.server.schema_cached = server.schema_cached or None
    if server.services is not None or server.workers:
        result.server.processes = {"api_workers": len(server.workers) or 1}
        result.server.processes["services"] = int(server.services is not None)
    if run.config.server_cpus:
        server.pin(run.config.server_cpus)
        result.server.cpus = run.config.server_cpus
    # Totals over the server's life, filled in whatever way the cell ends.
    stack.callback(_record_server_totals, result.server, server)
    result.server.rss_idle_mb = round(tree_rss_mb(server.tree()), 1)
    backends = BackendTelemetry.for_cell(
        setup.postgres, setup.redis, setup.sqlite_path if setup.db == "sqlite" else None
    )
    containers = [getattr(info, "container_id", None) for info in result.services.values()]
    ours = OurProcesses(extra=ContainerProcesses(c for c in containers if c))
    dumps = datadir if run.config.cost else None  # callgrind's, removed with the server's folder
    where = ("127.0.0.1", server.port, server.api_path)
    sampled = _profile_target(run, server) if run.config.profile else None
    broker = setup.redis if run.config.cost_services else None
    return ServerTarget(
        *where, server, backends, ours, dumps_dir=dumps, broker=broker, profile=sampled
    )


def _profile_target(run: CellRun, server: RunningServer) -> profile.ProfileTarget:
    """--profile: each process we started for the server (py-spy follows its subprocesses:
    the API workers of a multi-process server), profiles kept in the cell's folder."""
    return profile.ProfileTarget(
        roots=lambda: [started.process for started in server.processes()],
        keep_dir=run.cell_dir / profile.KEPT_FOLDER,
        run_dir=run.out_dir / run.run_id,
        label=run.cell.name,
    )


def skip_reason(run: CellRun, adapter: ServerAdapter) -> str | None:
    """Why the cell would be skipped here, decided before anything is provisioned or built
    (the server, its cell, the tools --cost needs), or None; ConfigError for a refusal."""
    reason = adapter.unavailable_reason(run.config.no_services) or adapter.cell_reason(
        run.cell.db, run.cell.broker
    )
    if run.config.cost:
        _cost_refusal(adapter, run.config)
        reason = reason or cost.missing_tools()
    return reason


def needed_services(cell: Cell) -> list[str]:
    """The backing services the cell runs on: postgres, redis, both or none."""
    return [
        kind
        for kind, wanted in (("postgres", cell.db == "postgres"), ("redis", cell.broker == "redis"))
        if wanted
    ]


def _cost_refusal(adapter: ServerAdapter, config: RunConfig) -> None:
    """--cost counts one API process, and with --cost-services one services process beside
    it: ConfigError for a server that runs more, or no services process to count."""
    workers = ServerSettings.of(config).server_workers
    if adapter.spec.uses("server_workers") and workers != 1:
        raise ConfigError(
            f"--cost counts one API process: give --server-workers 1 (the {adapter.name} "
            f"server would run {workers})"
        )
    if config.cost_services and adapter.spec.services_command is None:
        raise ConfigError(
            f"--cost-services counts the services in a process of their own: the "
            f"{adapter.name} server runs them in its API process (python-scaled, or a "
            "servers.toml entry with a services_command, runs them apart)"
        )


def _cost_target(run: CellRun, target: ServerTarget) -> tuple[cost.Blocks, cost.CostTarget]:
    """--cost: the blocks the config asks for, and the server they are counted in."""
    assert target.server is not None and target.dumps_dir is not None
    where = cost.CostTarget(
        target.base_url,
        target.server.process.pid,
        target.dumps_dir,
        run.cell_dir / cost.KEPT_FOLDER,
        run.out_dir / run.run_id,
    )
    return cost.Blocks(run.config.cost_block, run.config.cost_blocks), where


def _count_all(
    run: CellRun,
    workload: Workload,
    fixtures: dict[str, str],
    target: ServerTarget,
    progress: Progress,
    result: Result,
) -> None:
    """--cost: each endpoint's instructions per request, counted by callgrind (bench.cost),
    kept in `result` as each is done."""
    blocks, where = _cost_target(run, target)
    endpoints = [
        cost.CostedEndpoint(e.name, e.method, e.path, e.resolve(target.api_path, fixtures))
        for e in workload.endpoints
    ]
    progress.stage(
        f"counting {len(endpoints)} endpoints: {blocks.counted} blocks of {blocks.size} "
        "requests each after a warm-up block"
    )
    for ep in cost.count_endpoints(
        where, endpoints, blocks, lambda: _ensure_alive(target, "while counting")
    ):
        result.endpoints.append(ep)  # kept before anything else can fail
        progress.measured(ep)  # its instructions per request (bench.observe.progress)


def _count_scenario(
    run: CellRun,
    workload: ScenarioWorkload,
    client: httpx.Client,
    target: ServerTarget,
    progress: Progress,
    result: Result,
) -> None:
    """--cost of a scenario workload: its runs replayed by one user in blocks, instructions
    per run and per step counted by callgrind (bench.cost.scenarios), kept in `result`."""
    blocks, where = _cost_target(run, target)
    scenario = workload.scenario(run.config, cost.TAG)
    progress.stage(
        f"counting {scenario.name}: {blocks.counted} blocks of {blocks.size} runs after a "
        "warm-up block, a dump after each step"
    )
    recorded = functools.partial(workload.recorded, client, scenario)
    with _services_target(run, target, recorded, client) as services:
        measured = cost.count_scenario(
            where,
            scenario,
            blocks,
            lambda: _ensure_alive(target, "while counting"),
            lambda counted: workload.recorded(client, counted),
            services,
        )
    result.scenarios.append(measured)
    figures = [(step.name, step.cost) for step in [*measured.steps, measured]]
    figures.append((f"{SERVICES_STEP}, per run", measured.services_cost))
    for name, counted in figures:
        if counted is not None:
            progress.stage(
                f"{name}: {counted.per_request / 1e6:.3f} M instructions (spread "
                f"{counted.spread_pct:.2f}% over {counted.blocks} blocks)"
            )
    progress.measured_scenario(measured)


@contextmanager
def _services_target(
    run: CellRun,
    target: ServerTarget,
    recorded: Callable[[], Mapping[str, int]],
    client: httpx.Client,
) -> Iterator[cost.ServicesTarget | None]:
    """--cost-services: the services process, and what it has still to do (the cell's Redis
    holds what the API gave it); the Redis connection closed after."""
    if not run.config.cost_services:
        yield None
        return
    services = target.server.services if target.server is not None else None
    if services is None or target.broker is None:
        raise ConfigError("--cost-services needs the server's services process and its Redis")
    r = target.broker
    with contextlib.closing(REDIS.client(r.host, r.port, db=r.db, password=r.password)) as broker:
        yield cost.ServicesTarget(services.pid, cost.prefect_waiting(client, broker, recorded))


def _record_server_totals(info: ServerInfo, server: RunningServer) -> None:
    if all(p.exit_code() is None for p in server.processes()):  # a dead one's are gone
        info.cpu_s = round(tree_cpu_s(server.tree()), 3)


@contextmanager
def _server_folder(labels: ownership.Labels) -> Iterator[Path]:
    """The server's own temporary folder (its data, PREFECT_HOME), marked with its owner so
    that the next run removes it if this one is killed, and removed at the end."""
    folder = Path(tempfile.mkdtemp(prefix=f"{ownership.FOLDER_PREFIX}{labels.cell}-"))
    try:
        ownership.mark_folder(folder, labels, "server")
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _provision(
    run: CellRun,
    labels: ownership.Labels,
    progress: Progress,
    result: Result,
    stack: ExitStack,
) -> dict[str, object]:
    """Start PostgreSQL and/or Redis as the cell needs; returns ServerSetup keyword arguments."""
    needed = needed_services(run.cell)
    if not needed:
        return {}
    from bench import services  # only cells with backing services need the providers

    for leftover in services.remove_leftovers():  # a crashed earlier run's, and only that
        progress.stage(f"removed {leftover}, left by a run that crashed")
    provided: dict[str, object] = {}
    for kind in needed:
        provider = services.choose(kind, run.config.provider)
        progress.stage(f"provisioning {kind} ({provider.name})")
        provider.prepare(kind, progress.stage)
        context = provider.postgres if kind == "postgres" else provider.redis
        service = stack.enter_context(context(run.cell_dir, labels))
        result.services[kind] = service.info
        provided[kind] = service
    return provided


def _measure_all(
    config: RunConfig,
    workload: Workload,
    fixtures: dict[str, str],
    target: ServerTarget,
    progress: Progress,
    result: Result,
) -> None:
    sampler = ResourceSampler(target.server.tree) if target.server else None
    sweep = f" at {len(config.sweep)} rates each" if config.sweep else ""
    progress.stage(f"measuring {len(workload.endpoints)} endpoints{sweep}")
    with SoakClock(config, result, progress) as clock:
        for _ in clock.rounds():  # once, or (--soak) again and again until its time is up
            for endpoint in workload.endpoints:
                request = endpoint.resolve(target.api_path, fixtures)
                for concurrency in config.concurrency:
                    window = Window(
                        config, endpoint, request, concurrency, target, sampler, progress
                    )
                    if config.sweep:
                        _sweep(window, result)
                    else:
                        ep = window.measure(result)
                        result.endpoints.append(ep)  # kept before anything else can fail
                        window.done(ep)


@dataclass
class Watch:
    """A window being watched (Window.watched): what the engine measured in it, then the
    window as the result keeps it."""

    measurement: Measurement | None = None
    endpoint: EndpointResult | None = None


@dataclass(frozen=True)
class Window:
    """One endpoint at one concurrency level, measured in one window per call."""

    config: RunConfig
    endpoint: Endpoint
    request: engine.EngineRequest
    concurrency: int
    target: ServerTarget
    sampler: ResourceSampler | None
    progress: Progress
    # whose window it is, in what the progress shows: servers measured together (cells.together)
    label: str = ""

    @property
    def where(self) -> engine.Target:
        """Where the window's load goes: its server."""
        return engine.Target(self.target.host, self.target.port)

    def spec(self, rate: float | None = None) -> engine.LoadSpec:
        """The load of the window: its level, at the config's rate (or `rate`)."""
        config = self.config if rate is None else self.config.model_copy(update={"rate": rate})
        return engine.LoadSpec.for_level(config, self.concurrency)

    def measure(self, result: Result, rate: float | None = None) -> EndpointResult:
        """A window at the config's rate (or `rate`), with what the server used meanwhile."""
        progress = self.progress.measuring(self.label + self.endpoint.name, self.concurrency)
        with self.watched(result, rate) as watch:
            watch.measurement = engine.measure(self.where, self.request, self.spec(rate), progress)
        assert watch.endpoint is not None
        return watch.endpoint

    @contextmanager
    def watched(self, result: Result, rate: float | None = None) -> Iterator[Watch]:
        """What the server used while the block measures the window (its `Watch.measurement`):
        the block's window kept, when it ends, as the Watch's endpoint. Servers measured in a
        duet watch their windows at once (cells.together)."""
        name, c, target = self.endpoint.name, self.concurrency, self.target
        _ensure_alive(target, f"before {name} at c={c}")
        watch = Watch()
        with ExitStack() as window:
            # --profile: sampling before the window's clocks start, stopped after they end
            stem = profile.window_stem(name, c, rate)
            sampled = window.enter_context(profile.profiled(target.profile, stem, f"{name} c={c}"))
            # the backends' reads outside the sampler's: its wall time leaves them out
            backends = window.enter_context(target.telemetry.window())
            others = window.enter_context(OtherCpu(target.ours))
            usage = window.enter_context(self.sampler.window()) if self.sampler else None
            yield watch
        if watch.measurement is None:
            raise RuntimeError("a window was watched and nothing measured in it")
        _noisy_window(result, others, f"{name} at c={c}", self.progress)
        ep = EndpointResult(
            name=name,
            method=self.endpoint.method,
            path=self.endpoint.path,
            **watch.measurement.model_dump(),
            server_cpu_cores=round(usage.cores, 3) if usage else None,
            server_rss_peak_mb=usage.rss_peak_mb if usage else None,
            other_cpu_cores=others.cores,
            telemetry=backends or None,
            profile=sampled.profile,
        )
        ep.problems += sampled.problems  # why a --profile window has none
        if result.server and usage:
            result.server.rss_peak_mb = max(result.server.rss_peak_mb or 0, usage.rss_peak_mb)
        watch.endpoint = ep

    def done(self, ep: EndpointResult) -> None:
        """After the window's result is kept: shown, and the server checked (it may have died
        in the window: the result says so, with what was measured)."""
        self.progress.measured(ep.model_copy(update={"name": self.label + ep.name}))
        _ensure_alive(self.target, f"during {self.endpoint.name} at c={self.concurrency}")


def _sweep(window: Window, result: Result) -> None:
    """The window's endpoint at each rate of the sweep, lowest first, until it misses the
    objective STOP_AFTER_MISSES times in a row (bench.compare.capacity); kept in `result` as it
    goes."""
    objective = parse_slo(window.config.slo or DEFAULT_SLO)
    endpoint = window.endpoint
    swept = SweepResult(
        name=endpoint.name,
        method=endpoint.method,
        path=endpoint.path,
        concurrency=window.concurrency,
        slo=objective.text,
    )
    result.sweeps.append(swept)
    misses = 0
    rates = window.config.sweep
    for k, rate in enumerate(rates):
        ep = window.measure(result, rate)
        kept = bool(ep.rate_held) and objective.kept_by(ep.latency_ms)
        # the point is the window's measurement: SweepPoint's fields, taken from it by name
        measured = ep.model_dump(include=set(SweepPoint.model_fields) - {"offered_rps", "kept"})
        swept.points.append(SweepPoint(offered_rps=rate, kept=kept, **measured))
        window.done(ep)
        misses = 0 if kept else misses + 1
        if misses >= STOP_AFTER_MISSES and k + 1 < len(rates):
            swept.stopped_early = True
            break
    swept.knee_rps = knee(swept.points)
    shown = "none" if swept.knee_rps is None else f"{swept.knee_rps:g}/s"
    where = f"{endpoint.name} c={window.concurrency}"
    window.progress.stage(f"{where}: knee {shown} ({objective.text})")


def _verify_scenario(
    workload: ScenarioWorkload,
    fresh: Callable[[], engine.Scenario],
    client: httpx.Client,
    target: ServerTarget,
) -> str:
    """Run a `fresh()` scenario once, prepared, and wait until the server recorded all of
    it: a server that refuses a step, or records nothing, fails the cell here with one line
    saying which. Returns the scenario's name.

    A 503 is tried again a few times, as the fixtures' requests are, each time with a fresh
    scenario (what the failed one made may be half used): SQLite answers one write with 503
    "database is locked" while the server's own services write. Under load the engine counts
    those; one of them must not fail the cell.
    """
    where = engine.Target(target.host, target.port)
    for attempt in range(1, UNAVAILABLE_ATTEMPTS + 1):
        scenario = workload.prepared(client, fresh(), verify=True)
        try:
            sent = asyncio.run(engine.run_once(where, scenario))
            break
        except engine.StepFailed as exc:
            if exc.kind != "503" or attempt == UNAVAILABLE_ATTEMPTS:
                raise VerificationError(f"{scenario.name}: {exc}") from None
            back_off_unavailable(attempt)
        finally:  # what preparing it set going is stopped, whether it failed or not
            workload.finished(client, scenario, dt.datetime.now(dt.UTC))
    if not any(sent.values()):
        raise VerificationError(f"{scenario.name}: one run of it sent nothing: {sent}")
    found = _drained(workload, scenario, client, sent)
    missing = {kind: n for kind, n in sent.items() if kind in found and found[kind] < n}
    if missing:
        told = ", ".join(f"{found[k]} of {n} {k.replace('_', ' ')}" for k, n in missing.items())
        raise VerificationError(
            f"{scenario.name}: the server recorded {told} of one run within {DRAIN_TIMEOUT_S:g} s"
        )
    return scenario.name


def _drained(
    workload: ScenarioWorkload,
    scenario: engine.Scenario,
    client: httpx.Client,
    sent: Mapping[str, int],
) -> dict[str, int]:
    """What the server recorded of `scenario`, once it holds all that was sent or after
    DRAIN_TIMEOUT_S: task runs reach the database through the broker, seconds later. A read
    that times out is asked again: a server still writing a backlog may answer it late."""
    found: dict[str, int] = {}

    def complete() -> bool:
        try:
            found.update(workload.recorded(client, scenario))
        except httpx.TimeoutException:
            return False
        return all(found[kind] >= sent.get(kind, 0) for kind in found)

    with contextlib.suppress(TimeoutError):
        wait_until(complete, timeout_s=DRAIN_TIMEOUT_S, interval_s=0.5)
    return found


def _real_client_check(
    run: CellRun, target: ServerTarget, progress: Progress, result: Result, tasks: int
) -> None:
    """One flow run of `tasks` tasks of the real Prefect client against the server, read back:
    the proof that the server serves the client the workload emulates
    (bench.conformance.real_client)."""
    progress.stage("running one flow with the real Prefect client (conformance)")
    workdir = run.cell_dir / "real-client"
    report = conformance.check(target.base_url, tasks=tasks, workdir=workdir)
    result.conformance = report.model_dump(mode="json")
    if not report.ok:
        failed = "; ".join(f"{c.name}: {c.detail}" for c in report.failed)
        if any(c.name == "client" for c in report.failed):
            failed += f" (its output: {workdir / conformance.CLIENT_LOG})"
        details = "\n\n".join(f"{c.name}:\n{c.details}" for c in report.failed if c.details)
        raise VerificationError(f"the real Prefect client's flow run: {failed}", details=details)


def _measure_scenarios(
    run: CellRun,
    workload: ScenarioWorkload,
    client: httpx.Client,
    target: ServerTarget,
    progress: Progress,
    result: Result,
) -> None:
    """The workload's scenario verified once (and the real client, where the workload emulates
    it), then measured at each level, with what the workload measures beside it."""
    config = run.config
    sampler = ResourceSampler(target.server.tree) if target.server else None

    def fresh() -> engine.Scenario:
        """The scenario of one measurement: a tag of its own, its objects not yet made."""
        made = workload.scenario(config, secrets.token_hex(4))
        return replace(made, api_path=target.api_path)

    # the reads' answers are read before anything is written (the verification's flow run too)
    readers = workload.readers(client, target.api_path, progress.stage)
    progress.stage(f"verifying the {workload.name} scenario once")
    name = _verify_scenario(workload, fresh, client, target)
    if workload.real_client_check is not None:
        tasks = workload.real_client_check(config)
        _real_client_check(run, target, progress, result, tasks)
    users = workload.reader_users(config)
    progress.stage(f"measuring {name}" + (f" with {users} readers" if readers else ""))
    with SoakClock(config, result, progress) as clock:
        for _ in clock.rounds():  # once, or (--soak) again and again until its time is up
            for concurrency in config.concurrency:
                scenario = fresh()
                _ensure_alive(target, f"before {scenario.name} at c={concurrency}")
                if workload.prepare is not None:
                    progress.stage(f"preparing {scenario.name} at c={concurrency}")
                    scenario = workload.prepared(client, scenario, verify=False)
                parts = workload.parts(scenario, concurrency, readers, config)
                _measure_level(config, workload, parts, client, target, sampler, progress, result)


def _measure_level(
    config: RunConfig,
    workload: ScenarioWorkload,
    parts: list[tuple[engine.Scenario, int]],
    client: httpx.Client,
    target: ServerTarget,
    sampler: ResourceSampler | None,
    progress: Progress,
    result: Result,
) -> None:
    """One level: each (scenario, users) of `parts` in one window (the workload's scenario
    first, alone in either model or with what runs beside it), then what the server recorded
    of the workload's scenario and what its services did for it, read back; a ScenarioResult
    per part kept in `result`."""
    scenario, concurrency = parts[0]
    spec = engine.LoadSpec.for_level(config, concurrency)
    callback = progress.measuring(scenario.name, concurrency)
    # the backends' window includes the drain: the recorder's writes belong to these runs
    with target.telemetry.window() as backends:
        with ExitStack() as window:
            # --profile: sampling before the window's clocks start, stopped after they end
            stem, title = profile.window_stem(scenario.name, concurrency), scenario.name
            sampled = window.enter_context(
                profile.profiled(target.profile, stem, f"{title} c={concurrency}")
            )
            others = window.enter_context(OtherCpu(target.ours))
            usage = window.enter_context(sampler.window()) if sampler else None
            where = engine.Target(target.host, target.port)
            if len(parts) == 1:  # the one way that also runs the open model
                measurements = [engine.measure_scenario(where, scenario, spec, callback)]
            else:
                measurements = engine.measure_together(where, parts, spec, callback)
        ended = dt.datetime.now(dt.UTC)
        _noisy_window(result, others, f"{scenario.name} at c={concurrency}", progress)
        _ensure_alive(target, f"during {scenario.name} at c={concurrency}")
        progress.stage(f"waiting for the server to record what {scenario.name} sent")
        sent = measurements[0].counts
        found = _drained(workload, scenario, client, sent)
        server_side = workload.finished(client, scenario, ended)
    for (part, _), measured_part in zip(parts, measurements, strict=True):
        # the window's server figures are each part's: they shared it
        measured = ScenarioResult(
            name=part.name,
            **measured_part.model_dump(),
            server_cpu_cores=round(usage.cores, 3) if usage else None,
            server_rss_peak_mb=usage.rss_peak_mb if usage else None,
            other_cpu_cores=others.cores,
            telemetry=backends or None,
            profile=sampled.profile,
        )
        measured.problems += sampled.problems  # why a --profile window has none
        if part is scenario:
            measured.delivery = {
                kind: Delivery(
                    sent=sent.get(kind, 0), recorded=n, lost=max(sent.get(kind, 0) - n, 0)
                )
                for kind, n in found.items()
            }
            # sent counts every item whose step began (bench.engine.scenario: the window
            # closes between steps): more recorded than sent is a count gone wrong, not luck
            measured.problems += [
                f"the server recorded {d.recorded} {kind.replace('_', ' ')}, {d.sent} sent"
                for kind, d in measured.delivery.items()
                if d.recorded > d.sent
            ]
            if measured.completed == 0 and not measured.failed:  # a rate of 0 that is no rate
                measured.problems.append(
                    f"none of the scenarios begun in the {spec.duration_s:g} s window finished "
                    "in it, and none failed: a window shorter than one scenario (give a longer "
                    "--duration), or a server that stopped answering"
                )
            # per flow run: of every scenario that counts them (flow-runs', workers')
            measured.backend_per_flow_run = per_item(backends, sent.get("flow_runs", 0)) or None
            measured.server_side = server_side
        result.scenarios.append(measured)
        progress.measured_scenario(measured)
    if result.server and usage:
        result.server.rss_peak_mb = max(result.server.rss_peak_mb or 0, usage.rss_peak_mb)


def listening_on(port: int, host: str | None = None) -> Callable[[], frozenset[int]]:
    """The processes listening on `port` (of `host`, or of every address: given, a listener on
    another address is another's), looked for once, on the first call: a --url server's on
    this machine, found by its socket, counted as the cell's and never touched."""
    # a listener on every address (IPv4's, or IPv6's with IPv4 mapped) serves `host` too
    addresses = None if host is None else {host, f"::ffff:{host}", "0.0.0.0", "::"}

    @functools.cache
    def pids() -> frozenset[int]:
        return frozenset(
            c.pid
            for c in psutil.net_connections(kind="tcp")
            if c.status == psutil.CONN_LISTEN
            and c.laddr
            and c.laddr.port == port
            and (addresses is None or c.laddr.ip in addresses)
            and c.pid
        )

    return pids


def _noisy_window(result: Result, others: OtherUsage, what: str, progress: Progress) -> None:
    if reason := window_reason(others, f"while measuring {what}"):
        _noise(result, [reason], progress)


def _ensure_alive(target: ServerTarget, when: str) -> None:
    if target.server is None:
        return
    try:
        target.server.check_alive()
    except ServerError as exc:
        raise ServerError(f"{when}: {exc}", details=exc.details) from exc
