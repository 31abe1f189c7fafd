"""`compare` on cost results (--cost): instructions gated with each block a sample, cost never
set beside wall-clock figures, and where the cost went, read from the kept callgrind dumps."""

from __future__ import annotations

import gzip
import json
import random
from collections.abc import Sequence
from pathlib import Path

import pytest

from bench.cli import EXIT_FAILED, EXIT_OK, EXIT_USAGE, main
from bench.compare import gate as comparison
from bench.compare.metrics import readings
from bench.cost.functions import costed, read_dump
from bench.results import Cost, Result, ScenarioResult, load_result
from bench.results.schema import SERVICES_STEP
from tests.compare.test_gate import repetitions, write

# A callgrind dump as valgrind 3.19 writes one, with names compressed ("(2) name" defines 2,
# "(2)" refers to it), a call's inclusive cost after its `calls=` line, and a recursion level.
DUMP = """# callgrind format
version: 1
creator: callgrind-3.19.0
positions: line
events: Ir

ob=(1) /usr/lib/libpython3.11.so.1.0
fl=(1) ceval.c
fn=(1) _PyEval_EvalFrameDefault
0 {eval}
cob=(2) /usr/lib/libcrypto.so.3
cfn=(2) sha256_block_data_order
calls=1 0
0 {extra}
+2 100
fn=(3) _PyEval_EvalFrameDefault'2
0 500
ob=(2)
fn=(2)
0 {extra}
totals: {total}
"""


def dump(path: Path, extra: int, eval_: int = 1000) -> Path:
    """A gzip-compressed dump of one block: `extra` instructions in sha256."""
    text = DUMP.format(eval=eval_, extra=extra, total=eval_ + 100 + 500 + extra)
    path.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(path, "wt") as f:
        f.write(text)
    return path


def cost_results(
    folder: Path, extra: int, seed: int, repeat: int = 1, servers: Sequence[int] = ()
) -> Path:
    """Cost results of the stored cell (one level: c=1), each endpoint's blocks ~1,000,000
    instructions a request (+`extra`) apart by 0.05%, with dumps that put `extra` in sha256;
    `servers`: each repetition's own further instructions a request (fresh servers differ)."""
    rng = random.Random(seed)
    results = []
    servers = list(servers) or [0] * repeat
    for k, result in enumerate(repetitions(len(servers)), start=1):
        result.config.cost = True
        result.config.concurrency = [1]
        result.endpoints = [ep for ep in result.endpoints if ep.concurrency == 4]
        run_dir = folder / result.run_id
        for ep in result.endpoints:
            ep.concurrency = 1
            kept = []
            for block in (1, 2, 3):
                name = f"{result.cell.name}/callgrind/{ep.name.replace(' ', '-')}.{k}{block}.gz"
                dump(run_dir / name, extra * 2, eval_=2000 + rng.randrange(3))
                kept.append(name)
            blocks = [1e6 + extra + servers[k - 1] + rng.gauss(0, 500) for _ in range(3)]
            ep.cost = Cost(
                per_request=sum(blocks) / 3,
                spread_pct=(max(blocks) - min(blocks)) / 1e4,
                blocks=3,
                requests_per_block=2,
                block_per_request=blocks,
                callgrind=kept,
            )
        results.append(result)
    return write(folder, results)


def test_instructions_are_read_per_block_and_tested_with_three_a_side(tmp_path: Path) -> None:
    before = cost_results(tmp_path / "before", 0, seed=1)
    after = cost_results(tmp_path / "after", 20_000, seed=2)  # +2%
    sides = [comparison.counted(load(p)) for p in (before, after)]
    result = comparison.compare(*sides)
    assert {f.metric for f in result.figures} == {"instructions"}  # no timed figure of a cost run
    assert all(len(f.before) == 3 and f.per_block for f in result.figures)
    assert all(f.significant and 1.5 < f.change_pct < 2.5 for f in result.figures)
    failing = comparison.gate(result.figures, [comparison.parse_rule("instructions>+1%")])
    assert len(failing) == len(result.figures)
    assert not comparison.gate(result.figures, [comparison.parse_rule("instructions>+3%")])


