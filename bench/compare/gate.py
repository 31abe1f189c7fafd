"""`compare BEFORE AFTER`: is a difference between two sets of repeated runs real, and does it
break a gate?

Each counted repetition (an ok result, not discarded) gives one value per figure
(`cell_figures`: every row of bench.compare.metrics.METRICS read from each endpoint, scenario
and step at each level, and each summed row's total over the cell). Each figure is tested and
the whole comparison corrected as bench.compare.change does it (the report's baseline tests the
same way).

A gate (`--fail-on 'rps<-5%'`, any METRIC of the table) fails on a figure whose change is beyond
its threshold and whose corrected p-value is below SIGNIFICANCE: both, so neither noise nor a
tiny real change fails it. The sides must agree on every measurement setting
(bench.compare.settings) and machine, or the differences are named.

Cost cells (--cost) are compared on instructions alone, each counted block a sample: their
timed figures are of a server under callgrind. A cost cell is never compared with a wall-clock
one (they measure different things), even with --allow-different.
"""

from __future__ import annotations

import itertools
import math
import re
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, Field

from bench.compare.change import SIGNIFICANCE, TOTAL_SHARE, Figure, assess
from bench.compare.metrics import METRICS, TOTAL, readings
from bench.compare.settings import measurement_fields, measurement_settings
from bench.compare.stats import detectable_pct, fewest_figures, smallest_p
from bench.core.errors import ConfigError
from bench.results import Result

MACHINE_KEYS = ("hostname", "cpu_model", "cpu_count")


@dataclass(frozen=True)
class Rule:
    """`rps<-5%`: fail when the rate fell by more than 5%; `p99>+10%`: when p99 rose by more."""

    metric: str  # a name of METRICS
    below: bool
    pct: float

    @property
    def text(self) -> str:
        return f"{self.metric}{'<' if self.below else '>'}{self.pct:+g}%"

    def broken_by(self, change_pct: float) -> bool:
        return change_pct < self.pct if self.below else change_pct > self.pct


def parse_rule(text: str) -> Rule:
    """A --fail-on expression, METRIC<CHANGE% or METRIC>CHANGE% with METRIC a name of METRICS;
    ConfigError with an example for anything else."""
    names = "|".join(re.escape(name) for name in METRICS)
    match = re.match(rf"^\s*({names})\s*([<>])\s*([+-]?\d+(?:\.\d+)?)\s*%\s*$", text)
    if not match:
        raise ConfigError(
            f"--fail-on {text!r}: expected METRIC<CHANGE% or METRIC>CHANGE% with METRIC one of "
            + ", ".join(m.text for m in METRICS.values())
            + ", e.g. --fail-on 'rps<-5%' --fail-on 'p99>+10%'"
        )
    metric, sign, pct = match.groups()
    return Rule(metric, sign == "<", float(pct))


def cell_figures(result: Result) -> dict[tuple[str, str], list[float]]:
    """Every figure one repetition gives, (name, metric) → its samples: each reading's (one
    value, or a cost cell's blocks), and for each summed metric the total over the cell's
    endpoints and scenarios at every level. A cost cell gives its per_block figures alone."""
    found = readings(result)
    wanted = [m for m in METRICS.values() if m.per_block == result.config.cost]
    out = {(r.name, m.name): r.samples(m.name) for r in found for m in wanted if m.name in r.values}
    measured = [r for r in found if r.step is None]
    if measured:
        for m in wanted:
            if m.summed:
                out[(TOTAL, m.name)] = [sum(r.values.get(m.name, 0.0) for r in measured)]
    return out


def gate(figures: Iterable[Figure], rules: Sequence[Rule]) -> list[Figure]:
    """The figures that break a rule: beyond its threshold and significant."""
    failing = []
    for f in figures:
        f.broken = [
            r.text
            for r in rules
            if r.metric == f.metric and f.significant and r.broken_by(f.change_pct)
        ]
        if f.broken:
            failing.append(f)
    return failing


@dataclass(frozen=True)
class Unsure:
    """A gated figure whose 95% interval holds its rule's threshold: neither broken nor
    clearly clear of it; `more` is about how many repetitions (rounds, paired) a side would
    narrow the interval enough to tell (`had`: how many it had), None when its change is the
    threshold itself (no number would)."""

    figure: Figure
    rule: Rule
    more: int | None
    had: int

    def text(self) -> str:
        """`~12 rounds`, `over 60 rounds` (beyond MAX_MORE times as many as it had), or `on
        the threshold`; in what the figure's test counts (SAMPLES)."""
        unit = SAMPLES[self.figure.test]
        if self.more is None:
            return "on the threshold"
        if self.more > MAX_MORE * self.had:
            return f"over {MAX_MORE * self.had} {unit}"
        return f"~{self.more} {unit}"


