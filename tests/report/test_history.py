"""Tests of bench.report.history: change points in a cell's figures over many runs.

The histories are synthetic: copies of one measured-looking result (tests/resources/report,
zig × sqlite × memory) written as runs a day apart, every endpoint's rps times a scale per run
and a seeded noise, so each test knows where the change is.
"""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest

from bench.cli import EXIT_OK, main
from bench.report import build, collect, render_html, render_markdown
from bench.report.aggregate import merge_repetitions
from bench.report.history import MIN_SEGMENT, change_points, histories, history_section
from bench.results import Result, write_result
from tests.helpers import REPORT_RUN

SOURCE = REPORT_RUN
CELL = "zig-sqlite-memory"


def source() -> Result:
    [result] = collect([SOURCE / f"{CELL}.json"])[0]
    return result


def run_id(i: int) -> str:
    return f"202612{1 + i // 24:02d}T{i % 24:02d}0000Z-h{i:03d}"


def write_history(
    folder: Path,
    scales: list[float],
    noise: float = 0.02,
    first: int = 0,
    **config: object,
) -> list[str]:
    """One run per scale in `folder` (the first one hour `first`), run i's rps times scales[i]
    and ±`noise` (seeded); the run ids, oldest first."""
    rng = random.Random(1)
    base = source()
    ids = []
    for i, scale in enumerate(scales, start=first):
        eps = [
            ep.model_copy(update={"rps": ep.rps * scale * (1 + noise * rng.gauss(0, 1))})
            for ep in base.endpoints
        ]
        rid = run_id(i)
        result = base.model_copy(
            update={
                "run_id": rid,
                "started_at": f"2026-12-{1 + i // 24:02d}T{i % 24:02d}:00:00Z",
                "endpoints": eps,
                "config": base.config.model_copy(update=config),
            }
        )
        write_result(result, folder / rid / f"{CELL}.json")
        ids.append(rid)
    return ids


def found(folder: Path) -> dict[str, list[tuple[str, float]]]:
    """The changes in the one series of `folder`: {figure: [(first run after, ratio)]}."""
    results, warnings = collect([folder])
    assert warnings == []
    [history] = histories(merge_repetitions(results))
    changes: dict[str, list[tuple[str, float]]] = {}
    for c in history.changes:
        changes.setdefault(c.figure, []).append((c.run_id, c.ratio or 0.0))
    return changes


def test_a_step_change_is_found_at_the_first_run_after_it(tmp_path: Path) -> None:
    ids = write_history(tmp_path, [1.0] * 8 + [0.7] * 8)
    changes = found(tmp_path)
    # Every figure that is not 0 stepped down at run 8, and only there.
    assert set(changes) == {
        "total rps c=1",
        "total rps c=4",
        "GET health rps c=1",
        "GET health rps c=4",
        "GET flow rps c=1",
        "GET flow rps c=4",
        "POST flow_runs rps c=1",
    }
    for figure, [(first_after, ratio)] in changes.items():
        assert first_after == ids[8], figure
        assert ratio == pytest.approx(0.7, abs=0.03), figure


def test_no_change_in_a_flat_noisy_series(tmp_path: Path) -> None:
    write_history(tmp_path, [1.0] * 16, noise=0.03)
    assert found(tmp_path) == {}


def test_a_single_spike_is_not_a_change(tmp_path: Path) -> None:
    write_history(tmp_path, [1.0] * 7 + [2.0] + [1.0] * 8)
    assert found(tmp_path) == {}


def test_a_change_in_the_last_runs_is_not_a_change_yet() -> None:
    values = [1000.0 + (i % 3) for i in range(14)] + [500.0] * (MIN_SEGMENT - 1)
    assert change_points(values) == []
    assert change_points([*values, 500.0]) == [14]  # MIN_SEGMENT runs after it: now it is


def test_a_spike_beside_a_step_leaves_the_step() -> None:
    rng = np.random.default_rng(5)
    values = list(1000 * (1 + 0.02 * rng.standard_normal(8)))
    values += [400.0, *(700 * (1 + 0.02 * rng.standard_normal(7)))]
    assert change_points(values) == [8]


def test_change_points_are_repeatable_and_leave_numpy_random_alone() -> None:
    rng = np.random.default_rng(2)
    values = list(1000 * (1 + 0.03 * rng.standard_normal(10))) + list(
        950 * (1 + 0.03 * rng.standard_normal(10))
    )
    np.random.seed(42)
    state = np.random.get_state()
    first = change_points(values)
    after = np.random.get_state()
    assert all(np.array_equal(a, b) for a, b in zip(state[1:3], after[1:3], strict=True))
    assert [change_points(values) for _ in range(3)] == [first] * 3


