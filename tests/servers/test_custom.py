"""servers.toml: custom servers, overrides of the built-in ones, and their errors."""

from __future__ import annotations

import hashlib
import importlib.metadata
import os
import sys
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from bench.cells.runner import CellRun, run_cell
from bench.core.errors import ConfigError, ServerError
from bench.results import ServiceInfo
from bench.servers.adapter import ServerAdapter, ServerSetup
from bench.servers.python import PythonServer
from bench.servers.registry import make_server
from bench.servers.specs import load_builtin, load_servers, server_names, servers_file
from bench.services.base import PostgresService, RedisService
from tests.helpers import ROOT

if TYPE_CHECKING:
    from tests.conftest import RecordingProgress

EXAMPLE = ROOT / "servers.toml.example"


@pytest.fixture(autouse=True)
def no_servers_file_from_outside(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Neither the user's BENCH_SERVERS_FILE nor a ./servers.toml may change what is tested."""
    monkeypatch.delenv("BENCH_SERVERS_FILE", raising=False)
    monkeypatch.chdir(tmp_path)


def write(tmp_path: Path, text: str, name: str = "servers.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def setup_for(tmp_path: Path, db: str = "sqlite", broker: str = "memory", **kw: object):  # type: ignore[no-untyped-def]
    return ServerSetup(
        db=db, broker=broker, logdir=tmp_path / "logs", datadir=tmp_path / "data", **kw
    )


# -- a custom server, end to end ---------------------------------------------------------------


@pytest.mark.slow
def test_the_example_file_custom_server_runs_a_cell(
    monkeypatch: pytest.MonkeyPatch,
    cell_run: Callable[..., CellRun],
    progress: Callable[..., RecordingProgress],
) -> None:
    """servers.toml.example's prefect-main: `python -m prefect server start`, as a custom server."""
    monkeypatch.setenv("BENCH_SERVERS_FILE", str(EXAMPLE))
    assert server_names() == ("python", "python-scaled", "zig", "prefect-main")
    run = cell_run("prefect-main", duration_s=0.2, warmup_s=0.0, concurrency=[1], no_services=True)
    result = run_cell(run, progress())
    assert result.status == "ok", result.error
    assert result.server is not None and result.server.name == "prefect-main"
    assert result.server.version == importlib.metadata.version("prefect")
    assert result.server.model_dump()["servers_file"] == str(EXAMPLE)
    assert result.endpoints and all(ep.requests > 0 for ep in result.endpoints)


def test_a_custom_server_maps_every_db_and_broker(tmp_path: Path) -> None:
    spec = load_servers(EXAMPLE)["prefect-main"]
    adapter = ServerAdapter(spec)
    info = ServiceInfo(provider="local")
    setup = setup_for(
        tmp_path,
        db="postgres",
        broker="redis",
        postgres=PostgresService("127.0.0.1", 5433, "u", "pw", "db1", info),
        redis=RedisService("127.0.0.1", 6380, 2, info, password="sec"),
        no_services=True,
    )
    env = adapter.environment(4321, setup)
    assert env["PREFECT_SERVER_DATABASE_CONNECTION_URL"] == (
        "postgresql+asyncpg://u:pw@127.0.0.1:5433/db1"
    )
    assert env["PREFECT_REDIS_MESSAGING_PASSWORD"] == "sec"
    assert env["PREFECT_SERVER_DOCKET_URL"] == "redis://:sec@127.0.0.1:6380/2"
    assert env["PREFECT_HOME"] == f"{tmp_path / 'data'}/prefect-home"
    argv = adapter.command(4321, setup)
    assert argv[0] == sys.executable
    assert argv[-3:] == ["--port", "4321", "--no-services"]


# -- the built-in servers are the same data, and a servers.toml changes them ------------------


def test_builtin_servers_are_data_a_servers_file_overrides(tmp_path: Path) -> None:
    builtin = load_builtin("python")
    assert builtin.command[:3] == ("{python}", "-m", "prefect")
    path = write(
        tmp_path,
        """
[servers.python.env]
PREFECT_SERVER_LOGGING_LEVEL = "ERROR"
PREFECT_API_EXTRA = 7

[servers.python.env.sqlite]
PREFECT_SERVER_DATABASE_CONNECTION_URL = "sqlite+aiosqlite:///{workdir}/other.db"
""",
    )
    adapter = make_server("python", servers_file=path)
    assert isinstance(adapter, PythonServer)
    env = adapter.environment(1234, setup_for(tmp_path))
    assert env["PREFECT_SERVER_LOGGING_LEVEL"] == "ERROR"
    assert env["PREFECT_API_EXTRA"] == "7"
    assert env["PREFECT_SERVER_DATABASE_CONNECTION_URL"].endswith(f"{tmp_path}/data/other.db")
    assert env["PREFECT_SERVER_UI_ENABLED"] == "false"  # the rest of the built-in stays
    assert adapter.info()["servers_file"] == str(path)
    assert adapter.version() == importlib.metadata.version("prefect")
    # ./servers.toml is read by default; the adapter alone is the built-in, untouched
    by_default = make_server("python").environment(1, setup_for(tmp_path))
    assert by_default["PREFECT_SERVER_LOGGING_LEVEL"] == "ERROR"
    untouched = PythonServer().environment(1, setup_for(tmp_path))
    assert untouched["PREFECT_SERVER_LOGGING_LEVEL"] == "WARNING"
    assert "servers_file" not in PythonServer().info()


def test_the_servers_file_is_found_by_flag_environment_or_current_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert servers_file() is None
    with pytest.raises(ConfigError, match="does not exist"):
        servers_file(tmp_path / "missing.toml")
    here = write(tmp_path, '[servers.here]\ncommand = ["x"]\n')
    assert servers_file() == here
    assert server_names() == ("python", "python-scaled", "zig", "here")
    other = write(tmp_path, '[servers.b]\ncommand = ["x"]\n[servers.a]\ncommand = ["y"]\n', "o.t")
    monkeypatch.setenv("BENCH_SERVERS_FILE", str(other))
    assert server_names() == ("python", "python-scaled", "zig", "b", "a")  # file order
    assert server_names(here) == ("python", "python-scaled", "zig", "here")  # the flag wins


# -- bad servers.toml: errors name the file, the server and the key -------------------------


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('[servers.x]\ncommand = ["a"]\nport = 3\n', "[servers.x] unknown key 'port'"),
        ("[servers.x]\nhealth_path = '/h'\n", "[servers.x] has no command"),
        ("[servers.x]\ncommand = []\n", "[servers.x] command is empty"),
        ("[servers.x]\ncommand = 'serve'\n", "[servers.x] command must be a list of strings"),
        ("[servers.python]\ncolor = 'blue'\n", "[servers.python] unknown key 'color'"),
        (
            '[servers.x]\ncommand = ["a"]\n[servers.x.env.mysql]\nA = "1"\n',
            "[servers.x.env] unknown section 'mysql'",
        ),
        (
            '[servers.x]\ncommand = ["a", "--port={prot}"]\n',
            "[servers.x] command: unknown placeholder {prot}",
        ),
        (
            '[servers.x]\ncommand = ["a"]\n[servers.x.env.redis]\nR = "{redis_uri}"\n',
            "[servers.x.env.redis] R: unknown placeholder {redis_uri}",
        ),
        (
            '[servers.x]\ncommand = ["a"]\n[servers.x.build]\ncmd = ["make"]\n',
            "[servers.x.build] unknown key 'cmd'",
        ),
        (
            '[servers.x]\ncommand = ["a"]\nbuild = { cwd = "." }\n',
            "[servers.x.build] has no command",
        ),
        (
            '[servers.x]\ncommand = ["a", "{port:05}"]\n',
            "[servers.x] command: bad template '{port:05}'",
        ),
        ('[servers.x]\ncommand = ["a", "{"]\n', "[servers.x] command: bad template '{'"),
        ('[servers.x]\ncommand = ["a"]\nstartup_timeout_s = 0\n', "startup_timeout_s"),
        ('[servers.x]\ncommand = ["a"]\nhealth_path = "health"\n', "must start with '/'"),
        ('[servers.X]\ncommand = ["a"]\n', "[servers.X]: a server name is lowercase"),
        ('[servers.external]\ncommand = ["a"]\n', "and not 'external'"),
        ('[server.x]\ncommand = ["a"]\n', "unknown top-level key 'server'"),
        ("[servers.x\n", "not valid TOML"),
        ('[servers.x]\nextends = "nginx"\n', "extends 'nginx', not a built-in server"),
        ('[servers.x]\ncommand = ["a"]\ndbs = ["mysql"]\n', "dbs must be a non-empty list"),
        ('[servers.x]\ncommand = ["a"]\nbrokers = []\n', "brokers must be a non-empty list"),
    ],
)
def test_a_bad_servers_file_is_a_config_error_naming_file_server_and_key(
    tmp_path: Path, text: str, message: str
) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_servers(path)
    assert str(path) in str(info.value)
    assert message in str(info.value)


