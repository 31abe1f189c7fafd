"""The fault soak: short cells of prefect-bench, one fault injected into each at a random moment,
and what each leaves behind (issue 21, part 6).

    .nox/tests/bin/python benchmarks/fault_soak.py [--runs 100] [--seed 1] [--faults a,b]

Each run starts `python -m bench run` (or, for the matrix faults, `python -m bench matrix` over
python × sqlite × memory/redis) in a process of its own, a cell of a few seconds (the health
workload, c=1, 2 s; the backends' faults: flow-runs with 2 tasks, which uses both PostgreSQL and
Redis), waits until it prints "measuring" (a matrix: the k-th time, k drawn among its cells),
waits a random 0-3 s more, and injects one fault:

  runner-sigint, -sigterm, -sigkill   that signal to `python -m bench run`
  matrix-sigint, -sigterm, -sigkill   that signal to `python -m bench matrix`, then
                                      `matrix --resume RUN_ID` at once
  server-sigkill                      SIGKILL the Python server
  scaled-sigkill                      SIGKILL one of python-scaled's processes: an API worker,
                                      their parent, or the services process
  postgres-kill, redis-kill           SIGKILL the service (docker: `kill` its container)
  postgres-pause, redis-pause         SIGSTOP it, SIGCONT 2-5 s later (docker: pause, unpause)
  container-removed                   remove the PostgreSQL or the Redis container (forced)
  results-readonly                    the results folder made immutable (`chattr +i`: root
                                      writes through a mode), before the cell or while it runs
  results-full                        the results folder a 1 MiB tmpfs the soak mounts, filled
                                      to the last page before the cell or while it runs

The backends come from the docker provider or the local one, drawn for each run. The faults
go round in a shuffled order (`--seed`), so that 100 runs give each of the 15 six or seven.

After each run it checks, and counts what fails:
- leftovers: a process (the soak is a child subreaper: whatever the command started and left
  is still its descendant, found 30 s after the command ended), a container labelled with the
  run, a temporary folder whose owner file names the run (the soak gives the commands a TMPDIR
  of their own, so each one found is the run's), a port one of its processes listened on and
  still listened on, a partial file (`*.tmp`, a probe) in its results folder. The databases
  live in those containers and folders (the external provider, which creates databases in a
  server of yours, is not run). When the run's owner was SIGKILLed (runner-sigkill), its
  folders and containers are the next run's to remove (bench.core.ownership): they are counted
  only if the next run that gets as far as starting a server (for containers: provisioning a
  service) leaves them; after the last run, one more cell is run if some are still waiting.
  Listed, not counted (the issue's list does not name it, and postgres-kill makes it itself):
  the shared memory of a local PostgreSQL killed with SIGKILL, which nothing removes.
- unreadable: a result of the run that `bench.results.load_result` refuses;
- without cause: a result failed without an error, or a command that exited 1 or 2 without
  a last line naming the cause (`prefect-bench: error: …`, `<cell>: failed: …`);
- as expected: the exit code and the result's status are one of those the fault allows (the
  README's exit codes: 0 ok, 1 failed, 2 bad input, 130 interrupted; `failed` with the error
  `interrupted` for an interrupted cell); a matrix resumed must hold, for every cell, one result
  ok that was not interrupted;
- bugs: an `internal error (a bug)` anywhere;
- not injected: the command ended before the fault's moment, or its target was not found.

It prints a line per run, then the table of faults × outcomes, the causes seen (and what the
ok results of cells that lived through a fault measured), and a verdict; exit 1 if any of the
above was found. It needs root (the tmpfs, `chattr`, every process's sockets) and a docker
daemon for the docker provider's runs (without one, only the local provider runs). Each run's
output, timed, with the fault's moment, is kept in WORK/logs/<run id>.log, its results in
WORK/results (`--work`, default a new /tmp/fault-soak-*). The commands start with the default
SIGINT even when the soak runs as a background job (which has it ignored, as they would).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _leftovers as left

from bench.cells.resume import read_request
from bench.core.errors import BenchError
from bench.core.ownership import SERVICE_LABEL
from bench.results import load_result

PYTHON = sys.executable
TIMING = ("--concurrency", "1", "--duration", "2", "--warmup", "0.5")
# A command that has not ended by then is hung (a finding); its processes are then killed.
HANG_S = 300.0
# How long the processes of an ended command may take to stop (a server SIGTERMed by the
# death of its parent, a cell stopping after its matrix was killed).
PROCESS_GRACE_S = 30.0
MEASURING = re.compile(r": measuring ")
REACHED_START = re.compile(r": preparing the \S+ server")
REACHED_PROVISIONING = re.compile(r": provisioning (postgres|redis) ")
CAUSE_LINE = re.compile(
    r"^(prefect-bench: error: \S.*|prefect-bench: interrupted|\S+: failed: \S.*)$"
)
BUG = "internal error (a bug)"
INTERRUPTED = "interrupted"
FULL_SIZE = "1m"


# -- cells ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Cell:
    """What a run starts: one cell (`run`), or the matrix of `server` × `db` × both brokers."""

    server: str
    db: str
    broker: str
    provider: str | None = None
    workload: str = "health"
    extra: tuple[str, ...] = ()
    matrix: bool = False

    @property
    def name(self) -> str:
        return f"{self.server}-{self.db}-{self.broker}"

    @property
    def names(self) -> list[str]:
        """The cells whose results the run writes."""
        brokers = ("memory", "redis") if self.matrix else (self.broker,)
        return [f"{self.server}-{self.db}-{b}" for b in brokers]

    @property
    def label(self) -> str:
        what = f"matrix {self.server}-{self.db}-*" if self.matrix else self.name
        return (
            what
            + (f" {self.workload}" if self.workload != "health" else "")
            + (f" ({self.provider})" if self.provider else "")
        )

    def run_args(self) -> list[str]:
        provider = ("--provider", self.provider) if self.provider else ()
        return ["--workload", self.workload, *TIMING, *provider, *self.extra]

    def argv(self, run_id: str, out: Path) -> list[str]:
        where = ["--out", str(out), "--run-id", run_id]
        if self.matrix:
            cells = ["--server", self.server, "--db", self.db]
            # `run`'s options follow the matrix's own (given after a `--`, they are refused
            # with Python 3.11's argparse: see the README of benchmarks/)
            return [PYTHON, "-m", "bench", "matrix", *cells, *where, *self.run_args()]
        cell = ["--server", self.server, "--db", self.db, "--broker", self.broker]
        return [PYTHON, "-m", "bench", "run", *cell, *where, *self.run_args()]


PROVIDERS = ("docker", "local")
SQLITE = Cell("python", "sqlite", "memory")


def pg(provider: str) -> Cell:
    return Cell("python", "postgres", "redis", provider)


def flows(provider: str) -> Cell:
    return Cell("python", "postgres", "redis", provider, "flow-runs", ("--tasks", "2"))


def scaled(provider: str) -> Cell:
    return Cell("python-scaled", "postgres", "redis", provider)


def matrix(provider: str) -> Cell:
    return Cell("python", "sqlite", "*", provider, matrix=True)


# -- injecting -----------------------------------------------------------------------------


@dataclass
class Injected:
    """What a fault did, and how to undo it after `hold_s` (a pause)."""

    what: str
    undo: Callable[[], None] | None = None
    hold_s: float = 0.0


@dataclass
class Trial:
    """One run of the soak while it runs: what the injections need."""

    index: int
    cell: Cell
    run_id: str
    out: Path
    rng: random.Random
    docker: Any
    watcher: left.Watcher
    log: Any = None  # the run's log file: every line of its commands, and the soak's notes
    proc: subprocess.Popen[str] | None = None
    lines: list[str] = field(default_factory=list)
    measuring: int = 0
    t0: float = field(default_factory=time.monotonic)

    @property
    def command(self) -> str:
        return "matrix" if self.cell.matrix else "run"

    def write(self, text: str) -> None:
        """A line in the run's log, with the seconds since the run began."""
        self.log.write(f"{time.monotonic() - self.t0:7.2f} {text}\n")
        self.log.flush()