def test_other_settings_or_machines_make_other_series(tmp_path: Path) -> None:
    write_history(tmp_path / "a", [1.0] * 4)
    write_history(tmp_path / "b", [1.0] * 3, first=4, duration_s=2.0)
    results = collect([tmp_path])[0]
    other_host = [
        r.model_copy(
            update={
                "run_id": r.run_id + "x",
                "environment": r.environment.model_copy(update={"hostname": "elsewhere"}),
            }
        )
        for r in results[:2]
    ]
    found_series = histories(results + other_host)
    assert sorted(len(h.runs) for h in found_series) == [2, 3, 4]
    assert all(h.cell == CELL for h in found_series)
    assert len({h.settings for h in found_series}) == 3
    section = history_section(results + other_host)
    [note] = section.notes
    # the same cell three times: each named with the settings its series differ in (not the
    # ones they share), all too short to tell
    assert note.startswith(f"Too short to tell a change ({2 * MIN_SEGMENT} runs needed")
    assert note.count(CELL) == 3 and "duration_s 2," in note and "machine elsewhere" in note
    assert "workload" not in note and "concurrency" not in note


def test_a_runs_repetitions_are_one_point(tmp_path: Path) -> None:
    ids = write_history(tmp_path, [1.0] * 8 + [0.7] * 8)
    # run 3 repeated twice more, far off: merged, it is one point (the mean of three)
    results = collect([tmp_path])[0]
    third = next(r for r in results if r.run_id == ids[3])
    extra = [
        third.model_copy(
            update={
                "repetition": k,
                "endpoints": [
                    ep.model_copy(update={"rps": ep.rps * 1.01}) for ep in third.endpoints
                ],
            }
        )
        for k in (2, 3)
    ]
    results = [r.model_copy(update={"repetition": 1}) if r is third else r for r in results]
    [history] = histories(merge_repetitions(results + extra))
    assert [r.run_id for r in history.runs] == ids
    assert {c.run_id for c in history.changes} == {ids[8]}


def test_history_section_table_chart_and_the_report_without_other_results(
    tmp_path: Path,
) -> None:
    ids = write_history(tmp_path, [1.0] * 8 + [0.7] * 8)
    report = build([], runs_over_time=collect([tmp_path])[0])
    [section] = report.sections
    assert section.title == "History"
    [table] = section.tables
    first = table.rows[0]
    assert [v.text for v in first[:4]] == [CELL, "total rps c=1", ids[8], "2026-12-01 08:00"]
    before, after = (float(x) for x in first[4].text.split(" → "))
    assert after / before == pytest.approx(0.7, abs=0.03)
    assert first[5].text == f"{after / before:.2f}×" and first[5].tone == "bad"
    text = render_markdown(report)
    assert "## History" in text and "## Matrix" not in text
    assert "E-divisive" in text and f"at least {MIN_SEGMENT} runs either side" in text

    page = render_html(report)
    assert f'aria-label="{CELL}: over 16 runs"' in page
    assert page.count("<svg") == 1
    svg = page.split("<svg", 1)[1].split("</svg>", 1)[0]
    assert "7 figures" in svg  # the mark at the change names how many figures changed there


def test_history_with_no_change_says_so(tmp_path: Path) -> None:
    write_history(tmp_path, [1.0] * 6)
    section = history_section(collect([tmp_path])[0])
    assert section.tables == [] and "No change found in any figure." in section.paragraphs
    assert len(section.charts) == 1 and section.charts[0].marks == []


def test_cli_report_history(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_history(tmp_path / "runs", [1.0] * 8 + [0.7] * 8)
    out = tmp_path / "out"
    assert main(["report", "--history", str(tmp_path / "runs"), "--out", str(out)]) == EXIT_OK
    text = (out / "report.md").read_text(encoding="utf-8")
    assert "## History" in text and "## Matrix" not in text
    assert "History" in capsys.readouterr().out
    # with PATHS too: the usual report over them, and the history
    assert (
        main(["report", str(SOURCE), "--history", str(tmp_path / "runs"), "--out", str(out / "b")])
        == EXIT_OK
    )
    both = (out / "b" / "report.md").read_text(encoding="utf-8")
    assert "## Matrix" in both and "## History" in both
    assert main(["report", "--history", str(tmp_path / "nowhere"), "--out", str(out)]) == 2
