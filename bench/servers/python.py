"""The Python Prefect server from PyPI, run from the same environment as prefect-bench.

What it runs and how each db/broker maps to its settings is data: `[servers.python]` in
bench/servers/builtin.toml (overridable from servers.toml). This adds what data cannot say.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import importlib.util
import os
from pathlib import Path

from bench.servers.adapter import ServerAdapter, ServerSetup
from bench.servers.specs import ServerSpec, load_builtin

# The sitecustomize a --cost cell's Python server loads (bench.cost's notes say why).
HOLD_STILL = Path(__file__).parent / "python_cost"


class PythonServer(ServerAdapter):
    """`prefect server start` with the UI, analytics and access log off, for a fair measure."""

    def __init__(self, spec: ServerSpec | None = None) -> None:
        super().__init__(spec or load_builtin("python"))

    def _runs_our_prefect(self) -> bool:
        return self.spec.command[0] == "{python}"

    def unavailable_reason(self, no_services: bool = False) -> str | None:
        if self._runs_our_prefect() and importlib.util.find_spec("prefect") is None:
            return (
                "prefect is not installed in this environment: "
                "pip install prefect prefect-redis (nox sessions do this)"
            )
        return super().unavailable_reason(no_services)

    def version(self) -> str | None:
        if self.spec.version_command is not None or not self._runs_our_prefect():
            return super().version()
        try:
            return importlib.metadata.version("prefect")
        except importlib.metadata.PackageNotFoundError:
            return None

    def environment(self, port: int, setup: ServerSetup) -> dict[str, str]:
        """The spec's variables; under --cost, also a PYTHONPATH whose sitecustomize holds
        still the timer-driven work of the API process (python_cost/sitecustomize.py)."""
        env = super().environment(port, setup)
        if setup.cost and self._runs_our_prefect():
            paths = [str(HOLD_STILL), env.get("PYTHONPATH", "")]
            env["PYTHONPATH"] = os.pathsep.join(p for p in paths if p)
        return env

    def info(self) -> dict[str, str | bool]:
        info = super().info()
        if self._runs_our_prefect():
            with contextlib.suppress(importlib.metadata.PackageNotFoundError):
                info["prefect_redis_version"] = importlib.metadata.version("prefect-redis")
        return info
