"""Server, services and load apart: a --url on another host (only with --allow-remote), and
PostgreSQL and Redis on a docker daemon of another host (DOCKER_HOST).

"Another host" here is 127.0.0.2: Linux routes all of 127.0.0.0/8 to this machine's loopback,
and prefect-bench counts only 127.0.0.1, localhost and ::1 as this machine, so it treats an
address there exactly as a host elsewhere and no traffic leaves the machine. The remote daemon
is the real one, reached through a relay on 127.0.0.2 that carries each connection to its unix
socket.
"""

from __future__ import annotations

import json
import os
import platform
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import httpx
import psutil
import psycopg
import pytest
import redis

from bench import services
from bench.cells.runner import parse_url
from bench.cli import EXIT_FAILED, EXIT_OK, EXIT_SKIPPED, EXIT_USAGE, main
from bench.core.errors import CellSkipped, ConfigError, ProvisionError
from bench.core.ownership import CELL_LABEL, RUN_LABEL, Labels
from bench.core.ports import LOOPBACK, free_port
from bench.core.process import ManagedProcess, wait_until
from bench.report import build, collect
from bench.results import Cell, Result, ServiceInfo
from bench.servers import running
from bench.servers.adapter import ServerSetup, clean_environ
from bench.servers.registry import make_server
from bench.services.docker import DockerProvider, daemon_address, remove_leftover_containers
from tests.helpers import REPORT_RUN

pytest_plugins = ["tests.conftest_services"]

REMOTE = "127.0.0.2"
LOCAL_DAEMON = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
REASON = DockerProvider.unavailable_reason("postgres") or DockerProvider.unavailable_reason("redis")
if REASON is None and not LOCAL_DAEMON.startswith("unix://"):
    REASON = f"the relay needs the daemon's unix socket, DOCKER_HOST is {LOCAL_DAEMON}"
needs_daemon = pytest.mark.skipif(REASON is not None, reason=f"docker provider: {REASON}")


def run_main(*args: str) -> int:
    """main() in this process, as the entry point calls it, its SIGTERM handler put back."""
    handler = signal.getsignal(signal.SIGTERM)
    try:
        return main(list(args))
    finally:
        signal.signal(signal.SIGTERM, handler)


# -- the rule ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "host", "remote"),
    [
        ("http://127.0.0.1:4200/api", "127.0.0.1", False),
        ("http://localhost:4200/api", "127.0.0.1", False),
        ("http://[::1]:4200/api", "::1", False),
        ("http://127.0.0.2:4200/api", "127.0.0.2", True),
        ("http://10.1.2.3:4200/api", "10.1.2.3", True),
        ("http://Bench-Server.example:4200/api", "bench-server.example", True),
        ("http://[fd00::5]:4200/api", "fd00::5", True),
    ],
)
def test_only_three_spellings_are_this_machine(url: str, host: str, remote: bool) -> None:
    if remote:
        with pytest.raises(ConfigError) as refused:
            parse_url(url)
        message = str(refused.value)
        assert f"got {host}:" in message and "--allow-remote" in message and "attack" in message
    target = parse_url(url, allow_remote=True)
    assert (target.host, target.port, target.api_path, target.remote) == (
        host,
        4200,
        "/api",
        remote,
    )
    assert target.base_url == url.lower().replace("localhost", "127.0.0.1")


@pytest.mark.parametrize(
    ("docker_host", "address"),
    [
        (None, LOOPBACK),
        ("unix:///var/run/docker.sock", LOOPBACK),
        ("tcp://127.0.0.1:2375", LOOPBACK),
        ("tcp://localhost:2375", LOOPBACK),
        ("tcp://127.0.0.2:2375", REMOTE),
        ("127.0.0.2:2375", REMOTE),  # the SDK reads it as tcp://
        ("ssh://bench@127.0.0.2", REMOTE),
    ],
)
def test_the_daemons_address_is_its_hosts(docker_host: str | None, address: str) -> None:
    env = {} if docker_host is None else {"DOCKER_HOST": docker_host}
    assert daemon_address(env) == address


