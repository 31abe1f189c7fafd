"""Shared by the tests of every package: where the repository and its test resources are, and
`bench()`, prefect-bench's command line in a child process."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESOURCES = ROOT / "tests" / "resources"
# A closed-model run of four cells (python and zig on sqlite × memory and × redis), schema 1.
REPORT_RUN = RESOURCES / "report" / "20261126T164000Z-3f2a"


def bench(*args: str, cwd: Path, timeout_s: float = 300) -> subprocess.CompletedProcess[str]:
    """`python -m bench ARGS` run in `cwd`, its output captured as text."""
    return subprocess.run(
        [sys.executable, "-m", "bench", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=timeout_s,
        # os.environ: under pytest the C-level environment also holds COLUMNS=80 and LINES=24,
        # which os.environ does not show and children would inherit
        env=dict(os.environ),
    )


NATIVE_SERVER = """
[servers.{name}]
command = ["{{binary}}", "{{port}}"]
binary = "{binary}"
no_services_args = []
dbs = ["sqlite"]
brokers = ["memory"]
description = "a test fixture: a native HTTP server answering true"
"""


def native_server(folder: Path, name: str, extra_work: int) -> str:
    """A servers.toml entry `name` for tests/fixtures/native_health compiled into `folder`
    (`folder/name/health_server`: one binary name, so two builds' functions pair up) with
    `extra_work` loop turns per request, frame pointers kept (perf walks them)."""
    source = ROOT / "tests" / "fixtures" / "native_health" / "health_server.c"
    binary = folder / name / "health_server"
    binary.parent.mkdir(parents=True)
    flags = ["-O1", "-g", "-fno-omit-frame-pointer", f"-DEXTRA_WORK={extra_work}"]
    subprocess.run(["cc", *flags, "-o", str(binary), str(source)], check=True, capture_output=True)
    return NATIVE_SERVER.format(name=name, binary=binary)
