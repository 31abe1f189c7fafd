"""What a command of prefect-bench leaves on the machine, for benchmarks/fault_soak.py: its
processes (watched while it runs, and any left after it), the containers labelled with its run,
the temporary folders marked with its run, the ports its processes listened on, and partial
files in its results folder.

Nothing here touches what the soak did not start: processes are found among the soak's own
descendants (the soak is a child subreaper, so a killed command's orphans stay its descendants),
containers by the label of the soak's own run ids, folders in the soak's own TMPDIR.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from bench.core.ownership import FOLDER_PREFIX, OWNER_FILE, RUN_LABEL

_PR_SET_CHILD_SUBREAPER = 36
# How often the watcher looks at the soak's descendants (and their listening sockets).
POLL_S = 0.1


def become_subreaper() -> None:
    """Make this process adopt its orphaned descendants (Linux): a command killed with SIGKILL
    leaves its children to us, not to init, so that they can still be found and counted."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_CHILD_SUBREAPER) failed")


def descendants(reap: bool = False) -> list[psutil.Process]:
    """This process's live descendants, zombies left out; with `reap`, the zombies it adopted
    are reaped (never while a process it started is being waited for elsewhere: only the
    Popen of a process collects its exit status, and those are left alone)."""
    alive = []
    for proc in psutil.Process().children(recursive=True):
        try:
            if proc.status() != psutil.STATUS_ZOMBIE:
                alive.append(proc)
            elif reap and proc.ppid() == os.getpid() and proc.pid not in _started:
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(proc.pid, os.WNOHANG)
        except psutil.Error:
            continue
    return alive


# The pids the soak started (their exit status is their Popen's to collect).
_started: set[int] = set()


def started(pid: int) -> None:
    _started.add(pid)


def tool(*argv: str, check: bool = True) -> int:
    """Run a tool (chattr, mount) to its end; its exit code (CalledProcessError if `check`)."""
    proc = subprocess.Popen(argv)
    started(proc.pid)
    code = proc.wait()
    if check and code:
        raise subprocess.CalledProcessError(code, argv)
    return code


def describe(proc: psutil.Process) -> str:
    try:
        return f"pid {proc.pid} ({' '.join(proc.cmdline())[:120] or proc.name()})"
    except psutil.Error:
        return f"pid {proc.pid}"


@dataclass
class Seen:
    """One process seen while a command ran."""

    pid: int
    created: float
    cmdline: str
    ports: set[int] = field(default_factory=set)


class Watcher:
    """Polls the soak's descendants while a command runs: every process seen, with the ports it
    listened on. Used as a context manager."""

    def __init__(self) -> None:
        self.seen: dict[tuple[int, float], Seen] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._lock = threading.Lock()

    def __enter__(self) -> Watcher:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.poll()

    def _loop(self) -> None:
        while not self._stop.wait(POLL_S):
            self.poll()

    def poll(self) -> list[psutil.Process]:
        procs = descendants()
        with self._lock:
            for proc in procs:
                with contextlib.suppress(psutil.Error):
                    key = (proc.pid, proc.create_time())
                    seen = self.seen.get(key)
                    if seen is None:
                        seen = self.seen[key] = Seen(proc.pid, key[1], " ".join(proc.cmdline()))
                    for conn in proc.net_connections(kind="inet"):
                        if conn.status == psutil.CONN_LISTEN and conn.laddr:
                            seen.ports.add(conn.laddr.port)
        return procs

    def ports(self) -> dict[int, Seen]:
        with self._lock:
            return {port: s for s in self.seen.values() for port in s.ports}

    def find(self, match: Callable[[psutil.Process], bool]) -> list[psutil.Process]:
        """The live descendants for which `match` is true."""
        found = []
        for proc in descendants():
            with contextlib.suppress(psutil.Error):
                if match(proc):
                    found.append(proc)
        return found


def cmdline(proc: psutil.Process) -> str:
    try:
        return " ".join(proc.cmdline())
    except psutil.Error:
        return ""


def processes_left(deadline_s: float) -> tuple[list[psutil.Process], float]:
    """The soak's descendants still alive `deadline_s` after the command ended (a process
    stopping takes a moment: a server given SIGTERM by its dying parent), and how long the
    last of those that went took."""
    start = time.monotonic()
    while (procs := descendants()) and time.monotonic() - start < deadline_s:
        time.sleep(0.2)
    return procs, time.monotonic() - start


