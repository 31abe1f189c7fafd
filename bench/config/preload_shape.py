"""What a preloaded database holds besides its N flow runs: the shape, one object, one text."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass


@dataclass(frozen=True)
class Shape:
    """How N preloaded flow runs are spread (docs/design-notes.md, "Databases at scale").

    `flows` flows with `deployments` deployments each; three runs in four belong to a
    deployment, the rest are ad hoc. Expected start times are spread evenly over the `days`
    before seeding began; one run in ten ends Failed, the others Completed. Each run has
    `tasks` Completed task runs and `logs` log lines.
    """

    flows: int = 5
    deployments: int = 2
    tasks: int = 2
    logs: int = 10
    days: int = 7

    def text(self) -> str:
        """The shape as `--preload-shape` takes it, every key: the cache's key is this."""
        return ",".join(f"{f.name}={getattr(self, f.name)}" for f in dataclasses.fields(self))


DEFAULT_SHAPE = Shape()
# the least a key may be: a run needs a flow and a span of time; the rest may be none
_MINIMUM = {"flows": 1, "deployments": 0, "tasks": 0, "logs": 0, "days": 1}


def parse_shape(text: str) -> Shape:
    """`flows=5,tasks=3` (keys left out keep the default); ValueError saying what is wrong."""
    values: dict[str, int] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or key not in _MINIMUM:
            raise ValueError(
                f"expected KEY=N with KEY one of {', '.join(_MINIMUM)}, got {item!r} "
                f"(e.g. {DEFAULT_SHAPE.text()})"
            )
        try:
            number = int(value)
        except ValueError:
            raise ValueError(f"{key} must be a whole number, got {value.strip()!r}") from None
        if number < _MINIMUM[key]:
            raise ValueError(f"{key} must be at least {_MINIMUM[key]}, got {number}")
        values[key] = number
    return dataclasses.replace(DEFAULT_SHAPE, **values)
