#!/usr/bin/env python3
"""The matrix fanned out as .github/workflows/bench.yml fans it out, on this machine.

    python scripts/fan_out.py                                   every cell
    python scripts/fan_out.py --server python --db sqlite -- --duration 2 --concurrency 1,4
    python scripts/fan_out.py --nox "nox --envdir ~/.cache/fan-out-venvs"  venvs kept for next time

The steps, each the workflow's job: list the cells (`nox -l --json -s bench`); run each chosen
cell with `nox -s SESSION -- ARGS` in a clone of its own of the repository's HEAD, with a
results folder of its own (BENCH_RESULTS_DIR) and the fan-out's one run id (BENCH_RUN_ID); then
merge the folders into one report (`nox -s report -- FOLDERS`, in a clone too, written into
--out). The workflow runs the same commands (tests/test_fan_out.py holds them to it), a cell per
machine; here the cells run one after another, since cells run at once on one machine would
measure each other. Arguments after `--` go to every cell (`python -m bench run`'s options).

A clone is removed as soon as its cell is done, and every clone on Ctrl-C or SIGTERM: the cell
running then is passed one interrupt (nox gives it 60 s to write its partial result) and the
results written so far are kept. Uncommitted changes are not in the clones: say so, and commit
first to measure them.

Standard library only: it runs with any Python >= 3.11 that can run nox (of the project it
imports only bench.cells.commands, which is standard library only too, for the run id, the
variables nox's sessions read and the exit codes).

Exit codes: 0 every cell ran or was skipped and the report is written; 1 a cell failed or the
report could not be made; 2 bad input (no cell chosen, no git checkout, nox could not list the
cells); 130 interrupted.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import NoReturn

# The repository: run as a file, the script has scripts/ on its path, not the project above.
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from bench.cells.commands import (  # noqa: E402
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_USAGE,
    RESULTS_ENV,
    RUN_ID_ENV,
    new_run_id,
)

# What each step sets for nox, as the workflow's `env:` does.
CELL_ENV = (RESULTS_ENV, RUN_ID_ENV)
REPORT_ENV = (RESULTS_ENV,)
# After passing on an interrupt: nox's interrupt and terminate timeouts (noxfile.py), and a margin.
STOP_WAIT_S = 90.0
# Temporary folders of prefect-bench start so (bench.core.ownership.FOLDER_PREFIX).
CLONES_PREFIX = "prefect-bench-fan-out-"
SAY = "fan-out"


def list_command(nox: Sequence[str]) -> list[str]:
    """The command that lists the cells as JSON: one object per nox session."""
    return [*nox, "-l", "--json", "-s", "bench"]


def cell_command(nox: Sequence[str], session: str, cell_args: Sequence[str]) -> list[str]:
    """The command that runs one cell's nox session, `cell_args` going to `bench run`."""
    return [*nox, "-s", session, "--", *cell_args]


def report_command(nox: Sequence[str], folders: Sequence[str]) -> list[str]:
    """The command that merges the cells' results folders into one report."""
    return [*nox, "-s", "report", "--", *folders]


@dataclass(frozen=True)
class Cell:
    """A cell as `nox -l --json` lists it: its session id and its parameters."""

    session: str
    server: str
    db: str
    broker: str
    prefect: str = ""  # the Prefect version, where PREFECT_VERSION names several

    @property
    def name(self) -> str:
        """server[@version]-db-broker: its results folder here, its artifact's name in the
        workflow."""
        server = f"{self.server}@{self.prefect}" if self.prefect else self.server
        return f"{server}-{self.db}-{self.broker}"


class FanOutError(Exception):
    """Bad input or a checkout that cannot be used: the one line `main` prints."""


def _say(text: str) -> None:
    print(f"{SAY}: {text}", flush=True)


def _git(repo: Path, *args: str) -> str:
    out = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True)
    if out.returncode != 0:
        raise FanOutError(f"git {' '.join(args)} in {repo}: {out.stderr.strip()}")
    return out.stdout.strip()


def clone(repo: Path, commit: str, into: Path) -> Path:
    """A clone of `repo` at `commit` in `into` (local: hard links, no network)."""
    _git(repo, "clone", "--quiet", "--no-checkout", ".", str(into))
    _git(into, "checkout", "--quiet", "--detach", commit)
    return into


def parse_cells(listing: str) -> list[Cell]:
    """The cells of `nox -l --json -s bench`'s output."""
    try:
        sessions = json.loads(listing)
        return [
            Cell(
                s["session"],
                s["call_spec"]["server"],
                s["call_spec"]["db"],
                s["call_spec"]["broker"],
                s["call_spec"].get("prefect", ""),
            )
            for s in sessions
        ]
    except (ValueError, KeyError, TypeError) as exc:
        raise FanOutError(f"cannot read nox's list of cells: {exc!r}") from None


def choose(cells: Sequence[Cell], args: argparse.Namespace) -> list[Cell]:
    """The cells of the servers, dbs and brokers asked for (each: all when none is asked)."""
    chosen = [
        c
        for c in cells
        if (not args.servers or c.server in args.servers)
        and (not args.dbs or c.db in args.dbs)
        and (not args.brokers or c.broker in args.brokers)
    ]
    if not chosen:
        raise FanOutError(f"no cell matches (the cells: {', '.join(c.name for c in cells)})")
    return chosen


