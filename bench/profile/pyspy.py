"""py-spy recording one Python process tree for as long as a window lasts: started (and seen
sampling) before the window's clock, stopped with SIGINT at its end, which makes py-spy write
what it sampled (`--format raw`: collapsed stacks) and say how many samples it took.

py-spy reads the target's memory through ptrace (`process_vm_readv`): it needs root, or
CAP_SYS_PTRACE, or a kernel.yama.ptrace_scope of 0 for a child of ours. It reads CPython's
own structures, so it profiles Python processes only: `is_python` says which are.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import psutil

from bench.core.failures import cause_in
from bench.core.process import ManagedProcess, wait_until

RATE_HZ = 100
# py-spy attaches within ~0.1 s here; a machine under load may take longer
START_TIMEOUT_S = 15.0
# after SIGINT it writes its output and exits: a few ms for a window's stacks
STOP_TIMEOUT_S = 30.0
SAMPLING = "Sampling process"
_WROTE = re.compile(r"Samples: (\d+) Errors: (\d+)")


class ProfilerError(Exception):
    """A recording that could not start or did not finish: its one-line reason."""


def executable() -> str | None:
    """py-spy beside this interpreter (the venv's bin, where pip puts it), else on PATH."""
    beside = Path(sys.executable).parent / "py-spy"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    return shutil.which("py-spy")


def version(program: str) -> str:
    """`py-spy 0.4.3`, as the program says it."""
    try:
        out = subprocess.run(
            [program, "--version"], capture_output=True, text=True, timeout=10, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return "py-spy"
    return out.stdout.strip() or "py-spy"


def is_python(process: psutil.Process) -> bool:
    """Whether `process` (or a process of its tree) runs a CPython interpreter: its program is
    python*, or it maps libpython (an embedding program)."""
    try:
        for proc in [process, *process.children(recursive=True)]:
            if Path(proc.exe()).name.startswith("python"):
                return True
            if any("libpython" in m.path for m in proc.memory_maps(grouped=True)):
                return True
    except (psutil.Error, OSError):
        return False
    return False


@dataclass(frozen=True)
class Sampled:
    """What py-spy wrote: its collapsed stacks' file, and the counts it printed."""

    raw: Path
    samples: int
    errors: int


class Recording:
    """py-spy recording process `pid` and its subprocesses into `raw` (collapsed stacks), its
    output appended to `log`. `start` returns once it samples; `stop` ends it."""

    def __init__(self, program: str, pid: int, raw: Path, log: Path, rate_hz: int) -> None:
        raw, log = raw.absolute(), log.absolute()  # py-spy runs in raw's folder
        self.pid, self.raw, self.log = pid, raw, log
        self.argv = [
            program,
            "record",
            "--pid",
            str(pid),
            "--subprocesses",  # the API workers of a server run as several processes
            "--format",
            "raw",
            "--nolineno",  # a function's samples together, whatever line it was on
            "--nonblocking",  # the server is never paused to be read (docs/design-notes.md)
            "--rate",
            str(rate_hz),
            "--output",
            str(raw),
        ]
        self.process: ManagedProcess | None = None

    def start(self) -> None:
        """Start py-spy and wait until it samples; ProfilerError, py-spy stopped, if it exits
        or does not sample within START_TIMEOUT_S."""
        self.raw.unlink(missing_ok=True)
        try:
            self.process = ManagedProcess(
                self.argv, env=os.environ, cwd=self.raw.parent, log_path=self.log
            )
        except OSError as exc:
            raise ProfilerError(f"py-spy could not start: {exc.strerror or exc}") from exc
        process = self.process
        try:
            wait_until(
                lambda: SAMPLING in self._said(),
                timeout_s=START_TIMEOUT_S,
                interval_s=0.02,
                abort=lambda: None if process.exit_code() is None else "exited",
            )
        except RuntimeError:
            raise ProfilerError(self._why(f"py-spy exited ({process.exit_code()})")) from None
        except TimeoutError:
            process.stop()
            raise ProfilerError(
                f"py-spy did not start sampling pid {self.pid} within {START_TIMEOUT_S:g} s"
            ) from None

    def stop(self) -> Sampled:
        """SIGINT py-spy and wait for it to write its stacks: what it sampled; ProfilerError
        if it does not finish within STOP_TIMEOUT_S (then killed) or wrote nothing."""
        process = self.process
        if process is None:
            raise ProfilerError("py-spy was not started")
        with contextlib.suppress(ProcessLookupError):
            os.kill(process.pid, signal.SIGINT)
        try:
            code = process.popen.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.stop()
            raise ProfilerError(
                f"py-spy did not write its stacks within {STOP_TIMEOUT_S:g} s of its stop"
            ) from None
        said = self._said()
        counts = _WROTE.search(said)
        if code != 0 or counts is None or not self.raw.exists():
            raise ProfilerError(self._why(f"py-spy exited ({code}) without its stacks"))
        return Sampled(self.raw, int(counts.group(1)), int(counts.group(2)))

    def kill(self) -> None:
        """Stop py-spy, whatever it is doing (the window failed)."""
        if self.process is not None and self.process.exit_code() is None:
            self.process.stop(timeout_s=5)

    def _said(self) -> str:
        """What py-spy wrote in its log since it started."""
        if self.process is None:
            return ""
        try:
            with open(self.log, "rb") as f:
                f.seek(self.process.log_start)
                return f.read().decode("utf-8", errors="replace")
        except OSError:
            return ""

    def _why(self, what: str) -> str:
        cause = cause_in(self._said()).removeprefix("Error: ").strip()
        return f"{what}: {cause}" if cause else what
