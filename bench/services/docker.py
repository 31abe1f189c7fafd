"""The `docker` provider: PostgreSQL and Redis containers through the docker SDK.

Images, environment, command and healthcheck come from docker-compose.yml (the file `docker
compose up` users run too); this module only moves the service to a free port on the daemon's
address (`daemon_address`: 127.0.0.1, or the host of a DOCKER_HOST on another host), gives
PostgreSQL a random password, and labels the container with its run, cell and owning process.
Containers use the host's network, are waited on through their healthcheck, leave their log in
the cell's folder, and are removed with their volumes at the end; a crashed run's containers
are removed by `remove_leftover_containers` once their owner is gone. A missing image is pulled
(`prepare`, with its progress) when its registry answers; the provider is not chosen when it
does not.
"""

from __future__ import annotations

import contextlib
import itertools
import re
import secrets
import shlex
import socket
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import urlsplit

import docker
import docker.errors
import psycopg
import redis
from docker.models.containers import Container
from requests.exceptions import RequestException

from bench.core.errors import ProvisionError
from bench.core.failures import from_log, one_line
from bench.core.ownership import RUN_LABEL, Labels, owner_is_gone, owner_labels
from bench.core.ports import LOOPBACK, THIS_MACHINE, PortTaken, lost_port_race, on_free_port
from bench.results import ServiceInfo
from bench.services._common import (
    Teardown,
    env_or_os,
    interrupts_deferred,
    new_password,
    safe_name,
    service_info,
    tail,
    wait_for,
)
from bench.services.base import PostgresService, RedisService, ServiceKind, ServiceProvider
from bench.services.kinds import KINDS, POSTGRES, REDIS, Kind, PostgresLogin

COMPOSE_ENV = "BENCH_COMPOSE_FILE"
DEFAULT_COMPOSE_FILE = Path(__file__).resolve().parents[2] / "docker-compose.yml"
DEFAULT_DOCKER_HOST = "unix:///var/run/docker.sock"
READY_TIMEOUT_S = 120.0
# Healthcheck interval on daemons without start_interval (API < 1.44): one exec per second is
# the compromise between the time to notice readiness and the CPU taken from measurements.
OLD_DAEMON_INTERVAL_NS = 1_000_000_000
START_INTERVAL_API = (1, 44)
API_TIMEOUT_S = 60
PING_TIMEOUT_S = 5
BUILD_IMAGES = "../shared/tools/build-local-images"
START_DAEMON = (
    f"start one (e.g. `{BUILD_IMAGES} --daemon-only` as root, or `dockerd &`), "
    "or point DOCKER_HOST at one"
)

# Docker errors that mean "the daemon did not do it", as opposed to bugs in this module.
_DOCKER_ERRORS = (docker.errors.DockerException, RequestException)


# -- docker-compose.yml ------------------------------------------------------------------


@dataclass(frozen=True)
class ComposeService:
    """The parts of one docker-compose.yml service that the provider uses."""

    image: str
    environment: dict[str, str] = field(default_factory=dict)
    command: list[str] | None = None
    healthcheck: dict[str, Any] | None = None


_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(h|ms|m|s|us|ns)")
_NS = {"h": 3600e9, "m": 60e9, "s": 1e9, "ms": 1e6, "us": 1e3, "ns": 1.0}


def parse_duration_ns(text: str | int | float) -> int:
    """A compose duration (`1m30s`, `500ms`, a number of seconds) in nanoseconds."""
    if isinstance(text, int | float):
        return int(text * 1e9)
    parts = _DURATION_PART.findall(text.strip())
    if not parts or "".join(n + u for n, u in parts) != text.strip():
        raise ValueError(f"not a duration: {text!r}")
    return int(sum(float(n) * _NS[u] for n, u in parts))


def _unescape(value: object) -> str:
    # compose interpolation: `$$` is a literal `$` (other `${...}` are not interpolated here)
    return str(value).replace("$$", "$")


