"""Where the cost went: the instructions each function executed per request, read from a cost
cell's kept callgrind dumps, and the functions whose count changed most between two sides.

A dump is read as callgrind's format defines it (valgrind's docs, "Callgrind Format
Specification"): a function's cost lines are its own instructions (exclusive); the line after
a `calls=` line is what the call cost, callee included, and counts to the caller's inclusive
figure only. callgrind names the nested levels of a recursive function `name'2`, `name'3`:
their exclusive counts are added to the function's, and its inclusive figure is its outermost
level's (a nested level's inclusive figure counts the levels below it again: the interpreter's
eval loop reads 1,600% there). Read by bench.cost.merge's reader (the one that sums a step's
dumps) rather than through `callgrind_annotate`, whose text layout changes between valgrind
versions and which reads one uncompressed file at a time; the dumps stay what users open in
`callgrind_annotate` or KCachegrind.

For a Python server the names are the interpreter's C functions (`_PyEval_EvalFrameDefault`,
`PyObject_GetAttr`, …) and those of compiled extensions (uvloop, pydantic-core, sqlite3, the
C library): Python functions run inside the eval loop and have no name callgrind sees (3.12's
perf trampolines would give each code object an address, not a name callgrind can read).
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from bench.cost.merge import Dumps
from bench.results import Cost, Result
from bench.results.files import run_folder
from bench.results.schema import SERVICES_STEP

TOP = 10
_LEVEL = re.compile(r"'\d+$")


@dataclass
class Functions:
    """Instructions per function, summed over dumps: exclusive and (outermost level) inclusive,
    and the requests they served."""

    exclusive: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    inclusive: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    total: float = 0.0
    requests: int = 0

    def per_request(self) -> Functions:
        """The same figures divided by the requests served."""
        n = self.requests or 1
        return Functions(
            exclusive={k: v / n for k, v in self.exclusive.items()},
            inclusive={k: v / n for k, v in self.inclusive.items()},
            total=self.total / n,
            requests=1,
        )


def read_dump(path: Path, into: Functions | None = None) -> Functions:
    """Add one dump's (gzip-compressed or not) per-function instructions to `into`."""
    found = into or Functions()
    dumps = Dumps()
    dumps.read(path)
    for (obj, _, fn), lines in dumps.self_cost.items():
        if not lines:  # a name passed by on the way to the next cost line
            continue
        cost = sum(lines.values())
        found.exclusive[_key(_base(fn), obj)] += cost
        found.total += cost
        if not _LEVEL.search(fn):
            found.inclusive[_key(fn, obj)] += cost
    for (obj, _, fn), calls in dumps.calls.items():
        if _LEVEL.search(fn):
            continue
        for (_, _, _, callee, _), (_, cost) in calls.items():
            if _base(callee) != _base(fn):
                found.inclusive[_key(fn, obj)] += cost
    return found


def costed(result: Result) -> list[tuple[str, Cost]]:
    """Each costed endpoint, scenario (a whole run) and step of `result`, by a name of its
    own: what the report's Cost section lists and `compare` says where it went."""
    found = [(ep.name, ep.cost) for ep in result.endpoints if ep.cost is not None]
    for scenario in result.scenarios:
        if scenario.cost is not None:
            found.append((f"{scenario.name} (a whole run)", scenario.cost))
        found += [
            (f"{scenario.name}: {step.name}", step.cost)
            for step in scenario.steps
            if step.cost is not None
        ]
        if scenario.services_cost is not None:
            found.append((f"{scenario.name}: {SERVICES_STEP}", scenario.services_cost))
    return found


def read_result(result: Result, name: str, side: Path) -> Functions | None:
    """The functions of `result`'s figure `name` (as `costed` names it) over every dump it
    kept, found in its run's folder under `side` (what `compare` was given: a results
    folder, a run's, or a result file), or None when it kept none or they are not there."""
    cost = dict(costed(result)).get(name)
    if cost is None or not cost.callgrind:
        return None
    run_dir = run_folder([side], result.run_id, cost.callgrind[0])
    if run_dir is None or not all((run_dir / p).is_file() for p in cost.callgrind):
        return None
    found = Functions()
    for path in cost.callgrind:
        read_dump(run_dir / path, found)
    found.requests += cost.requests_per_block * len(cost.callgrind)
    return found


def changes(before: Functions, after: Functions, top: int = TOP) -> list[str]:
    """A Markdown table: the `top` functions whose exclusive instructions per request changed
    most either way, with their share of the whole change and their inclusive figures."""
    b, a = before.per_request(), after.per_request()
    change = a.total - b.total
    moved = sorted(
        set(b.exclusive) | set(a.exclusive),
        key=lambda k: -abs(a.exclusive.get(k, 0.0) - b.exclusive.get(k, 0.0)),
    )[:top]
    lines = [
        "| function | self before | self after | change | share of the change | "
        "inclusive before | inclusive after |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for key in moved:
        old, new = b.exclusive.get(key, 0.0), a.exclusive.get(key, 0.0)
        share = f"{round(100 * (new - old) / change):+d}%" if change else "-"
        lines.append(
            f"| `{key}` | {old:,.0f} | {new:,.0f} | {round(new - old):+,d} | {share} | "
            f"{_count(b.inclusive.get(key))} | {_count(a.inclusive.get(key))} |"
        )
    return lines


def where_it_went(
    cell: str,
    before: Sequence[Result],
    after: Sequence[Result],
    folders: tuple[Path, Path],
    top: int = TOP,
) -> list[str]:
    """For each endpoint (scenario, step) both sides counted, the functions whose cost changed
    most (Markdown: a heading and a table each), the dumps found under each side's folder; one
    whose dumps are gone is named as such."""
    lines: list[str] = []
    for name in _figures(before, after):
        sides = [_summed(rs, name, f) for rs, f in zip((before, after), folders, strict=True)]
        if sides[0] is None or sides[1] is None:
            lines += [f"- {cell} {name}: the callgrind dumps are not beside its results", ""]
            continue
        change = sides[1].per_request().total - sides[0].per_request().total
        lines += [
            f"#### {cell} {name}: {change:+,.0f} instructions/request",
            "",
            *changes(sides[0], sides[1], top),
            "",
        ]
    return lines


def _figures(before: Sequence[Result], after: Sequence[Result]) -> list[str]:
    def names(results: Iterable[Result]) -> list[str]:
        return [name for r in results for name, _ in costed(r)]

    theirs = set(names(after))
    return [n for n in dict.fromkeys(names(before)) if n in theirs]


def _summed(results: Sequence[Result], name: str, side: Path) -> Functions | None:
    total = Functions()
    for result in results:
        found = read_result(result, name, side)
        if found is None:
            return None
        for key, value in found.exclusive.items():
            total.exclusive[key] += value
        for key, value in found.inclusive.items():
            total.inclusive[key] += value
        total.total += found.total
        total.requests += found.requests
    return total


def _base(fn: str) -> str:
    return _LEVEL.sub("", fn)


def _key(fn: str, obj: str) -> str:
    return f"{fn} ({Path(obj).name})" if obj and obj != "???" else fn


def _count(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f}"
