"""The command line: parses arguments into options, runs, prints, and picks the exit code.

Exit codes:
    0    the cell ran and its result is ok (report: written; conformance: all read back)
    1    the cell failed (its result says why) or a result could not be written; conformance:
         something did not read back (the line says what), or the server does not answer; or
         a bug: `internal error (a bug): TYPE: MESSAGE` and where its traceback is
    2    bad input: an unknown name, a bad number, an unwritable results folder
    3    the cell was skipped: it cannot run on this machine (its result says why)
    130  interrupted (Ctrl-C or SIGTERM); the partial result is written
(their constants: bench.cells.commands, which noxfile.py and the matrix's rounds read too)

Every failure ends in one line that names its cause, the last one printed: `prefect-bench:
error: …` on stderr, or a cell's `<cell>: failed: …`; -v prints its traceback and details
before it (bench.core.failures).
"""

from __future__ import annotations

import argparse
import importlib.metadata
import os
import re
import signal
import sys
import tempfile
import types
import typing
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any, NoReturn

from rich.console import Console
from rich.table import Table

from bench import __version__
from bench.cells import doctor, repeat, resume, rounds, together
from bench.cells.commands import (
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_SKIPPED,
    EXIT_USAGE,
    QUIET_ENV,
    RUN_ID,
    VERBOSE_ENV,
    new_run_id,
)
from bench.cells.matrix import cells, chosen, known_servers
from bench.cells.runner import EXTERNAL_SERVER, INTERRUPTED, CellRun, parse_url, serving
from bench.cells.settings import SETTINGS, Declared, pinned, run_config
from bench.compare.metrics import METRICS
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
from bench.core.failures import bug, keep, long_form, one_line
from bench.observe.progress import progress_for
from bench.results import Cell, Result, utc_now, write_result
from bench.servers.registry import make_server, server_options
from bench.servers.specs import builtin_server_names, versioned_server_names
from bench.services import PROVIDERS
from bench.workloads import WORKLOADS

if TYPE_CHECKING:  # imported when compare runs: scipy is slow to import
    from bench.compare.gate import Comparison, Rule

_EXIT_BY_STATUS = {"ok": EXIT_OK, "failed": EXIT_FAILED, "skipped": EXIT_SKIPPED}
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


_DURATION = re.compile(r"(?:(\d+(?:\.\d+)?)h)?(?:(\d+(?:\.\d+)?)m)?(?:(\d+(?:\.\d+)?)s?)?")


def _duration(text: str) -> float:
    """Seconds from '2h', '30m', '1h30m', '90s' or '90'."""
    match = _DURATION.fullmatch(text.strip())
    if not text.strip() or match is None:
        raise argparse.ArgumentTypeError(
            f"expected a duration such as 2h, 30m, 1h30m or 90s, got {text!r}"
        )
    hours, minutes, seconds = (float(g or 0) for g in match.groups())
    return hours * 3600 + minutes * 60 + seconds


def _run_id(text: str) -> str:
    if not RUN_ID.match(text):
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


# How the command line reads a setting's text, by the `text` its declaration names (or its type).
_GRAMMARS: dict[str, Callable[[str], Any]] = {
    "int": int,
    "float": float,
    "str": str,
    "ints": _int_list,
    "cpus": _cpu_list,
    "repeat": _repeat,
    "duration": _duration,
    "workload": _Choice(tuple(WORKLOADS), "workload"),
    "provider": _Choice(tuple(PROVIDERS), "provider"),
}


def _grammar(setting: Declared) -> Callable[[str], Any] | None:
    """How `setting`'s text is read; None for a switch."""
    if setting.metavar is None:
        return None
    if setting.text is not None:
        return _GRAMMARS[setting.text]
    kind = setting.info.annotation
    while typing.get_origin(kind) in (typing.Annotated, types.UnionType, typing.Union):
        # int | None reads as int; Annotated[float, Field(gt=0)] as float
        kind = next(a for a in typing.get_args(kind) if a is not type(None))
    return _GRAMMARS[getattr(kind, "__name__", "str")]


def _config_help(setting: Declared, parse: Callable[[str], Any] | None) -> str:
    info = setting.info
    text = info.description or ""
    if isinstance(parse, _Choice):
        text = f"{', '.join(parse.known)}: {text}"
    if info.default not in (None, False) and "default" not in text:
        default = info.default
        shown = ",".join(map(str, default)) if isinstance(default, list) else f"{default:g}"
        text += f" (default {shown})"
    return text.replace("%", "%%")


