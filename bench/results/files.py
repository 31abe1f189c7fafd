"""Result files: run ids, where a cell's result goes, atomic writing with secrets redacted, and
reading any schema version this version knows."""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from bench.core.errors import ResultsError

# The run id is defined where noxfile.py and scripts/fan_out.py can import it without pydantic;
# re-exported here, where the results it names are.
from bench.core.run_ids import new_run_id as new_run_id
from bench.results.schema import READABLE_VERSIONS, Cell, Result


def utc_now() -> str:
    """The current time as an ISO 8601 UTC string with a Z suffix, to the second."""
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


_URL_PASSWORD = re.compile(r"([a-zA-Z][a-zA-Z0-9+.-]*://[^:/@\s\"']*):[^@\s\"'/]*@")


def redact(text: str) -> str:
    """Replace the password of every URL in `text` with ***."""
    return _URL_PASSWORD.sub(r"\1:***@", text)


def result_path(out_dir: Path, run_id: str, cell: Cell) -> Path:
    return out_dir / run_id / f"{cell.name}.json"


def write_result(result: BaseModel, path: Path) -> Path:
    """Write `result` (a Result, or any report kept as JSON) to `path` atomically, secrets
    redacted; refuse to overwrite a file."""
    text = redact(result.model_dump_json(indent=2)) + "\n"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise ResultsError(f"cannot write results into {path.parent}: {exc.strerror}") from exc
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        # link() fails if the name exists: atomic and never overwrites a kept result.
        os.link(tmp, path)
    except FileExistsError as exc:
        raise ResultsError(f"refusing to overwrite the existing result {path}") from exc
    except OSError as exc:
        raise ResultsError(f"cannot write {path}: {exc.strerror}") from exc
    finally:
        os.unlink(tmp)
    return path


def load_result(path: Path) -> Result:
    """Read one result file; raise ResultsError if it is unreadable or of an unknown version."""
    try:
        data: Any = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ResultsError(f"{path}: not a readable JSON file ({exc})") from exc
    if not isinstance(data, dict):
        raise ResultsError(f"{path}: not a prefect-bench result")
    version = data.get("schema_version")
    if version not in READABLE_VERSIONS:
        readable = ", ".join(map(str, READABLE_VERSIONS))
        raise ResultsError(
            f"{path}: schema_version {version!r} is not one this version reads ({readable})"
        )
    try:
        return Result.model_validate(data)
    except ValidationError as exc:
        raise ResultsError(f"{path}: not a valid result: {exc.error_count()} problem(s)") from exc


def run_folder(paths: Sequence[Path], run_id: str, holding: str | None = None) -> Path | None:
    """The folder of run `run_id`, whose files its results name relative to it (kept profiles,
    callgrind dumps), among what a reader was given (`paths`: result files, a run's folder,
    folders holding runs at any depth); None when none is found. A result file's own folder
    is its run's whatever its name; with `holding` (a name relative to the run's folder), the
    first candidate that holds it, the given folders themselves last (a run's folder renamed)."""
    files = [p.parent for p in paths if p.is_file()]
    folders = [p for p in paths if p.is_dir()]
    candidates = [*files, *(f for f in folders if f.name == run_id)]
    candidates += [f / run_id for f in folders if (f / run_id).is_dir()]
    candidates += [d for f in folders for d in sorted(f.rglob(run_id)) if d.is_dir()]
    if holding is None:
        return candidates[0] if candidates else None
    return next((c for c in [*candidates, *folders] if (c / holding).is_file()), None)
