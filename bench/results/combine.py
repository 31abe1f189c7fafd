"""How a field of a measurement combines when measurements merge: the words the result schema
declares beside each field (`requests: Annotated[int, Combine.SUM]`), read by one function,
`bench.results.merge.merge`.

Two merges read them:
- across processes ("processes"): the engine's processes measured shares of one load in one
  window, side by side (`bench.engine.measure`);
- across repetitions ("repetitions"): independent windows of one cell, one after another
  (`bench.report.aggregate`).
A field that combines differently in the two declares both, still beside itself:
`rps: Annotated[float, Across(processes=Combine.SUM, repetitions=Combine.MEAN)]` (rates of shares
of one window add up; rates of repetitions are averaged). A field only one merge meets (a
result's server figures are never split over processes) declares the rule that one uses.

Standard library only: the schema imports it, and the merge (which needs the schema and
HdrHistogram) sits above both.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Literal

Mode = Literal["processes", "repetitions"]
MODES: tuple[Mode, ...] = ("processes", "repetitions")

# The distinct problems a merged measurement keeps, first seen first (as the engine keeps them).
PROBLEMS_KEPT = 10


class Combine(Enum):
    """The rules that need nothing more than the parts' values of the field."""

    FIRST = "the first part's: a key or a setting every part shares"
    SUM = "added up; None if a part lacks it (a total of some parts would read as the whole)"
    MEAN = "the mean of the parts that have it; None if none does"
    MIN = "the smallest of the parts that have it; None if none does"
    MAX = "the largest of the parts that have it; None if none does"
    ANY = "true if any part's is"
    ALL = "true if every part's is; None if a part lacks it"
    COUNT = "the number of parts"
    UNION = f"the distinct items, first seen first, at most {PROBLEMS_KEPT}"
    # Slices of only some repetitions would weigh those more in every resampled interval.
    CONCAT = "the parts' lists one after another; None if a part lacks one"
    SLICES = "added slice by slice; None if a part lacks them or they differ in number"
    DROP = "None: the parts' values say nothing merged"
    GIVEN = "not merged from the parts: the merge's caller gives it"
    MODEL = "a model, merged by the rules its own fields declare; None if a part lacks it"
    BY_NAME = "a list of models, merged name by name (first seen first) by their own rules"


@dataclass(frozen=True)
class Weighted:
    """The parts' mean weighted by their field `by` (a figure per request: by requests);
    parts of weight 0 count only if they have a value. None if a weighted part lacks one or
    the weights add up to 0. `by` None: by the weights the enclosing field's rule gives (a
    latency summary's, `Latency`)."""

    by: str | None = None


@dataclass(frozen=True)
class Latency:
    """A latency summary re-read from the parts' histograms (field `hdr`) added up, which fills
    `hdr` too. Where a part that measured something has no histogram (written by hand or before
    histograms were kept) no merge is exact: the summaries merge by their own rules, weighted
    by the parts' field `weight` (at least 1 each), and `hdr` is None."""

    hdr: str
    weight: str


@dataclass(frozen=True)
class Filled:
    """A field the rule of field `by` fills (a histogram, by its summary's `Latency`)."""

    by: str


@dataclass(frozen=True)
class ByKey:
    """A dict merged key by key with `rule`, over the parts that have the key (a key a part
    lacks counts as absent there, not as 0 or None); keys first seen first, or `sorted`.
    None if no part has a dict."""

    rule: Rule
    sorted: bool = False


Rule = Combine | Weighted | Latency | Filled | ByKey


@dataclass(frozen=True)
class Across:
    """A field whose rule differs across processes and across repetitions: both, side by side."""

    processes: Rule
    repetitions: Rule

    def rule(self, mode: Mode) -> Rule:
        """The rule of the merge `mode`."""
        return self.processes if mode == "processes" else self.repetitions


Declaration = Rule | Across
