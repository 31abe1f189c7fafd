"""--profile: py-spy sampling the real Python server during each window, its collapsed stacks
and flame graph kept beside the result, shown in the report and compared; the renderer and the
differential on small hand-written stacks; the bad input refused in one line; a process that
cannot be profiled leaves the window measured and says why."""

from __future__ import annotations

import gzip
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import psutil
import pytest

from bench.cells.commands import EXIT_USAGE
from bench.cells.runner import CellRun, run_cell
from bench.profile import diff, flamegraph, perf, pyspy, stacks
from bench.profile.recording import ProfilerError
from bench.profile.window import NO_PERF, ProfileTarget, profiled, window_stem
from bench.report.document import Report
from bench.report.html import render_html
from bench.report.markdown import render_markdown
from bench.report.profile import profile_changes, profile_section
from bench.results import write_result
from bench.results.files import load_result, result_path
from bench.results.schema import Profile
from tests.helpers import REPORT_RUN, bench, native_server

if TYPE_CHECKING:
    from tests.conftest import RecordingProgress

MakeRun = Callable[..., CellRun]
MakeProgress = Callable[..., "RecordingProgress"]
CELL = ("run", "--server", "python", "--db", "sqlite", "--broker", "memory")
SVG = "{http://www.w3.org/2000/svg}"


# --- collapsed stacks --------------------------------------------------------------------


def test_collapsed_text_reads_back_as_written() -> None:
    text = "a (m.py);b (m.py:12) 3\nnot a stack line\na (m.py) 2\na (m.py);b (m.py:12) 1\n"
    parsed = stacks.parse(text)
    assert parsed == Counter({("a (m.py)", "b (m.py:12)"): 4, ("a (m.py)",): 2})
    assert stacks.dump(parsed) == "a (m.py);b (m.py:12) 4\na (m.py) 2\n"
    assert stacks.parse(stacks.dump(parsed)) == parsed


def test_functions_leave_out_process_frames_and_line_numbers() -> None:
    one = Counter({('process 11:"python -m prefect server start"', "f (a/b.py:3)", "g (c.py)"): 5})
    two = Counter({('process 97:"python -m prefect server start"', "f (a/b.py:9)", "g (c.py)"): 2})
    assert stacks.functions(one) == Counter({("f (a/b.py)", "g (c.py)"): 5})
    assert stacks.functions(stacks.combined([one, two])) == Counter({("f (a/b.py)", "g (c.py)"): 7})
    assert stacks.function("<module> (<frozen runpy>)") == "<module> (<frozen runpy>)"


# --- the flame graph ---------------------------------------------------------------------


def test_the_layout_gives_each_frame_its_share_of_the_samples() -> None:
    sampled = Counter({("a", "b"): 3, ("a", "c"): 1, ("d",): 4})
    frames = {(f.name, f.depth): f for f in flamegraph.layout(sampled)}
    assert frames[(flamegraph.ROOT, 0)] == flamegraph.Frame(flamegraph.ROOT, 0, 0.0, 1.0, 8)
    assert frames[("a", 1)] == flamegraph.Frame("a", 1, 0.0, 0.5, 4)
    assert frames[("d", 1)] == flamegraph.Frame("d", 1, 0.5, 0.5, 4)
    assert frames[("b", 2)] == flamegraph.Frame("b", 2, 0.0, 0.375, 3)
    assert frames[("c", 2)] == flamegraph.Frame("c", 2, 0.375, 0.125, 1)
    assert len(frames) == 5


def test_frames_narrower_than_the_minimum_are_left_out_with_their_callees() -> None:
    sampled = Counter({("a", "b"): 999, ("rare", "deeper"): 1})
    names = [f.name for f in flamegraph.layout(sampled, min_fraction=0.01)]
    assert names == [flamegraph.ROOT, "a", "b"]
    assert flamegraph.layout(Counter()) == []


