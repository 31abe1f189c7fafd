"""The zig adapter: binary, settings contract, checkout builds.

The Zig server's source cannot be reached here, so the tests that start a "zig" server run a
STAND-IN (tests/resources/zig-standin/prefect-server): a script honouring the zig settings
contract that execs the real Python Prefect server. Test names say so. The build tests build a
tiny zig project of their own with the real zig of the `ziglang` package.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import psycopg
import pytest
import redis

from bench.cells.runner import CellRun, run_cell
from bench.core.errors import ConfigError, ServerError
from bench.core.ownership import Labels
from bench.core.process import wait_until
from bench.results import new_run_id
from bench.servers.adapter import ServerSetup
from bench.servers.registry import make_server
from bench.servers.running import start_server
from bench.servers.zig import ZigServer, zig_command
from bench.services.local import LocalProvider
from tests.helpers import RESOURCES

if TYPE_CHECKING:
    from tests.conftest import RecordingProgress

MakeRun = Callable[..., CellRun]
MakeProgress = Callable[..., "RecordingProgress"]

STANDIN = RESOURCES / "zig-standin" / "prefect-server"


@pytest.fixture
def standin(monkeypatch: pytest.MonkeyPatch) -> Path:
    """The stand-in, with this venv's python3 (which has prefect) first on PATH."""
    bindir = str(Path(sys.executable).parent)
    monkeypatch.setenv("PATH", os.pathsep.join([bindir, os.environ.get("PATH", "")]))
    monkeypatch.delenv("BENCH_ZIG_BINARY", raising=False)
    monkeypatch.delenv("BENCH_ZIG_SRC", raising=False)
    monkeypatch.delenv("BENCH_SERVERS_FILE", raising=False)
    return STANDIN


def setup_for(tmp_path: Path, db: str = "sqlite", broker: str = "memory", **kw: object):  # type: ignore[no-untyped-def]
    return ServerSetup(
        db=db, broker=broker, logdir=tmp_path / "logs", datadir=tmp_path / "data", **kw
    )


def post(api: httpx.Client, path: str, body: object) -> httpx.Response:
    """POST, again while SQLite answers 503 "database is locked" (services write at startup)."""
    answers: list[httpx.Response] = []

    def answered() -> bool:
        answers.append(api.post(path, json=body))
        return answers[-1].status_code != 503

    wait_until(answered, timeout_s=30, interval_s=0.2)
    return answers[-1]


# -- the stand-in: real Python server behind the zig contract --------------------------------


@pytest.mark.slow
def test_zig_cell_on_the_standin_runs_and_records_the_binary_sha256(
    standin: Path, cell_run: MakeRun, progress: MakeProgress
) -> None:
    run = cell_run(
        "zig", server_options={"binary": standin}, duration_s=0.2, warmup_s=0.0, concurrency=[1]
    )
    result = run_cell(run, progress())
    assert result.status == "ok", result.error
    assert result.server is not None
    extra = result.server.model_dump()
    assert extra["binary_sha256"] == hashlib.sha256(standin.read_bytes()).hexdigest()
    assert extra["binary"] == str(standin.resolve())
    assert "stand-in" in (result.server.version or "")
    assert result.endpoints and all(ep.requests > 0 for ep in result.endpoints)
    log = (run.cell_dir / "server.log").read_text()
    assert "prefect-server stand-in: exec" in log


@pytest.mark.slow
def test_zig_standin_maps_the_contract_and_runs_without_services(
    standin: Path, tmp_path: Path
) -> None:
    setup = setup_for(tmp_path, no_services=True)
    with start_server(ZigServer(binary=standin), setup) as server:
        # the stand-in exec'd the Python server in place: same process, new command line
        argv = server.process.process.cmdline()
        assert argv[1:5] == ["-m", "prefect", "server", "start"]
        assert argv[-1] == "--no-services"
        env = server.process.process.environ()
        assert env["PREFECT_SERVER_DATABASE_CONNECTION_URL"] == (
            f"sqlite+aiosqlite:///{tmp_path / 'data' / 'prefect.db'}"
        )
        assert "PREFECT_DATABASE_BACKEND" not in env
        with httpx.Client(base_url=server.base_url, timeout=30) as api:
            flow = post(api, "/flows/", {"name": "standin"})
        assert flow.status_code == 201, flow.text
        assert (tmp_path / "data" / "prefect.db").is_file()


