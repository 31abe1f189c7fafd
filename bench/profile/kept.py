"""Reading kept profiles back: a result names its profile files relative to its run's folder
(`<results>/<run_id>/`), and whoever reads the result (the report, `compare`) was given a
result file or a folder holding the run somewhere below it: `run_folder` finds the run's
folder from there."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from bench.profile import stacks
from bench.results.schema import Profile


def run_folder(paths: Sequence[Path], run_id: str) -> Path | None:
    """The folder of run `run_id` among `paths` (result files, or folders holding runs at any
    depth, or a run's folder itself); None when none holds it."""
    for path in paths:
        folder = path.parent if path.is_file() else path
        if folder.name == run_id:
            return folder
        if (folder / run_id).is_dir():
            return folder / run_id
    for path in paths:
        if path.is_dir():
            for found in sorted(path.rglob(run_id)):
                if found.is_dir():
                    return found
    return None


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
