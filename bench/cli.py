"""The command line: parses arguments into options, runs, prints, and picks the exit code.

Exit codes:
    0    the cell ran and its result is ok (report: written; conformance: all read back)
    1    the cell failed (its result says why) or a result could not be written; conformance:
         something did not read back (the line says what), or the server does not answer
    2    bad input: an unknown name, a bad number, an unwritable results folder
    3    the cell was skipped: it cannot run on this machine (its result says why)
    130  interrupted (Ctrl-C or SIGTERM); the partial result is written
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.metadata
import os
import re
import signal
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from pathlib import Path
from types import FrameType
from typing import Any, NoReturn

from pydantic import ValidationError
from rich.console import Console
from rich.table import Table

from bench import __version__
from bench.cells.matrix import cells as matrix_cells
from bench.cells.matrix import versioned_cells
from bench.cells.repeat import (
    MAX_AUTO,
    MIN_REPETITIONS,
    WARMUP_REPETITION,
    decide,
    earlier_repetitions,
    repetition_path,
)
from bench.cells.rounds import run_matrix
from bench.cells.runner import EXTERNAL_SERVER, INTERRUPTED, CellRun, parse_url, run_cell, serving
from bench.config.dimensions import BROKERS, DBS
from bench.config.run import RunConfig
from bench.conformance.real_client import (
    DEFAULT_TASKS,
    DEFAULT_TIMEOUT_S,
    check,
    check_inputs,
    report_lines,
    traffic_rows,
)
from bench.core import ownership
from bench.core.errors import BenchError, ConfigError
from bench.observe.progress import Progress, progress_for
from bench.results import Cell, Result, new_run_id, result_path, write_result
from bench.servers.registry import make_server, server_options
from bench.servers.specs import server_names, versioned_server_names
from bench.services import PROVIDERS
from bench.workloads import WORKLOADS, ScenarioWorkload

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_SKIPPED = 3
EXIT_INTERRUPTED = 130

_EXIT_BY_STATUS = {"ok": EXIT_OK, "failed": EXIT_FAILED, "skipped": EXIT_SKIPPED}
_RUN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
# argparse dest of a server adapter's own option: "<server>:<dest>"
_SERVER_OPTION = "{server}:{dest}"


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see --help)\n")


def _int_list(text: str) -> list[int]:
    try:
        return [int(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected whole numbers separated by commas (e.g. 1,4,16), got {text!r}"
        ) from None


def _cpu_list(text: str) -> list[int]:
    cpus = _int_list(text)
    usable = os.sched_getaffinity(0)
    if not set(cpus) <= usable:
        raise argparse.ArgumentTypeError(
            f"CPU {sorted(set(cpus) - usable)} is not usable here (usable: "
            f"{','.join(map(str, sorted(usable)))})"
        )
    return cpus


def _repeat(text: str) -> int | str:
    if text == "auto":
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a whole number of repetitions (e.g. 4) or auto, got {text!r}"
        ) from None


def _run_id(text: str) -> str:
    if not _RUN_ID.match(text):
        raise argparse.ArgumentTypeError(f"letters, digits, '.', '_' and '-' only, got {text!r}")
    return text


class _Choice:
    """An argparse type: one of `known` names, refused with the list of them otherwise."""

    def __init__(self, known: Sequence[str], what: str) -> None:
        self.known, self.__name__ = tuple(known), what

    def __call__(self, text: str) -> str:
        if text not in self.known:
            raise argparse.ArgumentTypeError(
                f"unknown {self.__name__} {text!r} (known: {', '.join(self.known)})"
            )
        return text


# The options of `run` that fill RunConfig: flag, RunConfig field, how the text is read (None:
# a switch), metavar. Their help and defaults are RunConfig's, and RunConfig checks their
# values: each option is declared once.
CONFIG_OPTIONS: tuple[tuple[str, str, Callable[[str], Any] | None, str | None], ...] = (
    ("--workload", "workload", _Choice(tuple(WORKLOADS), "workload"), "NAME"),
    ("--duration", "duration_s", float, "S"),
    ("--warmup", "warmup_s", float, "S"),
    ("--concurrency", "concurrency", _int_list, "LIST"),
    ("--rate", "rate", float, "R"),
    ("--rate-sweep", "rate_sweep", str, "START:STOP:STEP"),
    ("--slo", "slo", str, "EXPR"),
    ("--engine-procs", "engine_procs", int, "N"),
    ("--server-cpus", "server_cpus", _cpu_list, "LIST"),
    ("--client-cpus", "client_cpus", _cpu_list, "LIST"),
    ("--url", "url", str, "URL"),
    ("--allow-remote", "allow_remote", None, None),
    ("--provider", "provider", _Choice(tuple(PROVIDERS), "provider"), "NAME"),
    ("--tasks", "tasks", int, "N"),
    ("--deployments", "deployments", int, "D"),
    ("--speedup", "speedup", float, "K"),
    ("--readers", "readers", int, "R"),
    ("--server-workers", "server_workers", int, "N"),
    ("--preload", "preload", int, "N"),
    ("--preload-shape", "preload_shape", str, "SPEC"),
    ("--no-services", "no_services", None, None),
    ("--no-pin", "no_pin", None, None),
    ("--repeat", "repeat", _repeat, "N|auto"),
    ("--target", "target_pct", float, "P"),
    ("--budget", "budget_min", float, "MIN"),
    ("--keep-first", "keep_first", None, None),
)
_FLAG_OF = {field: flag for flag, field, _, _ in CONFIG_OPTIONS}
_ENDPOINT_WORKLOADS = [n for n, w in WORKLOADS.items() if not isinstance(w, ScenarioWorkload)]


def _config_help(field: str, parse: Callable[[str], Any] | None) -> str:
    info = RunConfig.model_fields[field]
    text = info.description or ""
    if isinstance(parse, _Choice):
        text = f"{', '.join(parse.known)}: {text}"
    if info.default not in (None, False) and "default" not in text:
        default = info.default
        shown = ",".join(map(str, default)) if isinstance(default, list) else f"{default:g}"
        text += f" (default {shown})"
    return text.replace("%", "%%")


def _add_config_options(parser: argparse.ArgumentParser, only: Sequence[str] | None = None) -> None:
    """RunConfig's options (or `only` those of these fields) on `parser`."""
    for flag, field, parse, metavar in CONFIG_OPTIONS:
        if only is not None and field not in only:
            continue
        how: dict[str, Any] = (
            {"action": "store_true"} if parse is None else {"type": parse, "metavar": metavar}
        )
        parser.add_argument(
            flag, dest=field, default=argparse.SUPPRESS, help=_config_help(field, parse), **how
        )


