"""A workload is data: named requests, the fixtures they need, and how answers are checked; or
a scenario (a chain of steps) and how to read back what the server recorded of it."""

from __future__ import annotations

import datetime as dt
import functools
import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import httpx

from bench.config.run import Options, RunConfig
from bench.core.errors import VerificationError
from bench.engine.model import UNIQUE_TOKEN, EngineRequest
from bench.engine.scenario import Scenario, VirtualUser
from bench.workloads.reported import ScenarioReport

Fixtures = Mapping[str, str]
# check(body, fixtures) -> what is wrong, or None. Module-level functions only: engine
# processes receive them pickled.
Check = Callable[[bytes, Fixtures], str | None]


@dataclass(frozen=True)
class Endpoint:
    """One request of a workload; `path` and string values in `body` may name fixtures."""

    name: str
    method: str
    path: str
    body: Any = None
    expect_status: tuple[int, ...] = (200,)
    check: Check | None = None

    def resolve(self, api_path: str, fixtures: Fixtures) -> EngineRequest:
        """The concrete request, fixtures filled in; `{unique}` becomes a per-request token."""
        values = {**fixtures, "unique": UNIQUE_TOKEN.decode()}
        body = None
        if self.body is not None:
            body = json.dumps(_fill(self.body, values), separators=(",", ":")).encode()
        return EngineRequest(
            method=self.method,
            path=api_path + self.path.format_map(values),
            body=body,
            expect_status=self.expect_status,
            validate=functools.partial(self.check, fixtures=dict(fixtures)) if self.check else None,
        )


def _fill(value: Any, values: Mapping[str, str]) -> Any:
    if isinstance(value, str):
        return value.format_map(values)
    if isinstance(value, dict):
        return {k: _fill(v, values) for k, v in value.items()}
    if isinstance(value, list):
        return [_fill(v, values) for v in value]
    return value


# A fixture set when the endpoints are read while a scenario writes beside them (--workload
# mixed): the checks then take counts of what it writes as the least there may be.
WRITES_BESIDE = "writes_beside"


def reads(api_path: str, endpoints: Sequence[Endpoint], fixtures: Fixtures) -> Scenario:
    """The endpoints as one scenario, each a step checked as under load: a reader of a page
    sends them one after another (the scenario `read_each`). No `{unique}` tokens: these are
    reads."""
    requests = tuple((e.name, e.resolve("", fixtures)) for e in endpoints)
    return Scenario("reads", read_each, {"requests": requests}, api_path)


async def read_each(user: VirtualUser, params: Mapping[str, Any]) -> None:
    """Send each of `params["requests"]` (name, EngineRequest) as a step and check its answer."""
    for name, request in params["requests"]:
        body = await user.http(
            name, request.method, request.path, request.body, request.expect_status
        )
        if request.validate is not None and (problem := request.validate(body)):
            raise user.invalid(name, problem)


# How often a setup or verification request answered 503 is sent again.
UNAVAILABLE_ATTEMPTS = 5


def back_off_unavailable(attempt: int) -> None:
    """Wait before sending again what was answered 503: the lock is held by the server's own
    writes, longer with each attempt."""
    time.sleep(0.1 * attempt)


class _RetryUnavailable(httpx.HTTPTransport):
    """Retries 503 answers a few times: SQLite answers a single write with 503 "database is
    locked" while the server's own services write. Under load the engine counts those 503s;
    for fixtures and verification one transient lock must not fail the cell."""

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        for attempt in range(1, UNAVAILABLE_ATTEMPTS):
            response = super().handle_request(request)
            if response.status_code != 503:
                return response
            response.read()
            response.close()
            back_off_unavailable(attempt)
        return super().handle_request(request)


def api_client(base_url: str) -> httpx.Client:
    """An httpx client for setup and verification (not for load: it is far too slow)."""
    return httpx.Client(base_url=base_url, timeout=30.0, transport=_RetryUnavailable())


@dataclass(frozen=True)
class Workload:
    name: str
    description: str
    endpoints: tuple[Endpoint, ...]
    setup: Callable[[httpx.Client], dict[str, str]] = field(default=lambda client: {})

    def create_fixtures(self, client: httpx.Client) -> dict[str, str]:
        """Create what the requests need (client's base_url is the API root)."""
        try:
            return self.setup(client)
        except httpx.HTTPError as exc:
            raise VerificationError(f"creating the {self.name} fixtures failed: {exc}") from exc

    def verify(self, client: httpx.Client, fixtures: Fixtures) -> None:
        """Send each request once; raise VerificationError unless every answer is right."""
        for endpoint in self.endpoints:
            req = endpoint.resolve("", fixtures)  # relative to the client's base_url
            body = req.body.replace(UNIQUE_TOKEN, b"verify") if req.body else None
            try:
                resp = client.request(
                    req.method,
                    req.path,
                    content=body,
                    headers={"content-type": "application/json"} if body else None,
                )
            except httpx.HTTPError as exc:
                raise VerificationError(f"{endpoint.name}: {exc!r}") from exc
            if resp.status_code not in endpoint.expect_status:
                raise VerificationError(
                    f"{endpoint.name}: {req.method} {req.path} answered {resp.status_code} "
                    f"(expected {endpoint.expect_status}): {resp.text[:200]}"
                )
            if req.validate is not None and (problem := req.validate(resp.content)):
                raise VerificationError(f"{endpoint.name}: {problem}")


