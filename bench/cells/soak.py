"""--soak: one server under the workload for a long time, window after window.

The runner's loop over its level (every endpoint, or the scenario) goes round again and again
until the soak's time is up (`SoakClock.rounds`); each round's measurements are kept as
windows at their time (`Result.soak`), with what the server and its backends held at each
window's end, and then every window of an endpoint or scenario is merged into the one
measurement the report shows as for any cell (bench.results.merge, as repetitions are). The
report draws the windows over time and states each figure's slope (bench.compare.trend).

Windows follow one another, apart by their warm-up and by what a window does after it (the
drain that waits for the server to record what was sent, the backends' reads): the load pauses
for those seconds, as between the levels of any run.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

from bench.config.run import RunConfig
from bench.observe.progress import Progress
from bench.report.numbers import fmt_duration
from bench.results import EndpointResult, Result, ScenarioResult, Soak, SoakWindow
from bench.results.merge import merge


@dataclass
class SoakClock:
    """The rounds of a cell's level loop: one without --soak; with it, rounds until the soak's
    time is up, each one's start noted so that `fold` can tell its windows apart."""

    config: RunConfig
    result: Result
    progress: Progress
    _starts: list[tuple[float, int, int]] = field(default_factory=list)

    def __enter__(self) -> SoakClock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.fold()  # an interrupted soak keeps what it measured

    def rounds(self) -> Iterator[int]:
        """0, then (--soak) 1, 2, ... while the soak has time left; shows the time left."""
        soak_s = self.config.soak_s
        if soak_s is None:
            yield 0
            return
        self.result.soak = Soak(planned_s=soak_s, window_s=self.config.duration_s)
        began = time.monotonic()
        k = 0
        while k == 0 or (elapsed := time.monotonic() - began) < soak_s:
            at = 0.0 if k == 0 else elapsed
            self.progress.stage(
                f"soak window {k + 1}: {fmt_duration(at)} of {fmt_duration(soak_s)}, "
                f"about {fmt_duration(soak_s - at)} left"
            )
            self._starts.append((at, len(self.result.endpoints), len(self.result.scenarios)))
            yield k
            k += 1

    def fold(self) -> None:
        """The rounds' measurements as windows (`Result.soak`), and each endpoint's or
        scenario's windows merged into one measurement."""
        soak = self.result.soak
        if soak is None or not self._starts:
            return
        r = self.result
        first_ep, first_sc = self._starts[0][1], self._starts[0][2]
        ends = [(e, s) for _, e, s in self._starts[1:]] + [(len(r.endpoints), len(r.scenarios))]
        for k, ((at, ep_from, sc_from), (ep_to, sc_to)) in enumerate(
            zip(self._starts, ends, strict=True)
        ):
            soak.windows += [_window(k, at, ep) for ep in r.endpoints[ep_from:ep_to]]
            soak.windows += [_window(k, at, sc) for sc in r.scenarios[sc_from:sc_to]]
        r.endpoints[first_ep:] = _merged(r.endpoints[first_ep:])
        r.scenarios[first_sc:] = _merged(r.scenarios[first_sc:])


Measured = TypeVar("Measured", EndpointResult, ScenarioResult)


def _merged(measured: list[Measured]) -> list[Measured]:
    """Each (name, concurrency)'s windows as one measurement, in the order first measured."""
    groups: dict[tuple[str, int], list[Measured]] = {}
    for m in measured:
        groups.setdefault((m.name, m.concurrency), []).append(m)
    return [
        merge(group, "repetitions") if len(group) > 1 else group[0] for group in groups.values()
    ]


def _window(k: int, at_s: float, m: EndpointResult | ScenarioResult) -> SoakWindow:
    if isinstance(m, EndpointResult):
        rate, latency, errors, retries = m.rps, m.latency_ms, sum(m.errors.values()), 0
        lag = unresolved = lost = None
    else:
        rate, latency, errors = m.per_s, m.duration_ms, sum(m.failed.values())
        retries, lag, unresolved = sum(step.retries for step in m.steps), m.lag_ms, m.lag_unresolved
        lost = sum(d.lost for d in m.delivery.values()) if m.delivery else None
    return SoakWindow(
        window=k,
        at_s=round(at_s, 3),
        name=m.name,
        per_s=rate,
        p50_ms=latency.p50 if latency else None,
        p99_ms=latency.p99 if latency else None,
        errors=errors,
        retries=retries,
        server_rss_mb=m.server_rss_peak_mb,
        server_cpu_cores=m.server_cpu_cores,
        lag_p50_ms=lag.p50 if lag else None,
        lag_p99_ms=lag.p99 if lag else None,
        lag_unresolved=unresolved,
        lost=lost,
        **_backends(m.telemetry or {}),
    )


def _backends(telemetry: dict[str, Any]) -> dict[str, Any]:
    """What the backends held at the window's end (a backend that could not be read: None)."""
    postgres, sqlite, redis = (telemetry.get(k) or {} for k in ("postgres", "sqlite", "redis"))
    db_mb = postgres.get("db_size_mb")
    if db_mb is None and "db_mb" in sqlite:
        db_mb = sqlite["db_mb"] + sqlite.get("wal_mb", 0.0)
    streams = redis.get("streams")
    # a scan cut short by its bound (observe/telemetry.py) may have missed the busy streams
    counted = isinstance(streams, dict) and not redis.get("streams_truncated")
    return {
        "db_mb": db_mb,
        "redis_mb": redis.get("used_memory_mb"),
        "redis_stream_entries": sum(streams.values()) if counted else None,
    }