def _add_cell_options(parser: argparse.ArgumentParser) -> None:
    """--server, --db, --broker, --servers and each server adapter's own options."""
    parser.add_argument(
        "--server", default="python", help="python, zig or one of --servers (default python)"
    )
    parser.add_argument(
        "--db",
        type=_Choice(DBS, "db"),
        default=DBS[0],
        help=f"{' or '.join(DBS)} (default {DBS[0]})",
    )
    parser.add_argument(
        "--broker",
        type=_Choice(BROKERS, "broker"),
        default=BROKERS[0],
        help=f"{' or '.join(BROKERS)} (default {BROKERS[0]})",
    )
    parser.add_argument(
        "--servers", type=Path, help="custom servers (default: servers.toml if present)"
    )
    for server, options in server_options().items():
        group = parser.add_argument_group(f"the {server} server")
        for option in options:
            env = f" (or set {option.env})" if option.env else ""
            group.add_argument(
                option.flag,
                dest=_SERVER_OPTION.format(server=server, dest=option.dest),
                type=Path,
                metavar=option.metavar,
                help=option.help + env,
            )


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="prefect-bench", description=__doc__.split("\n")[0])
    parser.add_argument("--version", action="version", version=f"prefect-bench {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    run = commands.add_parser("run", help="benchmark one cell (server × db × broker)")
    _add_config_options(run)
    run.add_argument("--out", type=Path, default=Path("results"), help="results folder")
    run.add_argument("--run-id", type=_run_id, help="join an existing run (default: a new id)")
    run.add_argument("--json", type=Path, help="also write the result to exactly this path")
    # The matrix's rounds: one repetition at a time, the budget counted from the matrix's start.
    run.add_argument("--one-repetition", action="store_true", help=argparse.SUPPRESS)
    run.add_argument("--deadline", type=float, help=argparse.SUPPRESS)
    run.add_argument(
        "--prefect-version",
        metavar="VERSION",
        help="one of several Prefect versions compared in a run (PREFECT_VERSION=a,b): the "
        "cell is named by it, and this environment must have it installed",
    )
    _add_cell_options(run)

    matrix = commands.add_parser(
        "matrix",
        help="every cell in turn under one run id, each in its own process (in rounds with "
        "--repeat, each round in the reverse order of the last), then the report; every "
        "option of `run` applies to every cell",
    )
    matrix.add_argument("--out", type=Path, default=Path("results"), help="results folder")
    matrix.add_argument("--run-id", type=_run_id, help="the run's id (default: a new id)")
    matrix.add_argument(
        "--server",
        dest="only_servers",
        action="append",
        metavar="NAME",
        help="only this server's cells (may be given again; default every server)",
    )
    for flag, known in (("--db", DBS), ("--broker", BROKERS)):
        matrix.add_argument(
            flag,
            dest=f"only_{flag[2:]}s",
            action="append",
            type=_Choice(known, flag[2:]),
            metavar="NAME",
            help=f"only the {' or '.join(known)} cells (may be given again; default both)",
        )
    matrix.add_argument(
        "--servers", type=Path, help="custom servers (default: servers.toml if present)"
    )
    matrix.add_argument(
        "--prefect-python",
        dest="prefect_pythons",
        action="append",
        type=_version_python,
        metavar="VERSION=PYTHON",
        help="compare Prefect versions: each cell of a server running the environment's "
        "Prefect once per VERSION, with the interpreter of its venv (given again for each; "
        "`PREFECT_VERSION=a,b nox -s matrix` gives them)",
    )

    report = commands.add_parser("report", help="aggregate results into a report")
    report.add_argument("paths", nargs="*", type=Path, help="result files or folders")
    report.add_argument("--out", type=Path, default=Path("results"), help="where reports go")
    report.add_argument(
        "--baseline",
        nargs="+",
        type=Path,
        metavar="PATH",
        help="results to compare with, run for run (e.g. the runs before a change)",
    )
    report.add_argument(
        "--history",
        type=Path,
        metavar="DIR",
        help="a folder of many runs: each cell's figures over them and where they changed "
        "(without PATHS, the report is that history alone)",
    )
    report.add_argument(
        "--across-machines",
        action="store_true",
        help="compute speedups between results measured on different machines (e.g. the cells "
        "of a CI fan-out, each on a runner of its own) instead of leaving them out, naming the "
        "machines: such a ratio is the machines' as much as the servers'",
    )

    compare = commands.add_parser(
        "compare",
        help="did AFTER change from BEFORE? every figure's ratio with its 95%% interval and a "
        "permutation test over the repetitions, corrected for the many tests (Benjamini-"
        "Hochberg); exit 1 when a --fail-on rule breaks",
    )
    compare.add_argument(
        "sides", nargs="+", type=Path, metavar="PATH", help="BEFORE AFTER (with --aa: DIR)"
    )
    compare.add_argument(
        "--fail-on",
        dest="rules",
        action="append",
        default=[],
        metavar="EXPR",
        help="fail (exit 1) on a significant change beyond this, e.g. 'rps<-5%%' or "
        "'p99>+10%%' (may be given again)",
    )
    compare.add_argument(
        "--allow-different",
        action="store_true",
        help="compare sides measured on different machines or with different measurement "
        "settings (flagged in the output) instead of refusing",
    )
    compare.add_argument("--out", type=Path, metavar="FILE", help="also write the Markdown here")
    compare.add_argument(
        "--aa",
        action="store_true",
        help="A/A: split DIR's repetitions of each cell (the same server) into two sides every "
        "way and report how often the gate fires on noise and the smallest change it can tell; "
        "kept in DIR as report.aa-<id>.md/.json",
    )
    compare.add_argument(
        "--size",
        type=int,
        default=4,
        metavar="N",
        help="--aa: repetitions a side (default 4; DIR needs twice as many per cell)",
    )

    conformance = commands.add_parser(
        "conformance",
        help="does a server serve the real Prefect client? (its flow run, task runs and events "
        "must read back)",
    )
    conformance.add_argument(
        "--url",
        help="the server's API, http:// on this machine (…/api); without it, the cell's "
        "server is started (its PostgreSQL and Redis provisioned) and stopped after",
    )
    conformance.add_argument(
        "--tasks",
        type=int,
        default=DEFAULT_TASKS,
        metavar="N",
        help=f"tasks in the flow (default {DEFAULT_TASKS})",
    )
    conformance.add_argument(
        "--timeout",
        dest="timeout_s",
        type=float,
        default=DEFAULT_TIMEOUT_S,
        metavar="S",
        help="seconds everything has to read back once the client has run the flow "
        f"(default {DEFAULT_TIMEOUT_S:g})",
    )
    conformance.add_argument(
        "--json",
        type=Path,
        metavar="PATH",
        help="also write the report to exactly this path (never overwritten)",
    )
    _add_config_options(conformance, only=("provider", "allow_remote"))
    _add_cell_options(conformance)
    return parser


def _config(args: argparse.Namespace, **fixed: Any) -> RunConfig:
    """The run's configuration from the options given, and `fixed` values for the fields the
    command sets itself; ConfigError naming the bad option."""
    given = {field: getattr(args, field) for field in _FLAG_OF if hasattr(args, field)}
    given |= fixed
    try:
        config = RunConfig(**given)
    except ValidationError as exc:
        error = exc.errors()[0]
        flag = _FLAG_OF.get(str(error["loc"][0]), str(error["loc"][0])) if error["loc"] else ""
        message = error["msg"].removeprefix("Value error, ")
        if not flag:  # a check across options names its option itself
            raise ConfigError(message) from None
        raise ConfigError(f"{flag}: {message[0].lower()}{message[1:]}") from None
    if config.url:
        parse_url(config.url, config.allow_remote)  # bad input: before anything is written
    if config.rate_sweep and isinstance(WORKLOADS[config.workload], ScenarioWorkload):
        raise ConfigError(
            f"--rate-sweep measures endpoints (the {', '.join(_ENDPOINT_WORKLOADS)} workloads), "
            f"not the {config.workload} scenario"
        )
    return _pinned(config)


def _pinned(config: RunConfig) -> RunConfig:
    """The server and the load generator each on cores of its own, where there are two or more:
    the last quarter of the usable cores (at least one) for the load generator, the rest for
    the server. Not with --no-pin, not when either is pinned by hand, not behind a --url (that
    server is not ours to pin)."""
    if config.no_pin or config.url or config.server_cpus or config.client_cpus:
        return config
    usable = sorted(os.sched_getaffinity(0))
    if len(usable) < 2:
        return config
    client = max(1, len(usable) // 4)
    return config.model_copy(
        update={"server_cpus": usable[:-client], "client_cpus": usable[-client:]}
    )


def _cell_run(args: argparse.Namespace, config: RunConfig | None = None) -> CellRun:
    """The cell the options name, with `config` (default: the one the options build)."""
    config = config or _config(args)
    run_id = getattr(args, "run_id", None) or new_run_id()
    if config.url:
        return CellRun(Cell(server=EXTERNAL_SERVER), run_id, args.out, config, server=None)
    known = server_names(args.servers)
    if args.server not in known:
        raise ConfigError(f"unknown server {args.server!r} (known: {', '.join(known)})")
    version = getattr(args, "prefect_version", None) or ""
    if version:
        _check_prefect_version(args.server, version, args.servers)
    prefix = _SERVER_OPTION.format(server=args.server, dest="")
    options = {k[len(prefix) :]: v for k, v in vars(args).items() if k.startswith(prefix)}
    server = make_server(args.server, options, servers_file=args.servers)
    cell = Cell(server=args.server, db=args.db, broker=args.broker, version=version)
    return CellRun(cell, run_id, args.out, config, server)


def _check_prefect_version(server: str, version: str, servers: Path | None) -> None:
    """--prefect-version names the cell: the server must run this environment's Prefect,
    and it must be that version."""
    if server not in versioned_server_names(servers):
        raise ConfigError(
            f"--prefect-version: the {server} server does not run this environment's Prefect"
        )
    try:
        installed: str | None = importlib.metadata.version("prefect")
    except importlib.metadata.PackageNotFoundError:
        installed = None
    if installed != version:
        raise ConfigError(
            f"--prefect-version {version}: this environment ({sys.prefix}) has prefect "
            f"{installed or 'not installed'}"
        )


def _version_python(text: str) -> tuple[str, str]:
    version, sep, python = text.partition("=")
    if not (sep and version and python):
        raise argparse.ArgumentTypeError(f"{text!r} is not VERSION=PYTHON")
    if not os.access(python, os.X_OK):
        raise argparse.ArgumentTypeError(f"{python} is not an interpreter one can run")
    return version, python


def _interrupt_on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def _run(args: argparse.Namespace, console: Console) -> int:
    run = _cell_run(args)
    cell, config = run.cell, run.config
    repeating = config.repeat is not None
    done = earlier_repetitions(run.out_dir, run.run_id, cell) if repeating else []
    if not repeating and (path := result_path(run.out_dir, run.run_id, cell)).exists():
        raise ConfigError(f"{path} exists: results are never overwritten (use another --run-id)")
    if args.json and args.json.exists():
        raise ConfigError(f"{args.json} exists: results are never overwritten")
    folder = run.out_dir / run.run_id
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".{cell.name}.writable"
        probe.touch()
        probe.unlink()
    except OSError as exc:
        raise ConfigError(f"cannot write results into {folder}: {exc.strerror}") from exc
    deadline = args.deadline or time.time() + config.budget_min * 60

    with progress_for(console, cell.name) as progress:
        while True:
            result = _repetition(run, progress, done, deadline) if repeating else None
            if result is None:
                result = run_cell(run, progress)
                path = result_path(run.out_dir, run.run_id, cell)
            else:
                path = repetition_path(run.out_dir, run.run_id, cell, result.repetition or 1)
            write_result(result, path)
            console.print(_result_line(result), markup=False, highlight=False)
            console.print(f"result: {path}", markup=False, highlight=False)
            if not repeating or result.status != "ok" or args.one_repetition:
                break
            if result.repeat and result.repeat.stopped:
                break
    if args.json:
        write_result(result, args.json)
    if result.error == INTERRUPTED:
        return EXIT_INTERRUPTED
    return _EXIT_BY_STATUS[result.status]


def _repetition(run: CellRun, progress: Progress, done: list[Result], deadline: float) -> Result:
    """The cell's next repetition, with where the repetitions stand after it (`done` grows)."""
    config = run.config
    warmup = not done and not config.keep_first
    progress.stage(
        f"repetition {len(done) + 1}"
        + (" (the warm-up: run and kept, not counted)" if warmup else "")
        + _standing(done[-1] if done else None, config)
    )
    result = run_cell(run, progress)
    result.repetition = len(done) + 1
    if result.repetition == 1 and not config.keep_first:
        result.discarded = WARMUP_REPETITION
    done.append(result)
    counted = [r for r in done if r.status == "ok" and not r.discarded]
    result.repeat = decide(
        config.repeat or 1, config.target_pct, counted, deadline - time.time(), _repetition_s(done)
    )
    if result.repeat.over_budget:
        progress.stage(
            f"the budget ({config.budget_min:g} min) leaves no time for another repetition; "
            f"running {MIN_REPETITIONS} anyway, the fewest that show any noise"
        )
    return result


def _repetition_s(done: Sequence[Result]) -> float:
    """What one more repetition is expected to take: the time between the last two (a whole
    round of the matrix when repetitions interleave across cells), else the last one's own."""
    if not done or done[-1].finished_at is None:
        return 0.0
    end = _epoch(done[-1].finished_at)
    before = done[-2].finished_at if len(done) >= 2 else None
    return end - _epoch(before or done[-1].started_at)


def _epoch(stamp: str) -> float:
    return dt.datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.UTC).timestamp()


def _standing(last: Result | None, config: RunConfig) -> str:
    if last is None or last.repeat is None or last.repeat.widest_pct is None:
        return ""
    state = last.repeat
    aim = f" > {config.target_pct:g}%" if config.repeat == "auto" else ""
    return f" (widest interval so far ±{state.widest_pct:g}%{aim}: {state.widest})"


def _result_line(result: Result) -> str:
    line = f"{result.cell.name}: {result.status}" + (f": {result.error}" if result.error else "")
    if result.repeat:
        line += f" (repetition {result.repetition}"
        if result.discarded:
            line += ", the warm-up, not counted"
        if result.repeat.interval_pct is not None:
            line += f", total ±{result.repeat.interval_pct:g}%"
        if result.repeat.stopped:
            line += f"; stopped: {STOP_REASONS[result.repeat.stopped]}"
        line += ")"
    return line


STOP_REASONS = {
    "count": "the repetitions asked for",
    "target": "every interval within the target",
    "budget": "the budget would not fit another",
    "limit": f"{MAX_AUTO} repetitions, the most auto runs",
}


def _matrix(args: argparse.Namespace, run_args: list[str], console: Console) -> int:
    # Bad options fail here, once, not in every cell.
    given = build_parser().parse_args(["run", *run_args])
    config = _config(given)
    if config.url:
        raise ConfigError("--url measures one server: use `run`, not `matrix`")
    known = server_names(args.servers)
    if unknown := sorted(set(args.only_servers or ()) - set(known)):
        raise ConfigError(f"unknown server {unknown[0]!r} (known: {', '.join(known)})")
    servers = [s for s in known if not args.only_servers or s in args.only_servers]
    pythons = dict(args.prefect_pythons or ())
    if len(pythons) == 1 or len(pythons) < len(args.prefect_pythons or ()):
        raise ConfigError("--prefect-python compares versions: give two or more, each once")
    cells = [
        Cell(server=s, db=d, broker=b, version=v)
        for s, d, b, v in versioned_cells(
            matrix_cells(servers), list(pythons), versioned_server_names(args.servers)
        )
        if d in (args.only_dbs or DBS) and b in (args.only_brokers or BROKERS)
    ]
    run_id = args.run_id or new_run_id()
    if args.servers:
        run_args = [*run_args, "--servers", str(args.servers)]
    console.print(f"run {run_id}: results in {args.out / run_id}", markup=False)
    states, interrupted = run_matrix(cells, run_args, run_id, args.out, config, console, pythons)
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
    console.print(table)
    if interrupted:
        return EXIT_INTERRUPTED
    report_args = argparse.Namespace(
        paths=[args.out / run_id], out=args.out, baseline=None, history=None
    )
    _report(report_args, console)
    failed = [s for s in states if any(r.status == "failed" for r in s.results)]
    return EXIT_FAILED if failed else EXIT_OK


def _report(args: argparse.Namespace, console: Console) -> int:
    from bench.report import build, collect, render_html, render_markdown, render_terminal

    # Callers that build their own namespace (the matrix's closing report) may leave it out.
    history_dir: Path | None = args.history
    # --history alone: the report is the history, not also a report over results/.
    results, warnings = collect(args.paths or ([] if history_dir else [Path("results")]))
    baseline = None
    if args.baseline:
        baseline, baseline_warnings = collect(args.baseline)
        warnings += [f"baseline: {w}" for w in baseline_warnings]
    history = None
    if history_dir:
        if not history_dir.is_dir():
            raise ConfigError(f"--history: {history_dir} is not a folder")
        history, history_warnings = collect([history_dir])
        warnings += [f"history: {w}" for w in history_warnings]
    for warning in warnings:
        console.print(f"warning: {warning}", markup=False, highlight=False, style="yellow")
    # The matrix's closing report (its own namespace) is of one machine.
    report = build(results, baseline, history, getattr(args, "across_machines", False))
    for renderable in render_terminal(report):
        console.print(renderable)
    try:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "report.md").write_text(render_markdown(report), encoding="utf-8")
        (args.out / "report.html").write_text(render_html(report), encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot write the report into {args.out}: {exc.strerror}") from exc
    console.print(f"report: {args.out / 'report.md'}, {args.out / 'report.html'}")
    return EXIT_OK


def _compare(args: argparse.Namespace, console: Console) -> int:
    from bench.compare import gate as comparison
    from bench.report import collect

    rules = [comparison.parse_rule(text) for text in args.rules]
    want = 1 if args.aa else 2
    if len(args.sides) != want:
        raise ConfigError("compare takes BEFORE AFTER" if want == 2 else "--aa takes one DIR")
    sides = []
    for path in args.sides:
        if not path.exists():
            raise ConfigError(f"{path}: no such file or directory")
        results, warnings = collect([path])
        for warning in warnings:
            console.print(f"warning: {warning}", markup=False, highlight=False, style="yellow")
        sides.append(results)
    if args.aa:
        return _calibrate(args, sides[0], rules, console)
    result = comparison.compare(*sides)
    if result.differences and not args.allow_different:
        raise ConfigError(
            "the sides were not measured alike (--allow-different compares them anyway): "
            + "; ".join(result.differences)
        )
    failing = comparison.gate(result.figures, rules)
    text = comparison.render(result, rules, failing)
    console.print(text, markup=False, highlight=False)
    if args.out:
        _write_new(args.out, text)
    for f in failing:
        print(
            f"prefect-bench: {f.cell} {f.name} {f.metric} {f.change_pct:+.1f}% "
            f"(p {f.p_adjusted:.3f}) breaks {', '.join(f.broken)}",
            file=sys.stderr,
        )
    return EXIT_FAILED if failing else EXIT_OK


def _calibrate(
    args: argparse.Namespace, results: list[Result], rules: list[Any], console: Console
) -> int:
    from bench.compare import gate as comparison

    if args.size < 2:
        raise ConfigError(f"--size {args.size}: at least 2 repetitions a side")
    cells = comparison.by_cell(results)
    if not cells:
        raise ConfigError(f"{args.sides[0]} holds no ok result to calibrate with")
    calibrations = [comparison.calibrate(c, rs, args.size, rules) for c, rs in cells.items()]
    text = comparison.render_calibrations(calibrations, rules)
    console.print(text, markup=False, highlight=False)
    folder = args.sides[0] if args.sides[0].is_dir() else args.sides[0].parent
    stem = f"report.aa-{new_run_id()}"
    _write_new(folder / f"{stem}.md", text)
    kept = comparison.CalibrationReport(
        rules=[r.text for r in rules], cells=[c.__dict__ for c in calibrations]
    )
    write_result(kept, folder / f"{stem}.json")
    console.print(f"calibration: {folder / stem}.md, .json", markup=False, highlight=False)
    if args.out:
        _write_new(args.out, text)
    return EXIT_OK


def _write_new(path: Path, text: str) -> None:
    try:
        with path.open("x", encoding="utf-8") as f:
            f.write(text)
    except FileExistsError:
        raise ConfigError(f"{path} exists: never overwritten") from None
    except OSError as exc:
        raise ConfigError(f"cannot write {path}: {exc.strerror}") from exc


def _conformance(args: argparse.Namespace, console: Console) -> int:
    if args.url:
        parse_url(args.url, getattr(args, "allow_remote", False))  # bad input: first
    check_inputs(args.tasks, args.timeout_s)
    if args.json and args.json.exists():
        raise ConfigError(f"{args.json} exists: reports are never overwritten")
    prefix = f"{ownership.FOLDER_PREFIX}conformance-"
    with tempfile.TemporaryDirectory(prefix=prefix) as folder, ExitStack() as stack:
        workdir = Path(folder)
        # marked, so that the next cell removes it if we are killed before we do
        ownership.mark_folder(workdir, ownership.Labels("conformance", "conformance"), "client")
        url = args.url
        if url is None:
            config = _config(args, workload="flow-runs", tasks=args.tasks)
            args.out = workdir / "cell"  # the server's logs: in the folder removed after
            run = _cell_run(args, config)
            progress = stack.enter_context(progress_for(console, run.cell.name))
            url = stack.enter_context(serving(run, progress))
        report = check(url, tasks=args.tasks, workdir=workdir, timeout_s=args.timeout_s)
    for line in report_lines(report):
        console.print(line, markup=False, highlight=False)
    table = Table(title="what the real client sent for its flow run", title_justify="left")
    table.add_column("request")
    table.add_column("count", justify="right")
    for what, count in traffic_rows(report.traffic):
        table.add_row(what, str(count))
    console.print(table)
    for problem in report.traffic.problems:
        console.print(f"warning: {problem}", markup=False, highlight=False, style="yellow")
    if args.json:
        write_result(report, args.json)
        console.print(f"report: {args.json}", markup=False, highlight=False)
    return EXIT_OK if report.ok else EXIT_FAILED


# Width of tables written to a file or pipe (a CI log, `| less`): rich's default there is 80
# columns, too narrow for the report's tables, which then wrap every name.
PIPE_WIDTH = 200


def _console() -> Console:
    console = Console()
    if not console.is_terminal and "COLUMNS" not in os.environ:
        console = Console(width=PIPE_WIDTH)
    return console


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `python -m bench` and `prefect-bench`."""
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    if rest and args.command != "matrix":
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    console = _console()
    signal.signal(signal.SIGTERM, _interrupt_on_sigterm)
    try:
        if args.command == "matrix":
            return _matrix(args, rest, console)
        if args.command == "run":
            return _run(args, console)
        if args.command == "compare":
            return _compare(args, console)
        if args.command == "conformance":
            return _conformance(args, console)
        return _report(args, console)
    except ConfigError as exc:
        print(f"prefect-bench: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except BenchError as exc:
        print(f"prefect-bench: error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        print("prefect-bench: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
