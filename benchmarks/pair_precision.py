"""How precise a paired comparison of two servers is (issue 23's precision goals): three
servers, `python`, `python-copy` (the same server under another name: the A/A) and
`python-dev` (the same under PYTHONDEVMODE=1: a real slowdown of 12-14%), measured by one of
two designs, then `compare RUN --before python --after X` paired by round on the first 4, 6
and 8 counted rounds:

- `--design rounds`: one matrix of the three, in rounds, each cell a fresh server (as the
  matrix runs them);
- `--design together`: `run --server python --beside python-copy --beside python-dev`, the
  three up at once, each endpoint's windows alternating between them round after round.

For each comparison and number of rounds it prints the total's change with its 95% interval
and detectable change, the median and widest interval half-width over the endpoints (or
steps), and how many figures the gate called significant (in the A/A each one is a false
alarm). The A/A measured in the same run is the reference: the slowdown is told only where its
interval leaves 0% and the A/A's holds it.

    .nox/tests/bin/python benchmarks/pair_precision.py [--design rounds|together]
        [--rounds 8] [--duration 2] [--concurrency 4] [--workload seed] [--db sqlite]
        [--broker memory]

Either runs the real product (`python -m bench`), a warm-up round first; with the defaults
the matrix takes about 16 minutes here (27 cells of 35 s), the servers together about 10.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.compare import gate
from bench.compare.metrics import TOTAL
from bench.results import Result, load_result

SERVERS = """
[servers.python-copy]
extends = "python"
description = "the python server under another name: an A/A"

[servers.python-dev]
extends = "python"
description = "the python server under PYTHONDEVMODE=1: a known slowdown"

[servers.python-dev.env]
PYTHONDEVMODE = "1"
"""


def measure(folder: Path, args: argparse.Namespace) -> list[Result]:
    """Measure the three servers by `args.design` into `folder`; the results."""
    servers = folder / "servers.toml"
    servers.write_text(SERVERS)
    design = (
        ["matrix", "--server", "python", "--server", "python-copy", "--server", "python-dev"]
        if args.design == "rounds"
        else ["run", "--server", "python", "--beside", "python-copy", "--beside", "python-dev"]
    )
    argv = [
        sys.executable, "-m", "bench", *design, "--servers", str(servers),
        "--db", args.db, "--broker", args.broker, "--out", str(folder / "results"),
        "--repeat", str(args.rounds), "--duration", str(args.duration),
        "--concurrency", str(args.concurrency), "--workload", args.workload,
    ]  # fmt: skip
    subprocess.run(argv, cwd=folder, check=False, stdout=subprocess.DEVNULL)
    return [load_result(p) for p in sorted((folder / "results").rglob("*.json"))
            if p.name[0] != "." and not p.name.startswith("report")]  # fmt: skip


def half_width_pct(figure: gate.Figure) -> float:
    if figure.low is None or figure.high is None:
        return float("nan")
    return 50 * (figure.high - figure.low)


def line(results: list[Result], after: str, rounds: int) -> str:
    """The paired comparison of python and `after` on the first `rounds` counted rounds."""
    kept = [r for r in results if (r.repetition or 1) <= rounds + 1]  # + the warm-up
    before_side, after_side = gate.split_servers(kept, "python", after)
    result = gate.compare(before_side, after_side, paired=True)
    total = next(f for f in result.figures if f.name == TOTAL and f.metric == "rps")
    parts = [f for f in result.figures if f.name != TOTAL and f.metric == "rps"]
    widths = sorted(half_width_pct(f) for f in parts)
    significant = sum(f.significant for f in result.figures)
    return (
        f"{after:<12} {rounds:>2} rounds  total {total.change_pct:+6.1f}% "
        f"(95% {100 * ((total.low or 1) - 1):+.1f} … {100 * ((total.high or 1) - 1):+.1f}%, "
        f"±{half_width_pct(total):.1f}, detectable {total.detectable_pct or float('nan'):.1f}%)  "
        f"parts ±{statistics.median(widths):.1f}% median, ±{widths[-1]:.1f}% widest  "
        f"significant {significant} of {len(result.figures)}"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--design", choices=("rounds", "together"), default="together")
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--duration", type=float, default=2.0)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--workload", default="seed")
    parser.add_argument("--db", default="sqlite")
    parser.add_argument("--broker", default="memory")
    args = parser.parse_args()
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="pair-precision-") as tmp:
        results = measure(Path(tmp), args)
        if not results:
            print(f"{args.design}: no result written", file=sys.stderr)
            return 1
        print(f"{args.design}: {len(results)} results in "
              f"{(time.monotonic() - started) / 60:.1f} min; "
              f"{args.workload}, {args.db} x {args.broker}, c={args.concurrency}, "
              f"{args.duration:g} s windows")  # fmt: skip
        for after in ("python-copy", "python-dev"):
            for rounds in (4, 6, 8):
                if rounds <= args.rounds:
                    print(line(results, after, rounds))
    return 0


if __name__ == "__main__":
    sys.exit(main())
