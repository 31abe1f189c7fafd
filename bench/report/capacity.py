"""The Capacity section: each cell's knee from `--rate-sweep` (bench.compare.capacity), per
endpoint and level, and latency against the offered rate with the objective and the knees drawn."""

from __future__ import annotations

from collections.abc import Sequence

from bench.report.document import Chart, Column, Mark, Section, Series, Table, Value
from bench.report.numbers import MISSING
from bench.results import Result, SweepResult

NOTE = (
    "The knee: the highest offered rate (open model, latency from each intended send time) at "
    "which the server held the rate (achieved >= 95% of it, <= 1% of sends late) and kept the "
    "latency objective, every lower rate of the sweep kept too. ≥: the highest rate swept was "
    "kept, the knee lies above it. '-': not even the lowest rate was kept. A sweep stops after "
    "two rates in a row are missed."
)


def _key(s: SweepResult) -> tuple[str, int]:
    return s.name, s.concurrency


def _knee_value(s: SweepResult | None) -> Value:
    if s is None:
        return Value(MISSING)
    if s.knee_rps is None:
        return Value("-", tone="bad")
    top = max(p.offered_rps for p in s.points)
    bound = "≥ " if s.knee_rps == top else ""
    return Value(f"{bound}{s.knee_rps:g}", number=s.knee_rps)


def capacity_section(results: Sequence[Result], labels: Sequence[str]) -> Section | None:
    """The section, for results with sweeps (`labels` name each result's column); None without."""
    swept = [(label, r) for label, r in zip(labels, results, strict=True) if r.sweeps]
    if not swept:
        return None
    keys = list(dict.fromkeys(_key(s) for _, r in swept for s in r.sweeps))
    by_result = [{_key(s): s for s in r.sweeps} for _, r in swept]
    slos = sorted({s.slo for _, r in swept for s in r.sweeps})
    table = Table(
        f"Highest rate that keeps {', '.join(slos)} (requests/s)",
        [Column("endpoint"), Column("c", numeric=True)]
        + [Column(label, numeric=True) for label, _ in swept],
        bars=True,
    )
    charts = []
    for name, c in keys:
        found = [sweeps.get((name, c)) for sweeps in by_result]
        table.rows.append([Value(name), Value(str(c))] + [_knee_value(s) for s in found])
        lines = [(label, s) for (label, _), s in zip(swept, found, strict=True)]
        charts.append(_chart(name, c, lines))
    return Section("Capacity", tables=[table], charts=[c for c in charts if c], notes=[NOTE])


def _chart(name: str, c: int, lines: Sequence[tuple[str, SweepResult | None]]) -> Chart | None:
    present = [(label, s) for label, s in lines if s is not None]
    if not present:
        return None
    percentile = present[0][1].slo.split("<", 1)[0]
    series, marks = [], []
    for label, s in present:
        points = [
            (p.offered_rps, getattr(p.latency_ms, percentile) if p.latency_ms else None)
            for p in s.points
        ]
        series.append(Series(label, points, label=percentile))
        if s.knee_rps is not None:
            marks.append(Mark(s.knee_rps, f"knee {s.knee_rps:g}"))
    rates = [p.offered_rps for _, s in present for p in s.points]
    slo = present[0][1].slo
    limit = float(slo.split("<", 1)[1].removesuffix("ms"))
    edges = [(min(rates), limit), (max(rates), limit)]
    series.append(Series("objective", edges, label=slo, style="dashed", markers=False))
    return Chart(
        f"{name} c={c}: {percentile} against the offered rate",
        "offered rate (requests/s)",
        f"{percentile} latency (ms)",
        series,
        y_scale="log",
        marks=marks,
        note="Dashed: the objective; vertical lines: each cell's knee.",
    )
