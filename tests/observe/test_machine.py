"""bench.observe.machine against real processes: a CPU hog that is not ours, busy children that are,
the state of this machine, and (where a daemon answers) the processes of docker containers.

The machine is shared: CPU figures are compared with what the processes themselves report,
with slack, rather than with fixed expectations, and each window stays open until the load it
checks for has run (`window_until`), so a busy machine makes a test slower, not failed.
"""

from __future__ import annotations

import contextlib
import os
import resource
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from bench.cells.runner import CellRun, run_cell
from bench.core.ownership import Labels, owner_labels
from bench.core.process import wait_until
from bench.observe import machine
from bench.observe.machine import (
    OTHERS_MAX_CORES,
    ContainerProcesses,
    MachineState,
    OtherCpu,
    OtherUsage,
    OurProcesses,
    machine_state,
    reasons,
    window_reason,
)
from bench.results import new_run_id
from bench.results.machine_state import TOP_PROCESSES
from bench.servers.running import RunningServer

# Busy for at most `limit` seconds, so that nothing outlives a test that crashed.
BUSY = "import time\nend = time.monotonic() + {limit}\nwhile time.monotonic() < end: pass\n"
# Busy until it has used `cpu_s` of CPU, however long a busy machine makes that take.
SPIN = (
    "import time\nend = time.monotonic() + {limit}\n"
    "while time.process_time() < {cpu_s} and time.monotonic() < end: pass\n"
)
# Forks twice and leaves the grandchild, which runs argv[1], in its own session, adopted by
# init (or a subreaper above us): a process that is not our descendant, as another user's job.
STRANGER = """
import os, sys
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        print(os.getpid(), flush=True)
        os.close(1)
        exec(sys.argv[1])
    os._exit(0)
"""
# A stranger whose CPU is in children that live ~0.1 s each, as in a build: by the end of a
# window most have exited, seen only in their parent's account once it has waited for them.
SPAWNING = """
import subprocess, sys, time
end = time.monotonic() + 120
while time.monotonic() < end:
    subprocess.run([sys.executable, "-c", "sum(range(3_000_000))"])
"""


def cpu_s(proc: psutil.Process) -> float:
    times = proc.cpu_times()
    return times.user + times.system


def running_busy(proc: psutil.Process, at_least_s: float = 0.05) -> None:
    """Return once `proc` has used `at_least_s` of CPU: it is scheduled and spinning."""
    wait_until(lambda: cpu_s(proc) >= at_least_s or None, timeout_s=30, interval_s=0.01)


def window_until(used: Callable[[], float], at_least_s: float) -> tuple[OtherUsage, float]:
    """An OtherCpu window held open until `used()` (CPU-seconds) has grown by `at_least_s`, and
    that growth: however busy the machine, the window holds the load the test checks for."""
    start = used()
    with OtherCpu(OurProcesses()) as usage:
        wait_until(lambda: used() - start >= at_least_s or None, timeout_s=120, interval_s=0.05)
    return usage, used() - start


def named_or_outranked(pid: int, usage: OtherUsage, cores: float) -> bool:
    """`pid` (which used `cores`) is among the busiest others named, or as many others as are
    named each used at least as much (the machine is shared: it was rightly left out)."""
    named = {p.pid for p in usage.by_process}
    full = len(usage.by_process) == TOP_PROCESSES
    return pid in named or (full and all(p.cores >= 0.8 * cores for p in usage.by_process))


def strangers_cpu_s() -> dict[tuple[int, float], float]:
    """CPU so far of each process not ours (keyed by pid and start), with the children each
    waited for: by psutil, independently of bench.observe.machine, and rather more than less."""
    me = psutil.Process()
    ours = {me.pid, *(p.pid for p in me.children(recursive=True))}
    found = {}
    for proc in psutil.process_iter():
        with contextlib.suppress(psutil.Error):
            if proc.pid not in ours:
                t = proc.cpu_times()
                cpu = t.user + t.system + t.children_user + t.children_system
                found[proc.pid, proc.create_time()] = cpu
    return found


def strangers_cores(
    before: dict[tuple[int, float], float], wall_s: float, leave_out: int | None = None
) -> float:
    """What the processes not ours (and not `leave_out`) used since `before`, in cores."""
    after = strangers_cpu_s()
    used = sum(cpu - before.get(key, 0.0) for key, cpu in after.items() if key[0] != leave_out)
    return used / wall_s


def busy_child(limit_s: float) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-c", BUSY.format(limit=limit_s)])