def run(command: Sequence[str], cwd: Path, env: dict[str, str]) -> int:
    """Run `command` to its end and return its exit code.

    It runs in a session of its own, so a terminal's Ctrl-C reaches only this script, which
    passes exactly one interrupt on and waits for it to stop (a second interrupt from nox would
    cut the cell's partial result short); a second interrupt here, or STOP_WAIT_S, kills it.
    """
    process = subprocess.Popen(list(command), cwd=cwd, env=env, start_new_session=True)
    try:
        return process.wait()
    except KeyboardInterrupt:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=STOP_WAIT_S)
        except (KeyboardInterrupt, subprocess.TimeoutExpired):
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        raise


def _remove(folder: Path) -> bool:
    """Remove `folder` whole, holding interrupts until it is gone (a Ctrl-C must not leave
    half a clone); whether one came meanwhile."""
    held: list[int] = []
    signals = (signal.SIGINT, signal.SIGTERM)
    previous = {s: signal.signal(s, lambda signum, frame: held.append(signum)) for s in signals}
    try:
        shutil.rmtree(folder, ignore_errors=True)
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    return bool(held)


def fan_out(args: argparse.Namespace, nox: list[str], repo: Path, clones: Path) -> int:
    """List, run each chosen cell in its clone, merge: the workflow's jobs in turn."""
    commit = _git(repo, "rev-parse", "HEAD")
    if _git(repo, "status", "--porcelain", "--untracked-files=no"):
        _say(f"uncommitted changes in {repo} are not in the clones: they run {commit[:12]}")
    run_id = new_run_id()
    out = (args.out or repo / "results" / f"fan-out-{run_id}").resolve()
    checkout = clone(repo, commit, clones / "checkout")
    try:
        listed = subprocess.run(list_command(nox), cwd=checkout, capture_output=True, text=True)
    except OSError as exc:
        raise FanOutError(f"cannot run {nox[0]}: {exc.strerror}") from None
    if listed.returncode != 0:
        last = (listed.stderr.strip().splitlines() or ["no message"])[-1]
        raise FanOutError(f"{shlex.join(list_command(nox))} failed: {last}")
    cells = choose(parse_cells(listed.stdout), args)
    _say(f"run {run_id}, commit {commit[:12]}: {len(cells)} cells, results in {out}")
    failed = []
    for n, cell in enumerate(cells, 1):
        folder = out / cell.name
        env = os.environ | {RESULTS_ENV: str(folder), RUN_ID_ENV: run_id}
        workdir = clone(repo, commit, clones / f"cell-{n}")
        _say(f"cell {n}/{len(cells)} {cell.session} in {workdir}, results in {folder}")
        code = run(cell_command(nox, cell.session, args.cell_args), workdir, env)
        if _remove(workdir):
            raise KeyboardInterrupt
        if code != 0:
            failed.append(cell)
            _say(f"{cell.session} failed (nox exit {code})")
    folders = [str(out / c.name) for c in cells if (out / c.name).is_dir()]
    env = os.environ | {RESULTS_ENV: str(out)}
    code = run(report_command(nox, folders), checkout, env)
    if code != 0:
        _say(f"the report failed (nox exit {code})")
        return EXIT_FAILED
    _say(f"report: {out / 'report.md'}")
    if failed:
        _say(f"failed: {', '.join(c.session for c in failed)}")
    return EXIT_FAILED if failed else EXIT_OK


def _interrupt_on_sigterm(signum: int, frame: FrameType | None) -> NoReturn:
    raise KeyboardInterrupt


def build_parser() -> argparse.ArgumentParser:
    """The script's options; arguments after `--` go to every cell."""
    parser = argparse.ArgumentParser(
        prog="fan_out.py", description=(__doc__ or "").split("\n", 1)[0]
    )
    for flag, dest, what in (
        ("--server", "servers", "server"),
        ("--db", "dbs", "db"),
        ("--broker", "brokers", "broker"),
    ):
        parser.add_argument(
            flag,
            dest=dest,
            action="append",
            metavar="NAME",
            help=f"only this {what}'s cells (may be given again; default every {what})",
        )
    parser.add_argument(
        "--out",
        type=Path,
        metavar="DIR",
        help="where the cells' results folders and the report go "
        "(default results/fan-out-RUN_ID in the repository)",
    )
    parser.add_argument(
        "--nox",
        default="nox",
        metavar="COMMAND",
        help="the nox command, with options for every step (default nox), e.g. "
        "'nox --envdir DIR' to keep the cells' venvs between fan-outs",
    )
    parser.add_argument("cell_args", nargs="*", metavar="-- ARGS", help="options of every cell")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: parse, fan out in a temporary folder of clones, always remove it."""
    args = build_parser().parse_args(argv)
    signal.signal(signal.SIGTERM, _interrupt_on_sigterm)
    clones = Path(tempfile.mkdtemp(prefix=CLONES_PREFIX))
    # nox makes a cell's TMPDIR in its clone, and a local PostgreSQL or Redis run as root runs
    # as the user prefect-bench there: it must be able to enter (mkdtemp makes 0700).
    clones.chmod(0o755)
    try:
        return fan_out(args, shlex.split(args.nox), ROOT, clones)
    except FanOutError as exc:
        print(f"{SAY}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(f"{SAY}: interrupted; the results written so far are kept", file=sys.stderr)
        return EXIT_INTERRUPTED
    finally:
        _remove(clones)


if __name__ == "__main__":
    sys.exit(main())
