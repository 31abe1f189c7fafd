"""Servers measured together (`run --server A --beside B`, issue 23): in each round every
server is started afresh, all are up at once, pinned to the server's CPUs, and each endpoint's
windows alternate between them (A B, then B A: the order turns at every window, so neither
server is always first). A's and B's windows of one endpoint in one round are seconds apart
and see the same machine, which drifts by more than the changes people look for between cells
run a minute apart; and each round is a new pair of processes, so what differs between two
processes of the same code (measured: as much as a 5% change) is in the rounds' spread, not
in every round alike.

`--duet` (two servers) measures them at the same moment instead: each server and one engine
process of its load pinned to half the usable CPUs, both windows of an endpoint in one engine
call (engine.measure_duet), so both see the same seconds of the machine on CPUs of their own.

Each server's rounds are written as its cell's repetitions (the first the warm-up, as a
repeated cell's), marked `together_with` the others, so `compare RUN --before A --after B`
pairs them by round as it pairs a matrix's. A round that fails fails for every server; what
the rounds before it measured is kept. `matrix --together` runs one round of a group per turn
(`--one-repetition`), going on from the rounds its servers have written.

`--repeat auto` runs rounds until the paired 95% interval of each pair's total rate (the first
server against each other one, as `compare --before/--after` tests it) is within ±`--target`%,
at least MIN_FOR_TARGET counted rounds, at most MAX_AUTO, within `--budget`; each round's
results record where the pairs stood (`repeat`: the widest pair's total interval). The single
endpoints stay as wide as they are: `compare` names those still undecided and the rounds they
would need. With `--fail-on` rules, `auto` waits for the verdict instead: until every figure
the rules gate is decided (broken, or clear of its threshold) for every pair.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

from bench import engine
from bench.cells.repeat import (
    MAX_AUTO,
    MIN_FOR_TARGET,
    MIN_REPETITIONS,
    WARMUP_REPETITION,
    decide,
    earlier_repetitions,
    repetition_path,
)
from bench.cells.runner import (
    CellRun,
    ServerTarget,
    Watch,
    Window,
    check_machine,
    keep_failure,
    new_result,
    start_target,
)
from bench.compare.change import measure_change
from bench.compare.gate import Rule, compare, figures_of, gate, unsure
from bench.compare.metrics import TOTAL
from bench.config.run import RunConfig
from bench.core.errors import BenchError, CellSkipped, ConfigError
from bench.core.failures import bug, one_line
from bench.observe.progress import Progress
from bench.observe.sampling import ResourceSampler
from bench.results import Cell, RepeatState, Result, result_path, utc_now, write_result
from bench.results.schema import INTERRUPTED, Status
from bench.servers.adapter import ServerSettings
from bench.workloads import WORKLOADS, ScenarioWorkload, get_workload
from bench.workloads.base import api_client


def refusal(
    config: RunConfig, names: Sequence[str], versioned: bool = False, flag: str = "--beside"
) -> str | None:
    """Why the servers `names` cannot be measured together with `config`, or None
    (`versioned`: some run a Prefect version of their own), said of `flag`."""
    if len(set(names)) < len(names):
        return f"{flag}: each server once ({', '.join(names)})"
    if isinstance(get_workload(config.workload), ScenarioWorkload):
        request_workloads = ", ".join(
            n for n, w in WORKLOADS.items() if not isinstance(w, ScenarioWorkload)
        )
        return f"{flag} measures request workloads ({request_workloads}), not {config.workload}"
    given = {
        "--url": config.url,
        "--cost": config.cost,
        "--profile": config.profile,
        "--soak": config.soak_s,
        "--rate-sweep": config.rate_sweep,
        "--preload": config.preload,
        "--prefect-version": versioned,
    }
    if clash := [option for option, value in given.items() if value]:
        return f"{flag} measures plain timed windows: not with {', '.join(clash)}"
    if config.repeat != "auto" and (not isinstance(config.repeat, int) or config.repeat < 2):
        return f"{flag} pairs rounds: give --repeat N (2 or more) or --repeat auto"
    return _duet_refusal(config, names) if config.duet else None


def _duet_refusal(config: RunConfig, names: Sequence[str]) -> str | None:
    """Why `--duet` cannot measure the servers `names` with `config`, or None."""
    if len(names) != 2:
        return f"--duet measures two servers at once, not {len(names)} ({', '.join(names)})"
    usable = len(os.sched_getaffinity(0))
    if usable < 2:
        return f"--duet gives each server CPUs of its own: this process may use {usable} CPU"
    given = {
        "--server-cpus": config.server_cpus,
        "--client-cpus": config.client_cpus,
        "--no-pin": config.no_pin,
        "--engine-procs": config.engine_procs not in (None, 1),
    }
    if clash := [option for option, value in given.items() if value]:
        return (
            "--duet pins each server and one load process to half the usable CPUs: "
            f"not with {', '.join(clash)}"
        )
    return None


def duet_cpus() -> list[list[int]]:
    """The CPUs of each side of a duet: the usable CPUs cut in two halves (one left over on an
    odd count, unused, so that both sides have as many)."""
    usable = sorted(os.sched_getaffinity(0))
    half = len(usable) // 2
    return [usable[:half], usable[half : 2 * half]]


def groups(cells: Sequence[Cell]) -> list[list[Cell]]:
    """The cells a `matrix --together` measures together: those of one db and broker, in the
    matrix's order."""
    found: dict[tuple[str, str], list[Cell]] = {}
    for cell in cells:
        found.setdefault((cell.db, cell.broker), []).append(cell)
    return list(found.values())


