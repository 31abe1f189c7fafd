"""Where a result was measured: the machine, the tool's version and commit, the packages."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import subprocess
from pathlib import Path

from bench import __version__
from bench.config.versions import read_resolution
from bench.results.schema import Environment, Resolution


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _git_sha() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            cwd=Path(__file__).resolve().parent,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def resolution(venv: Path | None = None) -> Resolution:
    """This environment's packages, and what its venv (or `venv`) was resolved with
    (bench.config.versions)."""
    packages = {
        dist.metadata["Name"].lower(): dist.version
        for dist in importlib.metadata.distributions()
        if dist.metadata["Name"]
    }
    made = read_resolution(venv) or {}
    return Resolution(
        prefect=packages.get("prefect"),
        exclude_newer=made.get("exclude_newer"),
        index=made.get("index"),
        packages=dict(sorted(packages.items())),
    )


def environment(**extra: str | None) -> Environment:
    """Describe this machine and this tool, so results can be compared later."""
    return Environment(
        cpu_model=_cpu_model(),
        cpu_count=os.cpu_count() or 1,
        kernel=platform.release(),
        python=platform.python_version(),
        bench_version=__version__,
        git_sha=_git_sha(),
        hostname=platform.node(),
        resolution=resolution(),
        **extra,
    )
