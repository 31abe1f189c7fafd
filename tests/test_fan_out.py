"""Tests of the fan-out (scripts/fan_out.py and .github/workflows/bench.yml) and of what the
merged report of cells from several machines says.

The workflow is held to the script's commands; the script's steps are checked with a stand-in
for nox that logs how it was called (fast), and once end to end with the real nox, real clones
and two real python cells (nox's `--no-venv --no-install`: the cells run from their clones on
this test's interpreter, which has the pinned Prefect, instead of each building a venv of its
own; everything else is the workflow's command)."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

from bench.cli import build_parser, main
from bench.config.run import RunConfig
from bench.report import build, collect
from bench.report.aggregate import machine, speedup_pairs
from bench.report.compare import ACROSS_MACHINES_OPTION
from bench.report.document import Report, Section
from bench.results import Cell, Environment, Result, ScenarioResult, load_result
from tests.helpers import ROOT

SCRIPT = ROOT / "scripts" / "fan_out.py"
WORKFLOW = ROOT / ".github" / "workflows" / "bench.yml"
REPORT_RUN = ROOT / "tests" / "resources" / "report" / "20261126T164000Z-3f2a"


def _load_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("fan_out", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


fan_out = _load_script()

# -- the workflow runs the script's commands ---------------------------------------------------

# What the workflow's shell words stand for, as the script's arguments.
SESSION, ARGS, FOLDERS = "<session>", "<cell args>", "<results folders>"
WORKFLOW_WORDS = {"$SESSION": SESSION, "$CELL_ARGS": ARGS, "cells/*": FOLDERS}
# A nox command: a whole line, or inside $( ) (the listing goes into a step output).
NOX_COMMAND = re.compile(r"(?:^|\$\()\s*(nox\b[^)\n]*)")
# The rest of the workflow's shell is GitHub's plumbing around them.
PLUMBING = re.compile(r'^(pip install nox uv|.*>> "\$GITHUB_(OUTPUT|STEP_SUMMARY)")$')


def _workflow() -> dict[Any, Any]:
    loaded = yaml.safe_load(WORKFLOW.read_text())
    assert isinstance(loaded, dict)
    return loaded


def _runs(job: dict[str, Any]) -> list[str]:
    return [
        line.strip() for step in job["steps"] for line in step.get("run", "").splitlines() if line
    ]


def _nox_commands(job: dict[str, Any]) -> list[list[str]]:
    return [
        [WORKFLOW_WORDS.get(word, word) for word in shlex.split(m.group(1))]
        for line in _runs(job)
        if (m := NOX_COMMAND.search(line))
    ]


def test_the_workflow_runs_the_commands_the_script_runs() -> None:
    workflow = _workflow()
    jobs = workflow["jobs"]
    nox = ["nox"]
    assert {name: _nox_commands(job) for name, job in jobs.items()} == {
        "cells": [fan_out.list_command(nox)],
        "cell": [fan_out.cell_command(nox, SESSION, [ARGS])],
        "report": [fan_out.report_command(nox, [FOLDERS])],
    }
    for name, job in jobs.items():
        for line in _runs(job):
            assert NOX_COMMAND.search(line) or PLUMBING.match(line), f"{name}: {line}"
    # One job per listed cell, its session and its results folder from the environment the
    # script sets; the report job merges the folders the cell jobs uploaded.
    cell, report = jobs["cell"], jobs["report"]
    assert cell["strategy"]["matrix"]["cell"] == "${{ fromJSON(needs.cells.outputs.cells) }}"
    assert cell["env"]["SESSION"] == "${{ matrix.cell.session }}"
    assert set(fan_out.CELL_ENV) <= set(workflow["env"]) | set(cell["env"])
    assert set(fan_out.REPORT_ENV) <= set(report["env"])
    upload = next(s for s in cell["steps"] if s.get("uses", "").startswith("actions/upload"))
    download = next(s for s in report["steps"] if s.get("uses", "").startswith("actions/download"))
    assert upload["with"]["path"] in cell["env"][fan_out.RESULTS_ENV]
    assert upload["with"]["name"].startswith("results-") and upload["if"] == "always()"
    assert download["with"] == {"pattern": "results-*", "path": "cells"}
    # the Markdown report is published as the job's summary
    assert 'cat "$BENCH_RESULTS_DIR/report.md" >> "$GITHUB_STEP_SUMMARY"' in _runs(report)


def test_a_cell_of_a_prefect_version_has_a_folder_and_an_artifact_of_its_own() -> None:
    """PREFECT_VERSION=a,b: the listing's call_spec holds the version; each version's cell
    has its own folder here and its own artifact there (the names the results have)."""
    listing = json.dumps(
        [
            {
                "session": f"bench(server='python', db='sqlite', prefect='{v}')",
                "call_spec": {"server": "python", "db": "sqlite", "broker": "memory", "prefect": v},
            }
            for v in ("3.4.25", "3.9.1")
        ]
        + [
            {
                "session": "bench(server='zig', db='sqlite')",
                "call_spec": {"server": "zig", "db": "sqlite", "broker": "memory", "prefect": ""},
            }
        ]
    )
    assert [c.name for c in fan_out.parse_cells(listing)] == [
        "python@3.4.25-sqlite-memory",
        "python@3.9.1-sqlite-memory",
        "zig-sqlite-memory",
    ]
    workflow = _workflow()
    assert workflow["env"]["PREFECT_VERSION"] == "${{ inputs.prefect_version }}"
    upload = next(
        s for s in workflow["jobs"]["cell"]["steps"] if s.get("uses", "").startswith("actions/up")
    )
    assert "format('@{0}', matrix.cell.call_spec.prefect)" in upload["with"]["name"]


# -- the script's steps, with a stand-in for nox -----------------------------------------------

LISTED = [
    ("python", "sqlite", "memory", "bench(server='python', db='sqlite')"),
    ("python", "sqlite", "redis", "bench(server='python', db='sqlite', broker='redis')"),
    ("python", "postgres", "memory", "bench(server='python', db='postgres')"),
    ("zig", "sqlite", "memory", "bench(server='zig', db='sqlite')"),
]
# Logs every call (arguments, folder, environment, the commit checked out there) to
# $FAKE_NOX_LOG; lists LISTED; a cell writes a result-like file into its results folder and
# fails if its session is $FAKE_NOX_FAIL, or, if it is $FAKE_NOX_BLOCK, says "blocking" and
# waits for an interrupt, which it records there before it exits 130.
FAKE_NOX = """
import json, os, signal, subprocess, sys
from pathlib import Path

