"""The Zig prefect-server: a binary the user points to, or a checkout built here.

What it runs and how each db/broker maps to its settings is data: `[servers.zig]` in
bench/servers/builtin.toml (overridable from servers.toml). This adds where the binary comes
from: `--zig-binary` / BENCH_ZIG_BINARY, or `--zig-src` / BENCH_ZIG_SRC, a git checkout built
with `zig build -Doptimize=ReleaseFast` (zig from the `ziglang` PyPI package) into a cache keyed
by the checkout's commit (and, for a checkout with changes, a digest of them).

A checkout that does not build is a failed cell (ServerError, with the build log's tail): the
user asked for that code to be measured, and it is broken. A machine without the ziglang package
skips the cell, saying how to install it.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import psutil

from bench.core.cache_folder import default_cache_dir
from bench.core.errors import ConfigError, ServerError
from bench.servers.adapter import ServerAdapter, ServerOption, executable_problem, run_logged
from bench.servers.specs import ServerSpec, load_builtin

BINARY_ENV = "BENCH_ZIG_BINARY"
SRC_ENV = "BENCH_ZIG_SRC"
BINARY_NAME = "prefect-server"
OPTIMIZE = "ReleaseFast"
BUILD_TIMEOUT_S = 1800.0
GIT_TIMEOUT_S = 60.0
# zig's own caches inside a checkout: never part of its state
_ZIG_OUTPUTS = (".zig-cache", "zig-cache", "zig-out")


def zig_command() -> list[str] | None:
    """How to run zig: the ziglang package's, from this interpreter; None if not installed."""
    if importlib.util.find_spec("ziglang") is None:
        return None
    return [sys.executable, "-m", "ziglang"]


@dataclass(frozen=True)
class CheckoutState:
    """Which code a checkout holds: its commit, and a digest of its changes if it has any."""

    commit: str
    changes: str | None  # None: clean

    @property
    def dirty(self) -> bool:
        return self.changes is not None

    @property
    def key(self) -> str:
        return self.commit if self.changes is None else f"{self.commit}-dirty-{self.changes}"


def _git(src: Path, *args: str) -> bytes:
    try:
        out = subprocess.run(
            ["git", "-C", str(src), *args],
            capture_output=True,
            timeout=GIT_TIMEOUT_S,
            stdin=subprocess.DEVNULL,
        )
    except FileNotFoundError:
        raise ConfigError("building a zig checkout needs git on PATH") from None
    except subprocess.TimeoutExpired:
        raise ConfigError(f"git {args[0]} in {src} took over {GIT_TIMEOUT_S:g} s") from None
    if out.returncode != 0:
        message = out.stderr.decode(errors="replace").strip()
        raise ConfigError(f"{src} is not a usable git checkout (git {args[0]}: {message})")
    return out.stdout


def checkout_state(src: Path) -> CheckoutState:
    """The commit of `src` and, if it has uncommitted or untracked files, their digest."""
    commit = _git(src, "rev-parse", "HEAD").decode().strip()
    pathspec = ["--", ".", *(f":(exclude){p}" for p in _ZIG_OUTPUTS)]
    status = _git(src, "status", "--porcelain", "--untracked-files=all", *pathspec)
    if not status.strip():
        return CheckoutState(commit, None)
    digest = hashlib.sha256(_git(src, "diff", "HEAD", "--binary", *pathspec))
    untracked = _git(src, "ls-files", "-z", "--others", "--exclude-standard", *pathspec)
    for name in sorted(filter(None, untracked.split(b"\0"))):
        digest.update(b"\0" + name + b"\0")
        with contextlib.suppress(OSError):  # removed since: the listing still counts
            digest.update((src / os.fsdecode(name)).read_bytes())
    return CheckoutState(commit, digest.hexdigest()[:16])


@dataclass(frozen=True)
class ZigBuild:
    """A built binary and what it was built from."""

    binary: Path
    src: Path
    state: CheckoutState
    zig_version: str
    cached: bool  # True: an earlier build of the same code was reused


