"""callgrind dumps of one process summed into one dump: a step's dumps of a block (a dump after
each of its occurrences) kept as one file, the size of one dump, that callgrind_annotate and
KCachegrind read as any other.

What this reads is what callgrind writes with its defaults (`positions: line`, names and
subpositions compressed): names are defined once per file as `(id) name` and referred to as
`(id)` after, with ids that are the process's own (the same id names the same thing in every
dump of a process); a relative subposition (`+n`, `-n`, `*`) is based on the last cost
line's. The sum keeps, per (object, file, function, line), the self cost, and per call (its
caller's position, callee, target line) the calls and their inclusive cost; it is written
with absolute positions, each name defined on its first use.
"""

from __future__ import annotations

import gzip
import re
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path

from bench.cost.callgrind import CostError

_NAMED = re.compile(r"^(ob|fl|fi|fe|fn|cob|cfi|cfl|cfn|jfi|jfn)=(.*)$")
_NAME = re.compile(r"^\((\d+)\)(?: (.*))?$")
# which table a name is in: objects, files, functions
_TABLE = {"ob": "ob", "cob": "ob", "fn": "fn", "cfn": "fn", "jfn": "fn"} | dict.fromkeys(
    ("fl", "fi", "fe", "cfi", "cfl", "jfi"), "fl"
)
_HEADER = (
    "version:",
    "creator:",
    "pid:",
    "cmd:",
    "part:",
    "desc:",
    "positions:",
    "events:",
    "event:",
    "summary:",
    "totals:",
)

# (object, file, function): what a cost line is of
Where = tuple[str, str, str]
# (line, callee's object, file and function, target line)
Call = tuple[int, str, str, str, int]


class Dumps:
    """The dumps read so far: costs by where and line, calls by where and call (also what
    bench.cost.functions reads its per-function figures from)."""

    def __init__(self) -> None:
        self.names: dict[tuple[str, str], str] = {}  # (table, id) -> name
        self.self_cost: dict[Where, dict[int, int]] = defaultdict(lambda: defaultdict(int))
        self.calls: dict[Where, dict[Call, list[int]]] = defaultdict(dict)
        self.header: list[str] = []
        self.total = 0

    def read(self, path: Path) -> None:
        ob = fl = fn = ""
        cob = cfl = None
        last = 0
        callee = ("", "", "")
        call: tuple[int, str, str, str, int] | None = None  # count, callee ob/fl/fn, target
        here = self.self_cost[(ob, fl, fn)]  # the self costs of where the lines are
        header = not self.header
        opener = gzip.open if path.suffix == ".gz" else open  # a kept dump is compressed
        with opener(path, "rt", encoding="utf-8", errors="surrogateescape") as lines:
            for raw in lines:
                first = raw[:1]
                if first.isdigit() or first in ("+", "-", "*"):  # a cost line: most are
                    position, *costs = raw.split()
                    last = _position(position, last)
                    if len(costs) != 1:
                        raise CostError(f"{path}: a cost line of more than Ir: {raw!r}")
                    if call is None:
                        here[last] += int(costs[0])
                    else:
                        count, *_ = call
                        key = (last, call[1], call[2], call[3], call[4])
                        known = self.calls[(ob, fl, fn)].setdefault(key, [0, 0])
                        known[0] += count
                        known[1] += int(costs[0])
                        call = None
                    continue
                line = raw.rstrip("\n")
                if not line or first == "#":
                    if header and first == "#":
                        self.header.append(line)
                    continue
                if line.startswith("calls="):
                    count, target = line[6:].split()[:2]
                    call = (int(count), *callee, _position(target, last))
                    continue
                named = _NAMED.match(line)
                if named:
                    key, value = named.groups()
                    name = self._name(_TABLE[key], value, path)
                    if key == "ob":
                        ob = name
                    elif key in ("fl", "fi", "fe"):
                        fl = name
                    elif key == "fn":
                        fn = name
                    elif key == "cob":
                        cob = name
                    elif key in ("cfi", "cfl"):
                        cfl = name
                    elif key == "cfn":
                        callee = (cob or ob, cfl or fl, name)
                        cob = cfl = None
                    here = self.self_cost[(ob, fl, fn)]
                    continue
                if line.startswith(_HEADER):
                    if line.startswith("totals:"):
                        self.total += int(line.split()[1])
                    elif header and not line.startswith("summary:"):
                        self.header.append(line)
                    continue
                if not line.startswith(("jump=", "jcnd=")):
                    raise CostError(f"{path}: a line callgrind does not write: {line[:80]!r}")

    def _name(self, table: str, value: str, path: Path) -> str:
        compressed = _NAME.match(value)
        if compressed is None:
            return value
        number, name = compressed.groups()
        if name is not None:
            self.names[(table, number)] = name
            return name
        try:
            return self.names[(table, number)]
        except KeyError:
            raise CostError(f"{path}: name ({number}) used before it is defined") from None

    def write(self, into: Path) -> None:
        ids: dict[tuple[str, str], int] = {}

        def named(table: str, name: str) -> str:
            if (table, name) in ids:
                return f"({ids[(table, name)]})"
            ids[(table, name)] = len(ids) + 1
            return f"({ids[(table, name)]}) {name}"

        with open(into, "w", encoding="utf-8", errors="surrogateescape") as out:
            out.write("\n".join(self.header) + f"\nsummary: {self.total}\n\n")
            kept = {w for w, costs in self.self_cost.items() if costs} | self.calls.keys()
            for where in sorted(kept):
                ob, fl, fn = where
                out.write(f"ob={named('ob', ob)}\nfl={named('fl', fl)}\nfn={named('fn', fn)}\n")
                for line, cost in sorted(self.self_cost.get(where, {}).items()):
                    out.write(f"{line} {cost}\n")
                for (line, cob, cfl, cfn, target), (count, cost) in sorted(
                    self.calls.get(where, {}).items()
                ):
                    out.write(
                        f"cob={named('ob', cob)}\ncfi={named('fl', cfl)}\ncfn={named('fn', cfn)}\n"
                        f"calls={count} {target}\n{line} {cost}\n"
                    )
            out.write(f"totals: {self.total}\n")


def _position(text: str, last: int) -> int:
    if text == "*":
        return last
    if text[0] in "+-":
        return last + int(text)
    return int(text, 0)


def merge(dumps: Iterable[Path], into: Path) -> Path:
    """The dumps (of one process, with callgrind's default options) summed into `into`: the
    first one's header, every cost summed. CostError for what it cannot read."""
    summed = Dumps()
    for dump in dumps:
        summed.read(dump)
    summed.write(into)
    return into
