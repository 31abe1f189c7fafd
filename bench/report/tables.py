"""The report's content: results in, the neutral document (bench.report.document) out, built
once per report and drawn by every renderer, so the terminal, Markdown and HTML reports show the
same things."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Literal

from bench.report import aggregate, charts, compare, history
from bench.report.aggregate import Pair, Repetitions, Total
from bench.report.capacity import capacity_section
from bench.report.cost import cost_section
from bench.report.document import Column, Report, Section, Table, Value
from bench.report.numbers import (
    LOWER_BOUND,
    MISSING,
    SATURATED_MARK,
    first_line,
    fmt_errors,
    fmt_ms,
    fmt_num,
)
from bench.report.pairs import pairs_section
from bench.report.scale import scale_section
from bench.report.scenarios import scenario_section
from bench.report.soak import soak_section
from bench.results import Cell, EndpointResult, Result

TITLE = "prefect-bench report"
NO_RESULTS = "No results found."
HISTORY_ONLY = "The history of the runs given."
SATURATED_NOTE = (
    f"{LOWER_BOUND} / {SATURATED_MARK}: the load generator was saturated during this "
    "measurement: the rps is a lower bound of what the server sustains, and the latencies "
    "include client-side delay."
)
# Open model: whether the rate held is the engine's `rate_held` (bench/engine/measure.py: achieved
# >= 95% of offered and late sends <= 1% of the scheduled ones); results written before it was
# stored are judged by the achieved rate alone.
HELD_SHARE = 0.95
LATE_SHARE = 0.01
OPEN_NOTE = (
    "Open model: requests were sent on a fixed schedule at the offered rate; latencies run from "
    "each request's scheduled send time, so a stall of the server shows in the tail. A late send "
    "left after its scheduled time: every connection was still waiting on the server, or the "
    "load generator fell behind (then its numbers are marked as bounds)"
)
SHARE_RULE = f"an achieved rate below {HELD_SHARE:.0%} of the offered one"
LATE_RULE = f"more than {LATE_SHARE:.0%} of the scheduled sends late"
OLD_RESULTS = "late sends not counted for results that do not record rate_held"


def _label(result: Result, multi_run: bool) -> str:
    label = result.cell.name
    if multi_run:
        label += f" ({result.run_id})"
    if result.status != "ok":
        label += f" ({result.status})"
    return label


def _rps_value(rps: float, saturated: bool) -> Value:
    text = (LOWER_BOUND if saturated else "") + fmt_num(rps)
    return Value(text, number=rps)


def _total_value(total: Total | None) -> Value:
    return Value(MISSING) if total is None else _rps_value(total.rps, total.saturated)


def _ms_value(ep: EndpointResult | None, pick: Literal["p50", "p99"]) -> Value:
    if ep is None or ep.latency_ms is None:
        return Value(MISSING)
    ms = getattr(ep.latency_ms, pick)
    return Value(fmt_ms(ms) + (SATURATED_MARK if ep.client_saturated else ""), number=ms)


def _offered_rps(result: Result, ep: EndpointResult) -> float | None:
    if ep.offered_rps is not None:
        return ep.offered_rps
    return result.config.rate if result.config.mode == "open" else None


def _open_value(result: Result, ep: EndpointResult | None) -> Value:
    """Achieved / offered rate and late sends: "198 / 200, 3 late"."""
    offered = None if ep is None else _offered_rps(result, ep)
    if ep is None or offered is None:
        return Value(MISSING)
    text = f"{_rps_value(ep.rps, ep.client_saturated).text} / {fmt_num(offered)}"
    if ep.late_sends is not None:
        text += f", {ep.late_sends} late"
    held = ep.rate_held
    if held is None:
        held = offered > 0 and ep.rps >= HELD_SHARE * offered
    return Value(text, number=ep.rps / offered if offered else None, tone="" if held else "bad")


def _open_note(rate_held: Sequence[bool | None]) -> str:
    """OPEN_NOTE ending with the rule the rates shown were judged by (`rate_held` of each)."""
    rule = SHARE_RULE
    if any(held is not None for held in rate_held):
        old = f" ({OLD_RESULTS})" if None in rate_held else ""
        rule = f"{SHARE_RULE}, or {LATE_RULE}{old},"
    return f"{OPEN_NOTE}; {rule} means the rate was not held."


def _errors_value(ep: EndpointResult | None) -> Value:
    if ep is None:
        return Value(MISSING)
    text = fmt_errors(ep.errors)
    return Value(text, tone="muted" if text == "0" else "bad")


# One side of a comparison: for each run, its measurements of the endpoints compared (summed).
_Runs = list[list[EndpointResult]]


def _change_value(old: _Runs, new: _Runs, flags: compare.RatioFlags) -> Value:
    """One run a side: the rate of `new` over `old`, "~" when within the slices' noise."""
    ((old_eps,), (new_eps,)) = old, new
    return compare.change_value(old_eps, new_eps, flags)


