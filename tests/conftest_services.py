"""Fixtures shared by the service provider tests (test_services_*.py), loaded through their
`pytest_plugins`. Only fixtures live here (importing this module from a test would defeat
pytest's assertion rewriting); test files import the `Children` type under TYPE_CHECKING only.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import psutil
import pytest

from bench.core.ownership import Labels
from bench.results import new_run_id

REPO = Path(__file__).resolve().parent.parent
T = TypeVar("T")


@pytest.fixture
def labels() -> Labels:
    return Labels(run_id=new_run_id(), cell="python-postgres-redis")


@pytest.fixture
def tmp_root() -> Iterator[Path]:
    """A temporary root for providers' temp folders that the services' user may enter.

    pytest's own tmp_path is private to root (0700), which the unprivileged user of the local
    provider cannot enter. Tests assert it is empty after a provider's context.
    """
    root = Path(tempfile.mkdtemp(prefix="pb-test-root-"))
    root.chmod(0o755)
    yield root
    shutil.rmtree(root, ignore_errors=True)


class Children:
    """Python child processes standing for a prefect-bench run in a terminal, and helpers to
    watch what they start."""

    def __init__(self) -> None:
        self.started: list[subprocess.Popen[str]] = []

    def start(self, body: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
        """A Python child running `body` (dedented) from the repository's root."""
        child = subprocess.Popen(
            [sys.executable, "-c", textwrap.dedent(body)],
            cwd=REPO,
            env={**os.environ, **(env or {})},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.started.append(child)
        return child

    @staticmethod
    def interrupt(child: subprocess.Popen[str], timeout_s: float = 60.0) -> str:
        """Ctrl-C: SIGINT to the child alone, as a terminal sends it to its foreground job
        (the services run in sessions of their own); the child's output once it exits."""
        child.send_signal(signal.SIGINT)
        out, _ = child.communicate(timeout=timeout_s)
        assert child.returncode != 0, out
        return out

    @staticmethod
    def read_line(child: subprocess.Popen[str], prefix: str) -> str:
        """The rest of the child's first output line that starts with `prefix`."""
        assert child.stdout is not None
        seen = []
        for line in child.stdout:
            seen.append(line)
            if line.startswith(prefix):
                return line[len(prefix) :].strip()
        pytest.fail(f"no {prefix!r} line from the child; its output:\n{''.join(seen)}")

    @staticmethod
    def poll(check: Callable[[], T], timeout_s: float = 60.0, what: str = "condition") -> T:
        """Poll check() until it returns something truthy; fail the test after timeout_s."""
        deadline = time.monotonic() + timeout_s
        while True:
            value = check()
            if value:
                return value
            if time.monotonic() > deadline:
                pytest.fail(f"{what} not reached within {timeout_s} s")
            time.sleep(0.02)

    @staticmethod
    def descendants(pid: int) -> list[psutil.Process]:
        try:
            return psutil.Process(pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return []

    @staticmethod
    def assert_gone(procs: list[psutil.Process], timeout_s: float = 15.0) -> None:
        _, alive = psutil.wait_procs(procs, timeout=timeout_s)
        assert not alive, f"still running: {[(p.pid, p.name()) for p in alive]}"


@pytest.fixture
def children() -> Iterator[Children]:
    """Start children with children.start(...); any still running at the end is interrupted
    (so that it cleans up), then killed if it does not exit."""
    kids = Children()
    yield kids
    for child in kids.started:
        if child.poll() is None:
            child.send_signal(signal.SIGINT)
        try:
            child.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            child.kill()
            child.communicate()
