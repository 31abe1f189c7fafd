"""The options of a capacity sweep: `--rate-sweep START:STOP:STEP` with `--slo 'p99<50ms'`.

Each endpoint is measured in the open model at each rate of the sweep, lowest first; its knee
is the highest offered rate at which the server still held the rate (achieved >= 95% of it,
<= 1% of sends late) and kept the latency objective, every lower rate having kept it too. The
sweep of an endpoint stops after a few misses in a row (bench.compare.capacity).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

MAX_RATES = 100
DEFAULT_SLO = "p99<100ms"

_SWEEP = re.compile(r"^\s*(\d+(?:\.\d+)?):(\d+(?:\.\d+)?):(\d+(?:\.\d+)?)\s*$")
_SLO = re.compile(r"^\s*(p50|p90|p99|p999)\s*<\s*(\d+(?:\.\d+)?)\s*(ms|s)\s*$")


def sweep_rates(text: str) -> list[float]:
    """START:STOP:STEP → [START, START+STEP, ..., <= STOP]; ValueError saying what is wrong."""
    match = _SWEEP.match(text)
    if not match:
        raise ValueError(f"expected START:STOP:STEP in requests/s, e.g. 100:1000:100, got {text!r}")
    start, stop, step = (float(g) for g in match.groups())
    if start <= 0 or step <= 0 or stop < start:
        raise ValueError(f"{text!r}: START and STEP must be above 0 and STOP at least START")
    count = int((stop - start) / step + 1e-9) + 1
    if count > MAX_RATES:
        raise ValueError(f"{text!r} is {count} rates, more than {MAX_RATES}: take a larger STEP")
    return [round(start + k * step, 6) for k in range(count)]


@dataclass(frozen=True)
class Objective:
    """A latency objective: `percentile` (a LatencyMs field) below `limit_ms`."""

    percentile: str
    limit_ms: float

    @property
    def text(self) -> str:
        return f"{self.percentile}<{self.limit_ms:g}ms"

    def kept_by(self, latency: object | None) -> bool:
        """Whether `latency` (a LatencyMs) is under the limit at the percentile."""
        return latency is not None and getattr(latency, self.percentile) < self.limit_ms


def parse_slo(text: str) -> Objective:
    """'p99<50ms' → Objective('p99', 50.0); ValueError with an example otherwise."""
    match = _SLO.match(text)
    if not match:
        raise ValueError(
            "expected PERCENTILE<LIMIT with PERCENTILE p50, p90, p99 or p999 and LIMIT in ms or "
            f"s, e.g. p99<50ms, got {text!r}"
        )
    percentile, limit, unit = match.groups()
    return Objective(percentile, float(limit) * (1000 if unit == "s" else 1))