def _status_value(result: Result) -> Value:
    return Value(result.status, tone=result.status)


def _skipped_notes(skipped: Sequence[Result], multi_run: bool) -> list[str]:
    """One line per distinct reason, naming every cell skipped for it."""
    cells: dict[str, list[str]] = {}
    for r in skipped:
        # The whole reason: it says how to make the cell run, and it is shown once here.
        reason = " ".join((r.error or "").split()) or "no reason recorded"
        cells.setdefault(reason, []).append(
            f"{r.cell.name} ({r.run_id})" if multi_run else r.cell.name
        )
    return [f"Skipped {', '.join(names)}: {reason}" for reason, names in cells.items()]


def _hosts_apart_notes(results: Sequence[Result], multi_run: bool) -> list[str]:
    """One line per cell whose server or services ran on another host than its load."""
    notes = []
    for r in results:
        apart = [f"the server on {r.server_host}"] if r.server_host else []
        apart += [f"{kind} on {s.host}" for kind, s in r.services.items() if s.host]
        if apart:
            load = f"the load on {r.environment.hostname or '?'}"
            notes.append(
                f"{_label(r, multi_run)} ran on more than one host: {load}, {', '.join(apart)}."
            )
    return notes


def _scenarios_value(result: Result, concurrency: int) -> Value:
    measured = [s for s in result.scenarios if s.concurrency == concurrency]
    if not measured:
        return Value(MISSING)
    return _rps_value(sum(s.per_s for s in measured), any(s.client_saturated for s in measured))


REPETITIONS_NOTE = (
    "n: the repetitions of the cell in its run that its figures stand on: rates are their mean, "
    "counts their sum, latencies come from their merged histograms."
)


def _left_out_note(reps: dict[tuple[str, str], Repetitions], multi_run: bool) -> str | None:
    """One line naming every repetition left out of the figures, and why."""
    left_out = []
    for (run_id, cell), rep in reps.items():
        where = f"{cell} ({run_id})" if multi_run else cell
        left_out += [f"{where} repetition {k or 1}: discarded, {why}" for k, why in rep.discarded]
        left_out += [f"{where} repetition {k or 1}: {why}" for k, why in rep.failed]
    return f"Left out of every figure: {'; '.join(left_out)}." if left_out else None


