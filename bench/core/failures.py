"""How a failure reads: one line that names its cause, and the long form behind it.

Every failure ends in one line (`prefect-bench: error: …`, a cell's `failed: …`, a check's
`FAIL …`); what explains it at length (a log's last lines, a traceback) goes to the cell's log
file and, with `-v`, to the terminal. An exception prefect-bench did not expect stays visibly a
bug: its line names its type. Standard library only.
"""

from __future__ import annotations

import datetime as dt
import re
import signal
import traceback
from pathlib import Path
from typing import TypeVar

from bench.core.errors import BenchError

E = TypeVar("E", bound=BenchError)

# The line a Python traceback ends in: a (dotted) exception name at the start of the line,
# then its message ("sqlalchemy.exc.OperationalError: (sqlite3.OperationalError) unable to
# open database file", "RuntimeError: Failed to reach API at …", "KeyboardInterrupt").
_EXCEPTION = re.compile(
    r"^(?:[A-Za-z_]\w*\.)*[A-Za-z_]\w*"
    r"(?:Error|Exception|Exit|Interrupt|Failure|Failed|Timeout|NotFound|Refused)(?::\s.*)?$"
)
_TRACEBACK = "Traceback (most recent call last):"
# Other programs say what went wrong as "error: …" (compilers), "panic: …" (Go, Zig),
# "FATAL:  …" (PostgreSQL), "ERROR:    …" (uvicorn).
_PROBLEM = re.compile(r"\b(?:error|fatal|panic)\s*:", re.IGNORECASE)


def one_line(text: str) -> str:
    """`text` with its line breaks and runs of blanks made single spaces."""
    return " ".join(text.split())


def cause_in(log: str) -> str:
    """The line of a log that says why its program failed: the exception its last Python
    traceback ends in, else the first line saying error, fatal or panic (a compiler's first
    error is the cause, its last the tally), else its last line; '' for an empty log."""
    lines = [line.rstrip() for line in log.splitlines() if line.strip()]
    for k in range(len(lines) - 1, -1, -1):
        if _EXCEPTION.match(lines[k]):
            return one_line(lines[k])
        if lines[k].endswith(_TRACEBACK):  # its frames are indented; the exception is not
            after = [line for line in lines[k + 1 :] if not line[:1].isspace()]
            if after:
                return one_line(after[0])
    problems = [line for line in lines if _PROBLEM.search(line)]
    return one_line(problems[0] if problems else lines[-1] if lines else "")


def exited(code: int) -> str:
    """How a process ended, from its exit code (negative: the signal that killed it)."""
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with code {code}"


def from_log(
    kind: type[E], message: str, log: str, path: Path | str, cause: str | None = None
) -> E:
    """A `kind` error that a program's log explains: its one line is `message`, the cause the
    text of `log` gives (cause_in, unless `cause` is known: a signal that killed it) and where
    the whole log is; that text is its details."""
    cause = cause_in(log) if cause is None else cause
    line = f"{message}: {cause} (log: {path})" if cause else f"{message} (log: {path})"
    details = f"the last lines of {path}:\n{log.rstrip()}" if log.strip() else ""
    return kind(one_line(line), details=details)


def bug(exc: BaseException) -> str:
    """The one line of an exception prefect-bench did not expect: visibly a bug."""
    message = str(exc)
    return one_line(
        f"internal error (a bug): {type(exc).__name__}" + (f": {message}" if message else "")
    )


def long_form(exc: BaseException) -> str:
    """What explains `exc` at length: the `details` of it and of the errors it was raised from
    (BenchError.details: a log's last lines), then its traceback."""
    details: list[str] = []
    seen: set[int] = set()
    cause: BaseException | None = exc
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        if isinstance(cause, BenchError) and cause.details and cause.details not in details:
            details.append(cause.details.rstrip())
        cause = cause.__cause__ or cause.__context__
    text = "".join(traceback.format_exception(exc)).rstrip()
    return "\n\n".join([*details, text])


def keep(log: Path, title: str, text: str) -> Path:
    """Append `text` under a dated `title` to the log file `log` (made with its folder);
    returns `log`. What a failure's one line refers to."""
    log.parent.mkdir(parents=True, exist_ok=True)
    stamp = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    with log.open("a", encoding="utf-8") as f:
        f.write(f"===== {stamp} {title}\n{text.rstrip()}\n\n")
    return log
