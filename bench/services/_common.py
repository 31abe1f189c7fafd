"""What the providers share: interrupt-safe teardown, health polling, logs and names.

Who owns what a provider starts is marked with bench.core.ownership; what a service kind is lives in
kinds.py.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import signal
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import ExitStack
from pathlib import Path
from types import FrameType, TracebackType
from typing import TypeVar

from bench.core.errors import ProvisionError
from bench.core.process import wait_until
from bench.results import ServiceInfo, redact

# Poll interval of every health wait: short next to any service's start time.
POLL_S = 0.05
LOG_TAIL_LINES = 30

T = TypeVar("T")

_DEFERRED = (signal.SIGINT, signal.SIGTERM)


@contextlib.contextmanager
def interrupts_deferred() -> Iterator[None]:
    """Hold Ctrl-C and SIGTERM while a resource is created and its cleanup registered, or while
    cleaning up; a signal that arrived meanwhile is delivered again afterwards.

    Only the main thread receives signals in Python; elsewhere this does nothing.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []

    def hold(signum: int, frame: FrameType | None) -> None:
        received.append(signum)

    previous = {sig: signal.signal(sig, hold) for sig in _DEFERRED}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        for signum in dict.fromkeys(received):
            signal.raise_signal(signum)


class Teardown(ExitStack):
    """An ExitStack whose unwinding (the teardown) cannot be cut short by Ctrl-C or SIGTERM."""

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool:
        with interrupts_deferred():
            return bool(super().__exit__(exc_type, exc, tb))

    def own(self, create: Callable[[], T], release: Callable[[T], object]) -> T:
        """create() and register release(result) with no interrupt in between."""
        with interrupts_deferred():
            resource = create()
            self.callback(release, resource)
        return resource


def wait_for(
    check: Callable[[], T | None],
    *,
    timeout_s: float,
    what: str,
    abort: Callable[[], str | None] | None = None,
) -> T:
    """bench.core.process.wait_until, failing with ProvisionError (abort's reason, or a timeout)."""
    try:
        return wait_until(check, timeout_s=timeout_s, interval_s=POLL_S, abort=abort)
    except RuntimeError as exc:
        raise ProvisionError(str(exc)) from None
    except TimeoutError:
        raise ProvisionError(f"{what} was not ready after {timeout_s:g} s") from None


def service_info(provider: str, started: float, **fields: object) -> ServiceInfo:
    """The result's record of a service: provider, version, image or binary, and extras such as
    ready_s (seconds from the start of provisioning until the service answered)."""
    fields["ready_s"] = round(time.monotonic() - started, 3)
    return ServiceInfo.model_validate({"provider": provider, **fields})


def new_password() -> str:
    """A password made of URL-safe characters only, so URLs need no quoting."""
    return secrets.token_hex(16)


def tail(text: str, lines: int = LOG_TAIL_LINES) -> str:
    """The last `lines` lines of a log, passwords in URLs redacted."""
    return redact("\n".join(text.rstrip().splitlines()[-lines:]))


def read_from(path: Path, offset: int) -> str:
    """A log file's text from byte `offset` (what one attempt wrote), '' if unreadable."""
    try:
        with path.open("rb") as f:
            f.seek(offset)
            return f.read().decode("utf-8", errors="replace")
    except OSError:
        return ""


def file_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def safe_name(text: str) -> str:
    """`text` reduced to characters valid in container and database names."""
    return re.sub(r"[^a-zA-Z0-9_.-]+", "-", text).strip("-.") or "x"


def env_or_os(env: Mapping[str, str] | None) -> Mapping[str, str]:
    return os.environ if env is None else env