def _matrix_section(
    results: list[Result], multi_run: bool, reps: dict[tuple[str, str], Repetitions]
) -> Section:
    ok = [r for r in results if r.status == "ok"]
    repeated = any(rep.repeated for rep in reps.values())
    # Skipped cells are listed below the table, once per reason: their reasons are long.
    skipped = [r for r in results if r.status == "skipped"]
    shown = [r for r in results if r.status != "skipped"]
    # Which machine each cell ran on, once they are not all one (a fan-out's are not).
    machines = len({aggregate.machine(r) for r in shown}) > 1
    # a --cost cell's rates are of a server under callgrind: no level, no point of the chart
    timed = [r for r in ok if not r.config.cost]
    levels = aggregate.concurrency_levels(timed)
    # scenario workloads: completed scenarios per second, as total rps is for requests
    scenario_levels = sorted({s.concurrency for r in timed for s in r.scenarios})
    columns = [Column("run"), Column("server"), Column("db"), Column("broker"), Column("status")]
    columns += [Column("machine")] if machines else []
    columns += [Column("n", numeric=True)] if repeated else []
    columns += [Column(f"total rps c={c}", numeric=True) for c in levels]
    columns += [Column(f"scenarios/s c={c}", numeric=True) for c in scenario_levels]
    columns += [
        Column("startup s", numeric=True),
        Column("rss peak MB", numeric=True),
        Column("cpu s", numeric=True),
        Column("error / reason"),
    ]
    table = Table(None, columns)
    saturated = False
    for r in shown:
        row = [Value(r.run_id), Value(r.cell.label), Value(r.cell.db), Value(r.cell.broker)]
        row.append(_status_value(r))
        if machines:
            row.append(Value(aggregate.machine(r)))
        if repeated:
            rep = reps.get((r.run_id, r.cell.name))
            row.append(Value(str(rep.counted if rep else 1)))
        if r.status == "ok" and r.config.cost:  # its rates are of a server under callgrind
            row += [Value("cost", tone="muted") for _ in (*levels, *scenario_levels)]
            row += [Value(MISSING)] * 3 + [Value("")]
        elif r.status == "ok":
            totals = [aggregate.total_rps(r, c) for c in levels]
            saturated |= any(t is not None and t.saturated for t in totals)
            row += [_total_value(t) for t in totals]
            row += [_scenarios_value(r, c) for c in scenario_levels]
            info = r.server
            row += [
                Value(fmt_num(info.startup_s if info else None)),
                Value(fmt_num(info.rss_peak_mb if info else None)),
                Value(fmt_num(info.cpu_s if info else None)),
                Value(""),
            ]
        else:
            row += [Value(MISSING) for _ in (*levels, *scenario_levels)] + [Value(MISSING)] * 3
            row.append(Value(first_line(r.error) or MISSING, tone=r.status))
        table.rows.append(row)
    section = Section("Matrix")
    if table.rows:
        section.tables.append(table)
        if levels:
            section.paragraphs.append(
                "Total rps is the sum of the successful requests per second of every endpoint "
                "measured at that concurrency."
            )
        if scenario_levels:
            section.paragraphs.append(
                "Scenarios/s is the sum of the completed scenarios per second (e.g. flow runs) "
                "of every scenario measured at that concurrency (virtual users)."
            )
    else:
        section.paragraphs.append("No cell ran: every one was skipped.")
    if timed and levels:
        section.charts.append(
            charts.levels_chart(
                "Total rps by concurrency",
                "rps",
                levels,
                [
                    (
                        _label(r, multi_run),
                        [t.rps if (t := aggregate.total_rps(r, c)) else None for c in levels],
                    )
                    for r in timed
                ],
            )
        )
    if repeated:
        section.notes.append(REPETITIONS_NOTE)
    if (left_out := _left_out_note(reps, multi_run)) is not None:
        section.notes.append(left_out)
    section.notes += _skipped_notes(skipped, multi_run)
    section.notes += _hosts_apart_notes(shown, multi_run)
    if saturated:
        section.notes.append(SATURATED_NOTE)
    return section