@contextlib.contextmanager
def started_stranger(work: str) -> Iterator[psutil.Process]:
    """A process that is not ours, running `work`; exactly that process is killed at the end."""
    starter = subprocess.Popen([sys.executable, "-c", STRANGER, work], stdout=subprocess.PIPE)
    hog = None
    try:
        assert starter.stdout is not None
        line = starter.stdout.readline()
        starter.stdout.close()
        starter.wait(timeout=30)
        hog = psutil.Process(int(line))  # identity kept: kill() below cannot hit a reused pid
        yield hog
    finally:
        if hog is not None:
            with contextlib.suppress(psutil.NoSuchProcess):
                hog.kill()
                hog.wait(timeout=10)


@pytest.fixture
def stranger() -> Iterator[psutil.Process]:
    """A busy process that is not ours."""
    with started_stranger(BUSY.format(limit=120)) as hog:
        running_busy(hog)
        yield hog


def test_a_stranger_hog_is_counted_and_named(stranger: psutil.Process) -> None:
    assert stranger.pid not in OurProcesses().pids() and stranger.ppid() != os.getpid()
    usage, used_s = window_until(lambda: cpu_s(stranger), at_least_s=0.4)
    truth = used_s / usage.wall_s
    assert usage.cores >= 0.8 * truth, (usage, truth)
    assert named_or_outranked(stranger.pid, usage, truth), (usage, truth)
    named = {p.pid: p for p in usage.by_process}
    if stranger.pid in named:
        assert named[stranger.pid].cores >= 0.8 * truth, (usage, truth)
        assert named[stranger.pid].name == stranger.name()[:15]
    assert usage.ours_cores < 0.2, usage  # we polled, every 50 ms


def test_a_stranger_s_short_lived_children_are_counted() -> None:
    with started_stranger(SPAWNING) as spawner:

        def spent() -> float:
            t = spawner.cpu_times()
            return t.user + t.system + t.children_user + t.children_system

        wait_until(lambda: spent() >= 0.1 or None, timeout_s=30, interval_s=0.01)
        usage, used_s = window_until(spent, at_least_s=0.4)
    truth = used_s / usage.wall_s
    assert usage.cores >= 0.8 * truth, (usage, truth)


# Two processes of ours exchanging small messages over loopback TCP, as server and engine
# do: much of their CPU is softirq, which a tick-accounting kernel charges to them.
PING_PONG = """
import os, socket, time
listener = socket.create_server(("127.0.0.1", 0))
if os.fork() == 0:
    conn = socket.create_connection(listener.getsockname())
    end = time.monotonic() + 30
    while time.monotonic() < end:
        conn.sendall(b"x" * 200)
        if not conn.recv(65536):
            break
    os._exit(0)
conn, _ = listener.accept()
try:
    while data := conn.recv(65536):
        conn.sendall(data)
except ConnectionError:
    pass
"""


def test_a_stranger_is_counted_beside_our_loopback_traffic(stranger: psutil.Process) -> None:
    traffic = subprocess.Popen([sys.executable, "-c", PING_PONG])
    try:
        pair = psutil.Process(traffic.pid)
        running_busy(pair, at_least_s=0.1)

        def pair_cpu_s() -> float:
            return cpu_s(pair) + sum(cpu_s(child) for child in pair.children())

        start = pair_cpu_s()
        usage, used_s = window_until(lambda: cpu_s(stranger), at_least_s=0.3)
        ours_s = pair_cpu_s() - start
    finally:
        traffic.kill()  # its client sees the connection close and exits
        traffic.wait()
    truth = used_s / usage.wall_s
    assert usage.cores >= 0.8 * truth, (usage, truth)
    assert usage.ours_cores >= 0.8 * ours_s / usage.wall_s > 0, (usage, ours_s)


