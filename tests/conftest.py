"""Shared fixtures: a real Prefect server, and a check that tests leave no process behind."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from bench import engine
from bench.servers import RunningServer, ServerSetup, make_server, start_server


@pytest.fixture(autouse=True)
def no_leftover_processes() -> Iterator[None]:
    """Every test must stop what it started: no child process may outlive it.

    The engine keeps its worker processes between measurements; they are stopped here too.
    """
    me = psutil.Process()
    before = {p.pid for p in me.children(recursive=True)}
    yield
    engine.shutdown()
    left = [p for p in me.children(recursive=True) if p.pid not in before]
    _, alive = psutil.wait_procs(left, timeout=10)
    assert not alive, f"processes left running: {[(p.pid, p.name()) for p in alive]}"


@pytest.fixture(scope="session")
def prefect_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    """One real Python Prefect server (sqlite, memory broker) shared by the tests that read."""
    tmp = tmp_path_factory.mktemp("prefect-server")
    setup = ServerSetup(db="sqlite", broker="memory", logdir=tmp, datadir=tmp / "data")
    with start_server(make_server("python"), setup) as server:
        yield server


@pytest.fixture
def repo_root() -> Path:
    return Path(__file__).resolve().parent.parent
