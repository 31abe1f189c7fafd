"""A quiet machine, checked: what would make a cell's numbers untrustworthy, measured before it.

`OtherCpu` measures the CPU that processes other than ours used over a window (any window: the
second before a cell, or a measurement); `machine_state` adds what the kernel says about load,
frequency, SMT and memory; `reasons` turns a state into plain sentences, one per problem.

"Ours" is this process and its descendants (the server, local PostgreSQL/Redis, the engine),
plus the processes an `extra` callable names with their descendants: `ContainerProcesses` finds
those of docker containers, which are not our descendants. Linux only (/proc, /sys).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

import psutil

from bench.results.machine_state import TOP_PROCESSES, MachineState, OtherProcess, OtherUsage

TICKS_PER_S = os.sysconf("SC_CLK_TCK")
MB = 1024 * 1024
CPU_SYSFS = Path("/sys/devices/system/cpu")
PSI_MEMORY = Path("/proc/pressure/memory")

# Thresholds of `reasons` and `window_reason`.
# Idle background here (kernel threads, daemons, the container runtime) is ~0.05 of a core; a
# quarter core is five times that, so a process at work, and on the 2-core machines the matrix
# runs on it is an eighth of the capacity: enough to move a percentile by more than the 3 %
# that --repeat auto aims for.
OTHERS_MAX_CORES = 0.25
# The 1-minute load average still carries the previous cell (it decays over about a minute), and
# a saturated machine shows about one runnable task per CPU: only twice that is flagged.
LOAD_MAX_PER_CPU = 2.0
# Time the hypervisor ran other guests while ours wanted to run: 5 % of the CPUs is a busy host.
STEAL_MAX_SHARE = 0.05
# Below a tenth of memory available, the kernel evicts the page cache the databases rely on.
MEMORY_AVAILABLE_MIN_SHARE = 0.10
# PSI `some avg10` is 0.00 on a healthy machine; 1 % means tasks already wait for reclaim or swap.
MEMORY_PRESSURE_MAX_PCT = 1.0
# Only `performance` holds the frequency; other governors ramp it with the load, mid-measurement.
STEADY_GOVERNORS = frozenset({"performance"})


# -- processes ---------------------------------------------------------------------------


@dataclass(frozen=True)
class _Proc:
    """One line of /proc/<pid>/stat, times in clock ticks."""

    ppid: int
    name: str
    started: int  # ticks after boot: with the pid, the process's identity
    own: int  # utime + stime
    children: int  # cutime + cstime: descendants it has waited for


def _scan() -> dict[int, _Proc]:
    """Every process, read from /proc directly (psutil objects would take several times as long)."""
    procs = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            # raw os calls: half the time of open(), which the cost per window is mostly made of
            fd = os.open(f"/proc/{entry}/stat", os.O_RDONLY)
        except OSError:  # gone since the listing
            continue
        try:
            data = os.read(fd, 4096)
        except OSError:
            continue
        finally:
            os.close(fd)
        close = data.rfind(b")")  # the name may hold spaces and parentheses
        fields = data[close + 2 :].split()
        procs[int(entry)] = _Proc(
            ppid=int(fields[1]),
            name=data[data.find(b"(") + 1 : close].decode(errors="replace"),
            started=int(fields[19]),
            own=int(fields[11]) + int(fields[12]),
            children=int(fields[13]) + int(fields[14]),
        )
    return procs


def _tree(procs: dict[int, _Proc], roots: Iterable[int]) -> set[int]:
    """`roots` that are running and all their descendants."""
    children: dict[int, list[int]] = {}
    for pid, proc in procs.items():
        children.setdefault(proc.ppid, []).append(pid)
    found = {pid for pid in roots if pid in procs}
    todo = list(found)
    while todo:
        for child in children.get(todo.pop(), ()):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def _no_extra() -> Iterable[int]:
    return ()


@dataclass(frozen=True)
class OurProcesses:
    """The processes whose CPU is ours: `root` (default this process), the processes `extra`
    names (asked at every look), and the descendants of both."""

    extra: Callable[[], Iterable[int]] = _no_extra
    root: int = field(default_factory=os.getpid)

    def roots(self) -> set[int]:
        """`root` and what `extra` names now."""
        return {self.root, *self.extra()}

    def pids(self) -> set[int]:
        """The pids of our processes running now."""
        return _tree(_scan(), self.roots())


def _busy_and_steal() -> tuple[int, int]:
    """Ticks of all CPUs spent in user, nice and system, and stolen, since boot.

    Not irq/softirq: the loopback softirq our own load causes is in no process's account
    when the CPU was idle, and would look like a stranger.
    """
    with open("/proc/stat", "rb") as f:
        ticks = [int(t) for t in f.readline().split()[1:]]
    user, nice, system, steal = ticks[0], ticks[1], ticks[2], ticks[7]
    return user + nice + system, steal


@dataclass(frozen=True)
class _Look:
    """What OtherCpu reads at each end of a window."""

    at: float
    procs: dict[int, _Proc]
    ours: set[int]
    busy: int
    steal: int


def _look(ours: OurProcesses, before: _Look | None = None) -> _Look:
    roots = ours.roots()
    busy, steal = _busy_and_steal()
    procs = _scan()
    mine = _tree(procs, roots)
    if before is not None:
        # ours stays ours while it runs (a server worker orphaned when its parent exited)
        mine |= {pid for pid in before.ours if _same(before, procs, pid)}
    return _Look(time.monotonic(), procs, mine, busy, steal)


def _same(before: _Look, procs: dict[int, _Proc], pid: int) -> bool:
    """Whether `pid` is the same process in `procs` as it was in `before` (pids are reused)."""
    old, new = before.procs.get(pid), procs.get(pid)
    return old is not None and new is not None and old.started == new.started


def _usage(before: _Look, after: _Look) -> OtherUsage:
    """Others' and our CPU between two looks.

    Ours counts the children each of our processes waited for (a child that exited in the
    window is in its parent's `children`); for a process of ours that ended in the window, its
    CPU before the window is in that parent's `children` too and is taken off, but only if the
    parent still runs: an orphan's CPU went to whoever adopted it, and is lost, not doubled.

    Others are measured twice, and the larger is kept, as each misses something:
    - busy CPU (/proc/stat) minus ours: misses the softirq time the kernel charges to the task
      it interrupted (tick accounting without CONFIG_IRQ_TIME_ACCOUNTING, as here: under
      loopback load ours then exceeds busy, by 0.3 core measured);
    - the sum of other processes' own CPU: misses their children that exited in the window
      (their parents' `children` would also bring in CPU from before the window).
    """
    wall = after.at - before.at
    ours = 0
    others: list[tuple[int, int]] = []  # (ticks, pid)
    for pid, proc in after.procs.items():
        start = before.procs[pid] if _same(before, after.procs, pid) else None
        if pid in after.ours:
            ours += proc.own + proc.children - (start.own + start.children if start else 0)
        else:
            others.append((proc.own - (start.own if start else 0), pid))
    for pid in before.ours:
        parent = before.procs[pid].ppid
        ended = not _same(before, after.procs, pid)
        if ended and parent in after.ours and _same(before, after.procs, parent):
            ours -= before.procs[pid].own + before.procs[pid].children
    attributed = sum(ticks for ticks, _ in others)
    unattributed = after.busy - before.busy - ours
    online = psutil.cpu_count() or 1
    to_cores = 1 / (TICKS_PER_S * wall) if wall > 0 else 0.0
    top = sorted(others, reverse=True)[:TOP_PROCESSES]
    return OtherUsage(
        wall_s=round(wall, 3),
        cores=round(max(attributed, unattributed, 0) * to_cores, 3),
        ours_cores=round(max(ours, 0) * to_cores, 3),
        steal_share=round((after.steal - before.steal) * to_cores / online, 3),
        by_process=[
            OtherProcess(pid=pid, name=after.procs[pid].name, cores=round(ticks * to_cores, 3))
            for ticks, pid in top
            if ticks > 0
        ],
    )


class OtherCpu:
    """`with OtherCpu(ours) as usage: ...`: the CPU others used during the block, filled in
    `usage` when it ends. A window costs ~3.5 ms of CPU with 70 processes on the machine (a
    /proc scan at each end, ~25 µs per process), all of it counted as ours."""

    def __init__(self, ours: OurProcesses) -> None:
        self.ours = ours
        self.usage = OtherUsage()
        self._before: _Look | None = None

    def __enter__(self) -> OtherUsage:
        self._before = _look(self.ours)
        return self.usage

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._before is None:
            raise RuntimeError("OtherCpu left before it was entered")
        measured = _usage(self._before, _look(self.ours, self._before))
        for name in OtherUsage.model_fields:
            setattr(self.usage, name, getattr(measured, name))


# -- docker ------------------------------------------------------------------------------


def _read(path: Path | str) -> str | None:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read().strip()
    except OSError:
        return None


def _container_ips(pid: int) -> set[str]:
    """The IPv4 addresses of `pid`'s network namespace, none if it is the host's (host network:
    no docker-proxy forwards to it)."""
    try:
        if os.stat(f"/proc/{pid}/ns/net").st_ino == os.stat("/proc/self/ns/net").st_ino:
            return set()
    except OSError:
        return set()
    ips, last = set(), None
    for line in (_read(f"/proc/{pid}/net/fib_trie") or "").splitlines():
        text = line.strip()
        if text.startswith("|-- "):
            last = text[4:]
        elif text == "/32 host LOCAL" and last and not last.startswith("127."):
            ips.add(last)
    return ips


def _proxies_to(ips: set[str]) -> list[psutil.Process]:
    """The docker-proxy processes forwarding a published port to one of `ips`."""
    found = []
    for proc in psutil.process_iter(["name", "cmdline"]):
        argv = proc.info["cmdline"] or []
        if proc.info["name"] != "docker-proxy" or "-container-ip" not in argv:
            continue
        at = argv.index("-container-ip") + 1
        if at < len(argv) and argv[at] in ips:
            found.append(proc)
    return found


class ContainerProcesses:
    """The host processes of docker containers that are not our descendants: each container's
    processes (found by the container id in /proc/<pid>/cgroup), their parent outside it (the
    containerd shim, whose descendants every later `docker exec` joins) and the docker-proxy
    processes that forward published ports to it. For `OurProcesses(extra=...)`.

    Found once and kept while they run, so a call usually costs no /proc scan.
    """

    def __init__(self, container_ids: Iterable[str]) -> None:
        self.container_ids = [c for c in container_ids if c]
        self._found: dict[str, list[psutil.Process]] = {}

    def __call__(self) -> set[int]:
        pids: set[int] = set()
        for cid in self.container_ids:
            procs = [p for p in self._found.get(cid, ()) if p.is_running()]
            if not procs:
                procs = self._found[cid] = _container_processes(cid)
            pids.update(p.pid for p in procs)
        return pids


def _container_processes(container_id: str) -> list[psutil.Process]:
    """Processes in the container's cgroup, their parents outside it, and its docker-proxies."""
    members = {
        int(entry)
        for entry in os.listdir("/proc")
        if entry.isdigit() and container_id in (_read(f"/proc/{entry}/cgroup") or "")
    }
    found = []
    for pid in members:
        try:
            proc = psutil.Process(pid)
            found.append(proc)
            if proc.ppid() not in members and proc.ppid() > 1:
                found.append(psutil.Process(proc.ppid()))
        except psutil.Error:
            continue
    if members:
        found += _proxies_to(_container_ips(min(members)))
    return list({p.pid: p for p in found}.values())


# -- the machine -------------------------------------------------------------------------


def _cpu_list(text: str) -> set[int]:
    """A kernel CPU list such as `0-3,8`."""
    cpus: set[int] = set()
    for part in text.split(","):
        first, _, last = part.partition("-")
        if first.strip().isdigit():
            cpus.update(range(int(first), int(last or first) + 1))
    return cpus


def _boost() -> bool | None:
    if (boost := _read(CPU_SYSFS / "cpufreq" / "boost")) is not None:
        return boost == "1"
    if (no_turbo := _read(CPU_SYSFS / "intel_pstate" / "no_turbo")) is not None:
        return no_turbo == "0"
    return None


def _smt_siblings(usable: list[int]) -> list[list[int]] | None:
    groups: set[frozenset[int]] = set()
    for cpu in usable:
        text = _read(CPU_SYSFS / f"cpu{cpu}" / "topology" / "thread_siblings_list")
        if text is None:
            return None
        groups.add(frozenset(_cpu_list(text) & set(usable)))
    return sorted(sorted(g) for g in groups if len(g) > 1)


def _memory_pressure_pct() -> float | None:
    for line in (_read(PSI_MEMORY) or "").splitlines():
        if line.startswith("some "):
            for word in line.split()[1:]:
                key, _, value = word.partition("=")
                if key == "avg10":
                    return float(value)
    return None


def machine_state(ours: OurProcesses, seconds: float = 1.0) -> MachineState:
    """The machine just before a cell; takes `seconds` to measure what others use."""
    with OtherCpu(ours) as others:
        time.sleep(seconds)
    usable = sorted(os.sched_getaffinity(0))
    governors = {
        cpu: governor
        for cpu in usable
        if (governor := _read(CPU_SYSFS / f"cpu{cpu}" / "cpufreq" / "scaling_governor"))
    }
    smt = _read(CPU_SYSFS / "smt" / "active")
    memory, swap = psutil.virtual_memory(), psutil.swap_memory()
    one, five, fifteen = os.getloadavg()
    return MachineState(
        online_cpus=psutil.cpu_count() or 1,
        usable_cpus=usable,
        load_avg=(round(one, 2), round(five, 2), round(fifteen, 2)),
        others=others,
        governors=governors or None,
        boost=_boost(),
        smt_active=None if smt is None else smt == "1",
        smt_siblings=_smt_siblings(usable),
        memory_available_share=round(memory.available / memory.total, 3),
        swap_used_mb=round(swap.used / MB, 1),
        memory_pressure_pct=_memory_pressure_pct(),
    )


def window_reason(usage: OtherUsage, when: str) -> str | None:
    """The sentence that marks a window noisy (others above OTHERS_MAX_CORES), or None.

    `when` finishes it: "in the second before the cell", "during the measurement".
    """
    if usage.cores <= OTHERS_MAX_CORES:
        return None
    named = ", ".join(f"{p.name} pid {p.pid}: {p.cores:.2f}" for p in usage.by_process)
    return f"other processes used {usage.cores:.2f} of a core {when}" + (
        f" ({named})" if named else ""
    )


def reasons(state: MachineState) -> list[str]:
    """One plain sentence for each thing in `state` that makes numbers untrustworthy."""
    found = []
    when = f"in the {state.others.wall_s:g} s before the cell"
    if (busy := window_reason(state.others, when)) is not None:
        found.append(busy)
    if state.others.steal_share > STEAL_MAX_SHARE:
        found.append(
            f"the hypervisor took {state.others.steal_share:.0%} of the CPUs' time {when} "
            "(steal: other guests on the host)"
        )
    if state.load_avg[0] > LOAD_MAX_PER_CPU * state.online_cpus:
        found.append(f"load average {state.load_avg[0]:g} on {state.online_cpus} CPUs")
    by_governor: dict[str, list[int]] = {}
    for cpu, governor in (state.governors or {}).items():
        if governor not in STEADY_GOVERNORS:
            by_governor.setdefault(governor, []).append(cpu)
    for governor, cpus in sorted(by_governor.items()):
        found.append(f"CPU governor {governor} on {', '.join(f'cpu{c}' for c in cpus)}")
    if state.boost:
        found.append("CPU boost/turbo on: the frequency follows temperature and busy cores")
    for group in state.smt_siblings or ():
        found.append(f"SMT: {' and '.join(f'cpu{c}' for c in group)} are threads of one core")
    if state.memory_available_share < MEMORY_AVAILABLE_MIN_SHARE:
        found.append(f"only {state.memory_available_share:.0%} of memory available")
    pressure = state.memory_pressure_pct
    if pressure is not None and pressure > MEMORY_PRESSURE_MAX_PCT:
        found.append(f"memory pressure: some task waited for memory {pressure:g}% of the last 10 s")
    return found