def compose_file(env: Mapping[str, str] | None = None) -> Path:
    given = env_or_os(env).get(COMPOSE_ENV)
    return Path(given) if given else DEFAULT_COMPOSE_FILE


def load_compose_service(path: Path, service: str) -> ComposeService:
    """Image, environment, command and healthcheck of `service` in a compose file."""
    import yaml

    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
        spec = doc["services"][service]
        image = str(spec["image"])
    except OSError as exc:
        raise ProvisionError(f"cannot read {path}: {exc.strerror}") from exc
    except (yaml.YAMLError, KeyError, TypeError) as exc:
        raise ProvisionError(
            f"{path} has no usable service {service!r} with an image: {exc}"
        ) from exc
    raw_env = spec.get("environment") or {}
    if isinstance(raw_env, list):
        raw_env = dict(item.split("=", 1) if "=" in item else (item, "") for item in raw_env)
    environment = {str(k): _unescape(v) for k, v in raw_env.items()}
    command = spec.get("command")
    if isinstance(command, str):
        command = shlex.split(command)
    healthcheck: dict[str, Any] | None = None
    if hc := spec.get("healthcheck"):
        test = hc.get("test")
        if isinstance(test, str):
            test = ["CMD-SHELL", test]
        healthcheck = {"test": [_unescape(t) for t in test]}
        try:
            for key in ("interval", "timeout", "start_period", "start_interval"):
                if key in hc:
                    healthcheck[key] = parse_duration_ns(hc[key])
        except ValueError as exc:
            raise ProvisionError(f"{path}: service {service}: healthcheck: {exc}") from exc
        if "retries" in hc:
            healthcheck["retries"] = int(hc["retries"])
    return ComposeService(
        image=image,
        environment=environment,
        command=[_unescape(c) for c in command] if command else None,
        healthcheck=healthcheck,
    )


# -- the daemon --------------------------------------------------------------------------


def _docker_host(env: Mapping[str, str]) -> str:
    return env.get("DOCKER_HOST") or DEFAULT_DOCKER_HOST


def _remote_host(env: Mapping[str, str]) -> str | None:
    """The host of a DOCKER_HOST on another host than this machine (bench.core.ports.THIS_MACHINE),
    as it names it; None for a local daemon (a unix socket, or tcp:// to this machine)."""
    value = _docker_host(env)
    # the SDK reads a DOCKER_HOST without a scheme as tcp://
    parts = urlsplit(value if "://" in value else f"tcp://{value}")
    if parts.scheme not in ("tcp", "http", "https", "ssh") or not parts.hostname:
        return None
    return None if parts.hostname in THIS_MACHINE else parts.hostname


def daemon_address(env: Mapping[str, str] | None = None) -> str:
    """Where the daemon's containers listen and are reached from here: 127.0.0.1 for a local
    daemon, the IPv4 address of DOCKER_HOST's host for one on another host (with the host's
    network, a container's address is its host's). ProvisionError if that name has none."""
    host = _remote_host(env_or_os(env))
    if host is None:
        return LOOPBACK
    try:
        return str(socket.getaddrinfo(host, None, socket.AF_INET, socket.SOCK_STREAM)[0][4][0])
    except OSError as exc:
        raise ProvisionError(
            f"DOCKER_HOST {_docker_host(env_or_os(env))}: no IPv4 address for {host} "
            f"({exc.strerror or exc}), where its containers would listen"
        ) from None


def _cause(exc: BaseException) -> str:
    """What a docker SDK error comes down to, e.g. `Connection refused` (the SDK wraps the
    socket's error in three layers of connection-pool text)."""
    seen: list[BaseException] = []
    found: BaseException | None = exc
    while found is not None and found not in seen:
        seen.append(found)
        found = found.__cause__ or found.__context__ or getattr(found, "reason", None)
        if not isinstance(found, BaseException):
            found = None
    errors = [e for e in seen if isinstance(e, OSError) and e.strerror]
    if errors:
        return str(errors[-1].strerror)
    # the daemon's own words, without the SDK's "500 Server Error for http+docker://…"
    explanation = getattr(exc, "explanation", None)
    return one_line(str(explanation or exc))


