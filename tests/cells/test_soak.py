"""--soak: one server, window after window, each kept at its time; its bad input; a soak
interrupted keeps what it measured; the trend of each figure and the report's Soak section."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from bench.cells.commands import EXIT_INTERRUPTED, EXIT_USAGE
from bench.compare.trend import trend
from bench.core.process import wait_until
from bench.report import build, collect, render_markdown
from bench.report.soak import soak_section
from bench.results import Soak, SoakWindow, load_result
from tests.helpers import REPORT_RUN, bench

CELL = ("run", "--server", "python", "--db", "sqlite", "--broker", "memory")


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--soak", "5s", "--duration", "3", "--concurrency", "1"], "shorter than two windows"),
        (["--soak", "1h", "--concurrency", "1,4"], "--soak runs one level"),
        (["--soak", "1h", "--concurrency", "1", "--repeat", "3"], "without --repeat"),
        (["--soak", "soon", "--concurrency", "1"], "expected a duration such as 2h"),
        (["--soak", "0", "--concurrency", "1"], "--soak"),
    ],
)
def test_bad_soaks_are_refused_in_one_line(tmp_path: Path, args: list[str], says: str) -> None:
    out = bench(*CELL, "--workload", "health", *args, cwd=tmp_path, timeout_s=60)
    assert out.returncode == EXIT_USAGE, out.stderr
    assert says in out.stderr and out.stderr.count("\n") == 1, out.stderr
    assert not (tmp_path / "results").exists()


def test_a_soak_keeps_each_window_at_its_time_and_merges_them(tmp_path: Path) -> None:
    out = bench(
        *CELL,
        *("--workload", "health", "--concurrency", "2", "--duration", "0.5", "--warmup", "0.1"),
        *("--soak", "3s", "--out", "results"),
        cwd=tmp_path,
    )
    assert out.returncode == 0, out.stderr
    assert "soak window 2:" in out.stderr and "left" in out.stderr
    (path,) = (tmp_path / "results").glob("*/python-sqlite-memory.json")
    result = load_result(path)
    assert result.soak is not None and result.soak.planned_s == 3.0
    windows = result.soak.windows
    assert len(windows) >= 3 and [w.window for w in windows] == list(range(len(windows)))
    times = [w.at_s for w in windows]
    assert times == sorted(times) and times[0] == 0.0 and times[-1] < 3.0
    assert all(w.per_s > 0 and w.server_rss_mb and w.db_mb for w in windows)
    # the windows merged into the one measurement every report reads
    (health,) = result.endpoints
    assert health.requests > 0 and health.duration_s == pytest.approx(0.5 * len(windows))
    assert "## Soak" in render_markdown(build([result]))


@pytest.mark.slow
def test_an_interrupted_soak_keeps_and_reports_what_it_measured(tmp_path: Path) -> None:
    log = tmp_path / "out.log"
    argv = [sys.executable, "-m", "bench", *CELL, "--workload", "health", "--concurrency", "1"]
    argv += ["--duration", "0.5", "--warmup", "0", "--soak", "10m", "--out", "results"]
    with open(log, "w") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, cwd=tmp_path)
    try:
        wait_until(lambda: "soak window 4:" in log.read_text(), timeout_s=120, interval_s=0.1)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=60) == EXIT_INTERRUPTED
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    (path,) = (tmp_path / "results").glob("*/python-sqlite-memory.json")
    result = load_result(path)
    assert result.status == "failed" and result.error == "interrupted"
    assert result.soak is not None and len(result.soak.windows) >= 3
    section = soak_section([result])
    assert section is not None and "interrupted" in section.paragraphs[0]
    assert json.loads(path.read_text())["soak"]["planned_s"] == 600


def test_a_trend_says_what_its_interval_lets_it_say() -> None:
    grows = trend([(t * 60.0, 100 + t * 0.5 + (t % 2) * 0.1) for t in range(30)])
    assert grows is not None and grows.verdict == "grows"
    assert grows.per_hour == pytest.approx(30, rel=0.05)  # 0.5 a minute
    assert grows.low is not None and grows.low > 0
    noisy = trend([(t * 60.0, 100 + (-1) ** t) for t in range(30)])
    assert noisy is not None and noisy.verdict == "no trend"
    flat = trend([(t * 60.0, 7.0) for t in range(5)])
    assert flat is not None and (flat.per_hour, flat.verdict) == (0.0, "no trend")
    two = trend([(0.0, 1.0), (60.0, 2.0)])
    assert two is not None and two.verdict == "unsure"
    assert trend([(0.0, 1.0), (60.0, None)]) is None


def test_the_soak_section_flags_growth_in_red() -> None:
    (result, *_) = collect([REPORT_RUN])[0]
    windows = [
        SoakWindow(
            window=k,
            at_s=k * 60.0,
            name="health",
            per_s=1000.0 - k,
            errors=0,
            server_rss_mb=200 + 2 * k,  # 2 MB a minute: a leak
            db_mb=5.0,
        )
        for k in range(10)
    ]
    soaked = result.model_copy(update={"soak": Soak(planned_s=600, window_s=50, windows=windows)})
    section = soak_section([soaked])
    assert section is not None
    rows = {row[2].text: row for row in section.tables[0].rows}
    rss = rows["server RSS (MB)"]
    assert rss[5].text.startswith("+120 MB/h") and (rss[6].text, rss[6].tone) == ("grows", "bad")
    assert (rows["rate (/s)"][6].text, rows["rate (/s)"][6].tone) == ("shrinks", "bad")
    assert rows["database (MB)"][6].text == "no trend"
    assert {c.title for c in section.charts} >= {"server RSS over the soak", "rate over the soak"}