def _endpoint_section(results: list[Result], multi_run: bool) -> Section:
    section = Section("Endpoints")
    measured = [r for r in results if r.endpoints]
    if not measured:
        section.paragraphs.append("No endpoint measurements.")
        return section
    keys = aggregate.endpoint_keys(measured)
    by_result = [aggregate.measurements(r) for r in measured]
    labels = [_label(r, multi_run) for r in measured]
    head = [Column("endpoint"), Column("c", numeric=True)]
    cells = [Column(label, numeric=True) for label in labels]

    rps = Table("Requests per second (successful responses)", head + cells, bars=True, grouped=True)
    p50 = Table("p50 latency (ms)", head + cells, grouped=True)
    p99 = Table("p99 latency (ms)", head + cells, grouped=True)
    errors = Table("Errors (count and kinds)", head + cells, grouped=True)
    rates = Table("Open model: achieved / offered rps, late sends", head + cells, grouped=True)
    for name, c in keys:
        eps = [m.get((name, c)) for m in by_result]
        key = [Value(name), Value(str(c))]
        rps.rows.append(
            key
            + [Value(MISSING) if e is None else _rps_value(e.rps, e.client_saturated) for e in eps]
        )
        rates.rows.append(key + [_open_value(r, e) for r, e in zip(measured, eps, strict=True)])
        p50.rows.append(key + [_ms_value(e, "p50") for e in eps])
        p99.rows.append(key + [_ms_value(e, "p99") for e in eps])
        errors.rows.append(key + [_errors_value(e) for e in eps])
    section.tables.append(rps)
    offered = [
        e
        for r, m in zip(measured, by_result, strict=True)
        for e in m.values()
        if _offered_rps(r, e) is not None
    ]
    if offered:
        section.tables.append(rates)
        section.notes.append(_open_note([e.rate_held for e in offered]))
    section.tables += [p50, p99]
    if any(ep.errors and sum(ep.errors.values()) for r in measured for ep in r.endpoints):
        section.tables.append(errors)
    else:
        section.notes.append("No request errors in any measurement.")
    if any(ep.client_saturated for r in measured for ep in r.endpoints):
        section.notes.append(SATURATED_NOTE)
    section.charts += charts.endpoint_charts(measured, labels)
    return section


def _pair_header(pair: Pair, multi_run: bool) -> str:
    header = f"{pair.other.cell.name} vs {pair.base.cell.label}"
    if not pair.same_run:
        header += f" (run {pair.other.run_id} vs {pair.base.run_id})"
    elif multi_run:
        header += f" (run {pair.other.run_id})"
    return header


def _speedup_section(results: list[Result], multi_run: bool, across_machines: bool) -> Section:
    version = aggregate.reference_version(r for r in results if r.status == "ok")
    ref = Cell(server=aggregate.REFERENCE_SERVER, version=version).label
    section = Section(f"Speedup over {ref}")
    pairs, machine_notes = compare.on_one_machine(aggregate.speedup_pairs(results), across_machines)
    section.notes += machine_notes
    if not pairs:
        section.paragraphs.append(
            f"Nothing to compare: a speedup needs an ok {ref} result and an ok result of another "
            "server with the same db and broker"
            + (", measured on the same machine." if machine_notes else ".")
        )
        return section
    section.paragraphs.append(
        f"Each server's rps divided by the {ref} server's rps in the same db and broker (from the "
        f"same run when there is one, else the newest {ref} result): above 1× is faster. Totals "
        "sum the endpoints both measured at that concurrency. The rss peak ratio is the server's "
        f"peak memory divided by {ref}'s: below 1× uses less memory."
        + (
            f" Prefect versions were compared: each newer version over the oldest, {version}."
            if version
            else ""
        )
    )
    flags = compare.RatioFlags()
    table = _ratio_table(
        [([p.base], [p.other]) for p in pairs],
        [_pair_header(p, multi_run) for p in pairs],
        flags,
        _change_value,
    )
    row = [Value("rss peak"), Value("")]
    for pair in pairs:
        o_mb = pair.other.server.rss_peak_mb if pair.other.server else None
        b_mb = pair.base.server.rss_peak_mb if pair.base.server else None
        row.append(compare.ratio_value(o_mb, b_mb, False, False, False))
    table.rows.append(row)
    section.tables.append(table)
    section.notes += flags.notes()
    return section


def _ratio_table(
    sides: Sequence[tuple[Sequence[Result], Sequence[Result]]],
    headers: Sequence[str],
    flags: compare.RatioFlags,
    value_of: Callable[[_Runs, _Runs, compare.RatioFlags], Value],
) -> Table:
    """A table comparing, for each (old runs, new runs) pair of sides, the rates of the new runs
    with the old: one row per endpoint × concurrency (runs that lack it left out), then a total
    per concurrency over the endpoints every run of both sides measured."""
    keys = aggregate.endpoint_keys([r for old, new in sides for r in (*old, *new)])
    table = Table(
        None,
        [Column("endpoint"), Column("c", numeric=True)]
        + [Column(header, numeric=True) for header in headers],
        grouped=True,
    )
    found = [
        ([aggregate.measurements(r) for r in old], [aggregate.measurements(r) for r in new])
        for old, new in sides
    ]
    for key in keys:
        row = [Value(key[0]), Value(str(key[1]))]
        for old, new in found:
            o = [[m[key]] for m in old if key in m]
            n = [[m[key]] for m in new if key in m]
            row.append(value_of(o, n, flags) if o and n else Value(MISSING))
        table.rows.append(row)
    for c in sorted({c for _, c in keys}):
        row = [Value("total"), Value(str(c))]
        for old, new in found:
            runs = [*old, *new]
            common = [k for k in runs[0] if k[1] == c and all(k in m for m in runs)]
            o = [[m[k] for k in common] for m in old]
            n = [[m[k] for k in common] for m in new]
            row.append(value_of(o, n, flags) if common else Value(MISSING))
        table.rows.append(row)
    return table