args = sys.argv[1:]
env = os.environ
head = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True).stdout
call = {"args": args, "cwd": os.getcwd(), "head": head.strip(),
        "results": env.get("BENCH_RESULTS_DIR"), "run_id": env.get("BENCH_RUN_ID")}
with open(env["FAKE_NOX_LOG"], "a") as log:
    log.write(json.dumps(call) + "\\n")
if args[:1] == ["-l"]:
    print(json.dumps([{"session": s, "name": "bench", "call_spec":
                       {"server": a, "db": b, "broker": c}} for a, b, c, s in LISTED]))
    sys.exit(0)
results = Path(env["BENCH_RESULTS_DIR"])
results.mkdir(parents=True, exist_ok=True)
if args[1] == "report":
    (results / "report.md").write_text("merged: " + " ".join(args[3:]))
    sys.exit(0)
(results / "cell.json").write_text(json.dumps(args))

def interrupted(signum, frame):
    with open(results / "interrupted", "a") as f:
        f.write(signal.Signals(signum).name + "\\n")
    sys.exit(130)

if args[1] == env.get("FAKE_NOX_BLOCK"):
    signal.signal(signal.SIGINT, interrupted)
    print("blocking", flush=True)
    while True:
        signal.pause()
sys.exit(1 if args[1] == env.get("FAKE_NOX_FAIL") else 0)
"""
CELL_ARGS = ["--duration", "1", "--concurrency", "1"]


class FakeNox:
    """The stand-in's files, and the environment that makes the script use it."""

    def __init__(self, tmp_path: Path, **behaviour: str) -> None:
        self.script = tmp_path / "fake_nox.py"
        self.script.write_text(f"LISTED = {LISTED!r}\n{FAKE_NOX}")
        self.log = tmp_path / "nox-calls.jsonl"
        self.clones = tmp_path / "tmp"  # TMPDIR: where the script makes its clones
        self.clones.mkdir()
        self.out = tmp_path / "out"
        self.env = os.environ | {"FAKE_NOX_LOG": str(self.log), "TMPDIR": str(self.clones)}
        self.env |= {f"FAKE_NOX_{k.upper()}": v for k, v in behaviour.items()}

    def command(self, *args: str) -> list[str]:
        nox = f"{shlex.quote(sys.executable)} {shlex.quote(str(self.script))}"
        return [sys.executable, str(SCRIPT), "--nox", nox, "--out", str(self.out), *args]

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self.command(*args), env=self.env, capture_output=True, text=True, timeout=120
        )

    def calls(self) -> list[dict[str, Any]]:
        if not self.log.exists():
            return []
        return [json.loads(line) for line in self.log.read_text().splitlines()]


