"""What makes two fresh python servers under callgrind count a request differently?

Starts the python server as a --cost cell does (callgrind, collection off; PYTHONHASHSEED=0;
bench/servers/python_cost's sitecustomize: random bytes seeded, the collector off, docket
held still; SQLite, no services) several times, one after another, and counts `GET
/flows/{id}` of one flow in --blocks blocks of --requests after as many of warm-up. Each
server's figure is printed beside the instructions it spent in CPython's `find_name_in_mro`,
the walk an attribute lookup makes when it misses the type attribute cache (indexed by the
type's version tag and the *address* of the attribute's name).

Three kinds of start, --starts of each:
- same:   the same port, folder, argv and environment byte for byte, no request before the
          count (readiness read from /proc/net/tcp, so the server sees no connection);
- port:   a port of its own each (as cells get);
- health: the same as `same`, but ready when GET /api/health answers (as cells wait).

It prints each server's instructions per request (the mean of its blocks), the range between
servers (all, and `same` alone), and the correlation of the figure with `find_name_in_mro`.

    .nox/tests/bin/python benchmarks/cost_determinism.py [--starts 2] [--blocks 3] [--requests 50]

A server takes about 1.5 minutes (its start under callgrind ~40 s).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from bench.core.ports import free_port
from bench.cost.callgrind import Collector, command_prefix
from bench.servers.adapter import clean_environ
from bench.servers.python import HOLD_STILL

START_WAIT_S = 300.0
MRO = re.compile(r"^\s*([\d,]+) \(.*:find_name_in_mro ", re.M)


@dataclass
class Count:
    kind: str
    per_request: list[float]
    find_name_in_mro: list[float]

    @property
    def figure(self) -> float:
        return statistics.fmean(self.per_request)

    @property
    def misses(self) -> float:
        return statistics.fmean(self.find_name_in_mro)


def listening(port: int) -> bool:
    """Whether a socket listens on `port` (IPv4), read from /proc: no connection made."""
    hexport = f":{port:04X}"
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[1].endswith(hexport) and fields[3] == "0A":
            return True
    return False


def environment(work: Path) -> dict[str, str]:
    """A --cost cell's python server environment (bench/servers/builtin.toml), on `work`."""
    return clean_environ() | {
        "PREFECT_HOME": f"{work}/prefect-home",
        "PREFECT_SERVER_UI_ENABLED": "false",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_SERVER_LOGGING_LEVEL": "WARNING",
        "PREFECT_LOGGING_LEVEL": "WARNING",
        "PYTHONHASHSEED": "0",
        "PREFECT_SERVER_API_KEEPALIVE_TIMEOUT": "3600",
        "PREFECT_SERVER_DATABASE_CONNECTION_URL": f"sqlite+aiosqlite:///{work}/prefect.db",
        "PYTHONPATH": str(HOLD_STILL),
    }


def count(kind: str, port: int, work: Path, blocks: int, requests: int) -> Count:
    """One fresh server on `port` in `work` (emptied first): its blocks' counts."""
    shutil.rmtree(work, ignore_errors=True)
    (work / "cg").mkdir(parents=True)
    argv = [
        *command_prefix(work / "cg"),
        sys.executable,
        *("-m", "prefect", "server", "start", "--no-services"),
        *("--host", "127.0.0.1", "--port", str(port)),
    ]
    with open(work / "server.log", "w") as log:
        server = subprocess.Popen(
            argv,
            env=environment(work),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            cwd=work,
        )
    base = f"http://127.0.0.1:{port}/api"
    try:
        deadline = time.monotonic() + START_WAIT_S
        while not ready(kind, port, base):
            if time.monotonic() > deadline or server.poll() is not None:
                raise SystemExit(f"the server did not start: see {work / 'server.log'}")
            time.sleep(0.5)
        collector = Collector(server.pid, work / "cg")
        per_request, misses = [], []
        with httpx.Client(base_url=base, timeout=60) as client:
            flow = client.post("/flows/", json={"name": "determinism"}).json()["id"]
            for block in range(blocks + 1):  # the first a warm-up, not counted
                if block:
                    collector.on()
                for _ in range(requests):
                    client.get(f"/flows/{flow}").raise_for_status()
                if block:
                    collector.off()
                    total, dump = collector.dump()
                    annotated = subprocess.run(
                        ["callgrind_annotate", "--threshold=100", str(dump)],
                        capture_output=True,
                        text=True,
                        check=True,
                    ).stdout
                    found = sum(int(m.replace(",", "")) for m in MRO.findall(annotated))
                    per_request.append(total / requests)
                    misses.append(found / requests)
        return Count(kind, per_request, misses)
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()


def ready(kind: str, port: int, base: str) -> bool:
    if kind != "health":
        return listening(port)
    with contextlib.suppress(httpx.HTTPError):
        return httpx.get(f"{base}/health", timeout=5).status_code == 200
    return False


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--starts", type=int, default=2, help="servers of each kind")
    parser.add_argument("--blocks", type=int, default=3)
    parser.add_argument("--requests", type=int, default=50, help="per block")
    args = parser.parse_args()
    counts: list[Count] = []
    with tempfile.TemporaryDirectory(prefix="prefect-bench-determinism-") as folder:
        work, port = Path(folder) / "server", free_port()
        for kind in ("same", "port", "health"):
            for _ in range(args.starts):
                own = free_port() if kind == "port" else port
                counts.append(count(kind, own, work, args.blocks, args.requests))
                done = counts[-1]
                print(
                    f"{kind:7} {done.figure:>12,.0f} instructions per GET flow "
                    f"(blocks {', '.join(f'{b:,.0f}' for b in done.per_request)}), "
                    f"find_name_in_mro {done.misses:,.0f}",
                    flush=True,
                )
    figures = [c.figure for c in counts]
    same = [c.figure for c in counts if c.kind == "same"]
    print(f"between servers: {100 * (max(figures) / min(figures) - 1):.2f}% (all {len(figures)})")
    print(f"between the byte-identical starts: {100 * (max(same) / min(same) - 1):.2f}%")
    if len(counts) > 2:
        r = statistics.correlation([c.misses for c in counts], figures)
        print(f"correlation with find_name_in_mro's instructions: r = {r:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
