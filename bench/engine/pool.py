"""Engine processes: started once, reused by every measurement, never left behind.

Each worker is a fresh interpreter (`python -c`, not fork: the caller may have threads; not
multiprocessing's spawn: that would re-import the caller's main module and start a resource
tracker process) talking to the parent over its own socket pair with multiprocessing's
Connection framing. The parent sends ("job", Job or ScenarioJob, cpus) and receives
("progress", n) messages and then ("done", ShareResult or ScenarioShare). Workers ignore SIGINT;
the parent terminates them if it is interrupted (KeyboardInterrupt or any other exception while
waiting) and at exit (atexit); a worker stops on its own when its socket reports EOF (the parent
died).
"""

from __future__ import annotations

import atexit
import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import traceback
from collections.abc import Callable, Sequence
from multiprocessing.connection import Connection, wait
from pathlib import Path
from time import monotonic

import bench
from bench.core.errors import BenchError
from bench.engine.scenario import ScenarioJob, ScenarioShare, TogetherJob
from bench.engine.worker import Job, ShareResult

# What a worker runs (a share of a measurement) and what it sends back.
EngineJob = Job | ScenarioJob | TogetherJob
ShareOf = ShareResult | ScenarioShare | list[ScenarioShare]

SPAWN_TIMEOUT_S = 60.0
# How long a worker may take to unpickle a job before a measurement (imports included).
LOAD_TIMEOUT_S = 60.0
PROGRESS_S = 0.25

_WORKER_CODE = (
    "import sys; from bench.engine.pool import worker_main; worker_main(int(sys.argv[1]))"
)


class EngineError(BenchError):
    """The engine itself failed (a worker process died or did not answer)."""


