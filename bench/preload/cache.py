"""Seeded databases kept for the next cell: one folder per (server, version, db, N, shape),
written whole or not at all, checked before use, restored by a file copy (SQLite) or
pg_restore (PostgreSQL).

The PostgreSQL of a cell is its own (a container or a local process started for it), so a
template database (`CREATE DATABASE … TEMPLATE`) would not outlive the cell: the cache keeps
a pg_dump archive instead, made and restored by the PostgreSQL client tools of this machine.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bench.core import ownership
from bench.core.cache_folder import default_cache_dir
from bench.core.errors import BenchError
from bench.services.base import PostgresService
from bench.services.local import find_binary

MANIFEST = "manifest.json"
FORMAT = 1
DATA_FILE = {"sqlite": "database.sqlite", "postgres": "database.pgdump"}
PG_TOOL_TIMEOUT_S = 3600.0


class CacheError(BenchError):
    """A snapshot could not be made or restored: which step, and what it said."""


@dataclass(frozen=True)
class Key:
    """What a seeded database depends on; an entry made for another key is never used."""

    server: str
    server_version: str
    db: str
    postgres_major: str | None  # a pg_dump archive restores into the same major version
    flow_runs: int
    shape: str

    @property
    def folder(self) -> str:
        digest = hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()
        name = re.sub(r"[^a-zA-Z0-9_.-]+", "-", f"{self.server}-{self.db}-{self.flow_runs}")
        return f"{name}-{digest[:12]}"


@dataclass(frozen=True)
class Entry:
    """A complete, checked cache entry: its data file and what its manifest says."""

    path: Path
    manifest: dict[str, Any]

    @property
    def data(self) -> Path:
        return self.path / self.manifest["file"]


def cache_root() -> Path:
    """Where seeded databases are kept: preload/ in the cache folder zig builds use."""
    return default_cache_dir() / "preload"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def find(root: Path, key: Key) -> tuple[Entry | None, str | None]:
    """The entry for `key`, checked whole (manifest, key, size and checksum of its data); or
    None and why the entry there cannot be used (None: there is none)."""
    path = root / key.folder
    if not path.exists():
        return None, None
    try:
        manifest = json.loads((path / MANIFEST).read_text())
        data = path / manifest["file"]
        if manifest.get("format") != FORMAT or manifest.get("key") != asdict(key):
            return None, "its manifest is for something else"
        if data.stat().st_size != manifest["bytes"] or _sha256(data) != manifest["sha256"]:
            return None, f"{data.name} is not what its manifest says (half-written or changed)"
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return None, f"unreadable: {exc}"
    return Entry(path, manifest), None


@contextlib.contextmanager
def making(root: Path, labels: ownership.Labels) -> Iterator[Path]:
    """A folder to write a new entry into, inside `root` and marked as ours, so that a run
    killed while writing leaves nothing a later run would use (it removes the folder once
    its owner is gone). Removed on exit unless `commit` moved it into place."""
    root.mkdir(parents=True, exist_ok=True)
    ownership.remove_dead_folders(root)
    folder = Path(tempfile.mkdtemp(prefix=f"{ownership.FOLDER_PREFIX}making-", dir=root))
    try:
        ownership.mark_folder(folder, labels, "preload")
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def commit(root: Path, folder: Path, key: Key, data: Path, **facts: Any) -> Entry:
    """Give the written `folder` its manifest and move it to the key's place, replacing an
    unusable entry there: a rename, so the entry appears whole or not at all."""
    manifest = {
        "format": FORMAT,
        "key": asdict(key),
        "file": data.name,
        "bytes": data.stat().st_size,
        "sha256": _sha256(data),
        **facts,
    }
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    (folder / ownership.OWNER_FILE).unlink()  # a finished entry belongs to no run
    place = root / key.folder
    shutil.rmtree(place, ignore_errors=True)
    os.rename(folder, place)
    return Entry(place, manifest)


# -- SQLite ---------------------------------------------------------------------------------


def restore_sqlite(entry: Entry, database: Path) -> None:
    database.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(entry.data, database)


# -- PostgreSQL -----------------------------------------------------------------------------


def _major(version: str | None) -> str | None:
    match = re.search(r"(\d+)", version or "")
    return match.group(1) if match else None


def postgres_major(service: PostgresService) -> str | None:
    """The major version of the cell's PostgreSQL, as its provider recorded it."""
    return _major(service.info.version)


def pg_tools_problem(service: PostgresService) -> str | None:
    """Why this machine's pg_dump/pg_restore cannot snapshot `service` (None: they can)."""
    try:
        pg_dump = _tool("pg_dump")
        _tool("pg_restore")
    except CacheError as exc:
        return str(exc)
    server = postgres_major(service)
    tool = _major(_run([pg_dump, "--version"], {}).stdout)
    if server and tool and int(tool) < int(server):
        return f"pg_dump {tool} cannot dump PostgreSQL {server}: install a client of {server}"
    return None


def _tool(name: str) -> str:
    found = find_binary(name, os.environ.get("PATH", os.defpath))
    if found is None:
        raise CacheError(f"{name} not found (apt-get install postgresql-client)")
    return found


def _login(service: PostgresService) -> tuple[list[str], dict[str, str]]:
    """Connection arguments, and the password in the environment: never on a command line,
    where every process of the machine can read it."""
    args = ["-h", service.host, "-p", str(service.port), "-U", service.user, "-d", service.database]
    return args, {"PGPASSWORD": service.password}


def _run(argv: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    try:
        done = subprocess.run(
            argv,
            env={**clean, **env},
            capture_output=True,
            text=True,
            timeout=PG_TOOL_TIMEOUT_S,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise CacheError(f"{Path(argv[0]).name}: {exc}") from exc
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise CacheError(f"{Path(argv[0]).name} exited with {done.returncode}: {last}")
    return done


def snapshot_postgres(service: PostgresService, into: Path) -> None:
    """The cell's database as a pg_dump archive (custom format: compressed, restorable)."""
    args, env = _login(service)
    _run([_tool("pg_dump"), "--format=custom", "--no-owner", "--file", str(into), *args], env)


def restore_postgres(entry: Entry, service: PostgresService) -> None:
    """The archive restored into the cell's fresh, empty database."""
    args, env = _login(service)
    _run(
        [
            _tool("pg_restore"),
            "--no-owner",
            "--no-privileges",
            "--exit-on-error",
            *args,
            str(entry.data),
        ],
        env,
    )
