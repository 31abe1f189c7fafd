"""The server's CPU time and memory, sampled from its process tree while load runs."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import psutil

MB = 1024 * 1024


@dataclass
class Usage:
    """CPU time, wall time and peak resident memory over a window."""

    cpu_s: float = 0.0
    wall_s: float = 0.0
    rss_peak_mb: float = 0.0

    @property
    def cores(self) -> float:
        """Mean number of cores busy over the window."""
        return self.cpu_s / self.wall_s if self.wall_s > 0 else 0.0


def tree_cpu_s(procs: list[psutil.Process]) -> float:
    total = 0.0
    for p in procs:
        try:
            t = p.cpu_times()
        except psutil.Error:
            continue
        total += t.user + t.system
    return total


def tree_rss_mb(procs: list[psutil.Process]) -> float:
    total = 0
    for p in procs:
        try:
            total += p.memory_info().rss
        except psutil.Error:
            continue
    return total / MB


class ResourceSampler:
    """Samples RSS of a process tree every `interval_s` in a thread; CPU from counters.

    CPU time of children that already exited is not seen: the servers measured here keep
    their processes for their whole life.
    """

    def __init__(self, tree: Callable[[], list[psutil.Process]], interval_s: float = 0.2):
        self._tree = tree
        self._interval_s = interval_s

    def rss_mb(self) -> float:
        return tree_rss_mb(self._tree())

    def cpu_s(self) -> float:
        return tree_cpu_s(self._tree())

    @contextmanager
    def window(self) -> Iterator[Usage]:
        """Measure the block: the Usage is filled in when the block ends."""
        usage = Usage()
        stop = threading.Event()
        peak = [self.rss_mb()]

        def sample() -> None:
            while not stop.wait(self._interval_s):
                peak[0] = max(peak[0], self.rss_mb())

        start_cpu, start_wall = self.cpu_s(), time.monotonic()
        thread = threading.Thread(target=sample, name="rss-sampler", daemon=True)
        thread.start()
        try:
            yield usage
        finally:
            stop.set()
            thread.join()
            usage.cpu_s = round(self.cpu_s() - start_cpu, 3)
            usage.wall_s = round(time.monotonic() - start_wall, 3)
            usage.rss_peak_mb = round(max(peak[0], self.rss_mb()), 1)
