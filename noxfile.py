"""Sessions only; the logic lives in the `bench` package.

nox -s matrix                                       every cell, then the report
nox -s "bench(server='zig', db='postgres')" -- --duration 2
nox -s "bench(server='python', db='sqlite', broker='redis')"
nox -s matrix -- --repeat 4                         every cell 4 times, in interleaved rounds
nox -s matrix -- --resume RUN_ID                    go on with a matrix that stopped
nox -s compare -- results/before results/after --fail-on 'rps<-5%'
PREFECT_VERSION=3.8.0,3.9.1 nox -s matrix          the python servers' cells once per version
nox -s report | tests | lint | docs
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import nox

ROOT = Path(__file__).parent
sys.path.insert(0, str(ROOT))
from bench.cells.commands import (  # noqa: E402
    EXIT_OK,
    EXIT_SKIPPED,
    RESULTS_ENV,
    RUN_ID_ENV,
    cell_argv,
    new_run_id,
)
from bench.cells.matrix import cells, session_params, versioned_cells  # noqa: E402
from bench.config.versions import (  # noqa: E402
    DEFAULT_VERSION,
    VERSION_ENV,
    exclude_newer,
    index_url,
    installer_error_line,
    parse_versions,
    read_resolution,
    release_files,
    released_at,
    version_key,
    write_resolution,
)
from bench.core.errors import ConfigError  # noqa: E402  (standard library only)
from bench.servers.specs import (  # noqa: E402
    builtin_server_names,
    builtin_versioned_server_names,
    versioned_server_names,
)

RESULTS = Path(os.environ.get(RESULTS_ENV, ROOT / "results")).resolve()

nox.options.default_venv_backend = "uv|virtualenv"
nox.options.sessions = ["matrix"]
nox.options.reuse_venv = "yes"


def _versions() -> tuple[list[str], str | None]:
    """PREFECT_VERSION's versions, and its error (then the default version alone)."""
    try:
        return parse_versions(os.environ.get(VERSION_ENV)), None
    except ConfigError as exc:
        return [DEFAULT_VERSION], str(exc)


def _cells(versions: list[str]) -> tuple[list[tuple[str, str, str, str]], str | None]:
    """The cells with their Prefect versions, and the error of a servers.toml that cannot be
    read (then only the built-in servers' cells): a broken servers.toml must not break
    `nox -l` or `nox -s lint`."""
    try:
        return versioned_cells(cells(), versions, versioned_server_names()), None
    except ConfigError as exc:
        builtin = cells(builtin_server_names())
        return versioned_cells(builtin, versions, builtin_versioned_server_names()), str(exc)


VERSIONS, VERSIONS_ERROR = _versions()
CELLS, CELLS_ERROR = _cells(VERSIONS)
CELLS_ERROR = VERSIONS_ERROR or CELLS_ERROR


def _install(
    session: nox.Session, version: str, extras: str = "", venv: Path | None = None
) -> str | None:
    """prefect-bench and Prefect `version` into `venv` (default the session's), everything
    resolved as it stood when that version was released (bench.config.versions), bytecode compiled;
    the installer's line saying why when it cannot be installed (a version not on the index).

    The resolution is compiled, then synced: a reused venv ends up exactly the version's,
    whatever it held before. Without .pyc files every Prefect server start pays 5-6 s more.
    """
    session.env["UV_COMPILE_BYTECODE"] = "1"
    uv = shutil.which("uv")
    if session.venv_backend != "uv" or uv is None:
        if session.venv_backend != "none":  # --no-venv: the caller's environment, as it is
            session.warn(f"no uv: prefect {version} is installed with today's dependencies")
        session.install(f"prefect=={version}", "prefect-redis", "-e", f".{extras}")
        return None
    venv = venv or Path(session.virtualenv.location)
    python = str(venv / "bin" / "python")
    wanted = {"prefect": version, "extras": extras, "index": index_url()}
    known = read_resolution(venv) or {}
    if all(known.get(key) == value for key, value in wanted.items()) and "exclude_newer" in known:
        cutoff = known["exclude_newer"]  # the index was asked already
    else:
        try:
            released = released_at(release_files(wanted["index"]), version)
        except ConfigError as exc:
            session.error(str(exc))
        cutoff = exclude_newer(released) if released else None
    requirements = venv / "prefect-bench-requirements.in"
    requirements.write_text(f"prefect=={version}\nprefect-redis\n-e {ROOT}{extras}\n")
    locked = venv / "prefect-bench-requirements.txt"
    locked.unlink(missing_ok=True)
    output = session.run_install(
        *(uv, "pip", "compile", "--quiet", "--python", python),
        *(["--exclude-newer", cutoff] if cutoff else []),
        *(str(requirements), "-o", str(locked)),
        external=True,
        silent=True,
        success_codes=[0, 1, 2],  # uv's failures: their line is the answer
    )
    if output is None:
        return None  # --no-install in a reused venv: as it is
    if not locked.exists():
        return f"prefect {version}: {installer_error_line(str(output))}"
    session.run_install(
        uv, "pip", "sync", "--quiet", "--python", python, str(locked), external=True
    )
    write_resolution(venv, wanted | {"exclude_newer": cutoff})
    return None