def _listener(host: str, port: int, started: list[subprocess.Popen[str]]) -> subprocess.Popen[str]:
    """A process of its own listening on host:port, once it says so (added to `started`)."""
    child = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import socket, sys\n"
            f"s = socket.create_server(({host!r}, {port}))\n"
            "print('LISTENING', flush=True)\n"
            "sys.stdin.read()\n",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    started.append(child)
    assert child.stdout is not None and child.stdout.readline().strip() == "LISTENING"
    return child


def test_behind_a_remote_url_no_process_here_is_the_servers() -> None:
    """What listens on the URL's port here is not a remote server: its CPU is another's."""
    port = free_port(REMOTE)
    started: list[subprocess.Popen[str]] = []
    try:
        here = _listener(LOOPBACK, port, started)
        there = _listener(REMOTE, port, started)
        local = set(parse_url(f"http://127.0.0.1:{port}/api").ours.extra())
        remote = set(parse_url(f"http://{REMOTE}:{port}/api", allow_remote=True).ours.extra())
        assert here.pid in local and there.pid not in local  # by address, not port alone
        assert remote == set()
    finally:
        for child in started:
            child.communicate(input="")


# -- a server on another host ----------------------------------------------------------------


@pytest.fixture(scope="module")
def server_on_127_0_0_2(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ManagedProcess]:
    """A real Prefect server (sqlite, memory broker, API only) started as the runner starts the
    python server, but listening on 127.0.0.2 only."""
    tmp = tmp_path_factory.mktemp("server-on-127.0.0.2")
    adapter = make_server("python")
    setup = ServerSetup(
        db="sqlite", broker="memory", logdir=tmp, datadir=tmp / "data", no_services=True
    )
    setup.datadir.mkdir()
    # the migrated schema the other tests' servers start on, when one of them made it
    if (schema := running._schema_copy(adapter, setup)) is not None and schema.exists():
        shutil.copyfile(schema, setup.sqlite_path)
    port = free_port(REMOTE)
    argv = [REMOTE if arg == LOOPBACK else arg for arg in adapter.command(port, setup)]
    assert REMOTE in argv
    env = clean_environ() | adapter.environment(port, setup)
    process = ManagedProcess(argv, env=env, cwd=setup.datadir, log_path=tmp / "server.log")
    url = f"http://{REMOTE}:{port}/api"

    def healthy() -> bool:
        try:
            return httpx.get(f"{url}/health", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        wait_until(
            healthy,
            timeout_s=120,
            interval_s=0.1,
            abort=lambda: None if process.exit_code() is None else process.log_tail(),
        )
        yield process
    finally:
        process.stop()


@pytest.mark.slow
def test_a_cell_against_a_server_on_another_host_records_both_hosts(
    server_on_127_0_0_2: ManagedProcess, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    server = server_on_127_0_0_2
    listening = {
        (c.laddr.ip, c.laddr.port)
        for p in server.tree()
        for c in p.net_connections(kind="tcp")
        if c.status == psutil.CONN_LISTEN
    }
    port = int(server.argv[server.argv.index("--port") + 1])
    assert listening == {(REMOTE, port)}  # not on 127.0.0.1
    url = f"http://{REMOTE}:{port}/api"
    path = tmp_path / "result.json"
    code = run_main(
        *("run", "--url", url, "--allow-remote", "--workload", "seed", "--json", str(path)),
        *("--duration", "0.2", "--warmup", "0.1", "--concurrency", "1", "--out", str(tmp_path)),
    )
    assert code == EXIT_OK, capsys.readouterr().out[-3000:]
    result = Result.model_validate(json.loads(path.read_text()))
    assert result.status == "ok" and result.cell == Cell(server="external")
    assert result.server_host == REMOTE and result.config.allow_remote
    assert result.environment.hostname == platform.node()  # where the load ran
    assert len(result.endpoints) == 6  # fixtures made and every request checked through it
    assert all(ep.requests > 0 and not ep.errors for ep in result.endpoints)
    notes = [n for s in build([result]).sections for n in s.notes]
    load = f"the load on {platform.node()}"
    assert f"external ran on more than one host: {load}, the server on {REMOTE}." in notes


@pytest.mark.slow
def test_conformance_of_a_server_on_another_host_needs_allow_remote(
    server_on_127_0_0_2: ManagedProcess, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    port = int(server_on_127_0_0_2.argv[server_on_127_0_0_2.argv.index("--port") + 1])
    url = f"http://{REMOTE}:{port}/api"
    report = tmp_path / "conformance.json"
    assert run_main("conformance", "--url", url, "--tasks", "2") == EXIT_USAGE
    assert "give --allow-remote to measure one you own" in capsys.readouterr().err
    argv = ["conformance", "--url", url, "--allow-remote", "--tasks", "2", "--timeout", "1"]
    # the server runs no services: the real client's flow run reads back, its task runs
    # (written by the task-run recorder, a service) do not
    assert run_main(*argv, "--json", str(report)) == EXIT_FAILED
    checked = json.loads(report.read_text())
    assert checked["url"] == url and checked["client_version"]
    assert {c["name"]: c["ok"] for c in checked["checks"]} == {
        "client": True,
        "flow run": True,
        "task runs": False,
        "events": False,
        "emulation": True,
    }


# -- services on a docker daemon of another host ------------------------------------------


class DockerRelay:
    """A docker daemon "on another host": a listener on 127.0.0.2 whose every connection is
    carried to and from the local daemon's unix socket, in one thread."""

    def __init__(self, socket_path: str) -> None:
        self.socket_path = socket_path
        self.listener = socket.create_server((REMOTE, 0))
        self.port: int = self.listener.getsockname()[1]
        self.connections = 0
        self._selector = selectors.DefaultSelector()
        self._selector.register(self.listener, selectors.EVENT_READ)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._relay, daemon=True)
        self._thread.start()

    @property
    def docker_host(self) -> str:
        return f"tcp://{REMOTE}:{self.port}"

    def _relay(self) -> None:
        while not self._stop.is_set():
            for key, _ in self._selector.select(timeout=0.1):
                sock: socket.socket = key.fileobj  # type: ignore[assignment]
                if sock is self.listener:
                    self._accept()
                    continue
                peer: socket.socket = key.data
                try:
                    data = sock.recv(1 << 16)
                    if data:
                        peer.sendall(data)
                        continue
                except OSError:
                    pass
                self._close(sock, peer)
        for key in list(self._selector.get_map().values()):
            key.fileobj.close()  # type: ignore[union-attr]
        self._selector.close()

    def _accept(self) -> None:
        client, _ = self.listener.accept()
        daemon = socket.socket(socket.AF_UNIX)
        daemon.connect(self.socket_path)
        self.connections += 1
        self._selector.register(client, selectors.EVENT_READ, daemon)
        self._selector.register(daemon, selectors.EVENT_READ, client)

    def _close(self, *socks: socket.socket) -> None:
        for sock in socks:
            self._selector.unregister(sock)
            sock.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join()


@pytest.fixture
def relay() -> Iterator[DockerRelay]:
    relay = DockerRelay(LOCAL_DAEMON.removeprefix("unix://"))
    yield relay
    relay.close()


@pytest.fixture
def local_client(labels: Labels) -> Iterator[Any]:
    """The daemon through its own socket; at the end, any container of the test's run is
    reported and removed."""
    client = docker.DockerClient(base_url=LOCAL_DAEMON)
    yield client
    left = client.containers.list(all=True, filters={"label": f"{RUN_LABEL}={labels.run_id}"})
    for container in left:
        container.remove(force=True, v=True)
    client.close()
    assert not left, f"containers left behind: {[c.name for c in left]}"


@pytest.mark.slow
@needs_daemon
def test_services_on_a_remote_daemon_listen_and_answer_at_its_host(
    relay: DockerRelay, local_client: Any, labels: Labels, tmp_path: Path
) -> None:
    provider = DockerProvider({"DOCKER_HOST": relay.docker_host})
    with provider.postgres(tmp_path, labels) as pg, provider.redis(tmp_path, labels) as rs:
        assert (pg.host, pg.info.host, rs.host, rs.info.host) == (REMOTE,) * 4
        with psycopg.connect(pg.url) as conn:  # the URL the server under test is given
            row = conn.execute("SELECT host(inet_server_addr())").fetchone()
            assert row == (REMOTE,)  # answered at that host's address
        with redis.Redis.from_url(rs.url()) as r:
            assert f"laddr={REMOTE}:{rs.port}" in r.execute_command("CLIENT", "INFO").decode()
        server_env = make_server("python").environment(
            4200,
            ServerSetup("postgres", "redis", tmp_path, tmp_path / "data", postgres=pg, redis=rs),
        )
        assert f"@{REMOTE}:{pg.port}/" in server_env["PREFECT_SERVER_DATABASE_CONNECTION_URL"]
        assert server_env["PREFECT_REDIS_MESSAGING_HOST"] == REMOTE
        containers = local_client.containers.list(filters={"label": f"{RUN_LABEL}={labels.run_id}"})
        assert {c.labels[CELL_LABEL] for c in containers} == {labels.cell}
        commands = sorted(" ".join(c.attrs["Config"]["Cmd"]) for c in containers)
        assert f"listen_addresses={LOOPBACK},{REMOTE}" in commands[0]  # postgres
        assert f"--bind {LOOPBACK} {REMOTE}" in commands[1]  # redis-server
    assert relay.connections > 0  # the daemon was asked through its host, not its socket
    assert (
        local_client.containers.list(all=True, filters={"label": f"{RUN_LABEL}={labels.run_id}"})
        == []
    )


def test_an_unreachable_remote_daemon_is_one_clear_line(
    tmp_path: Path,
    labels: Labels,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    docker_host = f"tcp://{REMOTE}:{free_port(REMOTE)}"  # nobody listens there
    env = {"DOCKER_HOST": docker_host}
    said = f"the docker daemon at {docker_host} (DOCKER_HOST, on {REMOTE}) cannot be reached: "
    said += "Connection refused; check that it runs"
    reason = DockerProvider.unavailable_reason("postgres", env)
    assert reason is not None and reason.startswith(said) and "\n" not in reason
    with pytest.raises(CellSkipped, match="provider docker cannot provide postgres"):
        services.choose("postgres", "docker", env)
    with pytest.raises(ProvisionError) as failed:  # noqa: SIM117
        with DockerProvider(env).postgres(tmp_path, labels):
            pytest.fail("no daemon to provide it")
    assert said in str(failed.value) and "\n" not in str(failed.value)
    assert remove_leftover_containers(env) == []
    # as a user meets it: the cell skipped, saying so in one line
    monkeypatch.setenv("DOCKER_HOST", docker_host)
    out = tmp_path / "out"
    code = run_main("run", "--db", "postgres", "--provider", "docker", "--out", str(out))
    assert code == EXIT_SKIPPED
    (result,) = collect([out])[0]
    assert result.error == f"provider docker cannot provide postgres here: {reason}"
    shown = " ".join(capsys.readouterr().out.split())  # the console wraps long lines
    assert f"python-postgres-memory: skipped: {result.error}" in shown


# -- the report ------------------------------------------------------------------------------

OLDER = REPORT_RUN


def test_the_report_says_which_cells_ran_on_several_hosts() -> None:
    # results written before these fields read as all on one host, and say nothing
    older = collect([OLDER])[0]
    assert {r.server_host for r in older} == {None}
    assert {s.host for r in older for s in r.services.values()} == {None}
    base = next(r for r in older if r.cell.name == "python-sqlite-memory" and r.status == "ok")
    remote_server = base.model_copy(
        update={"cell": Cell(server="external"), "server_host": "10.1.2.3"}
    )
    remote_db = base.model_copy(
        update={
            "cell": Cell(server="python", db="postgres", broker="memory"),
            "services": {"postgres": ServiceInfo(provider="docker", host="10.1.2.9")},
        }
    )
    notes = [n for s in build([*older, remote_server, remote_db]).sections for n in s.notes]
    load = f"the load on {base.environment.hostname}"
    assert [n for n in notes if "more than one host" in n] == [
        f"external ran on more than one host: {load}, the server on 10.1.2.3.",
        f"python-postgres-memory ran on more than one host: {load}, postgres on 10.1.2.9.",
    ]
