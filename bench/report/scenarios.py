"""The report's section on scenario workloads (flow-runs, events, workers, …): for each
scenario and level, the completed scenarios per second of every cell side by side, their
durations, failures by step, what the server lost of what was sent, each step's latency and the
speedup over python; and the tables and notes each workload adds, declared beside it
(`ScenarioWorkload.report`, bench.workloads.reported: e.g. the lag of what the server made
queryable, the delays the scenarios observed, what the server's own services did), drawn here
without naming any workload.

Its columns put the brokers of one server and database next to each other (then the servers,
reference first): these workloads go through the broker, and the servers have the speedup
table."""

from __future__ import annotations

from collections.abc import Callable, Mapping

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
from bench.results import Result, ScenarioResult, StepResult
from bench.workloads import WORKLOADS, ScenarioWorkload
from bench.workloads.reported import (
    CountsTable,
    LevelTable,
    PartsTable,
    Reading,
    ScenarioTable,
    by_name,
)

Key = tuple[str, int]  # (scenario name, concurrency)


def _workloads(results: list[Result] | None = None) -> list[ScenarioWorkload]:
    """The scenario workloads of `results` (of every result: all), in the order of WORKLOADS."""
    names = None if results is None else {r.config.workload for r in results}
    return [
        w
        for w in WORKLOADS.values()
        if isinstance(w, ScenarioWorkload) and (names is None or w.name in names)
    ]


def _tables(results: list[Result]) -> list[ScenarioTable]:
    """The tables the workloads of `results` add, each once, in their workloads' order. A
    result of a workload no longer known may hold what any of them shows: then every one's
    (each is drawn only where some scenario has a value for it)."""
    known = all(r.config.workload in WORKLOADS for r in results)
    workloads = _workloads(results if known else None)
    return list(dict.fromkeys(t for w in workloads for t in w.report.tables))


def _unit(results: list[Result]) -> str:
    """The rate's unit as a title's suffix, " (events/s)", when every result's workload says
    what one scenario is, and the same; else nothing."""
    units = {
        w.report.unit if isinstance(w := WORKLOADS.get(r.config.workload), ScenarioWorkload) else ""
        for r in results
    }
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


def _retried(s: ScenarioResult | None) -> Value:
    """The tries sent again, by step, and what they cost: "14 (create flow_run×14), 33.7 s"."""
    if s is None:
        return Value(MISSING)
    retried = {step.name: step.retries for step in s.steps}
    text = fmt_errors(retried)
    if text == "0":
        return Value(text, tone="muted")
    return Value(f"{text}, {sum(step.retry_s for step in s.steps):.1f} s")


def _lost(s: ScenarioResult | None) -> Value:
    """What the server did not record, of what was sent: "0 / 90 task runs"."""
    if s is None or not s.delivery:
        return Value(MISSING)
    parts = [f"{d.lost} / {d.sent} {kind.replace('_', ' ')}" for kind, d in s.delivery.items()]
    lost = sum(d.lost for d in s.delivery.values())
    return Value(", ".join(parts), tone="bad" if lost else "muted")


def _shown(reading: Reading | None) -> Value:
    """A workload's reading as a table's value: "812.00 / 1900.00 (48 probes, 2 unresolved)",
    "1.50 pg xact, 3.00 redis cmd"."""
    if reading is None:
        return Value(MISSING)
    timed = reading.latency
    parts = [f"{fmt_ms(timed.p50)} / {fmt_ms(timed.p99)}"] if timed is not None else []
    parts += [f"{fmt_num(amount)} {unit}" for amount, unit in reading.amounts]
    text = ", ".join(parts) or MISSING
    if reading.remarks:
        text += f" ({', '.join(reading.remarks)})"
    number = None if timed is None else timed.p50
    return Value(text, number=number, tone="bad" if reading.bad else "")


def _step(step: StepResult) -> Reading | None:
    if step.latency_ms is None:
        return None
    errors = sum(step.errors.values())
    return Reading(
        step.latency_ms, remarks=(f"{errors} failed",) if errors else (), bad=bool(errors)
    )


