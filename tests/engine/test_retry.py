"""Users that retry as the Prefect client does (bench.engine.retry): the same waits as the
installed client's own functions, the same tries, and what a retry costs, counted at its step."""

from __future__ import annotations

import random
import socket
from collections.abc import Iterator, Mapping
from dataclasses import replace
from typing import Any

import pytest

from bench.engine import LoadSpec, Scenario, Target, VirtualUser, measure_scenario
from bench.engine.retry import (
    RetryPolicy,
    bounded_poisson_interval,
    clamped_poisson_interval,
    parse_retry_after,
)
from bench.results import ScenarioMeasurement
from bench.workloads.client_retries import client_retries
from tests.engine.scripted_server import Server

POLICY = RetryPolicy(
    statuses=frozenset({408, 429, 502, 503}),
    max_retries=5,
    jitter_factor=0.2,
    connect_once_connected=True,
    version="3.9.1",
)


async def busy(user: VirtualUser, params: Mapping[str, Any]) -> None:
    await user.http("busy", "GET", params["path"])


async def slow_then_counted(user: VirtualUser, params: Mapping[str, Any]) -> None:
    await user.http("slow", "POST", "/slow", b"{}")
    user.count("items")


@pytest.fixture(scope="module")
def server() -> Iterator[Server]:
    with Server() as s:
        yield s


def measure_on(
    target: Target,
    path: str,
    retry: RetryPolicy | None,
    concurrency: int = 1,
    duration_s: float = 1.0,
) -> ScenarioMeasurement:
    scenario = Scenario("busy", busy, {"path": path}, retry=retry)
    spec = LoadSpec(concurrency=concurrency, duration_s=duration_s, warmup_s=0.2, engine_procs=1)
    return measure_scenario(target, scenario, spec)


def test_the_waits_are_the_installed_clients_own() -> None:
    # imported here: the engine's processes import this module for its scenarios, and
    # importing Prefect there would take a second of their window
    from prefect.utilities import math as prefect_math

    for tries in range(1, 7):
        random.seed(tries)
        theirs = [prefect_math.clamped_poisson_interval(2.0**tries, 0.2) for _ in range(50)]
        random.seed(tries)
        ours = [clamped_poisson_interval(2.0**tries, 0.2) for _ in range(50)]
        assert ours == theirs
        assert all(2.0**tries * 0.5 < w <= 2.0**tries * 1.2 for w in ours)
    random.seed(7)
    theirs = [prefect_math.bounded_poisson_interval(3, 3.6) for _ in range(50)]
    random.seed(7)
    assert [bounded_poisson_interval(3, 3.6) for _ in range(50)] == theirs
    # a Retry-After is waited for at least, never much longer
    assert all(3 <= POLICY.wait_s(1, "3") <= 3.6 for _ in range(50))


@pytest.mark.parametrize(
    ("value", "seconds"),
    [("2", 2.0), ("0.5", 0.5), ("Wed, 21 Oct 2015 07:28:00 GMT", 0.0), ("soon", None)],
)
def test_retry_after_is_read_as_the_client_reads_it(value: str, seconds: float | None) -> None:
    assert parse_retry_after(value) == seconds


@pytest.mark.parametrize(
    ("kind", "answered", "retried"),
    [
        ("503", False, True),
        ("429", True, True),
        ("500", True, False),
        ("404", True, False),
        ("timeout", False, True),
        ("disconnect", False, True),
        ("connect", False, False),  # a wrong URL fails at once
        ("connect", True, True),  # a server restarting is waited for
        ("invalid", True, False),
    ],
)
def test_what_is_retried(kind: str, answered: bool, retried: bool) -> None:
    assert POLICY.retried(kind, answered) is retried
    older = replace(POLICY, connect_once_connected=False)
    assert older.retried("connect", True) is False


def test_the_installed_clients_settings_are_read() -> None:
    policy = client_retries()
    assert policy.statuses >= {408, 429, 502, 503}
    assert policy.max_retries == 5 and policy.jitter_factor == 0.2
    assert policy.connect_once_connected  # the tests' Prefect is newer than 3.6.12


def test_retried_answers_slow_the_step_instead_of_failing_it(server: Server) -> None:
    m = measure_on(server.target, "/busy", POLICY)
    assert m.completed > 0 and m.failed == {}
    (step,) = m.steps
    # two of every three tries answered 503, each sent again (the window may cut one)
    assert abs(step.errors["503"] - step.retries) <= 1
    assert step.retries >= 2 * m.completed - 2
    assert step.requests == step.successes + step.errors["503"]
    assert step.retry_s > 0
    # what a user is told: refusals the client sent again, not failures
    assert m.problems and all(p.endswith("(sent again, as the client does)") for p in m.problems)


def test_without_the_policy_a_refused_try_fails_the_scenario(server: Server) -> None:
    m = measure_on(server.target, "/busy", None)
    (step,) = m.steps
    assert m.failed["busy"] > 0 and step.retries == 0


def test_the_client_gives_up_after_its_last_try(server: Server) -> None:
    m = measure_on(server.target, "/busy", replace(POLICY, max_retries=1))
    (step,) = m.steps
    # tries 503, 503: given up; the next scenario's first try is the third, answered
    assert m.failed["busy"] > 0 and m.completed > 0
    assert abs(step.retries - m.failed["busy"]) <= 1
    assert {p.endswith("as the client does)") for p in m.problems} == {True, False}, m.problems


def test_a_server_in_maintenance_is_waited_for_without_counting_tries(server: Server) -> None:
    m = measure_on(server.target, "/maintenance", replace(POLICY, max_retries=1))
    assert m.completed > 0 and m.failed == {}
    assert m.steps[0].retries >= 2 * m.completed - 2


def test_a_broken_connection_is_tried_again(server: Server) -> None:
    # no answer, no Retry-After: the client waits 2 s (±20%) before its second try
    m = measure_on(server.target, "/broken", POLICY, concurrency=4, duration_s=3.0)
    (step,) = m.steps
    assert m.completed > 0 and m.failed == {}
    assert step.errors.get("disconnect", 0) > 0 and step.retries > 0


def test_a_refused_first_connection_fails_at_once() -> None:
    with socket.socket() as s:  # a port the OS gave us, with nobody listening
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    m = measure_on(Target("127.0.0.1", port), "/busy", POLICY)
    (step,) = m.steps
    assert m.failed["busy"] > 0 and step.retries == 0 and set(step.errors) == {"connect"}


def test_what_was_sent_when_the_window_closed_is_counted(server: Server) -> None:
    """Steps on the wire when the window closes finish and are counted; no step starts after:
    what the scenarios counted is exactly what the server received."""
    before = server.hits["/slow"]
    scenario = Scenario("slow", slow_then_counted)
    # 8 users, always in a step of 0.2 s: the window closes with 8 on the wire
    spec = LoadSpec(concurrency=8, duration_s=0.45, warmup_s=0.1, engine_procs=1)
    m = measure_scenario(server.target, scenario, spec)
    received = server.hits["/slow"] - before
    assert received >= 8 and m.counts["items"] == received
