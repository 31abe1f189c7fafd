"""The run's preload step, between provisioning and starting the measured server: restore
the cell's seeded database from the cache, or seed it on a server started for that and keep
a snapshot for the next cell."""

from __future__ import annotations

import contextlib
import os
import shutil
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import redis

from bench.config.preload_shape import Shape, parse_shape
from bench.config.run import RunConfig
from bench.core import ownership
from bench.core.errors import ConfigError, VerificationError
from bench.observe.progress import Progress
from bench.preload import cache
from bench.preload.seed import Seeded, seed
from bench.results import Preload
from bench.servers.adapter import ServerAdapter, ServerSetup
from bench.servers.running import snapshot_sqlite, start_server

# What a flow run, a task run and a log line take on disk, with room to spare: the refusal of
# a preload that would not fit rests on it. Measured here: the default shape's 1,000 runs (2,000
# task runs, 10,000 log lines, 2,015 events) made a 23.7 MB SQLite file; PostgreSQL's rows
# with its indexes take more than SQLite's, and only its pg_dump archive (1.6 MB) is ours.
BYTES_PER_RUN = {"sqlite": 12_000, "postgres": 16_000}
BYTES_PER_TASK_RUN = {"sqlite": 3_000, "postgres": 4_000}
BYTES_PER_LOG = {"sqlite": 1_000, "postgres": 1_500}


def needed_bytes(db: str, flow_runs: int, tasks: int, logs: int) -> int:
    """A generous estimate of one seeded database's size."""
    per_run = BYTES_PER_RUN[db] + tasks * BYTES_PER_TASK_RUN[db] + logs * BYTES_PER_LOG[db]
    return flow_runs * per_run


def check_disk(db: str, flow_runs: int, tasks: int, logs: int, where: list[Path]) -> None:
    """ConfigError unless each folder's disk has room for the database and its snapshot."""
    need = needed_bytes(db, flow_runs, tasks, logs)
    by_device: dict[int, tuple[Path, int]] = {}
    for folder in where:
        existing = next(p for p in (folder, *folder.parents) if p.exists())
        device = os.stat(existing).st_dev
        _, wanted = by_device.get(device, (existing, 0))
        by_device[device] = (existing, wanted + need)
    for folder, wanted in by_device.values():
        free = shutil.disk_usage(folder).free
        if wanted > free:
            raise ConfigError(
                f"--preload {flow_runs}: needs about {wanted / 1e9:.1f} GB at {folder}, "
                f"which has {free / 1e9:.1f} GB free"
            )


def preload_database(
    adapter: ServerAdapter,
    setup: ServerSetup,
    config: RunConfig,
    server_version: str,
    labels: ownership.Labels,
    progress: Progress,
) -> Preload:
    """Make the cell's fresh database (`setup`'s) hold `config.preload` flow runs of
    `config.preload_shape`, restored from the cache when an entry for this server, version,
    db, N and shape is there and whole, made otherwise (and kept, when it can be)."""
    assert config.preload is not None
    flow_runs = config.preload
    shape = parse_shape(config.preload_shape or "")
    pg_problem = cache.pg_tools_problem(setup.postgres) if setup.postgres else None
    key = cache.Key(
        server=adapter.name,
        server_version=server_version,
        db=setup.db,
        postgres_major=cache.postgres_major(setup.postgres) if setup.postgres else None,
        flow_runs=flow_runs,
        shape=shape.text(),
    )
    root = cache.cache_root()
    started = time.monotonic()
    entry, unusable = cache.find(root, key) if not pg_problem else (None, None)
    if entry is not None:
        progress.stage(f"restoring {flow_runs:,} preloaded flow runs from {entry.path}")
        if setup.postgres:
            cache.restore_postgres(entry, setup.postgres)
        else:
            cache.restore_sqlite(entry, setup.sqlite_path)
        return _record(entry.manifest, "restored", time.monotonic() - started, entry)
    if unusable:
        progress.stage(f"the cache entry {root / key.folder} is not used ({unusable})")
    room = [root, setup.datadir] if setup.db == "sqlite" else [root]
    check_disk(setup.db, flow_runs, shape.tasks, shape.logs, room)
    seeded = _seed(adapter, setup, flow_runs, shape, progress)
    manifest: dict[str, Any] = {"key": {"shape": key.shape}, "seeded": seeded.as_dict()}
    if pg_problem:
        progress.stage(f"the preload is not kept for the next cell: {pg_problem}")
        return _record(manifest, "made", time.monotonic() - started, None, pg_problem)
    progress.stage("keeping a snapshot of the seeded database for the next cell")
    with cache.making(root, labels) as folder:
        data = folder / cache.DATA_FILE[setup.db]
        if setup.postgres:
            cache.snapshot_postgres(setup.postgres, data)
        else:
            snapshot_sqlite(setup.sqlite_path, data)
        made = round(time.monotonic() - started, 3)
        entry = cache.commit(root, folder, key, data, seeded=seeded.as_dict(), made_seconds=made)
    return _record(entry.manifest, "made", made, entry)


def _seed(
    adapter: ServerAdapter, setup: ServerSetup, flow_runs: int, shape: Shape, progress: Progress
) -> Seeded:
    """Seed on a server started for that (its own log folder), stopped after: the measured
    server starts on the seeded database as it would on a restored one."""
    progress.stage(f"seeding {flow_runs:,} flow runs ({shape.text()}) through the API")
    seeding = replace(setup, logdir=setup.logdir / "preload", seeding=True)
    seeding.logdir.mkdir(parents=True, exist_ok=True)
    with start_server(adapter, seeding) as server:
        seeded = seed(server.base_url, flow_runs, shape, setup.db, progress.seeding(flow_runs))
    if setup.redis is not None:  # what the seeding left in the broker: a restored cell has none
        with contextlib.closing(redis.Redis.from_url(setup.redis.url())) as client:
            client.flushdb()
    return seeded


def _record(
    manifest: dict[str, Any],
    source: str,
    seconds: float,
    entry: cache.Entry | None,
    not_cached: str | None = None,
) -> Preload:
    """The result's record, from an entry's manifest (or the same keys, for one not kept)."""
    seeded = dict(manifest["seeded"])
    seeded.pop("requests", None)
    return Preload(
        flow_runs=seeded.pop("flow_runs"),
        source=source,
        seconds=round(seconds, 3),
        shape=manifest["key"]["shape"],
        first_start=seeded.pop("first_start"),
        last_start=seeded.pop("last_start"),
        counts=seeded,
        made_seconds=manifest.get("made_seconds") if source == "restored" else None,
        bytes=manifest.get("bytes"),
        cache=str(entry.path) if entry else None,
        not_cached=not_cached,
    )


def verify_preloaded(client: httpx.Client, preload: Preload) -> None:
    """The measured server sees what was preloaded: VerificationError if its count differs."""
    answer = client.post("/flow_runs/count", json={})
    held = int(answer.json()) if answer.status_code == 200 else None
    if held != preload.flow_runs:
        raise VerificationError(
            f"the preloaded database holds {held} flow runs, {preload.flow_runs} were "
            f"{preload.source} (POST /flow_runs/count answered {answer.status_code})"
        )
