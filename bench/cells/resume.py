"""What a matrix's run folder keeps so that `matrix --resume` can continue it: the request (the
cells, `run`'s options, the interpreters of the Prefect versions, the servers file and the
folder the matrix ran in), written once at its start, and the lock its processes hold while it
runs.

What is done is not written anywhere else: the run's results say it (bench.cells.rounds.standing
reads them), so a matrix killed at any moment leaves nothing that disagrees with them. Both
files are dot-files: the report and `compare` read every other *.json of a run's folder.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from pydantic import BaseModel, Field, ValidationError

from bench.core.errors import ConfigError
from bench.core.run_ids import RUN_ID
from bench.results import Cell, write_result

REQUEST_FILE = ".matrix.json"
LOCK_FILE = ".matrix.lock"
# The request's format. 1 (issue 21): run_id, cells, run_args, servers, pythons, cwd,
# started_at. A version this one does not know is refused, never guessed at.
REQUEST_VERSION = 1
READABLE_REQUESTS = (1,)
# How long `--resume` waits for the processes of a run to let go of it: a matrix killed with
# SIGKILL leaves its cell stopping its server and writing its partial result for a few seconds.
RESUME_WAIT_S = 60.0


class MatrixRequest(BaseModel):
    """What a matrix was asked to do: everything `--resume` needs to run the rest."""

    schema_version: int = REQUEST_VERSION
    run_id: str
    cells: list[Cell] = Field(description="in the matrix's order (odd rounds run them so)")
    run_args: list[str] = Field(description="`run`'s options for every cell, as given")
    servers: str | None = Field(default=None, description="--servers, as an absolute path")
    pythons: dict[str, str] = Field(
        default_factory=dict, description="--prefect-python: each version's interpreter"
    )
    together: bool = Field(
        default=False, description="--together: the servers of each db and broker measured together"
    )
    cwd: str = Field(description="the folder the matrix ran in; its cells run there")
    started_at: str


def locate(text: str, out: Path) -> Path:
    """The run folder `--resume` names: a run id under `out`, or a path to the folder."""
    if RUN_ID.match(text) and ((out / text).is_dir() or not Path(text).is_dir()):
        return out / text
    return Path(text)


def write_request(request: MatrixRequest, folder: Path) -> Path:
    """Write the request into the run's `folder` (atomically, never over another); ConfigError
    if a matrix was started in it already."""
    path = folder / REQUEST_FILE
    if path.exists():
        raise ConfigError(
            f"run {request.run_id} was started by a matrix already ({path}): "
            f"`matrix --resume {request.run_id}` continues it"
        )
    return write_result(request, path)


def read_request(folder: Path) -> MatrixRequest:
    """The request of the run in `folder`; ConfigError if it is not a matrix's run or its
    request cannot be read."""
    if not folder.is_dir():
        raise ConfigError(f"--resume {folder}: no such run folder")
    path = folder / REQUEST_FILE
    if not path.is_file():
        raise ConfigError(
            f"--resume {folder}: not a matrix's run (it has no {REQUEST_FILE}, the request a "
            "matrix writes at its start)"
        )
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{path}: not a readable JSON file ({exc})") from exc
    version = data.get("schema_version") if isinstance(data, dict) else None
    if version not in READABLE_REQUESTS:
        readable = ", ".join(map(str, READABLE_REQUESTS))
        raise ConfigError(
            f"{path}: schema_version {version!r} is not one this version reads ({readable})"
        )
    try:
        request = MatrixRequest.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"{path}: not a valid request: {exc.error_count()} problem(s)") from exc
    if request.run_id != folder.name:
        raise ConfigError(
            f"--resume {folder}: the folder of run {request.run_id}, renamed (its cells write "
            f"into a folder named by the run id): give it its name back"
        )
    _check_runnable(request)
    return request


def _check_runnable(request: MatrixRequest) -> None:
    """ConfigError naming what the run was started with that is gone."""
    if not Path(request.cwd).is_dir():
        raise ConfigError(f"the folder run {request.run_id} ran in is gone: {request.cwd}")
    if request.servers and not Path(request.servers).is_file():
        raise ConfigError(f"the servers file of run {request.run_id} is gone: {request.servers}")
    for version, python in request.pythons.items():
        if not os.access(python, os.X_OK):
            raise ConfigError(f"prefect {version}'s interpreter is gone: {python}")


@contextlib.contextmanager
def hold(
    folder: Path, wait_s: float = 0.0, waiting: Callable[[], None] | None = None
) -> Iterator[int]:
    """Hold the run in `folder` while the block runs: an exclusive lock on its LOCK_FILE, whose
    descriptor (yielded) the matrix passes to each cell it starts, so that a cell still stopping
    after its matrix was killed holds it too. Waits up to `wait_s` for others to let go
    (calling `waiting` once if it must), then ConfigError."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(folder / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError as exc:
        raise ConfigError(f"cannot write results into {folder}: {exc.strerror}") from exc
    try:
        deadline = time.monotonic() + wait_s
        while not _locked(fd):
            if time.monotonic() >= deadline:
                raise ConfigError(
                    f"run {folder.name} is running: its matrix, or a cell it started, holds "
                    f"{folder / LOCK_FILE} (--resume continues a run that has stopped)"
                )
            if waiting is not None:
                waiting()
                waiting = None
            time.sleep(0.2)
        yield fd
    finally:
        os.close(fd)  # the lock goes with the last descriptor of it


def _locked(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True