Inject = Callable[[Trial], Injected | None]


def signal_command(sig: signal.Signals) -> Inject:
    def inject(trial: Trial) -> Injected:
        assert trial.proc is not None
        os.kill(trial.proc.pid, sig)
        return Injected(f"{sig.name} to `{trial.command}` (pid {trial.proc.pid})")

    return inject


def _python_server(proc: psutil.Process) -> bool:
    return " -m prefect server start " in left.cmdline(proc)


def kill_server(trial: Trial) -> Injected | None:
    found = trial.watcher.find(_python_server)
    if not found:
        return None
    what = f"SIGKILL to the server, {left.describe(found[0])}"
    found[0].kill()
    return Injected(what)


def kill_scaled(trial: Trial) -> Injected | None:
    """SIGKILL one of python-scaled's processes: an API worker, their parent or the services."""
    parents = trial.watcher.find(_python_server)
    workers = trial.watcher.find(
        lambda p: "spawn_main" in left.cmdline(p) and p.ppid() in {q.pid for q in parents}
    )
    services = trial.watcher.find(lambda p: " -m prefect server services start" in left.cmdline(p))
    kinds = [(w, "an API worker") for w in workers] + [
        (p, "the API processes' parent") for p in parents
    ]
    kinds += [(s, "the services process") for s in services]
    if not kinds:
        return None
    target, what = trial.rng.choice(kinds)
    what = f"SIGKILL to {what}, {left.describe(target)}"
    target.kill()
    return Injected(what)


