"""The report's section on scenario workloads (flow-runs, events, workers, …): for each
scenario and level, the completed scenarios per second of every cell side by side, their
durations, failures by step, what the server lost of what was sent, the lag of what it made
queryable (events), each step's latency, the delays the scenarios observed and what the server's
own services did (workers), and the speedup over python.

Its columns put the brokers of one server and database next to each other (then the servers,
reference first): these workloads go through the broker, and the servers have the speedup
table."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TypeVar

from bench.config.run import MIXED_WORKLOAD
from bench.report import compare
from bench.report.aggregate import (
    Pair,
    display_order,
    is_reference,
    reference_version,
)
from bench.report.charts import scenario_charts
from bench.report.document import Column, Section, Table, Value
from bench.report.numbers import LOWER_BOUND, MISSING, fmt_errors, fmt_ms, fmt_num
from bench.results import Result, ScenarioResult, StepResult, Timing

Key = tuple[str, int]  # (scenario name, concurrency)
# What a scenario has several of by name, each given a row per level: its steps, its timings.
Part = TypeVar("Part", StepResult, Timing)

# Workloads whose scenario is one item of a kind: the unit of their completed scenarios/s.
RATE_UNITS = {"events": "events/s"}
LAG_NOTE = (
    "Event lag: of a sample of the events sent, the time from sending one until the server "
    "returned it from POST /events/filter and its task run from POST /task_runs/filter (the "
    "broker, the event persister and the task-run recorder all passed it); probes: the sampled "
    "events found in the window."
)
UNRESOLVED_NOTE = (
    "unresolved: sampled events not found when the window ended though they had waited longer "
    "than the longest lag found: their lag is longer still, or they were lost. The p50 / p99 "
    "leave them out: where there are unresolved events they are lower bounds."
)
DELAYS_NOTE = (
    "Delays: scheduled → claimed: from a flow run's scheduled start to the worker's Pending "
    "proposal being accepted (0 when claimed ahead through the prefetch); scheduled → running: "
    "to its Running state being accepted (the server holds early runs until their time)."
)
SERVER_SIDE_NOTE = (
    "What the server's services did: due: runs of the level's deployments scheduled to start "
    "before it ended; unclaimed: of those due more than a poll interval and a second before the "
    "end, those still Scheduled at the end; late: those the server's late-runs service marked "
    "Late."
)

MIXED_NOTE = (
    "mixed: a level's writers (flow runs, beside its readers) and readers (the ui workload's "
    "reads one after another; each is a step) shared one window and one server: each has its "
    "own users and counts, the server's CPU is the window's."
)


def _unit(results: list[Result]) -> str:
    """The rate's unit as a title's suffix, " (events/s)", when every result's workload says
    what one scenario is, and the same; else nothing."""
    units = {RATE_UNITS.get(r.config.workload) for r in results}
    return f" ({unit})" if len(units) == 1 and (unit := units.pop()) else ""


def _by_key(result: Result) -> dict[Key, ScenarioResult]:
    found: dict[Key, ScenarioResult] = {}
    for s in result.scenarios:
        found.setdefault((s.name, s.concurrency), s)
    return found


def _keys(results: list[Result]) -> list[Key]:
    """Every (scenario, concurrency) measured: scenarios as first seen, concurrency rising."""
    levels: dict[str, set[int]] = {}
    for r in results:
        for s in r.scenarios:
            levels.setdefault(s.name, set()).add(s.concurrency)
    return [(name, c) for name, cs in levels.items() for c in sorted(cs)]


def _per_s(s: ScenarioResult | None) -> Value:
    if s is None:
        return Value(MISSING)
    bound = LOWER_BOUND if s.client_saturated else ""
    return Value(bound + fmt_num(s.per_s), number=s.per_s)


def _durations(s: ScenarioResult | None) -> Value:
    if s is None or s.duration_ms is None:
        return Value(MISSING)
    return Value(f"{fmt_ms(s.duration_ms.p50)} / {fmt_ms(s.duration_ms.p99)}")


def _failed(s: ScenarioResult | None) -> Value:
    if s is None:
        return Value(MISSING)
    text = fmt_errors(s.failed)
    return Value(text, tone="muted" if text == "0" else "bad")


def _lost(s: ScenarioResult | None) -> Value:
    """What the server did not record, of what was sent: "0 / 90 task runs"."""
    if s is None or not s.delivery:
        return Value(MISSING)
    parts = [f"{d.lost} / {d.sent} {kind.replace('_', ' ')}" for kind, d in s.delivery.items()]
    lost = sum(d.lost for d in s.delivery.values())
    return Value(", ".join(parts), tone="bad" if lost else "muted")


def _probed(s: ScenarioResult) -> bool:
    """Whether the scenario measured lag (its probe counts are then given, 0 included)."""
    return s.lag_ms is not None or s.lag_probes is not None or s.lag_unresolved is not None


def _lag(s: ScenarioResult | None) -> Value:
    """Lag p50 / p99 with its probe count: "812.00 / 1900.00 (48 probes, 2 unresolved)"."""
    if s is None or not _probed(s):
        return Value(MISSING)
    lag = s.lag_ms
    text = MISSING if lag is None else f"{fmt_ms(lag.p50)} / {fmt_ms(lag.p99)}"
    counts = []
    if s.lag_probes is not None:
        counts.append(f"{s.lag_probes} probe{'' if s.lag_probes == 1 else 's'}")
    if s.lag_unresolved:
        counts.append(f"{s.lag_unresolved} unresolved")
    if counts:
        text += f" ({', '.join(counts)})"
    return Value(
        text, number=None if lag is None else lag.p50, tone="bad" if s.lag_unresolved else ""
    )


def _backends(s: ScenarioResult | None) -> Value:
    """Database transactions and Redis commands per completed flow run, where measured."""
    figures = (s.backend_per_flow_run or {}) if s is not None else {}
    parts = []
    if (xact := figures.get("postgres_xact_per_item")) is not None:
        parts.append(f"{fmt_num(xact)} pg xact")
    if (commands := figures.get("redis_commands_per_item")) is not None:
        parts.append(f"{fmt_num(commands)} redis cmd")
    return Value(", ".join(parts) or MISSING)


def _step(step: StepResult | None) -> Value:
    if step is None or step.latency_ms is None:
        return Value(MISSING)
    text = f"{fmt_ms(step.latency_ms.p50)} / {fmt_ms(step.latency_ms.p99)}"
    if errors := sum(step.errors.values()):
        text += f" ({errors} failed)"
    return Value(text, number=step.latency_ms.p50, tone="bad" if errors else "")


def _timing(timing: Timing | None) -> Value:
    """A delay's p50 / p99, as a step's latency is shown."""
    if timing is None or timing.latency_ms is None:
        return Value(MISSING)
    return Value(
        f"{fmt_ms(timing.latency_ms.p50)} / {fmt_ms(timing.latency_ms.p99)}",
        number=timing.latency_ms.p50,
    )


def _label(result: Result, multi_run: bool) -> str:
    return result.cell.name + (f" ({result.run_id})" if multi_run else "")


def _table(
    title: str,
    results: list[Result],
    labels: list[str],
    keys: list[Key],
    value: Callable[[ScenarioResult | None], Value],
) -> Table:
    table = Table(
        title,
        [Column("scenario"), Column("c", numeric=True)] + [Column(x, numeric=True) for x in labels],
        grouped=True,
    )
    found = [_by_key(r) for r in results]
    for key in keys:
        table.rows.append([Value(key[0]), Value(str(key[1]))] + [value(f.get(key)) for f in found])
    return table


def _parts_table(
    title: str,
    header: str,
    found: list[dict[Key, ScenarioResult]],
    labels: list[str],
    keys: list[Key],
    parts: Callable[[ScenarioResult], Sequence[Part]],
    value: Callable[[Part | None], Value],
) -> Table:
    """One row per part (by name, as first seen) and level of the scenarios `keys` name."""
    table = Table(
        title,
        [Column(header), Column("c", numeric=True)] + [Column(x, numeric=True) for x in labels],
        grouped=True,
    )
    wanted = set(keys)
    names: dict[str, None] = {}
    for f in found:
        for key, s in f.items():
            if key in wanted:
                names.update(dict.fromkeys(p.name for p in parts(s)))
    for part in names:
        for key in keys:
            row = [Value(part), Value(str(key[1]))]
            for f in found:
                s = f.get(key)
                row.append(
                    value(next((p for p in parts(s) if p.name == part), None) if s else None)
                )
            table.rows.append(row)
    return table


def _server_side(s: ScenarioResult | None, figure: str) -> Value:
    if s is None or s.server_side is None or (count := s.server_side.get(figure)) is None:
        return Value(MISSING)
    return Value(str(count), number=count)


def _server_side_table(
    found: list[dict[Key, ScenarioResult]], labels: list[str], keys: list[Key]
) -> Table:
    """What the server's services did: a row per scenario, level and figure read back (a level
    no result read anything back for has no rows)."""
    table = Table(
        "What the server's services did",
        [Column("scenario"), Column("c", numeric=True), Column("what")]
        + [Column(x, numeric=True) for x in labels],
        grouped=True,
    )
    for key in keys:
        read = [
            s.server_side
            for f in found
            if (s := f.get(key)) is not None and s.server_side is not None
        ]
        for figure in dict.fromkeys(k for side in read for k in side):
            table.rows.append(
                [Value(key[0]), Value(str(key[1])), Value(figure)]
                + [_server_side(f.get(key), figure) for f in found]
            )
    return table


def _speedup_pairs(results: list[Result]) -> list[Pair]:
    """Each other server's (or newer Prefect version's) result with scenarios and python's of
    the same run, db and broker."""
    version = reference_version(results)
    refs = {
        (r.run_id, r.cell.db, r.cell.broker): r
        for r in results
        if is_reference(r, version) and r.scenarios
    }
    pairs = []
    for r in results:
        if is_reference(r, version) or not r.scenarios:
            continue
        ref = refs.get((r.run_id, r.cell.db, r.cell.broker))
        if ref is not None:
            pairs.append(Pair(other=r, base=ref))
    return pairs


def _speedup_table(
    results: list[Result], pairs: list[Pair], keys: list[Key], flags: compare.RatioFlags
) -> Table | None:
    """Each other server's completed scenarios per second over python's, for `pairs`; "~"
    where within the noise of their slices."""
    if not pairs:
        return None
    base = pairs[0].base.cell.label
    table = Table(
        f"Scenarios per second over {base}{_unit(results)}",
        [Column("scenario"), Column("c", numeric=True)]
        + [Column(f"{p.other.cell.name} vs {p.base.cell.label}", numeric=True) for p in pairs],
        grouped=True,
    )
    for key in keys:
        row = [Value(key[0]), Value(str(key[1]))]
        for pair in pairs:
            b, o = _by_key(pair.base).get(key), _by_key(pair.other).get(key)
            row.append(
                Value(MISSING) if b is None or o is None else compare.change_value([b], [o], flags)
            )
        table.rows.append(row)
    return table


def scenario_section(
    results: list[Result], multi_run: bool, across_machines: bool
) -> Section | None:
    """The Scenarios section, or None when no result has scenarios; its speedups only of
    results of one machine unless `across_machines` (`compare.on_one_machine`)."""
    measured = display_order([r for r in results if r.scenarios], brokers_together=True)
    if not measured:
        return None
    keys = _keys(measured)
    labels = [_label(r, multi_run) for r in measured]
    section = Section("Scenarios")
    section.paragraphs.append(
        "Each virtual user runs the scenario again and again (closed model: --concurrency users; "
        "open model: --rate starts per second). Completed/s counts the scenarios that finished in "
        "the window; a scenario whose step failed is counted by that step, its later steps not "
        "sent. Lost: of what the scenarios sent over the whole measurement, what the server had "
        "not recorded when read back through its API after the window."
    )
    section.tables += [
        _table(f"Completed scenarios per second{_unit(measured)}", measured, labels, keys, _per_s),
        _table("Scenario duration p50 / p99 (ms)", measured, labels, keys, _durations),
        _table("Failed scenarios, by the step that failed", measured, labels, keys, _failed),
        _table("Lost / sent", measured, labels, keys, _lost),
    ]
    probed = [s for r in measured for s in r.scenarios if _probed(s)]
    if probed:
        section.tables.append(
            _table("Event lag p50 / p99 (ms), sent to queryable", measured, labels, keys, _lag)
        )
        section.notes.append(LAG_NOTE)
        if any(s.lag_unresolved for s in probed):
            section.notes.append(UNRESOLVED_NOTE)
    if any(s.backend_per_flow_run for r in measured for s in r.scenarios):
        section.tables.append(
            _table("Backend work per flow run", measured, labels, keys, _backends)
        )
        section.notes.append(
            "Backend work per flow run: PostgreSQL transactions (pg_stat_database, up to ~1 s "
            "late per busy connection) and Redis commands (INFO commandstats) over the "
            "measurement and the wait for the server to record it, divided by the flow runs "
            "completed; the server's background work is included."
        )
    found = [_by_key(r) for r in measured]
    for name in dict.fromkeys(n for n, _ in keys):
        named = [k for k in keys if k[0] == name]
        section.tables.append(
            _parts_table(
                f"{name}: step latency p50 / p99 (ms)",
                "step",
                found,
                labels,
                named,
                lambda s: s.steps,
                _step,
            )
        )
        if any(f[k].timings for f in found for k in named if k in f):
            section.tables.append(
                _parts_table(
                    f"{name}: delays p50 / p99 (ms)",
                    "delay",
                    found,
                    labels,
                    named,
                    lambda s: s.timings,
                    _timing,
                )
            )
    if any(s.timings for r in measured for s in r.scenarios):
        section.notes.append(DELAYS_NOTE)
    if any(r.config.workload == MIXED_WORKLOAD for r in measured):
        section.notes.append(MIXED_NOTE)
    if any(s.server_side is not None for r in measured for s in r.scenarios):
        section.tables.append(_server_side_table(found, labels, keys))
        section.notes.append(SERVER_SIDE_NOTE)
    section.charts += scenario_charts(measured, labels, _unit(measured).strip(" ()") or "per s")
    flags = compare.RatioFlags()
    pairs, machine_notes = compare.on_one_machine(_speedup_pairs(measured), across_machines)
    if (speedup := _speedup_table(measured, pairs, keys, flags)) is not None:
        section.tables.append(speedup)
    section.notes += machine_notes
    if any(s.client_saturated for r in measured for s in r.scenarios):
        section.notes.append(
            f"{LOWER_BOUND}: the load generator was the limit in that measurement: a lower bound."
        )
    section.notes += flags.notes()
    return section
