"""What the engine is given (a target, a request, a load spec); what it gives back is
`bench.results.Measurement`, the shape the result stores."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any

from hdrh.histogram import HdrHistogram

from bench.config.run import RunConfig
from bench.results import LatencyMs, Measurement

# Bytes in a request body replaced by a token unique to each request (e.g. flow run names).
UNIQUE_TOKEN = b"{{unique}}"

# Histogram range: 1 µs to 10 minutes, 3 significant digits.
HISTOGRAM_MIN_US = 1
HISTOGRAM_MAX_US = 600_000_000
HISTOGRAM_DIGITS = 3


def new_histogram() -> HdrHistogram:
    return HdrHistogram(HISTOGRAM_MIN_US, HISTOGRAM_MAX_US, HISTOGRAM_DIGITS)


@dataclass(frozen=True)
class Target:
    """Where the server listens."""

    host: str
    port: int

    @property
    def authority(self) -> str:
        """host:port as a URL and a Host header write it: an IPv6 address in brackets."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


@dataclass(frozen=True)
class EngineRequest:
    """One HTTP request that the engine sends again and again.

    `validate` must be picklable (a module-level function or a functools.partial of one): it
    gets the response body of a sample of the successful responses and returns a description
    of what is wrong, or None.
    """

    method: str
    path: str
    body: bytes | None = None
    expect_status: tuple[int, ...] = (200,)
    validate: Callable[[bytes], str | None] | None = None


@dataclass(frozen=True)
class LoadSpec:
    """How hard and how long: closed model (concurrency) unless `rate` (requests/s) is set.

    The names are RunConfig's: a run's spec for each level is `for_level(config, c)`.
    """

    concurrency: int
    duration_s: float
    warmup_s: float
    rate: float | None = None
    engine_procs: int | None = None
    timeout_s: float = 10.0
    client_cpus: tuple[int, ...] | None = None

    @classmethod
    def for_level(cls, config: RunConfig, concurrency: int) -> LoadSpec:
        """The spec of one concurrency level of a run: every field named as in RunConfig
        comes from it, so an engine option declared in both needs no copying."""
        values: dict[str, Any] = {"concurrency": concurrency}
        for spec_field in fields(cls):
            if spec_field.name in RunConfig.model_fields and spec_field.name != "concurrency":
                value = getattr(config, spec_field.name)
                values[spec_field.name] = tuple(value) if isinstance(value, list) else value
        return cls(**values)


def decode_histogram(measurement: Measurement) -> HdrHistogram:
    """The latency histogram (µs) of a measurement; empty when nothing succeeded."""
    if measurement.hdr is None:
        return new_histogram()
    return HdrHistogram.decode(measurement.hdr)


def latency_summary(hist: HdrHistogram) -> LatencyMs | None:
    """min, mean and percentiles in ms of a µs histogram; None when it is empty."""
    if hist.get_total_count() == 0:
        return None

    def ms(us: float) -> float:
        return round(us / 1000, 3)

    return LatencyMs(
        min=ms(hist.get_min_value()),
        mean=ms(hist.get_mean_value()),
        p50=ms(hist.get_value_at_percentile(50)),
        p90=ms(hist.get_value_at_percentile(90)),
        p99=ms(hist.get_value_at_percentile(99)),
        p999=ms(hist.get_value_at_percentile(99.9)),
        max=ms(hist.get_max_value()),
    )
