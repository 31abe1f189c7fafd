"""`compare BEFORE AFTER`: is a difference between two sets of repeated runs real, and does it
break a gate?

Each counted repetition (an ok result, not discarded) gives one value per figure: an endpoint's
rps, p50 and p99 at one level, a scenario's rate and its steps' p50 and p99, the cell's total
rate. A figure's change is mean(after) / mean(before); its 95% interval comes from resampling
the repetitions of each side (scipy.stats.bootstrap), its p-value from a permutation test on
them (scipy.stats.permutation_test, exact for the few repetitions a side has). Repetitions, not
requests, are resampled: requests of one run share its server process and database, and the
noise between runs is larger than within one. Every p-value of the comparison is then corrected
for the many tests made at once (Benjamini-Hochberg, scipy.stats.false_discovery_control), so
that testing ~100 figures does not find ~5 changes in noise.

A gate (`--fail-on 'rps<-5%'`) fails on a figure whose change is beyond its threshold and whose
corrected p-value is below SIGNIFICANCE: both, so neither noise nor a tiny real change fails it.
"""

from __future__ import annotations

import itertools
import math
import re
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel
from scipy import stats

from bench.core.errors import ConfigError
from bench.results import Result

SIGNIFICANCE = 0.05
CONFIDENCE = 0.95
RESAMPLES = 2000
# The settings of a measurement that must match for two sides to be compared: what the
# servers are asked to do and how they are measured. The servers' own settings (servers.toml,
# the Prefect version) are what is compared; how often a cell was repeated is not a setting.
MEASUREMENT_SETTINGS = (
    "workload",
    "mode",
    "duration_s",
    "warmup_s",
    "concurrency",
    "rate",
    "engine_procs",
    "server_cpus",
    "client_cpus",
    "tasks",
    "no_services",
    "preload",
    "preload_shape",
)
MACHINE_KEYS = ("hostname", "cpu_model", "cpu_count")

Metric = Literal["rps", "p50", "p99"]
# rps: higher is better; latencies: lower.
HIGHER_IS_BETTER = {"rps": True, "p50": False, "p99": False}


@dataclass(frozen=True)
class Rule:
    """`rps<-5%`: fail when the rate fell by more than 5%; `p99>+10%`: when p99 rose by more."""

    metric: Metric
    below: bool
    pct: float

    @property
    def text(self) -> str:
        return f"{self.metric}{'<' if self.below else '>'}{self.pct:+g}%"

    def broken_by(self, change_pct: float) -> bool:
        return change_pct < self.pct if self.below else change_pct > self.pct


_RULE = re.compile(r"^\s*(rps|p50|p99)\s*([<>])\s*([+-]?\d+(?:\.\d+)?)\s*%\s*$")


def parse_rule(text: str) -> Rule:
    """A --fail-on expression; ConfigError with an example for anything else."""
    match = _RULE.match(text)
    if not match:
        raise ConfigError(
            f"--fail-on {text!r}: expected METRIC<CHANGE% or METRIC>CHANGE% with METRIC one of "
            "rps, p50, p99, e.g. --fail-on 'rps<-5%' --fail-on 'p99>+10%'"
        )
    metric, sign, pct = match.groups()
    return Rule(metric, sign == "<", float(pct))  # type: ignore[arg-type]


@dataclass
class Figure:
    """One figure of one cell on both sides, and what the comparison found."""

    cell: str
    name: str
    metric: Metric
    before: list[float]
    after: list[float]
    ratio: float = math.nan
    low: float | None = None
    high: float | None = None
    p_value: float | None = None
    p_adjusted: float | None = None
    broken: list[str] = field(default_factory=list)

    @property
    def change_pct(self) -> float:
        return 100 * (self.ratio - 1)

    @property
    def significant(self) -> bool:
        return self.p_adjusted is not None and self.p_adjusted < SIGNIFICANCE

    @property
    def worse(self) -> bool:
        return (self.ratio < 1) == HIGHER_IS_BETTER[self.metric]


