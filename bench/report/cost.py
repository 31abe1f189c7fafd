"""The Cost section: instructions per request (--cost cells, bench.cost) per endpoint and cell,
with the spread between their blocks, side by side for servers and versions."""

from __future__ import annotations

from collections.abc import Sequence

from bench.cost.functions import costed
from bench.report.document import Column, Section, Table, Value
from bench.results import Cost, Result

NOTE = (
    "Instructions the server executed per request (callgrind's Ir), the mean over counted "
    "blocks of requests sent one at a time after a warm-up block; ± is the spread between "
    "the blocks ((max − min) / mean). Two fresh servers of the same code differ by up to "
    "about 1% (the design notes' A/A). A cell after the first shows its ratio to the first "
    "cell's figure. compare, given two cost runs, gates on it (the metric instructions) and "
    "names the functions a change went to."
)


def fmt_instructions(value: float) -> str:
    """1234567 → "1.23 M", 45600 → "45.6 k"."""
    for scale, unit, digits in ((1e9, "G", 2), (1e6, "M", 2), (1e3, "k", 1)):
        if round(value / scale, digits) >= 1:  # 999,960 is "1.00 M", not "1000.0 k"
            return f"{value / scale:.{digits}f} {unit}"
    return f"{value:.0f}"


def cost_section(results: Sequence[Result]) -> Section | None:
    """The section for the --cost cells among `results` (one per cell, repetitions merged), or
    None when there are none."""
    cells = [r for r in results if r.config.cost and r.status != "skipped"]
    if not cells:
        return None
    names = [r.cell.name for r in cells]
    labels = [  # a cell of several runs: by its run too
        f"{r.cell.name} ({r.run_id})" if names.count(r.cell.name) > 1 else r.cell.name
        for r in cells
    ]
    rows: dict[str, dict[str, Cost]] = {}
    for result, label in zip(cells, labels, strict=True):
        for name, cost in costed(result):
            rows.setdefault(name, {})[label] = cost
    table = Table(
        "Instructions per request",
        [Column("endpoint / step"), *(Column(label, numeric=True) for label in labels)],
        bars=True,
    )
    for name, by_cell in rows.items():
        first = by_cell.get(labels[0])
        row = [Value(name)]
        for label in labels:
            cost = by_cell.get(label)
            if cost is None:
                row.append(Value("-", tone="muted"))
                continue
            text = f"{fmt_instructions(cost.per_request)} ±{cost.spread_pct:.1f}%"
            if label != labels[0] and first is not None and first.per_request:
                # three decimals: a 1.2% change is what a cost gate is for
                text += f" ({cost.per_request / first.per_request:.3f}×)"
            row.append(Value(text, cost.per_request))
        table.rows.append(row)
    section = Section("Cost", tables=[table], notes=[NOTE])
    for result, label in zip(cells, labels, strict=True):
        idle = [c.idle_per_s for _, c in costed(result) if c.idle_per_s is not None]
        if idle:
            section.notes.append(
                f"{label}: with no request to serve the server executed "
                f"{fmt_instructions(max(idle))} instructions a second (its timers), counted "
                "into a block by the clock: each figure's likely share of it is in the result "
                "(cost.idle_pct)."
            )
    return section
