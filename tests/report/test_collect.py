"""Collecting results: folders, files, duplicates, unreadable ones."""

from __future__ import annotations

import shutil
from pathlib import Path

from bench.report import collect
from tests.report.helpers import RESOURCES, RUN, RUN_DIR


def test_collect_reads_folders_recursively_and_warns_about_bad_files() -> None:
    results, warnings = collect([RESOURCES])

    assert [(r.run_id, r.cell.name, r.status) for r in results] == [
        (RUN, "python-postgres-redis", "failed"),
        (RUN, "python-sqlite-memory", "ok"),
        (RUN, "zig-postgres-redis", "skipped"),
        (RUN, "zig-sqlite-memory", "ok"),
    ]
    # The dot-file, report.json and notes.txt are skipped silently; the bad files are not.
    assert len(warnings) == 3, warnings
    assert "broken.json: not a readable JSON file" in warnings[0]
    assert "future.json: schema_version 99 is not one this version reads" in warnings[1]
    assert "not-a-result.json: not a valid result" in warnings[2]


def test_collect_keeps_unknown_keys() -> None:
    results, _ = collect([RUN_DIR / "python-sqlite-memory.json"])
    assert results[0].model_extra == {"unknown_top_level_key": "kept"}
    assert results[0].endpoints[0].model_extra == {"some_future_key": {"x": 1}}


def test_collect_files_missing_paths_and_duplicates(tmp_path: Path) -> None:
    copy = tmp_path / "copy" / "zig-sqlite-memory.json"
    copy.parent.mkdir()
    shutil.copy(RUN_DIR / "zig-sqlite-memory.json", copy)
    explicit = RUN_DIR / "zig-sqlite-memory.json"

    results, warnings = collect([explicit, RUN_DIR, copy, tmp_path / "nowhere"])

    assert [r.cell.name for r in results] == [
        "python-postgres-redis",
        "python-sqlite-memory",
        "zig-postgres-redis",
        "zig-sqlite-memory",
    ]
    # The file given twice (directly and in its folder) is read once, without a warning.
    assert len(warnings) == 2, warnings
    assert str(tmp_path / "nowhere") in warnings[0] and "no such file" in warnings[0]
    assert str(copy) in warnings[1] and "already read from" in warnings[1]


def test_collect_explicit_file_is_read_even_if_named_like_a_report(tmp_path: Path) -> None:
    shutil.copy(RUN_DIR / "python-sqlite-memory.json", tmp_path / "report.json")
    assert collect([tmp_path]) == ([], [])
    results, warnings = collect([tmp_path / "report.json"])
    assert len(results) == 1 and warnings == []


def test_collect_empty_folder(tmp_path: Path) -> None:
    assert collect([tmp_path]) == ([], [])
    assert collect([]) == ([], [])
