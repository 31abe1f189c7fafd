"""The matrix run: every cell in turn under one run id, each in its own process, in rounds.

With `--repeat N|auto` each round runs one repetition of every cell that still needs one, and
each round goes through the cells in the reverse order of the round before (1 2 3, 3 2 1,
1 2 3, ...): a machine that drifts (warms up, throttles, gets a neighbour) then moves every
cell alike, where running each cell's repetitions back to back would lay the drift on the
cells measured last. Which cell is done is decided by its own `run` (bench.cells.repeat.decide) and
read back from the result it wrote.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console
from rich.table import Table

from bench.cells.commands import EXIT_INTERRUPTED, cell_argv
from bench.cells.repeat import MAX_AUTO, STOP_REASONS, earlier_repetitions
from bench.config.run import RunConfig
from bench.results import Cell, Result


@dataclass
class CellRounds:
    """One cell's repetitions in the matrix so far."""

    cell: Cell
    results: list[Result] = field(default_factory=list)
    done: bool = False

    @property
    def last(self) -> Result | None:
        return self.results[-1] if self.results else None


def order(cells: Sequence[CellRounds], round_no: int) -> list[CellRounds]:
    """The cells of round `round_no` (from 1): as listed in odd rounds, reversed in even."""
    return list(cells) if round_no % 2 else list(reversed(cells))


def run_matrix(
    cells: Sequence[Cell],
    run_args: Sequence[str],
    run_id: str,
    out_dir: Path,
    config: RunConfig,
    console: Console,
    pythons: Mapping[str, str] | None = None,
) -> tuple[list[CellRounds], bool]:
    """Run every cell (`python -m bench run` with `run_args`, which `config` was built from)
    in rounds; returns the cells' rounds and whether the matrix was interrupted (Ctrl-C or
    SIGTERM: the cell running then writes its partial result, and no other starts).

    A cell of a Prefect version runs with the interpreter `pythons` gives for it, others with
    this one."""
    pythons = pythons or {}
    states = [CellRounds(cell) for cell in cells]
    repeat = config.repeat
    rounds = 1 if repeat is None else (MAX_AUTO if repeat == "auto" else int(repeat))
    if repeat is not None and not config.keep_first:
        rounds += 1  # the warm-up repetition
    deadline = time.time() + config.budget_min * 60
    for round_no in range(1, rounds + 1):
        todo = [s for s in order(states, round_no) if not s.done]
        if not todo:
            break
        if repeat is not None:
            console.print(f"[bold]round {round_no}[/bold]: {', '.join(s.cell.name for s in todo)}")
        for state in todo:
            cell = state.cell
            command = cell_argv(
                pythons.get(cell.version, sys.executable),
                cell.server,
                cell.db,
                cell.broker,
                run_id=run_id,
                out=out_dir,
                version=cell.version,
                args=run_args,
                round_deadline=None if repeat is None else deadline,
            )
            try:
                code = subprocess.run(command, check=False).returncode
            except KeyboardInterrupt:
                return states, True  # the cell's own run handled it and wrote its result
            state.results += _new_results(out_dir, run_id, state)
            last = state.last
            # A skipped, failed or interrupted cell runs no more; nor one that says it is done.
            state.done = (
                code != 0 or last is None or last.repeat is None or last.repeat.stopped is not None
            )
            if code == EXIT_INTERRUPTED:
                return states, True
    return states, False


def _new_results(out_dir: Path, run_id: str, state: CellRounds) -> list[Result]:
    """The results of the cell's repetitions written since the last look."""
    return earlier_repetitions(out_dir, run_id, state.cell)[len(state.results) :]


def summary(run_id: str, states: Sequence[CellRounds]) -> Table:
    """The matrix's closing table: each cell's status, repetitions, the intervals they reached
    and why they stopped."""
    table = Table(title=f"run {run_id}", title_justify="left")
    for header in ("cell", "status", "repetitions", "total ±95%", "widest ±95%", "stopped"):
        table.add_column(header)
    for state in states:
        last = state.last
        rep = last.repeat if last else None
        table.add_row(
            state.cell.name,
            last.status if last else "not run",
            str(len(state.results)),
            f"{rep.interval_pct:g}%" if rep and rep.interval_pct is not None else "",
            f"{rep.widest_pct:g}% {rep.widest}" if rep and rep.widest_pct is not None else "",
            STOP_REASONS[rep.stopped] if rep and rep.stopped else "",
        )
    return table