def _container(trial: Trial, kind: str) -> Any | None:
    for container in left.containers(trial.docker, trial.run_id):
        if container.labels.get(SERVICE_LABEL) == kind:
            return container
    return None


def _local_service(trial: Trial, kind: str) -> list[psutil.Process]:
    """The local service's process (PostgreSQL: the postmaster first, then its children)."""
    if kind == "redis":
        return trial.watcher.find(lambda p: p.name() == "redis-server")
    main = trial.watcher.find(lambda p: p.name() == "postgres" and "-D" in p.cmdline())
    if not main:
        return []
    with contextlib.suppress(psutil.Error):
        return [main[0], *main[0].children(recursive=True)]
    return []


def kill_service(kind: str) -> Inject:
    def inject(trial: Trial) -> Injected | None:
        if trial.cell.provider == "docker":
            container = _container(trial, kind)
            if container is None:
                return None
            container.kill()
            return Injected(f"{kind}'s container {container.name} killed")
        procs = _local_service(trial, kind)
        if not procs:
            return None
        what = f"SIGKILL to {kind}, {left.describe(procs[0])}"
        procs[0].kill()
        return Injected(what)

    return inject


def pause_service(kind: str) -> Inject:
    def inject(trial: Trial) -> Injected | None:
        hold_s = round(trial.rng.uniform(2.0, 5.0), 1)
        if trial.cell.provider == "docker":
            container = _container(trial, kind)
            if container is None:
                return None
            container.pause()

            def unpause() -> None:
                with contextlib.suppress(Exception):  # removed meanwhile by the cell
                    container.unpause()

            return Injected(f"{kind}'s container paused {hold_s:g} s", unpause, hold_s)
        procs = _local_service(trial, kind)
        if not procs:
            return None
        for proc in procs:
            with contextlib.suppress(psutil.Error):
                proc.suspend()

        def resume() -> None:
            for proc in procs:
                with contextlib.suppress(psutil.Error):
                    proc.resume()

        what = f"SIGSTOP to {kind} ({len(procs)} processes), SIGCONT {hold_s:g} s later"
        return Injected(what, resume, hold_s)

    return inject


def remove_container(trial: Trial) -> Injected | None:
    kind = trial.rng.choice(["postgres", "redis"])
    container = _container(trial, kind)
    if container is None:
        return None
    container.remove(force=True, v=True)
    return Injected(f"{kind}'s container {container.name} removed")


def no_fault(trial: Trial) -> Injected:
    return Injected("no fault: the next run")


def make_readonly(trial: Trial) -> Injected:
    folder = trial.out / trial.run_id
    left.tool("chattr", "+i", str(folder))
    return Injected(f"{folder} made immutable")


def fill_up(trial: Trial) -> Injected:
    return Injected(f"{trial.out} filled: {fill(trial.out)}")


def fill(folder: Path) -> str:
    """Write into `folder` until its file system has no page left; what was written."""
    written = 0
    with contextlib.suppress(OSError), open(folder / "filler", "ab", buffering=0) as f:
        for chunk in (65536, 4096, 512, 1):
            with contextlib.suppress(OSError):
                while True:
                    written += f.write(b"\0" * chunk)
    return f"{written // 1024} KiB"


# -- the faults ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Fault:
    """A fault: the cells it is tried on (one drawn per run), how it is injected, and the
    outcomes it allows, as "<exit> <result>" (a matrix: "<exit>, resume <exit> <complete?>")."""

    name: str
    cells: Callable[[Sequence[str]], list[Cell]]  # from the providers available
    inject: Inject
    expect: frozenset[str]
    # the folder the results go to: the soak's, or one it makes read-only or full
    folder: str = "shared"
    # a folder fault comes before the cell starts this often (then `expect_before` applies)
    before: float = 0.0
    expect_before: frozenset[str] = frozenset()
    # the command is SIGKILLed: its folders and containers are the next run's to remove
    deferred: bool = False
    needs_root: bool = False


SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGKILL)


def runner_signal(sig: signal.Signals) -> Fault:
    """`sig` to `run`: interrupted (or ok, when it came after the result was written); a
    SIGKILLed runner writes nothing and leaves its folders and containers to the next run."""
    if sig == signal.SIGKILL:
        allowed = frozenset({"SIGKILL none", "SIGKILL ok"})
    else:
        allowed = frozenset({f"130 {INTERRUPTED}", "130 ok"})
    return Fault(
        f"runner-{sig.name.lower()}",
        lambda providers: [SQLITE, *(pg(p) for p in providers)],
        signal_command(sig),
        allowed,
        deferred=sig == signal.SIGKILL,
    )


