"""The docker provider against a real daemon and the images of build-local-images.

Where no daemon answers (or the images are missing) the tests that need them skip, saying why;
CI starts a daemon and builds the images first (.ci/setup-services).
"""

from __future__ import annotations

import contextlib
import signal
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import docker
import docker.errors
import psutil
import psycopg
import pytest
import redis
import yaml

from bench import services
from bench.core import ports
from bench.core.errors import CellSkipped, ProvisionError
from bench.core.ownership import (
    CELL_LABEL,
    HOST_LABEL,
    PID_LABEL,
    PID_START_LABEL,
    RUN_LABEL,
    Labels,
    owner_labels,
)
from bench.services import docker as docker_provider
from bench.services.docker import DockerProvider, remove_leftover_containers
from tests.services import fake_registry

if TYPE_CHECKING:
    from tests.conftest_services import Children

pytest_plugins = ["tests.conftest_services"]

REASON = DockerProvider.unavailable_reason("postgres") or DockerProvider.unavailable_reason("redis")
needs_daemon = pytest.mark.skipif(REASON is not None, reason=f"docker provider: {REASON}")
NO_DAEMON = {"DOCKER_HOST": "unix:///nonexistent/docker.sock", "PATH": "/usr/bin:/bin"}


@pytest.fixture
def client(labels: Labels) -> Iterator[Any]:
    """A docker client; at the end, any container of this test's run is reported and removed."""
    client = docker.from_env()
    yield client
    left = client.containers.list(all=True, filters={"label": f"{RUN_LABEL}={labels.run_id}"})
    for container in left:
        container.remove(force=True, v=True)
    client.close()
    assert not left, f"containers left behind: {[c.name for c in left]}"


def run_containers(client: Any, run_id: str, sparse: bool = False) -> list[Any]:
    """The run's containers; sparse: not inspected one by one (which fails for a container
    removed meanwhile), so only id, labels and status are known."""
    filters = {"label": f"{RUN_LABEL}={run_id}"}
    return client.containers.list(all=True, filters=filters, sparse=sparse)


def compose_variant(tmp_path: Path, kind: str, **changes: Any) -> Path:
    """A copy of the repository's docker-compose.yml with service `kind` changed."""
    doc = yaml.safe_load(docker_provider.DEFAULT_COMPOSE_FILE.read_text())
    doc["services"][kind].update(changes)
    path = tmp_path / "docker-compose.yml"
    path.write_text(yaml.safe_dump(doc))
    return path


@pytest.mark.slow
@needs_daemon
def test_docker_postgres_answers_queries_and_is_removed_with_its_volume(
    tmp_path: Path, labels: Labels, client: Any
) -> None:
    with DockerProvider().postgres(tmp_path, labels) as pg:
        (container,) = run_containers(client, labels.run_id)
        volumes = [m["Name"] for m in container.attrs["Mounts"] if m["Type"] == "volume"]
        assert container.attrs["HostConfig"]["NetworkMode"] == "host"
        assert container.labels[CELL_LABEL] == labels.cell
        assert container.labels[PID_LABEL] == str(psutil.Process().pid)
        with psycopg.connect(pg.url) as conn:
            conn.execute("CREATE TABLE t (x int)")
            conn.execute("INSERT INTO t VALUES (7)")
            assert conn.execute("SELECT x FROM t").fetchall() == [(7,)]
        assert pg.password != "prefect"  # not the compose file's well-known password
    assert run_containers(client, labels.run_id) == []
    for name in volumes:
        with pytest.raises(docker.errors.NotFound):
            client.volumes.get(name)
    assert pg.info.provider == "docker" and pg.info.image == "postgres:16"
    assert pg.info.version and 0 < pg.info.ready_s < 120  # type: ignore[attr-defined]
    assert pg.info.healthcheck_interval_s in (1.0, 30.0)  # type: ignore[attr-defined]
    log = (tmp_path / "postgres.log").read_text()
    assert f"port {pg.port}" in log and "ready to accept connections" in log


