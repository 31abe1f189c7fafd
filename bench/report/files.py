"""A report from result files to report files: `read_report` collects the results and builds
the report once, `write_report` draws it in each file format and decides where the files go.
The `report` command and the matrix's closing report both go through these two.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from bench.core.errors import ConfigError
from bench.report.aggregate import collect
from bench.report.data import render_json
from bench.report.document import Report
from bench.report.html import render_html
from bench.report.markdown import render_markdown
from bench.report.profile import profile_section
from bench.report.tables import build

# The file formats, by file suffix: report.md, report.html, and report.json (the document as
# data, for programs).
FORMATS: dict[str, Callable[[Report], str]] = {
    "md": render_markdown,
    "html": render_html,
    "json": render_json,
}


def read_report(
    paths: Sequence[Path],
    baseline: Sequence[Path] | None = None,
    history: Path | None = None,
    across_machines: bool = False,
) -> tuple[Report, list[str]]:
    """The report over the results in `paths` (files, or folders searched for them): against
    the runs in `baseline` if given, with the History section of the runs in the folder
    `history` if given (ConfigError if it is not a folder), speedups across machines computed
    if `across_machines`. Returns it with a warning per path that could not be used."""
    results, warnings = collect(paths)
    baseline_results = None
    if baseline:
        baseline_results, baseline_warnings = collect(baseline)
        warnings += [f"baseline: {w}" for w in baseline_warnings]
    runs_over_time = None
    if history:
        if not history.is_dir():
            raise ConfigError(f"--history: {history} is not a folder")
        runs_over_time, history_warnings = collect([history])
        warnings += [f"history: {w}" for w in history_warnings]
    report = build(results, baseline_results, runs_over_time, across_machines)
    # --profile's flame graphs: read from the files kept beside the results, under `paths`
    if profiles := profile_section(results, paths):
        report.sections.append(profiles)
    return report, warnings


def write_report(report: Report, out: Path) -> list[Path]:
    """Write `report` into the folder `out` (made if missing) in each of FORMATS, as
    report.<suffix>, replacing the report there; the paths written, or ConfigError when `out`
    cannot be written."""
    written = []
    try:
        out.mkdir(parents=True, exist_ok=True)
        for suffix, render in FORMATS.items():
            path = out / f"report.{suffix}"
            path.write_text(render(report), encoding="utf-8")
            written.append(path)
    except OSError as exc:
        raise ConfigError(f"cannot write the report into {out}: {exc.strerror}") from exc
    return written