def _head() -> str:
    return subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True, check=True
    ).stdout.strip()


def test_each_cell_runs_in_a_clone_of_its_own_with_a_results_folder_of_its_own(
    tmp_path: Path,
) -> None:
    fake = FakeNox(tmp_path)
    out = fake.run("--server", "python", "--db", "sqlite", "--", *CELL_ARGS)
    assert out.returncode == 0, out.stdout + out.stderr

    listing, *cells, report = fake.calls()
    head = _head()
    assert listing["args"] == fan_out.list_command([])
    sessions = [s for server, db, _, s in LISTED if (server, db) == ("python", "sqlite")]
    assert [c["args"] for c in cells] == [fan_out.cell_command([], s, CELL_ARGS) for s in sessions]
    folders = [str(fake.out / name) for name in ("python-sqlite-memory", "python-sqlite-redis")]
    assert [c["results"] for c in cells] == folders
    # one run id for all; every step in a clone of HEAD, each cell in its own
    assert len({c["run_id"] for c in cells}) == 1 and cells[0]["run_id"]
    places = [call["cwd"] for call in (listing, *cells, report)]
    assert all(Path(p).parent.parent == fake.clones for p in places), places
    assert len({c["cwd"] for c in cells} | {listing["cwd"]}) == 3
    assert {call["head"] for call in (listing, *cells, report)} == {head}
    # the merge: every cell's folder into one report in --out
    assert report["args"] == fan_out.report_command([], folders)
    assert report["results"] == str(fake.out)
    assert (fake.out / "report.md").read_text() == "merged: " + " ".join(folders)
    for folder in folders:
        assert json.loads((Path(folder) / "cell.json").read_text())[-4:] == CELL_ARGS
    assert f"report: {fake.out / 'report.md'}" in out.stdout
    assert list(fake.clones.iterdir()) == []  # the clones are gone


def test_a_failed_cell_is_merged_with_the_others_and_fails_the_fan_out(tmp_path: Path) -> None:
    failing = LISTED[0][3]
    fake = FakeNox(tmp_path, fail=failing)
    out = fake.run("--db", "sqlite", "--broker", "memory")
    assert out.returncode == fan_out.EXIT_FAILED, out.stdout + out.stderr
    _, *cells, report = fake.calls()
    assert [c["args"][1] for c in cells] == [failing, LISTED[3][3]]  # the next one still ran
    assert report["args"] == fan_out.report_command(
        [], [str(fake.out / "python-sqlite-memory"), str(fake.out / "zig-sqlite-memory")]
    )
    assert f"failed: {failing}" in out.stdout
    assert list(fake.clones.iterdir()) == []


def test_no_cell_chosen_is_bad_input(tmp_path: Path) -> None:
    fake = FakeNox(tmp_path)
    out = fake.run("--server", "nope")
    assert out.returncode == fan_out.EXIT_USAGE
    assert "no cell matches" in out.stderr and "zig-sqlite-memory" in out.stderr
    assert [c["args"] for c in fake.calls()] == [fan_out.list_command([])]
    assert list(fake.clones.iterdir()) == []