def kill(procs: list[psutil.Process]) -> None:
    """Kill processes left (once counted), so that the next run starts with none: a
    PostgreSQL with its immediate shutdown (SIGQUIT: a SIGKILL would leave its shared memory),
    the others with SIGKILL."""
    postmasters = [p for p in procs if "postgres -D " in cmdline(p)]
    for proc in postmasters:
        with contextlib.suppress(psutil.Error):
            proc.send_signal(signal.SIGCONT)
            proc.send_signal(signal.SIGQUIT)
    psutil.wait_procs(postmasters, timeout=10)
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            proc.send_signal(signal.SIGCONT)  # a paused one too
            proc.kill()
    psutil.wait_procs(procs, timeout=10)
    descendants(reap=True)


def listening_left(ports: dict[int, Seen]) -> tuple[list[str], list[str]]:
    """Of the ports the command's processes listened on, those listened on still: (ours, by one
    of those processes or by a descendant of the soak; others', by a process someone else
    started that took the port since: listed, not counted)."""
    ours: list[str] = []
    others: list[str] = []
    mine = {(s.pid, round(s.created, 2)) for s in ports.values()}
    mine |= {(p.pid, round(p.create_time(), 2)) for p in descendants()}
    with contextlib.suppress(psutil.Error):
        for conn in psutil.net_connections(kind="inet"):
            if conn.status != psutil.CONN_LISTEN or not conn.laddr or conn.laddr.port not in ports:
                continue
            try:
                proc = psutil.Process(conn.pid) if conn.pid else None
                key = (proc.pid, round(proc.create_time(), 2)) if proc else None
            except psutil.Error:
                proc, key = None, None
            who = describe(proc) if proc else "a process not visible here"
            if key in mine:
                ours.append(f"port {conn.laddr.port} still listened on by {who}")
            else:
                others.append(f"port {conn.laddr.port} taken since by another process, {who}")
    return ours, others


def folders(tmp: Path) -> dict[str, str | None]:
    """prefect-bench's temporary folders in `tmp`, each with the run its owner file names
    (None: no readable owner file)."""
    found: dict[str, str | None] = {}
    for folder in tmp.glob(f"{FOLDER_PREFIX}*"):
        if not folder.is_dir():
            continue
        try:
            marks = json.loads((folder / OWNER_FILE).read_text())
            found[folder.name] = str(marks.get(RUN_LABEL)) if isinstance(marks, dict) else None
        except (OSError, ValueError):
            found[folder.name] = None
    return found


def containers(client: Any, run_id: str) -> list[Any]:
    """The containers labelled with run `run_id`, stopped ones too."""
    if client is None:
        return []
    return list(client.containers.list(all=True, filters={"label": f"{RUN_LABEL}={run_id}"}))


def partial_files(folder: Path) -> list[str]:
    """Files in a results folder that a finished write never leaves: temporary files (a result
    is written to `.<name>.<random>.tmp`, then linked) and the probe of a writable folder."""
    if not folder.is_dir():
        return []
    return sorted(
        str(p.relative_to(folder))
        for p in folder.rglob("*")
        if p.is_file() and (p.name.endswith(".tmp") or p.name.endswith(".writable"))
    )


def shared_memory() -> dict[str, tuple[float, int, bool]]:
    """PostgreSQL's shared memory on the machine: each /dev/shm segment and SysV segment by
    name, with (when it was made, the pid that made it or 0, whether a process still uses it).

    A PostgreSQL killed with SIGKILL leaves both (its immediate shutdown, SIGQUIT, does not).
    """
    found: dict[str, tuple[float, int, bool]] = {}
    mapped: set[str] = set()
    for maps in Path("/proc").glob("[0-9]*/maps"):
        with contextlib.suppress(OSError):
            mapped |= {
                line.rsplit(" ", 1)[-1]
                for line in maps.read_text().splitlines()
                if "/dev/shm/PostgreSQL." in line
            }
    for segment in Path("/dev/shm").glob("PostgreSQL.*"):
        with contextlib.suppress(OSError):
            found[str(segment)] = (segment.stat().st_mtime, 0, str(segment) in mapped)
    with contextlib.suppress(OSError, ValueError, IndexError):
        lines = Path("/proc/sysvipc/shm").read_text().splitlines()
        head = lines[0].split()
        for line in lines[1:]:
            row = dict(zip(head, line.split(), strict=False))
            name = f"SysV segment {row['shmid']} ({row['size']} bytes)"
            found[name] = (float(row["ctime"]), int(row["cpid"]), int(row["nattch"]) > 0)
    return found
