import subprocess
import sys

import psutil

from bench.observe.sampling import ResourceSampler

BUSY = (
    "import time\nx = bytearray(64 << 20)\nend = time.time() + 600\nwhile time.time() < end: pass"
)


def test_window_sees_cpu_and_memory_of_a_busy_process() -> None:
    proc = subprocess.Popen([sys.executable, "-c", BUSY])
    try:
        p = psutil.Process(proc.pid)
        sampler = ResourceSampler(lambda: [p], interval_s=0.05)
        with sampler.window() as usage:
            start = p.cpu_times().user
            while p.cpu_times().user - start < 0.5:  # poll until it burned 0.5 s of CPU
                pass
        assert usage.cpu_s >= 0.4
        assert 0.2 < usage.cores <= 1.2
        assert usage.rss_peak_mb >= 64
    finally:
        proc.kill()
        proc.wait()


def test_processes_that_exited_count_as_nothing() -> None:
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    p = psutil.Process(proc.pid)
    proc.kill()
    proc.wait()
    sampler = ResourceSampler(lambda: [p], interval_s=0.05)
    assert sampler.cpu_s() == 0 and sampler.rss_mb() == 0