def _steps(s: ScenarioResult) -> dict[str, Reading | None]:
    return by_name(s.steps, _step)


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
    read: Callable[[ScenarioResult], Mapping[str, Reading | None]],
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
                names.update(dict.fromkeys(read(s)))
    for part in names:
        for key in keys:
            row = [Value(part), Value(str(key[1]))]
            for f in found:
                s = f.get(key)
                row.append(_shown(read(s).get(part)) if s else Value(MISSING))
            table.rows.append(row)
    return table


def _counts_table(
    counts: CountsTable, found: list[dict[Key, ScenarioResult]], labels: list[str], keys: list[Key]
) -> Table:
    """A row per scenario, level and count read back (a level no result read anything back for
    has no rows)."""
    table = Table(
        counts.title,
        [Column("scenario"), Column("c", numeric=True), Column("what")]
        + [Column(x, numeric=True) for x in labels],
        grouped=True,
    )
    for key in keys:
        cells = [None if (s := f.get(key)) is None else counts.read(s) for f in found]
        for name in dict.fromkeys(k for read in cells if read is not None for k in read):
            row = [Value(key[0]), Value(str(key[1])), Value(name)]
            for read in cells:
                if read is None or (count := read.get(name)) is None:
                    row.append(Value(MISSING))
                else:
                    row.append(Value(str(count), number=count))
            table.rows.append(row)
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


def _values(
    read: Callable[[ScenarioResult], Reading | None],
) -> Callable[[ScenarioResult | None], Value]:
    return lambda s: _shown(None if s is None else read(s))


def _add_workload_tables(
    section: Section, measured: list[Result], labels: list[str], keys: list[Key]
) -> None:
    """The tables and notes the workloads of `measured` add, each table where some scenario
    has a value for it, and each scenario's step latencies among them."""
    found = [_by_key(r) for r in measured]
    scenarios = [s for r in measured for s in r.scenarios]
    tables = _tables(measured)
    for level in (t for t in tables if isinstance(t, LevelTable)):
        read = [x for s in scenarios if (x := level.read(s)) is not None]
        if read:
            section.tables.append(_table(level.title, measured, labels, keys, _values(level.read)))
            section.notes += [level.note] if level.note else []
            if level.bad_note and any(x.bad for x in read):
                section.notes.append(level.bad_note)
    parts = [t for t in tables if isinstance(t, PartsTable)]
    for name in dict.fromkeys(n for n, _ in keys):
        named = [k for k in keys if k[0] == name]
        title = f"{name}: step latency p50 / p99 (ms)"
        section.tables.append(_parts_table(title, "step", found, labels, named, _steps))
        for table in parts:
            if any(table.read(f[k]) for f in found for k in named if k in f):
                title = f"{name}: {table.title}"
                section.tables.append(
                    _parts_table(title, table.header, found, labels, named, table.read)
                )
    section.notes += [t.note for t in parts if t.note and any(t.read(s) for s in scenarios)]
    section.notes += list(dict.fromkeys(n for w in _workloads(measured) for n in w.report.notes))
    for counts in (t for t in tables if isinstance(t, CountsTable)):
        if any(counts.read(s) is not None for s in scenarios):
            section.tables.append(_counts_table(counts, found, labels, keys))
            section.notes += [counts.note] if counts.note else []


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
        "sent. Retried: the tries the emulated Prefect client sent again, as the real one does "
        "(an answer 408, 429, 502 or 503, a broken connection), and the time from each failed "
        "try to the next; a scenario fails only where that client gives up. Lost: of what the "
        "scenarios sent over the whole measurement, what the server had "
        "not recorded when read back through its API after the window."
    )
    section.tables += [
        _table(f"Completed scenarios per second{_unit(measured)}", measured, labels, keys, _per_s),
        _table("Scenario duration p50 / p99 (ms)", measured, labels, keys, _durations),
        _table("Failed scenarios, by the step that failed", measured, labels, keys, _failed),
    ]
    if any(step.retries for r in measured for s in r.scenarios for step in s.steps):
        section.tables.append(
            _table(
                "Retried: tries sent again, by step, and the time they cost",
                measured,
                labels,
                keys,
                _retried,
            )
        )
    section.tables.append(_table("Lost / sent", measured, labels, keys, _lost))
    _add_workload_tables(section, measured, labels, keys)
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
    section.notes += [
        f"{label} {s.name} c={s.concurrency}: {problem}"
        for r, label in zip(measured, labels, strict=True)
        for s in r.scenarios
        for problem in s.problems
    ]
    return section