def test_several_servers_a_side_are_tested_by_their_means(tmp_path: Path) -> None:
    """Blocks of one server 0.05% apart, fresh servers up to 1.4% apart (as measured here): one
    server a side, the blocks call that a change; three a side, the servers' means do not, and
    a real 5% still shows."""
    rule = [comparison.parse_rule("instructions>+1%")]

    def compared(before: Sequence[int], after: Sequence[int]) -> list[comparison.Figure]:
        sides = [
            comparison.counted(
                load(cost_results(tmp_path / "-".join(map(str, s)), 0, k, servers=s))
            )
            for k, s in enumerate((before, after))
        ]
        figures = comparison.compare(*sides).figures
        comparison.gate(figures, rule)
        return figures

    one = compared([0], [14_000])
    assert all(f.test == "blocks" and f.broken for f in one)  # what one server a side cannot see
    same = compared([0, 14_000, 7_000], [10_000, 2_000, 12_000])
    assert all(f.test == "servers" and len(f.before) == 3 for f in same)
    assert not any(f.broken or f.significant for f in same)
    slower = compared([0, 14_000, 7_001], [60_000, 52_000, 62_000])  # +5%
    assert all(f.test == "servers" and f.broken and 4 < f.change_pct < 6 for f in slower)


def test_one_server_a_side_says_what_its_blocks_cannot_show(tmp_path: Path) -> None:
    sides = [
        comparison.counted(load(cost_results(tmp_path / s, 0, seed=k))) for k, s in enumerate("ab")
    ]
    markdown = comparison.render(comparison.compare(*sides), [], [])
    assert "one server a side" in markdown and "`--repeat 3`" in markdown


def load(folder: Path) -> list[Result]:
    return [load_result(p) for p in sorted(folder.rglob("*.json"))]


