"""`prefect-bench doctor` and `matrix --dry-run`: each cell's fate here, asked of the checks its
own run makes, without starting anything; the tools; the time the cells would take."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from bench.cells.commands import EXIT_SKIPPED
from bench.cells.doctor import CELL_OVERHEAD_S, estimate_s
from bench.cells.settings import run_config
from tests.helpers import bench


@pytest.fixture(autouse=True)
def no_zig(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("BENCH_ZIG_BINARY", raising=False)
    monkeypatch.delenv("BENCH_ZIG_SRC", raising=False)


def test_doctor_names_each_cell_s_fate_and_the_tools(tmp_path: Path) -> None:
    out = bench("doctor", "--server", "python", "--server", "zig", "--db", "sqlite",
                "--broker", "memory", cwd=tmp_path)  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr
    lines = out.stdout.splitlines()
    assert any("python-sqlite-memory" in line and "yes" in line for line in lines), out.stdout
    assert any(
        "zig-sqlite-memory" in line and "skipped" in line and "no zig prefect-server" in line
        for line in lines
    ), out.stdout
    assert "1 of 2 cells can run here: about" in out.stdout
    assert "valgrind, vgdb" in out.stdout and "free disk" in out.stdout
    assert list(tmp_path.iterdir()) == []  # nothing run, nothing written


def test_doctor_says_when_the_default_cell_cannot_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    monkeypatch.setenv("PATH", str(bin_dir))  # no valgrind: no --cost cell runs
    out = bench("doctor", "--server", "python", "--db", "sqlite", "--cost", cwd=tmp_path)
    assert out.returncode == EXIT_SKIPPED, out.stdout + out.stderr
    assert "valgrind and vgdb not found (apt-get install valgrind)" in out.stdout
    assert out.stderr.strip().splitlines()[-1] == (
        "prefect-bench: the default cell (python-sqlite-memory) cannot run here"
    )


def test_matrix_dry_run_estimates_the_matrix_and_runs_nothing(tmp_path: Path) -> None:
    out = bench("matrix", "--dry-run", "--server", "python", "--db", "sqlite", "--broker",
                "memory", "--duration", "2", "--concurrency", "1,4", cwd=tmp_path)  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr
    # 6 endpoints x 2 levels x (1 s warm-up + 2 s) + 17 s of start: what such a cell took here
    assert "1 of 1 cells can run here: about 53 s with these options" in out.stdout
    assert not (tmp_path / "results").exists()


def test_the_estimate_counts_repetitions_and_says_what_it_leaves_out() -> None:
    once, _ = estimate_s(run_config({"duration_s": 2, "concurrency": [1, 4]}), cells=2)
    assert once == pytest.approx(2 * (6 * 2 * 3 + CELL_OVERHEAD_S))
    repeated, _ = estimate_s(
        run_config({"duration_s": 2, "concurrency": [1, 4], "repeat": 4}), cells=2
    )
    assert repeated == pytest.approx(5 * once)  # a warm-up, then 4 counted
    scenario, _ = estimate_s(run_config({"workload": "flow-runs", "concurrency": [1, 8]}), 1)
    assert scenario == pytest.approx(2 * 6 + CELL_OVERHEAD_S)
    cost, left_out = estimate_s(run_config({"cost": True}), cells=1)
    assert cost is None and "--cost cells are not estimated" in left_out[0]


def test_on_a_machine_without_docker_nor_binaries_doctor_says_what_each_cell_lacks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    monkeypatch.setenv("PATH", str(bin_dir))  # no postgres, no redis-server
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path / 'no-docker.sock'}")
    for variable in ("BENCH_POSTGRES_URL", "BENCH_REDIS_URL"):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setenv("COLUMNS", "1000")  # each reason on one line
    out = bench("doctor", "--server", "python", cwd=tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr  # the default cell needs none of them
    text = " ".join(out.stdout.split())
    assert "python-sqlite-memory │ yes" in text, out.stdout
    # redis-server is found on PATH only (PostgreSQL's Debian folders are searched too)
    assert "python-sqlite-redis │ skipped │ no provider can provide redis here (external: " in text
    assert "docker: docker SDK cannot reach a daemon at unix://" in text
    assert "local: redis-server not found on PATH" in text
    assert "cells can run here: about" in text


def test_doctor_asks_the_index_for_the_prefect_versions_nox_would_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PREFECT_VERSION", "3.9.1,3.99.0")
    monkeypatch.setenv("COLUMNS", "1000")
    out = bench("doctor", "--server", "python", "--db", "sqlite", "--broker", "memory",
                cwd=tmp_path)  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr
    text = " ".join(out.stdout.split())
    assert re.search(r"3\.9\.1 │ on the index │ released 20\d\d-\d\d-\d\d", text), out.stdout
    assert "3.99.0 │ not on the index │ no file of prefect 3.99.0 on" in text
