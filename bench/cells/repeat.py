"""Repeating a cell: where each repetition's result goes, when `--repeat auto` stops, and the
loop that runs a cell as `run` does (once, or repetition after repetition).

Each repetition is a fresh server and database, so its figures carry the noise between runs
(another process, another database file), which a single run cannot show. `auto` repeats until
every figure's 95% interval, the half-width of the t interval of the mean over the counted
repetitions relative to that mean, is within the target: with few repetitions a bootstrap
interval is too narrow (it cannot see beyond the values it has), the t interval is not.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import statistics
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from scipy import stats

from bench.cells.runner import CellRun, run_cell
from bench.compare.gate import cell_figures
from bench.config.run import RunConfig
from bench.core.errors import ConfigError, ResultsError
from bench.core.failures import one_line
from bench.observe.progress import Progress
from bench.results import Cell, RepeatState, Result, load_result, result_path, write_result

CONFIDENCE = 0.95
# An interval needs this many counted repetitions before it can say the target is met: with
# two, one lucky pair of equal values would stop a noisy cell.
MIN_FOR_TARGET = 3
# A budget never stops a cell before this many counted repetitions (two values are the least
# that show any noise between runs).
MIN_REPETITIONS = 2
# `auto` stops here whatever the intervals: a cell that needs more is too noisy to converge.
MAX_AUTO = 20
# Why the first repetition of a repeated cell is left out (unless --keep-first): as pyperf
# leaves out each worker's first value, a warm-up. Measured here with pinning (the default),
# the first repetition's total was 0.64-1.14x the mean of the rest (docs/design-notes.md).
WARMUP_REPETITION = "the warm-up repetition: the first of a repeated cell (--keep-first counts it)"


def repetition_path(out_dir: Path, run_id: str, cell: Cell, repetition: int) -> Path:
    """`<cell>.json` for the first repetition (as a cell run once), `<cell>.<k>.json` after."""
    path = result_path(out_dir, run_id, cell)
    return path if repetition == 1 else path.with_name(f"{cell.name}.{repetition}.json")


def earlier_repetitions(out_dir: Path, run_id: str, cell: Cell) -> list[Result]:
    """The repetitions of `cell` already written in this run, in order of repetition."""
    found = []
    folder = out_dir / run_id
    for path in [result_path(out_dir, run_id, cell), *folder.glob(f"{cell.name}.*.json")]:
        suffix = path.name[len(cell.name) + 1 : -len(".json")]
        if not path.exists() or (suffix and not suffix.isdigit()):
            continue
        try:
            result = load_result(path)
        except ResultsError:
            continue  # not ours to judge here; the report warns about it
        if result.cell == cell:
            found.append(result)
    return sorted(found, key=lambda r: r.repetition or 1)


# The figures `auto` watches: rates and medians. A p99 of a few seconds' window moves with a
# handful of requests, and waiting for it to settle would spend the budget on its tail.
WATCHED = ("rps", "p50")


def figures(result: Result) -> dict[str, float]:
    """The figures of a repetition `auto` watches (bench.compare.gate's, rates and medians):
    the total, each endpoint's rps and p50 at each level, each scenario's rate and its steps'
    p50, by name."""
    return {
        "total" if name == "total" else f"{name} {metric}": statistics.fmean(samples)
        for (name, metric), samples in cell_figures(result).items()
        if metric in WATCHED
    }


def interval_pct(values: Sequence[float]) -> float:
    """Half-width of the 95% t interval of the mean of `values`, in % of the mean (inf when
    it cannot be told: fewer than two values or a mean of 0)."""
    mean = statistics.fmean(values) if values else 0.0
    if len(values) < 2 or mean == 0:
        return math.inf
    t = stats.t.ppf((1 + CONFIDENCE) / 2, len(values) - 1)
    return float(100 * t * statistics.stdev(values) / math.sqrt(len(values)) / abs(mean))


@dataclass(frozen=True)
class Reached:
    total_pct: float
    worst: str
    worst_pct: float


def reached(counted: Sequence[Result]) -> Reached:
    """The interval of the total and of the widest figure over the counted repetitions (figures
    every one of them has)."""
    per_rep = [figures(r) for r in counted]
    names = set.intersection(*(set(f) for f in per_rep)) if per_rep else set()
    widths = {name: interval_pct([f[name] for f in per_rep]) for name in names}
    if not widths:
        return Reached(math.inf, "", math.inf)
    worst = max(sorted(widths), key=lambda n: widths[n])
    return Reached(widths.get("total", math.inf), worst, widths[worst])


def decide(
    repeat: int | str,
    target_pct: float,
    counted: Sequence[Result],
    seconds_left: float | None,
    seconds_per_repetition: float,
) -> RepeatState:
    """Whether the cell needs another repetition after the ones `counted` (ok and not
    discarded); the state is stored in the last repetition's result.

    `seconds_left` is the budget left (None: no budget); another repetition is not started
    when it would not fit, unless fewer than MIN_REPETITIONS are counted.
    """
    n = len(counted)
    got = reached(counted)
    state = RepeatState(
        counted=n,
        interval_pct=_finite(got.total_pct),
        widest=got.worst or None,
        widest_pct=_finite(got.worst_pct),
    )
    if repeat != "auto":
        if n >= int(repeat):
            state.stopped = "count"
        return state
    if n >= MIN_FOR_TARGET and got.worst_pct <= target_pct:
        state.stopped = "target"
    elif n >= MAX_AUTO:
        state.stopped = "limit"
    elif seconds_left is not None and seconds_left < seconds_per_repetition:
        if n >= MIN_REPETITIONS:
            state.stopped = "budget"
        else:
            state.over_budget = True
    return state


def _finite(value: float) -> float | None:
    return round(value, 2) if math.isfinite(value) else None


# Why a repeated cell stopped (RepeatState.stopped), as the command line says it.
STOP_REASONS = {
    "count": "the repetitions asked for",
    "target": "every interval within the target",
    "decided": "every gated figure decided",
    "budget": "the budget would not fit another",
    "limit": f"{MAX_AUTO} repetitions, the most auto runs",
}


def prepare(run: CellRun, copy: Path | None = None) -> list[Result]:
    """Refuse, before anything runs or is written, what would overwrite a result (a cell run
    once whose result is in the run already, unless it was interrupted; an existing `copy`
    path) or cannot be written (the run's folder): ConfigError naming the path. Returns the
    cell's results already written in this run, which a repeated cell goes on from (the matrix
    runs one per round) and a cell run once after an interrupted one."""
    cell, config = run.cell, run.config
    repeating = config.repeat is not None
    path = result_path(run.out_dir, run.run_id, cell)
    done = earlier_repetitions(run.out_dir, run.run_id, cell) if repeating or path.exists() else []
    if not repeating and path.exists() and not (done and all(r.interrupted for r in done)):
        raise ConfigError(f"{path} exists: results are never overwritten (use another --run-id)")
    if copy and copy.exists():
        raise ConfigError(f"{copy} exists: results are never overwritten")
    folder = run.out_dir / run.run_id
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".{cell.name}.writable"
        probe.touch()
        probe.unlink()
    except OSError as exc:
        raise ConfigError(f"cannot write results into {folder}: {exc.strerror}") from exc
    return done


def run_repetitions(
    run: CellRun,
    progress: Progress,
    done: list[Result],
    deadline: float | None = None,
    one: bool = False,
) -> Iterator[tuple[Result, Path]]:
    """Run the cell once (after `done`, its interrupted results: numbered after them), or
    (`--repeat`) repetition after repetition after those `done` until `decide` stops it, a
    repetition fails, or after `one` (a turn of the matrix's rounds); each result is written as
    soon as it is done and yielded with its path.

    `deadline` (seconds since the epoch) ends the budget; default `--budget` from now.
    """
    config = run.config
    repeating = config.repeat is not None
    deadline = deadline or time.time() + config.budget_min * 60
    while True:
        if repeating:
            result = _repetition(run, progress, done, deadline)
            path = repetition_path(run.out_dir, run.run_id, run.cell, result.repetition or 1)
        else:
            result = run_cell(run, progress)
            if done:  # run again after an interrupted result, which is kept
                result.repetition = len(done) + 1
            path = repetition_path(run.out_dir, run.run_id, run.cell, result.repetition or 1)
        write_result(result, path)
        yield result, path
        if not repeating or result.status != "ok" or one:
            return
        if result.repeat and result.repeat.stopped:
            return


def result_line(result: Result) -> str:
    """The one line saying how a cell (or one of its repetitions) ended, and why when it
    failed (an error written before causes were one line is made one)."""
    error = one_line(result.error or "")
    line = f"{result.cell.name}: {result.status}" + (f": {error}" if error else "")
    if result.repeat:
        line += f" (repetition {result.repetition}"
        if result.discarded:
            line += ", the warm-up, not counted"
        if result.repeat.interval_pct is not None:
            line += f", total ±{result.repeat.interval_pct:g}%"
        if undecided := result.repeat.undecided:
            more = f" and {len(undecided) - 1} more" if len(undecided) > 1 else ""
            line += f", undecided: {undecided[0]}{more}"
        if result.repeat.stopped:
            line += f"; stopped: {STOP_REASONS[result.repeat.stopped]}"
        line += ")"
    return line


def _repetition(run: CellRun, progress: Progress, done: list[Result], deadline: float) -> Result:
    """The cell's next repetition, with where the repetitions stand after it (`done` grows).
    The warm-up is the first that is not interrupted (one interrupted is run again)."""
    config = run.config
    warmup = all(r.interrupted for r in done) and config.warmup_repetition
    progress.stage(
        f"repetition {len(done) + 1}"
        + (" (the warm-up: run and kept, not counted)" if warmup else "")
        + _standing(done[-1] if done else None, config)
    )
    result = run_cell(run, progress)
    result.repetition = len(done) + 1
    if warmup and not result.interrupted:
        result.discarded = WARMUP_REPETITION
    done.append(result)
    counted = [r for r in done if r.status == "ok" and not r.discarded]
    result.repeat = decide(
        config.repeat or 1,
        config.target_pct,
        counted,
        deadline - time.time(),
        _repetition_s(run.out_dir / run.run_id, done),
    )
    if result.repeat.over_budget:
        progress.stage(
            f"the budget ({config.budget_min:g} min) leaves no time for another repetition; "
            f"running {MIN_REPETITIONS} anyway, the fewest that show any noise"
        )
    return result


def _repetition_s(folder: Path, done: Sequence[Result]) -> float:
    """What one more repetition is expected to take: the time the run's cells ran between the
    last two (a whole round of the matrix when repetitions interleave across cells; not the
    time a killed matrix stood still before `--resume`), else the last one's own."""
    if not done or done[-1].finished_at is None:
        return 0.0
    end = _epoch(done[-1].finished_at)
    before = done[-2].finished_at if len(done) >= 2 else None
    if before is None:
        return end - _epoch(done[-1].started_at)
    return min(end - _epoch(before), busy_s(folder, _epoch(before), end))


def busy_s(folder: Path, since: float = -math.inf, until: float = math.inf) -> float:
    """Seconds the cells of the run in `folder` ran between `since` and `until` (seconds since
    the epoch), from each result's start and end: not the time between them (a matrix killed
    and resumed the next day, each cell's process starting). Results written before `since`
    are not read."""
    total = 0.0
    for path in folder.glob("*.json"):
        try:
            if path.name.startswith(".") or path.stat().st_mtime < since - 2:
                continue
            data = json.loads(path.read_text(encoding="utf-8"))
            start, end = _epoch(data["started_at"]), _epoch(data["finished_at"])
        except (OSError, ValueError, TypeError, KeyError):
            continue  # not a result, or one without its times: the report warns about it
        total += max(0.0, min(end, until) - max(start, since))
    return total


def _epoch(stamp: str) -> float:
    return dt.datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.UTC).timestamp()


def _standing(last: Result | None, config: RunConfig) -> str:
    if last is None or last.repeat is None or last.repeat.widest_pct is None:
        return ""
    state = last.repeat
    aim = f" > {config.target_pct:g}%" if config.repeat == "auto" else ""
    return f" (widest interval so far ±{state.widest_pct:g}%{aim}: {state.widest})"
