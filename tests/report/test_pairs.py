"""The report's pairs: every server of a run against its first, paired by round."""

from __future__ import annotations

from bench.report.pairs import pairs_section
from tests.compare.test_paired import drifting_run


def test_a_slower_server_of_the_run_is_shown_paired_with_its_rounds() -> None:
    plain, dev = drifting_run(6, slowdown=0.06)
    dev[3].status, dev[3].error = "failed", "the server died"
    section = pairs_section([*plain, *dev])
    assert section is not None
    (table,) = section.tables
    rows = {(row[0].text, row[1].text): row for row in table.rows}
    total = rows[("python-sqlite-memory → python-dev-sqlite-memory", "total rps")]
    assert total[2].text == "5"  # rounds: 6, one of them failed on one side
    assert total[3].text.startswith("-") and total[3].tone == "bad", total
    (chart,) = section.charts
    solid, dashed = chart.series
    assert [x for x, _ in solid.points] == [1, 2, 3, 4, 5]
    assert dashed.style == "dashed" and solid.key == "python-dev-sqlite-memory"
    assert section.notes == [
        "python → python-dev: round 4: python-sqlite-memory left out, "
        "python-dev-sqlite-memory has no counted repetition in it"
    ]


def test_one_server_or_one_round_is_no_pair() -> None:
    plain, dev = drifting_run(1, slowdown=0.06)
    assert pairs_section(plain) is None
    assert pairs_section([*plain, *dev]) is None  # one round after the warm-up
