"""Servers measured together (`run --server A --beside B`, issue 23): in each round every
server is started afresh, all are up at once, pinned to the server's CPUs, and each endpoint's
windows alternate between them (A B, then B A: the order turns at every window, so neither
server is always first). A's and B's windows of one endpoint in one round are seconds apart
and see the same machine, which drifts by more than the changes people look for between cells
run a minute apart; and each round is a new pair of processes, so what differs between two
processes of the same code (measured: as much as a 5% change) is in the rounds' spread, not
in every round alike.

Each server's rounds are written as its cell's repetitions (the first the warm-up, as a
repeated cell's), marked `together_with` the others, so `compare RUN --before A --after B`
pairs them by round as it pairs a matrix's. A round that fails fails for every server; what
the rounds before it measured is kept.

`--repeat auto` runs rounds until the paired 95% interval of each pair's total rate (the first
server against each other one, as `compare --before/--after` tests it) is within ±`--target`%,
at least MIN_FOR_TARGET counted rounds, at most MAX_AUTO, within `--budget`; each round's
results record where the pairs stood (`repeat`: the widest pair's total interval). The single
endpoints stay as wide as they are: `compare` names those still undecided and the rounds they
would need.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

from bench.cells.repeat import (
    MAX_AUTO,
    MIN_FOR_TARGET,
    MIN_REPETITIONS,
    WARMUP_REPETITION,
    decide,
    repetition_path,
)
from bench.cells.runner import (
    CellRun,
    ServerTarget,
    Window,
    check_machine,
    keep_failure,
    new_result,
    start_target,
)
from bench.compare.metrics import TOTAL
from bench.core.errors import BenchError, CellSkipped, ConfigError
from bench.core.failures import bug, one_line
from bench.engine import EngineRequest
from bench.observe.progress import Progress
from bench.observe.sampling import ResourceSampler
from bench.results import RepeatState, Result, result_path, utc_now, write_result
from bench.results.schema import INTERRUPTED, Status
from bench.workloads import WORKLOADS, ScenarioWorkload, get_workload
from bench.workloads.base import api_client


def refusal(runs: Sequence[CellRun]) -> str | None:
    """Why these servers cannot be measured together with their run's settings, or None."""
    config = runs[0].config
    names = [run.cell.server for run in runs]
    if len(set(names)) < len(names):
        return f"--beside: each server once ({', '.join(names)})"
    if isinstance(get_workload(config.workload), ScenarioWorkload):
        request_workloads = ", ".join(
            n for n, w in WORKLOADS.items() if not isinstance(w, ScenarioWorkload)
        )
        return f"--beside measures request workloads ({request_workloads}), not {config.workload}"
    given = {
        "--url": config.url,
        "--cost": config.cost,
        "--profile": config.profile,
        "--soak": config.soak_s,
        "--rate-sweep": config.rate_sweep,
        "--preload": config.preload,
        "--prefect-version": any(run.cell.version for run in runs),
    }
    if clash := [flag for flag, value in given.items() if value]:
        return f"--beside measures plain timed windows: not with {', '.join(clash)}"
    if config.repeat != "auto" and (not isinstance(config.repeat, int) or config.repeat < 2):
        return "--beside pairs rounds: give --repeat N (2 or more) or --repeat auto"
    return None


def prepare(runs: Sequence[CellRun]) -> None:
    """Refuse what cannot run (ConfigError) and what would overwrite a result: measured
    together, the servers' cells start a run of their own (they are not resumed)."""
    if reason := refusal(runs):
        raise ConfigError(reason)
    for run in runs:
        path = result_path(run.out_dir, run.run_id, run.cell)
        if path.exists():
            raise ConfigError(
                f"{path} exists: results are never overwritten (use another --run-id)"
            )
        path.parent.mkdir(parents=True, exist_ok=True)


@dataclass
class _Side:
    """One server of the group: its cell, its target once started, its requests."""

    run: CellRun
    target: ServerTarget | None = None
    requests: tuple[EngineRequest, ...] = ()
    sampler: ResourceSampler | None = None


def run_together(runs: Sequence[CellRun], progress: Progress) -> Iterator[tuple[Result, Path]]:
    """Measure the servers of `runs` (one db and broker, one config) round by round, each round
    on servers started afresh for it; yield each server's result of a round, written, as soon
    as the round ends."""
    config = runs[0].config
    auto = config.repeat == "auto"
    rounds = (MAX_AUTO if auto else int(config.repeat or 1)) + config.warmup_repetition
    deadline = time.monotonic() + config.budget_min * 60
    sides = [_Side(run) for run in runs]
    cells = [run.cell.name for run in runs]
    counted: list[list[Result]] = [[] for _ in sides]
    current: list[Result] = []
    try:
        for k in range(1, rounds + 1):
            began = time.monotonic()
            current = [_round_result(side.run, k, cells) for side in sides]
            with ExitStack() as servers:
                _start_all(k, sides, current, progress, servers)
                warmup = " (the warm-up)" if current[0].discarded else ""
                of = "at most " + str(rounds) if auto else str(rounds)
                progress.stage(f"round {k} of {of}{warmup}")
                _measure_round(k, sides, current, progress)
            for i, result in enumerate(current):
                result.status = "ok"
                result.finished_at = utc_now()
                if not result.discarded:
                    counted[i].append(result)
                if not auto:
                    result.repeat = decide(
                        config.repeat or 1, config.target_pct, counted[i], None, 0.0
                    )
            if auto:
                state = paired_state(counted, config.target_pct, deadline, time.monotonic() - began)
                for result in current:
                    result.repeat = state.model_copy()
            yield from _written(runs, current)
            if auto and state.stopped:
                return
    except CellSkipped as exc:
        _ended(current, "skipped", one_line(str(exc)))
        yield from _written(runs, current)
    except BenchError as exc:
        _ended(current, "failed", one_line(str(exc)))
        keep_failure(runs[0], progress, current[0], exc)
        yield from _written(runs, current)
    except KeyboardInterrupt:
        _ended(current, "failed", INTERRUPTED)
        yield from _written(runs, current)
    except Exception as exc:
        line = bug(exc)
        _ended(current, "failed", f"{line} ({keep_failure(runs[0], progress, current[0], exc)})")
        yield from _written(runs, current)


