"""Shared by the report's tests: the results they read, and small ways to change and read them."""

from __future__ import annotations

import io
import os
from html.parser import HTMLParser

from rich.console import Console

from bench.report import Report, build, render_terminal
from bench.report.document import Table
from bench.results import Result
from tests.helpers import RESOURCES as ALL_RESOURCES

RESOURCES = ALL_RESOURCES / "report"
RUN = "20261126T164000Z-3f2a"
RUN_DIR = RESOURCES / RUN
GOLDEN = RESOURCES / "report.md.golden"
# An open-model run (--rate) whose zig cell had server and client on overlapping CPUs.
OPEN_DIR = ALL_RESOURCES / "report_open"
OPEN_GOLDEN = OPEN_DIR / "report.md.golden"
UPDATE_GOLDEN = os.environ.get("BENCH_UPDATE_GOLDEN") == "1"


def by_cell(results: list[Result], name: str) -> Result:
    return next(r for r in results if r.cell.name == name)


def terminal_text(report: Report) -> str:
    console = Console(file=io.StringIO(), width=200, color_system=None)
    for renderable in render_terminal(report):
        console.print(renderable)
    out = console.file
    assert isinstance(out, io.StringIO)
    return out.getvalue()


def with_env(result: Result, **changes: object) -> Result:
    return result.model_copy(update={"environment": result.environment.model_copy(update=changes)})


def with_config(result: Result, **changes: object) -> Result:
    return result.model_copy(update={"config": result.config.model_copy(update=changes)})


def speedup_table(results: list[Result]) -> Table:
    report = build(results)
    section = next(s for s in report.sections if s.title.startswith("Speedup"))
    assert section.tables, section.paragraphs
    return section.tables[0]


def column(table: Table, header_start: str) -> dict[tuple[str, str], str]:
    """One column of a table as {(endpoint, c): text}."""
    index = next(i for i, c in enumerate(table.columns) if c.header.startswith(header_start))
    return {(row[0].text, row[1].text): row[index].text for row in table.rows}


class _Checker(HTMLParser):
    """Checks that every non-void element is closed in order; collects attributes."""

    VOID = frozenset({"meta", "br", "hr", "img", "link", "input", "col", "wbr"})

    def __init__(self) -> None:
        super().__init__()
        self.stack: list[str] = []
        self.problems: list[str] = []
        self.attrs: list[tuple[str, str | None]] = []
        self.tags: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        self.attrs += attrs
        if tag not in self.VOID:
            self.stack.append(tag)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        self.attrs += attrs

    def handle_endtag(self, tag: str) -> None:
        if not self.stack or self.stack[-1] != tag:
            self.problems.append(f"</{tag}> closes {self.stack[-1:] or 'nothing'}")
        else:
            self.stack.pop()


def check_html(page: str) -> _Checker:
    checker = _Checker()
    checker.feed(page)
    checker.close()
    assert checker.problems == []
    assert checker.stack == []
    assert page.startswith("<!DOCTYPE html>")
    return checker


ZIG_MISSING = (
    "no zig prefect-server given: pass --zig-binary PATH (or set BENCH_ZIG_BINARY), or --zig-src "
    "DIR to build a checkout (or set BENCH_ZIG_SRC)"
)


def skipped_as(result: Result, cell: str, reason: str) -> Result:
    server, db, broker = cell.split("-")
    where = result.cell.model_copy(update={"server": server, "db": db, "broker": broker})
    return result.model_copy(update={"cell": where, "error": reason})


def open_table(results: list[Result]) -> Table | None:
    section = next(s for s in build(results).sections if s.title == "Endpoints")
    return next((t for t in section.tables if t.title and t.title.startswith("Open model")), None)


def with_rate_held(result: Result, late_sends: int, rate_held: bool | None) -> Result:
    eps = [
        ep.model_copy(update={"late_sends": late_sends, "rate_held": rate_held})
        for ep in result.endpoints
    ]
    return result.model_copy(update={"endpoints": eps})


def with_slices(result: Result, scale: float, spread: float) -> Result:
    """Every endpoint's rps times `scale`, with four slices spread ±`spread` around it."""
    eps = []
    for ep in result.endpoints:
        rps = ep.rps * scale
        slices = [rps * (1 + spread * d) for d in (-1, -0.5, 0.5, 1)]
        eps.append(ep.model_copy(update={"rps": rps, "rps_slices": slices}))
    return result.model_copy(update={"endpoints": eps})


def later(result: Result, run_id: str, day: int) -> Result:
    return result.model_copy(update={"run_id": run_id, "started_at": f"2026-11-{day}T09:00:00Z"})


def runs(result: Result, scales: list[float], prefix: str) -> list[Result]:
    """Copies of `result` as runs `prefix`0, 1, … with every rps times each scale."""
    out = []
    for i, scale in enumerate(scales):
        eps = [ep.model_copy(update={"rps": ep.rps * scale}) for ep in result.endpoints]
        out.append(result.model_copy(update={"run_id": f"{prefix}{i}", "endpoints": eps}))
    return out


def baseline_table(baseline: list[Result], results: list[Result]) -> Table:
    section = build(results, baseline).sections[-1]
    assert section.title == "Against the baseline"
    [table] = section.tables
    return table


SCENARIO_RESULTS = ALL_RESOURCES / "report_scenarios"

# The events workload: two hand-made results of one run (python × sqlite × memory and × redis,
# --rate 100 over 1 and 4 websockets) with lag, probes and delivery of events and task runs; the
# redis cell at c=4 has 3 unresolved probes.
EVENTS_RESULTS = ALL_RESOURCES / "report_events"


def scenario_table(report: Report, title_start: str) -> Table:
    section = next(s for s in report.sections if s.title == "Scenarios")
    return next(t for t in section.tables if t.title and t.title.startswith(title_start))


def with_scenarios(result: Result, **changes: object) -> Result:
    """`result` with `changes` made to every one of its scenarios."""
    return result.model_copy(
        update={"scenarios": [s.model_copy(update=changes) for s in result.scenarios]}
    )


def as_zig(result: Result, scale: float) -> Result:
    """`result` as if the zig server had measured it, every scenario's rate times `scale`."""
    scenarios = [
        s.model_copy(
            update={
                "per_s": s.per_s * scale,
                "per_s_slices": [x * scale for x in s.per_s_slices or []] or None,
            }
        )
        for s in result.scenarios
    ]
    cell = result.cell.model_copy(update={"server": "zig"})
    return result.model_copy(update={"cell": cell, "scenarios": scenarios})


# One run with --repeat 3 of python and zig × sqlite × memory, repetition 1 of each discarded as
# a warm-up (its rates at 0.8×), 2 and 3 at 1.0× and 1.04×, with histograms (see its README).
REPEAT_RESULTS = ALL_RESOURCES / "report_repeat"


def repetition_of(results: list[Result], cell: str, k: int) -> Result:
    return next(r for r in results if r.cell.name == cell and r.repetition == k)