def cell_figures(result: Result) -> dict[tuple[str, Metric], float]:
    """Every figure one repetition gives: (name, metric) → value."""
    out: dict[tuple[str, Metric], float] = {}
    total = 0.0
    for ep in result.endpoints:
        name = f"{ep.name} c={ep.concurrency}"
        out[(name, "rps")] = ep.rps
        total += ep.rps
        if ep.latency_ms is not None:
            out[(name, "p50")] = ep.latency_ms.p50
            out[(name, "p99")] = ep.latency_ms.p99
    for sc in result.scenarios:
        name = f"{sc.name} c={sc.concurrency}"
        out[(name, "rps")] = sc.per_s
        total += sc.per_s
        if sc.duration_ms is not None:
            out[(name, "p50")] = sc.duration_ms.p50
            out[(name, "p99")] = sc.duration_ms.p99
        for step in sc.steps:
            if step.latency_ms is not None:
                out[(f"{name} {step.name}", "p50")] = step.latency_ms.p50
                out[(f"{name} {step.name}", "p99")] = step.latency_ms.p99
    if result.endpoints or result.scenarios:
        out[("total", "rps")] = total
    return out


def _mean_ratio(before: np.ndarray, after: np.ndarray, axis: int = -1) -> np.ndarray:
    return np.mean(after, axis=axis) / np.mean(before, axis=axis)


def _mean_difference(before: np.ndarray, after: np.ndarray, axis: int = -1) -> np.ndarray:
    return np.mean(after, axis=axis) - np.mean(before, axis=axis)


def measure_change(figure: Figure, seed: int = 0) -> None:
    """Fill in the ratio, its interval and the raw p-value (at least 2 repetitions a side for
    an interval and a p-value; the ratio alone with fewer)."""
    before, after = np.asarray(figure.before), np.asarray(figure.after)
    if before.mean() == 0:
        return
    figure.ratio = float(after.mean() / before.mean())
    if min(len(before), len(after)) < 2:
        return
    if np.ptp(np.concatenate([before, after])) == 0:
        figure.low = figure.high = figure.ratio
        figure.p_value = 1.0
        return
    rng = np.random.default_rng(seed)
    interval = stats.bootstrap(
        (before, after),
        _mean_ratio,
        vectorized=True,
        n_resamples=RESAMPLES,
        confidence_level=CONFIDENCE,
        method="percentile",
        rng=rng,
    ).confidence_interval
    figure.low, figure.high = float(interval.low), float(interval.high)
    figure.p_value = float(
        stats.permutation_test(
            (before, after),
            _mean_difference,
            permutation_type="independent",
            vectorized=True,
            n_resamples=20_000,
            alternative="two-sided",
            rng=rng,
        ).pvalue
    )


def correct(figures: Sequence[Figure]) -> None:
    """Benjamini-Hochberg over every figure tested."""
    tested = [f for f in figures if f.p_value is not None]
    if not tested:
        return
    adjusted = stats.false_discovery_control([f.p_value for f in tested], method="bh")
    for f, p in zip(tested, adjusted, strict=True):
        f.p_adjusted = float(p)


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


def counted(results: Iterable[Result]) -> list[Result]:
    """The repetitions that count: ok and not discarded."""
    return [r for r in results if r.status == "ok" and not r.discarded]


def by_cell(results: Iterable[Result]) -> dict[str, list[Result]]:
    out: dict[str, list[Result]] = {}
    for r in counted(results):
        out.setdefault(r.cell.name, []).append(r)
    return out


def figures_of(cell: str, before: Sequence[Result], after: Sequence[Result]) -> list[Figure]:
    """The figures both sides of a cell have, tested (not yet corrected)."""
    b = [cell_figures(r) for r in before]
    a = [cell_figures(r) for r in after]
    keys = set.intersection(*(set(f) for f in [*b, *a]))
    out = []
    for name, metric in sorted(keys, key=lambda k: (k[0] != "total", k[0], k[1])):
        figure = Figure(
            cell, name, metric, [f[(name, metric)] for f in b], [f[(name, metric)] for f in a]
        )
        measure_change(figure)
        out.append(figure)
    return out


def settings_differences(before: Sequence[Result], after: Sequence[Result]) -> list[str]:
    """What differs between the sides' measurement settings and machines, one line each."""
    lines = []
    for what, keys, get in (
        ("measurement setting", MEASUREMENT_SETTINGS, lambda r, k: getattr(r.config, k, None)),
        ("machine", MACHINE_KEYS, lambda r, k: getattr(r.environment, k, None)),
    ):
        for key in keys:
            old = sorted({repr(get(r, key)) for r in before})
            new = sorted({repr(get(r, key)) for r in after})
            if old != new:
                lines.append(f"{what} {key}: {', '.join(old)} before, {', '.join(new)} after")
    return lines


@dataclass
class Comparison:
    """A whole comparison: the cells paired, every figure tested and corrected."""

    pairs: list[tuple[str, str]]  # (before cell, after cell)
    figures: list[Figure]
    differences: list[str]
    repetitions: dict[str, tuple[int, int]]
    noisy: list[str] = field(default_factory=list)


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


