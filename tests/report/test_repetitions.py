"""Repetitions: collected, merged (only the counted ones), and how many each cell stands on."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from hdrh.histogram import HdrHistogram

from bench.report import build, collect, render_markdown
from bench.report.aggregate import Repetitions, merge_repetitions, repetitions
from bench.results import Result
from bench.results.merge import latency_summary
from tests.report.helpers import (
    REPEAT_RESULTS,
    baseline_table,
    by_cell,
    column,
    repetition_of,
    runs,
    speedup_table,
)


def test_collect_keeps_every_repetition(repeated: list[Result], tmp_path: Path) -> None:
    assert [(r.cell.name, r.repetition, r.discarded) for r in repeated] == [
        ("python-sqlite-memory", 1, "warm-up repetition"),
        ("python-sqlite-memory", 2, None),
        ("python-sqlite-memory", 3, None),
        ("zig-sqlite-memory", 1, "warm-up repetition"),
        ("zig-sqlite-memory", 2, None),
        ("zig-sqlite-memory", 3, None),
    ]
    run = REPEAT_RESULTS / "20261201T090000Z-r3p7"
    copy = tmp_path / "copy.json"
    shutil.copy(run / "zig-sqlite-memory.2.json", copy)
    found, warnings = collect([run, copy])
    assert len(found) == 6
    assert (
        len(warnings) == 1
        and "cell zig-sqlite-memory repetition 2 is already read" in (warnings[0])
    )


def test_merged_repetitions_count_only_the_kept_ones(repeated: list[Result]) -> None:
    merged = merge_repetitions(repeated)
    assert [(r.cell.name, r.repetition) for r in merged] == [
        ("python-sqlite-memory", None),
        ("zig-sqlite-memory", None),
    ]
    python = merged[0]
    two, three = (repetition_of(repeated, "python-sqlite-memory", k) for k in (2, 3))
    for ep, a, b in zip(python.endpoints, two.endpoints, three.endpoints, strict=True):
        assert ep.rps == pytest.approx((a.rps + b.rps) / 2)  # the warm-up's 0.8× left out
        assert ep.requests == a.requests + b.requests
        assert ep.errors == {k: a.errors.get(k, 0) + b.errors.get(k, 0) for k in ep.errors}
        assert ep.duration_s == a.duration_s + b.duration_s
        assert ep.rps_slices == [*(a.rps_slices or []), *(b.rps_slices or [])]
        # latencies from the added histograms: between the two, and exactly the merged one's
        assert ep.latency_ms is not None and a.latency_ms and b.latency_ms
        low, high = sorted((a.latency_ms.p99, b.latency_ms.p99))
        assert low <= ep.latency_ms.p99 <= high
        assert ep.hdr is not None and a.hdr and b.hdr
        hist = HdrHistogram.decode(a.hdr)
        hist.add(HdrHistogram.decode(b.hdr))
        assert ep.latency_ms == latency_summary(hist)
    assert python.started_at == two.started_at and python.finished_at == three.finished_at


def test_merged_repetition_is_saturated_if_any_was(repeated: list[Result]) -> None:
    zig = repetition_of(repeated, "zig-sqlite-memory", 2)
    flags = [ep.client_saturated for ep in zig.endpoints]
    assert flags.count(True) == 1  # GET health c=4, in every repetition
    eps = [
        ep.model_copy(update={"client_saturated": ep.name == "GET flow"}) for ep in zig.endpoints
    ]
    changed = [r if r is not zig else zig.model_copy(update={"endpoints": eps}) for r in repeated]
    [_, merged] = merge_repetitions(changed)
    assert [ep.client_saturated for ep in merged.endpoints] == [
        False,
        True,  # GET health c=4: saturated in repetition 3
        True,  # GET flow: saturated in repetition 2
        True,
        False,
        False,
    ]


def test_a_single_result_passes_through_merging_unchanged(results: list[Result]) -> None:
    merged = merge_repetitions(results)
    assert len(merged) == len(results)
    assert all(m is r for m, r in zip(merged, results, strict=True))


def test_without_histograms_merged_latency_is_weighted_by_successes(
    results: list[Result],
) -> None:
    zig = by_cell(results, "zig-sqlite-memory")
    second = zig.model_copy(
        update={
            "repetition": 2,
            "endpoints": [
                ep.model_copy(
                    update={
                        "requests": ep.requests * 3,
                        "latency_ms": ep.latency_ms
                        and ep.latency_ms.model_copy(update={"p50": ep.latency_ms.p50 * 2}),
                    }
                )
                for ep in zig.endpoints
            ],
        }
    )
    [merged] = merge_repetitions([zig.model_copy(update={"repetition": 1}), second])
    health = merged.endpoints[0]
    assert health.hdr is None and health.latency_ms is not None
    assert health.latency_ms.p50 == pytest.approx(0.1 * (1 + 3 * 2) / 4)  # weights 1 and 3


def test_failed_and_discarded_repetitions_are_left_out_and_named(repeated: list[Result]) -> None:
    python = [r for r in repeated if r.cell.name == "python-sqlite-memory"]
    failed = python[2].model_copy(update={"status": "failed", "error": "server died\nTraceback"})
    reps = repetitions([*python[:2], failed])
    assert reps[("20261201T090000Z-r3p7", "python-sqlite-memory")] == Repetitions(
        counted=1, discarded=((1, "warm-up repetition"),), failed=((3, "failed: server died"),)
    )
    [merged] = merge_repetitions([*python[:2], failed])
    assert merged is python[1]  # the only one counted
    matrix = build([*python[:2], failed]).sections[0]
    assert (
        "Left out of every figure: python-sqlite-memory repetition 1: discarded, warm-up "
        "repetition; python-sqlite-memory repetition 3: failed: server died." in matrix.notes
    )
    # every repetition discarded: the cell shows as failed, saying so
    [gone] = merge_repetitions(python[:1])
    assert gone.status == "failed" and gone.endpoints == []
    assert gone.error == "every repetition was discarded: warm-up repetition"


def test_report_says_how_many_repetitions_each_cell_stands_on(repeated: list[Result]) -> None:
    report = build(repeated)
    assert report.summary == (
        "2 results from 1 run: 20261201T090000Z-r3p7. (6 result files: the repetitions of each "
        "cell are merged.)"
    )
    matrix = report.sections[0]
    [table] = matrix.tables
    assert [c.header for c in table.columns[4:7]] == ["status", "n", "total rps c=1"]
    assert [row[5].text for row in table.rows] == ["2", "2"]
    assert any(n.startswith("n: the repetitions of the cell in its run") for n in matrix.notes)
    assert any(
        "zig-sqlite-memory repetition 1: discarded, warm-up repetition" in n for n in matrix.notes
    )
    text = render_markdown(report)
    assert "| status | n |" in text
    # figures stand on the merged results: python's GET health at c=1 is (812.4 + 844.9) / 2
    assert "| GET health | 1 | 829 |" in text
    # the speedup pairs the merged cells
    ratios = column(speedup_table(repeated), "zig-sqlite-memory vs python")
    assert ratios[("GET health", "1")] == "11.1×"  # 9180 / 828.65


def test_no_repetition_column_for_cells_that_ran_once(results: list[Result]) -> None:
    [table] = build(results).sections[0].tables
    assert "n" not in [c.header for c in table.columns]


def test_baseline_compares_merged_runs(results: list[Result]) -> None:
    zig = by_cell(results, "zig-sqlite-memory")
    before = runs(zig, [1.0, 1.01, 0.99, 1.0], "before-")
    # each later run repeated twice, at 0.7× and 0.9×: merged, 0.8×, one value per run
    after = [
        r.model_copy(
            update={
                "repetition": k,
                "endpoints": [ep.model_copy(update={"rps": ep.rps * scale}) for ep in r.endpoints],
            }
        )
        for r in runs(zig, [1.0] * 4, "after-")
        for k, scale in ((1, 0.7), (2, 0.9))
    ]
    values = column(baseline_table(before, after), "zig-sqlite-memory (4 vs 4 runs)")
    assert values[("GET flow", "1")] == "0.80× p=0.029"