MAX_MORE = 10


# What the samples of each test (Figure.test) are called.
SAMPLES = {
    "paired": "rounds",
    "servers": "servers a side",
    "blocks": "blocks a side",
    "unpaired": "repetitions a side",
}


def unsure(figures: Iterable[Figure], rules: Sequence[Rule]) -> list[Unsure]:
    """The figures of `rules`' metrics, not broken, whose interval holds a threshold: the
    interval's half-width shrinks as 1/√n, so n·(half-width / distance to the threshold)²
    repetitions a side would leave the threshold outside it."""
    found = []
    for f in figures:
        if f.broken or f.low is None or f.high is None or not math.isfinite(f.ratio):
            continue
        low, high = 100 * (f.low - 1), 100 * (f.high - 1)
        for r in rules:
            if r.metric != f.metric or not low <= r.pct <= high:
                continue
            n = min(len(f.before), len(f.after))
            half, distance = (high - low) / 2, abs(f.change_pct - r.pct)
            more = math.ceil(n * (half / distance) ** 2) if distance > 0 else None
            found.append(Unsure(f, r, more, n))
            break
    return found


def counted(results: Iterable[Result]) -> list[Result]:
    """The repetitions that count: ok and not discarded."""
    return [r for r in results if r.status == "ok" and not r.discarded]


def by_cell(results: Iterable[Result]) -> dict[str, list[Result]]:
    out: dict[str, list[Result]] = {}
    for r in counted(results):
        out.setdefault(r.cell.name, []).append(r)
    return out


def figures_of(
    cell: str, before: Sequence[Result], after: Sequence[Result], paired: bool = False
) -> list[Figure]:
    """The figures every repetition of both sides of a cell has, not yet tested; `paired`:
    before[k] and after[k] ran in one round. A cost figure's samples are its blocks with one
    server a side, each server's mean with more (bench.compare.change says why)."""
    if not before or not after:
        return []
    b = [cell_figures(r) for r in before]
    a = [cell_figures(r) for r in after]
    keys = set.intersection(*(set(f) for f in [*b, *a]))
    per_server = min(len(before), len(after)) >= 2

    def samples(
        side: list[dict[tuple[str, str], list[float]]], key: tuple[str, str]
    ) -> list[float]:
        if per_server and METRICS[key[1]].per_block:
            return [statistics.fmean(f[key]) for f in side]
        return [v for f in side for v in f[key]]

    return [
        Figure(
            cell,
            name,
            metric,
            samples(b, (name, metric)),
            samples(a, (name, metric)),
            per_block=METRICS[metric].per_block,
            per_server=per_server and METRICS[metric].per_block,
            paired=paired,
        )
        for name, metric in sorted(keys, key=lambda k: (k[0] != TOTAL, k[0], k[1]))
    ]


def refuse_unlike(before: Sequence[Result], after: Sequence[Result]) -> None:
    """ConfigError when one side counted cost (--cost) and the other timed: naming both."""
    kinds = {
        side: {"cost" if r.config.cost else "wall-clock" for r in results}
        for side, results in (("BEFORE", before), ("AFTER", after))
    }
    if kinds["BEFORE"] != kinds["AFTER"] or len(kinds["BEFORE"]) > 1:
        named = "; ".join(f"{side}: {', '.join(sorted(k))}" for side, k in kinds.items())
        raise ConfigError(
            "cost results (--cost: instructions counted under callgrind) and wall-clock ones "
            f"measure different things and are never compared ({named})"
        )


def ungated(figures: Sequence[Figure], rules: Sequence[Rule]) -> list[str]:
    """The rules no figure of the comparison can break (their metric was not measured), each
    with why: a gate that checks nothing must not pass."""
    measured = {f.metric for f in figures}
    return [
        f"--fail-on {r.text}: no figure of {r.metric} to gate"
        + (
            " (instructions are counted by --cost runs)"
            if METRICS[r.metric].per_block
            else " (cost runs are gated on instructions)"
            if "instructions" in measured
            else ""
        )
        for r in rules
        if r.metric not in measured
    ]