@pytest.mark.slow
@needs_daemon
def test_docker_redis_answers_and_is_removed(tmp_path: Path, labels: Labels, client: Any) -> None:
    with DockerProvider().redis(tmp_path, labels) as rs:
        with redis.Redis.from_url(rs.url()) as r:
            r.set("k", "v")
            assert r.get("k") == b"v"
        assert len(run_containers(client, labels.run_id)) == 1
    assert run_containers(client, labels.run_id) == []
    assert rs.info.image == "redis:7" and rs.info.version
    assert f"port={rs.port}" in (tmp_path / "redis.log").read_text()


NEVER_HEALTHY: dict[str, tuple[str, dict[str, Any], str, str]] = {
    "postgres bad command (exits)": (
        "postgres",
        {"command": ["postgres", "-c", "no_such_setting=1"]},
        "exited",
        "no_such_setting",
    ),
    "redis bad command (exits)": (
        "redis",
        {"command": ["redis-server", "--no-such-directive", "yes"]},
        "exited",
        "no-such-directive",
    ),
    "redis healthcheck always fails (unhealthy)": (
        "redis",
        {"healthcheck": {"test": ["CMD", "false"], "interval": "200ms", "retries": 2}},
        "unhealthy",
        "Ready to accept connections",
    ),
    "redis healthcheck never answers (deadline)": (
        "redis",
        {"healthcheck": {"test": ["CMD", "sleep", "60"], "interval": "30s", "timeout": "60s"}},
        "not ready after 3 s",
        "Ready to accept connections",
    ),
}


@pytest.mark.slow
@needs_daemon
@pytest.mark.parametrize("case", list(NEVER_HEALTHY))
def test_container_never_healthy_is_an_error_with_its_log_and_is_removed(
    case: str, tmp_path: Path, labels: Labels, client: Any
) -> None:
    kind, changes, why, in_log = NEVER_HEALTHY[case]
    provider = DockerProvider(compose=compose_variant(tmp_path, kind, **changes), ready_timeout_s=3)
    context = provider.postgres if kind == "postgres" else provider.redis
    with pytest.raises(ProvisionError) as error:  # noqa: SIM117
        with context(tmp_path, labels):
            pytest.fail("the service should not be provided")
    message = str(error.value)  # one line, the log's last lines its details
    assert why in message and f"(log: {tmp_path / f'{kind}.log'})" in message
    assert "\n" not in message and in_log in error.value.details
    assert run_containers(client, labels.run_id) == []
    assert in_log in (tmp_path / f"{kind}.log").read_text()


