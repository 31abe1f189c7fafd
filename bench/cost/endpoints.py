"""A cost cell's endpoints: each counted in blocks (bench.cost.blocks), its result kept with the
counted blocks' callgrind dumps compressed beside the cell's result.

A cost cell's timed figures are those of its counted requests as sent, one at a time, to a
server under callgrind (~50-100x slower than natively): true of that run and kept (they say
how long a cost run takes), never a figure of the server's speed. `--cost` is a measurement
setting, so no comparison sets them beside a wall-clock cell's.
"""

from __future__ import annotations

import gzip
import itertools
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx

from bench.cost.blocks import REQUEST_TIMEOUT_S, Blocks, Counted, count, idle
from bench.cost.callgrind import Collector
from bench.engine.model import EngineRequest, new_histogram
from bench.results.merge import latency_summary
from bench.results.schema import EndpointResult

# Where a cell's kept dumps go, in its folder beside its logs.
KEPT_FOLDER = "callgrind"
# How long the server's idle work is counted, before the endpoints.
IDLE_S = 3.0


@dataclass(frozen=True)
class CostTarget:
    """The server a cost cell counts: its API's URL, the process callgrind runs in and the
    folder its dumps are written to (the server's own, removed with it); the kept dumps go to
    `keep_dir`, named in the result relative to `run_dir`."""

    base_url: str
    pid: int
    dumps_dir: Path
    keep_dir: Path
    run_dir: Path


@dataclass(frozen=True)
class CostedEndpoint:
    """One request of the workload, fixtures filled in."""

    name: str
    method: str
    path: str
    request: EngineRequest


def count_endpoints(
    target: CostTarget,
    endpoints: list[CostedEndpoint],
    blocks: Blocks,
    alive: Callable[[], None],
) -> Iterator[EndpointResult]:
    """Each endpoint's result, counted in `blocks`, in order, as each is done. The requests
    go through one connection kept open (one user), with the workload's paths as given
    (`request.path` holds the API's prefix)."""
    collector = Collector(target.pid, target.dumps_dir)
    origin = target.base_url.split("/", 3)
    root = "/".join(origin[:3])  # http://host:port: the requests' paths hold the API prefix
    limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
    idle_per_s = idle(collector, IDLE_S)
    with httpx.Client(base_url=root, timeout=REQUEST_TIMEOUT_S, limits=limits) as client:
        for endpoint in endpoints:
            counted = count(client, collector, endpoint.name, endpoint.request, blocks, alive)
            kept = keep(counted, target.keep_dir, target.run_dir)
            yield result_of(endpoint, counted, blocks, kept, idle_per_s)


def keep(counted: Counted, into: Path, run_dir: Path) -> list[str]:
    """The counted blocks' dumps, gzip-compressed into `into` (the raw ones removed): their
    paths relative to `run_dir`. Numbered on from those there (a repetition's cell keeps its
    dumps in the same folder): never overwritten."""
    into.mkdir(parents=True, exist_ok=True)
    stem = "".join(c if c.isalnum() else "-" for c in counted.name).strip("-")
    kept = []
    numbers = itertools.count(1)
    for dump in counted.dumps:
        target = next(
            path for k in numbers if not (path := into / f"{stem}.{k}.callgrind.gz").exists()
        )
        with open(dump, "rb") as raw, gzip.open(target, "xb", compresslevel=6) as packed:
            shutil.copyfileobj(raw, packed)
        dump.unlink(missing_ok=True)
        kept.append(str(target.relative_to(run_dir)))
    return kept


def result_of(
    endpoint: CostedEndpoint,
    counted: Counted,
    blocks: Blocks,
    kept: list[str],
    idle_per_s: float | None = None,
) -> EndpointResult:
    """The endpoint's result: its cost, and the counted requests as timed (see the module's
    note)."""
    hist = new_histogram()
    for seconds in counted.latencies_s:
        hist.record_value(max(1, round(seconds * 1e6)))
    requests = len(counted.latencies_s)
    return EndpointResult(
        name=endpoint.name,
        method=endpoint.method,
        path=endpoint.path,
        concurrency=1,
        requests=requests,
        duration_s=counted.seconds,
        rps=requests / counted.seconds if counted.seconds else 0.0,
        latency_ms=latency_summary(hist),
        hdr=hist.encode().decode("ascii"),
        cost=counted.cost(blocks.size, kept, idle_per_s),
    )