def json_check(what: str = "") -> Callable[[Callable[[Any, Fixtures], str | None]], Check]:
    """Make `check(data, fixtures)`, given the decoded JSON answer, a Check of the raw body.

    A body that is not JSON is the problem ("what: not JSON: …" when `what` is given). The Check
    keeps the function's module and name, so engine processes still unpickle it.
    """

    def decorate(check: Callable[[Any, Fixtures], str | None]) -> Check:
        @functools.wraps(check)
        def check_body(body: bytes, fixtures: Fixtures) -> str | None:
            try:
                data = json.loads(body)
            except ValueError:
                problem = f"not JSON: {body[:100]!r}"
                return f"{what}: {problem}" if what else problem
            return check(data, fixtures)

        return check_body

    return decorate


def created_id(resp: httpx.Response, what: str) -> str:
    """The id of an object a setup request created; VerificationError if it was not created."""
    if resp.status_code not in (200, 201):
        raise VerificationError(
            f"creating the {what} answered {resp.status_code}: {resp.text[:200]}"
        )
    return str(resp.json()["id"])


def post_json(client: httpx.Client, path: str, body: Any) -> Any:
    """The decoded answer to a verification read; VerificationError unless it is a 200."""
    answer = client.post(path, json=body)
    if answer.status_code != 200:
        raise VerificationError(f"POST {path} answered {answer.status_code}: {answer.text[:200]}")
    return answer.json()


@dataclass(frozen=True)
class ScenarioWorkload:
    """A workload of chains of steps: each measurement runs `scenario(config, tag)` (a
    scenario whose objects carry the unique `tag`), then reads back what the server recorded of
    it (`recorded(client, scenario)`: counts by kind, the kinds of the scenario's counts).

    The runner (bench.cells.runner) calls these hooks, and the report draws `report`, without
    knowing which workload it is."""

    name: str
    description: str
    scenario: Callable[[RunConfig, str], Scenario]
    recorded: Callable[[httpx.Client, Scenario], dict[str, int]]
    # run the real Prefect client's flow first (bench.conformance), the workload emulating it:
    # how many tasks its flow run has under a config (None: no such check)
    real_client_check: Callable[[RunConfig], int] | None = None
    # prepare(client, scenario, verify) -> the scenario with the objects it needs made (a
    # work pool and deployments); finish(client, scenario, ended) -> what the server's
    # services did for it, read back once it was measured (until `ended`) and recorded
    prepare: Callable[[httpx.Client, Scenario, bool], Scenario] | None = None
    finish: Callable[[httpx.Client, Scenario, dt.datetime], dict[str, int]] | None = None
    # an endpoint workload whose requests --readers users send, as one scenario (`reads`),
    # in the same windows as the scenario's users (writes under reads: --workload mixed)
    beside: Workload | None = None
    # what its results add to the report's Scenarios section
    report: ScenarioReport = field(default_factory=ScenarioReport)
    # its own settings (bench.config.run.Options), which the command line gathers
    options: type[Options] | None = None
    # --concurrency when it is not given (workers: the users are workers, 10 of them)
    default_concurrency: tuple[int, ...] | None = None
    # why a config cannot run this workload (None: it can): checks across settings
    refuse: Callable[[RunConfig], str | None] | None = None
    # how many users send `beside`'s reads (mixed: --readers)
    beside_users: Callable[[RunConfig], int] | None = None

    def refusal(self, config: RunConfig) -> str | None:
        """Why `config` cannot run this workload, in one sentence naming the options (None:
        it can)."""
        return None if self.refuse is None else self.refuse(config)

    def prepared(self, client: httpx.Client, scenario: Scenario, verify: bool) -> Scenario:
        """`scenario` with what it needs made on the server (as it is, for most workloads)."""
        if self.prepare is None:
            return scenario
        try:
            return self.prepare(client, scenario, verify)
        except httpx.HTTPError as exc:
            raise VerificationError(f"preparing the {self.name} scenario failed: {exc}") from exc

    def finished(
        self, client: httpx.Client, scenario: Scenario, ended: dt.datetime
    ) -> dict[str, int] | None:
        """What the server's services did for `scenario`, measured until `ended` (None for a
        workload that reads nothing of them back); what `prepared` set going is stopped."""
        return None if self.finish is None else self.finish(client, scenario, ended)

    def readers(
        self, client: httpx.Client, api_path: str, stage: Callable[[str], None]
    ) -> Scenario | None:
        """The reads of `beside` as one scenario (None: the workload is measured alone), their
        answers read from the server and each request verified once (`stage` says so): written
        beside, the counts of what is written may only grow. Before anything is written."""
        if self.beside is None:
            return None
        stage(f"creating the {self.beside.name} fixtures and verifying every request")
        fixtures = self.beside.create_fixtures(client) | {WRITES_BESIDE: "yes"}
        self.beside.verify(client, fixtures)
        return reads(api_path, self.beside.endpoints, fixtures)

    def reader_users(self, config: RunConfig) -> int:
        """How many users send the reads beside the scenario's (0: none)."""
        return 0 if self.beside_users is None else self.beside_users(config)

    def parts(
        self, scenario: Scenario, users: int, readers: Scenario | None, config: RunConfig
    ) -> list[tuple[Scenario, int]]:
        """A level's scenarios and their users: `scenario`'s, and `readers` beside it, each
        named by the other's users (so that every level's readers are a row of their own)."""
        reader_users = self.reader_users(config)
        if readers is None or self.beside is None or not reader_users:
            return [(scenario, users)]
        beside = self.beside.name
        reading = f"{reader_users} {beside} reader{'s' if reader_users > 1 else ''}"
        writing = f"{users} writer{'s' if users > 1 else ''}"
        return [
            (replace(scenario, name=f"{scenario.name}, beside {reading}"), users),
            (replace(readers, name=f"{beside} reads, beside {writing}"), reader_users),
        ]