def test_the_reasons_name_the_hog(
    stranger: psutil.Process, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The sentence says how much others used and names the busiest. The threshold is put
    under what the hog got: on a shared machine it may get less than the real one."""
    usage, used_s = window_until(lambda: cpu_s(stranger), at_least_s=0.3)
    monkeypatch.setattr(machine, "OTHERS_MAX_CORES", 0.5 * used_s / usage.wall_s)
    state = machine_state(OurProcesses(), seconds=0.1).model_copy(update={"others": usage})
    found = [r for r in reasons(state) if r.startswith("other processes used")]
    assert len(found) == 1, reasons(state)
    assert f"pid {usage.by_process[0].pid}" in found[0], found
    if stranger.pid in {p.pid for p in usage.by_process}:
        assert f"pid {stranger.pid}" in found[0], found
    assert f"in the {usage.wall_s:g} s before the cell" in found[0], found


def test_a_busy_child_of_ours_is_ours() -> None:
    child = busy_child(limit_s=30)
    try:
        proc = psutil.Process(child.pid)
        running_busy(proc)
        strangers = strangers_cpu_s()
        usage, used_s = window_until(lambda: cpu_s(proc), at_least_s=0.4)
        others = strangers_cores(strangers, usage.wall_s)
        truth = used_s / usage.wall_s
    finally:
        child.kill()
        child.wait()
    assert child.pid not in {p.pid for p in usage.by_process}
    assert usage.ours_cores >= 0.8 * truth, usage
    # the machine is shared: others are what strangers used, not the child's core on top
    assert usage.cores <= others + 0.2, (usage, others)


def test_children_that_end_in_the_window_are_ours() -> None:
    """One child busy since before the window is killed and reaped in it (its CPU before the
    window must not count), another starts and ends in it (left unreaped until after)."""
    old = busy_child(limit_s=30)
    young = None
    try:
        old_proc = psutil.Process(old.pid)
        running_busy(old_proc, at_least_s=0.5)  # enough to show if it were counted
        reaped, strangers = resource.getrusage(resource.RUSAGE_CHILDREN), strangers_cpu_s()
        with OtherCpu(OurProcesses()) as usage:
            old_before = cpu_s(old_proc)
            wait_until(lambda: cpu_s(old_proc) - old_before >= 0.2 or None, timeout_s=120)
            old.kill()
            old.wait()
            young = subprocess.Popen([sys.executable, "-c", SPIN.format(cpu_s=0.2, limit=120)])
            young_proc = psutil.Process(young.pid)
            wait_until(lambda: young_proc.status() == "zombie" or None, timeout_s=120)
            time.sleep(0.1)
        others = strangers_cores(strangers, usage.wall_s)
        young.wait()
    finally:
        for child in (old, young):
            if child is not None:
                child.kill()
                child.wait()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    lives = after.ru_utime + after.ru_stime - reaped.ru_utime - reaped.ru_stime
    truth = (lives - old_before) / usage.wall_s
    assert abs(usage.ours_cores - truth) <= 0.15, (usage, truth)
    assert usage.cores <= others + 0.2, (usage, others)


# A child that starts a busy grandchild, prints its pid, and exits when its stdin closes,
# leaving the grandchild orphaned: adopted by init, no longer our descendant.
ORPHANING = f"""
import os, sys
pid = os.fork()
if pid == 0:
    exec({BUSY.format(limit=30)!r})
    os._exit(0)
print(pid, flush=True)
sys.stdin.read()
"""


def test_an_orphaned_descendant_stays_ours() -> None:
    parent = subprocess.Popen(
        [sys.executable, "-c", ORPHANING], stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    orphan = None
    try:
        assert parent.stdin is not None and parent.stdout is not None
        orphan = psutil.Process(int(parent.stdout.readline()))
        running_busy(orphan)
        strangers = strangers_cpu_s()
        start = cpu_s(orphan)
        with OtherCpu(OurProcesses()) as usage:
            parent.stdin.close()
            parent.wait(timeout=30)
            wait_until(lambda: cpu_s(orphan) - start >= 0.4 or None, timeout_s=120)
        used_s = cpu_s(orphan) - start
        assert orphan.ppid() != parent.pid  # adopted while the window ran
        others = strangers_cores(strangers, usage.wall_s, leave_out=orphan.pid)
    finally:
        parent.kill()
        parent.wait()
        if orphan is not None:
            with contextlib.suppress(psutil.NoSuchProcess):
                orphan.kill()
                orphan.wait(timeout=10)
    assert orphan.pid not in {p.pid for p in usage.by_process}, usage
    assert usage.cores <= others + 0.2, (usage, others)
    assert usage.ours_cores >= 0.8 * used_s / usage.wall_s, (usage, used_s)


def test_the_state_of_this_machine_is_sane() -> None:
    state = machine_state(OurProcesses(), seconds=0.3)
    assert len(state.load_avg) == 3 and all(x >= 0 for x in state.load_avg)
    assert 1 <= len(state.usable_cpus) <= state.online_cpus
    assert state.governors is None or all(
        isinstance(g, str) and g for g in state.governors.values()
    )
    assert state.boost in (None, True, False) and state.smt_active in (None, True, False)
    assert 0 < state.memory_available_share <= 1 and state.swap_used_mb >= 0
    assert state.memory_pressure_pct is None or state.memory_pressure_pct >= 0
    assert 0.3 <= state.others.wall_s < 1.3 and 0 <= state.others.steal_share <= 1
    # CPU times are counted in ticks of 10 ms, read process by process: slack for the rounding
    assert 0 <= state.others.cores <= state.online_cpus + 0.1
    assert MachineState.model_validate_json(state.model_dump_json()) == state


def fake_sysfs(root: Path, cpus: list[int], governor: str) -> None:
    """A /sys/devices/system/cpu with a governor per CPU, boost on, and all CPUs one core."""
    siblings = ",".join(map(str, cpus))
    for cpu in cpus:
        (root / f"cpu{cpu}" / "cpufreq").mkdir(parents=True)
        (root / f"cpu{cpu}" / "cpufreq" / "scaling_governor").write_text(governor + "\n")
        (root / f"cpu{cpu}" / "topology").mkdir()
        (root / f"cpu{cpu}" / "topology" / "thread_siblings_list").write_text(siblings + "\n")
    (root / "cpufreq").mkdir()
    (root / "cpufreq" / "boost").write_text("1\n")
    (root / "smt").mkdir()
    (root / "smt" / "active").write_text("1\n")


def test_what_sysfs_and_psi_say_is_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cpus = sorted(os.sched_getaffinity(0))
    fake_sysfs(tmp_path / "cpu", cpus, "powersave")
    (tmp_path / "memory").write_text(
        "some avg10=3.20 avg60=1.00 avg300=0.10 total=9\nfull avg10=1.00 avg60=0 avg300=0 total=1\n"
    )
    monkeypatch.setattr(machine, "CPU_SYSFS", tmp_path / "cpu")
    monkeypatch.setattr(machine, "PSI_MEMORY", tmp_path / "memory")
    state = machine_state(OurProcesses(), seconds=0.05)
    assert state.governors == dict.fromkeys(cpus, "powersave")
    assert state.boost is True and state.smt_active is True
    assert state.smt_siblings == ([cpus] if len(cpus) > 1 else [])
    assert state.memory_pressure_pct == 3.2
    found = reasons(state)
    assert f"CPU governor powersave on {', '.join(f'cpu{c}' for c in cpus)}" in found
    assert "memory pressure: some task waited for memory 3.2% of the last 10 s" in found
    assert any(r.startswith("CPU boost/turbo on") for r in found)


def test_absent_files_are_none(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(machine, "CPU_SYSFS", tmp_path / "nothing")
    monkeypatch.setattr(machine, "PSI_MEMORY", tmp_path / "nothing" / "memory")
    state = machine_state(OurProcesses(), seconds=0.05)
    assert state.governors is None and state.boost is None
    assert state.smt_active is None and state.smt_siblings is None
    assert state.memory_pressure_pct is None


def quiet_state(**changes: Any) -> MachineState:
    state = MachineState(
        online_cpus=2,
        usable_cpus=[0, 1],
        load_avg=(0.5, 0.4, 0.3),
        others=OtherUsage(wall_s=1.0, cores=0.05),
        governors={0: "performance", 1: "performance"},
        boost=False,
        smt_active=False,
        smt_siblings=[],
        memory_available_share=0.8,
        swap_used_mb=0.0,
        memory_pressure_pct=0.0,
    )
    return state.model_copy(update=changes)


def test_each_problem_is_one_sentence() -> None:
    assert reasons(quiet_state()) == []
    noisy = quiet_state(
        load_avg=(5.1, 2.0, 1.0),
        others=OtherUsage(wall_s=1.0, cores=0.93, steal_share=0.12),
        governors={0: "schedutil", 1: "performance"},
        smt_siblings=[[0, 1]],
        memory_available_share=0.05,
    )
    assert reasons(noisy) == [
        "other processes used 0.93 of a core in the 1 s before the cell",
        "the hypervisor took 12% of the CPUs' time in the 1 s before the cell (steal: other "
        "guests on the host)",
        "load average 5.1 on 2 CPUs",
        "CPU governor schedutil on cpu0",
        "SMT: cpu0 and cpu1 are threads of one core",
        "only 5% of memory available",
    ]


def test_a_window_is_noisy_above_the_share_of_a_core() -> None:
    at_most = OtherUsage(wall_s=5.0, cores=OTHERS_MAX_CORES)
    assert window_reason(at_most, "during the measurement") is None
    above = OtherUsage(
        wall_s=5.0,
        cores=OTHERS_MAX_CORES + 0.01,
        by_process=[machine.OtherProcess(pid=42, name="cc1", cores=0.2)],
    )
    assert window_reason(above, "during the measurement") == (
        f"other processes used {OTHERS_MAX_CORES + 0.01:.2f} of a core during the measurement "
        "(cc1 pid 42: 0.20)"
    )


# -- docker ------------------------------------------------------------------------------

IMAGE = "redis:7"


def docker_client() -> tuple[Any, str | None]:
    """A client and None, or None and why there is none."""
    try:
        import docker

        client = docker.from_env(timeout=10)
        client.ping()
        client.images.get(IMAGE)
    except Exception as exc:  # any failure means: no daemon or image to test with
        return (
            None,
            f"no docker daemon with {IMAGE} ({exc}); see ../shared/tools/build-local-images",
        )
    return client, None


@pytest.fixture
def client() -> Iterator[Any]:
    client, reason = docker_client()
    if client is None:
        pytest.skip(reason or "no docker")
    with contextlib.closing(client):
        yield client


def container_pids(container: Any) -> set[int]:
    """Host pids of the processes in the container, by the daemon's account."""
    return {int(row[1]) for row in container.top(ps_args="-eo user,pid")["Processes"]}


@pytest.mark.slow
def test_container_processes_are_ours(client: Any) -> None:
    """A host-network container (as the docker provider runs them): its processes, its shim,
    and what `docker exec` starts later are ours."""
    labels = owner_labels(Labels(run_id=new_run_id(), cell="machine"), "redis")
    container = None
    try:
        container = client.containers.run(
            IMAGE, ["sleep", "600"], detach=True, network_mode="host", labels=labels
        )
        wait_until(lambda: container_pids(container) or None, timeout_s=30)
        extra = ContainerProcesses([container.id])
        ours = OurProcesses(extra=extra)
        inside = container_pids(container)
        shims = {psutil.Process(pid).ppid() for pid in inside} - inside
        assert inside <= ours.pids() and shims <= extra()
        container.exec_run(["sleep", "30"], detach=True)
        later = wait_until(lambda: container_pids(container) - inside or None, timeout_s=30)
        assert later <= ours.pids()
    finally:
        if container is not None:
            container.remove(force=True, v=True)


@pytest.mark.slow
def test_docker_proxy_of_a_published_port_is_ours(client: Any) -> None:
    """A bridge-network container with a published port: docker-proxy carries its traffic."""
    labels = owner_labels(Labels(run_id=new_run_id(), cell="machine"), "redis")
    network = container = None
    try:
        network = client.networks.create(f"prefect-bench-machine-{os.getpid()}", labels=labels)
        container = client.containers.run(
            IMAGE,
            ["redis-server", "--bind", "0.0.0.0"],
            detach=True,
            network=network.name,
            ports={"6379/tcp": ("127.0.0.1", None)},
            labels=labels,
        )
        container.reload()
        ip = container.attrs["NetworkSettings"]["Networks"][network.name]["IPAddress"]
        proxies = {
            p.pid
            for p in psutil.process_iter(["name", "cmdline"])
            if p.info["name"] == "docker-proxy" and ip in (p.info["cmdline"] or [])
        }
        if not proxies:
            pytest.skip("this daemon forwards published ports without docker-proxy")
        assert proxies <= ContainerProcesses([container.id])()
    finally:
        if container is not None:
            container.remove(force=True, v=True)
        if network is not None:
            network.remove()


@pytest.mark.slow
def test_a_cell_beside_a_cpu_hog_is_noisy_and_says_why(
    stranger: psutil.Process,
    cell_run: Callable[..., CellRun],
    progress: Callable[..., Any],
    prefect_server: RunningServer,
) -> None:
    config = {"workload": "health", "duration_s": 0.5, "warmup_s": 0.1, "concurrency": [1]}
    result = run_cell(cell_run(url=prefect_server.base_url, **config), progress())
    assert result.status == "ok", result.error
    assert result.noisy and result.machine is not None
    assert any(f"pid {stranger.pid}" in reason for reason in result.noise), result.noise
    (ep,) = result.endpoints
    assert ep.other_cpu_cores is not None and ep.other_cpu_cores > OTHERS_MAX_CORES
    assert any("while measuring health at c=1" in reason for reason in result.noise)
