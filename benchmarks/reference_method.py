"""The seed workload measured two ways in the same run: the reference script's way and ours.

The reference script (shared/reference) drives one sequential httpx client and drops non-2xx
answers silently. This starts the real Python Prefect server (sqlite, memory broker), creates
the seed fixtures, and for each endpoint prints the reference method's rps, the engine's rps at
c=1 and c=4, and the ratio engine(c=1) / reference.

    python benchmarks/reference_method.py [--duration 5]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import httpx
from rich.console import Console
from rich.table import Table

from bench import engine
from bench.servers.adapter import ServerSetup
from bench.servers.registry import make_server
from bench.servers.running import start_server
from bench.workloads import get_workload


def reference_rps(client: httpx.Client, request: engine.EngineRequest, duration_s: float) -> float:
    """The reference loop: sequential requests, counting 2xx answers only."""
    n = sent = 0
    start = time.perf_counter()
    while time.perf_counter() - start < duration_s:
        sent += 1
        body = request.body.replace(engine.UNIQUE_TOKEN, b"%d" % sent) if request.body else None
        resp = client.request(
            request.method,
            request.path,
            content=body,
            headers={"content-type": "application/json"} if body else None,
        )
        n += resp.status_code in (200, 201, 204)
    return n / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--duration", type=float, default=5.0)
    args = parser.parse_args()
    workload = get_workload("seed")
    table = Table(title=f"seed workload, python-sqlite-memory, {args.duration:g} s per figure")
    for column in ("endpoint", "reference rps", "engine c=1", "engine c=4", "c=1 / reference"):
        table.add_column(column, justify="left" if column == "endpoint" else "right")
    with tempfile.TemporaryDirectory(prefix="prefect-bench-refmethod-") as tmp:
        setup = ServerSetup(db="sqlite", broker="memory", logdir=Path(tmp), datadir=Path(tmp))
        with start_server(make_server("python"), setup) as server:
            root = f"http://127.0.0.1:{server.port}"
            with httpx.Client(base_url=server.base_url, timeout=30) as api:
                fixtures = workload.create_fixtures(api)
            target = engine.Target("127.0.0.1", server.port)
            with httpx.Client(base_url=root, timeout=30) as client:
                for endpoint in workload.endpoints:
                    request = endpoint.resolve(server.api_path, fixtures)
                    ref = reference_rps(client, request, args.duration)
                    ours = [
                        engine.measure(
                            target,
                            request,
                            engine.LoadSpec(concurrency=c, duration_s=args.duration, warmup_s=1),
                        ).rps
                        for c in (1, 4)
                    ]
                    table.add_row(
                        endpoint.name,
                        f"{ref:,.0f}",
                        f"{ours[0]:,.0f}",
                        f"{ours[1]:,.0f}",
                        f"{ours[0] / ref:.2f}",
                    )
    Console().print(table)


if __name__ == "__main__":
    main()