def _install_newest(session: nox.Session, extras: str = "") -> tuple[str | None, str | None]:
    """_install the newest of PREFECT_VERSION's versions that can be installed into the
    session's venv, for what runs no version of its own (zig, the tests, the matrix itself):
    that version, or None and why none could be."""
    errors = []
    for version in sorted(VERSIONS, key=version_key, reverse=True):
        if not (error := _install(session, version, extras)):
            for skipped in errors:
                session.warn(f"{skipped}: left out")
            return version, None
        errors.append(error)
    return None, "; ".join(errors)


@nox.session(default=False)
@nox.parametrize(
    "server,db,broker,prefect", [nox.param(*cell, id=session_params(*cell)) for cell in CELLS]
)
def bench(session: nox.Session, server: str, db: str, broker: str, prefect: str) -> None:
    """One cell: server × db × broker [× prefect]. Arguments after -- go to `bench run`.

    PREFECT_VERSION=a,b: a cell per version of each server running the environment's Prefect.
    """
    if CELLS_ERROR:
        session.error(CELLS_ERROR)
    extras = "[zig]" if server == "zig" else ""
    error = _install(session, prefect, extras) if prefect else _install_newest(session, extras)[1]
    if error:
        session.skip(error)
    run_id = os.environ.get(RUN_ID_ENV) or new_run_id()
    status_file = Path(session.create_tmp()) / f"{server}-{db}-{broker}-{run_id}.json"
    session.run(
        *cell_argv(
            "python",  # the session's venv's
            server,
            db,
            broker,
            run_id=run_id,
            out=RESULTS,
            version=prefect,
            json_path=status_file,
            args=session.posargs,
        ),
        success_codes=[EXIT_OK, EXIT_SKIPPED],
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
    last. Each cell runs in a process of its own, from this session's venv (with
    PREFECT_VERSION=a,b, each version's cells from that version's venv beside it): nox runs a
    session once per invocation, so the cells' own sessions cannot take turns.
    """
    if CELLS_ERROR:
        session.error(CELLS_ERROR)
    own, error = _install_newest(session, "[zig]")
    if own is None:
        session.error(error)
    venvs = {}
    for version in VERSIONS if len(VERSIONS) > 1 else []:
        if version_key(version) > version_key(own):
            continue  # it could not be installed: _install_newest said so
        if venv := _version_venv(session, version, own):
            venvs[version] = venv / "bin" / "python"
    # fewer than two left: the cells of the one installed, named as any run names them
    pythons = [f"--prefect-python={v}={python}" for v, python in venvs.items()]
    resuming = any(a == "--resume" or a.startswith("--resume=") for a in session.posargs)
    if len(pythons) < 2 or resuming:  # a resumed run uses the interpreters it recorded
        pythons = []
    session.run(
        "python",
        "-m",
        "bench",
        "matrix",
        "--out",
        str(RESULTS),
        *pythons,
        *session.posargs,
        interrupt_timeout=60,
        terminate_timeout=15,
    )


def _version_venv(session: nox.Session, version: str, installed: str) -> Path | None:
    """The matrix's venv of Prefect `version`: its own, which has `installed`; one beside it,
    made when missing, for each other. None, saying why, for a version that cannot be
    installed: its cells are left out."""
    own = Path(session.virtualenv.location)
    if version == installed:
        return own
    uv = shutil.which("uv")
    venv = own.with_name(f"{own.name}-prefect-{version}")
    if session.venv_backend == "uv" and uv and not (venv / "bin" / "python").exists():
        python = str(own / "bin" / "python")
        session.run_install(uv, "venv", "--quiet", "--python", python, str(venv), external=True)
    if not (venv / "bin" / "python").exists():  # no uv, or --no-install
        session.warn(f"prefect {version}: no venv of its own (that needs uv): left out")
        return None
    if error := _install(session, version, venv=venv):
        session.warn(f"{error}: left out")
        return None
    return venv


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
    if VERSIONS_ERROR:
        session.error(VERSIONS_ERROR)
    if error := _install_newest(session, "[test]")[1]:
        session.error(error)
    session.run("pytest", *session.posargs)


@nox.session
def docs(session: nox.Session) -> None:
    """The user guide, built strictly into site/ (a broken link, a missing page, a warning
    fails); `nox -s docs -- serve` serves it at http://127.0.0.1:8000 instead."""
    session.install("-e", ".[docs]")
    session.env["NO_MKDOCS_2_WARNING"] = "1"  # the theme's banner about its successor
    if session.posargs[:1] == ["serve"]:
        session.run("mkdocs", "serve", "--dev-addr", "127.0.0.1:8000", *session.posargs[1:])
        return
    session.run("mkdocs", "build", "--strict", "--site-dir", "site", *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    """ruff check, ruff format --check, and yamllint on the workflows (.yamllint)."""
    session.install("ruff", "yamllint")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")
    session.run("yamllint", "--strict", ".github/", ".yamllint")