def test_the_svg_is_well_formed_with_a_box_and_tooltip_per_frame() -> None:
    sampled = Counter({("main (app.py)", "<handler> & co (app.py)"): 3, ("main (app.py)",): 1})
    svg = ET.fromstring(flamegraph.render(sampled, "GET flow c=4 <test>"))
    assert svg.tag == f"{SVG}svg" and svg.get("width") == str(flamegraph.WIDTH)
    boxes = svg.findall(f"{SVG}g")
    tips = [g.find(f"{SVG}title").text for g in boxes]  # type: ignore[union-attr]
    assert tips == [
        "all (4 samples, 100.00%)",
        "main (app.py) (4 samples, 100.00%)",
        "<handler> & co (app.py) (3 samples, 75.00%)",
    ]
    span = flamegraph.WIDTH - 2 * flamegraph.PAD
    widths = [float(g.find(f"{SVG}rect").get("width")) for g in boxes]  # type: ignore[union-attr]
    assert widths == [round(span, 2), round(span, 2), round(0.75 * span, 2)]
    title = svg.findall(f"{SVG}text")[0].text
    assert title == "GET flow c=4 <test>"
    assert "no samples" in flamegraph.render(Counter(), "empty")


def test_a_frame_py_spy_read_as_garbage_leaves_the_svg_readable() -> None:
    # --nonblocking reads a stack that changed under it as garbage now and then (CI saw this)
    garbage = "\U000303a0 (\x00)"
    svg = flamegraph.render(Counter({("main (m.py)", garbage): 5}), "t\x1b")
    titles = [t.text or "" for t in ET.fromstring(svg).iter(f"{SVG}title")]
    assert "\U000303a0 (\ufffd) (5 samples, 100.00%)" in titles, titles


def test_a_profilers_stacks_with_bytes_that_are_not_utf8_are_read_with_those_bytes_replaced(
    tmp_path: Path,
) -> None:
    # CI: py-spy wrote a garbage frame that was not UTF-8 and the whole window lost its profile
    raw = tmp_path / "raw.txt"
    raw.write_bytes(b"main (m.py);\xff\xfe (m.py) 3\nmain (m.py) 2\n")
    assert stacks.read(raw, errors="replace") == Counter(
        {("main (m.py)", "\ufffd\ufffd (m.py)"): 3, ("main (m.py)",): 2}
    )
    with pytest.raises(UnicodeDecodeError):
        stacks.read(raw)


# --- the differential --------------------------------------------------------------------


def test_the_differential_compares_inclusive_shares_function_by_function() -> None:
    before = Counter(
        {
            ('process 1:"py"', "serve (s.py:1)", "read (db.py:10)"): 2,
            ('process 1:"py"', "serve (s.py:1)", "write (db.py:20)"): 2,
        }
    )
    after = Counter(
        {
            ('process 2:"py"', "serve (s.py:2)", "read (db.py:11)"): 6,
            # recursion: a function is on a stack once, whatever its depth
            ('process 2:"py"', "serve (s.py:2)", "write (db.py:21)", "write (db.py:21)"): 1,
            ('process 2:"py"', "serve (s.py:2)", "write (db.py:21)"): 1,
        }
    )
    assert diff.inclusive_shares(after) == {
        "serve (s.py)": 100.0,
        "read (db.py)": 75.0,
        "write (db.py)": 25.0,
    }
    grew, fell = diff.grew_and_fell(before, after)
    assert grew == [diff.Change("read (db.py)", 50.0, 75.0)]
    assert fell == [diff.Change("write (db.py)", 50.0, 25.0)]
    assert grew[0].points == 25.0 and fell[0].points == -25.0
    table = diff.markdown_table(before, after)
    assert table.splitlines()[2:] == [
        "| grew | `read (db.py)` | 50.00 | 75.00 | +25.00 |",
        "| fell | `write (db.py)` | 50.00 | 25.00 | -25.00 |",
    ]
    assert diff.markdown_table(before, before) == ""


def test_the_differential_keeps_the_top_ones_largest_change_first() -> None:
    before = Counter({(f"f{k}",): 1 for k in range(20)} | {("g",): 20})
    after = Counter({(f"f{k}",): k + 1 for k in range(20)} | {("g",): 1})
    grew, fell = diff.grew_and_fell(before, after, top=3)
    assert [c.function for c in grew] == ["f19", "f18", "f17"]
    # before: each f 2.5%, g 50%; after: f_k (k + 1) / 211, g 1 / 211: f0 .. f4 fell
    assert [c.function for c in fell] == ["g", "f0", "f1"]
    grew_all, fell_all = diff.grew_and_fell(before, after, top=100)
    assert len(grew_all) == 15 and len(fell_all) == 6
    assert fell[0].before_pct == pytest.approx(50.0)
    assert fell[0].after_pct == pytest.approx(100 / 211)