def settings_differences(before: Sequence[Result], after: Sequence[Result]) -> list[str]:
    """What differs between the sides' measurement settings and machines, one line each."""
    lines = []
    old = [measurement_settings(r.config) for r in before]
    new = [measurement_settings(r.config) for r in after]
    for key in measurement_fields():
        olds, news = sorted({s[key] for s in old}), sorted({s[key] for s in new})
        if olds != news:
            lines.append(
                f"measurement setting {key}: {', '.join(olds)} before, {', '.join(news)} after"
            )
    for key in MACHINE_KEYS:
        olds = sorted({repr(getattr(r.environment, key, None)) for r in before})
        news = sorted({repr(getattr(r.environment, key, None)) for r in after})
        if olds != news:
            lines.append(f"machine {key}: {', '.join(olds)} before, {', '.join(news)} after")
    return lines


@dataclass
class Comparison:
    """A whole comparison: the cells paired, every figure tested and corrected."""

    pairs: list[tuple[str, str]]  # (before cell, after cell)
    figures: list[Figure]
    differences: list[str]
    repetitions: dict[str, tuple[int, int]]
    noisy: list[str] = field(default_factory=list)
    paired: bool = False  # two servers of one run, their repetitions paired by round
    dropped: list[str] = field(default_factory=list)  # rounds of one side without a pair
    together: bool = False  # paired, and measured together (run --beside, matrix --together)
    duet: bool = False  # measured together at the same moment, each on CPUs of its own (--duet)


def split_servers(
    results: Sequence[Result], before: str, after: str
) -> tuple[list[Result], list[Result]]:
    """One run's results of server `before` and of server `after` (as cells name them:
    `python`, `python@3.9.1`); ConfigError, naming the run's servers, for a server it does not
    hold, the same server twice, or results of more than one run (rounds pair within one)."""
    runs = sorted({r.run_id for r in results})
    if len(runs) > 1:
        raise ConfigError(
            f"--before/--after pair two servers of one run; these results are of {len(runs)} "
            f"runs ({', '.join(runs[:3])}{', …' if len(runs) > 3 else ''}): give one run's folder"
        )
    servers = sorted({r.cell.label for r in results})
    for option, name in (("--before", before), ("--after", after)):
        if name not in servers:
            raise ConfigError(
                f"{option} {name}: no such server in the run; it has "
                + (", ".join(servers) or "no results")
            )
    if before == after:
        raise ConfigError(f"--before and --after name the same server ({before})")
    return (
        [r for r in results if r.cell.label == before],
        [r for r in results if r.cell.label == after],
    )


def rounds_of(results: Sequence[Result]) -> dict[int, Result]:
    """One cell's counted repetitions of a run by the round each ran in: a cell takes one turn
    a round, and an interrupted repetition takes none (it is run again, numbered after it)."""
    turns = [r for r in sorted(results, key=lambda r: r.repetition or 1) if not r.interrupted]
    counting = set(map(id, counted(turns)))
    return {k: r for k, r in enumerate(turns, start=1) if id(r) in counting}


def pair_cells(
    before: dict[str, list[Result]], after: dict[str, list[Result]]
) -> list[tuple[str, str]]:
    """Cells of the same name; if none, and each side holds one server, cells of the same db and
    broker (one server against another). ConfigError when nothing pairs."""
    same = [(c, c) for c in before if c in after]
    if same:
        return same
    servers_before = {rs[0].cell.label for rs in before.values()}
    servers_after = {rs[0].cell.label for rs in after.values()}
    if len(servers_before) == 1 and len(servers_after) == 1:
        key = {(rs[0].cell.db, rs[0].cell.broker): c for c, rs in after.items()}
        pairs = [
            (c, key[(rs[0].cell.db, rs[0].cell.broker)])
            for c, rs in before.items()
            if (rs[0].cell.db, rs[0].cell.broker) in key
        ]
        if pairs:
            return pairs
    raise ConfigError(
        f"no cell in common: before has {', '.join(sorted(before))}; "
        f"after has {', '.join(sorted(after))}"
    )


