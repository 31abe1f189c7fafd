"""What the engine is given (a target, a request, a load spec); what it gives back is
`bench.results.Measurement`, the shape the result stores."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from hdrh.histogram import HdrHistogram

from bench.config.run import RunConfig
from bench.results import Measurement

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

    A run's spec for each level is `for_level(config, c)`.
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
        """The spec of one concurrency level of a run."""
        return cls(
            concurrency=concurrency,
            duration_s=config.duration_s,
            warmup_s=config.warmup_s,
            rate=config.rate,
            engine_procs=config.engine_procs,
            client_cpus=tuple(config.client_cpus) if config.client_cpus else None,
        )


def decode_histogram(measurement: Measurement) -> HdrHistogram:
    """The latency histogram (µs) of a measurement; empty when nothing succeeded."""
    if measurement.hdr is None:
        return new_histogram()
    return HdrHistogram.decode(measurement.hdr)