def connect(env: Mapping[str, str] | None = None, timeout: int = API_TIMEOUT_S) -> Any:
    """A docker client that answered a ping; ProvisionError in one line saying how to start a
    daemon (or, for one on another host, what to check there)."""
    env = env_or_os(env)
    try:
        client = docker.from_env(environment=dict(env), timeout=timeout)
        client.ping()
    except _DOCKER_ERRORS as exc:
        if (host := _remote_host(env)) is not None:
            raise ProvisionError(
                f"the docker daemon at {_docker_host(env)} (DOCKER_HOST, on {host}) cannot be "
                f"reached: {_cause(exc)}; check that it runs and listens there and that this "
                "machine may connect"
            ) from None
        raise ProvisionError(
            f"docker SDK cannot reach a daemon at {_docker_host(env)}: {_cause(exc)}; "
            f"{START_DAEMON}"
        ) from None
    return client


def _image_missing(image: str, cause: str) -> str:
    return (
        f"image {image} is missing here and its registry does not answer ({cause}): build it "
        f"with {BUILD_IMAGES}, name another in {COMPOSE_ENV}, or use --provider local"
    )


def image_reason(client: Any, image: str) -> str | None:
    """None when `image` is here or its registry answers for it (then `pull` fetches it: the
    daemon asks the registry for its manifest, nothing is downloaded); else why not, in one
    line with the fix."""
    try:
        client.images.get(image)
        return None
    except docker.errors.ImageNotFound:
        pass
    except _DOCKER_ERRORS as exc:
        return f"docker cannot inspect image {image}: {_cause(exc)}"
    try:
        client.api.inspect_distribution(image)
    except _DOCKER_ERRORS as exc:
        return _image_missing(image, _cause(exc))
    return None


# How often a pull reports its progress.
PULL_REPORT_S = 2.0


def pull(client: Any, image: str, report: Callable[[str], None]) -> None:
    """Pull `image` unless it is here, `report`ing how much is downloaded every PULL_REPORT_S
    and when done; ProvisionError in one line when the daemon cannot."""
    with contextlib.suppress(docker.errors.ImageNotFound):
        client.images.get(image)
        return
    repository, tag = docker.utils.parse_repository_tag(image)
    report(f"pulling image {image} (it is missing here)")
    layers: dict[str, tuple[int, int]] = {}  # layer → (bytes done, bytes in all)
    reported = time.monotonic()
    started = reported
    try:
        for event in client.api.pull(repository, tag=tag or "latest", stream=True, decode=True):
            if "error" in event:
                raise ProvisionError(_image_missing(image, one_line(str(event["error"]))))
            detail = event.get("progressDetail") or {}
            if event.get("status") == "Downloading" and detail.get("total"):
                layers[event["id"]] = (int(detail.get("current", 0)), int(detail["total"]))
            if time.monotonic() - reported >= PULL_REPORT_S and layers:
                done = sum(d for d, _ in layers.values()) / 1e6
                whole = sum(t for _, t in layers.values()) / 1e6
                report(f"pulling image {image}: {done:,.0f} of {whole:,.0f} MB")
                reported = time.monotonic()
    except _DOCKER_ERRORS as exc:
        raise ProvisionError(_image_missing(image, _cause(exc))) from None
    report(f"pulled image {image} in {time.monotonic() - started:.0f} s")