def compare(before: Sequence[Result], after: Sequence[Result]) -> Comparison:
    """Pair the sides' cells and test every figure they share; ConfigError for a side with no
    counted result or sides with no cell in common."""
    old, new = by_cell(before), by_cell(after)
    for side, cells in (("BEFORE", old), ("AFTER", new)):
        if not cells:
            raise ConfigError(f"{side} holds no ok result to compare")
    pairs = pair_cells(old, new)
    figures: list[Figure] = []
    differences: list[str] = []
    for b, a in pairs:
        label = b if a == b else f"{b} → {a}"
        figures += figures_of(label, old[b], new[a])
        differences += [f"{label}: {d}" for d in settings_differences(old[b], new[a])]
    correct(figures)
    repetitions = {(b if a == b else f"{b} → {a}"): (len(old[b]), len(new[a])) for b, a in pairs}
    sides = [("before", old[b]) for b, _ in pairs] + [("after", new[a]) for _, a in pairs]
    noisy = [
        f"{side}: {r.cell.name} repetition {r.repetition or 1} was measured on a noisy machine: "
        + "; ".join(r.noise[:2])
        for side, runs in sides
        for r in runs
        if r.noisy
    ]
    return Comparison(pairs, figures, differences, repetitions, noisy)


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

    @property
    def false_positive_rate(self) -> float:
        return self.false_alarms / self.splits if self.splits else math.nan


MAX_SPLITS = 70


class CalibrationReport(BaseModel):
    """What `compare --aa` keeps beside the results it read."""

    rules: list[str]
    cells: list[dict[str, Any]]


def calibrate(
    cell: str, results: Sequence[Result], size: int, rules: Sequence[Rule]
) -> Calibration:
    """Split the cell's counted repetitions into disjoint sides of `size` every way (at most
    MAX_SPLITS, in a fixed order) and gate each split as a comparison of its own."""
    results = counted(results)
    n = len(results)
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
    alarms, widths, tests = 0, [], 0
    for first, second in splits:
        figs = figures_of(cell, [results[i] for i in first], [results[i] for i in second])
        correct(figs)
        tests = len(figs)
        alarms += bool(gate(figs, rules))
        total = next((f for f in figs if f.name == "total"), None)
        if total and total.low is not None and total.high is not None:
            widths.append(50 * (total.high - total.low) / total.ratio)
    totals = [cell_figures(r).get(("total", "rps"), 0.0) for r in results]
    cv = 100 * statistics.stdev(totals) / statistics.fmean(totals) if n > 1 else math.nan
    # normal approximation: (z_0.975 + z_0.8) * CV * sqrt(2 / size)
    detectable = (stats.norm.ppf(0.975) + stats.norm.ppf(0.8)) * cv * math.sqrt(2 / size)
    return Calibration(
        cell=cell,
        repetitions=n,
        size=size,
        splits=len(splits),
        false_alarms=alarms,
        total_noise_pct=round(statistics.median(widths), 2) if widths else math.nan,
        total_cv_pct=round(cv, 2),
        detectable_pct=round(float(detectable), 2),
        fewest_figures=fewest_figures(size, size, tests),
        tests=tests,
    )


def smallest_p(before: int, after: int) -> float:
    """The smallest two-sided p-value an exact permutation test of the difference of means can
    give with these many values a side: the two most extreme of C(n, before) splits."""
    return min(1.0, 2 / math.comb(before + after, before))


def fewest_figures(before: int, after: int, tests: int) -> int:
    """How many of `tests` figures must all reach `smallest_p` before Benjamini-Hochberg lets
    them through: it passes the k smallest p-values when the k-th is ≤ k·q / tests."""
    if not tests:
        return 0
    return max(1, math.ceil(smallest_p(before, after) * tests / SIGNIFICANCE))


# -- Markdown, for a terminal or a pull-request comment ----------------------------------------


def _pct(value: float | None) -> str:
    return "-" if value is None or not math.isfinite(value) else f"{value:+.1f}%"


def _num(value: float) -> str:
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:,.2f}"