@pytest.mark.slow
@pytest.mark.skipif(
    any(LocalProvider.unavailable_reason(k) for k in ("postgres", "redis")),
    reason="no local postgres/redis: "
    f"{LocalProvider.unavailable_reason('postgres') or LocalProvider.unavailable_reason('redis')}",
)
def test_zig_standin_on_postgres_and_redis_uses_both(standin: Path, tmp_path: Path) -> None:
    labels = Labels(run_id=new_run_id(), cell="zig-postgres-redis")
    provider = LocalProvider()
    with provider.postgres(tmp_path, labels) as pg, provider.redis(tmp_path, labels) as rs:
        setup = setup_for(tmp_path, db="postgres", broker="redis", postgres=pg, redis=rs)
        adapter = ZigServer(binary=standin)
        env = adapter.environment(1234, setup)
        assert env["PREFECT_DATABASE_BACKEND"] == "postgres"
        assert env["PREFECT_DATABASE_URL"] == pg.url
        assert env["PREFECT_BROKER_BACKEND"] == "redis"
        assert env["REDIS_URL"] == rs.url()
        with start_server(adapter, setup) as server:
            child = server.process.process.environ()
            assert child["PREFECT_SERVER_EVENTS_MESSAGING_BROKER"] == "prefect_redis.messaging"
            assert child["PREFECT_REDIS_MESSAGING_PORT"] == str(rs.port)
            with httpx.Client(base_url=server.base_url, timeout=30) as api:
                flow = post(api, "/flows/", {"name": "stored-in-postgres"})
                assert flow.status_code == 201, flow.text
                pending = {"type": "PENDING", "name": "Pending"}
                body = {"flow_id": flow.json()["id"], "name": "r", "state": pending}
                run = post(api, "/flow_runs/", body)
                assert run.status_code == 201, run.text
                running = {"state": {"type": "RUNNING", "name": "Running"}}
                answer = post(api, f"/flow_runs/{run.json()['id']}/set_state", running)
                assert answer.status_code in (200, 201), answer.text
            with psycopg.connect(pg.url) as conn:
                names = [n for (n,) in conn.execute("SELECT name FROM flow").fetchall()]
            assert names == ["stored-in-postgres"]
            run_id = run.json()["id"].encode()

            def state_event_in_redis() -> bool:
                # the Running state's event, on the "events" stream of the cell's Redis db
                entries = client.xrange("events", "-", "+")
                return any(run_id in b"".join(fields.values()) for _, fields in entries)

            client = redis.Redis.from_url(rs.url())
            try:
                # events reach Redis in batches, up to ~10 s late
                wait_until(state_event_in_redis, timeout_s=30, interval_s=0.2)
            finally:
                client.close()


@pytest.mark.slow
def test_zig_standin_refusing_a_setting_fails_with_the_log_tail(
    standin: Path, tmp_path: Path
) -> None:
    servers = tmp_path / "servers.toml"
    servers.write_text('[servers.zig.env]\nPREFECT_NOT_IN_THE_CONTRACT = "1"\n')
    adapter = make_server("zig", {"binary": standin}, servers_file=servers)
    assert adapter.info()["servers_file"] == str(servers)
    with (
        pytest.raises(ServerError, match="exited with code 2 before answering") as info,
        start_server(adapter, setup_for(tmp_path)),
    ):
        pytest.fail("the stand-in should have refused to start")
    assert "unknown settings: PREFECT_NOT_IN_THE_CONTRACT" in str(info.value)
    assert "server.log" in str(info.value)


def test_a_zig_binary_crashing_at_start_fails_the_cell_with_its_output(
    tmp_path: Path, cell_run: MakeRun, progress: MakeProgress
) -> None:
    crash = tmp_path / "prefect-server"
    crash.write_text("#!/bin/sh\necho 'panic: reached unreachable code' >&2\nexit 1\n")
    crash.chmod(0o755)
    result = run_cell(cell_run("zig", server_options={"binary": crash}), progress())
    assert result.status == "failed"
    assert "exited with code 1 before answering" in (result.error or "")
    assert "panic: reached unreachable code" in (result.error or "")


# -- a zig cell that cannot run is skipped, saying why ---------------------------------------


def test_zig_cells_without_a_usable_binary_are_skipped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cell_run: MakeRun, progress: MakeProgress
) -> None:
    monkeypatch.delenv("BENCH_ZIG_BINARY", raising=False)
    monkeypatch.delenv("BENCH_ZIG_SRC", raising=False)
    monkeypatch.delenv("BENCH_SERVERS_FILE", raising=False)
    not_executable = tmp_path / "prefect-server"
    not_executable.write_text("#!/bin/sh\n")
    cases = {
        None: "pass --zig-binary PATH",
        tmp_path / "missing": "does not exist",
        not_executable: "not executable",
    }
    for binary, reason in cases.items():
        result = run_cell(cell_run("zig", server_options={"binary": binary}), progress())
        assert result.status == "skipped", (binary, result.error)
        assert reason in (result.error or ""), result.error