def prepare(runs: Sequence[CellRun], resuming: bool = False) -> list[list[Result]]:
    """Refuse what cannot run (ConfigError) and what would overwrite a result; returns each
    server's rounds already written in the run. Only a turn of a matrix's rounds (`resuming`,
    `--one-repetition`) goes on from rounds written before, which must then be as many for
    every server (a round is written for all or none); otherwise the servers' cells start a
    run of their own."""
    config = runs[0].config
    if reason := refusal(config, [r.cell.server for r in runs], any(r.cell.version for r in runs)):
        raise ConfigError(reason)
    if config.duet and (reason := crowded(runs)):
        raise ConfigError(reason)
    done = [earlier_repetitions(run.out_dir, run.run_id, run.cell) for run in runs]
    for run, written in zip(runs, done, strict=True):
        path = result_path(run.out_dir, run.run_id, run.cell)
        if written and not resuming:
            raise ConfigError(
                f"{path} exists: results are never overwritten (use another --run-id)"
            )
        if len(written) != len(done[0]):
            counts = ", ".join(f"{r.cell.name} {len(w)}" for r, w in zip(runs, done, strict=True))
            raise ConfigError(
                f"measured together, every server has a result of every round, but run "
                f"{run.run_id} has {counts}: not paired, not continued"
            )
        path.parent.mkdir(parents=True, exist_ok=True)
    return done


def crowded(runs: Sequence[CellRun]) -> str | None:
    """Why a duet of `runs` would crowd a side, or None: a server that runs more processes
    than its half of the CPUs has."""
    config = runs[0].config
    workers = ServerSettings.of(config).server_workers
    cpus = len(duet_cpus()[0])
    for run in runs:
        assert run.server is not None  # a --url is refused
        count = run.server.process_count(config.no_services, workers)
        if count > cpus:
            return (
                f"--duet gives each server {cpus} CPU(s) here, and {run.cell.server} runs "
                f"{count} processes (its API workers, its services): measure it without --duet"
            )
    return None


def by_default(runs: Sequence[CellRun], duet: RunConfig) -> list[CellRun]:
    """The design of servers measured together when none is asked for: a duet (`duet`: the
    runs' config with it) where one can measure them, two servers on CPUs of their own
    (measured the more precise: design notes); otherwise the runs as given, their windows
    alternating."""
    as_duet = [replace(run, config=duet) for run in runs]
    if _duet_refusal(duet, [run.cell.server for run in runs]) or crowded(as_duet):
        return list(runs)
    return as_duet


