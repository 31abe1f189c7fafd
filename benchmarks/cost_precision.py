"""How precise is --cost, how long does it take, and does its gate catch a small real regression?

For each --db, three cost runs of one workload through prefect-bench's own command line, each
of --servers fresh servers under callgrind (`--repeat`):
- A and B: the python server, twice (an A/A: what fresh servers of the same code differ by);
- C: the same server doing a fixed extra amount of work per request (tests/fixtures/extra_work:
  a sha256 of --extra-bytes zero bytes, put on its PYTHONPATH by a servers.toml entry).
It prints, per endpoint (or step), A's instructions per request (the mean of its servers), the
spread between A's blocks and between A's servers, B vs A (%), and C vs A (%); then each run's
wall time, and what `compare --fail-on 'instructions>+THRESHOLD%'` says of A vs B (must pass:
exit 0) and of A vs C (must fail: exit 1, with the sha256 function among the top changes).
Exits 1 if either verdict is not so. With one server a side the test sees only its blocks,
which cannot show how much two servers differ (bench.compare.change).

    .nox/tests/bin/python benchmarks/cost_precision.py [--db sqlite,postgres] [--workload seed]
        [--servers 3] [--extra-bytes 1024] [--threshold 1] [--work DIR] [-- options of `bench run`]

A seed server here takes 2.5-6 minutes (most of it its start under callgrind and the endpoints'
blocks); run nothing else heavy meanwhile, or the wall times mean little (the instruction
counts do not care).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.cost.functions import costed
from bench.results import Cost, load_result

ROOT = Path(__file__).resolve().parent.parent
FIXTURE = ROOT / "tests" / "fixtures" / "extra_work"
RUN_ID = "cost-precision"


def servers_toml(extra_bytes: int) -> str:
    """The regression: the python server with the fixture on its PYTHONPATH."""
    return (
        "[servers.python-extra]\n"
        'extends = "python"\n'
        'description = "benchmarks/cost_precision.py: the python server and a sha256 per request"\n'
        "[servers.python-extra.env]\n"
        f'PYTHONPATH = "{FIXTURE}"\n'
        f'BENCH_EXTRA_WORK_BYTES = "{extra_bytes}"\n'
    )


def bench(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bench", *args], capture_output=True, text=True, cwd=cwd
    )


def cost_run(
    label: str, server: str, db: str, work: Path, servers: Path, extra: list[str]
) -> tuple[Path, float]:
    """One cost run into work/<label>/: its run folder and its wall time (s)."""
    out = work / label
    started = time.monotonic()
    done = bench(
        "run",
        *("--server", server, "--db", db, "--broker", "memory", "--cost"),
        *("--servers", str(servers), "--out", str(out), "--run-id", RUN_ID),
        *extra,
        cwd=work,
    )
    took = time.monotonic() - started
    if done.returncode != 0:
        sys.exit(f"{label}: `bench run` exited {done.returncode}: {done.stderr.strip()[-600:]}")
    return out / RUN_ID, took


def costs(folder: Path) -> dict[str, list[Cost]]:
    """Each costed endpoint, scenario and step of the run's results (as the report names them,
    bench.cost.functions.costed): its cost, one for each server (repetition)."""
    found: dict[str, list[Cost]] = {}
    for path in sorted(folder.glob("*.json")):
        for name, cost in costed(load_result(path)):
            found.setdefault(name, []).append(cost)
    return found


def compare(before: Path, after: Path, threshold: float, work: Path) -> tuple[int, str]:
    done = bench(
        "compare", str(before), str(after), "--fail-on", f"instructions>+{threshold:g}%", cwd=work
    )
    return done.returncode, done.stdout + done.stderr


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--db", default="sqlite", help="comma-separated: sqlite,postgres")
    parser.add_argument("--workload", default="seed")
    parser.add_argument("--servers", type=int, default=3, help="fresh servers a side")
    parser.add_argument("--extra-bytes", type=int, default=1024)
    parser.add_argument("--threshold", type=float, default=1.0, help="the gate, %")
    parser.add_argument("--work", type=Path, help="default: a new temporary folder")
    parser.add_argument("extra", nargs="*", help="more options of `bench run` (after --)")
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="cost-precision-"))
    work.mkdir(parents=True, exist_ok=True)
    servers = work / "servers.toml"
    servers.write_text(servers_toml(args.extra_bytes))
    options = ["--workload", args.workload, *args.extra]
    if args.servers > 1:
        options += ["--repeat", str(args.servers)]
    print(
        f"cost precision: {args.workload}, {args.servers} server(s) a side, regression sha256 "
        f"of {args.extra_bytes} B; {work}"
    )
    verdicts_ok = True
    for db in args.db.split(","):
        runs = {
            label: cost_run(f"{db}-{label}", server, db, work, servers, options)
            for label, server in (("A", "python"), ("B", "python"), ("C", "python-extra"))
        }
        figures = {label: costs(result) for label, (result, _) in runs.items()}
        print(
            f"\n{db}: instructions per request (A, its servers' mean), the widest spread of A's "
            "blocks within a server, the spread between A's servers, B vs A, C vs A"
        )
        print(
            f"  {'figure':<28} {'A':>14} {'blocks':>8} {'servers':>8} {'B vs A':>8} {'C vs A':>8}"
        )
        worst = 0.0
        for name, a in figures["A"].items():
            mean = {k: _mean(figures[k].get(name)) for k in "ABC"}
            ab = 100 * (mean["B"] / mean["A"] - 1)
            ac = 100 * (mean["C"] / mean["A"] - 1)
            each = [c.per_request for c in a]
            between = 100 * (max(each) - min(each)) / mean["A"]
            worst = max(worst, abs(ab))
            print(
                f"  {name:<28} {mean['A']:>14,.0f} {max(c.spread_pct for c in a):>7.2f}% "
                f"{between:>7.2f}% {ab:>+7.2f}% {ac:>+7.2f}%"
            )
        print(f"  largest A/A difference of the means: {worst:.2f}% (goal ≤ 0.5%)")
        print("  wall time: " + ", ".join(f"{k} {t / 60:.1f} min" for k, (_, t) in runs.items()))
        aa, _ = compare(runs["A"][0], runs["B"][0], args.threshold, work)
        ac_code, ac_text = compare(runs["A"][0], runs["C"][0], args.threshold, work)
        named = "sha_transform" in ac_text.split("### Where the cost went", 1)[-1]
        print(f"  compare A B: exit {aa} (expected 0); compare A C: exit {ac_code} (expected 1)")
        print(f"  the sha256 function among the changes of A vs C: {'yes' if named else 'no'}")
        verdicts_ok &= aa == 0 and ac_code == 1 and named
    print(f"\n{'PASS' if verdicts_ok else 'FAIL'}")
    return 0 if verdicts_ok else 1


def _mean(found: list[Cost] | None) -> float:
    return statistics.fmean(c.per_request for c in found) if found else float("nan")


if __name__ == "__main__":
    sys.exit(main())
