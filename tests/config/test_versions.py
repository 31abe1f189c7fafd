"""Prefect versions as a dimension (bench.config.versions): PREFECT_VERSION's versions, a
release's date from the package index, the installer's line when a version cannot be installed,
the cells and session ids per version, each version's client in the emulation, the resolution a
result records, and the report comparing versions like servers. The matrix's bad --prefect-python is
in tests/test_cli.py.

The whole path, two versions a year apart and one that does not exist through nox, is in
tests/test_noxfile.py.
"""

from __future__ import annotations

import datetime as dt
import http.server
import json
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.cells.matrix import session_params, versioned_cells
from bench.config.versions import (
    DEFAULT_VERSION,
    exclude_newer,
    installer_error_line,
    parse_versions,
    read_resolution,
    release_files,
    released_at,
    version_key,
    write_resolution,
)
from bench.core.errors import ConfigError
from bench.core.ports import LOOPBACK, free_port
from bench.report import build, collect
from bench.report.aggregate import speedup_pairs
from bench.results import Cell, Result, resolution
from bench.workloads import flow_runs
from tests.helpers import REPORT_RUN

# -- PREFECT_VERSION ---------------------------------------------------------------------------


def test_versions_are_read_in_order_and_default_to_the_pinned_one() -> None:
    assert parse_versions(None) == parse_versions(" ") == [DEFAULT_VERSION]
    assert parse_versions("3.9.1, 3.4.25") == ["3.9.1", "3.4.25"]
    assert parse_versions("3.10.0rc1") == ["3.10.0rc1"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("3.4.25,,3.9.1", "'' is not a version"),
        ("3.9.1,latest", "'latest' is not a version"),
        ("3.9.1,3.9.1", "names a version twice"),
    ],
)
def test_a_bad_version_list_is_one_clear_error(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_versions(text)


def test_versions_order_by_their_numbers() -> None:
    assert sorted(["3.9.1", "3.10.0", "3.4.25"], key=version_key) == ["3.4.25", "3.9.1", "3.10.0"]
    assert version_key("3.10.0rc1") == version_key("3.10.0")


def test_each_server_running_prefect_gets_a_cell_and_a_session_per_version() -> None:
    cells = [("python", "sqlite", "memory"), ("zig", "sqlite", "memory")]
    assert versioned_cells(cells, ["3.4.25", "3.9.1"], ["python"]) == [
        ("python", "sqlite", "memory", "3.4.25"),
        ("python", "sqlite", "memory", "3.9.1"),
        ("zig", "sqlite", "memory", ""),
    ]
    # one version: the cells of today, named as the design card names them
    assert versioned_cells(cells, ["3.9.1"], ["python"]) == [(*c, "") for c in cells]
    assert session_params("python", "sqlite", "memory", "3.4.25") == (
        "server='python', db='sqlite', prefect='3.4.25'"
    )
    assert session_params("zig", "postgres", "redis") == (
        "server='zig', db='postgres', broker='redis'"
    )
    cell = Cell(server="python", db="sqlite", broker="memory", version="3.4.25")
    assert (cell.label, cell.name) == ("python@3.4.25", "python@3.4.25-sqlite-memory")


# -- the package index -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def index() -> Iterator[str]:
    """A stand-in for the package index (a boundary prefect-bench does not own): prefect's
    PEP 691 page with two releases, 3.4.25's wheel uploaded a little after its sdist; any
    other page is HTML."""
    page = {
        "meta": {"api-version": "1.1"},
        "name": "prefect",
        "files": [
            {"filename": "prefect-3.4.25.tar.gz", "upload-time": "2025-10-23T20:47:40.1Z"},
            {
                "filename": "prefect-3.4.25-py3-none-any.whl",
                "upload-time": "2025-10-23T20:47:45.371708Z",
            },
            {"filename": "prefect-3.4.2-py3-none-any.whl", "upload-time": "2025-05-08T12:00:00Z"},
            {"filename": "prefect-3.9.1-py3-none-any.whl", "upload-time": "2026-10-30T19:29:09Z"},
        ],
    }

    class Index(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            json_page = self.path == "/simple/prefect/"
            body = json.dumps(page).encode() if json_page else b"<html>not json</html>"
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer((LOOPBACK, 0), Index)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://{LOOPBACK}:{server.server_address[1]}/simple"
    server.shutdown()
    server.server_close()


def test_a_release_is_dated_by_its_last_file_and_resolved_as_of_the_minute_after(
    index: str,
) -> None:
    files = release_files(index)
    released = released_at(files, "3.4.25")
    assert released == dt.datetime(2025, 10, 23, 20, 47, 45, 371708, tzinfo=dt.UTC)
    assert exclude_newer(released) == "2025-10-23T20:48:00Z"
    # 3.4.2's file is not 3.4.25's, nor the other way round
    assert released_at(files, "3.4.2") == dt.datetime(2025, 5, 8, 12, tzinfo=dt.UTC)
    assert released_at(files, "3.99.0") is None


def test_an_index_that_cannot_be_read_is_one_clear_error(index: str) -> None:
    nobody = f"http://{LOOPBACK}:{free_port()}/simple"
    with pytest.raises(ConfigError, match=f"cannot read prefect's files on {nobody}"):
        release_files(nobody)
    with pytest.raises(ConfigError, match="/not-json/ is not a package's page in JSON"):
        release_files(index, package="not-json")


def test_the_installers_line_that_says_why() -> None:
    # uv 0.13's words for a version the index does not have (the real one: test_noxfile.py)
    uv = (
        "error: No solution found when resolving dependencies:\n"
        "  ╰─▶ Because there is no version of prefect==3.99.0 and you require "
        "prefect==3.99.0, we can conclude that your requirements are unsatisfiable.\n"
    )
    assert installer_error_line(uv).startswith("Because there is no version of prefect==3.99.0")
    assert installer_error_line("warning: x\nerror: Failed to fetch\n") == "error: Failed to fetch"
    assert installer_error_line("") == "the install failed and printed nothing"


# -- what a result records ---------------------------------------------------------------------


def test_a_result_records_its_resolution(tmp_path: Path) -> None:
    write_resolution(tmp_path, {"prefect": "3.4.25", "exclude_newer": "2025-10-23T20:48:00Z"})
    assert read_resolution(tmp_path) == {
        "prefect": "3.4.25",
        "exclude_newer": "2025-10-23T20:48:00Z",
    }
    made = resolution(tmp_path)
    assert made.exclude_newer == "2025-10-23T20:48:00Z"
    # the packages are what is installed here, whatever the file says
    assert made.prefect == made.packages["prefect"] != ""
    assert "prefect-bench" in made.packages and "pydantic" in made.packages
    assert resolution(tmp_path / "elsewhere").exclude_newer is None


def test_results_of_before_versions_were_a_dimension_still_read() -> None:
    results, warnings = collect([REPORT_RUN])
    assert warnings == [] and results
    assert all(r.cell.version == "" and r.environment.resolution is None for r in results)


# -- each version's client ---------------------------------------------------------------------


def test_each_version_is_emulated_as_its_own_client() -> None:
    """As measured through the proxy; every flow-runs cell checks its own version's emulation
    against the real client (bench.conformance's emulation check, test_noxfile.py for 3.4.25)."""
    old = flow_runs.client_shape("3.4.25")
    assert (old.events_auth, old.heartbeat, old.storage_reads) == (False, False, False)
    auth_only = flow_runs.client_shape("3.6.14")
    assert (auth_only.events_auth, auth_only.heartbeat, auth_only.storage_reads) == (
        True,
        False,
        False,
    )
    for newest in ("3.9.1", "3.10.0"):
        shape = flow_runs.client_shape(newest)
        assert (shape.events_auth, shape.heartbeat, shape.storage_reads) == (True, True, True)


# -- the report --------------------------------------------------------------------------------


def _as_version(result: Result, version: str) -> Result:
    return result.model_copy(update={"cell": result.cell.model_copy(update={"version": version})})


def test_the_report_compares_versions_like_servers() -> None:
    results, _ = collect([REPORT_RUN])
    python = next(r for r in results if r.cell.name == "python-sqlite-memory")
    zig = next(r for r in results if r.cell.name == "zig-sqlite-memory")
    newer, older = _as_version(python, "3.9.1"), _as_version(python, "3.4.25")
    pairs = speedup_pairs([newer, zig, older])
    # the oldest version is the reference, as python is for other servers
    assert [(p.other.cell.name, p.base.cell.name) for p in pairs] == [
        ("python@3.9.1-sqlite-memory", "python@3.4.25-sqlite-memory"),
        ("zig-sqlite-memory", "python@3.4.25-sqlite-memory"),
    ]
    report = build([newer, zig, older])
    section = next(s for s in report.sections if s.title.startswith("Speedup"))
    assert section.title == "Speedup over python@3.4.25"
    headers = [c.header for c in section.tables[0].columns]
    assert "python@3.9.1-sqlite-memory vs python@3.4.25" in headers
    assert any("each newer version over the oldest, 3.4.25" in p for p in section.paragraphs)
    # the same measurement under two versions: every ratio is 1×
    ratios = {
        row[headers.index("python@3.9.1-sqlite-memory vs python@3.4.25")].text
        for row in section.tables[0].rows
    }
    assert ratios <= {"1.00×", "1.0×", "1×", "~"}, ratios