def compare(before: Sequence[Result], after: Sequence[Result], paired: bool = False) -> Comparison:
    """Pair the sides' cells and test every figure they share; ConfigError for a side with no
    counted result or sides with no cell in common. `paired` (two servers of one run): each
    cell's repetitions paired by round, a round counted only where both sides have it."""
    old, new = by_cell(before), by_cell(after)
    for side, cells in (("BEFORE", old), ("AFTER", new)):
        if not cells:
            raise ConfigError(f"{side} holds no ok result to compare")
    dropped: list[str] = []
    if paired:
        old, new, dropped = _paired_rounds(before, after, old, new)
    refuse_unlike(counted(before), counted(after))
    pairs = pair_cells(old, new)
    figures: list[Figure] = []
    differences: list[str] = []
    for b, a in pairs:
        label = b if a == b else f"{b} → {a}"
        figures += figures_of(label, old[b], new[a], paired)
        differences += [f"{label}: {d}" for d in settings_differences(old[b], new[a])]
    assess(figures)
    repetitions = {(b if a == b else f"{b} → {a}"): (len(old[b]), len(new[a])) for b, a in pairs}
    sides = [("before", old[b]) for b, _ in pairs] + [("after", new[a]) for _, a in pairs]
    noisy = [
        f"{side}: {r.cell.name} repetition {r.repetition or 1} was measured on a noisy machine: "
        + "; ".join(r.noise[:2])
        for side, runs in sides
        for r in runs
        if r.noisy
    ]
    together = paired and all(
        a in (rb.together_with or []) and b in (ra.together_with or [])
        for b, a in pairs
        for rb, ra in zip(old[b], new[a], strict=True)
    )
    duet = together and all(r.config.duet for b, a in pairs for r in [*old[b], *new[a]])
    return Comparison(
        pairs, figures, differences, repetitions, noisy, paired, dropped, together, duet
    )


def _paired_rounds(
    before: Sequence[Result],
    after: Sequence[Result],
    old: dict[str, list[Result]],
    new: dict[str, list[Result]],
) -> tuple[dict[str, list[Result]], dict[str, list[Result]], list[str]]:
    """Each cell pair's repetitions in the rounds both sides counted, in round order (so that
    the k-th of one side ran beside the k-th of the other), and a line per round left out."""
    everything: dict[str, list[Result]] = {}
    for r in [*before, *after]:
        everything.setdefault(r.cell.name, []).append(r)
    kept_old: dict[str, list[Result]] = {}
    kept_new: dict[str, list[Result]] = {}
    dropped = []
    for b, a in pair_cells(old, new):
        rb, ra = rounds_of(everything[b]), rounds_of(everything[a])
        both = sorted(rb.keys() & ra.keys())
        for k in sorted(rb.keys() ^ ra.keys()):
            has, lacks = (b, a) if k in rb else (a, b)
            dropped.append(f"round {k}: {has} left out, {lacks} has no counted repetition in it")
        kept_old[b] = [rb[k] for k in both]
        kept_new[a] = [ra[k] for k in both]
    return kept_old, kept_new, dropped


# -- A/A: the gate's own false alarms -----------------------------------------------------------


@dataclass
class Calibration:
    """One cell's A/A: its repetitions split into two sides of `size` many ways, the gate run
    on each split; how often it fired, and how small a change it can tell."""

    cell: str
    repetitions: int
    size: int
    splits: int
    false_alarms: int
    # Half-width of the 95% interval of the total's ratio, %, over the splits (median).
    total_noise_pct: float
    # Coefficient of variation of the total between repetitions, %.
    total_cv_pct: float
    # The smallest change of the total a test at this size detects 4 times in 5 (α 0.05).
    detectable_pct: float
    # The fewest of the cell's figures a change must move for any to pass the correction.
    fewest_figures: int
    tests: int
    # The largest change, %, any figure showed in any split: the noise floor a gate's
    # threshold must clear (for cost cells: what two fresh servers of the same code differ by).
    largest_change_pct: float = math.nan
    largest_change: str = ""  # which figure

    @property
    def false_positive_rate(self) -> float:
        return self.false_alarms / self.splits if self.splits else math.nan


MAX_SPLITS = 70


class GatedFigure(BaseModel):
    """One figure of `compare --json`: its values, its change and interval, its test, and
    what the gate made of it."""

    cell: str
    name: str
    metric: str
    before: list[float]
    after: list[float]
    change_pct: float | None
    low_pct: float | None = Field(description="the 95% interval of the change, %")
    high_pct: float | None
    p_value: float | None
    p_adjusted: float | None = Field(description="Benjamini–Hochberg across the figures")
    significant: bool
    test: str = Field(description="paired (rounds), blocks (cost), or unpaired")
    detectable_pct: float | None = Field(description="paired: the smallest change found 4 in 5")
    broken: list[str] = Field(description="the rules it breaks")
    unsure: str | None = Field(
        description="its interval holds a rule's threshold: how many more of its test's samples "
        "(rounds, blocks or repetitions a side) would tell"
    )


