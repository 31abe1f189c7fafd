"""The events workload: task-run events over kept websockets, their lag until queryable, what
the server recorded of them, and the faults: a rejected event, a server that records nothing,
a server without /api/events/in."""

from __future__ import annotations

import io
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import httpx
import psutil
import pytest
from rich.console import Console

from bench.cells import runner
from bench.cells.runner import CellRun, run_cell
from bench.config.run import RunConfig
from bench.engine import LoadSpec, Scenario, Target, VirtualUser, measure_scenario
from bench.engine.scenario import MAX_PENDING_PROBES, PROBE_SPACING_S, ScenarioJob, ScenarioRun
from bench.observe.progress import Progress
from bench.results import ScenarioResult
from bench.servers.running import RunningServer
from bench.services.local import LocalProvider
from bench.workloads import events

if TYPE_CHECKING:
    from tests.conftest import RecordingProgress

MakeRun = Callable[..., CellRun]
MakeProgress = Callable[..., "RecordingProgress"]


def _run_of(probe: bool = True) -> ScenarioRun:
    scenario = events.scenario(RunConfig(), "unit")
    if not probe:
        scenario = replace(scenario, probe=None)
    spec = LoadSpec(concurrency=1, duration_s=1.0, warmup_s=0.0)
    window = (10**12, 2 * 10**12)  # monotonic ns: nothing here runs, only counts
    return ScenarioRun(
        ScenarioJob(Target("127.0.0.1", 9), scenario, spec, 1, None, 0, *window, "u")
    )


