"""A cost cell's kept dumps: compressed beside its result, never over an earlier repetition's."""

from __future__ import annotations

import gzip
from pathlib import Path

from bench.cost.blocks import Counted
from bench.cost.endpoints import keep


def test_a_second_repetition_keeps_its_dumps_beside_the_first_s(tmp_path: Path) -> None:
    run_dir, into = tmp_path / "run", tmp_path / "run" / "cell" / "callgrind"
    kept = []
    for repetition in (1, 2):
        dumps = []
        for block in (1, 2):
            raw = tmp_path / f"callgrind.out.{repetition}.{block}"
            raw.write_text(f"totals: {repetition}{block}\n")
            dumps.append(raw)
        kept.append(keep(Counted("GET flow", dumps=dumps), into, run_dir))
    assert kept == [
        ["cell/callgrind/GET-flow.1.callgrind.gz", "cell/callgrind/GET-flow.2.callgrind.gz"],
        ["cell/callgrind/GET-flow.3.callgrind.gz", "cell/callgrind/GET-flow.4.callgrind.gz"],
    ]
    texts = [gzip.decompress((run_dir / p).read_bytes()).decode() for rep in kept for p in rep]
    assert texts == ["totals: 11\n", "totals: 12\n", "totals: 21\n", "totals: 22\n"]
    assert not list(tmp_path.glob("callgrind.out.*"))  # the raw ones removed