@pytest.mark.parametrize("sent", [signal.SIGINT, signal.SIGTERM], ids=lambda s: s.name)
def test_an_interrupt_stops_the_running_cell_once_and_removes_every_clone(
    tmp_path: Path, sent: signal.Signals
) -> None:
    blocking = LISTED[0][3]
    fake = FakeNox(tmp_path, block=blocking)
    script = subprocess.Popen(
        fake.command("--server", "python"),
        env=fake.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert script.stdout is not None and script.stderr is not None
    seen = []
    for line in script.stdout:  # until the first cell waits: it has its handler by then
        seen.append(line)
        if line.strip() == "blocking":
            break
    assert seen[-1].strip() == "blocking", seen
    script.send_signal(sent)
    assert script.wait(timeout=30) == fan_out.EXIT_INTERRUPTED
    assert "interrupted" in script.stderr.read()
    # the cell got one interrupt and finished on it; nothing ran after it; its results stay
    cells = [c for c in fake.calls() if c["args"][0] == "-s"]
    assert [c["args"][1] for c in cells] == [blocking]
    folder = fake.out / "python-sqlite-memory"
    assert (folder / "interrupted").read_text() == "SIGINT\n"
    assert not (fake.out / "report.md").exists()
    assert list(fake.clones.iterdir()) == []


# -- end to end: the real nox, two real cells --------------------------------------------------


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("nox") is None, reason="nox is not installed")
def test_two_cells_in_separate_clones_merge_into_one_report(tmp_path: Path) -> None:
    results = tmp_path / "out"
    python_bin = str(Path(sys.executable).parent)
    # TMPDIR as it is: the local Redis runs as another user when root and must enter its folder
    env = os.environ | {"PATH": f"{python_bin}:{os.environ['PATH']}"}
    env.pop("VIRTUAL_ENV", None)
    nox = f"{shlex.quote(sys.executable)} -m nox --no-venv --no-install"
    cells = ["--server", "python", "--db", "sqlite"]
    # the cheapest honest cell: a server started and measured, one short window
    window = ["--workload", "health", "--duration", "0.3", "--warmup", "0", "--concurrency", "1"]
    window += ["--provider", "local"]
    out = subprocess.run(
        [sys.executable, str(SCRIPT), "--nox", nox, "--out", str(results), *cells, "--", *window],
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]

    found = {}
    for name in ("python-sqlite-memory", "python-sqlite-redis"):
        (path,) = (results / name).glob(f"*/{name}.json")  # each in its own folder
        found[name] = load_result(path)
    memory, redis = found["python-sqlite-memory"], found["python-sqlite-redis"]
    assert memory.run_id == redis.run_id
    assert memory.status == "ok", memory.error
    assert [(ep.name, ep.concurrency) for ep in memory.endpoints] == [("health", 1)]
    assert memory.endpoints[0].requests > 0
    # the cells ran from clones of HEAD
    assert memory.environment.git_sha == redis.environment.git_sha == _head()
    if shutil.which("redis-server"):
        assert redis.status == "ok", redis.error
    else:
        assert redis.status == "skipped" and "redis" in (redis.error or "")
    report = (results / "report.md").read_text()  # the two merged
    assert memory.run_id in report
    assert "| python | sqlite | memory | ok |" in report
    if redis.status == "ok":
        assert "| python | sqlite | redis | ok |" in report
    else:
        assert "Skipped python-sqlite-redis" in report
    said = re.finditer(r"^fan-out: cell \d/2 .*? in (\S+),", out.stdout, re.MULTILINE)
    clones = [Path(m.group(1)) for m in said]
    assert len(set(clones)) == 2 and clones[0].parent == clones[1].parent
    assert not clones[0].parent.exists()  # every clone removed


# -- the merged report: which machine, and no speedup across machines unless asked -------------


def _on(result: Result, hostname: str) -> Result:
    env = result.environment.model_copy(update={"hostname": hostname})
    return result.model_copy(update={"environment": env})


def _section(report: Report, start: str) -> Section:
    return next(s for s in report.sections if s.title.startswith(start))


def _fanned_out() -> list[Result]:
    """The report resources' python and zig cells of sqlite × memory, each on a runner."""
    results, warnings = collect([REPORT_RUN])
    assert warnings == []
    cells = {r.cell.name: r for r in results}
    return [
        _on(cells["python-sqlite-memory"], "runner-a"),
        _on(cells["zig-sqlite-memory"], "runner-b"),
    ]


def test_a_report_over_two_machines_names_each_cells_machine() -> None:
    results = _fanned_out()
    matrix = _section(build(results), "Matrix").tables[0]
    headers = [c.header for c in matrix.columns]
    assert headers[:6] == ["run", "server", "db", "broker", "status", "machine"]
    assert [row[5].text for row in matrix.rows] == [machine(r) for r in results]
    assert machine(results[1]).startswith("runner-b (") and "cpus)" in machine(results[1])
    # one machine: no such column
    alike = [_on(r, "runner-a") for r in results]
    assert "machine" not in [c.header for c in _section(build(alike), "Matrix").tables[0].columns]


def test_speedups_across_machines_are_left_out_naming_the_machines() -> None:
    results = _fanned_out()
    section = _section(build(results), "Speedup")
    assert section.tables == []
    assert "measured on the same machine" in section.paragraphs[0]
    (note,) = section.notes
    assert note.startswith("Left out, measured on different machines")
    assert f"zig-sqlite-memory on {machine(results[1])}" in note
    assert f"python-sqlite-memory on {machine(results[0])}" in note
    assert ACROSS_MACHINES_OPTION in note
    # the same results on one machine: the speedup is there, with no such note
    alike = _section(build([_on(r, "runner-a") for r in results]), "Speedup")
    assert [c.header for c in alike.tables[0].columns][2:] == ["zig-sqlite-memory vs python"]
    assert not any("machines" in n for n in alike.notes)


