"""Two servers of one run compared round by round (`compare RUN --before A --after B`): a
machine whose speed drifts between rounds hides a change from the unpaired test and not from
the paired one; rounds without a pair are left out and named; bad input in one line."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import pytest

from bench.cli import EXIT_FAILED, EXIT_OK, EXIT_USAGE, main
from bench.compare import gate as comparison
from bench.compare.change import Figure, measure_change
from bench.core.errors import ConfigError
from bench.results import Result
from tests.compare.test_gate import repetitions, write

RPS = [comparison.parse_rule("rps<-5%")]


def drifting_run(
    rounds: int, slowdown: float, drift: float = 0.15, noise: float = 0.01, seed: int = 0
) -> tuple[list[Result], list[Result]]:
    """Servers `python` and `python-dev` measured in one run of `rounds` rounds after a
    warm-up: in each round the machine runs at a speed drawn within ±`drift` (both servers
    alike), python-dev `slowdown` slower, each endpoint with its own `noise`."""
    rng = random.Random(seed)
    plain = repetitions(rounds + 1, noise=noise, seed=seed + 1)
    dev = repetitions(rounds + 1, scale=1 - slowdown, noise=noise, seed=seed + 2)
    for a, b in zip(plain, dev, strict=True):
        b.cell = b.cell.model_copy(update={"server": "python-dev"})
        speed = 1 + rng.uniform(-drift, drift)
        for r in (a, b):
            r.discarded = "warm-up" if r.repetition == 1 else None
            for ep in r.endpoints:
                ep.rps *= speed
    return plain, dev


def test_a_slowdown_hidden_by_drift_unpaired_is_found_paired() -> None:
    plain, dev = drifting_run(6, slowdown=0.06)
    unpaired = comparison.compare(plain, dev)
    assert not comparison.gate(unpaired.figures, RPS), "the drift hides it between groups"
    paired = comparison.compare(plain, dev, paired=True)
    assert paired.repetitions == {"python-sqlite-memory → python-dev-sqlite-memory": (6, 6)}
    failing = comparison.gate(paired.figures, RPS)
    assert {f.name for f in failing} >= {"total", "GET flow c=4"}, [f.name for f in failing]
    total = next(f for f in paired.figures if f.name == "total" and f.metric == "rps")
    assert total.pairs and total.low is not None and total.high is not None
    assert total.low < 0.94 * 1.02 and total.high < 0.95
    assert 0.92 < total.ratio < 0.96
    # what "no change" would mean: 1% noise per endpoint lets 6 rounds see ~0.5% in the total
    assert total.detectable_pct is not None and 0.2 < total.detectable_pct < 2
    text = comparison.render(paired, RPS, failing)
    assert "Paired by round" in text and "**FAIL**" in text
    assert f"| ±{total.detectable_pct:.1f}% |" in text and "| detectable |" in text
    assert "Unpaired" in comparison.render(unpaired, RPS, [])


def test_the_same_server_twice_paired_finds_nothing() -> None:
    plain, other = drifting_run(6, slowdown=0.0, seed=3)
    paired = comparison.compare(plain, other, paired=True)
    assert not comparison.gate(paired.figures, RPS)
    total = next(f for f in paired.figures if f.name == "total" and f.metric == "rps")
    assert total.low is not None and total.high is not None
    assert total.low < 1 < total.high


def test_rounds_without_a_pair_are_left_out_and_named() -> None:
    plain, dev = drifting_run(6, slowdown=0.0)
    dev[2].status, dev[2].error = "failed", "the server died"  # round 3: dev failed
    plain[4].status, plain[4].error = "failed", "interrupted"  # round 5 cut, run again as 8
    again = plain[4].model_copy(deep=True)
    again.status, again.error, again.repetition = "ok", None, 8
    result = comparison.compare([*plain, again], dev, paired=True)
    # python's turns: 1 (warm-up) 2 3 4 [5 interrupted] 6 7 8; dev's: 1 2 [3 failed] 4 … 7
    assert result.repetitions == {"python-sqlite-memory → python-dev-sqlite-memory": (5, 5)}
    assert result.dropped == [
        "round 3: python-sqlite-memory left out, python-dev-sqlite-memory has no counted "
        "repetition in it"
    ]
    assert "- not paired: round 3:" in comparison.render(result, [], [])


def test_a_figure_with_a_zero_is_tested_unpaired() -> None:
    figure = Figure("c", "f", "rps", [1.0, 2.0, 3.0], [0.0, 2.0, 3.5], paired=True)
    assert not figure.pairs  # a scenario that completed nothing in a round has no log ratio
    measure_change(figure)
    assert math.isclose(figure.ratio, 5.5 / 6)  # the ratio of the means, not of the rounds


def test_split_servers_names_what_the_run_holds() -> None:
    plain, dev = drifting_run(2, slowdown=0.0)
    with pytest.raises(ConfigError, match="--after zig: no such server in the run; it has py"):
        comparison.split_servers([*plain, *dev], "python", "zig")
    with pytest.raises(ConfigError, match="the same server"):
        comparison.split_servers([*plain, *dev], "python", "python")
    other = dev[0].model_copy(update={"run_id": "20261207T000000Z-ffff"})
    with pytest.raises(ConfigError, match="of one run"):
        comparison.split_servers([*plain, other], "python", "python-dev")


def test_compare_command_pairs_two_servers_of_a_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = write(
        tmp_path / "run", [*(r for pair in [drifting_run(6, 0.06)] for s in pair for r in s)]
    )
    args = ["compare", str(run), "--before", "python", "--after", "python-dev"]
    assert main([*args, "--fail-on", "rps<-5%"]) == EXIT_FAILED
    out = capsys.readouterr()
    assert "Paired by round" in out.out and "breaks rps<-5%" in out.err
    assert main([*args, "--fail-on", "rps<-10%"]) == EXIT_OK
    capsys.readouterr()
    for bad, says in (
        (["compare", str(run), "--before", "python"], "--before and --after go together"),
        (["compare", str(run), *args[1:]], "--before/--after take one run's DIR"),
        ([*args, "--aa", "--size", "6"], "6 rounds paired; a paired A/A at --size 6 needs"),
        (["compare", str(run)], "compare takes BEFORE AFTER (or one run's DIR"),
    ):
        assert main(bad) == EXIT_USAGE, bad
        assert says in capsys.readouterr().err, bad


def test_a_paired_aa_gates_every_subset_of_the_rounds(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """One server under two names, 8 rounds on a drifting machine: 70 subsets of 4 rounds,
    each compared paired; the gate never fires, and the total's detectable change is the
    paired test's (1% noise per endpoint: well under 5%)."""
    plain, copy = drifting_run(8, slowdown=0.0, seed=4)
    run = write(tmp_path / "run", [*plain, *copy])
    args = ["compare", str(run), "--before", "python", "--after", "python-dev", "--aa"]
    assert main([*args, "--fail-on", "rps<-5%"]) == EXIT_OK
    assert "compared paired on every subset of its rounds" in capsys.readouterr().out
    (kept,) = run.glob("report.aa-*.json")
    (cell,) = json.loads(kept.read_text())["cells"]
    assert cell["cell"] == "python-sqlite-memory → python-dev-sqlite-memory"
    assert (cell["repetitions"], cell["size"], cell["splits"]) == (8, 4, 70)
    assert cell["false_alarms"] == 0
    assert 0 < cell["detectable_pct"] < 5 and 0 < cell["total_noise_pct"] < 5, cell
    assert 0 < cell["total_cv_pct"] < 2, cell  # the rounds' log ratio: drift cancelled


def test_figures_whose_interval_holds_the_threshold_are_unsure_with_the_rounds_to_tell() -> None:
    plain, dev = drifting_run(6, slowdown=0.05, noise=0.03, seed=5)
    paired = comparison.compare(plain, dev, paired=True)
    undecided = comparison.unsure(paired.figures, RPS)
    assert undecided, "a 5% change against a 5% threshold cannot be told apart"
    for u in undecided:
        assert u.figure.metric == "rps" and u.rule == RPS[0]
        assert u.figure.low is not None and u.figure.high is not None
        assert u.figure.low < 0.95 < u.figure.high
        assert u.more is None or u.more > 6  # more rounds than it had
        assert u.text() in ("on the threshold", "over 60 rounds", f"~{u.more} rounds")
    text = comparison.render(paired, RPS, comparison.gate(paired.figures, RPS))
    assert "**Unsure**" in text and " rounds" in text
    # far from the threshold every figure is decided
    plain, same = drifting_run(6, slowdown=0.0, noise=0.01, seed=5)
    clear = comparison.compare(plain, same, paired=True)
    assert comparison.unsure(clear.figures, RPS) == []
    assert "Unsure" not in comparison.render(clear, RPS, [])
