"""Changes since the previous run, speedups within the noise, and the comparison with a baseline."""

from __future__ import annotations

import pytest

from bench.report import build, compare
from bench.results import Result
from tests.report.helpers import (
    baseline_table,
    by_cell,
    column,
    later,
    runs,
    speedup_table,
    with_slices,
)


def test_rate_change_within_the_noise_of_the_slices(results: list[Result]) -> None:
    health = by_cell(results, "zig-sqlite-memory").endpoints[0]
    steady = with_slices(by_cell(results, "zig-sqlite-memory"), 1.0, 0.01).endpoints[0]
    faster = with_slices(by_cell(results, "zig-sqlite-memory"), 1.2, 0.01).endpoints[0]
    noisy = with_slices(by_cell(results, "zig-sqlite-memory"), 1.02, 0.3).endpoints[0]
    change = compare.rate_change([steady], [faster])
    assert change is not None and change.ratio == pytest.approx(1.2)
    assert change.within_noise is False and change.low is not None and change.low > 1.1
    change = compare.rate_change([steady], [noisy])
    assert change is not None and change.within_noise is True
    change = compare.rate_change([health], [faster])  # no slices on one side: cannot tell
    assert change is not None and change.within_noise is None and change.low is None
    assert compare.rate_change([], [faster]) is None


def test_changes_compare_each_cell_with_its_previous_run(results: list[Result]) -> None:
    zig = by_cell(results, "zig-sqlite-memory")
    python = by_cell(results, "python-sqlite-memory")
    first = with_slices(zig, 1.0, 0.01)
    second = later(with_slices(zig, 0.5, 0.01), "20261127T090000Z-aaaa", 27)
    third = later(with_slices(zig, 0.51, 0.2), "20261128T090000Z-bbbb", 28)
    report = build([first, second, third, python])
    section = next(s for s in report.sections if s.title.startswith("Changes"))
    [table] = section.tables
    header = "zig-sqlite-memory: 20261128T090000Z-bbbb vs 20261127T090000Z-aaaa"
    assert [c.header for c in table.columns[2:]] == [header]  # python ran once: no column
    values = column(table, header)
    assert values[("GET flow", "1")] == "1.02× ~"  # 0.51 / 0.5 with ±20% slices: noise
    assert any(n.startswith("~: within the noise") for n in section.notes)
    two_runs = build([first, second])
    [table] = next(s for s in two_runs.sections if s.title.startswith("Changes")).tables
    values = column(table, table.columns[2].header)
    assert values[("GET flow", "1")] == "0.50×"  # halved, well outside ±1% slices
    assert values[("total", "1")] == "0.50×"
    assert table.rows[0][2].tone == "bad"


def test_no_changes_section_for_a_single_run(results: list[Result]) -> None:
    assert not any(s.title.startswith("Changes") for s in build(results).sections)


def test_speedup_within_the_noise_is_marked(results: list[Result]) -> None:
    python = with_slices(by_cell(results, "python-sqlite-memory"), 1.0, 0.3)
    zig_eps = [  # python's measurements, 3% faster
        ep.model_copy(update={"rps": ep.rps * 1.03, "rps_slices": [r * 1.03 for r in slices]})
        for ep in python.endpoints
        if (slices := ep.rps_slices)
    ]
    zig = by_cell(results, "zig-sqlite-memory").model_copy(update={"endpoints": zig_eps})
    assert column(speedup_table([python, zig]), "zig")[("GET flow", "1")] == "1.03× ~"


def test_baseline_comparison_tests_run_against_run(results: list[Result]) -> None:
    zig = by_cell(results, "zig-sqlite-memory")
    before = runs(zig, [1.0, 1.01, 0.99, 1.0], "before-")
    slower = runs(zig, [0.8, 0.81, 0.79, 0.8], "after-")
    values = column(baseline_table(before, slower), "zig-sqlite-memory (4 vs 4 runs)")
    assert values[("GET flow", "1")] == "0.80× p=0.029"  # the smallest p 4 runs a side allow
    assert values[("total", "1")] == "0.80× p=0.029"
    same = runs(zig, [1.02, 0.98, 1.0, 0.99], "again-")
    values = column(baseline_table(before, same), "zig")
    assert values[("GET flow", "1")].startswith("1.00× ~ p=")


def test_baseline_comparison_needs_four_runs_a_side(results: list[Result]) -> None:
    zig = by_cell(results, "zig-sqlite-memory")
    table = baseline_table(runs(zig, [1.0, 1.0, 1.0], "b-"), runs(zig, [0.5] * 4, "a-"))
    assert column(table, "zig-sqlite-memory (4 vs 3 runs)")[("GET flow", "1")] == "0.50× ?"
    assert table.rows[0][2].tone == "muted"


def test_baseline_without_common_cells_says_so(results: list[Result]) -> None:
    python = by_cell(results, "python-sqlite-memory")
    section = build([python], [by_cell(results, "zig-sqlite-memory")]).sections[-1]
    assert section.title == "Against the baseline" and not section.tables
    assert section.paragraphs[0].startswith("Nothing to compare")