def paired_state(
    counted: Sequence[Sequence[Result]], target_pct: float, deadline: float, round_s: float
) -> RepeatState:
    """Where `--repeat auto` stands after a round: the first server paired with each other one
    by round, the widest 95% interval of a pair's total rate (half-width, % of the ratio), and
    whether to stop (the target reached, MAX_AUTO rounds, or no time for another round before
    `deadline`, a time.monotonic())."""
    from bench.compare.change import measure_change
    from bench.compare.gate import figures_of

    n = len(counted[0])
    widest, name = math.inf, None
    for other in counted[1:]:
        pairs = figures_of("pair", counted[0], other, paired=True)
        for figure in [f for f in pairs if f.name == TOTAL and f.metric == "rps"]:
            measure_change(figure)
            half = (
                50 * (figure.high - figure.low) / figure.ratio
                if figure.low is not None and figure.high is not None
                else math.inf
            )
            if name is None or not half <= widest:
                widest, name = half, f"total rps, {other[0].cell.server}"
    state = RepeatState(
        counted=n,
        interval_pct=round(widest, 2) if math.isfinite(widest) else None,
        widest=name,
        widest_pct=round(widest, 2) if math.isfinite(widest) else None,
    )
    if n >= MIN_FOR_TARGET and widest <= target_pct:
        state.stopped = "target"
    elif n >= MAX_AUTO:
        state.stopped = "limit"
    elif time.monotonic() + round_s > deadline:
        if n >= MIN_REPETITIONS:
            state.stopped = "budget"
        else:
            state.over_budget = True
    return state


def _round_result(run: CellRun, k: int, cells: list[str]) -> Result:
    """Round `k`'s result of a server started for it."""
    result = new_result(run)
    result.repetition = k
    result.together_with = [c for c in cells if c != run.cell.name]
    if k == 1 and run.config.warmup_repetition:
        result.discarded = WARMUP_REPETITION
    return result


def _start_all(
    k: int, sides: list[_Side], results: list[Result], progress: Progress, stack: ExitStack
) -> None:
    """Check the machine once for round `k`'s servers, start each with what its cell needs
    (the order turned every round, as the windows'), make and verify each server's fixtures
    (every server the same)."""
    check_machine(progress, results[0])
    workload = get_workload(sides[0].run.config.workload)
    for i in _turn(k, len(sides)):
        side, result = sides[i], results[i]
        result.machine, result.noise, result.noisy = (
            results[0].machine,
            [*results[0].noise],
            results[0].noisy,
        )
        assert side.run.server is not None  # a --url is refused
        with _naming(side.run.cell.server):
            side.target = start_target(side.run, side.run.server, progress, result, stack)
            client = stack.enter_context(api_client(side.target.base_url))
            progress.stage(f"{side.run.cell.server}: creating fixtures and verifying every request")
            fixtures = workload.create_fixtures(client)
            workload.verify(client, fixtures)
        side.requests = tuple(e.resolve(side.target.api_path, fixtures) for e in workload.endpoints)
        server = side.target.server
        side.sampler = ResourceSampler(server.tree) if server else None


def _turn(turn: int, count: int) -> Iterable[int]:
    """The servers' order at `turn`: as given when odd, reversed when even."""
    return range(count) if turn % 2 else reversed(range(count))


def _measure_round(k: int, sides: list[_Side], results: list[Result], progress: Progress) -> None:
    """Every endpoint at every level once per server, the order of the servers turned at every
    window (and every round), each window kept in its server's result as it ends."""
    config = sides[0].run.config
    workload = get_workload(config.workload)
    turn = k
    for e, endpoint in enumerate(workload.endpoints):
        for concurrency in config.concurrency:
            order = _turn(turn, len(sides))
            turn += 1
            for i in order:
                side, result = sides[i], results[i]
                assert side.target is not None
                window = Window(
                    config,
                    endpoint,
                    side.requests[e],
                    concurrency,
                    side.target,
                    side.sampler,
                    progress,
                    label=f"{side.run.cell.server}: ",
                )
                with _naming(side.run.cell.server):
                    ep = window.measure(result)
                    result.endpoints.append(ep)
                    window.done(ep)


@contextmanager
def _naming(server: str) -> Iterator[None]:
    """A BenchError raised in the block names `server` first: a round's error is every
    server's, so it says whose it was."""
    try:
        yield
    except BenchError as exc:
        raise type(exc)(f"{server}: {exc}", exc.details) from exc


def _ended(results: list[Result], status: Status, error: str) -> None:
    for result in results:
        result.status, result.error = status, error
        result.finished_at = utc_now()
        result.repeat = None


def _written(runs: Sequence[CellRun], results: list[Result]) -> Iterator[tuple[Result, Path]]:
    for run, result in zip(runs, results, strict=True):
        path = repetition_path(run.out_dir, run.run_id, run.cell, result.repetition or 1)
        write_result(result, path)
        yield result, path
