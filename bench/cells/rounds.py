"""The matrix run: every cell in turn under one run id, each in its own process, in rounds.

With `--repeat N|auto` each round runs one repetition of every cell that still needs one, and
each round goes through the cells in the reverse order of the round before (1 2 3, 3 2 1,
1 2 3, ...): a machine that drifts (warms up, throttles, gets a neighbour) then moves every
cell alike, where running each cell's repetitions back to back would lay the drift on the
cells measured last. Which cell is done is decided by its own `run` (bench.cells.repeat.decide) and
read back from the result it wrote.

Where a matrix stands is read from its results alone (`standing`): a cell's turns are its
results less the interrupted ones, so `matrix --resume` starts in the round where the matrix
stopped, with the cells that had not had their turn in it, and goes on as the matrix would
have.
"""

from __future__ import annotations

import contextlib
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console
from rich.table import Table

from bench.cells.commands import EXIT_INTERRUPTED, cell_argv
from bench.cells.repeat import MAX_AUTO, STOP_REASONS, earlier_repetitions
from bench.cells.resume import MatrixRequest
from bench.cells.together import groups
from bench.config.run import RunConfig
from bench.core.process import die_with_parent
from bench.results import Cell, Result

# How long an interrupted matrix waits for the cell it runs to stop its server and write its
# partial result (nox's interrupt_timeout for the matrix is the same).
INTERRUPT_WAIT_S = 60.0


@dataclass
class CellRounds:
    """One cell's repetitions in the matrix so far (interrupted ones included)."""

    cell: Cell
    results: list[Result] = field(default_factory=list)
    done: bool = False

    @property
    def kept(self) -> list[Result]:
        """Its results but the interrupted ones (each run again by the next turn)."""
        return [r for r in self.results if not r.interrupted]

    @property
    def turns(self) -> int:
        """The rounds it has had its turn in."""
        return len(self.kept)

    @property
    def last(self) -> Result | None:
        kept = self.kept
        return kept[-1] if kept else None

    @property
    def finished(self) -> bool:
        """Whether its results say it runs no more: a cell run once, a repetition that failed
        or was skipped, or one that says the cell is done."""
        last = self.last
        return last is not None and (
            last.status != "ok" or last.repeat is None or last.repeat.stopped is not None
        )


def standing(cells: Sequence[Cell], out_dir: Path, run_id: str) -> list[CellRounds]:
    """Each cell of the run with the results it has written so far."""
    states = [CellRounds(cell, earlier_repetitions(out_dir, run_id, cell)) for cell in cells]
    for state in states:
        state.done = state.finished
    return states


def standing_line(states: Sequence[CellRounds]) -> str:
    """Where each cell stands, in a line: its results written, interrupted and whether done."""
    parts = []
    for state in states:
        cut = len(state.results) - state.turns
        part = f"{state.cell.name} {state.turns} written"
        part += f" (+{cut} interrupted, run again)" if cut and not state.done else ""
        parts.append(part + (", done" if state.done else ""))
    return f"round {next_round(states)}; " + "; ".join(parts)


def next_round(states: Sequence[CellRounds]) -> int:
    """The round the matrix is in: the first in which a cell not done has not had its turn."""
    return 1 + min((s.turns for s in states if not s.done), default=0)


def order(cells: Sequence[CellRounds], round_no: int) -> list[CellRounds]:
    """The cells of round `round_no` (from 1): as listed in odd rounds, reversed in even."""
    return list(cells) if round_no % 2 else list(reversed(cells))


def due(states: Sequence[CellRounds], round_no: int) -> list[CellRounds]:
    """The cells that take their turn in round `round_no`, in its order: those not done that
    have not had it (after `--resume`, the round's first cells may have)."""
    return [s for s in order(states, round_no) if not s.done and s.turns < round_no]


