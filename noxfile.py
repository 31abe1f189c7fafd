"""Sessions only; the logic lives in the `bench` package.

nox -s matrix                                       every cell, then the report
nox -s "bench(server='zig', db='postgres')" -- --duration 2
nox -s "bench(server='python', db='sqlite', broker='redis')"
nox -s matrix -- --repeat 4                         every cell 4 times, in interleaved rounds
nox -s compare -- results/before results/after --fail-on 'rps<-5%'
nox -s report | tests | lint
"""

from __future__ import annotations

import json
import os
import secrets
import sys
import time
from pathlib import Path

import nox

ROOT = Path(__file__).parent
sys.path.insert(0, str(ROOT))
from bench.errors import ConfigError  # noqa: E402  (standard library only)
from bench.matrix import cells, session_params  # noqa: E402
from bench.servers.specs import builtin_server_names  # noqa: E402

PREFECT_VERSION = os.environ.get("PREFECT_VERSION", "3.9.1")
RESULTS = Path(os.environ.get("BENCH_RESULTS_DIR", ROOT / "results")).resolve()
RUN_ID_ENV = "BENCH_RUN_ID"
EXIT_SKIPPED = 3  # bench.cli.EXIT_SKIPPED

nox.options.default_venv_backend = "uv|virtualenv"
nox.options.sessions = ["matrix"]
nox.options.reuse_venv = "yes"


def _cells() -> tuple[list[tuple[str, str, str]], str | None]:
    """The cells, and the error of a servers.toml that cannot be read (then only the built-in
    servers' cells): a broken servers.toml must not break `nox -l` or `nox -s lint`."""
    try:
        return cells(), None
    except ConfigError as exc:
        return cells(builtin_server_names()), str(exc)


CELLS, CELLS_ERROR = _cells()


def _new_run_id() -> str:
    """bench.results.new_run_id's format; this file cannot import it (no pydantic here)."""
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + "-" + secrets.token_hex(2)


def _install(session: nox.Session, extras: str = "") -> None:
    """prefect-bench and the pinned Prefect server, bytecode compiled.

    Without .pyc files every Prefect server start pays 5-6 s more.
    """
    session.env["UV_COMPILE_BYTECODE"] = "1"
    session.install(f"prefect=={PREFECT_VERSION}", "prefect-redis", "-e", f".{extras}")


@nox.session(default=False)
@nox.parametrize("server,db,broker", [nox.param(*cell, id=session_params(*cell)) for cell in CELLS])
def bench(session: nox.Session, server: str, db: str, broker: str) -> None:
    """One cell: server × db × broker. Arguments after -- go to `python -m bench run`."""
    if CELLS_ERROR:
        session.error(CELLS_ERROR)
    _install(session, "[zig]" if server == "zig" else "")
    run_id = os.environ.get(RUN_ID_ENV) or _new_run_id()
    status_file = Path(session.create_tmp()) / f"{server}-{db}-{broker}-{run_id}.json"
    session.run(
        "python",
        "-m",
        "bench",
        "run",
        "--server",
        server,
        "--db",
        db,
        "--broker",
        broker,
        "--run-id",
        run_id,
        "--out",
        str(RESULTS),
        "--json",
        str(status_file),
        *session.posargs,
        success_codes=[0, EXIT_SKIPPED],
        # the runner stops the server and writes a partial result on Ctrl-C: let it finish
        interrupt_timeout=60,
        terminate_timeout=15,
    )
    result = json.loads(status_file.read_text())
    status_file.unlink()
    if result["status"] == "skipped":
        session.skip(result["error"])


@nox.session
def matrix(session: nox.Session) -> None:
    """Every cell in turn under one run id, then the report (`python -m bench matrix`).

    With `-- --repeat N|auto` the cells run in rounds, each round in the reverse order of the
    last. Each cell runs in a process of its own, all from this session's venv: nox runs a
    session once per invocation, so the cells' own sessions cannot take turns.
    """
    if CELLS_ERROR:
        session.error(CELLS_ERROR)
    _install(session, "[zig]")
    session.run(
        "python",
        "-m",
        "bench",
        "matrix",
        "--out",
        str(RESULTS),
        *session.posargs,
        interrupt_timeout=60,
        terminate_timeout=15,
    )


@nox.session
def report(session: nox.Session) -> None:
    """Aggregate results (default: every run under results/, or BENCH_RESULTS_DIR, where the
    cell sessions write them) into report.md and report.html there."""
    session.install("-e", ".")
    given = session.posargs or [str(RESULTS)]
    session.run("python", "-m", "bench", "report", "--out", str(RESULTS), *given)


@nox.session
def compare(session: nox.Session) -> None:
    """Did a change make it slower? `nox -s compare -- BEFORE AFTER [--fail-on 'rps<-5%']`."""
    if not session.posargs:
        session.error("give the two sides: nox -s compare -- BEFORE AFTER")
    session.install("-e", ".")
    session.run("python", "-m", "bench", "compare", *session.posargs)


@nox.session
def tests(session: nox.Session) -> None:
    """The test suite, with the real Prefect server, PostgreSQL, Redis and docker."""
    _install(session, "[test]")
    session.run("pytest", *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    """ruff check, ruff format --check, and yamllint on the workflows (.yamllint)."""
    session.install("ruff", "yamllint")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")
    session.run("yamllint", "--strict", ".github/", ".yamllint")