@dataclass
class _Side:
    """One server of the group: its cell, its target once started, its requests, and in a
    duet the CPUs it and its load have."""

    run: CellRun
    target: ServerTarget | None = None
    requests: tuple[engine.EngineRequest, ...] = ()
    sampler: ResourceSampler | None = None
    cpus: list[int] | None = None

    def started(self) -> ServerTarget:
        """Its target, once `_start_all` started it."""
        if self.target is None:
            raise RuntimeError(f"{self.run.cell.name} is measured before it was started")
        return self.target


def run_together(
    runs: Sequence[CellRun],
    progress: Progress,
    done: Sequence[Sequence[Result]] = (),
    deadline: float | None = None,
    one: bool = False,
    rules: Sequence[Rule] = (),
) -> Iterator[tuple[Result, Path]]:
    """Measure the servers of `runs` (one db and broker, one config) round by round, each round
    on servers started afresh for it, after the rounds `done` (each server's, as `prepare`
    returns them); yield each server's result of a round, written, as soon as the round ends.
    Stops when the rounds' state says so (the count, `auto`'s target or verdict, the budget), a
    round fails, or after `one` (a turn of a matrix's rounds). `deadline` (seconds since the
    epoch) ends the budget, default `--budget` from now; `rules` (`--fail-on`) make `--repeat
    auto` wait for every figure they gate.
    """
    config = runs[0].config
    auto = config.repeat == "auto"
    most = (MAX_AUTO if auto else int(config.repeat or 1)) + config.warmup_repetition
    budget_s = config.budget_min * 60 if deadline is None else deadline - time.time()
    ends = time.monotonic() + budget_s
    halves = duet_cpus() if config.duet else [None] * len(runs)
    sides = [_Side(run, cpus=cpus) for run, cpus in zip(runs, halves, strict=True)]
    cells = [run.cell.name for run in runs]
    done = done or [[] for _ in sides]
    earlier = done[0]
    counted = [[r for r in written if r.status == "ok" and not r.discarded] for written in done]
    warmup = config.warmup_repetition and all(r.interrupted for r in earlier)
    current: list[Result] = []
    if not earlier:
        progress.stage(
            "in a duet: " + ", ".join(f"{s.run.cell.server} on CPUs {s.cpus}" for s in sides)
            if config.duet
            else "their windows alternating, on the server's CPUs"
        )
    try:
        for k in range(len(earlier) + 1, len(earlier) + most + 1):
            began = time.monotonic()
            current = [_round_result(side.run, k, cells, warmup) for side in sides]
            with ExitStack() as servers:
                _start_all(k, sides, current, progress, servers)
                first = " (the warm-up)" if warmup else ""
                of = "at most " + str(most) if auto else str(most)
                progress.stage(f"round {k} of {of}{first}")
                _measure_round(k, sides, current, progress)
            warmup = False
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
                took = time.monotonic() - began
                state = paired_state(counted, config.target_pct, ends, took, rules)
                for result in current:
                    result.repeat = state.model_copy()
            yield from _written(runs, current)
            if one or (current[0].repeat and current[0].repeat.stopped):
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
    counted: Sequence[Sequence[Result]],
    target_pct: float,
    deadline: float,
    round_s: float,
    rules: Sequence[Rule] = (),
) -> RepeatState:
    """Where `--repeat auto` stands after a round: the first server paired with each other one
    by round, the widest 95% interval of a pair's total rate (half-width, % of the ratio), and
    whether to stop: the target reached (with `rules`, instead: every figure they gate
    decided, `undecided`), MAX_AUTO rounds, or no time for another round before `deadline`, a
    time.monotonic()."""
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
    if rules and n >= MIN_REPETITIONS:
        state.undecided = undecided(counted, rules)
    if rules and n >= MIN_FOR_TARGET and state.undecided == []:
        state.stopped = "decided"
    elif not rules and n >= MIN_FOR_TARGET and widest <= target_pct:
        state.stopped = "target"
    elif n >= MAX_AUTO:
        state.stopped = "limit"
    elif time.monotonic() + round_s > deadline:
        if n >= MIN_REPETITIONS:
            state.stopped = "budget"
        else:
            state.over_budget = True
    return state