def test_across_machines_computes_the_speedup_and_says_so() -> None:
    results = _fanned_out()
    section = _section(build(results, across_machines=True), "Speedup")
    alike = _section(build([_on(r, "runner-a") for r in results]), "Speedup")
    assert [[v.text for v in row] for row in section.tables[0].rows] == [
        [v.text for v in row] for row in alike.tables[0].rows
    ]
    (note,) = [n for n in section.notes if "machines" in n]
    assert note.startswith(f"Compared across machines, as {ACROSS_MACHINES_OPTION} asked")
    assert "runner-a" in note and "runner-b" in note


def test_a_reference_of_the_same_machine_is_preferred() -> None:
    python_a, zig_b = _fanned_out()
    # a python result of zig's machine, from an older run: preferred to python's of this run
    python_b = _on(python_a, "runner-b").model_copy(
        update={"run_id": "20261120T100000Z-0000", "started_at": "2026-11-20T10:00:00Z"}
    )
    (pair,) = speedup_pairs([python_a, python_b, zig_b])
    assert pair.base is python_b and pair.same_machine
    section = _section(build([python_a, python_b, zig_b]), "Speedup")
    assert section.tables and not any("Left out" in n for n in section.notes)


def _scenario_result(cell: str, hostname: str, per_s: float) -> Result:
    server, db, broker = cell.split("-")
    flow_run = ScenarioResult(
        name="flow run, 10 tasks",
        concurrency=1,
        duration_s=5.0,
        completed=round(per_s * 5),
        per_s=per_s,
        duration_ms=None,
    )
    return Result(
        run_id="20261202T100000Z-f4n0",
        cell=Cell(server=server, db=db, broker=broker),
        status="ok",
        started_at="2026-12-02T10:00:00Z",
        config=RunConfig(workload="flow-runs", concurrency=[1]),
        environment=Environment(
            cpu_model="Test CPU",
            cpu_count=4,
            kernel="6.1.0",
            python="3.11.9",
            bench_version="0.0.0",
            hostname=hostname,
        ),
        scenarios=[flow_run],
    )


def test_scenario_speedups_across_machines_too() -> None:
    title = "Scenarios per second over python"
    python = _scenario_result("python-postgres-redis", "runner-a", 10.0)
    zig = _scenario_result("zig-postgres-redis", "runner-b", 25.0)
    section = _section(build([python, zig]), "Scenarios")
    assert title not in [t.title for t in section.tables]
    assert any(
        n.startswith("Left out, measured on different machines") and "runner-b" in n
        for n in section.notes
    )
    asked = _section(build([python, zig], across_machines=True), "Scenarios")
    (speedup,) = [t for t in asked.tables if t.title == title]
    assert [v.text for v in speedup.rows[0]][:2] == ["flow run, 10 tasks", "1"]
    assert speedup.rows[0][2].number == pytest.approx(2.5)
    assert any(n.startswith("Compared across machines") for n in asked.notes)


def test_the_report_command_takes_across_machines(tmp_path: Path) -> None:
    results = tmp_path / "results"
    for result in _fanned_out():
        folder = results / result.cell.name / result.run_id
        folder.mkdir(parents=True)
        (folder / f"{result.cell.name}.json").write_text(result.model_dump_json())
    assert build_parser().parse_args(["report", ACROSS_MACHINES_OPTION]).across_machines

    refused, asked = tmp_path / "refused", tmp_path / "asked"
    assert main(["report", str(results), "--out", str(refused)]) == 0
    assert main(["report", str(results), "--out", str(asked), ACROSS_MACHINES_OPTION]) == 0
    refused_md = (refused / "report.md").read_text()
    asked_md = (asked / "report.md").read_text()
    assert "Left out, measured on different machines" in refused_md
    assert "zig-sqlite-memory vs python" not in refused_md
    assert "zig-sqlite-memory vs python" in asked_md
    assert f"as {ACROSS_MACHINES_OPTION} asked" in asked_md


def test_cells_of_two_schema_versions_merge_into_one_report(tmp_path: Path) -> None:
    """A fan-out whose cells ran different prefect-bench versions: a schema 1 run (endpoints)
    and a schema 2 run (scenarios) merged by the report command, as the report job does."""
    old = ROOT / "tests" / "resources" / "report" / "20261126T164000Z-3f2a"
    new = ROOT / "tests" / "resources" / "report_scenarios"
    found, warnings = collect([old, new])
    assert warnings == [] and {r.schema_version for r in found} == {1, 2}
    assert main(["report", str(old), str(new), "--out", str(tmp_path)]) == 0
    merged = (tmp_path / "report.md").read_text()
    assert "zig-sqlite-memory vs python" in merged  # the schema 1 run's endpoints
    assert "Completed scenarios per second" in merged  # the schema 2 run's scenarios
