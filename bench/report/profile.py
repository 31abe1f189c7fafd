"""The Profiles section: each --profile window's flame graph, cell by cell (bench.profile).

Every window of every result file is listed (the repetitions of a cell are not merged: a
flame graph of several runs would hide which one a stack came from), with its samples and
its files. The HTML page draws each flame graph inline from the kept collapsed stacks (so
the page holds nothing but what prefect-bench drew, and works alone); the other formats
name the files, relative to the run's folder.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from bench.profile import diff, flamegraph, stacks
from bench.profile.kept import read_stacks
from bench.report.document import Column, Picture, Section, Table, Value
from bench.results import Result
from bench.results.files import run_folder
from bench.results.schema import EndpointResult, Profile, ScenarioResult

TITLE = "Profiles"
ABOUT = (
    "The server sampled by py-spy during each window (--profile; warmup included, idle "
    "threads left out): a flame graph per window, each box a function, as wide as the share "
    "of samples whose stack passes through it there, its callers below it. The x axis is not "
    "time: siblings are in alphabetical order. Hover a box for its samples."
)


@dataclass(frozen=True)
class _Window:
    """A measured window as the section lists it: its name, level and profile."""

    name: str
    concurrency: int
    profile: Profile | None
    problems: list[str]


def _windows(result: Result) -> list[_Window]:
    """Every window of `result`: its endpoints', its scenarios', its sweeps' rates."""
    measured: list[EndpointResult | ScenarioResult] = [*result.endpoints, *result.scenarios]
    windows = [_Window(m.name, m.concurrency, m.profile, m.problems) for m in measured]
    for swept in result.sweeps:
        windows += [
            _Window(f"{swept.name} at {p.offered_rps:g}/s", swept.concurrency, p.profile, [])
            for p in swept.points
        ]
    return windows


def _no_profile(window: _Window) -> str:
    return next((p for p in window.problems if p.startswith("no profile")), "no profile")


def _cell(result: Result) -> str:
    repetition = "" if result.repetition is None else f" #{result.repetition}"
    return f"{result.cell.name}{repetition} ({result.run_id})"


def profile_section(results: Sequence[Result], paths: Sequence[Path]) -> Section | None:
    """The Profiles section of the --profile results among `results`, their files looked for
    under `paths` (where the results were read from); None when no result was profiled."""
    profiled = [r for r in results if r.config.profile]
    if not profiled:
        return None
    section = Section(TITLE, paragraphs=[ABOUT])
    table = Table(
        None,
        [
            Column("cell"),
            Column("window"),
            Column("samples", numeric=True),
            Column("errors", numeric=True),
            Column("flame graph"),
        ],
        grouped=True,
    )
    for result in profiled:
        folder = run_folder(paths, result.run_id, _a_kept_file(result))
        for window in _windows(result):
            what = f"{window.name} c={window.concurrency}"
            found = window.profile
            if found is None:
                why = Value(_no_profile(window), tone="muted")
                table.rows.append([Value(_cell(result)), Value(what), Value("—"), Value("—"), why])
                continue
            table.rows.append(
                [
                    Value(_cell(result)),
                    Value(what),
                    Value(f"{found.samples:,}"),
                    Value(f"{found.errors:,}"),
                    Value(", ".join(found.flamegraph)),
                ]
            )
            sampled = read_stacks(found, folder) if folder is not None else None
            if sampled is None:
                section.notes.append(
                    f"{result.cell.name} {what}: its stacks ({', '.join(found.collapsed)}) "
                    f"were not found under {', '.join(map(str, paths))}"
                )
                continue
            title = f"{result.cell.name} {what}: {found.samples:,} samples"
            section.pictures.append(
                Picture(
                    f"{_cell(result)} · {what}",
                    flamegraph.render(sampled, title),
                    link=", ".join(str(folder / name) for name in found.flamegraph),
                )
            )
    section.tables.append(table)
    return section


DIFF_TITLE = "## Where the samples moved (--profile)"
DIFF_ABOUT = (
    "Per window profiled on both sides: the functions whose inclusive share of the server's "
    "samples (the share of sampled stacks they are on) grew most and fell most, in % of each "
    "side's samples and the change in points. A share, not a time: a function whose share "
    "grew takes a larger part of the server's work per sample, whatever the rate became. "
    "Shares of few samples are noisy: the standard error of a share p of n samples is "
    "√(p(1 − p)/n), up to 50/√n points (3.5 points at 200 samples, 1.1 at 2,000)."
)


def _profiled_windows(
    results: Sequence[Result], paths: Sequence[Path]
) -> dict[tuple[str, str, int], tuple[stacks.Stacks, int]]:
    """Each profiled window of `results` by (cell, name, level): its stacks (the repetitions'
    added up) and samples; windows whose files cannot be read are left out."""
    found: dict[tuple[str, str, int], tuple[stacks.Stacks, int]] = {}
    for result in results:
        folder = run_folder(paths, result.run_id, _a_kept_file(result))
        if folder is None or not result.config.profile:
            continue
        for window in _windows(result):
            if window.profile is None:
                continue
            read = read_stacks(window.profile, folder)
            if read is None:
                continue
            key = (result.cell.name, window.name, window.concurrency)
            before, samples = found.get(key, (stacks.Stacks(), 0))
            found[key] = (stacks.combined([before, read]), samples + window.profile.samples)
    return found


def profile_changes(
    before: Sequence[Result],
    after: Sequence[Result],
    before_paths: Sequence[Path],
    after_paths: Sequence[Path],
    pairs: Sequence[tuple[str, str]] | None = None,
    top: int = diff.TOP,
) -> str:
    """The Markdown of where the samples moved between two sides' --profile windows (bench.
    profile.diff), one table per window profiled on both sides of a pair of cells (`pairs`, as
    compare paired them: (before cell, after cell); by default cells of the same name); ''
    unless both sides have profiles."""
    old = _profiled_windows(before, before_paths)
    new = _profiled_windows(after, after_paths)
    if not old or not new:
        return ""
    out = ["", DIFF_TITLE, "", DIFF_ABOUT, ""]
    cells = dict(pairs) if pairs is not None else {cell: cell for cell, _, _ in old}
    shared = [
        (key, (cells[key[0]], *key[1:]))
        for key in old
        if key[0] in cells and (cells[key[0]], *key[1:]) in new
    ]
    if not shared:
        out.append("No window (cell, endpoint or scenario, level) was profiled on both sides.")
    for key, theirs in shared:
        (b, b_samples), (a, a_samples) = old[key], new[theirs]
        cell, name, level = key
        if theirs[0] != cell:
            cell = f"{cell} → {theirs[0]}"
        out.append(f"### {cell} · {name} c={level} ({b_samples:,} → {a_samples:,} samples)")
        out.append("")
        out.append(diff.markdown_table(b, a, top) or "No function's share moved.\n")
    return "\n".join(out).rstrip("\n") + "\n"


def _a_kept_file(result: Result) -> str | None:
    """A profile file `result` names, by which its run's folder is told from others."""
    return next((w.profile.collapsed[0] for w in _windows(result) if w.profile), None)
