"""What the variance of a timed figure is made of, and how much of it each way of pairing two
servers cancels (issue 23): an A/A of the real Python Prefect server (sqlite, memory broker,
no services), one endpoint at one concurrency, closed model.

1. **Where the variance is.** --servers fresh servers one after another, each measured in
   --windows windows of --window s: the rate's coefficient of variation between the 0.5 s
   slices of a window, between the windows of one server, and between the servers' means.
2. **How pairing cancels it.** Two servers of the same code up at once (A and B), both pinned
   to the server CPU, the load on the other (as a cell pins them), for --rounds rounds:
   - *rounds*: a window of A then one of B (order alternating), as a matrix's rounds pair
     cells, but back to back;
   - *interleaved*: the same time cut into --short s windows alternating A, B, A, B, … (who
     starts alternating), the round's rate of each its windows' mean.
   - *duet*: A with its load on one CPU, B with its load on the other, both windows at once
     (B's load from a child process with an engine of its own, started by a line on its
     stdin);
   - *shared-core duet*: both windows at once, both servers on the server CPU and both loads
     on the other: the CPU's time is split between them request by request;
   - *together*: the same, but one engine loads both (`measure_together` with a target per
     part): A's users and B's share its event loop, so neither load is scheduled apart.
   Each round gives log(B/A); their standard deviation is what a paired test on that many
   rounds sees, printed with the 95% interval half-width it allows at 6 rounds (t, 5 df).
   Interleaving puts A and B within --short s of each other, duet at the same moment (on
   different CPUs); if the machine's speed moves within seconds, their ratios spread less.

    .nox/tests/bin/python benchmarks/pair_variance.py [--endpoint flow|health] [--concurrency 4]
        [--window 2] [--short 0.5] [--rounds 12] [--servers 3] [--windows 6]
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
from _wrk import split_cpus
from scipy import stats

from bench.engine import EngineRequest, LoadSpec, Target, measure, shutdown
from bench.engine.measure import measure_together
from bench.engine.scenario import Scenario
from bench.results import Measurement
from bench.servers.adapter import ServerSetup
from bench.servers.registry import make_server
from bench.servers.running import RunningServer, start_server
from bench.workloads.base import read_each


def cv_pct(values: list[float]) -> float:
    return 100 * statistics.stdev(values) / statistics.fmean(values) if len(values) > 1 else 0.0


def half_width_pct(sd_log: float, rounds: int = 6) -> float:
    """The 95% interval's half-width, %, of a geometric mean ratio over `rounds` rounds whose
    log ratios spread by `sd_log`."""
    return 100 * (math.exp(stats.t.ppf(0.975, rounds - 1) * sd_log / math.sqrt(rounds)) - 1)


class Bench:
    """The load of every window: one endpoint, `concurrency` users, the client on its CPU."""

    def __init__(self, endpoint: str, concurrency: int, client_cpu: int | None) -> None:
        self.endpoint, self.concurrency, self.client_cpu = endpoint, concurrency, client_cpu

    def request(self, port: int, api_path: str) -> EngineRequest:
        """The request of every window to the server at `port` (a flow it creates to read)."""
        if self.endpoint == "health":
            return EngineRequest("GET", f"{api_path}/health")
        url = f"http://127.0.0.1:{port}{api_path}/flows/"
        flow = httpx.post(url, json={"name": "pair-variance"}, timeout=30).json()
        return EngineRequest("GET", f"{api_path}/flows/{flow['id']}")

    def window(
        self, port: int, request: EngineRequest, seconds: float, warmup: float
    ) -> Measurement:
        spec = LoadSpec(
            concurrency=self.concurrency,
            duration_s=seconds,
            warmup_s=warmup,
            client_cpus=None if self.client_cpu is None else (self.client_cpu,),
        )
        m = measure(Target("127.0.0.1", port), request, spec)
        if m.errors:
            raise SystemExit(f"errors in a window: {m.errors}")
        return m


@contextlib.contextmanager
def servers(count: int, server_cpu: int | None) -> Iterator[list[RunningServer]]:
    """`count` python servers up at once, each in a folder of its own, pinned to server_cpu."""
    adapter = make_server("python")
    with contextlib.ExitStack() as stack:
        started = []
        for k in range(count):
            tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix=f"pv{k}-")))
            setup = ServerSetup(
                db="sqlite", broker="memory", logdir=tmp, datadir=tmp / "data", no_services=True
            )
            server = stack.enter_context(start_server(adapter, setup))
            if server_cpu is not None:
                server.pin([server_cpu])
            started.append(server)
        yield started


def where_the_variance_is(args: argparse.Namespace, load: Bench, server_cpu: int | None) -> None:
    means, between_windows, within = [], [], []
    for k in range(args.servers):
        with servers(1, server_cpu) as (server,):
            request = load.request(server.port, server.api_path)
            load.window(server.port, request, 2.0, 0.5)  # discarded: the server's first seconds
            rates = []
            for _ in range(args.windows):
                m = load.window(server.port, request, args.window, 0.3)
                rates.append(m.rps)
                within.append(cv_pct(m.rps_slices or [m.rps]))
            means.append(statistics.fmean(rates))
            between_windows.append(cv_pct(rates))
            print(
                f"  server {k + 1}: {statistics.fmean(rates):.1f}/s over {args.windows} windows"
                f" ({' '.join(f'{r:.0f}' for r in rates)})",
                flush=True,
            )
    print(f"  CV within a window (0.5 s slices, median): {statistics.median(within):.1f}%")
    print(f"  CV between windows of one server (median): {statistics.median(between_windows):.1f}%")
    print(f"  CV between fresh servers' means: {cv_pct(means):.1f}%")


def pairing(args: argparse.Namespace, load: Bench, server_cpu: int | None) -> None:
    with servers(2, server_cpu) as (a, b):
        requests = {id(s): load.request(s.port, s.api_path) for s in (a, b)}
        for s in (a, b):
            load.window(s.port, requests[id(s)], 2.0, 0.5)
        by_rounds, interleaved = [], []
        short = max(1, round(args.window / args.short))
        for r in range(args.rounds):
            first, second = (a, b) if r % 2 == 0 else (b, a)
            rate = {}
            for s in (first, second):
                rate[id(s)] = load.window(s.port, requests[id(s)], args.window, 0.3).rps
            by_rounds.append(math.log(rate[id(b)] / rate[id(a)]))
            sums = {id(a): 0.0, id(b): 0.0}
            for i in range(short):
                order = (first, second) if i % 2 == 0 else (second, first)
                for s in order:
                    sums[id(s)] += load.window(s.port, requests[id(s)], args.short, 0.0).rps
            interleaved.append(math.log(sums[id(b)] / sums[id(a)]))
            print(
                f"  round {r + 1}: rounds B/A {math.exp(by_rounds[-1]):.3f}, "
                f"interleaved B/A {math.exp(interleaved[-1]):.3f}",
                flush=True,
            )
    duet = duet_rounds(args, load)
    shared = duet_rounds(args, load, shared=True)
    together = together_rounds(args, load, server_cpu)
    for name, logs in (
        ("rounds", by_rounds),
        ("interleaved", interleaved),
        ("duet", duet),
        ("shared-core duet", shared),
        ("together", together),
    ):
        sd = statistics.stdev(logs)
        print(
            f"  {name}: mean ratio {math.exp(statistics.fmean(logs)):.3f}, SD of log ratio "
            f"{100 * sd:.1f}%, 95% interval at 6 rounds ±{half_width_pct(sd):.1f}%"
        )


def duet_rounds(args: argparse.Namespace, load: Bench, shared: bool = False) -> list[float]:
    """--rounds windows of A and B at once, each server and its load on a CPU of its own; or,
    `shared`, both servers on the server CPU and both loads on the other (the CPU's time split
    between them request by request, at the same moments)."""
    cpus = sorted(os.sched_getaffinity(0))[:2]
    server_cpus = (cpus[0], cpus[0]) if shared else (cpus[0], cpus[1])
    load_cpus = (cpus[1], cpus[1]) if shared else (cpus[0], cpus[1])
    with servers(1, server_cpus[0]) as (a,), servers(1, server_cpus[1]) as (b,):
        request_a = load.request(a.port, a.api_path)
        argv = [sys.executable, __file__, "--duet-child", str(b.port), b.api_path]
        argv.append(str(load_cpus[1]))
        argv += ["--endpoint", load.endpoint, "--concurrency", str(load.concurrency)]
        child = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            bufsize=1,
        )
        assert child.stdin is not None and child.stdout is not None
        try:
            mine = Bench(load.endpoint, load.concurrency, load_cpus[0])
            assert child.stdout.readline().strip() == "ready"
            child.stdin.write("2.0 0.5\n")  # discarded: both servers' and engines' first seconds
            mine.window(a.port, request_a, 2.0, 0.5)
            float(child.stdout.readline())
            logs = []
            for r in range(args.rounds):
                child.stdin.write(f"{args.window} 0.3\n")
                rate_a = mine.window(a.port, request_a, args.window, 0.3).rps
                rate_b = float(child.stdout.readline())
                logs.append(math.log(rate_b / rate_a))
                kind = "shared-core duet" if shared else "duet"
                print(f"  {kind} round {r + 1}: B/A {rate_b / rate_a:.3f}", flush=True)
        finally:
            child.stdin.close()
            child.wait(timeout=60)
    return logs


def together_rounds(args: argparse.Namespace, load: Bench, server_cpu: int | None) -> list[float]:
    """--rounds windows in which one engine's users load A and B at once (half each)."""
    with servers(2, server_cpu) as (a, b):
        parts, targets = [], []
        for s in (a, b):
            request = load.request(s.port, s.api_path)
            relative = EngineRequest(request.method, request.path.removeprefix(s.api_path))
            reads = {"requests": ((f"{request.method} {args.endpoint}", relative),)}
            parts.append((Scenario(args.endpoint, read_each, reads, s.api_path), load.concurrency))
            targets.append(Target("127.0.0.1", s.port))
        cpus = None if load.client_cpu is None else (load.client_cpu,)
        logs = []
        for r in range(args.rounds + 1):
            spec = LoadSpec(load.concurrency, args.window, 0.5 if r == 0 else 0.3, client_cpus=cpus)
            rate_a, rate_b = (
                m.per_s for m in measure_together(targets[0], parts, spec, None, targets)
            )
            if r == 0:
                continue  # discarded: both servers' first seconds
            logs.append(math.log(rate_b / rate_a))
            print(f"  together round {r}: B/A {rate_b / rate_a:.3f}", flush=True)
    return logs


