"""One merge for every measurement shape: `merge` combines parts of one model field by field,
each by the rule the field declares beside itself in the schema (`bench.results.combine`).

The engine merges its processes' shares of a window with it, the report a cell's repetitions;
nothing else merges a measurement field by field.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache
from typing import Any, TypeVar

from hdrh.histogram import HdrHistogram
from pydantic import BaseModel

from bench.results.combine import (
    PROBLEMS_KEPT,
    Across,
    ByKey,
    Combine,
    Declaration,
    Filled,
    Latency,
    Mode,
    Rule,
    Weighted,
)
from bench.results.schema import LatencyMs

Model = TypeVar("Model", bound=BaseModel)


def latency_summary(hist: HdrHistogram) -> LatencyMs | None:
    """min, mean and percentiles in ms of a µs histogram; None when it is empty."""
    if hist.get_total_count() == 0:
        return None

    def ms(us: float) -> float:
        return round(us / 1000, 3)

    return LatencyMs(
        min=ms(hist.get_min_value()),
        mean=ms(hist.get_mean_value()),
        p50=ms(hist.get_value_at_percentile(50)),
        p90=ms(hist.get_value_at_percentile(90)),
        p99=ms(hist.get_value_at_percentile(99)),
        p999=ms(hist.get_value_at_percentile(99.9)),
        max=ms(hist.get_max_value()),
    )


def merge(parts: Sequence[Model], mode: Mode, *, given: Mapping[str, Any] | None = None) -> Model:
    """The parts (of one model class) as one: each field combined by the rule it declares for
    `mode` (`bench.results.combine`); fields that declare `Combine.GIVEN` for it are taken from
    `given`. Keys and fields the schema does not declare (extra ones) are the first part's.

    Raises TypeError if a field declares no rule, or `given` does not fit the GIVEN fields.
    """
    if not parts:
        raise ValueError("merge needs at least one part")
    return _merge(parts, _How(mode, dict(given or {})))


@dataclass(frozen=True)
class _How:
    """What a merge is across, and what its caller or an enclosing rule hands down."""

    mode: Mode
    given: dict[str, Any] = field(default_factory=dict)
    # Handed down by a `Latency` rule to the summaries it merges (`Weighted(by=None)`).
    weights: tuple[float, ...] | None = None

    def nested(self, weights: tuple[float, ...] | None = None) -> _How:
        """For a model inside a field: what the caller gives is for the outer model only."""
        return _How(self.mode, {}, weights)


@cache
def rules(model: type[BaseModel], mode: Mode) -> dict[str, Rule]:
    """Each field of `model` and the rule it declares for `mode`; TypeError if one declares
    none or several, or a `Filled` field is not filled by the field it names."""
    found: dict[str, Rule] = {}
    for name, info in model.model_fields.items():
        declared = [m for m in info.metadata if isinstance(m, Declaration)]
        if len(declared) != 1:
            raise TypeError(
                f"{model.__name__}.{name} must declare one merge rule (bench.results.combine), "
                f"not {len(declared)}"
            )
        [declaration] = declared
        found[name] = declaration.rule(mode) if isinstance(declaration, Across) else declaration
    for name, rule in found.items():
        if isinstance(rule, Filled):
            filler = found.get(rule.by)
            if not (isinstance(filler, Latency) and filler.hdr == name):
                raise TypeError(f"{model.__name__}.{name}: {rule.by} does not fill it")
    return found


def _merge(parts: Sequence[Model], how: _How) -> Model:
    model = type(parts[0])
    declared = rules(model, how.mode)
    wanted = {name for name, rule in declared.items() if rule is Combine.GIVEN}
    if wanted != how.given.keys():
        raise TypeError(
            f"merging {model.__name__} across {how.mode} needs {sorted(wanted)} given, "
            f"not {sorted(how.given)}"
        )
    merged: dict[str, Any] = {}
    for name, rule in declared.items():
        merged.update(_fill(rule, name, parts, how))
    return parts[0].model_copy(update=merged)


def _fill(rule: Rule, name: str, parts: Sequence[BaseModel], how: _How) -> dict[str, Any]:
    """The merged field, and the fields its rule fills with it."""
    if isinstance(rule, Latency):
        return _latency(rule, name, parts, how)
    if isinstance(rule, Filled):
        return {}
    if rule is Combine.GIVEN:
        return {name: how.given[name]}
    return {name: _combine(rule, [getattr(p, name) for p in parts], parts, how)}


def _combine(rule: Rule, values: list[Any], parts: Sequence[BaseModel], how: _How) -> Any:
    """`values` (one per part, of `parts`) combined by `rule`."""
    present = [v for v in values if v is not None]
    match rule:
        case Combine.FIRST:
            return values[0]
        case Combine.SUM:
            return None if len(present) < len(values) else sum(values)
        case Combine.MEAN:
            return statistics.fmean(present) if present else None
        case Combine.MIN:
            return min(present, default=None)
        case Combine.MAX:
            return max(present, default=None)
        case Combine.ANY:
            return any(values)
        case Combine.ALL:
            return None if len(present) < len(values) else all(values)
        case Combine.COUNT:
            return len(values)
        case Combine.UNION:
            return list(dict.fromkeys(item for items in values for item in items))[:PROBLEMS_KEPT]
        case Combine.CONCAT:
            return None if len(present) < len(values) else [x for v in values for x in v]
        case Combine.SLICES:
            if len(present) < len(values) or len({len(v) for v in values}) != 1:
                return None
            return [sum(column) for column in zip(*values, strict=True)]
        case Combine.DROP:
            return None
        case Combine.MODEL:
            return None if len(present) < len(values) else _merge(values, how.nested())
        case Combine.BY_NAME:
            names = dict.fromkeys(item.name for items in values for item in items)
            return [
                _merge([i for items in values for i in items if i.name == n], how.nested())
                for n in names
            ]
        case Weighted(by=by):
            weights = how.weights if by is None else [getattr(p, by) or 0 for p in parts]
            if weights is None:
                raise TypeError("Weighted() weighs by what a Latency rule hands down: none here")
            return _weighted(values, weights)
        case ByKey(rule=inner, sorted=by_key):
            dicts = [(p, d) for p, d in zip(parts, values, strict=True) if d is not None]
            if not dicts:
                return None
            keys = list(dict.fromkeys(k for _, d in dicts for k in d))
            return {
                key: _combine(
                    inner,
                    [d[key] for _, d in dicts if key in d],
                    [p for p, d in dicts if key in d],
                    how,
                )
                for key in (sorted(keys) if by_key else keys)
            }
    raise TypeError(f"{rule} combines no values of its own")


def _weighted(values: Sequence[float | None], weights: Sequence[float]) -> float | None:
    pairs = [(v, w) for v, w in zip(values, weights, strict=True) if w or v is not None]
    if any(v is None for v, _ in pairs) or not sum(w for _, w in pairs):
        return None
    return sum((v or 0.0) * w for v, w in pairs) / sum(w for _, w in pairs)


def _latency(rule: Latency, name: str, parts: Sequence[BaseModel], how: _How) -> dict[str, Any]:
    """The summary `name` and its histogram `rule.hdr`, merged (see `Latency`)."""
    measured = [
        p for p in parts if getattr(p, name) is not None or getattr(p, rule.hdr) is not None
    ]
    if not measured:
        return {name: None, rule.hdr: None}
    if all(getattr(p, rule.hdr) is not None for p in measured):
        hist, *others = (HdrHistogram.decode(getattr(p, rule.hdr)) for p in measured)
        for other in others:
            hist.add(other)
        # An empty histogram is written as none, as the engine writes it.
        empty = hist.get_total_count() == 0
        return {
            name: latency_summary(hist),
            rule.hdr: None if empty else hist.encode().decode("ascii"),
        }
    # No merge of summaries is exact; a mixture's percentiles lie between its parts', so their
    # mean weighted by the parts' sizes is as close as the summaries allow.
    summarized = [p for p in measured if getattr(p, name) is not None]
    weights = tuple(max(getattr(p, rule.weight) or 0, 1) for p in summarized)
    summary = _merge([getattr(p, name) for p in summarized], how.nested(weights))
    return {name: summary, rule.hdr: None}