def _changes_section(results: list[Result]) -> Section | None:
    pairs = compare.latest_changes(results)
    if not pairs:
        return None
    section = Section("Changes since the previous run")
    section.paragraphs.append(
        "For each cell measured in more than one run: the rps of its newest run divided by the "
        "rps of the run before it. Above 1× is faster now. Totals sum the endpoints both runs "
        "measured at that concurrency."
    )
    flags = compare.RatioFlags()
    table = _ratio_table(
        [([p.old], [p.new]) for p in pairs],
        [f"{p.new.cell.name}: {p.new.run_id} vs {p.old.run_id}" for p in pairs],
        flags,
        _change_value,
    )
    section.tables.append(table)
    section.notes += flags.notes()
    return section


def build(
    results: list[Result],
    baseline: list[Result] | None = None,
    runs_over_time: list[Result] | None = None,
    across_machines: bool = False,
) -> Report:
    """The whole report for `results` (any order; the repetitions of a cell in a run merged
    into one result, `aggregate.merge_repetitions`; shown in `aggregate.display_order`); if a
    baseline is given, how the results compare with it run for run; if `runs_over_time` are
    given, their History section (change points over the runs, `bench.report.history`).

    Speedups between results of two machines are left out, naming the machines, unless
    `across_machines` (`compare.on_one_machine`)."""
    over_time = None
    if runs_over_time is not None:
        over_time = history.history_section(aggregate.merge_repetitions(runs_over_time))
    if not results:
        return Report(
            TITLE,
            NO_RESULTS if over_time is None else HISTORY_ONLY,
            sections=[s for s in (over_time,) if s is not None],
        )
    reps = aggregate.repetitions(results)
    ordered = aggregate.display_order(aggregate.merge_repetitions(results))
    merged_baseline = None if baseline is None else aggregate.merge_repetitions(baseline)
    runs = aggregate.run_ids(ordered)
    multi_run = len(runs) > 1
    plural = "" if len(ordered) == 1 else "s"
    summary = (
        f"{len(ordered)} result{plural} from {len(runs)} run{'' if len(runs) == 1 else 's'}: "
        + ", ".join(runs)
        + "."
    )
    if len(results) > len(ordered):
        summary += f" ({len(results)} result files: the repetitions of each cell are merged.)"
    # a --cost cell's timed figures are of a server under callgrind: in its Cost section only
    timed = [r for r in ordered if not r.config.cost]
    costed = cost_section(ordered)
    return Report(
        TITLE,
        summary,
        warnings=aggregate.comparability_warnings(ordered + (merged_baseline or []))
        + aggregate.shared_cpu_warnings(ordered)
        + aggregate.noisy_warnings(results),
        sections=[
            section
            for section in (
                _matrix_section(ordered, multi_run, reps),
                _endpoint_section(timed, multi_run) if timed or not costed else None,
                scenario_section(timed, multi_run, across_machines),
                costed,
                capacity_section(timed, [_label(r, multi_run) for r in timed]),
                soak_section(timed),
                scale_section(timed),
                _speedup_section(timed, multi_run, across_machines) if timed else None,
                pairs_section(results),
                _changes_section(timed),
                None
                if merged_baseline is None
                else compare.baseline_section(merged_baseline, ordered),
                over_time,
            )
            if section is not None
        ],
    )
