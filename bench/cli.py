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
import os
import re
import signal
import sys
import tempfile
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from pathlib import Path
from types import FrameType
from typing import Any, NoReturn

from pydantic import ValidationError
from rich.console import Console
from rich.table import Table

from bench import __version__, ownership
from bench.conformance import (
    DEFAULT_TASKS,
    DEFAULT_TIMEOUT_S,
    check,
    check_inputs,
    report_lines,
    traffic_rows,
)
from bench.errors import BenchError, ConfigError
from bench.matrix import BROKERS, DBS
from bench.progress import progress_for
from bench.results import Cell, RunConfig, new_run_id, result_path, write_result
from bench.runner import EXTERNAL_SERVER, INTERRUPTED, CellRun, parse_url, run_cell, serving
from bench.servers.registry import make_server, server_options
from bench.servers.specs import server_names
from bench.services import PROVIDERS
from bench.workloads import WORKLOADS

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
    ("--engine-procs", "engine_procs", int, "N"),
    ("--server-cpus", "server_cpus", _cpu_list, "LIST"),
    ("--client-cpus", "client_cpus", _cpu_list, "LIST"),
    ("--url", "url", str, "URL"),
    ("--provider", "provider", _Choice(tuple(PROVIDERS), "provider"), "NAME"),
    ("--tasks", "tasks", int, "N"),
    ("--no-services", "no_services", None, None),
)
_FLAG_OF = {field: flag for flag, field, _, _ in CONFIG_OPTIONS}


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
    _add_cell_options(run)

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
    _add_config_options(conformance, only=("provider",))
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
        raise ConfigError(f"{flag}: {error['msg'][0].lower()}{error['msg'][1:]}") from None
    if config.url:
        parse_url(config.url)  # bad input: before anything is written
    return config


def _cell_run(args: argparse.Namespace, config: RunConfig | None = None) -> CellRun:
    """The cell the options name, with `config` (default: the one the options build)."""
    config = config or _config(args)
    run_id = getattr(args, "run_id", None) or new_run_id()
    if config.url:
        return CellRun(Cell(server=EXTERNAL_SERVER), run_id, args.out, config, server=None)
    known = server_names(args.servers)
    if args.server not in known:
        raise ConfigError(f"unknown server {args.server!r} (known: {', '.join(known)})")
    prefix = _SERVER_OPTION.format(server=args.server, dest="")
    options = {k[len(prefix) :]: v for k, v in vars(args).items() if k.startswith(prefix)}
    server = make_server(args.server, options, servers_file=args.servers)
    cell = Cell(server=args.server, db=args.db, broker=args.broker)
    return CellRun(cell, run_id, args.out, config, server)


def _interrupt_on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def _run(args: argparse.Namespace, console: Console) -> int:
    run = _cell_run(args)
    cell = run.cell
    path = result_path(run.out_dir, run.run_id, cell)
    if path.exists():
        raise ConfigError(f"{path} exists: results are never overwritten (use another --run-id)")
    if args.json and args.json.exists():
        raise ConfigError(f"{args.json} exists: results are never overwritten")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        probe = path.parent / f".{cell.name}.writable"
        probe.touch()
        probe.unlink()
    except OSError as exc:
        raise ConfigError(f"cannot write results into {path.parent}: {exc.strerror}") from exc

    with progress_for(console, cell.name) as progress:
        result = run_cell(run, progress)
    write_result(result, path)
    if args.json:
        write_result(result, args.json)
    line = f"{cell.name}: {result.status}" + (f": {result.error}" if result.error else "")
    console.print(line, markup=False, highlight=False)
    console.print(f"result: {path}", markup=False, highlight=False)
    if result.error == INTERRUPTED:
        return EXIT_INTERRUPTED
    return _EXIT_BY_STATUS[result.status]


def _report(args: argparse.Namespace, console: Console) -> int:
    from bench.report import build, collect, render_html, render_markdown, render_terminal

    paths = args.paths or [Path("results")]
    results, warnings = collect(paths)
    baseline = None
    if args.baseline:
        baseline, baseline_warnings = collect(args.baseline)
        warnings += [f"baseline: {w}" for w in baseline_warnings]
    for warning in warnings:
        console.print(f"warning: {warning}", markup=False, highlight=False, style="yellow")
    report = build(results, baseline)
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


def _conformance(args: argparse.Namespace, console: Console) -> int:
    if args.url:
        parse_url(args.url)  # bad input: before anything is started
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
    args = build_parser().parse_args(argv)
    console = _console()
    signal.signal(signal.SIGTERM, _interrupt_on_sigterm)
    try:
        if args.command == "run":
            return _run(args, console)
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
