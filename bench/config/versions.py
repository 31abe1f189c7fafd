"""Prefect versions as a dimension of the matrix: which versions a run compares, and each one's
environment resolved as it stood when that version was released.

`PREFECT_VERSION=3.8.0,3.9.1` runs every cell of a server that runs the environment's Prefect
once per version, each in its own venv. A version's dependencies are resolved with uv's
`--exclude-newer` at the minute after the version's last file reached the package index: today's
FastAPI under a Prefect of a year ago does not start, the FastAPI of its day does. The venv keeps
what it was resolved with (RESOLUTION_FILE), and the result records it with every package.

Standard library only: noxfile.py imports it.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from bench.core.errors import ConfigError

VERSION_ENV = "PREFECT_VERSION"
DEFAULT_VERSION = "3.9.1"
PYPI_SIMPLE = "https://pypi.org/simple"
# written into a venv's root by noxfile.py, read back by the run (bench.results.environment)
RESOLUTION_FILE = "prefect-bench-resolution.json"
_VERSION = re.compile(r"^\d+(\.\d+)*([._-]?(a|b|rc|dev|post)\d*)*$")
_FILE_VERSION = re.compile(r"^prefect-(?P<version>[^-]+?)(-py\d|-cp\d|\.tar\.gz$|\.zip$)")
_INDEX_TIMEOUT_S = 60


def parse_versions(text: str | None) -> list[str]:
    """The versions `PREFECT_VERSION` names ('3.8.0,3.9.1'), in its order; the default one
    when unset or blank. ConfigError for an empty item, a duplicate or not a version."""
    if text is None or not text.strip():
        return [DEFAULT_VERSION]
    versions = [item.strip() for item in text.split(",")]
    for version in versions:
        if not _VERSION.match(version):
            raise ConfigError(
                f"{VERSION_ENV}={text!r}: {version!r} is not a version (e.g. 3.9.1; "
                "several are separated by commas)"
            )
    if len(set(versions)) < len(versions):
        raise ConfigError(f"{VERSION_ENV}={text!r} names a version twice")
    return versions


def version_key(version: str) -> tuple[int, ...]:
    """A version's release numbers, for ordering: '3.10.0' after '3.9.1' (a pre-release
    orders as its release)."""
    release = re.match(r"\d+(\.\d+)*", version)
    return tuple(int(n) for n in release[0].split(".")) if release else ()


def index_url() -> str:
    """The package index uv installs from (UV_DEFAULT_INDEX or UV_INDEX_URL), else PyPI."""
    for name in ("UV_DEFAULT_INDEX", "UV_INDEX_URL"):
        if os.environ.get(name):
            return os.environ[name].rstrip("/")
    return PYPI_SIMPLE


def release_files(index: str, package: str = "prefect") -> list[dict[str, Any]]:
    """Every file of `package` on `index`, from its simple API in JSON (PEP 691), each with
    its upload time (PEP 700). ConfigError when the index cannot be read."""
    page_url = f"{index}/{package}/"
    request = urllib.request.Request(
        page_url, headers={"Accept": "application/vnd.pypi.simple.v1+json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=_INDEX_TIMEOUT_S) as answer:
            body = answer.read()
    except OSError as exc:
        reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
        raise ConfigError(f"cannot read {package}'s files on {index}: {reason}") from exc
    try:
        page = json.loads(body)
    except ValueError:
        page = None
    files = page.get("files") if isinstance(page, dict) else None
    if not isinstance(files, list):
        raise ConfigError(f"{page_url} is not a package's page in JSON (PEP 691)")
    return files


def released_at(files: list[dict[str, Any]], version: str) -> dt.datetime | None:
    """When `version` was released: its last file's upload time; None when no file of it is
    listed (the install then says so in the installer's own words)."""
    times = []
    for file in files:
        match = _FILE_VERSION.match(str(file.get("filename", "")))
        if match and match["version"] == version and file.get("upload-time"):
            times.append(dt.datetime.fromisoformat(str(file["upload-time"]).replace("Z", "+00:00")))
    return max(times) if times else None


def exclude_newer(released: dt.datetime) -> str:
    """uv's --exclude-newer for a release: the minute after its last file, in UTC."""
    after = released.astimezone(dt.UTC).replace(second=0, microsecond=0) + dt.timedelta(minutes=1)
    return after.strftime("%Y-%m-%dT%H:%M:%SZ")


def installer_error_line(output: str) -> str:
    """The line of an installer's output that says why it failed ("Because there is no version
    of prefect==3.99.0 ..."), without uv's decoration; else its first error, else its last line."""
    lines = [line.strip(" ×╰─▶│") for line in output.splitlines()]
    lines = [line for line in lines if line]
    for line in lines:
        if "Because " in line:
            return line[line.index("Because ") :]
    errors = [line for line in lines if line.lower().startswith("error:")]
    return (errors or lines or ["the install failed and printed nothing"])[0 if errors else -1]


def write_resolution(venv: Path, resolution: dict[str, Any]) -> None:
    """Keep in `venv` what it was resolved with (the version asked for, the index, the date)."""
    path = venv / RESOLUTION_FILE
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(resolution, indent=2) + "\n", encoding="utf-8")
    tmp.replace(path)


def read_resolution(venv: Path | None = None) -> dict[str, Any] | None:
    """What this interpreter's venv (or `venv`) was resolved with; None when nothing says."""
    path = (venv or Path(sys.prefix)) / RESOLUTION_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None