def undecided(counted: Sequence[Sequence[Result]], rules: Sequence[Rule]) -> list[str]:
    """The figures `rules` gate that the rounds so far leave undecided, for each pair (the
    first server against each other one) tested as `compare RUN --before A --after B
    --fail-on` tests it: those it would call unsure (the interval holds a threshold, with
    about the rounds that would decide it), and those beyond a threshold but not
    significant."""
    found = []
    for other in counted[1:]:
        comparison = compare(counted[0], other, paired=True)
        gate(comparison.figures, rules)
        doubts = {id(u.figure): u.text() for u in unsure(comparison.figures, rules)}
        for f in comparison.figures:
            beyond = not f.broken and any(
                r.metric == f.metric and r.broken_by(f.change_pct) for r in rules
            )
            if id(f) in doubts or beyond:
                why = doubts.get(id(f), "beyond, not significant")
                found.append(f"{other[0].cell.server}: {f.name} {f.metric} ({why})")
    return found


def _round_result(run: CellRun, k: int, cells: list[str], warmup: bool) -> Result:
    """Round `k`'s result of a server started for it (`warmup`: the run's first round that
    was not interrupted, kept and not counted)."""
    result = new_result(run)
    result.repetition = k
    result.together_with = [c for c in cells if c != run.cell.name]
    if warmup:
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
            if side.cpus and side.target.server:
                side.target.server.pin(side.cpus)
                result.server.cpus = side.cpus
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
    """Every endpoint at every level once per server, each window kept in its server's result
    as it ends: the servers' windows one after another, their order turned at every window
    (and every round), or in a duet at once."""
    config = sides[0].run.config
    workload = get_workload(config.workload)
    turn = k
    for e, endpoint in enumerate(workload.endpoints):
        for concurrency in config.concurrency:
            windows = [
                Window(
                    config,
                    endpoint,
                    side.requests[e],
                    concurrency,
                    side.started(),
                    side.sampler,
                    progress,
                    label=f"{side.run.cell.server}: ",
                )
                for side in sides
            ]
            if config.duet:
                _measure_at_once(windows, sides, results, progress)
                continue
            order = _turn(turn, len(sides))
            turn += 1
            for i in order:
                with _naming(sides[i].run.cell.server):
                    ep = windows[i].measure(results[i])
                    results[i].endpoints.append(ep)
                    windows[i].done(ep)


def _measure_at_once(
    windows: list[Window], sides: list[_Side], results: list[Result], progress: Progress
) -> None:
    """A duet's window: each server loaded by one engine process on its own CPUs, both in one
    engine call (the same start, the same window), each watched as its own window is."""
    first = windows[0]
    names = " + ".join(side.run.cell.server for side in sides)
    shown = progress.measuring(f"{names}: {first.endpoint.name}", first.concurrency)
    with ExitStack() as watching:
        watches: list[Watch] = []
        for window, side, result in zip(windows, sides, results, strict=True):
            with _naming(side.run.cell.server):
                watches.append(watching.enter_context(window.watched(result)))
        parts = [
            (w.where, w.request, tuple(side.cpus or ()))
            for w, side in zip(windows, sides, strict=True)
        ]
        measured = engine.measure_duet(parts, first.spec(), shown)
        for watch, measurement in zip(watches, measured, strict=True):
            watch.measurement = measurement
    for window, watch, side, result in zip(windows, watches, sides, results, strict=True):
        assert watch.endpoint is not None
        with _naming(side.run.cell.server):
            result.endpoints.append(watch.endpoint)
            window.done(watch.endpoint)


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
