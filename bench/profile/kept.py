"""Reading kept profiles back: a result names its profile files relative to its run's folder
(`<results>/<run_id>/`), which `bench.results.files.run_folder` finds from what the reader
(the report, `compare`) was given."""

from __future__ import annotations

from pathlib import Path

from bench.profile import stacks
from bench.results.schema import Profile


def read_stacks(profile: Profile, folder: Path) -> stacks.Stacks | None:
    """The stacks of `profile`'s collapsed files (all of them added up) in the run's `folder`;
    None when one is missing or unreadable."""
    try:
        return stacks.combined(stacks.read(folder / name) for name in profile.collapsed)
    except (OSError, EOFError, UnicodeDecodeError):
        return None


def read_svg(name: str, folder: Path) -> str | None:
    """A kept flame graph's SVG text, None when it is missing or unreadable."""
    try:
        return (folder / name).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return None