@needs_daemon
def test_a_missing_image_whose_registry_does_not_answer_is_one_line_with_the_fix(
    tmp_path: Path, labels: Labels, client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A registry on a loopback port nobody listens on: the daemon is refused at once (an image
    of Docker Hub would send the daemon beyond this machine)."""
    image = f"127.0.0.1:{ports.free_port()}/prefect-bench-missing:0"
    compose = compose_variant(tmp_path, "redis", image=image)
    monkeypatch.setenv(docker_provider.COMPOSE_ENV, str(compose))
    reason = DockerProvider.unavailable_reason("redis")
    assert reason is not None and "\n" not in reason
    assert reason.startswith(f"image {image} is missing here and its registry does not answer (")
    assert "build-local-images" in reason and "--provider local" in reason
    with pytest.raises(CellSkipped, match="provider docker cannot provide redis"):
        services.choose("redis", "docker")
    with pytest.raises(ProvisionError, match="its registry does not answer"):
        DockerProvider(compose=compose).prepare("redis", lambda line: None)
    assert run_containers(client, labels.run_id) == []


@pytest.mark.slow
@needs_daemon
def test_a_missing_image_is_pulled_with_its_progress_and_runs(
    tmp_path: Path, labels: Labels, client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The local redis image served by a fake registry (tests/services/fake_registry.py) on a
    loopback port, named as a registry's image: available, pulled saying so, run; the pulled
    image is removed after."""
    local = docker_provider.load_compose_service(docker_provider.DEFAULT_COMPOSE_FILE, "redis")
    with fake_registry.serving(client, local.image) as port:
        image = f"127.0.0.1:{port}/prefect-bench-pulled/redis:7"
        compose = compose_variant(tmp_path, "redis", image=image)
        monkeypatch.setenv(docker_provider.COMPOSE_ENV, str(compose))
        try:
            assert DockerProvider.unavailable_reason("redis") is None  # its registry answers
            provider = DockerProvider(compose=compose)
            said: list[str] = []
            provider.prepare("redis", said.append)
            assert said[0] == f"pulling image {image} (it is missing here)"
            assert said[-1].startswith(f"pulled image {image} in "), said
            assert client.images.get(image).id == client.images.get(local.image).id
            with provider.redis(tmp_path, labels) as rs, redis.Redis.from_url(rs.url()) as r:
                assert r.ping()
            assert rs.info.image == image
        finally:
            with contextlib.suppress(docker.errors.ImageNotFound):
                client.images.remove(image)
    assert run_containers(client, labels.run_id) == []


def test_unreachable_daemon_is_unavailable_with_the_fix_and_auto_falls_back() -> None:
    reason = DockerProvider.unavailable_reason("postgres", NO_DAEMON)
    assert reason is not None
    assert "cannot reach a daemon at unix:///nonexistent/docker.sock" in reason
    assert "build-local-images --daemon-only" in reason
    with pytest.raises(CellSkipped, match="provider docker cannot provide postgres"):
        services.choose("postgres", "docker", NO_DAEMON)
    if services.LocalProvider.unavailable_reason("redis", NO_DAEMON) is None:
        assert services.choose("redis", None, NO_DAEMON).name == "local"
    assert remove_leftover_containers(NO_DAEMON) == []


@pytest.mark.slow
@needs_daemon
def test_port_taken_before_bind_is_retried(
    tmp_path: Path, labels: Labels, client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        taken = holder.getsockname()[1]
        answers = iter([taken])
        real_free_port = ports.free_port
        monkeypatch.setattr(ports, "free_port", lambda: next(answers, None) or real_free_port())
        with DockerProvider().redis(tmp_path, labels) as rs:
            assert rs.port != taken
            with redis.Redis.from_url(rs.url()) as r:
                assert r.ping()
    log = (tmp_path / "redis.log").read_text()
    assert "(attempt 1)" in log and "Address already in use" in log and "(attempt 2)" in log


@pytest.mark.slow
@needs_daemon
@pytest.mark.parametrize("kind", ["postgres", "redis"])
def test_ctrl_c_while_the_container_starts_removes_it(
    kind: str, tmp_path: Path, labels: Labels, client: Any, children: Children
) -> None:
    # postgres: the real compose file, interrupted during its first start (initdb);
    # redis: a healthcheck that never passes, so the wait for health is what is interrupted
    compose = docker_provider.DEFAULT_COMPOSE_FILE
    if kind == "redis":
        hc = {"test": ["CMD", "false"], "interval": "1s", "retries": 1000}
        compose = compose_variant(tmp_path, kind, healthcheck=hc)
    child = children.start(
        f"""
        from pathlib import Path
        from bench.core.ownership import Labels
        from bench.services.docker import DockerProvider
        provider = DockerProvider(compose=Path({str(compose)!r}))
        with provider.{kind}(Path({str(tmp_path)!r}), Labels({labels.run_id!r}, "cell")):
            print("READY", flush=True)
            input()
        """
    )

    def running() -> bool:
        assert child.poll() is None, child.communicate()[0]
        containers = run_containers(client, labels.run_id, sparse=True)
        return any(c.status == "running" for c in containers)

    children.poll(running, what="a running container")
    # its removal may wait on the daemon twice (a call, then a fresh client), each up to the
    # API timeout: CI once took over 60 s on a loaded machine
    out = children.interrupt(child, timeout_s=2 * docker_provider.API_TIMEOUT_S + 30)
    assert "KeyboardInterrupt" in out and "READY" not in out
    assert run_containers(client, labels.run_id) == []
    assert (tmp_path / f"{kind}.log").exists()


def _dead_owner() -> dict[str, str]:
    """Owner marks of a process that has exited (a crashed run)."""
    proc = subprocess.Popen(["true"])
    ps = psutil.Process(proc.pid)
    marks = {PID_LABEL: str(proc.pid), PID_START_LABEL: f"{ps.create_time():.2f}"}
    proc.wait()
    return marks


@pytest.mark.slow
@needs_daemon
def test_leftovers_of_dead_runs_are_removed_and_live_or_foreign_ones_kept(
    labels: Labels, client: Any, children: Children, tmp_path: Path
) -> None:
    def create(name: str, **marks: str) -> Any:
        all_marks = {**owner_labels(labels, "redis"), **marks}
        return client.containers.create(
            "redis:7", name=f"pb-test-{name}-{labels.run_id}", labels=all_marks
        )

    live = create("live")
    other_host = create("other-host", **{HOST_LABEL: "some-other-machine"}, **_dead_owner())
    dead = create("dead", **_dead_owner())
    unlabelled = client.containers.create("redis:7", name=f"pb-test-unlabelled-{labels.run_id}")
    # and a real crash: a run killed while its container runs
    child = children.start(
        f"""
        from pathlib import Path
        from bench.core.ownership import Labels
        from bench.services.docker import DockerProvider
        with DockerProvider().redis(Path({str(tmp_path)!r}), Labels({labels.run_id!r}, "c")):
            print("READY", flush=True)
            input()
        """
    )
    try:
        children.read_line(child, "READY")
        child.send_signal(signal.SIGKILL)
        child.wait()
        (crashed,) = [
            c for c in run_containers(client, labels.run_id) if c.name.startswith("prefect")
        ]
        removed = remove_leftover_containers()
        assert {dead.name, crashed.name} <= set(removed)
        kept = {c.name for c in run_containers(client, labels.run_id)}
        assert kept == {live.name, other_host.name}
        assert client.containers.get(unlabelled.id)
    finally:
        unlabelled.remove(force=True)
        for c in run_containers(client, labels.run_id):
            c.remove(force=True, v=True)


def test_compose_file_is_read_as_compose_reads_it() -> None:
    pg = docker_provider.load_compose_service(docker_provider.DEFAULT_COMPOSE_FILE, "postgres")
    assert pg.image == "postgres:16"
    assert pg.environment == {
        "POSTGRES_USER": "prefect",
        "POSTGRES_PASSWORD": "prefect",
        "POSTGRES_DB": "prefect",
    }
    assert pg.healthcheck is not None and pg.healthcheck["test"][0] == "CMD-SHELL"
    assert "${PGPORT:-5432}" in pg.healthcheck["test"][1]  # `$$` is compose's literal `$`
    assert pg.healthcheck["start_interval"] == 250_000_000
    rs = docker_provider.load_compose_service(docker_provider.DEFAULT_COMPOSE_FILE, "redis")
    assert rs.image == "redis:7" and rs.command and rs.command[0] == "redis-server"
    assert docker_provider.parse_duration_ns("1m30s") == 90 * 10**9
    assert docker_provider.parse_duration_ns("500ms") == 5 * 10**8
    with pytest.raises(ValueError):
        docker_provider.parse_duration_ns("soon")


@pytest.mark.parametrize(("api", "start_interval"), [("1.41", None), ("1.44", 250_000_000)])
def test_healthchecks_are_rare_once_started_where_the_daemon_allows(
    api: str, start_interval: int | None
) -> None:
    # a client pinned to an API version makes no request until used
    client = docker.DockerClient(base_url=NO_DAEMON["DOCKER_HOST"], version=api)
    spec = docker_provider.load_compose_service(docker_provider.DEFAULT_COMPOSE_FILE, "redis")
    hc = docker_provider.healthcheck_for(client, spec)
    assert hc is not None and hc.get("StartInterval") == start_interval
    assert hc["Interval"] == (30 * 10**9 if start_interval else 10**9)
