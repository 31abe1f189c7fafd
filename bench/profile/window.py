"""--profile: the server sampled during one measurement window (`profiled`), its stacks kept
beside the cell's result as `<cell>/profile/<window>.collapsed.gz` and drawn as
`<window>.svg`, both named in the result relative to the run's folder (as the cost cells'
callgrind dumps are).

A Python server is sampled by py-spy (its Python functions by name), any other by perf
record (native functions by name). A profile is a by-product of a window, never its cause to
fail: a server that cannot be profiled (ptrace or perf refused, the profiler missing or
failing) is measured all the same, and the window's result says in one line why it has no
profile.
"""

from __future__ import annotations

import functools
import gzip
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from bench.profile import flamegraph, perf, pyspy, stacks
from bench.profile.recording import ProfilerError, Recording, Sampled, version
from bench.results.schema import Profile

# Where a cell's profiles go, in its folder beside its logs.
KEPT_FOLDER = "profile"
# the profilers' own output, for when they fail: in the cell's profile folder.
LOG = "profiler.log"
NO_PERF = (
    "no profile: this server is not a Python one (py-spy) and perf is not installed "
    "(apt-get install linux-perf)"
)


@dataclass(frozen=True)
class ProfileTarget:
    """What a cell profiles: the root processes of its server (`roots()`, asked at each
    window: the server's processes as they are then), where the profiles are kept and the
    run's folder they are named relative to."""

    roots: Callable[[], list[psutil.Process]]
    keep_dir: Path
    run_dir: Path
    label: str = ""  # the cell's name, in each flame graph's title
    rate_hz: int = pyspy.RATE_HZ


@dataclass
class Outcome:
    """What profiling a window gave: its profile, or the one line saying why there is none."""

    profile: Profile | None = None
    problem: str | None = None
    _recordings: list[Recording] = field(default_factory=list)
    _tools: list[str] = field(default_factory=list)

    @property
    def problems(self) -> list[str]:
        return [self.problem] if self.problem else []


def window_stem(name: str, concurrency: int, rate: float | None = None) -> str:
    """A window's file name stem: `GET-flows-id-c4`, `flow-runs-c1`, `…-c4-r50` at a swept
    rate."""
    clean = "-".join("".join(c if c.isalnum() or c == "_" else " " for c in name).split())
    stem = f"{clean}-c{concurrency}"
    return stem if rate is None else f"{stem}-r{rate:g}"


def _free_stem(folder: Path, stem: str) -> str:
    """`stem`, or `stem.2`, `stem.3`, … : a kept profile is never overwritten (a --soak, a
    --repeat measure the same window again)."""
    k, free = 1, stem
    while (folder / f"{free}.svg").exists() or (folder / f"{free}.collapsed.gz").exists():
        k += 1
        free = f"{stem}.{k}"
    return free


@contextmanager
def profiled(target: ProfileTarget | None, stem: str, title: str) -> Iterator[Outcome]:
    """Sample the server for as long as the block runs (the profiler started, and sampling,
    before the block; stopped after it): `Outcome.profile` once the block is done, or
    `Outcome.problem`. With `target` None, nothing is sampled and the outcome is empty."""
    outcome = Outcome()
    if target is None:
        yield outcome
        return
    _start(target, stem, outcome)
    try:
        yield outcome
    except BaseException:
        for recording in outcome._recordings:
            recording.kill()
            recording.raw.unlink(missing_ok=True)
        raise
    if outcome._recordings:
        _finish(target, stem, f"{target.label} {title}".strip(), outcome)


def _start(target: ProfileTarget, stem: str, outcome: Outcome) -> None:
    roots = target.roots()
    if not roots:
        outcome.problem = "no profile: the server has no process to sample"
        return
    chosen = [_profiler(root) for root in roots]
    profilers = [c for c in chosen if not isinstance(c, str)]
    if len(profilers) < len(chosen):
        outcome.problem = next(c for c in chosen if isinstance(c, str))
        return
    try:
        target.keep_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        outcome.problem = f"no profile: {target.keep_dir} cannot be made: {exc.strerror or exc}"
        return
    log = target.keep_dir / LOG
    for k, (root, profiler) in enumerate(zip(roots, profilers, strict=True), start=1):
        if profiler.version not in outcome._tools:
            outcome._tools.append(profiler.version)
        raw = target.keep_dir / f".{stem}.{k}.raw"
        recording = profiler.recording(profiler.program, root.pid, raw, log, target.rate_hz)
        try:
            recording.start()
        except ProfilerError as exc:
            for started in outcome._recordings:
                started.kill()
            outcome._recordings.clear()
            outcome.problem = f"no profile: {exc}"
            raw.unlink(missing_ok=True)
            return
        outcome._recordings.append(recording)


@dataclass(frozen=True)
class _Profiler:
    program: str
    version: str  # as the program says it, asked once before any recording starts
    recording: Callable[[str, int, Path, Path, int], Recording]


def _profiler(root: psutil.Process) -> _Profiler | str:
    """The profiler for `root` (py-spy for a Python process, else perf), or the one line
    saying why there is none."""
    if pyspy.is_python(root):
        program = pyspy.executable()
        if program is None:
            return "no profile: py-spy is not installed (pip install py-spy)"
        return _Profiler(program, _version(program, "py-spy"), pyspy.Recording)
    program = perf.executable()
    if program is None:
        return NO_PERF
    return _Profiler(program, _version(program, "perf"), perf.Recording)


@functools.cache
def _version(program: str, tool: str) -> str:
    return version(program, tool)


def _finish(target: ProfileTarget, stem: str, title: str, outcome: Outcome) -> None:
    sampled: list[Sampled] = []
    problem = None
    recordings, outcome._recordings = outcome._recordings, []
    for recording in recordings:
        try:
            sampled.append(recording.stop())
        except ProfilerError as exc:
            problem = problem or f"no profile: {exc}"
    try:
        if problem is None:
            found = stacks.combined(stacks.read(s.raw, errors="replace") for s in sampled)
            if not found:
                names = " and ".join(dict.fromkeys(r.tool for r in recordings))
                problem = f"no profile: {names} sampled no stack of the server in the window"
            else:
                tools = ", ".join(outcome._tools)
                outcome.profile = _keep(target, stem, title, found, sampled, tools)
    except OSError as exc:
        problem = f"no profile: its files could not be kept: {exc.strerror or exc}"
    finally:
        for s in sampled:
            s.raw.unlink(missing_ok=True)
    outcome.problem = problem


def _keep(
    target: ProfileTarget,
    stem: str,
    title: str,
    found: stacks.Stacks,
    sampled: list[Sampled],
    tool: str,
) -> Profile:
    stem = _free_stem(target.keep_dir, stem)
    collapsed = target.keep_dir / f"{stem}.collapsed.gz"
    svg = target.keep_dir / f"{stem}.svg"
    with gzip.open(collapsed, "wt", encoding="utf-8", compresslevel=6) as f:
        f.write(stacks.dump(found))
    samples = sum(s.samples for s in sampled)
    svg.write_text(flamegraph.render(found, f"{title}: {samples:,} samples"), encoding="utf-8")
    return Profile(
        tool=tool,
        rate_hz=target.rate_hz,
        samples=samples,
        errors=sum(s.errors for s in sampled),
        collapsed=[str(collapsed.relative_to(target.run_dir))],
        flamegraph=[str(svg.relative_to(target.run_dir))],
    )
