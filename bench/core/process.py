"""Child processes that prefect-bench starts and, whatever happens, stops: servers and services.

Each child gets its own session (so a terminal Ctrl-C reaches only us, and we stop the child in
order) and, on Linux, a parent-death signal, so not even a SIGKILL of prefect-bench leaves it
running. Stopping signals the child's whole process group, then its remaining descendants.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import TypeVar

import psutil

_PR_SET_PDEATHSIG = 1
T = TypeVar("T")


def die_with_parent() -> None:
    """Run in a child before it starts (`preexec_fn`): SIGTERM it when its parent dies."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


class ManagedProcess:
    """A started child process with its output going to a log file."""

    def __init__(
        self,
        argv: Sequence[str],
        *,
        env: Mapping[str, str],
        cwd: Path,
        log_path: Path,
        user: str | None = None,
        group: int | None = None,
    ) -> None:
        self.argv = list(argv)
        self.log_path = log_path
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(log_path, "ab") as log:
            self.log_start = log.tell()  # where this process's output begins in the log
            self.popen = subprocess.Popen(
                self.argv,
                env=dict(env),
                cwd=cwd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=die_with_parent if sys.platform == "linux" else None,
                user=user,
                group=group,
                extra_groups=[] if group is not None else None,
            )
        self.process = psutil.Process(self.popen.pid)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def exit_code(self) -> int | None:
        """None while running, else the exit code (negative: killed by that signal)."""
        return self.popen.poll()

    def tree(self) -> list[psutil.Process]:
        """The process and its live descendants."""
        try:
            return [self.process, *self.process.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    def pin(self, cpus: Iterable[int]) -> None:
        """Pin every thread of the process tree to `cpus` (threads started later inherit it)."""
        cpu_set = set(cpus)
        for proc in self.tree():
            with contextlib.suppress(psutil.Error, ProcessLookupError):
                for thread in proc.threads():
                    with contextlib.suppress(ProcessLookupError):
                        os.sched_setaffinity(thread.id, cpu_set)

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""
        return "\n".join(text.rstrip().splitlines()[-lines:])

    def stop(self, timeout_s: float = 10.0) -> int | None:
        """SIGTERM the process tree, SIGKILL what is left after `timeout_s`; the exit code."""
        descendants = self.tree()[1:]
        deadline = time.monotonic() + timeout_s
        # The group outlives its leader while members remain, so its id cannot be reused.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.popen.pid, signal.SIGTERM)
        for p in descendants:
            # descendants that left the group still belong to us
            with contextlib.suppress(psutil.NoSuchProcess):
                p.terminate()
        try:
            # Popen.wait, not psutil's: it keeps the exit status of our own child
            self.popen.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, signal.SIGKILL)
            self.popen.kill()
        _, alive = psutil.wait_procs(descendants, timeout=max(0.1, deadline - time.monotonic()))
        for p in alive:
            with contextlib.suppress(psutil.NoSuchProcess):
                p.kill()
        psutil.wait_procs(alive, timeout=5)
        return self.popen.wait(timeout=5)


def wait_until(
    check: Callable[[], T | None],
    *,
    timeout_s: float,
    interval_s: float = 0.05,
    abort: Callable[[], str | None] | None = None,
) -> T:
    """Poll `check` until it returns something other than None or False, and return that.

    `abort` is asked first in every round (a process that has exited cannot become ready,
    whoever answers its port): RuntimeError with its message as soon as it returns one.
    TimeoutError after `timeout_s`.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        if abort is not None and (reason := abort()) is not None:
            raise RuntimeError(reason)
        value = check()
        if value is not None and value is not False:
            return value
        if time.monotonic() >= deadline:
            raise TimeoutError(f"not ready after {timeout_s:g} s")
        time.sleep(interval_s)
