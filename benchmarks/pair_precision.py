"""How precise a paired comparison of two servers is (issue 23's precision goals): three
servers, `python`, `python-copy` (the same server under another name: the A/A) and
`python-dev` (the same under PYTHONDEVMODE=1: a real slowdown of 12-14%), measured by one of
three designs, then `compare RUN --before python --after X` paired by round on the first 4, 6
and 8 counted rounds:

- `--design rounds`: one matrix of the three, in rounds, each cell a fresh server (as the
  matrix runs them);
- `--design together`: `run --server python --beside python-copy --beside python-dev`, the
  three up at once, each endpoint's windows alternating between them round after round;
- `--design duet`: `run --server python --beside X --duet`, once for each X (a duet is two
  servers): both windows of an endpoint at the same moment, each server and its load
  process pinned to a CPU of its own.

For each comparison and number of rounds it prints the total's change with its 95% interval
and detectable change, the median and widest interval half-width over the endpoints (or
steps), and how many figures the gate called significant (in the A/A each one is a false
alarm). The A/A measured in the same run is the reference: the slowdown is told only where its
interval leaves 0% and the A/A's holds it.

    .nox/tests/bin/python benchmarks/pair_precision.py [--design rounds|together|duet]
        [--rounds 8] [--duration 2] [--concurrency 4] [--workload seed] [--db sqlite]
        [--broker memory] [--keep DIR]

Either runs the real product (`python -m bench`), a warm-up round first; with the defaults
the matrix takes about 16 minutes here (27 cells of 35 s), the servers together about 13,
the two duets about 7 each.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.compare import gate
from bench.compare.metrics import TOTAL
from bench.results import Result, load_result

AFTER = ("python-copy", "python-dev")

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


def measure(folder: Path, args: argparse.Namespace) -> dict[str, list[Result]]:
    """Measure the three servers by `args.design` under `folder`; the results that pair
    python with each of the others."""
    servers = folder / "servers.toml"
    servers.write_text(SERVERS)
    if args.design == "duet":
        return {
            after: _measured(folder / after, servers, args, ["run", "--server", "python",
                             "--beside", after, "--duet"])
            for after in AFTER
        }  # fmt: skip
    design = (
        ["matrix", "--server", "python", "--server", "python-copy", "--server", "python-dev"]
        if args.design == "rounds"
        else ["run", "--server", "python", "--beside", "python-copy", "--beside", "python-dev"]
    )
    results = _measured(folder, servers, args, design)
    return dict.fromkeys(AFTER, results)


def _measured(
    folder: Path, servers: Path, args: argparse.Namespace, design: list[str]
) -> list[Result]:
    """Run `python -m bench` with `design` and the load `args` give; its results."""
    argv = [
        sys.executable, "-m", "bench", *design, "--servers", str(servers),
        "--db", args.db, "--broker", args.broker, "--out", str(folder / "results"),
        "--repeat", str(args.rounds), "--duration", str(args.duration),
        "--concurrency", str(args.concurrency), "--workload", args.workload,
    ]  # fmt: skip
    subprocess.run(argv, cwd=servers.parent, check=False, stdout=subprocess.DEVNULL)
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
    parser.add_argument("--design", choices=("rounds", "together", "duet"), default="together")
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--duration", type=float, default=2.0)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--workload", default="seed")
    parser.add_argument("--db", default="sqlite")
    parser.add_argument("--broker", default="memory")
    parser.add_argument("--keep", type=Path, help="measure into this new folder and keep it")
    args = parser.parse_args()
    started = time.monotonic()
    with contextlib.ExitStack() as stack:
        if args.keep:
            args.keep.mkdir(parents=True)  # never into an earlier run's folder
        tmp = args.keep or stack.enter_context(tempfile.TemporaryDirectory(prefix="pair-"))
        by_after = measure(Path(tmp), args)
        if not all(by_after.values()):
            print(f"{args.design}: no result written", file=sys.stderr)
            return 1
        count = len({id(r) for results in by_after.values() for r in results})
        print(f"{args.design}: {count} results in "
              f"{(time.monotonic() - started) / 60:.1f} min; "
              f"{args.workload}, {args.db} x {args.broker}, c={args.concurrency}, "
              f"{args.duration:g} s windows")  # fmt: skip
        for after, results in by_after.items():
            for rounds in (4, 6, 8):
                if rounds <= args.rounds:
                    print(line(results, after, rounds))
    return 0


if __name__ == "__main__":
    sys.exit(main())