def matrix_signal(sig: signal.Signals) -> Fault:
    """`sig` to `matrix`, resumed at once: every cell's result ok in the end."""
    cut = "SIGKILL" if sig == signal.SIGKILL else "130"
    return Fault(
        f"matrix-{sig.name.lower()}",
        lambda providers: [matrix(p) for p in providers],
        signal_command(sig),
        frozenset({f"{cut}, resume 0 complete"}),
    )


DIES = frozenset({"1 failed", "0 ok"})
# Faults a cell may live through: what its ok result measured is listed with the causes.
OK_SAYS_WHAT = (
    "server-sigkill",
    "scaled-sigkill",
    "postgres-kill",
    "postgres-pause",
    "redis-kill",
    "redis-pause",
    "container-removed",
)
FAULTS = (
    *(runner_signal(sig) for sig in SIGNALS),
    *(matrix_signal(sig) for sig in SIGNALS),
    Fault("server-sigkill", lambda ps: [SQLITE, *(pg(p) for p in ps)], kill_server, DIES),
    Fault("scaled-sigkill", lambda ps: [scaled(p) for p in ps], kill_scaled, DIES),
    Fault("postgres-kill", lambda ps: [flows(p) for p in ps], kill_service("postgres"), DIES),
    Fault("postgres-pause", lambda ps: [flows(p) for p in ps], pause_service("postgres"), DIES),
    Fault("redis-kill", lambda ps: [flows(p) for p in ps], kill_service("redis"), DIES),
    Fault("redis-pause", lambda ps: [flows(p) for p in ps], pause_service("redis"), DIES),
    Fault(
        "container-removed",
        lambda ps: [flows("docker")] if "docker" in ps else [],
        remove_container,
        DIES,
    ),
    Fault(
        "results-readonly",
        lambda ps: [SQLITE],
        make_readonly,
        frozenset({"1 none"}),
        folder="readonly",
        before=0.3,
        expect_before=frozenset({"2 none"}),
        needs_root=True,
    ),
    Fault(
        "results-full",
        lambda ps: [SQLITE],
        fill_up,
        frozenset({"1 none"}),
        folder="full",
        before=0.3,
        expect_before=frozenset({"1 none", "2 none"}),
        needs_root=True,
    ),
)
FAULT_NAMES = tuple(f.name for f in FAULTS)


# -- one run -------------------------------------------------------------------------------


@dataclass
class Record:
    """What one run of the soak found."""

    index: int
    fault: str
    cell: str
    run_id: str
    log: Path
    before: bool = False
    injected: str = ""  # what was done; empty: the fault found no target or came too late
    outcome: str = ""
    expected: bool = False
    leftovers: list[str] = field(default_factory=list)
    waiting: list[str] = field(default_factory=list)  # for the next run to remove
    cleaned_by_next: int = 0
    shared_memory: list[str] = field(default_factory=list)  # listed, not counted
    unreadable: list[str] = field(default_factory=list)
    no_cause: list[str] = field(default_factory=list)
    bugs: list[str] = field(default_factory=list)
    causes: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    reached_start: bool = False
    reached_provisioning: bool = False
    seconds: float = 0.0


