"""callgrind, driven from outside: the command a server runs under, switching its collection
on and off, and reading the total of each dump.

The server runs under `valgrind --tool=callgrind --instr-atstart=no`: nothing is counted until
collection is switched on (`instrumentation on`, a monitor command sent with `vgdb`, the C
client `callgrind_control` itself calls: a few milliseconds instead of ~130 for the Perl
script's start, during which the server would be counted idle). `dump` writes what was counted
since the last dump to `<out>.<n>` and zeroes the counters.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import time
from pathlib import Path

from bench.core.errors import BenchError, CellSkipped

# The fix a machine without valgrind needs (Debian and Ubuntu; .ci/run installs it).
INSTALL = "apt-get install valgrind"
EVENT = "Ir"
CONTROL_TIMEOUT_S = 60.0
INVOKE_MS = 5
# how long a dump may take to appear whole after `vgdb` returned
DUMP_WAIT_S = 30.0
_TOTALS = re.compile(rb"^totals:\s+(\d+)", re.MULTILINE)
_SUMMARY = re.compile(rb"^summary:\s+(\d+)", re.MULTILINE)


class CostError(BenchError):
    """callgrind could not be driven, or a dump is missing or empty: the cell fails (a figure
    it cannot read is never a zero)."""


def missing_tools() -> str | None:
    """Why a cost cell cannot run here (valgrind or vgdb missing, with the fix), or None."""
    absent = [tool for tool in ("valgrind", "vgdb") if shutil.which(tool) is None]
    if absent:
        return (
            f"--cost runs the server under callgrind: {' and '.join(absent)} not found ({INSTALL})"
        )
    return None


def command_prefix(out_dir: Path) -> tuple[str, ...]:
    """What the server's command runs under: callgrind, collection off until switched on, its
    dumps `out_dir/callgrind.out.<pid>.<n>`. CellSkipped when valgrind is missing."""
    if (reason := missing_tools()) is not None:
        raise CellSkipped(reason)
    return (
        shutil.which("valgrind") or "valgrind",
        "--tool=callgrind",
        "--instr-atstart=no",
        f"--callgrind-out-file={out_dir / 'callgrind.out.%p'}",
    )


class Collector:
    """callgrind's collection in the process `pid`, whose dumps are `out_dir/callgrind.out.
    <pid>.<n>`: switched on and off, and each dump's total read back."""

    def __init__(self, pid: int, out_dir: Path) -> None:
        self.pid = pid
        self.out_dir = out_dir
        self._seen = set(self._dumps())

    def on(self) -> None:
        self._monitor("instrumentation", "on")

    def off(self) -> None:
        self._monitor("instrumentation", "off")

    def dump(self, allow_zero: bool = False) -> tuple[int, Path]:
        """Dump what was counted since the last dump: its total (instructions) and its file.
        CostError if no new dump appears, or it holds no total, or (unless `allow_zero`) a
        zero."""
        self._monitor("dump")
        deadline = time.monotonic() + DUMP_WAIT_S
        while True:
            new = sorted(set(self._dumps()) - self._seen, key=_dump_number)
            if new:
                break
            if time.monotonic() > deadline:
                raise CostError(
                    f"callgrind wrote no dump of process {self.pid} in {self.out_dir} "
                    f"within {DUMP_WAIT_S:g} s"
                )
            time.sleep(0.05)
        if len(new) > 1:  # one dump per block: more means another dumped meanwhile
            raise CostError(f"{len(new)} dumps appeared for one block: {', '.join(map(str, new))}")
        [path] = new
        self._seen.add(path)
        total = read_total(path, allow_zero)
        return total, path

    def _dumps(self) -> list[Path]:
        return list(self.out_dir.glob(f"callgrind.out.{self.pid}.*"))

    def _monitor(self, *command: str) -> None:
        # an idle server is blocked in a system call: vgdb forces it to listen after
        # --max-invoke-ms (default 100 ms, counted as the server's idle time in a block)
        argv = ["vgdb", f"--pid={self.pid}", f"--max-invoke-ms={INVOKE_MS}", *command]
        try:
            done = subprocess.run(
                argv,
                capture_output=True,
                text=True,
                timeout=CONTROL_TIMEOUT_S,
                stdin=subprocess.DEVNULL,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise CostError(f"{' '.join(argv)}: {exc}") from exc
        if done.returncode != 0:
            said = (done.stderr or done.stdout).strip().splitlines()
            raise CostError(
                f"{' '.join(argv)} failed with exit code {done.returncode}"
                + (f": {said[-1]}" if said else ""),
                details=done.stderr + done.stdout,
            )


def _dump_number(path: Path) -> int:
    suffix = path.name.rsplit(".", 1)[-1]
    return int(suffix) if suffix.isdigit() else -1


def read_total(path: Path, allow_zero: bool = False) -> int:
    """The instructions a callgrind dump counted: its `totals:` line (written last, so its
    presence says the file is whole), or its `summary:` line if it has no totals. CostError
    if the file is missing, holds neither, or counts nothing."""
    deadline = time.monotonic() + DUMP_WAIT_S
    while True:
        try:
            text = path.read_bytes()
        except OSError as exc:
            raise CostError(f"callgrind's dump {path} cannot be read: {exc.strerror}") from exc
        found = _TOTALS.search(text)
        if found is not None or time.monotonic() > deadline:
            break
        time.sleep(0.05)  # still being written
    found = found or _SUMMARY.search(text)
    if found is None:
        raise CostError(f"callgrind's dump {path} has no total ({len(text)} bytes)")
    total = int(found.group(1))
    if total == 0 and not allow_zero:
        raise CostError(f"callgrind's dump {path} counted nothing: collection was not on")
    return total
