"""Servers measured in one run, paired by round (`compare RUN --before A --after B` for every
server against the run's first): per cell, each rate's and median's change with its 95%
interval from the rounds' ratios, and a chart of the rounds' ratios of the cell's total rate.
A machine that drifts shows as rounds scattered around a steady ratio; a change as the ratio
itself moving away from 1.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from bench.compare import gate
from bench.compare.change import Figure
from bench.compare.metrics import TOTAL
from bench.core.errors import ConfigError
from bench.report.aggregate import display_order
from bench.report.document import Chart, Column, Section, Series, Table, Tone, Value
from bench.results import Result

TITLE = "Servers paired by round"
ABOUT = (
    "Each server against the run's first, its repetitions paired with the first's by the "
    "round they ran in (compare RUN --before A --after B): a change is the geometric mean "
    "of the rounds' ratios, its 95% interval that of a one-sample t-test of their logarithms, "
    "p corrected across the figures of each pair (Benjamini-Hochberg). Rates and medians; "
    "compare tests every figure and gates."
)
SHOWN = ("rps", "p50")


def pairs_section(results: Sequence[Result]) -> Section | None:
    """The section for every run of `results` holding two servers or more with repetitions
    paired in at least two rounds; None when there is none."""
    timed = [r for r in results if not r.config.cost]
    section = Section(TITLE, paragraphs=[ABOUT])
    table = Table(
        None,
        [
            Column("pair"),
            Column("figure"),
            Column("rounds", numeric=True),
            Column("change", numeric=True),
            Column("95% interval"),
            Column("p (BH)", numeric=True),
        ],
        grouped=True,
    )
    for run_id in dict.fromkeys(r.run_id for r in timed):
        run = [r for r in timed if r.run_id == run_id]
        servers = list(dict.fromkeys(r.cell.label for r in display_order(run)))
        for other in servers[1:]:
            try:
                before, after = gate.split_servers(run, servers[0], other)
                comparison = gate.compare(before, after, paired=True)
            except ConfigError:
                continue  # nothing of theirs pairs (other dbs, no ok result)
            shown = [
                f
                for f in comparison.figures
                if f.pairs and f.metric in SHOWN and len(f.before) >= 2
            ]
            if not shown:
                continue
            table.rows += [_row(f) for f in shown]
            section.charts.append(_chart(servers[0], other, comparison.figures))
            section.notes += [f"{servers[0]} → {other}: {line}" for line in comparison.dropped]
            if comparison.duet:
                section.notes.append(
                    f"{servers[0]} → {other}: measured in a duet (run --beside, two servers): "
                    "in each round both started afresh, each with its load on CPUs of its own, "
                    "their windows at the same moment"
                )
            elif comparison.together:
                section.notes.append(
                    f"{servers[0]} → {other}: measured together (run --beside, matrix "
                    "--together): in each round both started afresh, their windows alternating, "
                    "seconds apart"
                )
    if not table.rows:
        return None
    section.tables.append(table)
    return section


def _pct(ratio: float) -> str:
    return f"{100 * (ratio - 1):+.1f}%"


def _row(f: Figure) -> list[Value]:
    interval = "—"
    if f.low is not None and f.high is not None:
        interval = f"{_pct(f.low)} … {_pct(f.high)}"
    tone: Tone = ""
    if f.significant:
        better = f.ratio > 1 if f.metric == "rps" else f.ratio < 1
        tone = "good" if better else "bad"
    return [
        Value(f.cell),
        Value(f"{f.name} {f.metric}"),
        Value(str(len(f.before)), len(f.before)),
        Value(_pct(f.ratio), f.ratio, tone),
        Value(interval),
        Value("—" if f.p_adjusted is None else f"{f.p_adjusted:.3f}", f.p_adjusted),
    ]


def _chart(reference: str, other: str, figures: Sequence[Figure]) -> Chart:
    """The rounds' ratios of each cell's total rate (solid) and their geometric mean
    (dashed)."""
    series = []
    rounds = 0
    for f in figures:
        if f.name != TOTAL or f.metric != "rps" or not f.pairs:
            continue
        ratios = [a / b for b, a in zip(f.before, f.after, strict=True)]
        rounds = max(rounds, len(ratios))
        key = f.cell.rsplit(" → ", 1)[-1]  # the paired server's cell: its colour on the page
        points: list[tuple[float, float | None]] = list(enumerate(ratios, start=1))
        series.append(Series(key, points, f.cell))
        mean = math.exp(sum(map(math.log, ratios)) / len(ratios))
        series.append(
            Series(key, [(1, mean), (len(ratios), mean)], "", style="dashed", markers=False)
        )
    return Chart(
        f"{other} / {reference}: the total rate's ratio, round by round",
        "paired round",
        "ratio (log scale)",
        series,
        y_scale="log",
        x_ticks=[(k, str(k)) for k in range(1, rounds + 1)],
        note="Solid: each round's ratio; dashed: their geometric mean (the change).",
    )
