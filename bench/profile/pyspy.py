"""py-spy recording one Python process tree for as long as a window lasts (`recording`): its
SIGINT makes py-spy write what it sampled (`--format raw`: collapsed stacks) and say how many
samples it took.

py-spy reads the target's memory through ptrace (`process_vm_readv`): it needs root, or
CAP_SYS_PTRACE, or a kernel.yama.ptrace_scope of 0 for a child of ours. It reads CPython's
own structures, so it profiles Python processes only: `is_python` says which are.
"""

from __future__ import annotations

import os
import re
import shutil
import sys
from pathlib import Path

import psutil

from bench.profile import recording
from bench.profile.recording import ProfilerError, Sampled

RATE_HZ = 100
SAMPLING = "Sampling process"
_WROTE = re.compile(r"Samples: (\d+) Errors: (\d+)")


def executable() -> str | None:
    """py-spy beside this interpreter (the venv's bin, where pip puts it), else on PATH."""
    beside = Path(sys.executable).parent / "py-spy"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    return shutil.which("py-spy")


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


class Recording(recording.Recording):
    """py-spy recording process `pid` and its subprocesses into `raw` (collapsed stacks), its
    output appended to `log`."""

    tool = "py-spy"

    def __init__(self, program: str, pid: int, raw: Path, log: Path, rate_hz: int) -> None:
        raw, log = raw.absolute(), log.absolute()  # py-spy runs in raw's folder
        argv = [
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
        super().__init__(argv, pid, raw, log)

    def sampling(self) -> bool:
        return SAMPLING in self.said()

    def finish(self, said: str) -> Sampled:
        counts = _WROTE.search(said)
        if counts is None or not self.raw.exists():
            raise ProfilerError(self.why("py-spy exited (0) without its stacks"))
        return Sampled(self.raw, int(counts.group(1)), int(counts.group(2)))
