"""Fidelity: the engine next to wrk on the real Python Prefect server's /api/health, same run.

Starts the Python Prefect server (sqlite, memory broker) on a free loopback port, then at each
concurrency runs `wrk -t1 -cN` and the engine (GET /api/health, closed model, N connections)
alternately --rounds times, prints both rates and engine/wrk, and exits 1 if a ratio is below
--min-ratio (issue 4: the engine must see at least 95% of what wrk sees on a real server).

Both tools count successful responses only (wrk's non-2xx answers are taken off its rate). The
best rate of each tool over the rounds is compared: on a shared machine, other work only ever
lowers a rate. The notes also give the median of the rounds' own engine/wrk ratios (a round's
two runs are close in time). On a machine with at least two CPUs the server's processes are
pinned to one CPU and the client (wrk, then the engine) to another (--no-pin: the scheduler
decides).

    .venv/bin/python benchmarks/fidelity.py [--min-ratio 0.95] [--duration 5] [--rounds 5]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from _wrk import INSTALL_HINT, have_wrk, run_wrk, split_cpus, verdict

from bench.engine import EngineRequest, LoadSpec, Measurement, Target, measure, shutdown
from bench.servers import RunningServer, ServerSetup, make_server, start_server

HEALTH = "/health"


@dataclass
class Row:
    """One concurrency level: the best rate of each tool over the rounds."""

    concurrency: int
    wrk_rps: float
    engine: Measurement
    rounds: list[tuple[float, float]]  # (wrk rps, engine rps) of each round
    wrk_errors: int

    @property
    def ratio(self) -> float:
        return self.engine.rps / self.wrk_rps if self.wrk_rps else 0.0

    def line(self) -> str:
        m = self.engine
        notes = "rounds wrk/engine " + " ".join(f"{w:.0f}/{e:.0f}" for w, e in self.rounds)
        paired = statistics.median(e / w for w, e in self.rounds if w)
        notes += f" (median of the rounds' ratios {paired:.2f})"
        if self.wrk_errors:
            notes += f" wrk_errors={self.wrk_errors}"
        if m.errors:
            notes += f" engine_errors={sum(m.errors.values())}"
        if m.client_saturated:
            notes += " client_saturated"
        cpu_us = m.client_cpu_s / max(m.requests, 1) * 1e6
        notes += f"; engine cpu/req {cpu_us:.0f}µs"
        c = self.concurrency
        return f"{c:>4} {self.wrk_rps:>10.0f} {m.rps:>11.0f} {self.ratio:>6.2f}  {notes}"


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
        cpus=None if client_cpu is None else (client_cpu,),
    )
    row = Row(c, 0.0, Measurement(0, {}, duration_s), [], 0)
    run_wrk(url, c, 1, client_cpu)  # wrk has no warmup of its own: give it the engine's 1 s
    for i in range(rounds):
        if i % 2 == 0:  # who goes first alternates, so a slow drift favours neither
            w = run_wrk(url, c, duration_s, client_cpu)
            m = measure(target, request, spec)
        else:
            m = measure(target, request, spec)
            w = run_wrk(url, c, duration_s, client_cpu)
        server.check_alive()
        row.rounds.append((w.good_rps, m.rps))
        row.wrk_rps = max(row.wrk_rps, w.good_rps)
        row.wrk_errors += w.non_2xx + w.socket_errors
        if m.rps >= row.engine.rps:
            row.engine = m
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--min-ratio", type=float, default=0.95)
    parser.add_argument("--duration", type=int, default=5, help="seconds per measurement")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[4, 16])
    parser.add_argument("--rounds", type=int, default=5, help="alternations; best rate wins")
    parser.add_argument("--no-pin", action="store_true", help="do not pin to CPUs")
    args = parser.parse_args(argv)
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
            db="sqlite", broker="memory", logdir=Path(tmp), datadir=Path(tmp) / "data"
        )
        with start_server(adapter, setup) as server:
            if server_cpu is not None:
                server.process.pin([server_cpu])
            url = f"http://127.0.0.1:{server.port}{server.api_path}{HEALTH}"
            pinned = ""
            if client_cpu is not None:
                pinned = f"(server on CPU {server_cpu}, clients on CPU {client_cpu})"
            print(f"python prefect server at {url} {pinned}")
            print(f"{'c':>4} {'wrk rps':>10} {'engine rps':>11} {'ratio':>6}  notes")
            for c in args.concurrency:
                row = compare(server, c, args.duration, args.rounds, client_cpu)
                worst = min(worst, row.ratio)
                print(row.line(), flush=True)
    shutdown()
    return verdict(worst, args.min_ratio)


if __name__ == "__main__":
    raise SystemExit(main())
