"""compare and --repeat auto's arithmetic on repetitions made from a stored result: scaled copies
with known noise, so what must and must not be found is known; and the metric table that names
the figures compare gates and the report's baseline shows."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from bench.cells import repeat
from bench.cli import EXIT_FAILED, EXIT_OK, EXIT_USAGE, main
from bench.compare import gate as comparison
from bench.compare import metrics
from bench.compare.change import Figure, correct
from bench.compare.metrics import METRICS, TOTAL, Metric
from bench.core.errors import ConfigError
from bench.report.compare import baseline_section
from bench.results import Result, load_result, write_result
from tests.helpers import RESOURCES

RESOURCE = RESOURCES / "report/20261126T164000Z-3f2a/python-sqlite-memory.json"


def repetitions(n: int, scale: float = 1.0, noise: float = 0.01, seed: int = 0) -> list[Result]:
    """n copies of the stored result, every rate × scale × (1 ± noise), latencies / scale."""
    base = load_result(RESOURCE)
    rng = random.Random(seed)
    out = []
    for k in range(1, n + 1):
        r = base.model_copy(deep=True)
        r.repetition = k
        for ep in r.endpoints:
            factor = scale * (1 + rng.gauss(0, noise))
            ep.rps *= factor
            if ep.latency_ms:
                ep.latency_ms.p50 /= factor
                ep.latency_ms.p99 /= factor
        out.append(r)
    return out


def write(folder: Path, results: list[Result]) -> Path:
    for r in results:
        write_result(r, repeat.repetition_path(folder, r.run_id, r.cell, r.repetition or 1))
    return folder


def test_same_server_four_runs_a_side_finds_nothing() -> None:
    result = comparison.compare(repetitions(4, seed=1), repetitions(4, seed=2))
    assert len(result.figures) == 6 * 3 + 1  # rps, p50, p99 per endpoint × level, the total
    assert not [f for f in result.figures if f.significant]
    assert not comparison.gate(result.figures, [comparison.parse_rule("rps<-5%")])


def test_a_slowdown_everywhere_fails_the_gate_and_names_the_figures() -> None:
    result = comparison.compare(repetitions(4, seed=1), repetitions(4, scale=0.8, seed=2))
    failing = comparison.gate(result.figures, [comparison.parse_rule("rps<-5%")])
    names = {f.name for f in failing}
    assert "total" in names and "GET flow c=4" in names
    assert all(f.metric == "rps" and f.change_pct < -15 for f in failing)
    total = next(f for f in result.figures if f.name == "total")
    assert total.low is not None and total.high is not None
    assert total.low <= total.ratio <= total.high < 0.85


def test_a_change_below_the_threshold_is_significant_but_does_not_fail() -> None:
    result = comparison.compare(repetitions(4, seed=1), repetitions(4, scale=0.97, seed=2))
    assert any(f.significant for f in result.figures)
    assert not comparison.gate(result.figures, [comparison.parse_rule("rps<-5%")])


def test_latency_rules_fail_on_latency_only() -> None:
    result = comparison.compare(repetitions(4, seed=1), repetitions(4, scale=0.8, seed=2))
    failing = comparison.gate(result.figures, [comparison.parse_rule("p99>+10%")])
    assert failing and all(f.metric == "p99" for f in failing)


@pytest.mark.parametrize("text", ["rps<5", "latency>+10%", "p99 >> 10%", "", "rps<-5%%"])
def test_a_malformed_rule_is_one_line_with_an_example(text: str) -> None:
    with pytest.raises(ConfigError, match=r"e\.g\. --fail-on 'rps<-5%'") as caught:
        comparison.parse_rule(text)
    # the message names every metric of the table, its unit and which way is better
    assert "\n" not in str(caught.value)
    assert all(m.text in str(caught.value) for m in METRICS.values())
    assert "p99 (ms, lower is better)" in str(caught.value)


@pytest.mark.parametrize("name", list(METRICS))
def test_every_metric_of_the_table_is_a_rule(name: str) -> None:
    assert comparison.parse_rule(f"{name}<-5%") == comparison.Rule(name, True, -5.0)
    assert comparison.parse_rule(f" {name} > +10.5 % ").text == f"{name}>+10.5%"


def cpu_us(seconds: float | None) -> float | None:
    return None if seconds is None else 1e6 * seconds


# A gated figure the table does not have yet: the load generator's CPU per request.
CPU = Metric(
    "cpu",
    "lower",
    "µs",
    lambda ep: cpu_us(ep.client_cpu_s_per_request),
    lambda sc: cpu_us(sc.client_cpu_s_per_step),
)


def test_a_new_gated_figure_is_one_row(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(metrics.METRICS, CPU.name, CPU)
    before, after = repetitions(6, seed=1), repetitions(6, seed=2)
    for r in after:
        for ep in r.endpoints:
            ep.client_cpu_s_per_request = 1.5 * (ep.client_cpu_s_per_request or 0.0)
    rule = comparison.parse_rule("cpu>+10%")  # the grammar
    result = comparison.compare(before, after)  # the figures tested
    failing = comparison.gate(result.figures, [rule])
    assert {f.name for f in failing} == {
        f"{ep.name} c={ep.concurrency}" for ep in after[0].endpoints
    }
    assert all(f.metric == "cpu" and f.change_pct == pytest.approx(50) for f in failing)
    section = baseline_section(before, after)  # the report's change columns
    [table] = section.tables
    header = "python-sqlite-memory (6 vs 6 runs) cpu"
    assert header in [c.header for c in table.columns]
    index = [c.header for c in table.columns].index(header)
    values = {(row[0].text, row[1].text): row[index] for row in table.rows}
    assert values[("GET flow", "4")].text.startswith("1.50× p=")
    assert values[("GET flow", "4")].tone == "bad"  # lower is better, and it rose
    assert values[("total", "4")].text == "-"  # not summed: no total
    assert "cpu (µs, lower is better)" in section.paragraphs[0]


def test_settings_and_machines_that_differ_are_named() -> None:
    after = repetitions(4)
    for r in after:
        r.config.duration_s = 10.0
        r.environment.hostname = "elsewhere"
    lines = comparison.compare(repetitions(4), after).differences
    assert any("duration_s" in line for line in lines)
    assert any("hostname" in line and "elsewhere" in line for line in lines)


def test_one_server_against_another_pairs_by_db_and_broker() -> None:
    after = repetitions(4)
    for r in after:
        r.cell = r.cell.model_copy(update={"server": "zig"})
    result = comparison.compare(repetitions(4), after)
    assert result.pairs == [("python-sqlite-memory", "zig-sqlite-memory")]


def test_aa_counts_false_alarms_and_a_noise_floor() -> None:
    calibration = comparison.calibrate(
        "python-sqlite-memory", repetitions(8, noise=0.05), 4, [comparison.parse_rule("rps<-5%")]
    )
    assert calibration.splits == 35  # C(8,4) / 2: each pair of disjoint sides once
    assert 0 <= calibration.false_positive_rate <= 0.2
    assert 1 < calibration.total_cv_pct < 5
    assert calibration.detectable_pct > calibration.total_cv_pct  # 4 runs cannot see below CV
    assert calibration.fewest_figures > 1  # at 4 a side one figure alone never passes BH
    with pytest.raises(ConfigError, match="needs 8"):
        comparison.calibrate("x", repetitions(7), 4, [])


def test_compare_command_exit_codes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    before = write(tmp_path / "before", repetitions(4, seed=1))
    same = write(tmp_path / "same", repetitions(4, seed=2))
    slower = write(tmp_path / "slower", repetitions(4, scale=0.8, seed=3))
    assert main(["compare", str(before), str(same), "--fail-on", "rps<-5%"]) == EXIT_OK
    assert "**PASS**" in capsys.readouterr().out
    out_md = tmp_path / "pr.md"
    code = main(["compare", str(before), str(slower), "--fail-on", "rps<-5%", "--out", str(out_md)])
    captured = capsys.readouterr()
    assert code == EXIT_FAILED
    assert "breaks rps<-5%" in captured.err and "total rps" in captured.err
    assert "**FAIL**" in out_md.read_text()
    assert main(["compare", str(before), str(tmp_path / "missing")]) == EXIT_USAGE
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["compare", str(before), str(empty)]) == EXIT_USAGE
    assert "AFTER holds no ok result" in capsys.readouterr().err


def test_compare_aa_keeps_its_calibration_beside_the_results(tmp_path: Path) -> None:
    folder = write(tmp_path / "aa", repetitions(8, noise=0.03))
    assert main(["compare", "--aa", str(folder), "--fail-on", "rps<-5%"]) == EXIT_OK
    (kept,) = folder.glob("report.aa-*.json")
    assert '"false_alarms"' in kept.read_text()
    assert list(folder.glob("report.aa-*.md"))


def test_auto_stops_at_the_target_and_not_before_three() -> None:
    quiet = repetitions(3, noise=0.002)
    assert repeat.decide("auto", 3.0, quiet[:2], None, 10).stopped is None
    state = repeat.decide("auto", 3.0, quiet, None, 10)
    assert state.stopped == "target" and state.widest_pct is not None and state.widest_pct <= 3
    noisy = repetitions(3, noise=0.2)
    assert repeat.decide("auto", 3.0, noisy, None, 10).stopped is None


def test_auto_budget_runs_two_at_least() -> None:
    noisy = repetitions(2, noise=0.2)
    first = repeat.decide("auto", 3.0, noisy[:1], seconds_left=1, seconds_per_repetition=10)
    assert first.stopped is None and first.over_budget
    assert repeat.decide("auto", 3.0, noisy, 1, 10).stopped == "budget"
    assert repeat.decide("auto", 3.0, noisy, 100, 10).stopped is None
    assert repeat.decide(2, 3.0, noisy, None, 10).stopped == "count"


def _family(total_p: float, others_p: list[float]) -> list[Figure]:
    """A cell's total rate and its other figures, tested, with these p-values."""
    figures = [Figure("c", TOTAL, "rps", [1.0], [1.0], p_value=total_p)]
    figures += [
        Figure("c", f"e{i}", "rps", [1.0], [1.0], p_value=p) for i, p in enumerate(others_p)
    ]
    correct(figures)
    return figures


def test_the_total_gets_most_of_the_correction_and_hands_it_on_once_it_passed() -> None:
    # a total at p 0.02 among 18 noisy figures: unweighted its bar was 0.05/19
    total, *others = _family(0.02, [0.5] * 18)
    assert total.significant and not any(f.significant for f in others)
    assert total.p_adjusted == pytest.approx(0.02 * 19 / (0.8 * 19))
    # never below its own p-value, however many others changed
    total, *others = _family(0.3, [0.0001] * 18)
    assert not total.significant and all(f.significant for f in others)
    # the others alone share a fifth: 0.03 each would not pass; the total passed, so they do
    assert not any(f.significant for f in _family(0.5, [0.03] * 18)[1:])
    assert all(f.significant for f in _family(0.001, [0.03] * 18))


def test_the_weights_keep_the_false_alarm_rate_of_figures_that_did_not_change() -> None:
    rng = random.Random(7)
    trials = 4000
    alarms = sum(
        any(f.significant for f in _family(rng.random(), [rng.random() for _ in range(18)]))
        for _ in range(trials)
    )
    assert 0.03 < alarms / trials <= 0.055  # the total's 0.04 and the rest's 0.01, about