def remove_leftover_containers(env: Mapping[str, str] | None = None) -> list[str]:
    """Remove (with volumes) prefect-bench containers whose owning process is gone.

    Containers of a live run, of another host, or without an owner mark are left alone; no
    daemon means nothing to do. Returns the names removed.
    """
    try:
        client = connect(env, timeout=PING_TIMEOUT_S * 2)
    except ProvisionError:
        return []
    removed = []
    with contextlib.closing(client):
        try:
            containers = client.containers.list(all=True, filters={"label": RUN_LABEL})
        except _DOCKER_ERRORS:
            return []
        for container in containers:
            if not owner_is_gone(container.labels):
                continue
            with contextlib.suppress(docker.errors.NotFound):
                container.remove(force=True, v=True)
                removed.append(container.name)
    return removed


# -- the provider ------------------------------------------------------------------------


class DockerProvider(ServiceProvider):
    """Containers from docker-compose.yml's images, on the host network and a free port of the
    daemon's address (`daemon_address`)."""

    name: ClassVar[str] = "docker"

    def __init__(
        self,
        env: Mapping[str, str] | None = None,
        compose: Path | None = None,
        ready_timeout_s: float = READY_TIMEOUT_S,
    ) -> None:
        self.env = dict(env_or_os(env))
        self.compose = compose or compose_file(self.env)
        self.ready_timeout_s = ready_timeout_s

    @classmethod
    def unavailable_reason(
        cls, kind: ServiceKind, env: Mapping[str, str] | None = None
    ) -> str | None:
        try:
            spec = load_compose_service(compose_file(env), KINDS[kind].compose_service)
            daemon_address(env)  # another host's containers need its address to listen on
            client = connect(env, timeout=PING_TIMEOUT_S)
        except ProvisionError as exc:
            return str(exc)
        with contextlib.closing(client):
            return image_reason(client, spec.image)

    def prepare(self, kind: ServiceKind, report: Callable[[str], None]) -> None:
        """Pull the compose file's image for `kind` if it is missing, with its progress."""
        spec = load_compose_service(self.compose, KINDS[kind].compose_service)
        with contextlib.closing(connect(self.env)) as client:
            pull(client, spec.image, report)

    @contextlib.contextmanager
    def postgres(self, workdir: Path, labels: Labels) -> Iterator[PostgresService]:
        started = time.monotonic()
        spec = load_compose_service(self.compose, POSTGRES.compose_service)
        address = daemon_address(self.env)
        user = spec.environment.get("POSTGRES_USER", "postgres")
        database = spec.environment.get("POSTGRES_DB", user)
        password = new_password()  # never the file's well-known one on a shared machine

        def environment(port: int) -> dict[str, str]:
            # the image's password variable; PGPORT for the compose file's healthcheck
            return {"POSTGRES_PASSWORD": password, "PGPORT": str(port)}

        def verify(port: int) -> str | None:
            login = PostgresLogin(address, port, user, password, database)
            with POSTGRES.connect(login) as conn:
                return POSTGRES.version(conn)

        with Teardown() as teardown:
            port, version, container = self._run(
                teardown, POSTGRES, spec, workdir, labels, address, environment, verify
            )
            info = self._info(spec, container, version, started, address)
            yield PostgresService(address, port, user, password, database, info)

    @contextlib.contextmanager
    def redis(self, workdir: Path, labels: Labels) -> Iterator[RedisService]:
        started = time.monotonic()
        spec = load_compose_service(self.compose, REDIS.compose_service)
        address = daemon_address(self.env)

        def environment(port: int) -> dict[str, str]:
            return {"REDIS_PORT": str(port)}  # for the compose file's healthcheck

        def verify(port: int) -> str | None:
            client = REDIS.client(address, port)
            with contextlib.closing(client):
                client.flushall()  # our own fresh server: db 0 starts empty
                return REDIS.version(client)

        with Teardown() as teardown:
            port, version, container = self._run(
                teardown, REDIS, spec, workdir, labels, address, environment, verify
            )
            info = self._info(spec, container, version, started, address)
            yield RedisService(address, port, 0, info)

    # -- steps --------------------------------------------------------------------------

    def _info(
        self,
        spec: ComposeService,
        container: Container,
        version: str | None,
        started: float,
        address: str,
    ) -> ServiceInfo:
        return service_info(
            self.name,
            started,
            version=version,
            image=spec.image,
            image_id=container.attrs.get("Image"),
            container=container.name,
            container_id=container.id,
            healthcheck_interval_s=_interval_s(container),
            host=None if address == LOOPBACK else address,
        )

    def _run(
        self,
        teardown: Teardown,
        kind: Kind,
        spec: ComposeService,
        workdir: Path,
        labels: Labels,
        address: str,
        environment: Callable[[int], dict[str, str]],
        verify: Callable[[int], str | None],
    ) -> tuple[int, str | None, Container]:
        """Start the container listening on a free port of `address`, a new one when the port
        is taken; wait healthy.

        `environment(port)` is added to the compose file's; `verify(port)` gives the version.
        The port is one free here: on a daemon's other host, where none can be asked for, a
        taken one is a lost race like any other.
        """
        try:
            client = connect(self.env)
        except ProvisionError as exc:
            raise ProvisionError(f"{kind.name}: {exc}") from None
        teardown.callback(client.close)
        pull(client, spec.image, lambda line: None)  # `prepare` pulled it, reporting, if missing
        log = workdir / f"{kind.name}.log"
        attempts = itertools.count(1)
        # the compose file's healthcheck asks 127.0.0.1 of the daemon's host: the container
        # listens there too, where only that host's processes reach it
        hosts = [LOOPBACK] if address == LOOPBACK else [LOOPBACK, address]

        def attempt(port: int) -> tuple[int, str | None, Container]:
            command = [*(spec.command or [kind.server]), *kind.listen_args(port, hosts)]
            name = f"prefect-bench-{safe_name(labels.cell)}-{kind.name}-{secrets.token_hex(3)}"
            remove = _Remover(client, self.env, name, log, next(attempts))
            with interrupts_deferred():
                # registered before creation: an interrupted create is still removed by name
                teardown.callback(remove)
                try:
                    container = _create(
                        client,
                        spec,
                        name,
                        command,
                        {**spec.environment, **environment(port)},
                        owner_labels(labels, kind.name),
                    )
                except _DOCKER_ERRORS as exc:
                    raise ProvisionError(
                        f"cannot create the {kind.name} container: {exc}"
                    ) from None
            try:
                container.start()
                self._wait_healthy(container, kind.name)
                version = verify(port)
                container.reload()
                if container.status != "running":
                    raise ProvisionError(
                        f"the {kind.name} container stopped after becoming healthy"
                    )
            except ProvisionError as exc:
                logs = remove.logs() or ""
                remove()
                if lost_port_race(logs):  # taken between our choice and the container's bind
                    raise PortTaken(f"port {port}: {exc}") from None
                said = f"{exc}; container {name} removed"
                raise from_log(ProvisionError, said, tail(logs), log) from None
            except (*_DOCKER_ERRORS, psycopg.Error, redis.RedisError) as exc:
                logs = remove.logs() or ""
                remove()
                said = f"the {kind.name} container {name} failed: {exc}"
                raise from_log(ProvisionError, said, tail(logs), log) from None
            return port, version, container

        return on_free_port(attempt, f"the {kind.name} container", ProvisionError)

    def _wait_healthy(self, container: Container, kind: str) -> None:
        """Wait for the container's healthcheck (or, without one, for it to be running)."""

        def healthy() -> bool | None:
            container.reload()
            health = (container.attrs["State"].get("Health") or {}).get("Status")
            if health is None:
                return container.status == "running" or None
            return health == "healthy" or None

        def broken() -> str | None:
            state = container.attrs["State"]
            if state.get("Status") in ("exited", "dead"):
                return f"the {kind} container exited with code {state.get('ExitCode')}"
            health = state.get("Health") or {}
            if health.get("Status") == "unhealthy":
                checks = health.get("Log") or [{}]
                output = str(checks[-1].get("Output", "")).strip()
                return f"the {kind} container is unhealthy (last healthcheck: {output!r})"
            return None

        wait_for(
            healthy,
            timeout_s=self.ready_timeout_s,
            what=f"the {kind} container {container.name} (healthcheck)",
            abort=broken,
        )


