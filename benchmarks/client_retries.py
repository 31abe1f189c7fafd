"""Do the emulated users retry as the real Prefect client does? Both on one SQLite server.

Starts the Python Prefect server on SQLite with its background services (whose writes hold the
database lock, so that flow runs meet 503 "database is locked"), behind the counting proxy
(bench.conformance.proxy). Then, --rounds times:
- real: --users processes of the real client (bench/conformance/flow.py --for-s), each running
  the flow-runs workload's flow (--tasks tasks) again and again for --duration seconds;
- emulated: the flow-runs scenario with --users users for --duration seconds, starting flow
  runs at the rate the real clients reached (the open model): the server is as busy, and the
  lock as contended, as under the real clients (which spend ~2 s of their own CPU per flow run,
  so that users left free would write several times faster).
Both are counted from the server's side, by the proxy: the answers 503 (each one a try the
client sent again, or gave up on) and the flow runs created (`POST /flow_runs/` answered 201;
the real client's logs are sent in batches, so its last request is no count of its runs). It
prints, per round and side, the flow runs, the 503s and the 503s per flow run, the emulation's
own count of its retries, and the ratio emulated/real of 503s per flow run over all rounds with
a 95% bootstrap interval (resampling rounds). Exits 1 if the interval excludes 1 and the ratio
is off by more than --tolerance.

    .nox/tests/bin/python benchmarks/client_retries.py [--users 4] [--duration 30] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np

from bench.config.run import RunConfig
from bench.conformance.flow import RESULT_PREFIX
from bench.conformance.proxy import TrafficCounts, counting_proxy
from bench.conformance.real_client import FLOW_SCRIPT, client_environ
from bench.core.process import ManagedProcess, wait_until
from bench.engine import LoadSpec, Target, measure_scenario, shutdown
from bench.servers.adapter import ServerSetup
from bench.servers.registry import make_server
from bench.servers.running import start_server
from bench.workloads import flow_runs
from bench.workloads.client_retries import client_retries

CREATE = "POST /api/flow_runs/"
# the real client's processes: importing prefect and the flow's last run end after the window
GRACE_S = 120.0


@dataclass
class Side:
    """One side's rounds: (flow runs finished, 503 answers) each, from the proxy."""

    name: str
    rounds: list[tuple[int, int]] = field(default_factory=list)
    own_retries: int = 0  # the emulation's own count of the tries it sent again
    by_request: dict[str, int] = field(default_factory=dict)

    def add(self, before: TrafficCounts, after: TrafficCounts) -> None:
        created = after.requests.get(CREATE, 0) - before.requests.get(CREATE, 0)
        refused = {
            key: n - before.errors.get(key, 0)
            for key, n in after.errors.items()
            if key.endswith(" 503") and n > before.errors.get(key, 0)
        }
        for key, n in refused.items():
            self.by_request[key] = self.by_request.get(key, 0) + n
        self.rounds.append((created - refused.get(f"{CREATE} 503", 0), sum(refused.values())))

    def per_run(self, rounds: list[tuple[int, int]] | None = None) -> float:
        chosen = self.rounds if rounds is None else rounds
        runs = sum(r for r, _ in chosen)
        return sum(s for _, s in chosen) / runs if runs else float("nan")


def run_real(proxy_url: str, users: int, tasks: int, duration_s: float, workdir: Path) -> int:
    """`users` real-client processes running the flow for `duration_s`; the flow runs they
    say completed."""
    processes = []
    for i in range(users):
        folder = workdir / f"real-{i}-{time.monotonic_ns()}"
        home = folder / "prefect-home"
        home.mkdir(parents=True)
        argv = [sys.executable, str(FLOW_SCRIPT), "--tasks", str(tasks), "--for-s", str(duration_s)]
        processes.append(
            ManagedProcess(
                argv,
                env=client_environ(proxy_url, home),
                cwd=folder,
                log_path=folder / "client.log",
            )
        )
    try:
        wait_until(
            lambda: all(p.exit_code() is not None for p in processes),
            timeout_s=duration_s + GRACE_S,
            interval_s=0.2,
        )
    finally:
        for p in processes:
            p.stop()
    completed = 0
    for p in processes:
        for line in p.log_path.read_text(errors="replace").splitlines() if p.log_path else []:
            if line.startswith(RESULT_PREFIX):
                completed += json.loads(line[len(RESULT_PREFIX) :])["state"] == "COMPLETED"
    return completed


