"""Running wrk, the reference load generator that benchmarks/*.py compare the engine with."""

from __future__ import annotations

import os
import re
import resource
import shutil
import subprocess
import sys
from dataclasses import dataclass

INSTALL_HINT = "apt-get install -y wrk"


@dataclass(frozen=True)
class WrkRun:
    """What one wrk run printed, and the CPU it used."""

    rps: float  # every response, as wrk counts them
    requests: int
    non_2xx: int  # non-2xx/3xx responses (wrk's own count)
    socket_errors: int  # connect, read, write and timeout errors
    cpu_s_per_request: float

    @property
    def good_rps(self) -> float:
        """Responses per second that were 2xx or 3xx (the engine counts successes only)."""
        if self.requests == 0:
            return 0.0
        return self.rps * (self.requests - self.non_2xx) / self.requests


def have_wrk() -> bool:
    return shutil.which("wrk") is not None


def run_wrk(url: str, concurrency: int, duration_s: int, cpu: int | None = None) -> WrkRun:
    """`wrk -t1 -cN -dDs URL` (on CPU `cpu` if given); raises RuntimeError if wrk fails."""

    def pin() -> None:
        if cpu is not None:
            os.sched_setaffinity(0, {cpu})

    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    proc = subprocess.run(
        ["wrk", "-t1", f"-c{concurrency}", f"-d{duration_s}s", url],
        capture_output=True,
        text=True,
        preexec_fn=pin,
    )
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    out = proc.stdout
    rate = re.search(r"Requests/sec:\s*([\d.]+)", out)
    total = re.search(r"(\d+) requests in", out)
    if proc.returncode != 0 or rate is None or total is None:
        raise RuntimeError(f"wrk failed (exit code {proc.returncode}):\n{out}{proc.stderr}")
    non_2xx = re.search(r"Non-2xx or 3xx responses:\s*(\d+)", out)
    sockets = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out
    )
    cpu_s = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    requests = int(total.group(1))
    return WrkRun(
        rps=float(rate.group(1)),
        requests=requests,
        non_2xx=int(non_2xx.group(1)) if non_2xx else 0,
        socket_errors=sum(int(n) for n in sockets.groups()) if sockets else 0,
        cpu_s_per_request=cpu_s / max(requests, 1),
    )


def verdict(worst_ratio: float, min_ratio: float) -> int:
    """Print whether the engine met its bar against wrk; the exit code."""
    if worst_ratio < min_ratio:
        print(f"FAIL: engine/wrk {worst_ratio:.3f} < {min_ratio}", file=sys.stderr)
        return 1
    print(f"OK: engine/wrk >= {min_ratio} (worst {worst_ratio:.3f})")
    return 0


def split_cpus(pin: bool) -> tuple[int | None, int | None]:
    """(server CPU, client CPU): the first two usable CPUs, or (None, None) unpinned."""
    cpus = sorted(os.sched_getaffinity(0))
    if not pin or len(cpus) < 2:
        return None, None
    return cpus[0], cpus[1]