def duet_child(port: int, api_path: str, cpu: int, endpoint: str, concurrency: int) -> int:
    """B's load in a duet: a window per line of stdin (`seconds warmup`), its rate printed."""
    load = Bench(endpoint, concurrency, cpu)
    request = load.request(port, api_path)
    print("ready", flush=True)  # imported and connected: its windows start when told
    try:
        for line in sys.stdin:
            seconds, warmup = map(float, line.split())
            print(load.window(port, request, seconds, warmup).rps, flush=True)
    finally:
        shutdown()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--endpoint", choices=["flow", "health"], default="flow")
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--window", type=float, default=2.0, help="seconds a window")
    parser.add_argument("--short", type=float, default=0.5, help="interleaved windows, seconds")
    parser.add_argument("--rounds", type=int, default=12)
    parser.add_argument("--servers", type=int, default=3, help="fresh servers (0: skip part 1)")
    parser.add_argument("--windows", type=int, default=6, help="windows a fresh server")
    parser.add_argument(
        "--duet-child", nargs=3, metavar=("PORT", "API", "CPU"), help=argparse.SUPPRESS
    )
    args = parser.parse_args(argv)
    if args.duet_child:
        port, api_path, cpu = args.duet_child
        return duet_child(int(port), api_path, int(cpu), args.endpoint, args.concurrency)
    if args.rounds < 3 or args.servers == 1 or args.windows < 2:
        parser.error("at least 3 rounds, 2 servers (0: part 1 left out) and 2 windows a server")
    if make_server("python").unavailable_reason():
        print("the python server is unavailable", file=sys.stderr)
        return 2
    server_cpu, client_cpu = split_cpus(pin=True)
    load = Bench(args.endpoint, args.concurrency, client_cpu)
    started = time.monotonic()
    print(
        f"GET {args.endpoint} at c={args.concurrency}, windows of {args.window:g} s "
        f"(server on CPU {server_cpu}, load on CPU {client_cpu})"
    )
    try:
        if args.servers:
            print("1. where the variance is")
            where_the_variance_is(args, load, server_cpu)
        print(f"2. pairing two servers of the same code, {args.rounds} rounds")
        pairing(args, load, server_cpu)
    finally:
        shutdown()
    print(f"wall time {time.monotonic() - started:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