def test_zig_binary_from_the_environment_and_conflicts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BENCH_ZIG_BINARY", str(STANDIN))
    monkeypatch.delenv("BENCH_ZIG_SRC", raising=False)
    assert ZigServer().binary == STANDIN.resolve()
    with pytest.raises(ConfigError, match="not both"):
        ZigServer(binary=STANDIN, src=tmp_path)
    monkeypatch.setenv("BENCH_ZIG_SRC", str(tmp_path))
    with pytest.raises(ConfigError, match="both set"):
        ZigServer()


def test_zig_sources_that_cannot_be_built_are_skipped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("BENCH_ZIG_BINARY", raising=False)
    assert "is not a folder" in (ZigServer(src=tmp_path / "nope").unavailable_reason() or "")
    assert "no build.zig" in (ZigServer(src=tmp_path).unavailable_reason() or "")
    (tmp_path / "build.zig").write_text("")
    if zig_command() is not None:
        reason = ZigServer(src=tmp_path).unavailable_reason() or ""
        assert "not a usable git checkout" in reason


# -- building a checkout with the real zig ----------------------------------------------------

needs_zig = pytest.mark.skipif(
    zig_command() is None, reason="the ziglang package is not installed: pip install ziglang"
)

BUILD_ZIG = """\
const std = @import("std");

pub fn build(b: *std.Build) void {
    const exe = b.addExecutable(.{
        .name = "prefect-server",
        .root_module = b.createModule(.{
            .root_source_file = b.path("src/main.zig"),
            .target = b.standardTargetOptions(.{}),
            .optimize = b.standardOptimizeOption(.{}),
        }),
    });
    b.installArtifact(exe);
}
"""


def git(cwd: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@t", *args],
        cwd=cwd,
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()


@pytest.fixture
def checkout(tmp_path: Path) -> Path:
    """A tiny zig project, committed, whose build installs an executable `prefect-server`."""
    src = tmp_path / "zig-src"
    (src / "src").mkdir(parents=True)
    (src / "build.zig").write_text(BUILD_ZIG)
    (src / "src" / "main.zig").write_text("pub fn main() void {}\n")
    git(src, "init", "-q")
    git(src, "add", ".")
    git(src, "commit", "-q", "-m", "tiny")
    return src


@needs_zig
@pytest.mark.slow
def test_a_checkout_is_built_once_per_commit_and_recorded(checkout: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    commit = git(checkout, "rev-parse", "HEAD")

    first = ZigServer(src=checkout, cache_dir=cache)
    assert first.unavailable_reason() is None
    assert first.version() is None  # nothing to ask before the build
    first.prepare(tmp_path / "logs")
    binary = cache / "zig" / "builds" / commit / "bin" / "prefect-server"
    assert first.binary == binary
    assert subprocess.run([str(binary)], timeout=10).returncode == 0
    info = first.info()
    assert info["commit"] == commit and info["dirty"] is False
    assert info["build_cached"] is False
    assert info["binary_sha256"] == hashlib.sha256(binary.read_bytes()).hexdigest()
    assert "build -Doptimize=ReleaseFast" in (tmp_path / "logs" / "build.log").read_text()
    # the checkout is not written to: zig's cache lives in ours
    assert git(checkout, "status", "--porcelain", "--ignored") == ""

    again = ZigServer(src=checkout, cache_dir=cache)
    again.prepare(tmp_path / "logs2")
    assert again.binary == binary and again.info()["build_cached"] is True

    (checkout / "src" / "main.zig").write_text("pub fn main() void {}\n// changed\n")
    dirty = ZigServer(src=checkout, cache_dir=cache)
    dirty.prepare(tmp_path / "logs3")
    info = dirty.info()
    assert info["dirty"] is True and info["build_cached"] is False
    assert str(info["build_key"]).startswith(f"{commit}-dirty-")
    assert dirty.binary != binary and dirty.binary is not None and dirty.binary.is_file()
    assert not list((cache / "zig" / "builds").glob(".*.tmp"))


@needs_zig
@pytest.mark.slow
def test_a_checkout_that_does_not_build_fails_with_the_build_log(
    checkout: Path, tmp_path: Path
) -> None:
    (checkout / "src" / "main.zig").write_text(
        textwrap.dedent("""\
        pub fn main() void {
            this_is_not_zig();
        }
        """)
    )
    cache = tmp_path / "cache"
    adapter = ZigServer(src=checkout, cache_dir=cache)
    with pytest.raises(ServerError, match=r"zig build of .* failed with exit code") as info:
        adapter.prepare(tmp_path / "logs")
    assert "this_is_not_zig" in str(info.value)  # the compiler's message, from the log's tail
    assert "build.log" in str(info.value)
    assert not [p for p in (cache / "zig" / "builds").iterdir()]  # nothing half-built is kept
