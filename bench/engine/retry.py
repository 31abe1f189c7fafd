"""Retries as the Prefect client makes them: which answers and failures it sends again, how
often, and how long it waits first.

Read from `prefect.client.base.PrefectHttpxAsyncClient` (`send`, `_send_with_retry`) and
`prefect.utilities.math` (3.4.25 to 3.9.1), so that an emulated user fails where the real client
fails and is slowed where it is slowed:
- It sends again an answer whose status is retried (408, 429, 502, 503 and
  PREFECT_CLIENT_RETRY_EXTRA_CODES), a timeout, a connection that broke or answered nonsense
  (httpx's ReadError, WriteError, RemoteProtocolError), and, since 3.6.12, a refused connection
  once the client has had an answer (ConnectError after `_has_connected`).
- Up to PREFECT_CLIENT_MAX_RETRIES times; an answer carrying `Prefect-Maintenance: true` does not
  count as a try.
- Before try n+1 it waits 2**n s, jittered by `clamped_poisson_interval` with
  PREFECT_CLIENT_RETRY_JITTER_FACTOR; a `Retry-After` (seconds or an HTTP date) replaces 2**n and
  is jittered upwards only (`bounded_poisson_interval(s, s * (1 + factor))`).
- A failure that is not an answer (a timeout, a broken connection) is raised at once when the
  tries are spent; a retried status is waited for once more and then returned (the loop's last
  turn sleeps before it ends), so the real client takes 2**(n+1) s longer to fail on it.

The jitter functions below are those of `prefect.utilities.math`, written again so that the
engine's processes need not import Prefect: fed the same random numbers they return the same
intervals (tests/engine/test_retry.py checks it against the installed Prefect).
"""

from __future__ import annotations

import datetime as dt
import math
import random
from dataclasses import dataclass
from email.utils import parsedate_to_datetime

# What the client sends again when it is not an answer: the engine's failure kinds for httpx's
# timeouts, and for its ReadError, WriteError and RemoteProtocolError (a connection that broke
# or answered what is not HTTP).
TRANSPORT_RETRIED = frozenset({"timeout", "disconnect"})


@dataclass(frozen=True)
class RetryPolicy:
    """The installed Prefect client's retries (`bench.workloads.client_retries` reads them)."""

    statuses: frozenset[int]
    max_retries: int
    jitter_factor: float
    # ConnectError is retried once the client has had an answer (Prefect >= 3.6.12)
    connect_once_connected: bool
    version: str

    def retried(self, kind: str, connected: bool) -> bool:
        """Whether a try that ended as `kind` (an HTTP status, or the engine's failure kind) is
        sent again; `connected`: this user has had an answer before."""
        if kind.isdigit():
            return int(kind) in self.statuses
        if kind == "connect":
            return self.connect_once_connected and connected
        return kind in TRANSPORT_RETRIED

    def wait_s(self, tries: int, retry_after: str | None) -> float:
        """How long the client waits after its try number `tries` (from 1), given the answer's
        Retry-After header if it had one."""
        seconds = None if retry_after is None else parse_retry_after(retry_after)
        from_header = seconds is not None
        if seconds is None:
            seconds = 2.0**tries
        if seconds > 0 and self.jitter_factor > 0:
            if from_header:
                return bounded_poisson_interval(seconds, seconds * (1 + self.jitter_factor))
            return clamped_poisson_interval(seconds, self.jitter_factor)
        return seconds


def parse_retry_after(value: str) -> float | None:
    """A Retry-After header in seconds (RFC 9110: delay-seconds or an HTTP date), None if it
    cannot be read (the client then backs off exponentially)."""
    try:
        seconds = float(value)
    except ValueError:
        try:
            at = parsedate_to_datetime(value)
        except (TypeError, ValueError, OverflowError):
            return None
        if at.tzinfo is None:
            at = at.replace(tzinfo=dt.UTC)
        seconds = (at - dt.datetime.now(dt.UTC)).total_seconds()
    return max(seconds, 0.0) if math.isfinite(seconds) else None


def _poisson_interval(average: float, lower: float = 0, upper: float = 1) -> float:
    return -math.log(max(1 - random.uniform(lower, upper), 1e-10)) * average


def _exponential_cdf(x: float, average: float) -> float:
    rate = 1 / average
    return 1 - math.exp(-rate * x)


def _lower_clamp_multiple(k: float) -> float:
    if k >= 50:
        return 0.0
    return math.log(max(2**k / (2**k - 1), 1e-10), 2)


def clamped_poisson_interval(average: float, clamping_factor: float) -> float:
    """An exponential draw around `average`, at most `average * (1 + clamping_factor)`, with a
    lower bound that keeps the mean near `average` (Prefect's function of that name)."""
    if average <= 0:
        return 0.0
    upper_multiple = 1 + clamping_factor
    upper = average * upper_multiple
    lower = max(0, average * _lower_clamp_multiple(upper_multiple))
    return _poisson_interval(
        average, _exponential_cdf(lower, average), _exponential_cdf(upper, average)
    )


def bounded_poisson_interval(lower: float, upper: float) -> float:
    """An exponential draw between `lower` and `upper` (Prefect's function of that name)."""
    average = (float(lower) + float(upper)) / 2.0
    return _poisson_interval(
        average, _exponential_cdf(lower, average), _exponential_cdf(upper, average)
    )