def run_matrix(
    request: MatrixRequest,
    states: Sequence[CellRounds],
    out_dir: Path,
    config: RunConfig,
    console: Console,
    lock: int | None = None,
    spent_s: float = 0.0,
) -> tuple[list[CellRounds], bool]:
    """Run the cells of `request` (`python -m bench run` with its `run_args`, which `config`
    was built from) in rounds, from where `states` (`standing`) say they are; returns the
    cells' rounds and whether the matrix was interrupted (Ctrl-C or SIGTERM: the cell running
    then writes its partial result, and no other starts).

    A cell of a Prefect version runs with the interpreter `request.pythons` gives for it,
    others with this one, each in the folder the matrix was started in, holding the run's
    `lock` (bench.cells.resume.hold). `spent_s` of the budget went before (a resumed run's).
    With `request.together` the cells of one db and broker take each turn as one (`run
    --server A --beside B`, bench.cells.together): a round of them, every server started
    afresh and up at once."""
    states = list(states)
    repeat = config.repeat
    rounds = 1 if repeat is None else (MAX_AUTO if repeat == "auto" else int(repeat))
    if config.warmup_repetition:
        rounds += 1
    deadline = time.time() + config.budget_min * 60 - spent_s
    run_args = [*request.run_args, *(("--servers", request.servers) if request.servers else ())]
    by_name = {s.cell.name: s for s in states}
    together: dict[str, list[CellRounds]] = {}  # each cell's group, one list per group
    for group in groups([s.cell for s in states]) if request.together else []:
        members = [by_name[c.name] for c in group]
        together |= dict.fromkeys((c.name for c in group), members)
    for round_no in range(next_round(states), rounds + 1):
        if all(s.done for s in states):
            break
        todo = due(states, round_no)
        if repeat is not None and todo:
            console.print(f"[bold]round {round_no}[/bold]: {', '.join(s.cell.name for s in todo)}")
        turns = []  # each due cell's group, once (measured together, a group takes one turn)
        for state in todo:
            group = together.get(state.cell.name, [state])
            if not any(g is group for g in turns):
                turns.append(group)
        for group in turns:
            cell = group[0].cell
            command = cell_argv(
                request.pythons.get(cell.version, sys.executable),
                cell.server,
                cell.db,
                cell.broker,
                run_id=request.run_id,
                out=out_dir.absolute(),  # the cell runs in request.cwd
                version=cell.version,
                args=[*run_args, *(a for s in group[1:] for a in ("--beside", s.cell.server))],
                round_deadline=None if repeat is None else deadline,
            )
            try:
                code = _turn(command, request.cwd, lock)
            except KeyboardInterrupt:
                for state in group:
                    state.results += _new_results(out_dir, request.run_id, state)
                return states, True
            for state in group:
                state.results += _new_results(out_dir, request.run_id, state)
                # A skipped, failed or interrupted cell runs no more; nor one that says it is
                # done.
                state.done = code != 0 or state.last is None or state.finished
            if code == EXIT_INTERRUPTED:
                return states, True
    return states, False


def _turn(command: list[str], cwd: str, lock: int | None) -> int:
    """Run one turn of a cell, `command`, in `cwd`; its exit code.

    The cell runs in a session of its own, so a Ctrl-C at the terminal reaches the matrix
    alone, which hands it on once and waits for the cell to stop its server and write its
    partial result; and it is sent SIGTERM if the matrix dies (even by SIGKILL), which it
    takes as Ctrl-C. It holds the run's `lock` until it exits."""
    child = subprocess.Popen(
        command,
        cwd=cwd,
        start_new_session=True,
        preexec_fn=die_with_parent if sys.platform == "linux" else None,
        pass_fds=() if lock is None else (lock,),
    )
    try:
        return child.wait()
    except KeyboardInterrupt:
        try:
            with contextlib.suppress(ProcessLookupError):
                child.send_signal(signal.SIGINT)
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.wait(timeout=INTERRUPT_WAIT_S)
        finally:  # a second Ctrl-C, or the cell did not stop in time
            if child.poll() is None:
                child.kill()
                child.wait()
        raise


def _new_results(out_dir: Path, run_id: str, state: CellRounds) -> list[Result]:
    """The results of the cell's repetitions written since the last look."""
    return earlier_repetitions(out_dir, run_id, state.cell)[len(state.results) :]


def summary(run_id: str, states: Sequence[CellRounds]) -> Table:
    """The matrix's closing table: each cell's status, repetitions (and those interrupted, run
    again), the intervals they reached and why they stopped."""
    table = Table(title=f"run {run_id}", title_justify="left")
    for header in ("cell", "status", "repetitions", "total ±95%", "widest ±95%", "stopped"):
        table.add_column(header)
    for state in states:
        last = state.last
        rep = last.repeat if last else None
        cut = len(state.results) - state.turns
        table.add_row(
            state.cell.name,
            last.status if last else ("interrupted" if cut else "not run"),
            str(state.turns) + (f" (+{cut} interrupted)" if cut else ""),
            f"{rep.interval_pct:g}%" if rep and rep.interval_pct is not None else "",
            f"{rep.widest_pct:g}% {rep.widest}" if rep and rep.widest_pct is not None else "",
            STOP_REASONS[rep.stopped] if rep and rep.stopped else "",
        )
    return table
