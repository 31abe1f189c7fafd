"""--preload: a cell's database seeded through the real server's API, kept in the cache and
restored into the next cell; a server that cannot seed, a corrupt or half-written
cache entry, and Ctrl-C while writing one."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psycopg
import pytest

from bench.cells.runner import CellRun, run_cell
from bench.config.preload_shape import DEFAULT_SHAPE, Shape, parse_shape
from bench.core import ownership
from bench.core.errors import ConfigError
from bench.preload import cache
from bench.preload.prepare import check_disk
from bench.preload.seed import SeedError, seed
from bench.results import Result
from bench.servers.adapter import ServerSetup
from bench.servers.registry import make_server
from bench.services.base import PostgresService
from bench.services.external import POSTGRES_ENV

if TYPE_CHECKING:
    from tests.conftest import RecordingProgress

MakeRun = Callable[..., CellRun]
MakeProgress = Callable[..., "RecordingProgress"]
SMALL = "flows=2,deployments=1,tasks=1,logs=3,days=2"
SHORT = {"workload": "health", "duration_s": 0.3, "warmup_s": 0.1, "concurrency": [1]}


@pytest.fixture(autouse=True)
def cache_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Each test its own cache folder."""
    folder = tmp_path / "cache"
    monkeypatch.setenv("BENCH_CACHE_DIR", str(folder))
    return folder


# -- the shape and bad input ----------------------------------------------------------------


def test_a_shape_names_the_keys_it_changes_and_keeps_the_rest() -> None:
    assert parse_shape("") == DEFAULT_SHAPE
    shape = parse_shape("tasks=5, days=3")
    assert (shape.tasks, shape.days, shape.flows) == (5, 3, DEFAULT_SHAPE.flows)
    assert parse_shape(shape.text()) == shape


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("tasks", "expected KEY=N with KEY one of flows, deployments, tasks, logs, days"),
        ("colour=3", "got 'colour=3'"),
        ("tasks=many", "tasks must be a whole number, got 'many'"),
        ("flows=0", "flows must be at least 1, got 0"),
        ("logs=-1", "logs must be at least 0, got -1"),
    ],
)
def test_a_bad_shape_says_what_is_wrong(text: str, message: str) -> None:
    with pytest.raises(ValueError) as caught:
        parse_shape(text)
    assert message in str(caught.value)


def test_a_preload_that_would_not_fit_is_refused_with_the_sizes(tmp_path: Path) -> None:
    free = shutil.disk_usage(tmp_path).free
    runs = free // 10_000  # far more than fits at any size per run
    with pytest.raises(ConfigError) as caught:
        check_disk("sqlite", runs, 2, 10, [tmp_path / "not-yet", tmp_path])
    text = str(caught.value)
    assert f"--preload {runs}: needs about" in text and "GB free" in text
    check_disk("sqlite", 1000, 2, 10, [tmp_path])  # a small one fits


# -- a server that cannot seed ----------------------------------------------------------------


def test_a_server_that_cannot_seed_is_named_with_the_request_it_refused(health_only: str) -> None:
    with pytest.raises(SeedError) as caught:
        seed(health_only, 10, parse_shape(SMALL), "sqlite", lambda done: None)
    assert str(caught.value) == (
        'seeding: POST /flows/ answered 404 (expected 201): {"detail":"Not Found"}'
    )


# -- the cache ------------------------------------------------------------------------------


def _key(**changes: Any) -> cache.Key:
    fields = {
        "server": "python",
        "server_version": "3.9.1",
        "db": "sqlite",
        "postgres_major": None,
        "flow_runs": 10,
        "shape": SMALL,
    }
    return cache.Key(**(fields | changes))


def _entry(root: Path, key: cache.Key, content: bytes = b"data" * 100) -> cache.Entry:
    labels = ownership.Labels(run_id="r", cell="c")
    with cache.making(root, labels) as folder:
        data = folder / "database.sqlite"
        data.write_bytes(content)
        return cache.commit(root, folder, key, data, seeded={"flow_runs": 10}, made_seconds=1.0)


