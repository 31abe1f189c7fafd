"""An endpoint's cost: its request sent again and again, one at a time on one connection, in
blocks with callgrind's collection on only inside each; the first block a warm-up.

The requests are the engine's (`EngineRequest`, fixtures filled in); a `{unique}` token in a
body becomes `cost-<n>`, n counting from 1 in each endpoint, so two runs send the same bytes.
Each answer is checked as the workload checks it: a block with a wrong answer has counted
something else than the endpoint's work, and fails the cell.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from bench.core.errors import VerificationError
from bench.cost.callgrind import EVENT, Collector, CostError
from bench.engine.model import UNIQUE_TOKEN, EngineRequest
from bench.results.schema import Cost

TOKEN_PREFIX = b"cost-"
REQUEST_TIMEOUT_S = 120.0  # a request under callgrind runs 50-100x slower than natively


@dataclass(frozen=True)
class Blocks:
    """How an endpoint's cost is counted: `counted` blocks of `size` requests after one
    warm-up block."""

    size: int
    counted: int


@dataclass
class Counted:
    """What the blocks of one endpoint counted."""

    name: str
    totals: list[int] = field(default_factory=list)  # each counted block's instructions
    dumps: list[Path] = field(default_factory=list)  # their dump files
    requests: int = 0  # sent, the warm-up's included
    seconds: float = 0.0  # the counted blocks' wall time
    latencies_s: list[float] = field(default_factory=list)  # the counted requests'

    def cost(self, size: int, kept: list[str], idle_per_s: float | None = None) -> Cost:
        """The endpoint's figures: instructions per request, mean over the counted blocks;
        with the server's `idle_per_s`, the share of them its idle work likely is."""
        per_block = [total / size for total in self.totals]
        mean = statistics.fmean(per_block)
        idle_pct = None
        if idle_per_s is not None:
            idle_pct = idle_per_s * self.seconds / sum(self.totals) * 100
        return Cost(
            event=EVENT,
            per_request=mean,
            spread_pct=(max(per_block) - min(per_block)) / mean * 100,
            blocks=len(per_block),
            requests_per_block=size,
            block_per_request=[round(b, 1) for b in per_block],
            idle_per_s=idle_per_s,
            idle_pct=idle_pct,
            callgrind=kept,
        )


def count(
    client: httpx.Client,
    collector: Collector,
    name: str,
    request: EngineRequest,
    blocks: Blocks,
    alive: Callable[[], None],
) -> Counted:
    """`request` sent in `blocks` through `client` (one connection to the server), collection
    on only inside each block; `alive()` raises when the server died. VerificationError when an
    answer is not what the endpoint promises."""
    send = _sender(client, name, request)
    counted = Counted(name)
    for block in range(blocks.counted + 1):
        alive()
        with _dead_first(alive, name):
            collector.on()
            started = time.monotonic()
            latencies = [send() for _ in range(blocks.size)]
            took = time.monotonic() - started
            collector.off()
            total, path = collector.dump()
        counted.requests += blocks.size
        if block == 0:  # the warm-up: caches, lazy imports, the first of everything
            path.unlink(missing_ok=True)
            continue
        counted.totals.append(total)
        counted.dumps.append(path)
        counted.seconds += took
        counted.latencies_s += latencies
    return counted


def idle(collector: Collector, seconds: float) -> float:
    """The instructions per second the server executes with no request to serve (its timers,
    its event loop's idle polling): collection on for `seconds` while nothing is sent."""
    collector.on()
    started = time.monotonic()
    time.sleep(seconds)
    collector.off()
    took = time.monotonic() - started
    total, path = collector.dump(allow_zero=True)
    path.unlink(missing_ok=True)
    return total / took


@contextmanager
def _dead_first(alive: Callable[[], None], name: str) -> Iterator[None]:
    """A request or a callgrind command that failed because the server died fails the cell
    with the server's cause (`alive()` raises it, from its log); otherwise with its own."""
    try:
        yield
    except (httpx.HTTPError, CostError) as exc:
        alive()
        if isinstance(exc, CostError):
            raise
        raise CostError(f"{name}: the request failed while its cost was counted: {exc}") from exc


def _sender(client: httpx.Client, name: str, request: EngineRequest) -> Callable[[], float]:
    """A function that sends `request` once, checks its answer and returns its latency (s)."""
    body = request.body
    numbers = iter(range(1, 1 << 62))
    headers = {"Content-Type": "application/json"} if body is not None else {}

    def send() -> float:
        content = body
        if content is not None and UNIQUE_TOKEN in content:
            content = content.replace(UNIQUE_TOKEN, TOKEN_PREFIX + b"%d" % next(numbers))
        started = time.perf_counter()
        response = client.request(request.method, request.path, content=content, headers=headers)
        took = time.perf_counter() - started
        if response.status_code not in request.expect_status:
            raise VerificationError(
                f"{name} answered {response.status_code} while its cost was counted: "
                f"{response.text[:200]}"
            )
        if request.validate is not None and (problem := request.validate(response.content)):
            raise VerificationError(f"{name} while its cost was counted: {problem}")
        return took

    return send
