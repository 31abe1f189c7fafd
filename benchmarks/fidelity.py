"""Fidelity: the engine next to wrk on the real Python Prefect server's /api/health, same run.

Starts the Python Prefect server (sqlite, memory broker, no background services) on a free
loopback port, then at each concurrency runs `wrk -t1 -cN` and the engine (GET /api/health,
closed model, N connections) alternately --rounds times, prints both mean rates and engine/wrk
with a 95% bootstrap interval, and exits 1 if a ratio is below --min-ratio (issue 4: the engine
must see at least 95% of what wrk sees on a real server).

Both tools count successful responses only (wrk's non-2xx answers are taken off its rate). The
server, not the client, is the limit here, and its own speed drifts by 5-10% from one window to
the next (its CPU time per request moves that much under either tool). So the tools take many
short turns after a discarded one each, who goes first alternating, and the ratio is of their
mean rates over all rounds: a drift lands on both. The interval (resampling whole rounds) says
how sure that ratio is. On a machine with at least two CPUs the server's processes are pinned
to one CPU and the client (wrk, then the engine) to another (--no-pin: the scheduler decides).

    .venv/bin/python benchmarks/fidelity.py [--min-ratio 0.95] [--duration 3] [--rounds 10]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from _wrk import INSTALL_HINT, WrkRun, have_wrk, run_wrk, split_cpus, verdict

from bench.compare import change
from bench.engine import EngineRequest, LoadSpec, Target, measure, shutdown
from bench.results import Measurement
from bench.servers.adapter import ServerSetup
from bench.servers.registry import make_server
from bench.servers.running import RunningServer, start_server

HEALTH = "/health"


@dataclass
class Row:
    """One concurrency level: each round's rates of both tools."""

    concurrency: int
    rounds: list[tuple[float, float]] = field(default_factory=list)  # (wrk rps, engine rps)
    wrk_errors: int = 0
    engine_errors: int = 0
    engine_cpu_s: float = 0.0
    engine_requests: int = 0
    saturated_rounds: int = 0

    @property
    def ratio(self) -> float:
        """Mean engine rate over mean wrk rate (rounds are of equal length)."""
        wrk = sum(w for w, _ in self.rounds)
        return sum(e for _, e in self.rounds) / wrk if wrk else 0.0

    def interval(self) -> tuple[float, float]:
        """95% bootstrap interval of the ratio, resampling whole rounds (pairs stay pairs)."""
        wrk, engine = zip(*self.rounds, strict=True)
        return change.interval(
            [wrk, engine],
            lambda w, e, axis: np.sum(e, axis=axis) / np.sum(w, axis=axis),
            paired=True,
        )

    def line(self) -> str:
        wrk = statistics.mean(w for w, _ in self.rounds)
        engine = statistics.mean(e for _, e in self.rounds)
        low, high = self.interval()
        notes = f"95% interval {low:.3f}-{high:.3f}; rounds wrk/engine "
        notes += " ".join(f"{w:.0f}/{e:.0f}" for w, e in self.rounds)
        if self.wrk_errors:
            notes += f" wrk_errors={self.wrk_errors}"
        if self.engine_errors:
            notes += f" engine_errors={self.engine_errors}"
        if self.saturated_rounds:
            notes += f" client_saturated in {self.saturated_rounds} rounds"
        cpu_us = self.engine_cpu_s / max(self.engine_requests, 1) * 1e6
        notes += f"; engine cpu/req {cpu_us:.0f}µs"
        c = self.concurrency
        return f"{c:>4} {wrk:>10.0f} {engine:>11.0f} {self.ratio:>6.3f}  {notes}"

    def add(self, wrk: WrkRun, m: Measurement) -> None:
        self.rounds.append((wrk.good_rps, m.rps))
        self.wrk_errors += wrk.non_2xx + wrk.socket_errors
        self.engine_errors += sum(m.errors.values())
        self.engine_cpu_s += (m.client_cpu_s_per_request or 0.0) * m.requests
        self.engine_requests += m.requests
        self.saturated_rounds += m.client_saturated


def compare(
    server: RunningServer, c: int, duration_s: int, rounds: int, client_cpu: int | None
) -> Row:
    """wrk and the engine, alternately `rounds` times, at concurrency `c`."""
    path = server.api_path + HEALTH
    url = f"http://127.0.0.1:{server.port}{path}"
    target = Target("127.0.0.1", server.port)
    request = EngineRequest("GET", path)
    spec = LoadSpec(
        concurrency=c,
        duration_s=duration_s,
        warmup_s=1,
        client_cpus=None if client_cpu is None else (client_cpu,),
    )
    row = Row(c)
    # a discarded round of each first: fresh engine processes, the server's first seconds
    run_wrk(url, c, duration_s, client_cpu)
    measure(target, request, spec)
    for i in range(rounds):
        if i % 2 == 0:  # who goes first alternates, so a slow drift favours neither
            w = run_wrk(url, c, duration_s, client_cpu)
            m = measure(target, request, spec)
        else:
            m = measure(target, request, spec)
            w = run_wrk(url, c, duration_s, client_cpu)
        server.check_alive()
        row.add(w, m)
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--min-ratio", type=float, default=0.95)
    parser.add_argument("--duration", type=int, default=3, help="seconds per measurement")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[4, 16])
    parser.add_argument("--rounds", type=int, default=10, help="alternations (at least 2)")
    parser.add_argument("--no-pin", action="store_true", help="do not pin to CPUs")
    args = parser.parse_args(argv)
    if args.rounds < 2:
        parser.error("--rounds must be at least 2: each tool goes first once")
    if not have_wrk():
        print(f"ERROR: wrk not found ({INSTALL_HINT})", file=sys.stderr)
        return 2
    adapter = make_server("python")
    reason = adapter.unavailable_reason()
    if reason:
        print(f"ERROR: the python server is unavailable: {reason}", file=sys.stderr)
        return 2

    server_cpu, client_cpu = split_cpus(pin=not args.no_pin)
    worst = float("inf")
    with tempfile.TemporaryDirectory(prefix="fidelity-") as tmp:
        setup = ServerSetup(
            db="sqlite",
            broker="memory",
            logdir=Path(tmp),
            datadir=Path(tmp) / "data",
            no_services=True,  # their periodic loops share the server's CPU: noise here
        )
        with start_server(adapter, setup) as server:
            if server_cpu is not None:
                server.process.pin([server_cpu])
            url = f"http://127.0.0.1:{server.port}{server.api_path}{HEALTH}"
            pinned = ""
            if client_cpu is not None:
                pinned = f"(server on CPU {server_cpu}, clients on CPU {client_cpu})"
            print(f"python prefect server at {url} {pinned}")
            print("rates are means over the rounds; ratio = engine mean / wrk mean")
            print(f"{'c':>4} {'wrk rps':>10} {'engine rps':>11} {'ratio':>6}  notes")
            for c in args.concurrency:
                row = compare(server, c, args.duration, args.rounds, client_cpu)
                worst = min(worst, row.ratio)
                print(row.line(), flush=True)
    shutdown()
    return verdict(worst, args.min_ratio)


if __name__ == "__main__":
    raise SystemExit(main())