def _row(f: Figure) -> str:
    interval = (
        f"{_pct(100 * (f.low - 1))} … {_pct(100 * (f.high - 1))}"
        if f.low is not None and f.high is not None
        else "-"
    )
    p = "-" if f.p_adjusted is None else f"{f.p_adjusted:.3f}"
    mark = f"**fails {', '.join(f.broken)}**" if f.broken else ""
    mark = mark or ("significant" if f.significant else "")
    return (
        f"| {f.cell} | {f.name} | {f.metric} | {_num(statistics.fmean(f.before))} | "
        f"{_num(statistics.fmean(f.after))} | {_pct(f.change_pct)} | {interval} | {p} | {mark} |"
    )


HEADER = (
    "| cell | figure | metric | before | after | change | 95% interval | p (BH) | |\n"
    "|---|---|---|---:|---:|---:|---|---:|---|"
)


def render(comparison: Comparison, rules: Sequence[Rule], failing: Sequence[Figure]) -> str:
    """The comparison as Markdown: the verdict first, then what changed, then every figure."""
    figures = comparison.figures
    significant = [f for f in figures if f.significant]
    lines = ["## prefect-bench compare", ""]
    if rules:
        verdict = (
            f"**FAIL**: {len(failing)} figure(s) break {', '.join(r.text for r in rules)}"
            if failing
            else f"**PASS**: nothing significant breaks {', '.join(r.text for r in rules)}"
        )
        lines += [verdict, ""]
    lines.append(
        f"{len(figures)} figures tested, {len(significant)} significant after Benjamini-Hochberg "
        f"(q = {SIGNIFICANCE:g}); repetitions before/after: "
        + ", ".join(f"{c} {b}/{a}" for c, (b, a) in comparison.repetitions.items())
        + "."
    )
    # the cell with the fewest repetitions limits what any test can show
    before, after = max(comparison.repetitions.values(), key=lambda ba: smallest_p(*ba))
    if min(before, after) < 2:
        lines.append(
            "A side has fewer than 2 repetitions: no interval or p-value can be told, so nothing "
            "is significant. Repeat the runs (`--repeat 4` or more)."
        )
    else:
        need = fewest_figures(before, after, len(figures))
        told = (
            f"With {before} and {after} repetitions the smallest p-value a permutation test "
            f"gives is {smallest_p(before, after):.3g}"
        )
        if need > len(figures):
            lines.append(f"{told}: no change can pass the correction. Repeat more.")
        elif need > 1:
            lines.append(
                f"{told}: a change must show in at least {need} of the {len(figures)} figures "
                "to pass the correction (more repetitions make single-figure changes visible)."
            )
    for line in [*comparison.differences, *comparison.noisy]:
        lines.append(f"- warning: {line}")
    lines.append("")
    shown = [f for f in figures if f.broken] + [f for f in significant if not f.broken]
    if shown:
        lines += ["### Significant changes", "", HEADER, *(_row(f) for f in shown), ""]
    totals = [f for f in figures if f.name == "total"]
    if totals:
        lines += ["### Cell totals (rate)", "", HEADER, *(_row(f) for f in totals), ""]
    lines += ["<details><summary>Every figure</summary>", "", HEADER]
    lines += [_row(f) for f in figures]
    lines += ["", "</details>", ""]
    return "\n".join(lines)


def render_calibrations(calibrations: Sequence[Calibration], rules: Sequence[Rule]) -> str:
    """A/A results as Markdown."""
    gate_text = ", ".join(r.text for r in rules) or "any significant change"
    lines = [
        "## prefect-bench A/A calibration",
        "",
        f"Each cell's repetitions split into two sides of the same server every way (at most "
        f"{MAX_SPLITS} splits), each split compared as `compare` would, gate: {gate_text}. "
        "Splits share repetitions, so they are not independent: the rate is an estimate.",
        "",
        "| cell | repetitions | a side | splits | false alarms | rate | total CV | total ±95% "
        "| detectable change (total) | figures a change must move |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for c in calibrations:
        fewest = "none pass" if c.fewest_figures > c.tests else f"{c.fewest_figures} of {c.tests}"
        lines.append(
            f"| {c.cell} | {c.repetitions} | {c.size} | {c.splits} | {c.false_alarms} | "
            f"{c.false_positive_rate:.1%} | {c.total_cv_pct:.1f}% | {c.total_noise_pct:.1f}% | "
            f"{c.detectable_pct:.1f}% | {fewest} |"
        )
    lines += [
        "",
        "Detectable change: the change of the cell's total rate that a test with this many "
        "repetitions a side finds 4 times in 5 at α 0.05, from the total's CV between "
        "repetitions (normal approximation). A gate threshold below it fails on noise or misses.",
        "",
    ]
    return "\n".join(lines)
