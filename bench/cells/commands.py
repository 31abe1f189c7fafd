"""What a cell's process is told and tells back, defined once for everything that starts one:
its command line (`python -m bench run …`, started by the matrix's rounds and by nox's cell
sessions), the exit codes of prefect-bench's commands, the run id, and the environment
variables nox's sessions read (which scripts/fan_out.py and the CI workflow set).

Standard library only: noxfile.py and scripts/fan_out.py import it where nothing else is
installed.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from bench.core.run_ids import RUN_ID, new_run_id

__all__ = ["RUN_ID", "cell_argv", "new_run_id"]

# The exit codes of `python -m bench` (bench/cli.py's docstring and the README say when each is
# given); scripts/fan_out.py gives those of them that apply to a whole fan-out.
EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_SKIPPED = 3
EXIT_INTERRUPTED = 130

# Where nox's sessions write results, and the run id a cell session joins (default: a new one).
RESULTS_ENV = "BENCH_RESULTS_DIR"
RUN_ID_ENV = "BENCH_RUN_ID"
# Set to 1, every command is verbose (-v): a failure's traceback is printed too. `-v` sets it
# for the cells a matrix starts.
VERBOSE_ENV = "BENCH_VERBOSE"
# Set to 1, every command is quiet (-q): no progress, only what it prints as its output, its
# warnings and its errors. `-q` sets it for the cells a matrix starts.
QUIET_ENV = "BENCH_QUIET"


def cell_argv(
    python: str,
    server: str,
    db: str,
    broker: str,
    *,
    run_id: str,
    out: Path,
    version: str = "",
    json_path: Path | None = None,
    args: Sequence[str] = (),
    round_deadline: float | None = None,
) -> list[str]:
    """The command line that runs one cell with the interpreter `python`: its results under
    `out`/`run_id`, a copy at `json_path` if given, named as Prefect `version`'s cell if
    given, then `args` (`run`'s options for every cell, as given after `--`).

    `round_deadline` makes it a turn of the matrix's rounds: one repetition, with the budget
    counted to that time (seconds since the epoch) from the matrix's start, not the cell's.
    """
    return [
        *(python, "-m", "bench", "run"),
        *("--server", server, "--db", db, "--broker", broker),
        *("--run-id", run_id, "--out", str(out)),
        *(("--json", str(json_path)) if json_path is not None else ()),
        *(("--prefect-version", version) if version else ()),
        *args,
        *(
            ("--one-repetition", "--deadline", str(round_deadline))
            if round_deadline is not None
            else ()
        ),
    ]
