"""The nox sessions as the README tells people to run them (real venvs, real server)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bench.cells.matrix import cells
from bench.results import load_result

pytestmark = pytest.mark.skipif(shutil.which("nox") is None, reason="nox is not installed")


def nox(
    repo_root: Path, results: Path, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    env = os.environ | {"BENCH_RESULTS_DIR": str(results)} | (env or {})
    env.pop("VIRTUAL_ENV", None)
    return subprocess.run(
        ["nox", *args], cwd=repo_root, env=env, capture_output=True, text=True, timeout=600
    )


# Imports, in a fresh interpreter, every module of bench the file given imports, refusing any
# module beyond the standard library (and bench itself) on the way; prints each module.
STANDARD_LIBRARY_ONLY = """
import ast, importlib, sys

class StandardLibraryOnly:
    def find_spec(self, name, path=None, target=None):
        top = name.partition(".")[0]
        if top != "bench" and top not in sys.stdlib_module_names:
            raise ImportError(f"{name} is not in the standard library")

sys.meta_path.insert(0, StandardLibraryOnly())
for node in ast.walk(ast.parse(open(sys.argv[1]).read())):
    if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("bench"):
        importlib.import_module(node.module)
        print(node.module)
"""


@pytest.mark.parametrize("path", ["noxfile.py", "scripts/fan_out.py"])
def test_what_runs_beside_nox_imports_only_the_standard_library(repo_root: Path, path: str) -> None:
    """noxfile.py runs in nox's own environment and scripts/fan_out.py with any Python that runs
    nox: the cell's command line, exit codes and run id they share with the CLI
    (bench.cells.commands), and all else they import of bench, need nothing installed."""
    out = subprocess.run(
        [sys.executable, "-c", STANDARD_LIBRARY_ONLY, str(repo_root / path)],
        cwd=repo_root,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert "bench.cells.commands" in out.stdout.split()


def test_every_cell_is_a_session_named_as_the_design_says(repo_root: Path, tmp_path: Path) -> None:
    """DESIGN.md section 9: server and db always, the broker only where it is not memory."""
    out = nox(repo_root, tmp_path, "-l", "--json", "-s", "bench")
    assert out.returncode == 0, out.stderr
    sessions = [s["session"] for s in json.loads(out.stdout)]
    assert len(sessions) == 12 == len(cells())
    assert sessions[:2] == [
        "bench(server='python', db='sqlite')",
        "bench(server='python', db='sqlite', broker='redis')",
    ]
    assert "bench(server='zig', db='postgres')" in sessions
    assert "bench(server='zig', db='postgres', broker='redis')" in sessions


def test_a_broken_servers_file_breaks_neither_listing_nor_lint(
    repo_root: Path, tmp_path: Path
) -> None:
    broken = tmp_path / "servers.toml"
    broken.write_text("[servers.x\n")
    env = {"BENCH_SERVERS_FILE": str(broken)}
    listed = nox(repo_root, tmp_path, "-l", "--json", "-s", "bench", env=env)
    assert listed.returncode == 0, listed.stderr
    assert len(json.loads(listed.stdout)) == 12  # the built-in servers' cells
    lint = nox(repo_root, tmp_path, "-s", "lint", env=env)
    assert lint.returncode == 0, lint.stdout[-2000:] + lint.stderr[-2000:]
    cell = nox(repo_root, tmp_path, "-s", "bench(server='python', db='sqlite')", env=env)
    assert cell.returncode != 0
    assert "not valid TOML" in cell.stderr


def test_versions_make_sessions_of_their_own(repo_root: Path, tmp_path: Path) -> None:
    env = {"PREFECT_VERSION": "3.4.25,3.9.1"}
    out = nox(repo_root, tmp_path, "-l", "--json", "-s", "bench", env=env)
    assert out.returncode == 0, out.stderr
    sessions = [s["session"] for s in json.loads(out.stdout)]
    assert sessions[:3] == [
        "bench(server='python', db='sqlite', prefect='3.4.25')",
        "bench(server='python', db='sqlite', prefect='3.9.1')",
        "bench(server='python', db='sqlite', broker='redis', prefect='3.4.25')",
    ]
    # zig runs no Prefect of its own: one cell each
    assert "bench(server='zig', db='postgres')" in sessions
    assert len(sessions) == 20  # (python, python-scaled) × 4 × 2 versions + zig × 4
    bad = nox(
        repo_root,
        tmp_path,
        "-s",
        "bench(server='python', db='sqlite')",
        env={"PREFECT_VERSION": "3.9.1,,3.4.25"},
    )
    assert bad.returncode != 0
    assert "PREFECT_VERSION='3.9.1,,3.4.25': '' is not a version" in bad.stderr
    tests = nox(repo_root, tmp_path, "-s", "tests", env={"PREFECT_VERSION": "latest"})
    assert tests.returncode != 0 and "'latest' is not a version" in tests.stderr


@pytest.mark.slow
def test_a_version_not_on_the_index_is_skipped_with_the_installers_line(
    repo_root: Path, tmp_path: Path
) -> None:
    out = nox(
        repo_root,
        tmp_path,
        "-s",
        "bench(server='python', db='sqlite')",
        env={"PREFECT_VERSION": "3.99.0"},
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert (
        "skipped: prefect 3.99.0: Because there is no version of prefect==3.99.0" in out.stderr
    ), out.stderr[-3000:]
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_two_versions_a_year_apart_through_the_matrix(repo_root: Path, tmp_path: Path) -> None:
    """3.4.25 (October 2025) and 3.9.1 (October 2026), each in its own venv resolved as of its
    release, through `nox -s matrix`: both flow-runs cells ok, each emulating its own client
    (checked against the real one in the cell), and the report comparing them like servers.
    A version that does not exist is left out, saying why; zig (no binary here) is skipped."""
    out = nox(
        repo_root,
        tmp_path,
        "-s",
        "matrix",
        "--",
        *("--server", "python", "--server", "zig", "--db", "sqlite", "--broker", "memory"),
        *("--workload", "flow-runs", "--tasks", "2", "--concurrency", "1"),
        # a window longer than one retried step (a 503 from SQLite's lock costs the client ~2 s)
        *("--duration", "4", "--warmup", "0.5"),
        env={"PREFECT_VERSION": "3.4.25,3.99.0,3.9.1"},
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "prefect 3.99.0: Because there is no version of prefect==3.99.0" in out.stderr
    (run,) = [p for p in tmp_path.iterdir() if p.is_dir()]
    results = {
        # not the report, nor the matrix's request (.matrix.json)
        p.name: load_result(p)
        for p in run.glob("*.json")
        if not p.name.startswith(("report", "."))
    }
    assert sorted(results) == [
        "python@3.4.25-sqlite-memory.json",
        "python@3.9.1-sqlite-memory.json",
        "zig-sqlite-memory.json",
    ]
    assert results["zig-sqlite-memory.json"].status == "skipped"
    for version, cutoff in (("3.4.25", "2025-10-23T20:48:00Z"), ("3.9.1", "2026-10-30T19:30:00Z")):
        result = results[f"python@{version}-sqlite-memory.json"]
        assert result.status == "ok", result.error
        assert result.cell.version == result.server.version == version
        resolved = result.environment.resolution
        assert resolved and resolved.prefect == version and resolved.exclude_newer == cutoff
        (scenario,) = result.scenarios
        assert scenario.completed > 0, scenario
        assert result.conformance and result.conformance["client_version"] == version
        emulation = next(c for c in result.conformance["checks"] if c["name"] == "emulation")
        assert emulation["ok"], emulation["detail"]
    old = results["python@3.4.25-sqlite-memory.json"].environment.resolution
    new = results["python@3.9.1-sqlite-memory.json"].environment.resolution
    assert old and new and old.packages["fastapi"] != new.packages["fastapi"]
    report = (tmp_path / "report.md").read_text()
    assert "python@3.9.1-sqlite-memory vs python@3.4.25" in report