def run_emulated(proxy_url: str, users: int, tasks: int, duration_s: float, rate: float) -> int:
    """The flow-runs scenario with `users` users starting `rate` flow runs/s for `duration_s`;
    its retries."""
    proxy = urlsplit(proxy_url)
    assert proxy.hostname and proxy.port
    scenario = flow_runs.scenario(RunConfig(tasks=tasks), f"retries-{time.monotonic_ns()}")
    scenario = replace(scenario, api_path=proxy.path)
    spec = LoadSpec(
        concurrency=users, duration_s=duration_s, warmup_s=0.0, rate=rate, timeout_s=60.0
    )
    measured = measure_scenario(Target(proxy.hostname, proxy.port), scenario, spec)
    return sum(step.retries for step in measured.steps)


def interval(real: Side, emulated: Side, draws: int = 2000) -> tuple[float, float, float]:
    """emulated/real of 503s per flow run over all rounds, and its 95% bootstrap interval."""
    rng = np.random.default_rng(1)
    n = len(real.rounds)
    ratios = []
    for _ in range(draws):
        picked = rng.integers(0, n, n)
        r = real.per_run([real.rounds[i] for i in picked])
        e = emulated.per_run([emulated.rounds[i] for i in picked])
        if r > 0:
            ratios.append(e / r)
    low, high = np.percentile(ratios, [2.5, 97.5]) if ratios else (float("nan"),) * 2
    return emulated.per_run() / real.per_run(), float(low), float(high)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--users", type=int, default=4)
    parser.add_argument("--tasks", type=int, default=10)
    parser.add_argument("--duration", type=float, default=30.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--tolerance", type=float, default=0.25)
    args = parser.parse_args()
    adapter = make_server("python")
    if reason := adapter.unavailable_reason():
        print(f"ERROR: the python server is unavailable: {reason}", file=sys.stderr)
        return 2
    policy = client_retries()
    print(
        f"Prefect {policy.version} client: retries {sorted(policy.statuses)} up to "
        f"{policy.max_retries} times, jitter {policy.jitter_factor}; "
        f"{args.users} users, {args.tasks} tasks, {args.rounds} rounds of {args.duration:g} s"
    )
    real, emulated = Side("real client"), Side("emulated")
    with tempfile.TemporaryDirectory(prefix="prefect-bench-retries-") as tmp:
        setup = ServerSetup(
            db="sqlite", broker="memory", logdir=Path(tmp), datadir=Path(tmp) / "data"
        )
        with start_server(adapter, setup) as server:
            base = f"http://127.0.0.1:{server.port}{server.api_path}"
            with counting_proxy(base) as (proxy_url, counter):
                for round_no in range(1, args.rounds + 1):
                    for side in (real, emulated):
                        before = counter.snapshot()
                        if side is real:
                            said = run_real(
                                proxy_url, args.users, args.tasks, args.duration, Path(tmp)
                            )
                        else:
                            rate = max(real.rounds[-1][0], 1) / args.duration
                            emulated.own_retries += run_emulated(
                                proxy_url, args.users, args.tasks, args.duration, rate
                            )
                        # the proxy counts a request once it has relayed its answer
                        time.sleep(0.5)
                        side.add(before, counter.snapshot())
                        runs, refused = side.rounds[-1]
                        note = f" (the clients said {said} completed)" if side is real else ""
                        print(
                            f"round {round_no} {side.name:>11}: {runs:4d} flow runs, "
                            f"{refused:4d} answered 503, {refused / max(runs, 1):.2f} per run{note}"
                        )
    shutdown()
    for side in (real, emulated):
        where = ", ".join(f"{k} {n}" for k, n in sorted(side.by_request.items()))
        print(f"{side.name}: {side.per_run():.2f} 503s per flow run ({where or 'none'})")
    print(f"emulated: its own count of retried tries {emulated.own_retries}")
    ratio, low, high = interval(real, emulated)
    print(f"emulated/real, 503s per flow run: {ratio:.2f} (95% interval {low:.2f} … {high:.2f})")
    if not low <= 1 <= high and abs(ratio - 1) > args.tolerance:
        print(f"FAIL: off by more than {args.tolerance:.0%}, beyond the noise")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
