"""`perf record` sampling a native server for as long as a window lasts (`recording`): the
kernel's cpu-clock timer (a software event: this machine's virtual CPUs expose no hardware
counters) at the window's rate, each sample's call chain walked by frame pointers (`-g`), then
`perf script` read into collapsed stacks, a frame named `function (binary)` as callgrind names
it, so a profile and a cost dump of one server read alike.

A function of a binary built without frame pointers shows with its caller missing; one
without symbols shows as `[unknown] (binary)`. perf needs `kernel.perf_event_paranoid` ≤ 2 for
a process of the same user (root is never refused).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
from collections import Counter
from pathlib import Path

import psutil

from bench.profile import recording, stacks
from bench.profile.recording import ProfilerError, Sampled

# `[ perf record: Captured and wrote 0.029 MB perf.data (13 samples) ]`; no count when none
_WROTE = re.compile(r"Captured and wrote [^\n]*?(?:\((\d+) samples\))?\s*\]")
_LOST = re.compile(r"lost (\d+) chunks")
# a call chain's frame in `perf script` output: `\t ffff8167ceb5 get_vma_policy ([kernel…])`
_FRAME = re.compile(r"^\s+[0-9a-f]+\s+(.*?)\s+\((.*)\)$")
SCRIPT_TIMEOUT_S = 120.0


def executable() -> str | None:
    """perf on PATH (Debian's linux-perf)."""
    return shutil.which("perf")


def collapse(script: str) -> stacks.Stacks:
    """The collapsed stacks of `perf script -F comm,pid,ip,sym,dso` output: per sample, its
    process as the root frame (`process PID:"comm"`, as py-spy roots its stacks), then its
    frames from the outermost in."""
    found: stacks.Stacks = Counter()
    root: str | None = None
    frames: list[str] = []
    for line in [*script.splitlines(), ""]:
        if not line.strip():
            if root is not None:
                found[(root, *reversed(frames))] += 1
            root, frames = None, []
        elif not line[:1].isspace():
            comm, _, pid = line.rstrip().rpartition(" ")
            root = f'process {pid}:"{comm.strip()}"'
        elif (frame := _FRAME.match(line)) is not None:
            symbol, binary = frame.groups()
            frames.append(f"{symbol} ({os.path.basename(binary) or binary})")
    return found


class Recording(recording.Recording):
    """perf recording the processes of `pid`'s tree as they are when it starts (threads they
    start later are followed) into `raw` (collapsed stacks), its output appended to `log`."""

    tool = "perf"

    def __init__(self, program: str, pid: int, raw: Path, log: Path, rate_hz: int) -> None:
        raw, log = raw.absolute(), log.absolute()
        self.program, self.data = program, raw.with_suffix(".perf.data")
        try:
            root = psutil.Process(pid)
            pids = [pid, *(p.pid for p in root.children(recursive=True))]
        except psutil.Error:
            pids = [pid]  # gone: perf says so when it starts
        argv = [program, "record", "-e", "cpu-clock", "-F", str(rate_hz), "-g"]
        argv += ["-p", ",".join(map(str, pids)), "-o", str(self.data)]
        super().__init__(argv, pid, raw, log)

    def sampling(self) -> bool:
        # perf writes its file's header once its events are open
        try:
            return self.data.stat().st_size > 0
        except OSError:
            return False

    def exited_well(self, code: int) -> bool:
        # perf record ends its SIGINT by raising it again on itself
        return code in (0, -signal.SIGINT)

    def finish(self, said: str) -> Sampled:
        wrote = _WROTE.search(said)
        if wrote is None or not self.data.exists():
            raise ProfilerError(self.why("perf exited without its samples"))
        try:
            script = subprocess.run(
                [self.program, "script", "-i", str(self.data), "-F", "comm,pid,ip,sym,dso"],
                capture_output=True,
                text=True,
                errors="replace",
                timeout=SCRIPT_TIMEOUT_S,
                check=False,
            )
        except subprocess.TimeoutExpired:
            raise ProfilerError(f"perf script took over {SCRIPT_TIMEOUT_S:g} s") from None
        if script.returncode != 0:
            raise ProfilerError(f"perf script failed: {script.stderr.strip()[-300:]}")
        found = collapse(script.stdout)
        self.raw.write_text(stacks.dump(found), encoding="utf-8")
        lost = _LOST.search(said)
        samples = int(wrote.group(1) or 0)
        return Sampled(self.raw, samples, int(lost.group(1)) if lost else 0)

    def cleanup(self) -> None:
        self.data.unlink(missing_ok=True)
        self.data.with_name(self.data.name + ".old").unlink(missing_ok=True)