class Soak:
    """The runs, their shared results folder and TMPDIR, and what waits for a next run."""

    def __init__(self, work: Path, docker: Any, seed: int) -> None:
        self.work = work
        self.tmp = work / "tmp"
        self.results = work / "results"
        self.logs = work / "logs"
        for folder in (self.tmp, self.results, self.logs):
            folder.mkdir(parents=True, exist_ok=True)
        # the local provider's services run as another user, who must get through
        for folder in (work, self.tmp):
            folder.chmod(0o755)
        self.docker = docker
        self.seed = seed
        self.env = os.environ | {
            "TMPDIR": str(self.tmp),
            "PYTHONUNBUFFERED": "1",
            "COLUMNS": "200",
        }
        self.env.pop("BENCH_VERBOSE", None)
        # (record, "folder"|"container", name) left by a SIGKILLed run for the next one
        self.waiting: list[tuple[Record, str, str]] = []
        # folders already counted for a run (one without an owner file names no run)
        self.attributed: set[str] = set()

    def run(self, index: int, fault: Fault, cell: Cell, rng: random.Random) -> Record:
        run_id = f"soak{self.seed}-{index:03d}-{fault.name}"
        record = Record(index, fault.name, cell.label, run_id, self.logs / f"{run_id}.log")
        record.before = fault.before > 0 and rng.random() < fault.before
        started = time.monotonic()
        shm_before = left.shared_memory()
        with self._folder(fault, index) as out:
            trial = Trial(index, cell, run_id, out, rng, self.docker, left.Watcher())
            with trial.watcher, open(record.log, "w") as trial.log:
                codes = self._command(trial, fault, record)
                if cell.matrix:  # resumed at once, as one would after a cut
                    resume = [
                        PYTHON,
                        "-m",
                        "bench",
                        "matrix",
                        "--resume",
                        run_id,
                        "--out",
                        str(out),
                    ]
                    trial.lines.append("")
                    trial.proc = self._start(resume, trial)
                    codes.append(self._wait(trial.proc, trial, record))
            self._check(trial, fault, record, codes)
        self._shared_memory(trial, record, shm_before)
        self._next_run(record)
        record.seconds = time.monotonic() - started
        return record

    @contextlib.contextmanager
    def _folder(self, fault: Fault, index: int) -> Iterator[Path]:
        """The results folder of a run: the soak's, or one made read-only or full for it (and
        undone after the checks)."""
        if fault.folder == "shared":
            yield self.results
            return
        out = self.work / fault.folder / f"{index:03d}"
        out.mkdir(parents=True)
        if fault.folder == "readonly":
            try:
                yield out
            finally:
                for folder in (out, *out.iterdir()):
                    left.tool("chattr", "-i", str(folder), check=False)
            return
        left.tool("mount", "-t", "tmpfs", "-o", f"size={FULL_SIZE},mode=0755", "tmpfs", str(out))
        try:
            yield out
        finally:
            left.tool("umount", "--lazy", str(out), check=False)

    def _command(self, trial: Trial, fault: Fault, record: Record) -> list[int | None]:
        """Start the command, inject the fault, wait for the end; the exit code (None: hung)."""
        cell, rng = trial.cell, trial.rng
        if record.before:
            if fault.folder == "readonly":
                left.tool("chattr", "+i", str(trial.out))
                record.injected = f"{trial.out} made immutable before the cell"
            else:
                record.injected = f"{trial.out} filled before the cell: {fill(trial.out)}"
        argv = cell.argv(trial.run_id, trial.out)
        trial.proc = self._start(argv, trial)
        if not record.before:
            k = rng.randint(1, len(cell.names))
            delay = round(rng.uniform(0.0, 3.0), 2)
            if _wait_measuring(trial, k) and _sleep_while(trial.proc, delay):
                trial.write(f"### injecting {fault.name} ({delay:g} s after measuring)")
                injected = fault.inject(trial)
                trial.write(f"### {injected.what if injected else 'no target found'}")
                if injected is None:
                    record.notes.append("the fault found no target")
                else:
                    record.injected = f"{injected.what}, {delay:g} s after measuring"
                    record.injected += f" (cell {k})" if cell.matrix else ""
                    if injected.undo is not None:
                        time.sleep(injected.hold_s)
                        injected.undo()
                        trial.write("### undone")
            else:
                record.notes.append("the command ended before the fault's moment")
        return [self._wait(trial.proc, trial, record)]

    def _start(self, argv: list[str], trial: Trial) -> subprocess.Popen[str]:
        trial.write(f"$ {' '.join(argv)}")
        proc = subprocess.Popen(
            argv,
            cwd=self.work,
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
            start_new_session=True,  # a Ctrl-C of the soak is its own to hand on
        )
        left.started(proc.pid)

        def read() -> None:
            assert proc.stdout is not None
            for line in proc.stdout:
                trial.lines.append(line.rstrip("\n"))
                trial.write(line.rstrip("\n"))
                if MEASURING.search(line):
                    trial.measuring += 1

        threading.Thread(target=read, daemon=True).start()
        return proc

    def _wait(self, proc: subprocess.Popen[str], trial: Trial, record: Record) -> int | None:
        try:
            code: int | None = proc.wait(timeout=HANG_S)
        except subprocess.TimeoutExpired:
            record.leftovers.append(
                f"the command hung: still running {HANG_S:g} s after it started"
            )
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            code = None
        time.sleep(0.3)  # its last lines
        return code

    def _check(self, trial: Trial, fault: Fault, record: Record, codes: list[int | None]) -> None:
        """Everything the run may have left, its results and its outcome."""
        procs, waited = left.processes_left(PROCESS_GRACE_S)
        record.leftovers += [f"process {left.describe(p)}" for p in procs]
        if waited > 5:
            record.notes.append(f"its processes took {waited:.0f} s to stop")
        ours, others = left.listening_left(trial.watcher.ports())
        left.kill(procs)
        record.leftovers += ours
        record.notes += others
        found = [("container", c.name) for c in left.containers(self.docker, trial.run_id)]
        found += [
            ("folder", name)
            for name, run in left.folders(self.tmp).items()
            if run in (trial.run_id, None) and name not in self.attributed
        ]
        self.attributed |= {name for _, name in found}
        for kind, name in found:
            if not fault.deferred:
                record.leftovers.append(f"{kind} {name}")
            record.waiting.append(f"{kind} {name}")
            self.waiting.append((record, kind, name))
        run_folder = trial.out / trial.run_id
        record.leftovers += [f"partial file {p}" for p in left.partial_files(run_folder)]
        text = "\n".join(trial.lines)
        record.reached_start = bool(REACHED_START.search(text))
        record.reached_provisioning = bool(REACHED_PROVISIONING.search(text))
        if BUG in text:
            record.bugs.append(next(line for line in trial.lines if BUG in line))
        state = self._results(trial, record, run_folder)
        exits = ", resume ".join(_exit(c) for c in codes)
        record.outcome = f"{exits} {state}"
        allowed = fault.expect_before if record.before else fault.expect
        record.expected = record.outcome in allowed
        if not record.injected:
            record.expected = True  # nothing to judge the fault by; counted as not injected
        last = _last_line(trial.lines)
        if any(c in (1, 2) for c in codes) and state == "none" and not CAUSE_LINE.match(last):
            record.no_cause.append(f"exit {exits}, last line: {last!r}")
        if state == "none" and codes[-1] in (1, 2, 130):
            record.causes.append(last)

    def _shared_memory(
        self, trial: Trial, record: Record, before: dict[str, tuple[float, int, bool]]
    ) -> None:
        """PostgreSQL's shared memory the run left (no process uses it): a SysV segment made by
        one of its processes, a /dev/shm segment made while it ran."""
        ours = {seen.pid for seen in trial.watcher.seen.values()}
        for name, (_, creator, used) in left.shared_memory().items():
            if name in before or used:
                continue
            if name.startswith("/dev/shm/") or creator in ours:
                record.shared_memory.append(name)

    def _results(self, trial: Trial, record: Record, folder: Path) -> str:
        """Read every result of the run; its state: a run's result (ok, failed, interrupted,
        none), a matrix's completeness after its resume."""
        per_cell: dict[str, list[Any]] = defaultdict(list)
        if trial.cell.matrix and (folder / ".matrix.json").exists():
            try:
                read_request(folder)
            except BenchError as exc:
                record.unreadable.append(str(exc))
        for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
            if path.name.startswith("."):
                continue
            try:
                result = load_result(path)
            except BenchError as exc:
                record.unreadable.append(str(exc))
                continue
            per_cell[result.cell.name].append(result)
            if result.status == "ok" and record.fault in OK_SAYS_WHAT:
                record.causes.append(f"ok: {_measured(result)}")
            elif result.status != "ok":
                if not (result.error or "").strip():
                    record.no_cause.append(f"{path.name}: {result.status} without an error")
                else:
                    record.causes.append(result.error or "")
                    if BUG in (result.error or ""):
                        record.bugs.append(f"{path.name}: {result.error}")
        if trial.cell.matrix:
            missing = []
            for name in trial.cell.names:
                kept = [r for r in per_cell.get(name, []) if r.error != INTERRUPTED]
                if len(kept) != 1 or kept[0].status != "ok":
                    states = [_state(r) for r in per_cell.get(name, [])] or ["none"]
                    missing.append(f"{name}: {'/'.join(states)}")
            return "complete" if not missing else f"incomplete ({'; '.join(missing)})"
        results = per_cell.get(trial.cell.name, [])
        if len(results) > 1:
            record.notes.append(f"{len(results)} results")
        return _state(results[-1]) if results else "none"

    def _next_run(self, record: Record) -> None:
        """What this run, as the next one, removed of what SIGKILLed runs left before it."""
        still = []
        for origin, kind, name in self.waiting:
            if origin is record:
                continue
            due = record.reached_start if kind == "folder" else record.reached_provisioning
            if not due:
                still.append((origin, kind, name))
                continue
            if self._exists(kind, name):
                origin.leftovers.append(
                    f"{kind} {name}, not removed by the next run ({record.index})"
                )
            else:
                origin.cleaned_by_next += 1
        self.waiting = still + [w for w in self.waiting if w[0] is record]

    def _exists(self, kind: str, name: str) -> bool:
        if kind == "folder":
            return (self.tmp / name).exists()
        if self.docker is None:
            return False
        return bool(self.docker.containers.list(all=True, filters={"name": f"^/{name}$"}))

    def clean_up(self) -> list[str]:
        """Remove what is left of the soak's runs (containers with their labels): the tool's
        leftovers, already counted; what was removed."""
        removed = []
        if self.docker is not None:
            for container in self.docker.containers.list(
                all=True, filters={"label": "prefect-bench.run"}
            ):
                if container.labels.get("prefect-bench.run", "").startswith(f"soak{self.seed}-"):
                    with contextlib.suppress(Exception):
                        container.remove(force=True, v=True)
                        removed.append(f"container {container.name}")
        return removed


