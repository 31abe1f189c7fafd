"""Shared by the tests of every package: where the repository and its test resources are,
`bench()`, prefect-bench's command line in a child process, and `stand_in`, a fake HTTP server
(a named fake: it stands for servers that are not Prefect)."""

from __future__ import annotations

import contextlib
import http.server
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

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


class StandIn(http.server.BaseHTTPRequestHandler):
    """A fake server's answers by path (`answers`: status and body), 404 to any other path."""

    protocol_version = "HTTP/1.1"
    answers: ClassVar[dict[str, tuple[int, bytes]]] = {}

    def _answer(self) -> None:
        self.rfile.read(int(self.headers.get("content-length", 0)))
        status, body = self.answers.get(self.path, (404, b'{"detail":"Not Found"}'))
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = _answer

    def log_message(self, *args: Any) -> None:
        return None


class HealthOnly(StandIn):
    """A stand-in for a server that answers GET /api/health and 404 to everything else (no
    /api/events/in, no API to seed)."""

    answers: ClassVar[dict[str, tuple[int, bytes]]] = {"/api/health": (200, b"true")}


@contextlib.contextmanager
def stand_in(handler: type[StandIn]) -> Iterator[str]:
    """The API URL (`…/api`) of a `handler` server on a free port of 127.0.0.1, for the block."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/api"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def extra_work_server(name: str, nbytes: int) -> str:
    """A servers.toml entry `name`: the python server hashing `nbytes` zero bytes per request
    (tests/fixtures/extra_work), a known slowdown."""
    return f"""
[servers.{name}]
extends = "python"
description = "a test fixture: the python server and a sha256 of {nbytes} bytes per request"
[servers.{name}.env]
PYTHONPATH = "{ROOT / "tests" / "fixtures" / "extra_work"}"
BENCH_EXTRA_WORK_BYTES = "{nbytes}"
"""


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
