"""How each of the UI's reads slows down as the database grows, and what a preload costs to
make and to restore, measured in one run.

For each db and each N (ascending), runs `python -m bench run --workload ui --preload N` twice
into one results folder: the first cell makes the preload (or restores it, if the cache holds
it already), the second restores it. Then prints, per db, the seconds to make and to restore
each N, each read's p50 at every N and its ratio against the smallest N (the reference, in the
same run), and writes the report (its Data at scale section draws the same against N).

    python benchmarks/preload_scale.py [--db sqlite,postgres] [--sizes 1000,10000]
        [--duration 3] [--concurrency 1,4] [--out results/preload-scale]

Big preloads take long to make: the python server seeds about 6 flow runs/s here (4 requests
each), so 10,000 take about half an hour per db; later runs restore them from the cache
($BENCH_CACHE_DIR/preload). Exit 1 if a cell fails.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

from bench.report import collect
from bench.results import Result, new_run_id


def _cell(db: str, n: int, args: argparse.Namespace, run_id: str) -> None:
    argv = [sys.executable, "-m", "bench", "run", "--db", db, "--workload", "ui"]
    argv += ["--preload", str(n), "--duration", str(args.duration), "--warmup", "1"]
    argv += ["--concurrency", args.concurrency, "--out", str(args.out), "--run-id", run_id]
    subprocess.run(argv, check=False)


def _p50s(result: Result) -> dict[str, float]:
    return {
        f"{e.name} c={e.concurrency}": e.latency_ms.p50 for e in result.endpoints if e.latency_ms
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--db", default="sqlite,postgres")
    parser.add_argument("--sizes", default="1000,10000")
    parser.add_argument("--duration", type=float, default=3.0)
    parser.add_argument("--concurrency", default="1,4")
    parser.add_argument("--out", type=Path, default=Path("results/preload-scale"))
    args = parser.parse_args()
    sizes = sorted(int(n) for n in args.sizes.split(","))
    failed = False
    for db in args.db.split(","):
        by_n: dict[int, list[Result]] = {}
        for n in sizes:
            runs = [new_run_id() for _ in range(2)]
            for run_id in runs:
                _cell(db, n, args, run_id)
            found, _ = collect([args.out / run_id for run_id in runs])
            failed |= any(r.status != "ok" for r in found) or len(found) < 2
            by_n[n] = [r for r in found if r.status == "ok" and r.preload]
        print(f"\n{db}")
        for n, results in by_n.items():
            for r in results:
                assert r.preload
                print(f"  N={n:,}: {r.preload.source} in {r.preload.seconds:.2f} s")
        measured = {n: _p50s(rs[-1]) for n, rs in by_n.items() if rs}
        if len(measured) < 2:
            continue
        smallest, *larger = sorted(measured)
        print(f"  p50 ms at N = {', '.join(f'{n:,}' for n in measured)}; ratio to N={smallest:,}")
        for read, reference in measured[smallest].items():
            row = [measured[n].get(read) for n in sorted(measured)]
            shown = " ".join(f"{v:8.2f}" if v is not None else "       -" for v in row)
            last = measured[larger[-1]].get(read)
            ratio = f"{last / reference:6.2f}x" if last and reference else "      -"
            print(f"  {read:40s} {shown} {ratio}")
    report = [sys.executable, "-m", "bench", "report", str(args.out), "--out", str(args.out)]
    subprocess.run(report, check=False)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
