"""Who started a resource, and whether that owner is gone: what makes leftover cleanup safe.

Everything prefect-bench leaves on the machine while it runs (containers, external databases,
temporary folders of servers and local services) carries marks saying who started it: the run,
the cell, and the owning process as pid + start time + host + boot id. A later run removes a
leftover only when that owner is provably gone, so it never touches what a live run, another
machine or a person started.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import socket
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

LABEL_PREFIX = "prefect-bench"
RUN_LABEL = f"{LABEL_PREFIX}.run"
CELL_LABEL = f"{LABEL_PREFIX}.cell"
SERVICE_LABEL = f"{LABEL_PREFIX}.service"
PID_LABEL = f"{LABEL_PREFIX}.pid"
PID_START_LABEL = f"{LABEL_PREFIX}.pid-start"
HOST_LABEL = f"{LABEL_PREFIX}.host"
BOOT_LABEL = f"{LABEL_PREFIX}.boot"

# Temporary folders of servers and local services: <tmp>/prefect-bench-…/owner.json.
FOLDER_PREFIX = "prefect-bench-"
OWNER_FILE = "owner.json"
# Keys a folder's owner file may add: the processes that use it, stopped with the folder,
# each [pid, start time]; and, as files written before a folder had several, one process.
PROCESSES = "processes"
PROCESS_PID = "service_pid"
PROCESS_START = "service_start"


@dataclass(frozen=True)
class Labels:
    """Who owns what a run starts: the run and the cell (docker labels, folder names)."""

    run_id: str
    cell: str


def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def owner_labels(labels: Labels, service: str) -> dict[str, str]:
    """The marks that say who started a resource: run, cell, service and the owning process."""
    me = psutil.Process()
    return {
        RUN_LABEL: labels.run_id,
        CELL_LABEL: labels.cell,
        SERVICE_LABEL: service,
        PID_LABEL: str(me.pid),
        PID_START_LABEL: f"{me.create_time():.2f}",
        HOST_LABEL: socket.gethostname(),
        BOOT_LABEL: _boot_id(),
    }


def owner_is_gone(marks: Mapping[str, str]) -> bool:
    """True only when the process that started a resource provably no longer runs.

    Unknown owners (no pid mark, another host) count as alive: not ours to judge.
    """
    if marks.get(HOST_LABEL) != socket.gethostname():
        return False
    boot = marks.get(BOOT_LABEL)
    if boot and _boot_id() and boot != _boot_id():
        return True  # the machine rebooted since: every process of that boot is gone
    try:
        pid = int(marks[PID_LABEL])
        started = float(marks[PID_START_LABEL])
    except (KeyError, ValueError):
        return False
    try:
        # a different start time means the pid was reused by another process
        return abs(psutil.Process(pid).create_time() - started) > 1.0
    except psutil.NoSuchProcess:
        return True
    except psutil.Error:
        return False


def mark_folder(folder: Path, labels: Labels, service: str) -> None:
    """Write the owner file that lets a later run remove `folder` once its owner is gone."""
    (folder / OWNER_FILE).write_text(json.dumps(owner_labels(labels, service)))


def record_process(folder: Path, process: psutil.Process) -> None:
    """Add to `folder`'s owner file the process that uses it, so a cleanup stops it first."""
    path = folder / OWNER_FILE
    marks = json.loads(path.read_text())
    marks.setdefault(PROCESSES, []).append([process.pid, process.create_time()])
    path.write_text(json.dumps(marks))


def _recorded(marks: Mapping[str, Any]) -> list[tuple[int, float]]:
    """The processes an owner file names, as (pid, start time); unreadable entries left out."""
    entries = list(marks.get(PROCESSES) or [])
    if PROCESS_PID in marks:
        entries.append([marks[PROCESS_PID], marks.get(PROCESS_START)])
    found = []
    for entry in entries:
        with contextlib.suppress(TypeError, ValueError):
            pid, start = entry
            found.append((int(pid), float(start)))
    return found


def remove_dead_folders(root: Path | None = None) -> list[Path]:
    """Delete prefect-bench's temporary folders under `root` (default: the temp folder) whose
    owning process is gone, stopping first the process recorded in them if it still runs.

    Folders without a readable owner file are not ours (or not yet marked): left alone.
    Returns the folders removed.
    """
    root = Path(root or tempfile.gettempdir())
    removed = []
    for folder in sorted(root.glob(f"{FOLDER_PREFIX}*")):
        try:
            marks = json.loads((folder / OWNER_FILE).read_text())
        except (OSError, ValueError):
            continue
        if not isinstance(marks, dict) or not owner_is_gone(marks):
            continue
        for pid, start in _recorded(marks):
            with contextlib.suppress(psutil.Error):
                proc = psutil.Process(pid)
                if abs(proc.create_time() - start) < 1.0:
                    proc.kill()
                    proc.wait(10)
        shutil.rmtree(folder, ignore_errors=True)
        removed.append(folder)
    return removed