def test_an_entry_is_found_whole_and_only_for_its_own_key(tmp_path: Path) -> None:
    key = _key()
    assert cache.find(tmp_path, key) == (None, None)
    made = _entry(tmp_path, key)
    found, problem = cache.find(tmp_path, key)
    assert problem is None and found == made
    assert found.data.read_bytes() == b"data" * 100
    # another server version, N or shape is another entry, never this one
    for other in (_key(server_version="3.8.0"), _key(flow_runs=11), _key(shape="flows=1")):
        assert other.folder != key.folder
        assert cache.find(tmp_path, other) == (None, None)
    assert [p.name for p in tmp_path.iterdir()] == [key.folder]  # nothing half-written left


def test_a_corrupt_or_half_written_entry_is_never_used(tmp_path: Path) -> None:
    key = _key()
    made = _entry(tmp_path, key)
    with made.data.open("r+b") as f:  # the same size, other bytes: only the checksum knows
        f.write(b"DATA")
    assert cache.find(tmp_path, key)[1] == (
        "database.sqlite is not what its manifest says (half-written or changed)"
    )
    made.data.write_bytes(b"short")
    assert "not what its manifest says" in (cache.find(tmp_path, key)[1] or "")
    (made.path / cache.MANIFEST).write_text("{not json")
    assert (cache.find(tmp_path, key)[1] or "").startswith("unreadable: ")
    # made afresh, it replaces the broken one
    _entry(tmp_path, key, b"fresh")
    found, problem = cache.find(tmp_path, key)
    assert problem is None and found and found.data.read_bytes() == b"fresh"


def test_ctrl_c_while_writing_an_entry_leaves_nothing(tmp_path: Path) -> None:
    labels = ownership.Labels(run_id="r", cell="c")
    with pytest.raises(KeyboardInterrupt), cache.making(tmp_path, labels) as folder:
        (folder / "database.sqlite").write_bytes(b"half")
        raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []


def test_a_killed_writer_s_folder_is_removed_by_the_next_one(tmp_path: Path) -> None:
    """A run killed (SIGKILL) while writing an entry leaves its marked folder; the next run
    that writes one removes it, since its owner is gone."""
    code = (
        "import os, sys; from pathlib import Path; from bench.core import ownership; "
        "from bench.preload import cache; "
        "cm = cache.making(Path(sys.argv[1]), ownership.Labels('r', 'c')); "
        "folder = cm.__enter__(); (folder / 'database.sqlite').write_bytes(b'half'); "
        "os.kill(os.getpid(), 9)"
    )
    killed = subprocess.run([sys.executable, "-c", code, str(tmp_path)], check=False)
    assert killed.returncode == -9
    (left,) = tmp_path.iterdir()
    assert left.name.startswith(ownership.FOLDER_PREFIX)
    _entry(tmp_path, _key())
    assert [p.name for p in tmp_path.iterdir()] == [_key().folder]


# -- real cells: made, then restored ---------------------------------------------------------


def _preloaded(
    cell_run: MakeRun, progress: MakeProgress, db: str, **config: Any
) -> tuple[Result, RecordingProgress]:
    seen = progress()
    run = cell_run("python", db, preload=40, preload_shape=SMALL, **(SHORT | config))
    return run_cell(run, seen), seen


def _made_then_restored(
    cell_run: MakeRun, progress: MakeProgress, db: str, **config: Any
) -> tuple[Result, Result]:
    made, _ = _preloaded(cell_run, progress, db, **config)
    assert made.status == "ok", made.error
    assert made.preload is not None and made.preload.source == "made"
    assert made.preload.flow_runs == 40
    counts = made.preload.counts
    assert (counts["task_runs"], counts["logs"], counts["flows"], counts["deployments"]) == (
        40,
        120,
        2,
        2,
    )
    assert counts["events"] > 0  # the server's own events of the runs' state changes
    assert made.preload.cache and Path(made.preload.cache, cache.MANIFEST).exists()
    assert made.preload.first_start and made.preload.last_start
    # the UI's reads, each answer checked against what the restored database holds
    restored, seen = _preloaded(cell_run, progress, db, workload="ui", **config)
    assert restored.status == "ok", restored.error
    assert len(restored.endpoints) == 9 and all(not e.errors for e in restored.endpoints)
    assert restored.preload is not None and restored.preload.source == "restored"
    assert restored.preload.cache == made.preload.cache
    assert restored.preload.counts == counts
    assert restored.preload.made_seconds == pytest.approx(made.preload.seconds, abs=0.01)
    assert restored.preload.seconds < made.preload.seconds
    assert not any(s.startswith("seeding") for s in seen.stages), seen.stages
    return made, restored


