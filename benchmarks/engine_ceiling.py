"""The engine's ceiling: requests/s it drives against nginx, next to wrk, in the same run.

Starts nginx (worker_processes 1, a small static file, access_log off) in a temporary prefix on
127.0.0.1, runs `wrk -t1 -cN` and then the engine at each concurrency against the same path,
prints both rates and engine/wrk, and exits 1 if a ratio is below --min-ratio (DESIGN.md §6).

On a machine with at least two CPUs, nginx's worker is pinned to one CPU and the client (wrk,
then the engine) to another, so that the two tools meet the same server under the same
conditions (--no-pin to let the scheduler decide). With --rounds N, wrk and the engine
alternate N times and the best rate of each is compared: on a shared machine other work only
ever lowers a rate.

    .venv/bin/python benchmarks/engine_ceiling.py [--min-ratio 0.8] [--duration 5] [--rounds 3]
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from _wrk import INSTALL_HINT, have_wrk, run_wrk, split_cpus, verdict

from bench.engine import EngineRequest, LoadSpec, Target, measure, shutdown
from bench.results import Measurement

NGINX_CONF = """\
daemon off;
master_process on;
worker_processes 1;
{affinity}
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path {prefix}/tmp;
    proxy_temp_path {prefix}/tmp;
    fastcgi_temp_path {prefix}/tmp;
    uwsgi_temp_path {prefix}/tmp;
    scgi_temp_path {prefix}/tmp;
    keepalive_requests 1000000;
    server {{
        listen 127.0.0.1:{port};
        root {prefix}/www;
        location / {{ }}
    }}
}}
"""
PATH = "/hello.json"
BODY = b'{"hello": "world"}\n'


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _listening(port: int, deadline: float) -> bool:
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return True
        time.sleep(0.05)
    return False


@contextlib.contextmanager
def nginx(cpu: int | None = None) -> Iterator[int]:
    """Run nginx on a free loopback port (its worker on `cpu` if given); yield the port; stop
    it and remove its files."""
    binary = shutil.which("nginx") or "/usr/sbin/nginx"
    prefix = Path(tempfile.mkdtemp(prefix="engine-ceiling-"))
    prefix.chmod(0o755)  # the worker runs as an unprivileged user when started as root
    try:
        (prefix / "www").mkdir(mode=0o755)
        (prefix / "tmp").mkdir()
        (prefix / "www" / PATH.lstrip("/")).write_bytes(BODY)
        for _attempt in range(5):  # nginx cannot listen on port 0: pick one, retry if taken
            port = _free_port()
            conf = prefix / "nginx.conf"
            affinity = "" if cpu is None else f"worker_cpu_affinity {1 << cpu:b};"
            conf.write_text(NGINX_CONF.format(prefix=prefix, port=port, affinity=affinity))
            proc = subprocess.Popen(
                [binary, "-p", str(prefix), "-c", str(conf), "-e", str(prefix / "error.log")],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
            )
            if _listening(port, time.monotonic() + 10) and proc.poll() is None:
                break
            proc.kill()
            proc.wait()
        else:
            raise RuntimeError(f"nginx did not start: {(prefix / 'error.log').read_text()}")
        try:
            yield port
        finally:
            proc.terminate()  # SIGTERM: fast shutdown of master and worker
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    finally:
        shutil.rmtree(prefix, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--min-ratio", type=float, default=0.80)
    parser.add_argument("--duration", type=int, default=5, help="seconds per measurement")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[4, 16])
    parser.add_argument("--rounds", type=int, default=3, help="alternations; best rate wins")
    parser.add_argument("--procs", type=int, default=None, help="engine processes (auto)")
    parser.add_argument("--no-pin", action="store_true", help="do not pin to CPUs")
    args = parser.parse_args(argv)
    if not have_wrk():
        print(f"ERROR: wrk not found ({INSTALL_HINT} nginx-light)", file=sys.stderr)
        return 2

    server_cpu, client_cpu = split_cpus(pin=not args.no_pin)
    worst = float("inf")
    with nginx(server_cpu) as port:
        target = Target("127.0.0.1", port)
        request = EngineRequest("GET", PATH)
        pinned = ""
        if client_cpu is not None:
            pinned = f"nginx on CPU {server_cpu}, clients on CPU {client_cpu}"
        print(f"nginx at 127.0.0.1:{port}{PATH} {pinned}")
        print(f"{'c':>4} {'wrk rps':>10} {'engine rps':>11} {'ratio':>6}  engine notes")
        for c in args.concurrency:
            spec = LoadSpec(
                concurrency=c,
                duration_s=args.duration,
                warmup_s=1,
                engine_procs=args.procs,
                client_cpus=None if client_cpu is None else (client_cpu,),
            )
            wrk_rps = 0.0
            best: Measurement | None = None
            rounds = []
            wrk_cpu = float("inf")
            for _round in range(args.rounds):
                run = run_wrk(f"http://127.0.0.1:{port}{PATH}", c, args.duration, client_cpu)
                w, w_cpu = run.rps, run.cpu_s_per_request
                m = measure(target, request, spec)
                rounds.append(f"{w:.0f}/{m.rps:.0f}")
                wrk_rps = max(wrk_rps, w)
                wrk_cpu = min(wrk_cpu, w_cpu)
                if best is None or m.rps > best.rps:
                    best = m
            assert best is not None
            ratio = best.rps / wrk_rps if wrk_rps else 0.0
            worst = min(worst, ratio)
            cpu_per_req = (best.client_cpu_s_per_request or 0.0) * 1e6
            notes = f"procs={best.engine_procs} cpu/req engine {cpu_per_req:.1f}µs"
            notes += f" wrk {wrk_cpu * 1e6:.1f}µs; rounds wrk/engine "
            notes += " ".join(rounds)
            if best.errors:
                notes += f" errors={best.errors}"
            if best.client_saturated:
                notes += " client_saturated"
            print(f"{c:>4} {wrk_rps:>10.0f} {best.rps:>11.0f} {ratio:>6.2f}  {notes}", flush=True)
    shutdown()
    return verdict(worst, args.min_ratio)


if __name__ == "__main__":
    raise SystemExit(main())
