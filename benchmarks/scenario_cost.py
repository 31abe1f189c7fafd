"""What the flow-runs emulation costs the engine, next to what it costs the server, and the
emulation's flow runs/s next to the real Prefect client's, measured on one server in one run.

Starts the real Python Prefect server (sqlite, memory broker, its services on: they record the
task runs), then for 1 and 8 virtual users:
- the engine's flow-runs scenario: flow runs/s, the engine's CPU per step (its own
  measurement) and the server's CPU per step (its process tree's CPU time over the window,
  divided by the steps answered in it); the bar: the engine spends less than a fifth of what
  the server spends, so the server is the limit;
- the real client: as many processes as users, each running the same flow (N tasks) again and
  again for the same time; flow runs/s are the COMPLETED runs the server holds afterwards.

    python benchmarks/scenario_cost.py [--duration 10] [--tasks 10] [--users 1,8]

Exit 1 when a ratio engine/server is 0.2 or more. The server is pinned to CPU 0 and the clients
to CPU 1 (`--no-pin` to stop that).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _wrk import split_cpus

from bench import engine
from bench.config.run import RunConfig
from bench.conformance.real_client import client_environ
from bench.observe.sampling import ResourceSampler
from bench.servers.adapter import ServerSetup
from bench.servers.registry import make_server
from bench.servers.running import RunningServer, start_server
from bench.workloads import flow_runs

BAR = 0.2
REAL_CLIENT = """
import sys, time
from prefect import flow, task

@task
def step(i):
    return i

@flow(name=sys.argv[3])
def bench_flow(n):
    return [step(i) for i in range(n)]

deadline = time.monotonic() + float(sys.argv[2])
while time.monotonic() < deadline:
    bench_flow(int(sys.argv[1]))
"""


def emulation(
    server: RunningServer, users: int, tasks: int, duration_s: float, cpu: int | None
) -> tuple[float, float, float]:
    """Flow runs/s, engine CPU per step, server CPU per step."""
    config = RunConfig(tasks=tasks, duration_s=duration_s, warmup_s=0.0)
    scenario = flow_runs.scenario(config, f"cost-{users}-{time.monotonic_ns()}")
    scenario = engine.Scenario(scenario.name, scenario.run, scenario.params, server.api_path)
    spec = engine.LoadSpec(
        concurrency=users,
        duration_s=duration_s,
        warmup_s=0.0,
        client_cpus=None if cpu is None else (cpu,),
    )
    sampler = ResourceSampler(server.process.tree)
    with sampler.window() as usage:
        m = engine.measure_scenario(engine.Target("127.0.0.1", server.port), scenario, spec)
    steps = sum(s.requests for s in m.steps)
    server_per_step = usage.cores * duration_s / steps if steps else float("inf")
    return m.per_s, m.client_cpu_s_per_step or 0.0, server_per_step


def real_client(
    server: RunningServer, users: int, tasks: int, duration_s: float, cpu: int | None
) -> float:
    """Completed flow runs/s of `users` real-client processes running flows in a loop."""
    name = f"bench-real-{users}-{time.monotonic_ns()}"
    with tempfile.TemporaryDirectory(prefix="prefect-bench-real-") as home:
        env = client_environ(server.base_url, Path(home))
        pin = [] if cpu is None else ["taskset", "-c", str(cpu)]
        argv = [*pin, sys.executable, "-c", REAL_CLIENT, str(tasks), str(duration_s), name]
        children = [
            subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            for _ in range(users)
        ]
        started = time.monotonic()
        try:
            for child in children:
                child.wait(timeout=duration_s + 120)
        finally:
            for child in children:
                if child.poll() is None:
                    child.kill()
                    child.wait()
        elapsed = time.monotonic() - started
    body = {
        "flows": {"name": {"any_": [name]}},
        "flow_runs": {"state": {"type": {"any_": ["COMPLETED"]}}},
    }
    completed = httpx.post(f"{server.base_url}/flow_runs/count", json=body, timeout=30).json()
    # each process also pays its own start (imports, client setup): part of what a real
    # flow-run process costs, so it stays in
    return int(completed) / elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--tasks", type=int, default=10)
    parser.add_argument("--users", default="1,8")
    parser.add_argument("--no-pin", action="store_true")
    args = parser.parse_args()
    levels = [int(u) for u in args.users.split(",")]
    server_cpu, client_cpu = split_cpus(pin=not args.no_pin)
    worst = 0.0
    with tempfile.TemporaryDirectory(prefix="prefect-bench-cost-") as tmp:
        setup = ServerSetup("sqlite", "memory", Path(tmp), Path(tmp) / "data")
        with start_server(make_server("python"), setup) as server:
            if server_cpu is not None:
                server.process.pin((server_cpu,))
            print(f"python server, sqlite, memory broker, {args.tasks} tasks per flow run")
            header = (
                f"{'users':>5} {'emulated/s':>10} {'real/s':>7} {'engine µs/step':>14} "
                f"{'server µs/step':>14} {'ratio':>6}"
            )
            print(header)
            for users in levels:
                rate, client, srv = emulation(server, users, args.tasks, args.duration, client_cpu)
                real = real_client(server, users, args.tasks, args.duration, client_cpu)
                ratio = client / srv
                worst = max(worst, ratio)
                print(
                    f"{users:>5} {rate:>10.2f} {real:>7.2f} {client * 1e6:>14.0f} "
                    f"{srv * 1e6:>14.0f} {ratio:>6.3f}",
                    flush=True,
                )
    engine.shutdown()
    verdict = "ok" if worst < BAR else "FAIL"
    print(f"{verdict}: the engine spends at most {worst:.3f} of the server's CPU per step")
    print(f"(bar: below {BAR})")
    return 0 if worst < BAR else 1


if __name__ == "__main__":
    raise SystemExit(main())