class GateReport(BaseModel):
    """What `compare --json` writes: the comparison as data, for a CI to read."""

    schema_version: int = 1
    verdict: Literal["pass", "fail"]
    rules: list[str]
    paired: bool
    together: bool = Field(
        default=False,
        description="paired, the servers measured together (run --beside, matrix --together)",
    )
    duet: bool = Field(
        default=False,
        description="measured together at the same moment, each server and its load on CPUs "
        "of their own (--duet)",
    )
    pairs: list[tuple[str, str]]
    repetitions: dict[str, tuple[int, int]]
    differences: list[str]
    noisy: list[str]
    dropped: list[str]
    figures: list[GatedFigure]


def gate_report(result: Comparison, rules: Sequence[Rule], failing: Sequence[Figure]) -> GateReport:
    """`result` gated by `rules` (`failing` the figures that broke one), as `compare --json`
    writes it."""
    undecided = {id(u.figure): u.text() for u in unsure(result.figures, rules)}

    def pct(value: float | None) -> float | None:
        return None if value is None or math.isnan(value) else 100 * (value - 1)

    figures = [
        GatedFigure(
            cell=f.cell,
            name=f.name,
            metric=f.metric,
            before=f.before,
            after=f.after,
            change_pct=pct(f.ratio),
            low_pct=pct(f.low),
            high_pct=pct(f.high),
            p_value=f.p_value,
            p_adjusted=f.p_adjusted,
            significant=f.significant,
            test=f.test,
            detectable_pct=f.detectable_pct,
            broken=f.broken,
            unsure=undecided.get(id(f)),
        )
        for f in result.figures
    ]
    return GateReport(
        verdict="fail" if failing else "pass",
        rules=[r.text for r in rules],
        paired=result.paired,
        together=result.together,
        duet=result.duet,
        pairs=result.pairs,
        repetitions=result.repetitions,
        differences=result.differences,
        noisy=result.noisy,
        dropped=result.dropped,
        figures=figures,
    )


@dataclass
class _Tally:
    """What the gate made of an A/A's comparisons (splits or subsets of rounds): how many
    fired, the figures tested, the total's interval half-widths and detectable changes, and the
    largest change of any figure."""

    rules: Sequence[Rule]
    alarms: int = 0
    tests: int = 0
    widths: list[float] = field(default_factory=list)
    reach: list[float] = field(default_factory=list)
    largest: tuple[float, str] = (math.nan, "")

    def add(self, figures: Sequence[Figure]) -> None:
        """One comparison's figures, tested and corrected."""
        self.tests = sum(f.p_value is not None for f in figures)
        self.alarms += bool(gate(figures, self.rules))
        for f in figures:
            if f.name == TOTAL and f.low is not None and f.high is not None:
                self.widths.append(50 * (f.high - f.low) / f.ratio)
                if f.detectable_pct is not None:
                    self.reach.append(f.detectable_pct)
            if math.isfinite(f.ratio) and not abs(f.change_pct) <= self.largest[0]:  # nan: first
                self.largest = (abs(f.change_pct), f"{f.name} {f.metric}")

    @staticmethod
    def median(values: list[float]) -> float:
        return round(statistics.median(values), 2) if values else math.nan


class CalibrationReport(BaseModel):
    """What `compare --aa` keeps beside the results it read."""

    rules: list[str]
    cells: list[dict[str, Any]]