def _wait_measuring(trial: Trial, k: int) -> bool:
    assert trial.proc is not None
    deadline = time.monotonic() + HANG_S
    while trial.measuring < k:
        if trial.proc.poll() is not None or time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def _sleep_while(proc: subprocess.Popen[str], seconds: float) -> bool:
    """Sleep `seconds` unless `proc` ends first; whether it still runs."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if proc.poll() is not None:
            return False
        time.sleep(0.01)
    return proc.poll() is None


def _exit(code: int | None) -> str:
    if code is None:
        return "hung"
    if code < 0:
        return signal.Signals(-code).name
    return str(code)


def _state(result: Any) -> str:
    return INTERRUPTED if result.error == INTERRUPTED else str(result.status)


def _measured(result: Any) -> str:
    """What an ok result measured, in a few words: what a fault the cell lived through left
    in its figures."""
    parts = [
        f"{ep.name} {ep.requests} requests, {sum(ep.errors.values())} errors"
        for ep in result.endpoints
    ]
    for s in result.scenarios:
        lost = "".join(f", {d.lost} {k} lost" for k, d in s.delivery.items() if d.lost)
        parts.append(f"{s.name} {s.completed} completed, {sum(s.failed.values())} failed{lost}")
    return "; ".join(parts) or "nothing measured"


def _last_line(lines: Sequence[str]) -> str:
    return next((line.strip() for line in reversed(lines) if line.strip()), "")


# -- the table -----------------------------------------------------------------------------


def table(records: Sequence[Record]) -> list[str]:
    """The faults × outcomes table, in Markdown."""
    lines = [
        "| fault | runs | injected | as expected | outcomes | leftovers | unreadable | "
        "without cause | bugs | left to the next run, removed by it | shared memory left |",
        "|---|---:|---:|---:|---|---:|---:|---:|---:|---|---:|",
    ]
    by_fault: dict[str, list[Record]] = defaultdict(list)
    for record in records:
        by_fault[record.fault].append(record)
    for name, group in sorted(by_fault.items(), key=lambda kv: _order(kv[0])):
        outcomes = Counter(
            ("before: " if r.before else "") + r.outcome + ("" if r.injected else " (missed)")
            for r in group
        )
        waiting = sum(len(r.waiting) for r in group)
        lines.append(
            f"| {name} | {len(group)} | {sum(bool(r.injected) for r in group)} | "
            f"{sum(r.expected for r in group)} | "
            + ", ".join(f"{o} ×{n}" for o, n in sorted(outcomes.items()))
            + f" | {sum(len(r.leftovers) for r in group)} | "
            f"{sum(len(r.unreadable) for r in group)} | {sum(len(r.no_cause) for r in group)} | "
            f"{sum(len(r.bugs) for r in group)} | "
            + (f"{waiting}, {sum(r.cleaned_by_next for r in group)}" if waiting else "")
            + f" | {sum(len(r.shared_memory) for r in group)} |"
        )
    return lines


def causes(records: Sequence[Record]) -> list[str]:
    """Each fault's causes as the results and last lines gave them, alike ones counted once
    (numbers and paths blurred for the grouping; what an ok result measured is kept as is)."""
    lines = []
    by_fault: dict[str, Counter[str]] = defaultdict(Counter)
    example: dict[tuple[str, str], str] = {}
    for record in records:
        for cause in record.causes:
            key = cause
            if not cause.startswith("ok: "):
                key = re.sub(r"\d+", "N", re.sub(r"/\S+", "PATH", cause))[:140]
            by_fault[record.fault][key] += 1
            example.setdefault((record.fault, key), cause)
    for fault, counts in sorted(by_fault.items(), key=lambda kv: _order(kv[0])):
        lines.append(f"{fault}:")
        for key, n in counts.most_common():
            lines.append(f"  {n:3d} × {example[(fault, key)][:220]}")
    return lines


def _order(fault: str) -> int:
    return FAULT_NAMES.index(fault) if fault in FAULT_NAMES else len(FAULT_NAMES)


def line(record: Record, runs: int) -> str:
    problems = [
        *(f"LEFT {x}" for x in record.leftovers),
        *(f"UNREADABLE {x}" for x in record.unreadable),
        *(f"NO CAUSE {x}" for x in record.no_cause),
        *(f"BUG {x}" for x in record.bugs),
    ]
    if not record.expected:
        problems.append("UNEXPECTED outcome")
    text = (
        f"[{record.index}/{runs}] {record.fault} on {record.cell}: {record.outcome}"
        f" ({record.injected or 'not injected: ' + '; '.join(record.notes)}) {record.seconds:.0f} s"
    )
    if record.waiting:
        text += f"; left to the next run: {', '.join(record.waiting)}"
    if record.shared_memory:
        text += f"; shared memory left: {', '.join(record.shared_memory)}"
    return text + "".join(f"\n    {p}" for p in problems)


# -- the command line ----------------------------------------------------------------------


def _docker() -> Any:
    try:
        import docker

        client = docker.from_env(timeout=60)
        client.ping()
        return client
    except Exception as exc:
        print(f"no docker daemon ({exc}): the local provider only", file=sys.stderr)
        return None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--faults", default=",".join(FAULT_NAMES), help="comma-separated")
    parser.add_argument("--work", type=Path, help="default: a new /tmp/fault-soak-*")
    args = parser.parse_args()
    unknown = set(args.faults.split(",")) - set(FAULT_NAMES)
    if unknown:
        parser.error(f"unknown fault {sorted(unknown)} (known: {', '.join(FAULT_NAMES)})")
    root = os.geteuid() == 0 and shutil.which("chattr") is not None
    faults = [f for f in FAULTS if f.name in args.faults.split(",") and (root or not f.needs_root)]
    if len(faults) < len(args.faults.split(",")):
        print("not root: results-readonly and results-full left out", file=sys.stderr)
    docker = _docker()
    providers = [p for p in PROVIDERS if p != "docker" or docker is not None]
    faults = [f for f in faults if f.cells(providers)]
    work = args.work or Path(tempfile.mkdtemp(prefix="fault-soak-"))
    left.become_subreaper()
    # The commands start with SIGINT as from a terminal: a job started in the background
    # (`… &` in a script) has it ignored, the commands would inherit that, and every SIGINT
    # fault would be lost (as it is meant to be for a background job: not a fault of theirs).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    soak = Soak(work, docker, args.seed)
    rng = random.Random(args.seed)
    print(
        f"fault soak: {args.runs} runs, seed {args.seed}, {len(faults)} faults, providers "
        f"{', '.join(providers)}; work folder {work}",
        flush=True,
    )
    records: list[Record] = []
    started = time.monotonic()
    order: list[Fault] = []
    try:
        for index in range(1, args.runs + 1):
            if not order:
                order = rng.sample(faults, len(faults))
            fault = order.pop()
            cell = rng.choice(fault.cells(providers))
            record = soak.run(index, fault, cell, rng)
            records.append(record)
            print(line(record, args.runs), flush=True)
        if soak.waiting:  # a last run, as the next one of what the last SIGKILLed run left
            sweep = Fault("(next run)", lambda ps: [], no_fault, frozenset({"0 ok"}))
            record = soak.run(args.runs + 1, sweep, pg(providers[0]), rng)
            records.append(record)
            print(line(record, args.runs), flush=True)
    except KeyboardInterrupt:
        print("interrupted: the table of the runs so far", flush=True)
    for origin, kind, name in soak.waiting:
        origin.leftovers.append(f"{kind} {name}, never removed by a next run")
    removed = soak.clean_up()
    minutes = (time.monotonic() - started) / 60
    print()
    print("\n".join(table(records)))
    print()
    print("causes (results' errors, and commands' last lines when no result was written):")
    print("\n".join(causes(records)))
    if removed:
        print(f"removed after the soak: {', '.join(removed)}")
    counts = {
        "leftovers": sum(len(r.leftovers) for r in records),
        "unreadable results": sum(len(r.unreadable) for r in records),
        "outcomes without cause": sum(len(r.no_cause) for r in records),
        "unexpected outcomes": sum(not r.expected for r in records),
        "bugs": sum(len(r.bugs) for r in records),
        "faults not injected": sum(not r.injected for r in records),
    }
    summary = ", ".join(f"{n} {what}" for what, n in counts.items())
    verdict = "PASS" if not any(counts.values()) else "FAIL"
    shm = sum(len(r.shared_memory) for r in records)
    print(
        f"{verdict}: {len(records)} runs in {minutes:.1f} min: {summary}"
        f" (and, not counted, {shm} shared memory segments of a killed PostgreSQL left)"
    )
    return 0 if verdict == "PASS" else 1


if __name__ == "__main__":
    sys.exit(main())