def _interval_s(container: Container) -> float | None:
    """Seconds between the healthchecks that keep running while the server is measured."""
    interval = (container.attrs["Config"].get("Healthcheck") or {}).get("Interval")
    return interval / 1e9 if interval else None


def _api_version(client: Any) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in str(client.api.api_version).split("."))
    except ValueError:
        return (0,)


def healthcheck_for(client: Any, spec: ComposeService) -> dict[str, Any] | None:
    """The compose healthcheck in the daemon's terms: StartInterval where the API knows it,
    else checks every OLD_DAEMON_INTERVAL_NS, so that readiness is noticed promptly."""
    if spec.healthcheck is None:
        return None
    hc = {
        "Test": spec.healthcheck["test"],
        "Interval": spec.healthcheck.get("interval"),
        "Timeout": spec.healthcheck.get("timeout"),
        "Retries": spec.healthcheck.get("retries"),
        "StartPeriod": spec.healthcheck.get("start_period"),
    }
    start_interval = spec.healthcheck.get("start_interval")
    if start_interval is not None:
        if _api_version(client) >= START_INTERVAL_API:
            hc["StartInterval"] = start_interval
        else:
            hc["Interval"] = OLD_DAEMON_INTERVAL_NS
    return {k: v for k, v in hc.items() if v is not None}