def worker_main(fd: int) -> None:
    """Body of a worker process: run jobs until told to exit or the parent goes away."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    conn = Connection(fd)
    all_cpus = os.sched_getaffinity(0)
    conn.send(("ready", os.getpid()))
    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError):
            return
        except Exception:  # a job that does not unpickle here
            conn.send(("error", traceback.format_exc()))
            continue
        if msg[0] == "exit":
            return
        if msg[0] == "path":  # the parent's sys.path, so that its modules unpickle here
            sys.path[:] = msg[1]
            continue
        if msg[0] == "load":  # unpickled above: its modules are imported now
            conn.send(("loaded",))
            continue
        if msg[0] != "job":
            continue  # e.g. a late "stop"
        job, cpus = msg[1], msg[2]
        try:
            os.sched_setaffinity(0, cpus or all_cpus)
            # a message (or EOF: the parent died) during a job means stop now
            result = job.execute(lambda n: conn.send(("progress", n)), conn.poll)
        except Exception:
            conn.send(("error", traceback.format_exc()))
        else:
            conn.send(("done", result))


def _child_env() -> dict[str, str]:
    """The parent's environment, with the directory holding `bench` first on the path."""
    env = dict(os.environ)
    root = str(Path(bench.__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    return env


class _Worker:
    def __init__(self) -> None:
        parent_end, child_end = socket.socketpair()
        with child_end:
            self.process = subprocess.Popen(
                [sys.executable, "-c", _WORKER_CODE, str(child_end.fileno())],
                pass_fds=[child_end.fileno()],
                env=_child_env(),
                stdin=subprocess.DEVNULL,
            )
        self.conn = Connection(parent_end.detach())
        self.ready = False

    @property
    def pid(self) -> int:
        return self.process.pid

    def wait_ready(self, deadline: float) -> None:
        if self.ready:
            return
        if not self.conn.poll(max(deadline - monotonic(), 0)):
            raise EngineError("an engine process did not start in time")
        try:
            msg = self.conn.recv()
        except EOFError:
            raise EngineError("an engine process died while starting") from None
        if msg[0] != "ready":
            raise EngineError(f"unexpected message from an engine process: {msg[0]!r}")
        self.ready = True

    def alive(self) -> bool:
        return self.process.poll() is None and not self.conn.closed

    def terminate(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
        try:
            self.process.wait(2)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.conn.close()

    def shutdown(self) -> None:
        with contextlib.suppress(OSError):
            self.conn.send(("exit",))
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(2)
        self.terminate()


class EnginePool:
    """The engine's worker processes, grown on demand and reused."""

    def __init__(self) -> None:
        self._workers: list[_Worker] = []
        self._lock = threading.Lock()

    def pids(self) -> list[int]:
        return [w.pid for w in self._workers]

    def ensure(self, n: int, load: object = None) -> None:
        """Have at least n workers started and ready; with `load`, each of them has unpickled
        it, importing the modules it names (a scenario's, a validator's), before a measurement's
        clock starts: an import inside the window would eat into it (seconds on a busy
        machine, which then measured nothing)."""
        with self._lock:
            try:
                workers = self._ensure(n)
                if load is not None:
                    self._load(workers, load)
            except BaseException:
                self.terminate()
                raise

    def _load(self, workers: Sequence[_Worker], load: object) -> None:
        for worker in workers:
            worker.conn.send(("path", list(sys.path)))
            worker.conn.send(("load", load))
        for worker in workers:
            if not worker.conn.poll(LOAD_TIMEOUT_S):
                raise EngineError(f"an engine process did not load the job in {LOAD_TIMEOUT_S} s")
            msg = worker.conn.recv()
            if msg[0] == "error":
                raise EngineError(f"an engine process failed:\n{msg[1]}")

    def _ensure(self, n: int) -> list[_Worker]:
        self._workers = [w for w in self._workers if w.alive()]
        while len(self._workers) < n:
            self._workers.append(_Worker())
        deadline = monotonic() + SPAWN_TIMEOUT_S
        for worker in self._workers[:n]:
            worker.wait_ready(deadline)
        return self._workers[:n]

    def run(
        self,
        jobs: Sequence[EngineJob],
        cpus: Sequence[set[int] | None],
        progress: Callable[[int], None] | None,
        deadline: Callable[[], bool],
    ) -> list[ShareOf]:
        """Run one job per worker and return their results, in order.

        `deadline()` returning True while results are missing is an engine failure. On any
        exception (KeyboardInterrupt included) every worker is terminated before re-raising.
        """
        with self._lock:
            try:
                return self._run(jobs, cpus, progress, deadline)
            except BaseException:
                self.terminate()
                raise

    def _run(
        self,
        jobs: Sequence[EngineJob],
        cpus: Sequence[set[int] | None],
        progress: Callable[[int], None] | None,
        deadline: Callable[[], bool],
    ) -> list[ShareOf]:
        workers = self._ensure(len(jobs))
        for worker, job, cpu_set in zip(workers, jobs, cpus, strict=True):
            worker.conn.send(("path", list(sys.path)))
            worker.conn.send(("job", job, cpu_set))
        by_conn = {w.conn: i for i, w in enumerate(workers)}
        counts = [0] * len(workers)
        results: list[ShareOf | None] = [None] * len(workers)
        pending = set(by_conn)
        next_progress = monotonic() + PROGRESS_S
        while pending:
            for conn in wait(list(pending), timeout=PROGRESS_S):
                assert isinstance(conn, Connection)
                i = by_conn[conn]
                try:
                    msg = conn.recv()
                except (EOFError, OSError):
                    raise EngineError("an engine process died during a measurement") from None
                if msg[0] == "progress":
                    counts[i] = msg[1]
                elif msg[0] == "done":
                    results[i] = msg[1]
                    pending.discard(conn)
                elif msg[0] == "error":
                    raise EngineError(f"an engine process failed:\n{msg[1]}")
            if progress is not None and monotonic() >= next_progress:
                next_progress = monotonic() + PROGRESS_S
                progress(sum(counts))
            if pending and deadline():
                raise EngineError("the engine processes did not finish in time")
        return [r for r in results if r is not None]

    def terminate(self) -> None:
        """Kill every worker now (they are respawned by the next measurement)."""
        workers, self._workers = self._workers, []
        for worker in workers:
            worker.terminate()

    def shutdown(self) -> None:
        """Ask every worker to exit, killing those that do not."""
        workers, self._workers = self._workers, []
        for worker in workers:
            worker.shutdown()


_pool: EnginePool | None = None
_pool_lock = threading.Lock()


def get_pool() -> EnginePool:
    """The process-wide pool, created on first use and shut down at exit."""
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = EnginePool()
            atexit.register(shutdown)
        return _pool


def shutdown() -> None:
    """Stop the engine's worker processes (safe to call any time; they restart on demand)."""
    with _pool_lock:
        if _pool is not None:
            _pool.shutdown()


def worker_pids() -> list[int]:
    """Process ids of the engine's running workers (e.g. to exempt them from leak checks)."""
    with _pool_lock:
        return _pool.pids() if _pool is not None else []