@pytest.mark.slow
def test_sqlite_preload_is_made_once_then_restored(
    cell_run: MakeRun, progress: MakeProgress
) -> None:
    made, _ = _made_then_restored(cell_run, progress, "sqlite")
    assert made.preload and made.preload.bytes and made.preload.bytes > 40 * 1000


@pytest.mark.slow
def test_ctrl_c_while_seeding_leaves_nothing_in_the_cache(
    cell_run: MakeRun, progress: MakeProgress, cache_dir: Path
) -> None:
    class InterruptedSeeding(progress):  # type: ignore[misc,valid-type]
        """Ctrl-C after the fifth flow run seeded."""

        def seeding(self, total: int) -> Callable[[int], None]:
            def update(done: int) -> None:
                if done == 5:
                    raise KeyboardInterrupt

            return update

    run = cell_run("python", "sqlite", preload=40, preload_shape=SMALL, **SHORT)
    result = run_cell(run, InterruptedSeeding())
    assert result.status == "failed" and result.error == "interrupted"
    assert result.preload is None
    entries = list((cache_dir / "preload").iterdir()) if (cache_dir / "preload").exists() else []
    assert entries == []


@pytest.mark.slow
def test_postgres_preload_is_made_then_restored_with_pg_restore(
    cell_run: MakeRun,
    progress: MakeProgress,
    monkeypatch: pytest.MonkeyPatch,
    postgres: PostgresService,
) -> None:
    """Made in a cell, kept as a pg_dump archive; restored into a fresh database it holds the
    same rows (restoring through a second cell is the sqlite test's: the same code path)."""
    monkeypatch.setenv(POSTGRES_ENV, postgres.url)
    made, _ = _preloaded(cell_run, progress, "postgres", provider="external")
    assert made.status == "ok", made.error
    assert made.preload and made.preload.source == "made" and made.preload.cache
    entry = Path(made.preload.cache)
    manifest_text = (entry / cache.MANIFEST).read_text()
    manifest = json.loads(manifest_text)
    assert manifest["file"] == "database.pgdump"
    assert manifest["key"]["postgres_major"] == cache.postgres_major(postgres)
    assert postgres.password not in manifest_text
    fresh = dataclasses.replace(postgres, database="preload_restored")
    with psycopg.connect(postgres.url, autocommit=True) as conn:
        conn.execute("CREATE DATABASE preload_restored")
    found, problem = cache.find(cache.cache_root(), cache.Key(**manifest["key"]))
    assert problem is None and found
    cache.restore_postgres(found, fresh)
    with psycopg.connect(fresh.url) as conn:
        rows = {
            table: conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
            for table in ("flow_run", "task_run", "log", "deployment", "flow")
        }
    assert rows == {"flow_run": 40, "task_run": 40, "log": 120, "deployment": 2, "flow": 2}


def test_two_spellings_of_one_shape_are_one_cache_entry() -> None:
    assert parse_shape("tasks=2").text() == parse_shape("").text() == Shape().text()
    assert _key(shape=parse_shape("tasks=2").text()) == _key(shape=Shape().text())
    assert os.sep not in _key().folder


def test_the_seeding_server_runs_without_the_late_runs_service(tmp_path: Path) -> None:
    """It creates runs Scheduled in the past: the late-runs service would race its writes."""
    adapter = make_server("python")
    setup = ServerSetup(db="sqlite", broker="memory", logdir=tmp_path, datadir=tmp_path)
    late = "PREFECT_SERVER_SERVICES_LATE_RUNS_ENABLED"
    assert adapter.environment(1234, dataclasses.replace(setup, seeding=True))[late] == "false"
    assert late not in adapter.environment(1234, setup)  # the measured server has all it has
