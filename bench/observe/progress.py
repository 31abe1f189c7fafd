"""What a running cell shows: a live rich view on a terminal, plain lines elsewhere."""

from __future__ import annotations

import time
from collections.abc import Callable

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from bench.results import EndpointResult, LatencyMs, ScenarioResult


def _row(name: str, c: int, rate: float, lat: LatencyMs | None, errors: int) -> list[str]:
    return [
        name,
        str(c),
        f"{rate:,.0f}" if rate >= 10 else f"{rate:,.1f}",
        f"{lat.p50:.2f}" if lat else "-",
        f"{lat.p99:.2f}" if lat else "-",
        f"{errors:,}" if errors else "",
    ]


def _summary(ep: EndpointResult) -> list[str]:
    return _row(ep.name, ep.concurrency, ep.rps, ep.latency_ms, sum(ep.errors.values()))


def _scenario_summary(s: ScenarioResult) -> list[str]:
    return _row(s.name, s.concurrency, s.per_s, s.duration_ms, sum(s.failed.values()))


def _seeded(done: int, total: int, started: float) -> str:
    rate = done / max(time.monotonic() - started, 1e-9)
    left = f", about {(total - done) / rate:,.0f} s left" if 0 < done < total else ""
    return f"{done:,} of {total:,} flow runs ({rate:,.0f}/s{left})"


class Progress:
    """Plain progress lines; the base for the live view. `verbose` (-v): a failure's long
    form (its details and traceback) is shown too."""

    def __init__(self, console: Console, cell: str, verbose: bool = False) -> None:
        self.console = console
        self.cell = cell
        self.verbose = verbose

    def stage(self, text: str) -> None:
        self.console.print(f"[bold]{self.cell}[/bold]: {text}", soft_wrap=True)

    def failure(self, text: str) -> None:
        """The long form of why the cell failed (bench.core.failures.long_form): shown with
        `verbose`, before the cell's one line; the cell's log keeps it either way."""
        if self.verbose:
            self.console.print(text, markup=False, highlight=False, style="dim", soft_wrap=True)

    def measuring(self, endpoint: str, concurrency: int) -> Callable[[int], None] | None:
        """Called before a measurement; returns a callback taking the count so far, or None."""
        return None

    def seeding(self, total: int) -> Callable[[int], None]:
        """Called before seeding `total` flow runs; returns a callback taking how many are
        done (plain lines: one every tenth)."""
        started = time.monotonic()
        step = max(total // 10, 1)

        def update(done: int) -> None:
            if done % step == 0 or done == total:
                self.console.print(f"  seeded {_seeded(done, total, started)}")

        return update

    def measured(self, ep: EndpointResult) -> None:
        if ep.cost is not None:  # --cost: its timed figures are those under callgrind
            idle = f", ~{ep.cost.idle_pct:.1f}% of it idle work" if ep.cost.idle_pct else ""
            self.console.print(
                f"  {ep.name}: {ep.cost.per_request / 1e6:.3f} M instructions per request "
                f"(spread {ep.cost.spread_pct:.2f}% over {ep.cost.blocks} blocks{idle})"
            )
            return
        name, c, rps, p50, p99, errors = _summary(ep)
        offered = f" of {ep.offered_rps:g} offered" if ep.offered_rps else ""
        extra = f", {errors} errors" if errors else ""
        self.console.print(f"  {name} c={c}: {rps} rps{offered}, p50 {p50} ms, p99 {p99} ms{extra}")

    def measured_scenario(self, s: ScenarioResult) -> None:
        name, c, rate, p50, p99, failed = _scenario_summary(s)
        extra = f", {failed} failed" if failed else ""
        if retried := sum(step.retries for step in s.steps):
            extra += f", {retried} tries sent again"
        lost = {k: d.lost for k, d in s.delivery.items() if d.lost}
        extra += "".join(f", {n} {k.replace('_', ' ')} lost" for k, n in lost.items())
        if s.lag_ms is not None:
            extra += f", lag p50 {s.lag_ms.p50:.0f} ms p99 {s.lag_ms.p99:.0f} ms"
        if s.lag_unresolved:
            extra += f", {s.lag_unresolved} sampled not found"
        for t in s.timings:
            if t.latency_ms is not None:
                extra += f", {t.name} p50 {t.latency_ms.p50:.0f} ms p99 {t.latency_ms.p99:.0f} ms"
        self.console.print(f"  {name} c={c}: {rate}/s, p50 {p50} ms, p99 {p99} ms{extra}")
        for problem in s.problems:
            self.console.print(f"    problem: {problem}", markup=False, highlight=False)

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        return None


class LiveProgress(Progress):
    """A table of finished measurements and the current one's live rate."""

    def __init__(self, console: Console, cell: str, verbose: bool = False) -> None:
        super().__init__(console, cell, verbose)
        self._stage = "starting"
        self._rows: list[list[str]] = []
        self._current = ""
        self._live = Live(console=console, refresh_per_second=4, get_renderable=self._render)

    def _render(self) -> Group:
        table = Table(title=f"{self.cell}: {self._stage}", title_justify="left")
        for column in ("endpoint", "c", "rps", "p50 ms", "p99 ms", "errors"):
            table.add_column(column, justify="left" if column == "endpoint" else "right")
        for row in self._rows:
            table.add_row(*row)
        return Group(table, Text(self._current, style="cyan"))

    def stage(self, text: str) -> None:
        self._stage = text
        self._current = ""

    def measuring(self, endpoint: str, concurrency: int) -> Callable[[int], None]:
        label = f"{endpoint} c={concurrency}"
        self._current = f"{label}: warming up"
        last: list[float] = []

        def update(count: int) -> None:
            # the rate since the previous update: what the server does right now (the first
            # update only starts the clock: the time before it includes the warmup)
            now = time.monotonic()
            rate = f", {(count - last[1]) / max(now - last[0], 1e-9):,.0f} rps now" if last else ""
            last[:] = [now, count]
            self._current = f"{label}: {count:,} responses{rate}"

        return update

    def seeding(self, total: int) -> Callable[[int], None]:
        started = time.monotonic()

        def update(done: int) -> None:
            self._current = f"seeding: {_seeded(done, total, started)}"

        return update

    def measured(self, ep: EndpointResult) -> None:
        self._rows.append(_summary(ep))
        self._current = ""

    def measured_scenario(self, s: ScenarioResult) -> None:
        self._rows.append(_scenario_summary(s))
        self._current = ""

    def __enter__(self) -> LiveProgress:
        self._live.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._live.stop()


def progress_for(console: Console, cell: str, verbose: bool = False) -> Progress:
    """Live on a terminal, plain lines otherwise (CI logs, pipes)."""
    if console.is_terminal and not console.is_dumb_terminal:
        return LiveProgress(console, cell, verbose)
    return Progress(console, cell, verbose)