# --- bad input ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--cost"], "--profile samples a wall-clock run; --cost counts instructions"),
        (["--url", "http://127.0.0.1:9/api"], "--profile samples a server the tool starts"),
    ],
)
def test_profile_with_cost_or_url_is_refused_in_one_line(
    tmp_path: Path, args: list[str], says: str
) -> None:
    out = bench(*CELL, "--profile", *args, cwd=tmp_path, timeout_s=60)
    assert out.returncode == EXIT_USAGE, out.stderr
    assert says in out.stderr and out.stderr.count("\n") == 1, out.stderr
    assert not (tmp_path / "results").exists()


def test_window_stems_are_file_names() -> None:
    assert window_stem("GET flow_run", 4) == "GET-flow_run-c4"
    assert window_stem("filter flows", 16, 50.0) == "filter-flows-c16-r50"


# --- what cannot be profiled -------------------------------------------------------------


def _target(tmp_path: Path, process: psutil.Process) -> ProfileTarget:
    return ProfileTarget(lambda: [process], tmp_path / "profile", tmp_path, "cell")


def test_a_native_process_without_perf_is_not_profiled_and_says_how(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(perf, "executable", lambda: None)
    native = subprocess.Popen(["sleep", "60"])
    try:
        with profiled(_target(tmp_path, psutil.Process(native.pid)), "w-c1", "w c=1") as got:
            assert got.problem == NO_PERF  # known before the window: nothing was started
        assert got.profile is None and got.problems == [NO_PERF]
        assert "apt-get install linux-perf" in NO_PERF
    finally:
        native.kill()
        native.wait()


@pytest.mark.skipif(perf.executable() is None, reason="perf is not installed")
def test_a_native_process_that_only_sleeps_gives_no_profile_and_says_why(tmp_path: Path) -> None:
    native = subprocess.Popen(["sleep", "60"])
    try:
        with profiled(_target(tmp_path, psutil.Process(native.pid)), "w-c1", "w c=1") as got:
            pass
        assert got.problem == "no profile: perf sampled no stack of the server in the window"
        assert not list((tmp_path / "profile").glob("*w-c1*")), "nothing kept, nothing left"
    finally:
        native.kill()
        native.wait()


def test_perf_script_output_is_collapsed_root_first_under_its_process() -> None:
    script = (
        "health_server 4242 \n"
        "\t            1221 extra_work (/tmp/x/health_server)\n"
        "\t            140e main (/tmp/x/health_server)\n"
        "\t           2724a __libc_start_call_main (/usr/lib/libc.so.6)\n"
        "\n"
        "health_server 4242 \n"
        "\tffffffff8223df91 do_syscall_64 ([kernel.kallsyms])\n"
        "\t          10a6f0 accept (/usr/lib/libc.so.6)\n"
        "\t           2724a [unknown] (/usr/lib/libc.so.6)\n"
        "\n"
        "health_server 4242 \n"
        "\t            1221 extra_work (/tmp/x/health_server)\n"
        "\t            140e main (/tmp/x/health_server)\n"
        "\t           2724a __libc_start_call_main (/usr/lib/libc.so.6)\n"
    )
    root = 'process 4242:"health_server"'
    assert perf.collapse(script) == {
        (
            root,
            "__libc_start_call_main (libc.so.6)",
            "main (health_server)",
            "extra_work (health_server)",
        ): 2,
        (
            root,
            "[unknown] (libc.so.6)",
            "accept (libc.so.6)",
            "do_syscall_64 ([kernel.kallsyms])",
        ): 1,
    }
    # the process frame is left out where functions are compared
    assert all(not stacks.is_process(f) for s in stacks.functions(perf.collapse(script)) for f in s)


def test_a_python_process_that_only_sleeps_gives_no_profile_and_says_why(
    tmp_path: Path,
) -> None:
    idle = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        with profiled(_target(tmp_path, psutil.Process(idle.pid)), "w-c1", "w c=1") as got:
            pass  # no window: nothing runs in it, and py-spy leaves idle threads out
        assert got.profile is None
        assert got.problem == "no profile: py-spy sampled no stack of the server in the window"
        assert not list((tmp_path / "profile").glob("w-c1*")), "nothing kept"
        assert not list((tmp_path / "profile").glob(".*.raw")), "py-spy's output removed"
    finally:
        idle.kill()
        idle.wait()


def test_without_py_spy_the_window_says_how_to_get_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(pyspy, "executable", lambda: None)
    with profiled(_target(tmp_path, psutil.Process()), "w-c1", "w c=1") as got:
        pass
    assert got.problems == ["no profile: py-spy is not installed (pip install py-spy)"]


def test_py_spy_failing_to_attach_is_one_line(tmp_path: Path) -> None:
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    recording = pyspy.Recording(
        pyspy.executable() or "py-spy", gone.pid, tmp_path / "raw", tmp_path / "log", 100
    )
    with pytest.raises(ProfilerError) as failed:
        recording.start()
    assert str(failed.value).startswith("py-spy exited (1)")
    assert "\n" not in str(failed.value)


# --- against the real server -------------------------------------------------------------


@pytest.mark.slow
def test_a_profiled_cell_keeps_stacks_and_a_flame_graph_per_window(
    cell_run: MakeRun, progress: MakeProgress, tmp_path: Path
) -> None:
    run = cell_run(workload="seed", duration_s=2.0, warmup_s=0.2, concurrency=[2], profile=True)
    result = run_cell(run, progress())
    assert result.status == "ok", result.error
    run_dir = tmp_path / run.run_id
    assert len(result.endpoints) == 6
    every_frame: set[str] = set()
    for ep in result.endpoints:
        # (SQLite answers some writes 503 while the services hold its lock: the engine's)
        assert not [p for p in ep.problems if "profile" in p], (ep.name, ep.problems)
        assert ep.requests > 0
        found = ep.profile
        assert isinstance(found, Profile), ep.name
        assert found.tool.startswith("py-spy ") and found.rate_hz == 100
        assert found.samples > 0
        stem = f"python-sqlite-memory/profile/{window_stem(ep.name, 2)}"
        assert found.collapsed == [f"{stem}.collapsed.gz"]
        assert found.flamegraph == [f"{stem}.svg"]
        text = gzip.decompress((run_dir / found.collapsed[0]).read_bytes()).decode()
        sampled = stacks.parse(text)
        assert stacks.total(sampled) > 0
        frames = {f for stack in sampled for f in stack}
        assert any("(uvicorn/" in f for f in frames), sorted(frames)[:20]
        every_frame |= frames
        svg = ET.parse(run_dir / found.flamegraph[0]).getroot()
        assert svg.tag == f"{SVG}svg"
        assert len(svg.findall(f"{SVG}g")) > 10
    # (a window of GET /health on a busy machine may catch none of Prefect's own frames)
    assert any("(prefect/server/" in f for f in every_frame), sorted(every_frame)[:20]
    # the GET of a flow run is served by Prefect's read_flow_run
    get_flow_run = next(ep for ep in result.endpoints if ep.name == "GET flow_run")
    assert get_flow_run.profile is not None
    sampled = stacks.read(run_dir / get_flow_run.profile.collapsed[0])
    assert "read_flow_run (prefect/server/api/flow_runs.py)" in diff.inclusive_shares(sampled)

    # the report: a Profiles section, each window's flame graph inline in the HTML page
    write_result(result, result_path(tmp_path, run.run_id, run.cell))
    section = profile_section([result], [tmp_path])
    assert section is not None and len(section.pictures) == 6
    assert [row[1].text for row in section.tables[0].rows] == [
        f"{ep.name} c=2" for ep in result.endpoints
    ]
    ET.fromstring(section.pictures[0].svg)
    page = render_html(Report("t", "s", sections=[section]))
    assert page.count("<svg") == 6 and "<h2>Profiles</h2>" in page
    markdown = render_markdown(Report("t", "s", sections=[section]))
    assert get_flow_run.profile.flamegraph[0].replace("_", "\\_") in markdown  # escaped

    # compare: the same windows on both sides moved nothing; another side's stacks do
    same = profile_changes([result], [result], [tmp_path], [tmp_path])
    assert same.count("No function's share moved.") == 6, same
    assert profile_changes([result], [], [tmp_path], [tmp_path]) == ""


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("cc") is None, reason="no C compiler to build the fixture")
@pytest.mark.skipif(perf.executable() is None, reason="perf is not installed")
def test_a_native_server_is_sampled_by_perf_with_its_functions_named(
    cell_run: MakeRun, progress: MakeProgress, tmp_path: Path
) -> None:
    servers = tmp_path / "servers.toml"
    servers.write_text(native_server(tmp_path, "native", 2_000_000))
    run = cell_run(
        "native",
        servers_file=servers,
        workload="health",
        duration_s=1.0,
        warmup_s=0.1,
        concurrency=[1],
        profile=True,
    )
    result = run_cell(run, progress())
    assert result.status == "ok", result.error
    (ep,) = result.endpoints
    assert ep.profile is not None, ep.problems
    assert ep.profile.tool.startswith("perf ") and ep.profile.samples > 0
    sampled = stacks.read(tmp_path / run.run_id / ep.profile.collapsed[0])
    shares = diff.inclusive_shares(sampled)
    # the loop the fixture runs per request is where its time goes, called from main
    assert shares["extra_work (health_server)"] > 50, shares
    assert "main (health_server)" in shares, shares
    svg = ET.parse(tmp_path / run.run_id / ep.profile.flamegraph[0]).getroot()
    assert svg.tag == f"{SVG}svg"
    assert not list((tmp_path / run.run_id).rglob("*.perf.data*")), "perf's own file removed"