def test_compare_gates_cost_and_says_where_it_went(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before = cost_results(tmp_path / "before", 0, seed=1)
    same = cost_results(tmp_path / "same", 0, seed=3)
    slower = cost_results(tmp_path / "slower", 20_000, seed=2)
    gate = ["--fail-on", "instructions>+1%"]
    assert main(["compare", str(before), str(same), *gate]) == EXIT_OK
    capsys.readouterr()
    assert main(["compare", str(before), str(slower), *gate]) == EXIT_FAILED
    out = capsys.readouterr()
    assert "breaks instructions>+1%" in out.err
    assert "### Where the cost went" in out.out
    # the dumps: sha256 went from 0 to 20,000 a block of 2 requests, all of the change
    row = next(line for line in out.out.splitlines() if "sha256_block_data_order" in line)
    assert row.startswith("| `sha256_block_data_order (libcrypto.so.3)` | 0 | 20,000 | +20,000")
    assert "+100%" in row


def test_compare_json_is_the_verdict_as_data_and_never_overwrites(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before = cost_results(tmp_path / "before", 0, seed=1)
    slower = cost_results(tmp_path / "slower", 20_000, seed=2)
    kept = tmp_path / "verdict.json"
    args = ["compare", str(before), str(slower), "--fail-on", "instructions>+1%"]
    assert main([*args, "--json", str(kept)]) == EXIT_FAILED
    verdict = json.loads(kept.read_text())
    assert verdict["schema_version"] == 1 and verdict["verdict"] == "fail"
    assert verdict["rules"] == ["instructions>+1%"] and not verdict["paired"]
    figures = verdict["figures"]
    assert figures and all(f["test"] == "blocks" and f["significant"] for f in figures)
    assert all(f["broken"] == ["instructions>+1%"] and 1.5 < f["change_pct"] < 2.5 for f in figures)
    assert all(f["low_pct"] < f["change_pct"] < f["high_pct"] for f in figures)
    capsys.readouterr()
    assert main([*args, "--json", str(kept)]) == EXIT_USAGE  # never overwritten
    assert f"{kept} exists" in capsys.readouterr().err


def test_cost_and_wall_clock_are_never_compared(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cost = cost_results(tmp_path / "cost", 0, seed=1)
    timed = write(tmp_path / "timed", repetitions(4))
    for args in ([str(cost), str(timed)], [str(timed), str(cost), "--allow-different"]):
        assert main(["compare", *args]) == EXIT_USAGE
        err = capsys.readouterr().err
        assert "measure different things" in err and "cost" in err and "wall-clock" in err


def test_a_rule_with_nothing_to_gate_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    timed = [write(tmp_path / side, repetitions(4, seed=k)) for k, side in enumerate("ab")]
    assert main(["compare", *map(str, timed), "--fail-on", "instructions>+1%"]) == EXIT_USAGE
    assert "no figure of instructions" in capsys.readouterr().err
    cost = [cost_results(tmp_path / f"c{side}", 0, seed=k) for k, side in enumerate("ab")]
    assert main(["compare", *map(str, cost), "--fail-on", "rps<-5%"]) == EXIT_USAGE
    assert "cost runs are gated on instructions" in capsys.readouterr().err


def test_aa_of_cost_runs_splits_single_repetitions(tmp_path: Path) -> None:
    folder = cost_results(tmp_path / "aa", 0, seed=4, repeat=4)
    results = load(folder)
    calibration = comparison.calibrate(
        results[0].cell.name, results, 1, [comparison.parse_rule("instructions>+1%")]
    )
    assert calibration.splits == 6  # 4 repetitions, 1 a side: C(4,2)
    assert calibration.false_alarms == 0
    assert 0 < calibration.largest_change_pct < 0.5  # blocks 0.05% apart
    assert main(["compare", "--aa", str(folder), "--fail-on", "instructions>+1%"]) == EXIT_OK
    (kept,) = folder.glob("report.aa-*.md")
    assert "instructions" in kept.read_text()


def test_a_dump_is_read_as_callgrind_defines_it(tmp_path: Path) -> None:
    found = read_dump(dump(tmp_path / "a.gz", 300))
    eval_ = "_PyEval_EvalFrameDefault (libpython3.11.so.1.0)"
    sha = "sha256_block_data_order (libcrypto.so.3)"
    assert found.total == 1000 + 100 + 500 + 300  # a call's cost is not the caller's own
    assert found.exclusive == {eval_: 1600, sha: 300}  # the recursion level added to its own
    assert found.inclusive[eval_] == 1000 + 300 + 100  # the outermost level, the call included
    assert found.inclusive[sha] == 300


def test_the_services_cost_per_run_is_a_figure_beside_the_steps() -> None:
    (result,) = repetitions(1)
    blocks = [5e6, 5.1e6]
    services = Cost(
        per_request=5.05e6,
        spread_pct=2.0,
        blocks=2,
        requests_per_block=2,
        block_per_request=blocks,
        callgrind=["c/callgrind/its-services.1.gz"],
    )
    result.scenarios = [
        ScenarioResult(
            name="flow run, 2 tasks",
            concurrency=1,
            duration_s=1.0,
            completed=4,
            per_s=4.0,
            duration_ms=None,
            services_cost=services,
        )
    ]
    (reading,) = [r for r in readings(result) if r.step == SERVICES_STEP]
    assert reading.name == "flow run, 2 tasks c=1 (its services)"
    assert reading.samples("instructions") == blocks
    assert ("flow run, 2 tasks: (its services)", services) in costed(result)


def test_an_unsure_cost_figure_asks_for_blocks_not_repetitions(tmp_path: Path) -> None:
    before = cost_results(tmp_path / "before", 0, seed=1)
    after = cost_results(tmp_path / "after", 20_000, seed=2)  # +2%, against a +2% rule
    result = comparison.compare(*[comparison.counted(load(p)) for p in (before, after)])
    rules = [comparison.parse_rule("instructions>+2.1%")]
    failing = comparison.gate(result.figures, rules)
    texts = [u.text() for u in comparison.unsure(result.figures, rules)]
    assert texts and any(t.endswith(" blocks a side") for t in texts), texts
    assert not any("repetitions" in t or "rounds" in t for t in texts), texts
    markdown = comparison.render(result, rules, failing)
    assert "**Unsure**" in markdown and " blocks a side" in markdown