def calibrate(
    cell: str, results: Sequence[Result], size: int, rules: Sequence[Rule]
) -> Calibration:
    """Split the cell's counted repetitions into disjoint sides of `size` every way (at most
    MAX_SPLITS, in a fixed order) and gate each split as a comparison of its own. A cost cell's
    side may be one repetition (its blocks are the samples); another's needs two."""
    results = counted(results)
    n = len(results)
    cost = any(r.config.cost for r in results)
    if size < 1 or (size < 2 and not cost):
        raise ConfigError(
            f"--size {size}: at least {1 if cost else 2} repetition(s) a side"
            + ("" if cost else " (1 for cost cells, whose blocks are the samples)")
        )
    if n < 2 * size:
        raise ConfigError(
            f"{cell}: {n} counted repetitions, A/A at {size} a side needs {2 * size} "
            f"(e.g. `python -m bench matrix --repeat {2 * size}`)"
        )
    splits = []
    for first in itertools.combinations(range(n), size):
        rest = [i for i in range(n) if i not in first]
        for second in itertools.combinations(rest, size):
            if first < second:  # each unordered pair of sides once
                splits.append((first, second))
    step = max(1, len(splits) // MAX_SPLITS)
    splits = splits[::step][:MAX_SPLITS]
    tally = _Tally(rules)
    for first, second in splits:
        figs = figures_of(cell, [results[i] for i in first], [results[i] for i in second])
        assess(figs)
        tally.add(figs)
    totals = [cell_figures(r).get((TOTAL, "rps"), [math.nan])[0] for r in results]
    cv = 100 * statistics.stdev(totals) / statistics.fmean(totals) if not cost else math.nan
    return Calibration(
        cell=cell,
        repetitions=n,
        size=size,
        splits=len(splits),
        false_alarms=tally.alarms,
        total_noise_pct=tally.median(tally.widths),
        total_cv_pct=round(cv, 2),
        detectable_pct=round(detectable_pct(cv, size, SIGNIFICANCE), 2),
        # Welch's t-test on blocks has no permutation floor: one figure can pass alone
        fewest_figures=(
            min(tally.tests, 1) if cost else fewest_figures(size, size, tally.tests, SIGNIFICANCE)
        ),
        tests=tally.tests,
        largest_change_pct=round(tally.largest[0], 3),
        largest_change=tally.largest[1],
    )


def calibrate_pairs(
    before: Sequence[Result], after: Sequence[Result], size: int, rules: Sequence[Rule]
) -> list[Calibration]:
    """A paired A/A (`compare RUN --before A --after A2 --aa`: one server under two names,
    measured in one run): for each cell pair, every subset of `size` of the rounds both counted
    (at most MAX_SPLITS, in a fixed order) compared paired and gated as `compare` would; how
    often the gate fired, the total's interval and detectable change (medians over the
    subsets), and the largest change any figure showed."""
    whole = compare(before, after, paired=True)
    found = []
    for b, a in whole.pairs:
        label = b if a == b else f"{b} → {a}"
        old = [r for r in counted(before) if r.cell.name == b]
        new = [r for r in counted(after) if r.cell.name == a]
        rounds = sorted({r.repetition or 1 for r in old} & {r.repetition or 1 for r in new})
        if size < 2 or len(rounds) <= size:
            raise ConfigError(
                f"{label}: {len(rounds)} rounds paired; a paired A/A at --size {size} needs more "
                f"than {size} (and --size 2 or more), e.g. `--repeat {size + 2}`"
            )
        subsets = list(itertools.combinations(rounds, size))
        subsets = subsets[:: max(1, len(subsets) // MAX_SPLITS)][:MAX_SPLITS]
        tally = _Tally(rules)
        for subset in subsets:
            pick = set(subset)
            part = compare(
                [r for r in old if (r.repetition or 1) in pick],
                [r for r in new if (r.repetition or 1) in pick],
                paired=True,
            )
            tally.add(part.figures)
        total = next((f for f in whole.figures if f.name == TOTAL and f.cell == label), None)
        logs = (
            [math.log(x / y) for x, y in zip(total.after, total.before, strict=True)]
            if total and total.pairs
            else []
        )
        found.append(
            Calibration(
                cell=label,
                repetitions=len(rounds),
                size=size,
                splits=len(subsets),
                false_alarms=tally.alarms,
                total_noise_pct=tally.median(tally.widths),
                total_cv_pct=round(100 * statistics.stdev(logs), 2) if len(logs) > 1 else math.nan,
                detectable_pct=tally.median(tally.reach),
                fewest_figures=min(tally.tests, 1),
                tests=tally.tests,
                largest_change_pct=round(tally.largest[0], 3),
                largest_change=tally.largest[1],
            )
        )
    return found


# -- Markdown, for a terminal or a pull-request comment ----------------------------------------


def _pct(value: float | None) -> str:
    return "-" if value is None or not math.isfinite(value) else f"{value:+.1f}%"


def _share(value: float) -> str:
    return "-" if not math.isfinite(value) else f"{value:.1f}%"


def _num(value: float) -> str:
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:,.2f}"


def _row(f: Figure, paired: bool = False) -> str:
    interval = (
        f"{_pct(100 * (f.low - 1))} … {_pct(100 * (f.high - 1))}"
        if f.low is not None and f.high is not None
        else "-"
    )
    p = "-" if f.p_adjusted is None else f"{f.p_adjusted:.3f}"
    mark = f"**fails {', '.join(f.broken)}**" if f.broken else ""
    mark = mark or ("significant" if f.significant else "")
    detectable = ""
    if paired:
        reach = f.detectable_pct
        detectable = f" ±{reach:.1f}% |" if reach is not None and math.isfinite(reach) else " - |"
    return (
        f"| {f.cell} | {f.name} | {f.metric} | {_num(statistics.fmean(f.before))} | "
        f"{_num(statistics.fmean(f.after))} | {_pct(f.change_pct)} | {interval} | {p} |"
        f"{detectable} {mark} |"
    )


HEADER = (
    "| cell | figure | metric | before | after | change | 95% interval | p (BH) | |\n"
    "|---|---|---|---:|---:|---:|---|---:|---|"
)
# How a paired figure is tested, as the Markdown says it under either pairing.
_PAIRED_TEST = (
    "A change is the geometric mean of the rounds' ratios; its interval and p-value come from a "
    "one-sample t-test of their logarithms. Detectable: the smallest change the test finds 4 "
    "times in 5 with these rounds' spread (α 0.05): below it, 'no change' means 'none this "
    "large'."
)
# paired: with the smallest change the rounds' spread lets the test find 4 times in 5
PAIRED_HEADER = (
    "| cell | figure | metric | before | after | change | 95% interval | p (BH) | detectable "
    "| |\n|---|---|---|---:|---:|---:|---|---:|---:|---|"
)


def render(comparison: Comparison, rules: Sequence[Rule], failing: Sequence[Figure]) -> str:
    """The comparison as Markdown: the verdict first, then what changed, then every figure."""
    figures = comparison.figures
    tested = [f for f in figures if f.p_value is not None]
    totals = sum(f.name == TOTAL for f in tested)
    significant = [f for f in figures if f.significant]
    lines = ["## prefect-bench compare", ""]
    if rules:
        verdict = (
            f"**FAIL**: {len(failing)} figure(s) break {', '.join(r.text for r in rules)}"
            if failing
            else f"**PASS**: nothing significant breaks {', '.join(r.text for r in rules)}"
        )
        lines += [verdict, ""]
        if undecided := unsure(figures, rules):
            lines += [_unsure(undecided), ""]
    lines.append(
        f"{len(figures)} figures, {len(tested)} tested (not those equal in every repetition), "
        f"{len(significant)} significant after Benjamini-Hochberg (q = {SIGNIFICANCE:g}"
        + (f", the totals weighted to {TOTAL_SHARE:.0%} of it" if totals else "")
        + "); "
        "repetitions before/after: "
        + ", ".join(f"{c} {b}/{a}" for c, (b, a) in comparison.repetitions.items())
        + "."
    )
    before, after = max(comparison.repetitions.values(), key=lambda ba: smallest_p(*ba))
    timed = not figures or not all(f.per_block for f in figures)
    if timed and comparison.paired:
        how = (
            "Measured in a duet, paired by round: in each round both servers were started "
            "afresh, each pinned with one load process to CPUs of its own, and each endpoint's "
            "two windows ran at the same moment (`run --beside`, two servers)."
            if comparison.duet
            else "Measured together, paired by round: in each round the servers were started "
            "afresh and up at once, each endpoint's windows alternating between them (`run "
            "--beside --alternate`, or three servers or more), so a round's ratio after/before "
            "compares windows seconds apart, on the same machine at nearly the same moment."
            if comparison.together
            else "Paired by round: the two servers were measured in one run, a repetition of "
            "each in every round, so what drifts between rounds is in both sides of each "
            "round's ratio after/before."
        )
        lines.append(f"{how} {_PAIRED_TEST}")
    elif timed:
        lines.append(
            "Unpaired: the sides' repetitions are compared as two groups, so whatever the "
            "machine's speed did between them is in every ratio. Two servers measured in one "
            "run pair round by round: `compare RUN --before A --after B`."
        )
    if not timed and min(before, after) >= 2:
        lines.append(
            "Cost cells, several servers a side: each figure's samples are each fresh server's "
            "mean over its counted blocks (Welch's t-test), so how much two servers of the same "
            "code differ is in the test."
        )
    elif not timed:
        lines.append(
            "Cost cells, one server a side: each figure's samples are its counted blocks "
            "(Welch's t-test), which cannot show how much two fresh servers of the same code "
            "differ (up to 1.4% measured here): a threshold below that can fail on noise. "
            "`--repeat 3` on each side tests across servers instead."
        )
    # the cell with the fewest repetitions limits what any test can show
    elif min(before, after) < 2:
        lines.append(
            "A side has fewer than 2 repetitions: no interval or p-value can be told, so nothing "
            "is significant. Repeat the runs (`--repeat 4` or more)."
        )
    elif not comparison.paired:
        need = fewest_figures(before, after, len(tested), SIGNIFICANCE)
        alone = totals > 0 and smallest_p(before, after) < SIGNIFICANCE * TOTAL_SHARE / totals
        told = (
            f"With {before} and {after} repetitions the smallest p-value a permutation test "
            f"gives is {smallest_p(before, after):.3g}"
        )
        where = "a change of a cell's total can pass the correction alone; one elsewhere"
        if need > len(tested) and not alone:
            lines.append(f"{told}: no change can pass the correction. Repeat more.")
        elif need > 1:
            lines.append(
                f"{told}: {where if alone else 'a change'} must show in at least {need} of the "
                f"{len(tested)} figures to pass the correction (more repetitions make "
                "single-figure changes visible)."
            )
    for line in [*comparison.differences, *comparison.noisy]:
        lines.append(f"- warning: {line}")
    for line in comparison.dropped:
        lines.append(f"- not paired: {line}")
    lines.append("")
    paired = comparison.paired and timed
    header = PAIRED_HEADER if paired else HEADER
    shown = [f for f in figures if f.broken] + [f for f in significant if not f.broken]
    if shown:
        lines += ["### Significant changes", "", header, *(_row(f, paired) for f in shown), ""]
    totals = [f for f in figures if f.name == TOTAL]
    if totals:
        lines += ["### Cell totals (rate)", "", header, *(_row(f, paired) for f in totals), ""]
    lines += ["<details><summary>Every figure</summary>", "", header]
    lines += [_row(f, paired) for f in figures]
    lines += ["", "</details>", ""]
    return "\n".join(lines)


def _unsure(undecided: Sequence[Unsure]) -> str:
    """The figures the gate could not decide, and how many more repetitions would."""
    named = [
        f"{u.figure.cell} {u.figure.name} {u.figure.metric} {_pct(u.figure.change_pct)} "
        f"({u.text()})"
        for u in undecided[:MAX_UNSURE_NAMED]
    ]
    more = len(undecided) - len(named)
    return (
        f"**Unsure**: {len(undecided)} figure(s) whose 95% interval holds a threshold, neither "
        "broken nor clear of it; about this many would tell: "
        + "; ".join(named)
        + (f"; and {more} more" if more > 0 else "")
        + "."
    )


MAX_UNSURE_NAMED = 5


def render_calibrations(
    calibrations: Sequence[Calibration], rules: Sequence[Rule], paired: bool = False
) -> str:
    """A/A results as Markdown; `paired`: of calibrate_pairs."""
    gate_text = ", ".join(r.text for r in rules) or "any significant change"
    how = (
        f"Each pair of cells (one server under two names, measured in one run) compared paired "
        f"on every subset of its rounds of the size given (at most {MAX_SPLITS}), as `compare "
        f"--before/--after` would, gate: {gate_text}. Subsets share rounds, so they are not "
        "independent: the rate is an estimate. Total CV: the spread of the rounds' log ratio "
        "of the total; detectable: the paired test's own, the median over the subsets."
        if paired
        else f"Each cell's repetitions split into two sides of the same server every way (at "
        f"most {MAX_SPLITS} splits), each split compared as `compare` would, gate: "
        f"{gate_text}. Splits share repetitions, so they are not independent: the rate is an "
        "estimate."
    )
    lines = [
        "## prefect-bench A/A calibration",
        "",
        how,
        "",
        "| cell | repetitions | a side | splits | false alarms | rate | total CV | total ±95% "
        "| detectable change (total) | figures a change must move | largest change |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for c in calibrations:
        fewest = "none pass" if c.fewest_figures > c.tests else f"{c.fewest_figures} of {c.tests}"
        largest = _pct(c.largest_change_pct).lstrip("+")
        lines.append(
            f"| {c.cell} | {c.repetitions} | {c.size} | {c.splits} | {c.false_alarms} | "
            f"{c.false_positive_rate:.1%} | {_share(c.total_cv_pct)} | "
            f"{_share(c.total_noise_pct)} | {_share(c.detectable_pct)} | {fewest} | "
            + (f"{largest} ({c.largest_change})" if c.largest_change else "-")
            + " |"
        )
    lines += [
        "",
        "Detectable change: the change of the cell's total rate that a test with this many "
        + (
            "rounds finds 4 times in 5 at α 0.05, from their spread. "
            if paired
            else "repetitions a side finds 4 times in 5 at α 0.05, from the total's CV between "
            "repetitions (normal approximation). "
        )
        + "A gate threshold below it fails on noise or misses. "
        "Largest change: the widest change of any figure in any split, its size either way; "
        "a gate's threshold below it would fail on noise. Cost cells have no total rate: their "
        "floor is the largest change.",
        "",
    ]
    return "\n".join(lines)