def test_a_placeholder_the_cell_lacks_is_a_config_error_saying_where(tmp_path: Path) -> None:
    path = write(tmp_path, '[servers.x]\ncommand = ["a"]\n[servers.x.env]\nDB = "{db_url}"\n')
    adapter = make_server("x", servers_file=path)
    with pytest.raises(ConfigError) as info:
        adapter.environment(1, setup_for(tmp_path))
    assert str(info.value) == (
        f"{path}: [servers.x.env] DB uses {{db_url}}, which a sqlite, memory cell does not have"
    )


def test_unknown_server_names_list_the_known_ones(tmp_path: Path) -> None:
    path = write(tmp_path, '[servers.mine]\ncommand = ["a"]\n')
    with pytest.raises(ConfigError, match="known: python, python-scaled, zig, mine"):
        make_server("yours", servers_file=path)


def test_no_services_needs_a_way_to_say_it(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
[servers.plain]
command = ["serve"]

[servers.flagged]
command = ["serve"]
[servers.flagged.env.no_services]
SERVICES = "off"
""",
    )
    setup = setup_for(tmp_path, no_services=True)
    reason = make_server("plain", servers_file=path).unavailable_reason(no_services=True)
    assert "does not say how to run without its services" in (reason or "")
    assert make_server("plain", servers_file=path).unavailable_reason() is None
    flagged = make_server("flagged", servers_file=path)
    assert flagged.unavailable_reason(no_services=True) is None
    assert flagged.command(1, setup) == ["serve"]
    assert flagged.environment(1, setup) == {"SERVICES": "off"}
    assert "SERVICES" not in flagged.environment(1, setup_for(tmp_path))


# -- binaries and builds ----------------------------------------------------------------------


def test_a_build_runs_once_and_its_binary_is_recorded(tmp_path: Path) -> None:
    (tmp_path / "build.py").write_text(
        "import pathlib\n"
        "p = pathlib.Path('out/server')\n"
        "p.parent.mkdir(exist_ok=True)\n"
        "p.write_text('#!/bin/sh\\necho built 1.2\\n')\n"
        "p.chmod(0o755)\n"
        "open('builds.txt', 'a').write('x')\n"
        "print('compiling... done')\n"
    )
    path = write(
        tmp_path,
        """
[servers.built]
binary = "out/server"
command = ["{binary}"]
version_command = ["{binary}"]
build = { command = ["{python}", "build.py"] }
""",
    )
    adapter = make_server("built", servers_file=path)
    assert adapter.unavailable_reason() is None  # the binary comes from the build
    adapter.prepare(tmp_path / "logs")
    adapter.prepare(tmp_path / "logs")
    assert (tmp_path / "builds.txt").read_text() == "x"
    assert "compiling... done" in (tmp_path / "logs" / "build.log").read_text()
    binary = tmp_path / "out" / "server"
    assert adapter.version() == "built 1.2"
    assert adapter.info()["binary_sha256"] == hashlib.sha256(binary.read_bytes()).hexdigest()
    assert adapter.command(5, setup_for(tmp_path)) == [str(binary)]


def test_a_failing_build_fails_the_cell_with_the_log_tail(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
[servers.broken]
command = ["./server"]
build = { command = ["sh", "-c", "echo 'error: cannot compile main.c'; exit 3"] }
""",
    )
    adapter = make_server("broken", servers_file=path)
    assert adapter.command(1, setup_for(tmp_path)) == [str(tmp_path / "server")]
    with pytest.raises(ServerError, match="failed with exit code 3") as info:
        adapter.prepare(tmp_path / "logs")
    assert "error: cannot compile main.c" in str(info.value)
    assert str(tmp_path / "logs" / "build.log") in str(info.value)


