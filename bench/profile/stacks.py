"""Collapsed stacks, the one format a sampling profiler, the flame graph and the differential
share: a line per distinct stack, its frames root first joined by ';', a space and how many
samples saw it (`a (m.py);b (m.py) 12`), as py-spy's `--format raw` and Brendan Gregg's
stackcollapse scripts write them.

Standard library only.
"""

from __future__ import annotations

import gzip
import re
from collections import Counter
from collections.abc import Iterable, Mapping
from pathlib import Path

Stack = tuple[str, ...]
Stacks = Counter[Stack]

# py-spy --subprocesses roots each stack at its process: `process 8063:"python -m prefect …"`
_PROCESS = re.compile(r"^process \d+:")
# a frame's line number, `f (m.py:12)`: left out where functions are compared
_LINE = re.compile(r"(\([^()]*?):\d+\)$")


def parse(text: str) -> Stacks:
    """The stacks of collapsed text; lines that are not `frames count` are skipped."""
    stacks: Stacks = Counter()
    for line in text.splitlines():
        frames, _, count = line.rstrip().rpartition(" ")
        if frames and count.isdigit():
            stacks[tuple(frames.split(";"))] += int(count)
    return stacks


def dump(stacks: Mapping[Stack, int]) -> str:
    """Collapsed text of `stacks`, most samples first (then by frames): the same stacks always
    give the same text."""
    ordered = sorted(stacks.items(), key=lambda item: (-item[1], item[0]))
    return "".join(f"{';'.join(stack)} {count}\n" for stack, count in ordered if count > 0)


def read(path: Path, errors: str = "strict") -> Stacks:
    """The stacks of a collapsed file, gzip-compressed (`.gz`) or not. `errors="replace"` reads
    a profiler's own output: py-spy --nonblocking now and then reads a stack that changed under
    it as garbage bytes, which become U+FFFD in that frame instead of losing the window."""
    if path.suffix == ".gz":
        with gzip.open(path, "rt", encoding="utf-8", errors=errors) as f:
            return parse(f.read())
    return parse(path.read_text(encoding="utf-8", errors=errors))


def total(stacks: Mapping[Stack, int]) -> int:
    return sum(stacks.values())


def is_process(frame: str) -> bool:
    """Whether `frame` is a process's root frame (py-spy --subprocesses), not a function."""
    return bool(_PROCESS.match(frame))


def function(frame: str) -> str:
    """A frame as a function, the same in any run: `name (file)`, its line number left out."""
    return _LINE.sub(r"\1)", frame)


def functions(stacks: Mapping[Stack, int]) -> Stacks:
    """`stacks` with process frames left out and line numbers dropped: what two runs of
    different processes (pids) share."""
    merged: Stacks = Counter()
    for stack, count in stacks.items():
        merged[tuple(function(f) for f in stack if not is_process(f))] += count
    return merged


def combined(parts: Iterable[Mapping[Stack, int]]) -> Stacks:
    """The stacks of several profiles added up."""
    out: Stacks = Counter()
    for part in parts:
        out.update(part)
    return out
