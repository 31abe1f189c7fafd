"""The flow of one cell: provision → start server → fixtures → load → sample → result."""

from __future__ import annotations

import shutil
import tempfile
import traceback
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import httpx

from bench import engine
from bench.errors import BenchError, CellSkipped, ServerError
from bench.progress import Progress
from bench.results import (
    Cell,
    EndpointResult,
    Result,
    RunConfig,
    ServerInfo,
    environment,
    utc_now,
)
from bench.sampling import ResourceSampler, tree_cpu_s, tree_rss_mb
from bench.servers import RunningServer, ServerSetup, make_server, start_server
from bench.services.base import Labels
from bench.workloads import Workload, get_workload
from bench.workloads.base import api_client

EXTERNAL_SERVER = "external"
INTERRUPTED = "interrupted"


@dataclass(frozen=True)
class RunOptions:
    """Everything one cell needs; built by the CLI from its arguments."""

    cell: Cell
    run_id: str
    out_dir: Path
    workload: str = "seed"
    duration_s: float = 5.0
    warmup_s: float = 1.0
    concurrency: tuple[int, ...] = (1, 4, 16, 64)
    url: str | None = None
    provider: str | None = None
    no_services: bool = False
    zig_binary: Path | None = None
    zig_src: Path | None = None
    servers_file: Path | None = None
    rate: float | None = None
    engine_procs: int | None = None
    server_cpus: tuple[int, ...] | None = None
    client_cpus: tuple[int, ...] | None = None

    @property
    def cell_dir(self) -> Path:
        """Where the cell's logs go, beside its result."""
        return self.out_dir / self.run_id / self.cell.name


@dataclass
class _Target:
    """The server being measured: one we started, or one given by --url."""

    host: str
    port: int
    api_path: str
    server: RunningServer | None = None

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}{self.api_path}"


def parse_url(url: str) -> _Target:
    """host, port and API path of a --url; only loopback addresses are accepted."""
    parts = urlsplit(url)
    if parts.scheme != "http" or not parts.hostname:
        raise BenchError(f"--url must be an http:// URL, got {url!r}")
    if parts.hostname not in ("127.0.0.1", "localhost", "::1"):
        raise BenchError(f"--url must point to this machine (127.0.0.1), got {parts.hostname}")
    host = "127.0.0.1" if parts.hostname == "localhost" else parts.hostname
    return _Target(host, parts.port or 80, parts.path.rstrip("/"))


def run_cell(opts: RunOptions, progress: Progress) -> Result:
    """Run one cell and return its result; failures are recorded in the result, not raised.

    A KeyboardInterrupt (Ctrl-C, or SIGTERM turned into one) stops the cell: everything is
    cleaned up and the result is failed with the error INTERRUPTED, the measurements kept.
    """
    result = Result(
        run_id=opts.run_id,
        cell=opts.cell,
        status="failed",
        started_at=utc_now(),
        config=RunConfig(
            workload=opts.workload,
            mode="open" if opts.rate else "closed",
            rate=opts.rate,
            engine_procs=opts.engine_procs,
            server_cpus=opts.server_cpus,
            client_cpus=opts.client_cpus,
            duration_s=opts.duration_s,
            warmup_s=opts.warmup_s,
            concurrency=list(opts.concurrency),
            url=opts.url,
            no_services=opts.no_services,
        ),
        environment=environment(),
    )
    try:
        _run(opts, progress, result)
        result.status = "ok"
    except CellSkipped as exc:
        result.status = "skipped"
        result.error = str(exc)
    except BenchError as exc:
        result.error = str(exc)
    except KeyboardInterrupt:
        result.error = INTERRUPTED
    except Exception as exc:
        result.error = f"internal error: {exc!r}\n{traceback.format_exc(limit=8)}"
    finally:
        result.finished_at = utc_now()
    return result


def _run(opts: RunOptions, progress: Progress, result: Result) -> None:
    workload = get_workload(opts.workload)
    with ExitStack() as stack:
        target = parse_url(opts.url) if opts.url else _start(opts, progress, result, stack)
        progress.stage("creating fixtures and verifying every request")
        client = stack.enter_context(api_client(target.base_url))
        try:
            client.get("/health")
        except httpx.HTTPError as exc:
            raise BenchError(f"{target.base_url} does not answer: {exc}") from exc
        fixtures = workload.create_fixtures(client)
        workload.verify(client, fixtures)
        _measure_all(opts, workload, fixtures, target, progress, result)


