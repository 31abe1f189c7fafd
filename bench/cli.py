"""The command line: parses arguments into options, runs, prints, and picks the exit code.

Exit codes:
    0    the cell ran and its result is ok (report: written)
    1    the cell failed (its result says why) or a result could not be written
    2    bad input: an unknown name, a bad number, an unwritable results folder
    3    the cell was skipped: it cannot run on this machine (its result says why)
    130  interrupted (Ctrl-C or SIGTERM); the partial result is written
"""

from __future__ import annotations

import argparse
import math
import os
import re
import signal
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from types import FrameType
from typing import NoReturn

from rich.console import Console

from bench import __version__
from bench.errors import BenchError, ConfigError
from bench.matrix import BROKERS, DBS
from bench.progress import progress_for
from bench.results import Cell, new_run_id, result_path, write_result
from bench.runner import EXTERNAL_SERVER, INTERRUPTED, RunOptions, run_cell
from bench.servers_config import server_names
from bench.workloads import WORKLOADS

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_SKIPPED = 3
EXIT_INTERRUPTED = 130

_EXIT_BY_STATUS = {"ok": EXIT_OK, "failed": EXIT_FAILED, "skipped": EXIT_SKIPPED}
_RUN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see --help)\n")


def _float_at_least(low: float, inclusive: bool) -> Callable[[str], float]:
    """An argparse type: a number above `low` (or equal to it, if `inclusive`)."""
    sign = ">=" if inclusive else ">"

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"must be a finite number, got {text}")
        if not (value >= low if inclusive else value > low):
            raise argparse.ArgumentTypeError(f"must be {sign} {low:g}, got {text}")
        return value

    return parse


_positive_float = _float_at_least(0, inclusive=False)
_non_negative_float = _float_at_least(0, inclusive=True)


def _concurrency_list(text: str) -> tuple[int, ...]:
    levels = []
    for part in text.split(","):
        part = part.strip()
        if not part.isdigit() or int(part) == 0:
            raise argparse.ArgumentTypeError(
                f"expected positive integers separated by commas (e.g. 1,4,16), got {text!r}"
            )
        levels.append(int(part))
    return tuple(levels)


def _positive_int(text: str) -> int:
    if not text.strip().isdigit() or int(text) == 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return int(text)


def _cpu_list(text: str) -> tuple[int, ...]:
    usable = os.sched_getaffinity(0)
    cpus = []
    for part in text.split(","):
        if not part.strip().isdigit():
            raise argparse.ArgumentTypeError(f"expected CPU numbers like 0,1, got {text!r}")
        cpus.append(int(part))
    if not set(cpus) <= usable:
        raise argparse.ArgumentTypeError(
            f"CPU {sorted(set(cpus) - usable)} is not usable here (usable: "
            f"{','.join(map(str, sorted(usable)))})"
        )
    return tuple(cpus)


def _run_id(text: str) -> str:
    if not _RUN_ID.match(text):
        raise argparse.ArgumentTypeError(f"letters, digits, '.', '_' and '-' only, got {text!r}")
    return text


def _choice(known: Sequence[str], what: str):  # type: ignore[no-untyped-def]
    def check(text: str) -> str:
        if text not in known:
            raise argparse.ArgumentTypeError(f"unknown {what} {text!r} (known: {', '.join(known)})")
        return text

    check.__name__ = what
    return check


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="prefect-bench", description=__doc__.split("\n")[0])
    parser.add_argument("--version", action="version", version=f"prefect-bench {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    run = commands.add_parser("run", help="benchmark one cell (server × db × broker)")
    run.add_argument("--server", default="python", help="python, zig or one of --servers")
    run.add_argument("--db", type=_choice(DBS, "db"), default="sqlite")
    run.add_argument("--broker", type=_choice(BROKERS, "broker"), default="memory")
    run.add_argument(
        "--url",
        help="benchmark a server that is already running, e.g. http://127.0.0.1:4200/api",
    )
    run.add_argument(
        "--workload",
        type=_choice(tuple(WORKLOADS), "workload"),
        help="seed (default) or health (default with --url)",
    )
    run.add_argument("--duration", type=_positive_float, default=5.0, help="seconds measured")
    run.add_argument("--warmup", type=_non_negative_float, default=1.0, help="seconds not counted")
    run.add_argument(
        "--concurrency",
        type=_concurrency_list,
        default=(1, 4, 16, 64),
        help="connections per level, comma-separated (default 1,4,16,64)",
    )
    run.add_argument(
        "--rate",
        type=_positive_float,
        help="open model: requests/s per endpoint, latency from each intended send time "
        "(default: closed model)",
    )
    run.add_argument(
        "--engine-procs", type=_positive_int, help="load generator processes (default: automatic)"
    )
    run.add_argument("--server-cpus", type=_cpu_list, help="pin the server to these CPUs, e.g. 0")
    run.add_argument("--client-cpus", type=_cpu_list, help="pin the load generator, e.g. 1")
    run.add_argument("--out", type=Path, default=Path("results"), help="results folder")
    run.add_argument("--run-id", type=_run_id, help="join an existing run (default: a new id)")
    run.add_argument("--json", type=Path, help="also write the result to exactly this path")
    run.add_argument(
        "--provider",
        choices=("docker", "local", "external"),
        help="force how PostgreSQL/Redis are provided (default: external > docker > local)",
    )
    run.add_argument("--no-services", action="store_true", help="the server's API alone")
    zig = run.add_mutually_exclusive_group()
    zig.add_argument("--zig-binary", type=Path, help="the zig prefect-server executable")
    zig.add_argument("--zig-src", type=Path, help="a zig prefect-server checkout to build")
    run.add_argument(
        "--servers", type=Path, help="custom servers (default: servers.toml if present)"
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
    return parser


def _interrupt_on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def _run(args: argparse.Namespace, console: Console) -> int:
    if args.url:
        cell = Cell(server=EXTERNAL_SERVER)
        workload = args.workload or "health"
    else:
        known = server_names(args.servers)
        if args.server not in known:
            raise ConfigError(f"unknown server {args.server!r} (known: {', '.join(known)})")
        cell = Cell(server=args.server, db=args.db, broker=args.broker)
        workload = args.workload or "seed"
    opts = RunOptions(
        cell=cell,
        run_id=args.run_id or new_run_id(),
        out_dir=args.out,
        workload=workload,
        duration_s=args.duration,
        warmup_s=args.warmup,
        concurrency=args.concurrency,
        url=args.url,
        provider=args.provider,
        no_services=args.no_services,
        zig_binary=args.zig_binary,
        zig_src=args.zig_src,
        servers_file=args.servers,
        rate=args.rate,
        engine_procs=args.engine_procs,
        server_cpus=args.server_cpus,
        client_cpus=args.client_cpus,
    )
    path = result_path(opts.out_dir, opts.run_id, cell)
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
        result = run_cell(opts, progress)
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
