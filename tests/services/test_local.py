"""The local provider on real initdb/postgres and redis-server processes."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import psutil
import psycopg
import pytest
import redis

from bench import services
from bench.core import ownership, ports
from bench.core.errors import CellSkipped, ProvisionError
from bench.core.ownership import Labels
from bench.services import local
from bench.services.local import LocalProvider

if TYPE_CHECKING:
    from tests.conftest_services import Children

pytest_plugins = ["tests.conftest_services"]

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        LocalProvider.unavailable_reason("postgres") is not None
        or LocalProvider.unavailable_reason("redis") is not None,
        reason=f"local provider unavailable: {LocalProvider.unavailable_reason('postgres')}; "
        f"{LocalProvider.unavailable_reason('redis')}",
    ),
]


def listening_ips(pid: int) -> set[str]:
    conns = psutil.Process(pid).net_connections(kind="inet")
    return {c.laddr.ip for c in conns if c.status == psutil.CONN_LISTEN}


def test_local_postgres_answers_queries_and_leaves_nothing(
    tmp_path: Path, tmp_root: Path, labels: Labels, children: Children
) -> None:
    provider = LocalProvider(tmp_root=tmp_root)
    with provider.postgres(tmp_path, labels) as pg:
        server = psutil.Process(pg.info.pid)  # type: ignore[attr-defined]
        tree = [server, *server.children(recursive=True)]
        with psycopg.connect(pg.url) as conn:
            conn.execute("CREATE TABLE t (x int)")
            conn.execute("INSERT INTO t VALUES (42)")
            assert conn.execute("SELECT x FROM t").fetchall() == [(42,)]
            assert conn.execute("SELECT current_database()").fetchone() == (pg.database,)
        assert listening_ips(server.pid) == {"127.0.0.1"}
        if os.geteuid() == 0:
            assert server.username() == local.SERVICE_USER
        assert len(list(tmp_root.iterdir())) == 1
    assert pg.info.provider == "local"
    assert pg.info.version and pg.info.version.startswith("15")
    assert pg.info.binary and pg.info.binary.endswith("postgres")
    assert 0 < pg.info.ready_s < 60  # type: ignore[attr-defined]
    children.assert_gone(tree)
    assert list(tmp_root.iterdir()) == []
    log = (tmp_path / "postgres.log").read_text()
    assert "database system is ready to accept connections" in log
    assert pg.password not in log


def test_local_redis_answers_and_leaves_nothing(
    tmp_path: Path, tmp_root: Path, labels: Labels, children: Children
) -> None:
    with LocalProvider(tmp_root=tmp_root).redis(tmp_path, labels) as rs:
        server = psutil.Process(rs.info.pid)  # type: ignore[attr-defined]
        client = redis.Redis.from_url(rs.url())
        with client:
            client.set("k", "v")
            assert client.get("k") == b"v"
            assert client.config_get("save") == {"save": ""}
            assert client.config_get("appendonly") == {"appendonly": "no"}
        assert listening_ips(server.pid) == {"127.0.0.1"}
    assert rs.db == 0 and rs.password is None
    assert rs.info.provider == "local" and rs.info.version
    children.assert_gone([server])
    assert list(tmp_root.iterdir()) == []
    assert "Ready to accept connections" in (tmp_path / "redis.log").read_text()


@pytest.fixture
def taken_port(monkeypatch: pytest.MonkeyPatch) -> Iterator[int]:
    """A port someone else binds between the provider's choice and its server's bind: the
    provider's first free_port() answer is a port we hold, later answers are really free."""
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    port = holder.getsockname()[1]
    answers = iter([port])
    real_free_port = ports.free_port
    monkeypatch.setattr(ports, "free_port", lambda: next(answers, None) or real_free_port())
    with holder:
        yield port


@pytest.mark.parametrize("kind", ["postgres", "redis"])
def test_local_port_taken_before_bind_is_retried(
    kind: str, taken_port: int, tmp_path: Path, tmp_root: Path, labels: Labels
) -> None:
    provider = LocalProvider(tmp_root=tmp_root)
    context = provider.postgres if kind == "postgres" else provider.redis
    with context(tmp_path, labels) as service:
        assert service.port != taken_port
    assert "Address already in use" in (tmp_path / f"{kind}.log").read_text()
    assert list(tmp_root.iterdir()) == []