@pytest.mark.slow
def test_a_profiled_scenario_level_keeps_its_flame_graph(
    cell_run: MakeRun, progress: MakeProgress, tmp_path: Path
) -> None:
    run = cell_run(
        workload="flow-runs", tasks=2, duration_s=2.0, warmup_s=0.2, concurrency=[1], profile=True
    )
    result = run_cell(run, progress())
    assert result.status == "ok", result.error
    (scenario,) = result.scenarios
    assert scenario.profile is not None, scenario.problems
    assert scenario.profile.samples > 0
    sampled = stacks.read(tmp_path / run.run_id / scenario.profile.collapsed[0])
    shares = diff.inclusive_shares(sampled)
    # the Prefect server's stacks; which of its frames a window of few samples catches varies
    # (CI: one flow run retrying a 503 through most of a 2 s window, no prefect/server frame)
    assert any("(prefect/" in f for f in shares), sorted(shares)[:20]


def test_where_the_samples_moved_pairs_the_cells_compare_paired(tmp_path: Path) -> None:
    """Two servers of one run (compare --before/--after): their windows pair across cell
    names, as the comparison paired the cells."""
    base = load_result(REPORT_RUN / "python-sqlite-memory.json")
    base.config = base.config.model_copy(update={"profile": True})
    run = tmp_path / base.run_id
    sides = []
    for server, frames in (("python", "a;b"), ("python-dev", "a;c")):
        result = base.model_copy(deep=True)
        result.cell = result.cell.model_copy(update={"server": server})
        name = f"{result.cell.name}/profile/w.collapsed.gz"
        (run / name).parent.mkdir(parents=True)
        (run / name).write_bytes(gzip.compress(f"{frames} 10\n".encode()))
        ep = result.endpoints[0]
        ep.profile = Profile(tool="py-spy", rate_hz=100, samples=10, collapsed=[name])
        sides.append([result])
    assert "No window" in profile_changes(*sides, [run], [run])  # by name: nothing pairs
    pairs = [("python-sqlite-memory", "python-dev-sqlite-memory")]
    text = profile_changes(*sides, [run], [run], pairs)
    assert "### python-sqlite-memory → python-dev-sqlite-memory · " in text, text
    assert "| grew | `c` | 0.00 | 100.00 | +100.00 |" in text, text
