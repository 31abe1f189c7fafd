"""The report's section on scenario workloads (flow-runs, …): for each scenario and level, the
completed scenarios per second of every cell side by side, their durations, failures by step,
what the server lost of what was sent, each step's latency, and the speedup over python."""

from __future__ import annotations

from collections.abc import Callable

from bench.report.aggregate import REFERENCE_SERVER
from bench.report.document import Column, Section, Table, Value
from bench.report.numbers import LOWER_BOUND, MISSING, fmt_errors, fmt_ms, fmt_num, fmt_ratio
from bench.results import Result, ScenarioResult, StepResult

Key = tuple[str, int]  # (scenario name, concurrency)


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


def _steps_table(results: list[Result], labels: list[str], keys: list[Key], name: str) -> Table:
    table = Table(
        f"{name}: step latency p50 / p99 (ms)",
        [Column("step"), Column("c", numeric=True)] + [Column(x, numeric=True) for x in labels],
        grouped=True,
    )
    found = [_by_key(r) for r in results]
    steps: dict[str, None] = {}
    for f in found:
        for key, s in f.items():
            if key[0] == name:
                steps.update(dict.fromkeys(st.name for st in s.steps))
    for step in steps:
        for key in (k for k in keys if k[0] == name):
            row = [Value(step), Value(str(key[1]))]
            for f in found:
                s = f.get(key)
                row.append(
                    _step(next((st for st in s.steps if st.name == step), None) if s else None)
                )
            table.rows.append(row)
    return table


def _speedup_table(results: list[Result], keys: list[Key]) -> Table | None:
    """Each other server's completed scenarios per second over python's, same db and broker,
    same run when there is one."""
    refs = {
        (r.run_id, r.cell.db, r.cell.broker): r
        for r in results
        if r.cell.server == REFERENCE_SERVER and r.scenarios
    }
    pairs = []
    for r in results:
        if r.cell.server == REFERENCE_SERVER or not r.scenarios:
            continue
        ref = refs.get((r.run_id, r.cell.db, r.cell.broker))
        if ref is not None:
            pairs.append((ref, r))
    if not pairs:
        return None
    table = Table(
        f"Scenarios per second over {REFERENCE_SERVER}",
        [Column("scenario"), Column("c", numeric=True)]
        + [Column(f"{o.cell.name} vs {REFERENCE_SERVER}", numeric=True) for _, o in pairs],
        grouped=True,
    )
    for key in keys:
        row = [Value(key[0]), Value(str(key[1]))]
        for ref, other in pairs:
            b, o = _by_key(ref).get(key), _by_key(other).get(key)
            if b is None or o is None or not b.per_s:
                row.append(Value(MISSING))
                continue
            ratio = o.per_s / b.per_s
            bound = LOWER_BOUND if o.client_saturated and not b.client_saturated else ""
            row.append(Value(bound + fmt_ratio(ratio), number=ratio))
        table.rows.append(row)
    return table


def scenario_section(results: list[Result], multi_run: bool) -> Section | None:
    """The Scenarios section, or None when no result has scenarios."""
    measured = [r for r in results if r.scenarios]
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
        _table("Completed scenarios per second", measured, labels, keys, _per_s),
        _table("Scenario duration p50 / p99 (ms)", measured, labels, keys, _durations),
        _table("Failed scenarios, by the step that failed", measured, labels, keys, _failed),
        _table("Lost / sent", measured, labels, keys, _lost),
    ]
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
    for name in dict.fromkeys(n for n, _ in keys):
        section.tables.append(_steps_table(measured, labels, keys, name))
    if (speedup := _speedup_table(measured, keys)) is not None:
        section.tables.append(speedup)
    if any(s.client_saturated for r in measured for s in r.scenarios):
        section.notes.append(
            f"{LOWER_BOUND}: the load generator was the limit in that measurement: a lower bound."
        )
    return section