def _postgres_phase(phase: str, child_pid: int) -> list[psutil.Process]:
    """The child's descendants once it is in `phase` of starting postgres, else []."""
    try:
        procs = psutil.Process(child_pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []
    for p in procs:
        try:
            cmd = p.cmdline()
        except psutil.Error:
            continue
        if phase == "initdb" and cmd and cmd[0].endswith("initdb"):
            return procs
        if phase == "waiting for health" and "listen_addresses=127.0.0.1" in cmd:
            return procs
    return []


@pytest.mark.parametrize("phase", ["initdb", "waiting for health"])
def test_ctrl_c_while_local_postgres_starts_leaves_nothing(
    phase: str, tmp_path: Path, tmp_root: Path, children: Children
) -> None:
    child = children.start(
        f"""
        from pathlib import Path
        from bench.core.ownership import Labels
        from bench.services.local import LocalProvider
        provider = LocalProvider(tmp_root=Path({str(tmp_root)!r}))
        with provider.postgres(Path({str(tmp_path)!r}), Labels("ctrl-c", "cell")):
            print("READY", flush=True)
            input()
        """
    )
    started = children.poll(lambda: _postgres_phase(phase, child.pid), what=phase)
    out = children.interrupt(child)
    assert "KeyboardInterrupt" in out and "READY" not in out
    children.assert_gone(started)
    assert list(tmp_root.iterdir()) == []


def test_leftover_folder_of_a_killed_run_is_removed_and_a_live_ones_kept(
    tmp_path: Path, tmp_root: Path, labels: Labels, children: Children
) -> None:
    child = children.start(
        f"""
        from pathlib import Path
        from bench.core.ownership import Labels
        from bench.services.local import LocalProvider
        provider = LocalProvider(tmp_root=Path({str(tmp_root)!r}))
        with provider.redis(Path({str(tmp_path)!r}), Labels("crashed", "cell")) as rs:
            print("PID", rs.info.pid, flush=True)
            input()
        """
    )
    server = psutil.Process(int(children.read_line(child, "PID ")))
    child.send_signal(signal.SIGKILL)  # a crash: no cleanup runs
    child.wait()
    children.assert_gone([server])  # the parent-death signal stopped it
    (crashed,) = tmp_root.iterdir()
    marks = json.loads((crashed / ownership.OWNER_FILE).read_text())
    assert marks[ownership.RUN_LABEL] == "crashed"
    with LocalProvider(tmp_root=tmp_root).redis(tmp_path, labels):
        (live,) = (p for p in tmp_root.iterdir() if p != crashed)
        assert ownership.remove_dead_folders(tmp_root) == [crashed]
        assert live.exists() and not crashed.exists()
    assert list(tmp_root.iterdir()) == []


def test_missing_binaries_make_local_unavailable_with_the_fix(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = {"PATH": str(tmp_path)}
    if Path(local.DEBIAN_PG_ROOT).exists():  # found in Debian's folder, off PATH
        assert local.find_binary("initdb", str(tmp_path))
    monkeypatch.setattr(local, "DEBIAN_PG_ROOT", str(tmp_path))
    reason = LocalProvider.unavailable_reason("postgres", env)
    assert reason is not None and "initdb" in reason and "install PostgreSQL" in reason
    reason = LocalProvider.unavailable_reason("redis", env)
    assert reason is not None and "redis-server" in reason and "apt-get install" in reason
    with pytest.raises(CellSkipped, match="provider local cannot provide redis"):
        services.choose("redis", "local", env)


@pytest.mark.skipif(os.geteuid() != 0, reason="only root runs services as another user")
def test_a_temp_folder_the_service_user_cannot_enter_is_a_clear_error(
    tmp_path: Path, labels: Labels
) -> None:
    private = tmp_path / "private"  # under pytest's 0700 folder
    private.mkdir()
    with pytest.raises(ProvisionError, match="cannot enter"):  # noqa: SIM117
        with LocalProvider(tmp_root=private).postgres(tmp_path, labels):
            pass
    assert list(private.iterdir()) == []


def test_local_postgres_works_under_a_deep_temporary_folder(tmp_path: Path) -> None:
    """nox points TMPDIR deep into .nox/: a Unix socket there would exceed 107 bytes."""
    base = Path(tempfile.mkdtemp(prefix="prefect-bench-test-deep-"))
    try:
        deep = base / ("d" * 60) / ("e" * 60)
        deep.mkdir(parents=True)
        for folder in (base, deep.parent, deep):
            folder.chmod(0o755)  # the unprivileged service user must get through
        assert len(f"{deep}/prefect-bench-pg-12345678/sockets/.s.PGSQL.40000") > 107
        provider = LocalProvider(tmp_root=deep)
        with (
            provider.postgres(tmp_path, Labels("deep-tmp", "pg")) as pg,
            psycopg.connect(pg.url) as conn,
        ):
            assert conn.execute("SELECT 1").fetchone() == (1,)
    finally:
        shutil.rmtree(base)