def test_a_build_that_makes_no_binary_is_an_error(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        '[servers.b]\nbinary = "nothing"\ncommand = ["{binary}"]\nbuild = { command = ["true"] }\n',
    )
    with pytest.raises(ServerError, match=r"after the build, the binary .* does not exist"):
        make_server("b", servers_file=path).prepare(tmp_path / "logs")


def test_a_missing_custom_binary_skips_the_cell(tmp_path: Path) -> None:
    path = write(tmp_path, '[servers.gone]\nbinary = "bin/gone"\ncommand = ["{binary}"]\n')
    reason = make_server("gone", servers_file=path).unavailable_reason() or ""
    assert f"{tmp_path / 'bin' / 'gone'} does not exist" in reason
    path = write(tmp_path, '[servers.nob]\ncommand = ["{binary}"]\n')
    assert "names none" in (make_server("nob", servers_file=path).unavailable_reason() or "")


def test_a_server_extends_a_builtin_with_its_keys_changed(tmp_path: Path) -> None:
    """`extends`: the built-in's keys and variables, the server's own over them."""
    path = write(
        tmp_path,
        '[servers.mine]\nextends = "python"\ndbs = ["postgres"]\n'
        '[servers.mine.env]\nPREFECT_SERVER_LOGGING_LEVEL = "DEBUG"\n',
    )
    mine, python = make_server("mine", servers_file=path), make_server("python")
    assert mine.spec.command == python.spec.command and mine.spec.user_file == path
    env = mine.environment(1, setup_for(tmp_path))
    assert env["PREFECT_SERVER_LOGGING_LEVEL"] == "DEBUG"
    assert env["PREFECT_SERVER_UI_ENABLED"] == "false"  # the built-in's, kept
    assert mine.cell_reason("postgres", "memory") is None
    assert "runs only on postgres with memory or redis" in (
        mine.cell_reason("sqlite", "memory") or ""
    )
    # run as python is: under --cost its timers held still, its own PYTHONPATH after that
    assert type(mine) is type(python) and mine.spec.extends == "python"
    cost = mine.environment(1, replace(setup_for(tmp_path), cost=True))
    assert cost["PYTHONPATH"].split(os.pathsep)[0].endswith("python_cost")
