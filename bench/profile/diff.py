"""Where the time went between two profiles of one window (the same endpoint or scenario at the
same level): each function's inclusive share of the samples (the share of stacks it is on,
counted once per stack however deep it recurses) before and after, and the functions whose
share grew most and fell most.

Functions are frames without their line numbers (`name (file)`, `stacks.function`) and
without py-spy's process frames, so two runs of different pids, or a server run as several
processes, compare function by function. A share, not a count: the two sides sampled windows
of different lengths and rates, and a server that got faster serves more requests in the
same samples.

Standard library only.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass

from bench.profile.stacks import Stack, functions

TOP = 10


@dataclass(frozen=True)
class Change:
    """One function's inclusive share of the samples, in %, before and after."""

    function: str
    before_pct: float
    after_pct: float

    @property
    def points(self) -> float:
        """The change in percentage points (after - before)."""
        return self.after_pct - self.before_pct


def inclusive_shares(stacks: Mapping[Stack, int]) -> dict[str, float]:
    """Each function's share of the samples whose stack it is on, in % (0-100)."""
    per_function = functions(stacks)
    total = sum(per_function.values())
    if total == 0:
        return {}
    on: Counter[str] = Counter()
    for stack, count in per_function.items():
        for name in set(stack):
            on[name] += count
    return {name: 100 * n / total for name, n in on.items()}


def changes(before: Mapping[Stack, int], after: Mapping[Stack, int]) -> list[Change]:
    """Every function of either side with its share on both (0 where it was not sampled),
    largest growth first, then by name."""
    b, a = inclusive_shares(before), inclusive_shares(after)
    out = [Change(name, b.get(name, 0.0), a.get(name, 0.0)) for name in set(b) | set(a)]
    return sorted(out, key=lambda c: (-c.points, c.function))


def grew_and_fell(
    before: Mapping[Stack, int], after: Mapping[Stack, int], top: int = TOP
) -> tuple[list[Change], list[Change]]:
    """The `top` functions whose share grew most (largest first) and the `top` that fell most
    (largest fall first); a function whose share did not move is in neither."""
    all_changes = changes(before, after)
    grew = [c for c in all_changes if c.points > 0][:top]
    fell = sorted((c for c in all_changes if c.points < 0), key=lambda c: (c.points, c.function))
    return grew, fell[:top]


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def markdown_table(before: Mapping[Stack, int], after: Mapping[Stack, int], top: int = TOP) -> str:
    """The grown and fallen functions as one Markdown table (grown first), or '' when no
    function's share moved."""
    grew, fell = grew_and_fell(before, after, top)
    if not grew and not fell:
        return ""
    lines = [
        "| | function | before % | after % | change (points) |",
        "|---|---|---:|---:|---:|",
    ]
    for label, rows in (("grew", grew), ("fell", fell)):
        for c in rows:
            lines.append(
                f"| {label} | `{_cell(c.function)}` | {c.before_pct:.2f} | {c.after_pct:.2f} "
                f"| {c.points:+.2f} |"
            )
    return "\n".join(lines) + "\n"