def _create(
    client: Any,
    spec: ComposeService,
    name: str,
    command: list[str],
    environment: dict[str, str],
    labels: dict[str, str],
) -> Container:
    """Create (its image pulled before) the container; the low-level API, as the SDK's model drops
    StartInterval from healthchecks."""
    config = client.api.create_container_config(
        spec.image,
        command,
        environment=environment,
        labels=labels,
        host_config=client.api.create_host_config(network_mode="host"),
        detach=True,
    )
    if (hc := healthcheck_for(client, spec)) is not None:
        config["Healthcheck"] = hc
    created = client.api.create_container_from_config(config, name=name)
    return client.containers.get(created["Id"])


@dataclass
class _Remover:
    """Saves a container's log into the cell's folder, then removes it with its volumes."""

    client: Any
    env: Mapping[str, str]
    name: str
    log: Path
    attempt: int
    done: bool = False

    def logs(self) -> str | None:
        """The container's output; None if there is no such container."""
        try:
            data: bytes = self.client.containers.get(self.name).logs(stdout=True, stderr=True)
        except docker.errors.NotFound:
            return None
        except _DOCKER_ERRORS as exc:
            return f"(could not read the container's log: {exc})\n"
        return data.decode("utf-8", errors="replace")

    def __call__(self) -> None:
        if self.done:
            return
        text = self.logs()
        if text is not None:
            with contextlib.suppress(OSError):
                self.log.parent.mkdir(parents=True, exist_ok=True)
                with self.log.open("a", encoding="utf-8") as f:
                    f.write(f"===== container {self.name} (attempt {self.attempt}) =====\n{text}")
        error: Exception | None = None
        for client in (self.client, None):
            try:
                if client is None:  # the first client may be broken by an interrupt
                    client = docker.from_env(environment=dict(self.env), timeout=API_TIMEOUT_S)
                client.containers.get(self.name).remove(force=True, v=True)
            except docker.errors.NotFound:
                pass
            except _DOCKER_ERRORS as exc:
                error = exc
                continue
            self.done = True
            return
        raise ProvisionError(
            f"could not remove the container {self.name}: {error}; the next run removes it "
            f"(or: docker rm -f -v {self.name})"
        )