def test_traces_are_sampled_one_per_spacing_and_capped() -> None:
    run = _run_of()
    spacing = int(PROBE_SPACING_S * 1e9)
    t = 10**12
    assert run.trace("a", "run-a", t)
    assert not run.trace("b", "run-b", t + spacing // 2)  # too soon after a
    assert run.trace("c", "run-c", t + spacing)
    assert set(run.pending) == {"a", "c"}
    for i in range(100):
        run.trace(f"k{i}", None, t + (i + 2) * spacing)
    assert len(run.pending) == MAX_PENDING_PROBES
    assert not _run_of(probe=False).trace("a", None, t)  # no probe, no sample


def test_unresolved_are_the_items_older_than_the_longest_lag_found() -> None:
    run = _run_of()
    end = run.w_end
    run.pending = {"old": (end - 3 * 10**9, None), "young": (end - 10**8, None)}
    assert run._unresolved() == 2  # no lag found: every pending item counts
    run.lags.append(1_000_000)  # one found after 1 s
    assert run._unresolved() == 1  # "young" was sent 0.1 s before the end


def invalid_every_fourth(user: VirtualUser, params: Mapping[str, Any]) -> Any:
    """Three good events, then one the server cannot validate (it closes the socket)."""
    sent = user.state["sent"] = user.state.get("sent", 0) + 1
    if sent % 4:
        return events.send_event(user, params)
    return _send_invalid(user, params)


async def _send_invalid(user: VirtualUser, params: Mapping[str, Any]) -> None:
    ws = await events._events_socket(user, params["client"])
    await user.ws_exchange("send event", ws, ['{"event": "not a whole event"}'])


@pytest.mark.slow
def test_a_rejected_event_fails_its_step_by_close_code_and_the_next_one_reconnects(
    prefect_server: RunningServer,
) -> None:
    scenario = Scenario(
        "with a rejected event",
        invalid_every_fourth,
        events.scenario(RunConfig(), "rejected").params,
        prefect_server.api_path,
    )
    load = LoadSpec(concurrency=2, duration_s=1.5, warmup_s=0.3)
    m = measure_scenario(Target("127.0.0.1", prefect_server.port), scenario, load)
    steps = {s.name: s for s in m.steps}
    assert m.completed > 0 and m.failed.get("send event", 0) > 0, m
    kinds = steps["send event"].errors
    assert kinds and all(kind.startswith("closed ") for kind in kinds), kinds
    # every rejected event cost its socket: the next scenario opened a new one (but for each
    # user's first in the window, whose socket may have been opened in the warm-up)
    assert steps["open events socket"].requests >= m.failed["send event"] - load.concurrency
    assert any("the server closed it" in p for p in m.problems)


@pytest.mark.slow
def test_events_cell_measures_lag_and_the_server_records_every_event(
    cell_run: MakeRun, progress: MakeProgress
) -> None:
    run = cell_run(workload="events", rate=20.0, duration_s=3.0, warmup_s=0.5, concurrency=[2])
    result = run_cell(run, progress())
    assert result.status == "ok", result.error
    (s,) = result.scenarios
    assert s.name == "task-run event" and s.offered_rps == 20.0
    assert 0.8 * 20 <= s.per_s <= 1.1 * 20, s.per_s
    assert [step.name for step in s.steps] == ["open events socket", "events auth", "send event"]
    assert s.delivery["events"].sent == s.counts["events"] > s.completed
    assert s.delivery["events"].lost == 0 and s.delivery["task_runs"].lost == 0
    assert s.counts["task_runs"] == pytest.approx(s.counts["events"] / 3, abs=2)
    # lag: found through the API after at least one poll, well within the window
    assert s.lag_ms is not None and s.lag_probes and s.lag_probes > 5
    assert 0 < s.lag_ms.p50 <= s.lag_ms.p99 < 3000
    assert s.lag_hdr and s.lag_unresolved == 0


@pytest.mark.slow
def test_a_server_that_records_nothing_shows_every_event_lost_and_ends_on_time(
    cell_run: MakeRun,
    progress: MakeProgress,
    monkeypatch: pytest.MonkeyPatch,
    prefect_api_only: RunningServer,
) -> None:
    """Without its services the server takes the events but persists none: the verification
    run says so in one line; measured anyway, every event is lost and every sample unfound."""
    monkeypatch.setattr(runner, "DRAIN_TIMEOUT_S", 2.0)
    url = prefect_api_only.base_url
    result = run_cell(cell_run(workload="events", url=url), progress())
    assert result.status == "failed"
    assert "the server recorded 0 of 1 events" in (result.error or ""), result.error

    monkeypatch.setattr(runner, "_verify_scenario", lambda *args: None)
    run = cell_run(workload="events", url=url, duration_s=2.0, concurrency=[2])
    started = time.monotonic()
    result = run_cell(run, progress())
    elapsed = time.monotonic() - started
    assert result.status == "ok", result.error
    (s,) = result.scenarios
    assert s.completed > 0 and s.delivery["events"].recorded == 0
    assert s.delivery["events"].lost == s.delivery["events"].sent > 0
    assert s.lag_probes == 0 and s.lag_ms is None and s.lag_unresolved and s.lag_unresolved > 0
    assert elapsed < 30, elapsed  # warmup 1 s, window 2 s, drain 2 s, the engine's report


needs_redis = pytest.mark.skipif(
    bool(LocalProvider.unavailable_reason("redis")),
    reason=str(LocalProvider.unavailable_reason("redis")),
)


def _our_redis() -> psutil.Process:
    """The redis-server this test's cell started: a descendant of this process."""
    (found,) = [p for p in psutil.Process().children(recursive=True) if p.name() == "redis-server"]
    return found


class _PauseRedisMidWindow(Progress):
    """Stops the cell's Redis `after_s` into the measurement and resumes it once the result
    is in: the server then takes events it cannot pass on, as if its broker had hung."""

    def __init__(self, after_s: float) -> None:
        super().__init__(Console(file=io.StringIO()), "test")
        self.after_s = after_s
        self.paused: psutil.Process | None = None
        self.timer: threading.Timer | None = None
        self.measuring_s: float | None = None

    def _pause(self) -> None:
        self.paused = _our_redis()
        self.paused.suspend()

    def stage(self, text: str) -> None:
        if text.startswith("measuring "):
            self.measuring_s = time.monotonic()
            self.timer = threading.Timer(self.after_s, self._pause)
            self.timer.start()

    def measured_scenario(self, s: ScenarioResult) -> None:
        if self.measuring_s is not None:
            self.measuring_s = time.monotonic() - self.measuring_s
        self.resume()

    def resume(self) -> None:
        if self.timer is not None:
            self.timer.join()
        if self.paused is not None:
            self.paused.resume()
            self.paused = None


@pytest.mark.slow
@needs_redis
def test_a_broker_that_hangs_mid_run_shows_as_lost_events_and_the_run_ends_on_time(
    cell_run: MakeRun, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the verification's one event waits for the persister's 5 s flush
    monkeypatch.setattr(runner, "DRAIN_TIMEOUT_S", 8.0)
    progress = _PauseRedisMidWindow(after_s=0.5 + 1.0)  # warmup, then a second in
    run = cell_run(
        broker="redis",
        provider="local",
        workload="events",
        rate=20.0,
        duration_s=3.0,
        warmup_s=0.5,
        concurrency=[2],
    )
    try:
        result = run_cell(run, progress)
    finally:
        progress.resume()
    assert result.status == "ok", result.error
    (s,) = result.scenarios
    events_sent = s.delivery["events"]
    # recorded until the broker hung, lost after
    assert events_sent.recorded > 0 and events_sent.lost > 0, s.delivery
    assert s.lag_unresolved and s.lag_unresolved > 0
    # the window, the steps on the wire (at most their timeout, 10 s), the bounded drain and
    # the engine's report, not a hang
    assert progress.measuring_s is not None and progress.measuring_s < 0.5 + 3 + 10 + 8 + 8


def test_a_server_without_the_events_socket_fails_the_cell_naming_it(
    cell_run: MakeRun, progress: MakeProgress, health_only: str
) -> None:
    assert httpx.get(f"{health_only}/health").status_code == 200
    result = run_cell(cell_run(workload="events", url=health_only), progress())
    assert result.status == "failed"
    assert result.error == (
        "task-run event: open events socket: websocket /events/in refused: HTTP 404"
    )
    assert not result.scenarios
