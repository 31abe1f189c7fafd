import os
import signal
import sys
from pathlib import Path

import psutil
import pytest

from bench.core.process import ManagedProcess, wait_until

# A parent that starts a grandchild, reports both pids, and lives until signalled.
PARENT = """
import subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
print(child.pid, flush=True)
{ignore}
time.sleep(600)
"""


def start(tmp_path: Path, ignore_sigterm: bool = False) -> ManagedProcess:
    ignore = (
        "import signal; signal.signal(signal.SIGTERM, signal.SIG_IGN)" if ignore_sigterm else ""
    )
    return ManagedProcess(
        [sys.executable, "-c", PARENT.format(ignore=ignore)],
        env={"PATH": "/usr/bin:/bin"},
        cwd=tmp_path,
        log_path=tmp_path / "log" / "out.log",
    )


def grandchild_pid(proc: ManagedProcess) -> int:
    wait_until(lambda: proc.log_path.read_text().strip() != "", timeout_s=30)
    return int(proc.log_path.read_text().split()[0])


def test_stop_terminates_the_whole_tree(tmp_path: Path) -> None:
    proc = start(tmp_path)
    child = grandchild_pid(proc)
    assert {p.pid for p in proc.tree()} == {proc.pid, child}
    assert proc.stop() == -signal.SIGTERM
    assert not psutil.pid_exists(child) or psutil.Process(child).status() == "zombie"
    assert proc.tree() == []


def test_stop_kills_what_ignores_sigterm(tmp_path: Path) -> None:
    proc = start(tmp_path, ignore_sigterm=True)
    grandchild_pid(proc)
    assert proc.stop(timeout_s=0.5) == -signal.SIGKILL
    assert proc.exit_code() == -signal.SIGKILL


def test_log_tail(tmp_path: Path) -> None:
    proc = ManagedProcess(
        [sys.executable, "-c", "print('\\n'.join(str(i) for i in range(100)))"],
        env={},
        cwd=tmp_path,
        log_path=tmp_path / "out.log",
    )
    wait_until(lambda: proc.exit_code() is not None, timeout_s=30)
    assert proc.log_tail(3).splitlines() == ["97", "98", "99"]
    assert proc.stop() == 0


def test_wait_until_times_out_and_aborts() -> None:
    with pytest.raises(TimeoutError):
        wait_until(lambda: False, timeout_s=0.2)
    with pytest.raises(RuntimeError, match="gone"):
        wait_until(lambda: False, timeout_s=30, abort=lambda: "gone")
    assert wait_until(lambda: True, timeout_s=1) is True
    assert wait_until(lambda: 0, timeout_s=1) == 0  # e.g. an exit code: a value, not "not yet"


def test_pin_moves_every_thread(tmp_path: Path) -> None:
    threads = (
        "import threading, time\n"
        "for _ in range(3): threading.Thread(target=time.sleep, args=(600,), daemon=True).start()\n"
        "print('ready', flush=True)\n"
        "time.sleep(600)\n"
    )
    proc = ManagedProcess(
        [sys.executable, "-c", threads], env={}, cwd=tmp_path, log_path=tmp_path / "out.log"
    )
    try:
        wait_until(lambda: "ready" in proc.log_path.read_text(), timeout_s=30)
        proc.pin([0])
        tids = [t.id for t in proc.process.threads()]
        assert len(tids) == 4
        assert all(os.sched_getaffinity(tid) == {0} for tid in tids)
    finally:
        proc.stop()
