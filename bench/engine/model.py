"""What the engine is given (a target, a request, a load spec) and what it gives back."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from hdrh.histogram import HdrHistogram

from bench.results import LatencyMs

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
    """Where the server listens (loopback only)."""

    host: str
    port: int


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
    """How hard and how long: closed model (concurrency) unless `rate` (requests/s) is set."""

    concurrency: int
    duration_s: float
    warmup_s: float
    rate: float | None = None
    procs: int | None = None
    timeout_s: float = 10.0
    cpus: tuple[int, ...] | None = None


@dataclass
class Measurement:
    """What one measurement window saw. Latencies are of successful responses, in µs."""

    requests: int
    errors: dict[str, int]
    duration_s: float
    histogram: HdrHistogram = field(default_factory=new_histogram)
    client_cpu_s: float = 0.0
    client_saturated: bool = False
    offered_rps: float | None = None
    late_sends: int | None = None
    # Open model: whether the offered rate was held (None in the closed model). Sends that wait
    # for a free connection are the server's doing (every connection is waiting on it): they
    # make the rate not held but not the client "saturated". That flag is for a load generator
    # that was the limit: CPU-bound, or late with sends while a connection was free.
    rate_held: bool | None = None
    # Added by the engine: the first few distinct problems seen (failed validations, unexpected
    # statuses with the start of their body, connection errors), for the runner to report.
    problems: list[str] = field(default_factory=list)
    # How many engine processes produced this measurement.
    procs: int = 1
    # Successful responses per second in each equal slice (~0.5 s) of the window.
    slice_rps: list[float] | None = None

    @property
    def successes(self) -> int:
        return self.requests - sum(self.errors.values())

    @property
    def rps(self) -> float:
        return self.successes / self.duration_s if self.duration_s > 0 else 0.0

    def latency_ms(self) -> LatencyMs | None:
        h = self.histogram
        if h.get_total_count() == 0:
            return None

        def ms(us: float) -> float:
            return round(us / 1000, 3)

        return LatencyMs(
            min=ms(h.get_min_value()),
            mean=ms(h.get_mean_value()),
            p50=ms(h.get_value_at_percentile(50)),
            p90=ms(h.get_value_at_percentile(90)),
            p99=ms(h.get_value_at_percentile(99)),
            p999=ms(h.get_value_at_percentile(99.9)),
            max=ms(h.get_max_value()),
        )

    def encoded_histogram(self) -> str | None:
        if self.histogram.get_total_count() == 0:
            return None
        return self.histogram.encode().decode("ascii")