def _start(opts: RunOptions, progress: Progress, result: Result, stack: ExitStack) -> _Target:
    """Provision the services the cell needs and start its server; all undone by `stack`."""
    adapter = make_server(
        opts.cell.server,
        zig_binary=opts.zig_binary,
        zig_src=opts.zig_src,
        servers_file=opts.servers_file,
    )
    if reason := adapter.unavailable_reason():
        raise CellSkipped(reason)
    opts.cell_dir.mkdir(parents=True, exist_ok=True)
    progress.stage(f"preparing the {adapter.name} server")
    adapter.prepare(opts.cell_dir)  # e.g. build it: before its version is asked
    result.server = ServerInfo(name=adapter.name, version=adapter.version(), **adapter.info())
    datadir = Path(tempfile.mkdtemp(prefix=f"prefect-bench-{opts.cell.name}-"))
    stack.callback(shutil.rmtree, datadir, ignore_errors=True)
    setup = ServerSetup(
        db=opts.cell.db,
        broker=opts.cell.broker,
        logdir=opts.cell_dir,
        datadir=datadir,
        no_services=opts.no_services,
        **_provision(opts, progress, result, stack),
    )
    progress.stage(f"starting the {adapter.name} server")
    server = stack.enter_context(start_server(adapter, setup))
    result.server.startup_s = round(server.startup_s, 3)
    if opts.server_cpus:
        server.process.pin(opts.server_cpus)
    # Totals over the server's life, filled in whatever way the cell ends.
    stack.callback(_record_server_totals, result.server, server)
    result.server.rss_idle_mb = round(tree_rss_mb(server.process.tree()), 1)
    return _Target("127.0.0.1", server.port, server.api_path, server)


def _record_server_totals(info: ServerInfo, server: RunningServer) -> None:
    if server.process.exit_code() is None:  # a dead server's counters are gone
        info.cpu_s = round(tree_cpu_s(server.process.tree()), 3)


def _provision(
    opts: RunOptions, progress: Progress, result: Result, stack: ExitStack
) -> dict[str, object]:
    """Start PostgreSQL and/or Redis as the cell needs; returns ServerSetup keyword arguments."""
    needed = {"postgres": opts.cell.db == "postgres", "redis": opts.cell.broker == "redis"}
    if not any(needed.values()):
        return {}
    from bench import services  # only cells with backing services need the providers

    for leftover in services.remove_leftovers():  # a crashed earlier run's, and only that
        progress.stage(f"removed {leftover}, left by a run that crashed")
    labels = Labels(run_id=opts.run_id, cell=opts.cell.name)
    provided: dict[str, object] = {}
    for kind, wanted in needed.items():
        if not wanted:
            continue
        provider = services.choose(kind, opts.provider)
        progress.stage(f"provisioning {kind} ({provider.name})")
        context = provider.postgres if kind == "postgres" else provider.redis
        service = stack.enter_context(context(opts.cell_dir, labels))
        result.services[kind] = service.info
        provided[kind] = service
    return provided


def _measure_all(
    opts: RunOptions,
    workload: Workload,
    fixtures: dict[str, str],
    target: _Target,
    progress: Progress,
    result: Result,
) -> None:
    sampler = ResourceSampler(target.server.process.tree) if target.server else None
    progress.stage(f"measuring {len(workload.endpoints)} endpoints")
    for endpoint in workload.endpoints:
        request = endpoint.resolve(target.api_path, fixtures)
        for concurrency in opts.concurrency:
            spec = engine.LoadSpec(
                concurrency=concurrency,
                duration_s=opts.duration_s,
                warmup_s=opts.warmup_s,
                rate=opts.rate,
                procs=opts.engine_procs,
                cpus=opts.client_cpus,
            )
            _ensure_alive(target, f"before {endpoint.name} at c={concurrency}")
            callback = progress.measuring(endpoint.name, concurrency)
            with ExitStack() as window:
                usage = window.enter_context(sampler.window()) if sampler else None
                m = engine.measure(engine.Target(target.host, target.port), request, spec, callback)
            ep = EndpointResult(
                name=endpoint.name,
                method=endpoint.method,
                path=endpoint.path,
                concurrency=concurrency,
                requests=m.requests,
                errors=dict(sorted(m.errors.items())),
                duration_s=round(m.duration_s, 3),
                rps=round(m.rps, 1),
                rps_slices=None if m.slice_rps is None else [round(r, 1) for r in m.slice_rps],
                latency_ms=m.latency_ms(),
                client_saturated=m.client_saturated,
                hdr=m.encoded_histogram(),
                problems=m.problems,
                client_cpu_s_per_request=round(m.client_cpu_s / m.requests, 9)
                if m.requests
                else None,
                server_cpu_cores=round(usage.cores, 3) if usage else None,
                server_rss_peak_mb=usage.rss_peak_mb if usage else None,
                engine_procs=m.procs,
                offered_rps=m.offered_rps,
                late_sends=m.late_sends,
                rate_held=m.rate_held,
            )
            result.endpoints.append(ep)
            progress.measured(ep)
            if result.server and usage:
                result.server.rss_peak_mb = max(result.server.rss_peak_mb or 0, usage.rss_peak_mb)
            _ensure_alive(target, f"during {endpoint.name} at c={concurrency}")


def _ensure_alive(target: _Target, when: str) -> None:
    if target.server is None:
        return
    try:
        target.server.check_alive()
    except ServerError as exc:
        raise ServerError(f"{when}: {exc}") from exc