def _zig_version(zig: list[str]) -> str:
    try:
        out = subprocess.run(
            [*zig, "version"], capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.stdout.strip() or "unknown"


def _version_hint(src: Path, zig_version: str) -> str:
    try:
        zon = (src / "build.zig.zon").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return f" (built with zig {zig_version})"
    wanted = re.search(r'\.minimum_zig_version\s*=\s*"([^"]+)"', zon)
    if wanted and wanted.group(1) != zig_version:
        return (
            f" (built with zig {zig_version}; the checkout asks for zig {wanted.group(1)}: "
            f"pip install ziglang=={wanted.group(1)})"
        )
    return f" (built with zig {zig_version})"


def _remove_abandoned(builds: Path) -> None:
    """Half-finished builds of processes that died (named .<key>.<pid>.tmp)."""
    for tmp in builds.glob(".*.tmp"):
        pid = tmp.name.rsplit(".", 2)[-2]
        if not pid.isdigit() or not psutil.pid_exists(int(pid)):
            shutil.rmtree(tmp, ignore_errors=True)


def build_checkout(
    src: Path, *, cache_dir: Path, logdir: Path, zig: list[str], timeout_s: float = BUILD_TIMEOUT_S
) -> ZigBuild:
    """`zig build -Doptimize=ReleaseFast` of `src`, or the cached build of the same code.

    The build goes to <cache_dir>/zig/builds/<commit>[-dirty-<digest>]/bin/prefect-server; zig's
    local cache to <cache_dir>/zig/cache/ (the checkout is not written to). The log goes to
    <logdir>/build.log and, kept with the build, to <build>/build.log.
    """
    state = checkout_state(src)
    zig_version = _zig_version(zig)
    builds = cache_dir / "zig" / "builds"
    final = builds / state.key
    log_path = logdir / "build.log"
    if (final / "bin" / BINARY_NAME).is_file():
        logdir.mkdir(parents=True, exist_ok=True)
        with open(log_path, "a", encoding="utf-8") as log:
            log.write(f"reused the build of {src} at {state.key}: {final}\n")
        return ZigBuild(final / "bin" / BINARY_NAME, src, state, zig_version, cached=True)

    builds.mkdir(parents=True, exist_ok=True)
    _remove_abandoned(builds)
    tmp = builds / f".{state.key}.{os.getpid()}.tmp"
    local_cache = cache_dir / "zig" / "cache" / hashlib.sha256(os.fsencode(src)).hexdigest()[:16]
    argv = [*zig, "build", f"-Doptimize={OPTIMIZE}", "--prefix", str(tmp)]
    argv += ["--cache-dir", str(local_cache)]
    try:
        run_logged(
            argv,
            cwd=src,
            log_path=log_path,
            timeout_s=timeout_s,
            what=f"zig build of {src} at {state.key}{_version_hint(src, zig_version)}",
        )
        built = tmp / "bin" / BINARY_NAME
        if problem := executable_problem(built, "the build's"):
            installed = sorted(p.name for p in (tmp / "bin").glob("*")) if tmp.exists() else []
            raise ServerError(
                f"zig build of {src} succeeded but {problem}: the checkout must install an "
                f"executable named {BINARY_NAME} (it installed: {', '.join(installed) or 'none'})"
            )
        shutil.copyfile(log_path, tmp / "build.log")
        try:
            tmp.rename(final)
        except OSError:
            if not final.is_dir():  # not another process's identical build: a real problem
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return ZigBuild(final / "bin" / BINARY_NAME, src, state, zig_version, cached=False)


class ZigServer(ServerAdapter):
    """The zig prefect-server, from a binary or a checkout (see the module's docstring)."""

    options = (
        ServerOption("--zig-binary", "binary", "the zig prefect-server executable", env=BINARY_ENV),
        ServerOption(
            "--zig-src",
            "src",
            "a zig prefect-server checkout, built with `zig build -Doptimize=ReleaseFast` into "
            "a cache keyed by its commit",
            metavar="DIR",
            env=SRC_ENV,
        ),
    )

    def __init__(
        self,
        spec: ServerSpec | None = None,
        *,
        binary: Path | None = None,
        src: Path | None = None,
        cache_dir: Path | None = None,
    ) -> None:
        super().__init__(spec or load_builtin("zig"))
        if binary is not None and src is not None:
            raise ConfigError("give the zig server a binary or a source checkout, not both")
        if binary is None and src is None:
            env_binary, env_src = os.environ.get(BINARY_ENV), os.environ.get(SRC_ENV)
            if env_binary and env_src:
                raise ConfigError(f"{BINARY_ENV} and {SRC_ENV} are both set: unset one")
            binary = Path(env_binary) if env_binary else None
            src = Path(env_src) if env_src else None
        self.src = src.expanduser().resolve() if src is not None else None
        self._given = binary.expanduser().resolve() if binary is not None else None
        if self._given is None and self.src is None:
            self._given = self.spec.binary  # [servers.zig] binary = "..." in servers.toml
        self.cache_dir = cache_dir or default_cache_dir()
        self.build: ZigBuild | None = None

    @property
    def binary(self) -> Path | None:
        if self.build is not None:
            return self.build.binary
        return self._given

    def unavailable_reason(self, no_services: bool = False) -> str | None:
        if no_services and (reason := self._no_services_problem()):
            return reason
        if self.src is not None:
            return self._src_problem()
        if self._given is None:
            return (
                f"no zig prefect-server given: pass --zig-binary PATH (or set {BINARY_ENV}), "
                f"or --zig-src DIR to build a checkout (or set {SRC_ENV})"
            )
        return executable_problem(self._given, "the zig binary")

    def _src_problem(self) -> str | None:
        assert self.src is not None
        if not self.src.is_dir():
            return f"the zig checkout {self.src} is not a folder"
        if not (self.src / "build.zig").is_file():
            return f"{self.src} has no build.zig: not a zig project"
        if zig_command() is None:
            return (
                f"building {self.src} needs zig from the ziglang package, not installed in "
                f"{sys.prefix}: pip install ziglang (or give a built --zig-binary)"
            )
        try:
            checkout_state(self.src)
        except ConfigError as exc:
            return str(exc)
        return None

    def prepare(self, logdir: Path) -> None:
        if self.src is not None and self.build is None:
            zig = zig_command()
            if zig is None:
                raise ServerError(self._src_problem() or "zig is not installed")
            self.build = build_checkout(self.src, cache_dir=self.cache_dir, logdir=logdir, zig=zig)
        super().prepare(logdir)

    def version(self) -> str | None:
        return None if self.binary is None else super().version()

    def info(self) -> dict[str, str | bool]:
        info = super().info()
        if self.build is not None:
            info |= {
                "src": str(self.build.src),
                "commit": self.build.state.commit,
                "dirty": self.build.state.dirty,
                "build_key": self.build.state.key,
                "zig_version": self.build.zig_version,
                "build_cached": self.build.cached,
            }
        return info
