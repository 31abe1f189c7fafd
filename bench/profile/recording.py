"""What every sampling profiler here shares: a program recording a process for as long as a
window lasts, started (and seen sampling) before the window's clock and stopped with SIGINT at
its end, leaving the window's collapsed stacks (`stacks`) in a file and saying how many
samples it took. `pyspy` (Python servers) and `perf` (native ones) fill in the program's
command line, how it shows it samples, and how its output becomes collapsed stacks.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path

from bench.core.failures import cause_in
from bench.core.process import ManagedProcess, wait_until

# a profiler attaches within ~0.1 s here; a machine under load may take longer
START_TIMEOUT_S = 15.0
# after SIGINT it writes its output and exits: a few ms for a window's stacks
STOP_TIMEOUT_S = 30.0


def version(program: str, tool: str) -> str:
    """The profiler's name and version as `program --version` says it, `version` dropped
    (`py-spy 0.4.1`; perf's `perf version 6.1.158` as `perf 6.1.158`); `tool` if it says
    nothing."""
    try:
        out = subprocess.run(
            [program, "--version"], capture_output=True, text=True, timeout=10, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return tool
    first = out.stdout.strip().splitlines()[:1]
    return " ".join(w for w in first[0].split() if w != "version") if first else tool


class ProfilerError(Exception):
    """A recording that could not start or did not finish: its one-line reason."""


@dataclass(frozen=True)
class Sampled:
    """What a recording left: its collapsed stacks' file, and the counts the profiler gave."""

    raw: Path
    samples: int
    errors: int


class Recording:
    """A profiler (`tool`, run as `argv`) recording process `pid` into `raw` (collapsed
    stacks), its output appended to `log`. `start` returns once it samples; `stop` ends it.
    Subclasses say when it samples (`sampling`) and what it wrote (`finish`)."""

    tool = "profiler"

    def __init__(self, argv: list[str], pid: int, raw: Path, log: Path) -> None:
        self.argv, self.pid, self.raw, self.log = argv, pid, raw, log
        self.process: ManagedProcess | None = None

    def sampling(self) -> bool:
        """Whether the profiler has begun to sample."""
        raise NotImplementedError

    def finish(self, said: str) -> Sampled:
        """What the profiler left once it exited, `said` being its output: `raw` written;
        ProfilerError if it left nothing readable."""
        raise NotImplementedError

    def exited_well(self, code: int) -> bool:
        """Whether the profiler's exit code after its SIGINT means it wrote what it sampled."""
        return code == 0

    def cleanup(self) -> None:
        """Remove what the profiler wrote besides `raw`."""

    def start(self) -> None:
        """Start the profiler and wait until it samples; ProfilerError, the profiler stopped,
        if it exits or does not sample within START_TIMEOUT_S."""
        self.raw.unlink(missing_ok=True)
        try:
            self.process = ManagedProcess(
                self.argv, env=os.environ, cwd=self.raw.parent, log_path=self.log
            )
        except OSError as exc:
            raise ProfilerError(f"{self.tool} could not start: {exc.strerror or exc}") from exc
        process = self.process
        try:
            wait_until(
                self.sampling,
                timeout_s=START_TIMEOUT_S,
                interval_s=0.02,
                abort=lambda: None if process.exit_code() is None else "exited",
            )
        except RuntimeError:
            self.cleanup()
            raise ProfilerError(self.why(f"{self.tool} exited ({process.exit_code()})")) from None
        except TimeoutError:
            self.kill()
            raise ProfilerError(
                f"{self.tool} did not start sampling pid {self.pid} within {START_TIMEOUT_S:g} s"
            ) from None

    def stop(self) -> Sampled:
        """SIGINT the profiler and wait for it to write its stacks: what it sampled;
        ProfilerError if it does not finish within STOP_TIMEOUT_S (then killed), fails or
        wrote nothing."""
        process = self.process
        if process is None:
            raise ProfilerError(f"{self.tool} was not started")
        with contextlib.suppress(ProcessLookupError):
            os.kill(process.pid, signal.SIGINT)
        try:
            code = process.popen.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.kill()
            raise ProfilerError(
                f"{self.tool} did not write its stacks within {STOP_TIMEOUT_S:g} s of its stop"
            ) from None
        try:
            if not self.exited_well(code):
                raise ProfilerError(self.why(f"{self.tool} exited ({code}) without its stacks"))
            return self.finish(self.said())
        finally:
            self.cleanup()

    def kill(self) -> None:
        """Stop the profiler, whatever it is doing (the window failed), and remove its files."""
        if self.process is not None and self.process.exit_code() is None:
            self.process.stop(timeout_s=5)
        self.cleanup()

    def said(self) -> str:
        """What the profiler wrote in its log since it started."""
        if self.process is None:
            return ""
        try:
            with open(self.log, "rb") as f:
                f.seek(self.process.log_start)
                return f.read().decode("utf-8", errors="replace")
        except OSError:
            return ""

    def why(self, what: str) -> str:
        """`what`, followed by the cause the profiler's output names, if any."""
        cause = cause_in(self.said()).removeprefix("Error: ").strip()
        return f"{what}: {cause}" if cause else what
