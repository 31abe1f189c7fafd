import json
from pathlib import Path

import pytest

from bench.config.run import RunConfig
from bench.core.errors import ResultsError
from bench.results import (
    SCHEMA_VERSION,
    Cell,
    Result,
    ServiceInfo,
    environment,
    load_result,
    new_run_id,
    redact,
    result_path,
    utc_now,
    write_result,
)
from bench.results.files import run_folder


def make_result(**changes: object) -> Result:
    base = Result(
        run_id=new_run_id(),
        cell=Cell(server="python", db="postgres", broker="redis"),
        status="ok",
        started_at=utc_now(),
        config=RunConfig(workload="seed", duration_s=1.0, warmup_s=0.5, concurrency=[1, 4]),
        environment=environment(),
    )
    return base.model_copy(update=changes)


def test_redact_hides_passwords_in_urls() -> None:
    text = "postgresql+asyncpg://prefect:s3cr3t@127.0.0.1:5432/db and redis://:pw@127.0.0.1:1/0"
    redacted = redact(text)
    assert "s3cr3t" not in redacted and ":pw@" not in redacted
    assert "postgresql+asyncpg://prefect:***@127.0.0.1:5432/db" in redacted
    assert redact("http://127.0.0.1:4200/api") == "http://127.0.0.1:4200/api"


def test_written_result_has_no_secret_and_round_trips(tmp_path: Path) -> None:
    result = make_result(
        error="connect to postgresql://u:hunter2@127.0.0.1:5/x failed",
        services={"postgres": ServiceInfo(provider="local", version="15.18")},
    )
    path = write_result(result, result_path(tmp_path, result.run_id, result.cell))
    assert path.name == "python-postgres-redis.json"
    assert "hunter2" not in path.read_text()
    loaded = load_result(path)
    assert loaded.schema_version == SCHEMA_VERSION
    assert loaded.cell == result.cell
    assert loaded.services["postgres"].version == "15.18"
    assert list(tmp_path.rglob(".*tmp")) == []  # no temporary file left


def test_never_overwrites_a_result(tmp_path: Path) -> None:
    path = tmp_path / "r.json"
    write_result(make_result(), path)
    first = path.read_text()
    with pytest.raises(ResultsError, match="refusing to overwrite"):
        write_result(make_result(status="failed"), path)
    assert path.read_text() == first
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"]


def test_unwritable_folder_is_a_clear_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(ResultsError, match="cannot write results into"):
        write_result(make_result(), blocker / "run" / "r.json")


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", "not a readable JSON"),
        ("[]", "not a prefect-bench result"),
        (json.dumps({"schema_version": 99}), "schema_version 99"),
        (json.dumps({"schema_version": 1, "run_id": "x"}), "not a valid result"),
    ],
)
def test_load_rejects_what_it_cannot_read(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(ResultsError, match=message):
        load_result(path)


def test_cell_names() -> None:
    assert Cell(server="zig", db="sqlite", broker="memory").name == "zig-sqlite-memory"
    assert Cell(server="external").name == "external"


def test_environment_describes_the_machine() -> None:
    env = environment()
    assert env.cpu_count >= 1 and env.cpu_model and env.kernel and env.python


def test_a_runs_folder_is_found_from_what_a_reader_was_given(tmp_path: Path) -> None:
    run_id = "20261207T000000Z-abcd"
    run = tmp_path / "results" / run_id
    (run / "cell" / "profile").mkdir(parents=True)
    kept = "cell/profile/w-c1.collapsed.gz"
    (run / kept).write_bytes(b"")
    (run / "cell.json").write_text("{}")
    for given in ([tmp_path], [tmp_path / "results"], [run], [run / "cell.json"]):
        assert run_folder(given, run_id) == run, given
        assert run_folder(given, run_id, kept) == run, given
    assert run_folder([tmp_path], "20261207T000000Z-ffff") is None
    # a run's folder renamed: found by what it holds, and by a result file in it
    renamed = run.rename(tmp_path / "before")
    assert run_folder([renamed], run_id) is None
    assert run_folder([renamed], run_id, kept) == renamed
    assert run_folder([renamed / "cell.json"], run_id) == renamed
    assert run_folder([renamed], run_id, "cell/profile/missing.gz") is None