def _add_config_options(parser: argparse.ArgumentParser, only: Sequence[str] | None = None) -> None:
    """The settings' options (or `only` those of these fields) on `parser`: RunConfig's and
    those every workload and server adapter declares (bench.cells.settings)."""
    for name, setting in SETTINGS.items():
        if setting.flag is None or (only is not None and name not in only):
            continue
        parse = _grammar(setting)
        how: dict[str, Any] = (
            {"action": "store_true"}
            if parse is None
            else {"type": parse, "metavar": setting.metavar}
        )
        parser.add_argument(
            setting.flag,
            dest=name,
            default=argparse.SUPPRESS,
            help=_config_help(setting, parse),
            **how,
        )


def _add_cell_options(parser: argparse.ArgumentParser) -> None:
    """--server, --db, --broker, --servers and each server adapter's own options."""
    parser.add_argument(
        "--server",
        default="python",
        help=f"{', '.join(builtin_server_names())} or one of --servers (default python)",
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


def _add_cell_selection(parser: argparse.ArgumentParser) -> None:
    """The options that pick some cells of the matrix: --server, --db, --broker, --servers."""
    parser.add_argument(
        "--server",
        dest="only_servers",
        action="append",
        metavar="NAME",
        help="only this server's cells (may be given again; default every server)",
    )
    for flag, known in (("--db", DBS), ("--broker", BROKERS)):
        parser.add_argument(
            flag,
            dest=f"only_{flag[2:]}s",
            action="append",
            type=_Choice(known, flag[2:]),
            metavar="NAME",
            help=f"only the {' or '.join(known)} cells (may be given again; default both)",
        )
    parser.add_argument(
        "--servers", type=Path, help="custom servers (default: servers.toml if present)"
    )


def _add_fail_on(parser: argparse.ArgumentParser, text: str) -> None:
    """--fail-on: the gate's rules, as `compare` reads them (`run` stops on them)."""
    parser.add_argument(
        "--fail-on", dest="rules", action="append", default=[], metavar="EXPR", help=text
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
    # The matrix's rounds: one repetition at a time, the budget counted from the matrix's start
    # (bench.cells.commands.cell_argv gives them).
    run.add_argument("--one-repetition", action="store_true", help=argparse.SUPPRESS)
    run.add_argument("--deadline", type=float, help=argparse.SUPPRESS)
    run.add_argument(
        "--prefect-version",
        metavar="VERSION",
        help="one of several Prefect versions compared in a run (PREFECT_VERSION=a,b): the "
        "cell is named by it, and this environment must have it installed",
    )
    _add_cell_options(run)
    run.add_argument(
        "--beside",
        action="append",
        metavar="SERVER",
        help="measure this server together with --server (may be given again): round after "
        "round (--repeat N, the first a warm-up), every server started afresh and up at once; "
        "two servers in a duet (--duet) where the machine and the options allow one, otherwise "
        "(or with --alternate) each endpoint's windows alternating between them on the "
        "server's CPUs; each server's rounds are its cell's repetitions, paired by `compare "
        "RUN --before A --after B`",
    )
    run.add_argument(
        "--alternate",
        action="store_true",
        help="with --beside: the servers' windows alternating on the server's CPUs, even where "
        "two servers could be measured in a duet (the default for two, where the machine and "
        "the options allow one: see --duet)",
    )
    _add_fail_on(
        run,
        "with --beside and --repeat auto: run rounds until every figure this rule gates (as "
        "`compare --fail-on` would) is decided, broken or clear of its threshold, instead of "
        "until the total reaches --target (may be given again)",
    )

    matrix = commands.add_parser(
        "matrix",
        help="every cell in turn under one run id, each in its own process (in rounds with "
        "--repeat, each round in the reverse order of the last), then the report; every "
        "option of `run` applies to every cell",
    )
    matrix.add_argument("--out", type=Path, default=Path("results"), help="results folder")
    matrix.add_argument("--run-id", type=_run_id, help="the run's id (default: a new id)")
    matrix.add_argument(
        "--resume",
        metavar="RUN",
        help="continue a matrix that stopped (Ctrl-C, killed, the machine restarted): RUN is its "
        "id under --out, or its folder. The results written are kept, an interrupted cell runs "
        "again, the rounds go on in their order, and the report covers the whole run; the "
        "run's own options are used (it recorded them in its .matrix.json)",
    )
    _add_cell_selection(matrix)
    matrix.add_argument(
        "--dry-run",
        action="store_true",
        help="say which cells would run here and which would be skipped (and why), and how "
        "long the matrix would take; run nothing",
    )
    matrix.add_argument(
        "--together",
        action="store_true",
        help="measure the servers of each db × broker together, as `run --server A --beside B` "
        "does: each round one turn for them all, every server started afresh and up at once, "
        "each endpoint's windows alternating between them; with --repeat N|auto, paired by "
        "`compare RUN --before A --after B`",
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
        "permutation test over the repetitions (two servers of one run, --before/--after: a "
        "paired test over its rounds), corrected for the many tests (Benjamini-Hochberg); exit "
        "1 when a --fail-on rule breaks",
    )
    compare.add_argument(
        "sides",
        nargs="+",
        type=Path,
        metavar="PATH",
        help="BEFORE AFTER (with --before/--after, or --aa: one run's DIR)",
    )
    compare.add_argument(
        "--before",
        metavar="SERVER",
        help="with --after: compare two servers of one run (e.g. `python`, `python@3.8.0`), "
        "their repetitions paired by round",
    )
    compare.add_argument("--after", metavar="SERVER", help="see --before")
    _add_fail_on(
        compare,
        "fail (exit 1) on a significant change beyond this, METRIC<CHANGE%% or "
        f"METRIC>CHANGE%% with METRIC one of {', '.join(METRICS)}, e.g. 'rps<-5%%' or "
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
        "--json",
        type=Path,
        metavar="FILE",
        help="also write the comparison as data here: the verdict, every figure with its "
        "change, interval, test and the rules it breaks (schema_version 1)",
    )
    compare.add_argument(
        "--aa",
        action="store_true",
        help="A/A: split DIR's repetitions of each cell (the same server) into two sides every "
        "way, or with --before A --after A2 (one server under two names, measured in one run) "
        "compare them paired on subsets of their rounds, and report how often the gate fires "
        "on noise and the smallest change it can tell; kept in DIR as report.aa-<id>.md/.json",
    )
    compare.add_argument(
        "--size",
        type=int,
        metavar="N",
        help="--aa: repetitions a side (default 4, cost cells 1: their blocks are the samples; "
        "DIR needs twice as many per cell); paired, rounds a subset (default 4, fewer than the "
        "run's)",
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
    doctor = commands.add_parser(
        "doctor",
        help="which cells this machine can run and which it cannot, with the fix for each; "
        "the tools each option needs; how long the matrix would take with the options given "
        "(every option of `run` applies); exit 0 when the default cell can run",
    )
    _add_cell_selection(doctor)
    for command in commands.choices.values():  # every command's -v, declared here once
        command.add_argument(
            "-v",
            "--verbose",
            action="store_true",
            default=os.environ.get(VERBOSE_ENV, "") not in ("", "0"),
            help="also print a failure's traceback and details (a server's last log lines, "
            f"the real client's output) before its one line (or set {VERBOSE_ENV}=1); a "
            "cell's are in its cell.log either way",
        )
        command.add_argument(
            "-q",
            "--quiet",
            action="store_true",
            default=os.environ.get(QUIET_ENV, "") not in ("", "0"),
            help="no progress (which goes to stderr): print only the command's output, its "
            f"warnings and its errors (or set {QUIET_ENV}=1)",
        )
    return parser


def _config(args: argparse.Namespace, **fixed: Any) -> RunConfig:
    """The run's configuration from the options given, and `fixed` values for the fields the
    command sets itself, pinned (bench.cells.settings); ConfigError naming the bad option."""
    given = {name: getattr(args, name) for name in SETTINGS if hasattr(args, name)}
    return pinned(run_config(given | fixed))


def _cell_run(args: argparse.Namespace, config: RunConfig | None = None) -> CellRun:
    """The cell the options name, with `config` (default: the one the options build)."""
    config = config or _config(args)
    run_id = getattr(args, "run_id", None) or new_run_id()
    if config.url:
        return CellRun(Cell(server=EXTERNAL_SERVER), run_id, args.out, config, server=None)
    known_servers(args.servers, [args.server])
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


def _run(args: argparse.Namespace, console: Console, status: Console) -> int:
    if args.beside:
        return _run_together(args, console, status)
    run = _cell_run(args)
    _fail_on_rules(args.rules, False, run.config)
    _check_duet(run.config, args.alternate, False)
    if run.config.url and "workload" not in vars(args):
        print(
            f"no --workload given: measuring {run.config.workload} at {run.config.url} "
            f"({WORKLOADS[run.config.workload].description})",
            file=sys.stderr,
        )
    done = repeat.prepare(run, args.json)
    with progress_for(status, run.cell.name, args.verbose) as progress:
        for result, path in repeat.run_repetitions(
            run, progress, done, args.deadline, args.one_repetition
        ):
            console.print(f"result: {path}", markup=False, highlight=False, soft_wrap=True)
            # how it ended, last: one line naming the cause, however long (never wrapped)
            line = repeat.result_line(result)
            console.print(line, markup=False, highlight=False, soft_wrap=True)
    if args.json:
        write_result(result, args.json)
    if result.error == INTERRUPTED:
        return EXIT_INTERRUPTED
    return _EXIT_BY_STATUS[result.status]


def _run_together(args: argparse.Namespace, console: Console, status: Console) -> int:
    """`run --beside`: the servers measured together, each round's results as they are written."""
    if args.json:
        raise ConfigError("--json writes one result to one path: not with --beside")
    config = _config(args)
    rules = _fail_on_rules(args.rules, True, config)
    first = _cell_run(args, config)
    runs = [first] + [
        _cell_run(
            argparse.Namespace(**{**vars(args), "server": name, "run_id": first.run_id}), config
        )
        for name in args.beside
    ]
    if args.alternate and config.duet:
        raise ConfigError("--duet or --alternate: one design, not both")
    if not args.alternate and not config.duet:
        runs = together.by_default(runs, _config(args, duet=True))
    done = together.prepare(runs, resuming=args.one_repetition)
    label = (
        " + ".join(run.cell.server for run in runs) + f" ({first.cell.db} × {first.cell.broker})"
    )
    with progress_for(status, label, args.verbose) as progress:
        measured = together.run_together(
            runs, progress, done, args.deadline, args.one_repetition, rules
        )
        for result, path in measured:
            console.print(f"result: {path}", markup=False, highlight=False, soft_wrap=True)
            console.print(repeat.result_line(result), markup=False, highlight=False, soft_wrap=True)
    if result.error == INTERRUPTED:  # the last round's: a round that failed is the last
        return EXIT_INTERRUPTED
    return _EXIT_BY_STATUS[result.status]


def _matrix(
    args: argparse.Namespace, run_args: list[str], console: Console, status: Console
) -> int:
    if args.resume:
        return _resume(args, run_args, console, status)
    if args.dry_run:
        outlooks, config = _outlooks(args, run_args)
        doctor.render(console, outlooks, config, show_tools=False)
        return EXIT_OK
    config = _matrix_config(run_args, args.together)
    pythons = dict(args.prefect_pythons or ())
    cells = [
        Cell(server=s, db=d, broker=b, version=v)
        for s, d, b, v in chosen(
            args.servers,
            list(pythons),
            args.only_servers or (),
            args.only_dbs or (),
            args.only_brokers or (),
        )
    ]
    if len(pythons) == 1 or len(pythons) < len(args.prefect_pythons or ()):
        raise ConfigError("--prefect-python compares versions: give two or more, each once")
    if args.together:
        _check_together(cells, config)
    run_id = args.run_id or new_run_id()
    request = resume.MatrixRequest(
        run_id=run_id,
        cells=cells,
        run_args=run_args,
        servers=str(args.servers.absolute()) if args.servers else None,
        pythons={version: os.path.abspath(python) for version, python in pythons.items()},
        together=args.together,
        cwd=os.getcwd(),
        started_at=utc_now(),
    )
    folder = args.out / run_id
    with resume.hold(folder) as lock:
        resume.write_request(request, folder)
        status.print(f"run {run_id}: results in {folder}", markup=False)
        return _matrix_rounds(request, folder, config, console, status, lock)


def _fail_on_rules(texts: Sequence[str], measured_together: bool, config: RunConfig) -> list[Rule]:
    """`run`'s --fail-on rules; ConfigError for a bad one, or unless they stop servers
    measured together (`measured_together`) with --repeat auto: a run of one server has no
    verdict to decide."""
    if texts and not (measured_together and config.repeat == "auto"):
        raise ConfigError(
            "--fail-on decides when --repeat auto stops servers measured together (run "
            "--beside, matrix --together); a verdict is `compare --fail-on`'s"
        )
    from bench.compare.gate import parse_rule

    return [parse_rule(text) for text in texts]


def _check_duet(config: RunConfig, alternate: bool, measured_together: bool) -> None:
    """ConfigError for --duet or --alternate on a server measured alone: each is a design of
    servers measured together."""
    if (config.duet or alternate) and not measured_together:
        flag = "--duet" if config.duet else "--alternate"
        raise ConfigError(
            f"{flag} is how servers measured together are measured: give --beside SERVER "
            "(run) or --together (matrix)"
        )


def _check_together(cells: Sequence[Cell], config: RunConfig) -> None:
    """ConfigError unless `matrix --together` has servers to measure together, each group
    with settings `run --beside` takes."""
    for group in together.groups(cells):
        if len(group) < 2:
            raise ConfigError(
                f"--together measures two servers or more of one db × broker: "
                f"{group[0].name} has none beside it (pick cells with --server, --db, --broker)"
            )
        names = [cell.server for cell in group]
        if reason := together.refusal(config, names, any(c.version for c in group), "--together"):
            raise ConfigError(reason)


def _doctor(args: argparse.Namespace, run_args: list[str], console: Console) -> int:
    outlooks, config = _outlooks(args, run_args)
    doctor.render(console, outlooks, config, show_tools=True)
    server, db, broker = cells(args.servers)[0]  # the embedded default comes first
    default = Cell(server=server, db=db, broker=broker).name
    if doctor.default_cell_runs(outlooks, default):
        return EXIT_OK
    print(f"prefect-bench: the default cell ({default}) cannot run here", file=sys.stderr)
    return EXIT_SKIPPED


def _outlooks(
    args: argparse.Namespace, run_args: list[str]
) -> tuple[list[doctor.Outlook], RunConfig]:
    """Each cell the options pick, as this machine would run it with `run_args`."""
    config = _matrix_config(run_args, getattr(args, "together", False))
    parser = build_parser()
    servers = ["--servers", str(args.servers)] if args.servers else []
    found = []
    for server, db, broker, _ in chosen(
        args.servers, [], args.only_servers or (), args.only_dbs or (), args.only_brokers or ()
    ):
        words = ["run", "--server", server, "--db", db, "--broker", broker, *run_args, *servers]
        cell_args = parser.parse_args(words)
        found.append(doctor.outlook(_cell_run(cell_args, config)))
    return found, config


def _matrix_config(run_args: list[str], measured_together: bool = False) -> RunConfig:
    """The configuration `run_args` give every cell (`measured_together`: the matrix's
    servers measured together): bad options fail here, once, not in every cell."""
    args = build_parser().parse_args(["run", *run_args])
    if args.json:
        raise ConfigError("--json writes one result to one path: use `run`, not `matrix`")
    config = _config(args)
    if config.url:
        raise ConfigError("--url measures one server: use `run`, not `matrix`")
    _fail_on_rules(args.rules, measured_together, config)
    _check_duet(config, args.alternate, measured_together)
    return config


def _resume(
    args: argparse.Namespace, run_args: list[str], console: Console, status: Console
) -> int:
    folder = resume.locate(args.resume, args.out)
    request = resume.read_request(folder)
    given = (
        ("--run-id", args.run_id),
        ("--server", args.only_servers),
        ("--db", args.only_dbs),
        ("--broker", args.only_brokers),
        ("--servers", args.servers),
        ("--prefect-python", args.prefect_pythons),
    )
    ignored = [flag for flag, value in given if value] + [a for a in run_args if a[:1] == "-"]
    if ignored:
        _warn(
            [
                f"--resume: {' '.join(ignored)} ignored: the run's own options are used "
                f"({' '.join(request.run_args) or 'none'}, as it was started)"
            ]
        )
    config = _matrix_config(request.run_args, request.together)
    waiting = f"run {request.run_id}: waiting for its processes to stop (a cell still stopping?)"
    with resume.hold(folder, resume.RESUME_WAIT_S, lambda: status.print(waiting)) as lock:
        states = rounds.standing(request.cells, folder.parent, request.run_id)
        if all(s.done for s in states):
            console.print(
                f"run {request.run_id} is finished: every cell's results are written, nothing "
                f"to resume (its report: python -m bench report {folder})",
                markup=False,
                soft_wrap=True,
            )
            return EXIT_OK
        line = f"resuming run {request.run_id}: {rounds.standing_line(states)}"
        status.print(line, markup=False, highlight=False, soft_wrap=True)
        spent_s = repeat.busy_s(folder)  # of the budget
        return _matrix_rounds(request, folder, config, console, status, lock, states, spent_s)


def _matrix_rounds(
    request: resume.MatrixRequest,
    folder: Path,
    config: RunConfig,
    console: Console,
    status: Console,
    lock: int,
    states: list[rounds.CellRounds] | None = None,
    spent_s: float = 0.0,
) -> int:
    """The matrix's rounds from where `states` say the run stands, its closing table, then
    (unless interrupted) the report over the whole run."""
    if states is None:
        states = rounds.standing(request.cells, folder.parent, request.run_id)
    states, interrupted = rounds.run_matrix(
        request, states, folder.parent, config, status, lock, spent_s
    )
    console.print(rounds.summary(request.run_id, states))
    if interrupted:
        print(f"continue it: python -m bench matrix --resume {folder}", file=sys.stderr)
        return EXIT_INTERRUPTED
    # one run of one machine's cells: no baseline, no history, no speedups across machines
    _print_report(console, [folder], folder.parent)
    failed = [s for s in states if any(r.status == "failed" for r in s.kept)]
    if failed:
        return EXIT_FAILED
    if all(r.status == "skipped" for s in states for r in s.kept):
        reasons = sorted({r.error or "" for s in states for r in s.kept} - {""})
        print(
            f"prefect-bench: every cell was skipped: {'; '.join(reasons) or 'nothing ran'}",
            file=sys.stderr,
        )
        return EXIT_SKIPPED
    return EXIT_OK


def _report(args: argparse.Namespace, console: Console) -> int:
    # --history alone: the report is the history, not also a report over results/.
    paths = args.paths or ([] if args.history else [Path("results")])
    _print_report(console, paths, args.out, args.baseline, args.history, args.across_machines)
    return EXIT_OK


def _print_report(
    console: Console,
    paths: Sequence[Path],
    out: Path,
    baseline: Sequence[Path] | None = None,
    history: Path | None = None,
    across_machines: bool = False,
) -> None:
    """The report over `paths` (bench.report.files.read_report's options), printed and
    written into `out`."""
    from bench.report import render_terminal
    from bench.report.files import read_report, write_report

    report, warnings = read_report(paths, baseline, history, across_machines)
    _warn(warnings)
    for renderable in render_terminal(report):
        console.print(renderable)
    written = write_report(report, out)
    console.print(f"report: {', '.join(map(str, written))}")


def _warn(warnings: Sequence[str]) -> None:
    """Warnings go to stderr, so that what a command prints (`compare … > comment.md`) is its
    output alone."""
    for warning in warnings:
        print(f"warning: {warning}", file=sys.stderr)


def _compare(args: argparse.Namespace, console: Console) -> int:
    from bench.compare import gate as comparison
    from bench.report import collect
    from bench.report.profile import profile_changes

    rules = [comparison.parse_rule(text) for text in args.rules]
    if args.json and args.aa:
        raise ConfigError("--aa keeps its calibration as DIR/report.aa-<id>.json: no --json")
    if args.json and args.json.exists():
        raise ConfigError(f"{args.json} exists: a comparison is never written over a file")
    paired = args.before is not None or args.after is not None
    if paired and (args.before is None or args.after is None):
        raise ConfigError("--before and --after go together: two servers of one run")
    want = 1 if args.aa or paired else 2
    if len(args.sides) != want:
        raise ConfigError(
            "--aa takes one DIR"
            if args.aa
            else "--before/--after take one run's DIR"
            if paired
            else "compare takes BEFORE AFTER (or one run's DIR with --before A --after B)"
        )
    sides = []
    for path in args.sides:
        if not path.exists():
            raise ConfigError(f"{path}: no such file or directory")
        results, warnings = collect([path])
        _warn(warnings)
        sides.append(results)
    if paired:
        sides = list(comparison.split_servers(sides[0], args.before, args.after))
    if args.aa:
        return _calibrate(args, sides, rules, console)
    folders = (args.sides[0], args.sides[-1])
    result = comparison.compare(*sides, paired=paired)
    if result.differences and not args.allow_different:
        raise ConfigError(
            "the sides were not measured alike (--allow-different compares them anyway): "
            + "; ".join(result.differences)
        )
    if unchecked := comparison.ungated(result.figures, rules):
        raise ConfigError("; ".join(unchecked))
    failing = comparison.gate(result.figures, rules)
    text = comparison.render(result, rules, failing)
    text += _where_the_cost_went(result, sides, folders)
    text += profile_changes(sides[0], sides[1], [folders[0]], [folders[1]], result.pairs)
    console.print(text, markup=False, highlight=False)
    if args.out:
        _write_new(args.out, text)
    if args.json:
        write_result(comparison.gate_report(result, rules, failing), args.json)
    for f in failing:
        print(
            f"prefect-bench: {f.cell} {f.name} {f.metric} {f.change_pct:+.1f}% "
            f"(p {f.p_adjusted:.3f}) breaks {', '.join(f.broken)}",
            file=sys.stderr,
        )
    return EXIT_FAILED if failing else EXIT_OK


def _where_the_cost_went(
    result: Comparison, sides: list[list[Result]], folders: tuple[Path, Path]
) -> str:
    """For cost results, the functions whose instructions changed most per endpoint (Markdown,
    after the comparison), read from the callgrind dumps kept beside each side's results."""
    from bench.compare import gate as comparison
    from bench.cost.functions import where_it_went

    old, new = comparison.by_cell(sides[0]), comparison.by_cell(sides[1])
    if not any(r.config.cost for rs in old.values() for r in rs):
        return ""
    lines = ["", "### Where the cost went", ""]
    lines.append(
        "Per endpoint, the functions whose own instructions per request (self) changed most, "
        "from the callgrind dumps kept beside the results, their share of the endpoint's whole "
        "change and their inclusive figures (their callees' included; '-': absent, or seen "
        "only inside its own recursion). A Python server's functions are the interpreter's and "
        "its C extensions': Python code runs inside `_PyEval_EvalFrameDefault`. Open the dumps "
        "with `callgrind_annotate` or KCachegrind for the call graph."
    )
    lines.append("")
    for b, a in result.pairs:
        lines += where_it_went(b if a == b else f"{b} → {a}", old[b], new[a], folders)
    return "\n".join(lines) + "\n"


def _calibrate(
    args: argparse.Namespace, sides: list[list[Result]], rules: list[Any], console: Console
) -> int:
    """`--aa`: one server's repetitions split every way, or (two sides: --before/--after) one
    server under two names paired on subsets of its rounds."""
    from bench.compare import gate as comparison

    if len(sides) == 2:
        calibrations = comparison.calibrate_pairs(*sides, args.size or 4, rules)
    else:
        cells = comparison.by_cell(sides[0])
        if not cells:
            raise ConfigError(f"{args.sides[0]} holds no ok result to calibrate with")
        calibrations = [
            comparison.calibrate(c, rs, args.size or (1 if rs[0].config.cost else 4), rules)
            for c, rs in cells.items()
        ]
    text = comparison.render_calibrations(calibrations, rules, paired=len(sides) == 2)
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


def _conformance(args: argparse.Namespace, console: Console, status: Console) -> int:
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
            progress = stack.enter_context(progress_for(status, run.cell.name, args.verbose))
            url = stack.enter_context(serving(run, progress))
        report = check(url, tasks=args.tasks, workdir=workdir, timeout_s=args.timeout_s)
    *checks, verdict = report_lines(report)  # the verdict last: the line that names the cause
    for line in checks:
        console.print(line, markup=False, highlight=False, soft_wrap=True)
    table = Table(title="what the real client sent for its flow run", title_justify="left")
    table.add_column("request")
    table.add_column("count", justify="right")
    for what, count in traffic_rows(report.traffic):
        table.add_row(what, str(count))
    console.print(table)
    _warn(report.traffic.problems)
    if args.json:
        write_result(report, args.json)
        console.print(f"report: {args.json}", markup=False, highlight=False)
    for failed in report.failed if args.verbose else ():
        if failed.details:
            console.print(f"{failed.name}:\n{failed.details}", markup=False, highlight=False)
    console.print(verdict, markup=False, highlight=False, soft_wrap=True)
    return EXIT_OK if report.ok else EXIT_FAILED


# Width of tables written to a file or pipe (a CI log, `| less`): rich's default there is 80
# columns, too narrow for the report's tables, which then wrap every name.
PIPE_WIDTH = 200


def _console(stderr: bool = False, quiet: bool = False) -> Console:
    """Where a command prints: its output on stdout; its progress on stderr (`stderr`),
    silenced by -q (`quiet`)."""
    console = Console(stderr=stderr, quiet=quiet)
    if not console.is_terminal and "COLUMNS" not in os.environ:
        console = Console(stderr=stderr, quiet=quiet, width=PIPE_WIDTH)
    return console


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `python -m bench` and `prefect-bench`."""
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    if rest and args.command not in ("matrix", "doctor"):
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    if problem := _not_linux():
        print(f"prefect-bench: error: {problem}", file=sys.stderr)
        return EXIT_USAGE
    console, status = _console(), _console(stderr=True, quiet=args.quiet)
    signal.signal(signal.SIGTERM, _interrupt_on_sigterm)
    if args.command == "matrix":  # the cells it starts (`run`) are verbose or quiet too
        if args.verbose:
            os.environ[VERBOSE_ENV] = "1"
        if args.quiet:
            os.environ[QUIET_ENV] = "1"
    try:
        if args.command == "matrix":
            return _matrix(args, rest, console, status)
        if args.command == "doctor":
            return _doctor(args, rest, console)
        if args.command == "run":
            return _run(args, console, status)
        if args.command == "compare":
            return _compare(args, console)
        if args.command == "conformance":
            return _conformance(args, console, status)
        return _report(args, console)
    except ConfigError as exc:
        return _failed(exc, EXIT_USAGE, args.verbose)
    except BenchError as exc:
        return _failed(exc, EXIT_FAILED, args.verbose)
    except KeyboardInterrupt:
        print("prefect-bench: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as exc:  # a bug: one line that says so, and where its traceback is
        return _bug(exc, args.verbose, argv)


def _not_linux() -> str | None:
    """Why this system cannot run prefect-bench (it reads /proc and pins processes to CPUs),
    or None on Linux."""
    if sys.platform.startswith("linux") and Path("/proc/self/stat").exists():
        return None
    return (
        f"prefect-bench runs on Linux (it reads /proc and pins processes to CPUs); this is "
        f"{sys.platform}: run it in a Linux machine, VM or container"
    )


def _failed(exc: BenchError, code: int, verbose: bool) -> int:
    """A failure's one line, the last on stderr (after its traceback and details with -v)."""
    if verbose:
        print(long_form(exc), file=sys.stderr)
    print(f"prefect-bench: error: {one_line(str(exc))}", file=sys.stderr)
    return code


# Where the traceback of a bug outside any cell is kept (a cell's goes to its cell.log).
TRACEBACK_PREFIX = "prefect-bench-traceback-"


def _bug(exc: Exception, verbose: bool, argv: Sequence[str] | None) -> int:
    """An exception prefect-bench did not expect: one line with its type and message and where
    its traceback is (printed instead with -v); EXIT_FAILED."""
    text = long_form(exc)
    if verbose:
        print(text, file=sys.stderr)
        where = ""
    else:
        command = " ".join(["prefect-bench", *(sys.argv[1:] if argv is None else argv)])
        try:
            handle, name = tempfile.mkstemp(prefix=TRACEBACK_PREFIX, suffix=".log")
            os.close(handle)
            where = f" (traceback in {keep(Path(name), command, text)})"
        except OSError as err:
            where = f" (its traceback could not be written: {err.strerror}; -v prints it)"
    print(f"prefect-bench: error: {bug(exc)}{where}", file=sys.stderr)
    return EXIT_FAILED
