"""How a failure reads: the cause a log gives, one line, the long form behind it."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.core.errors import ServerError
from bench.core.failures import bug, cause_in, exited, from_log, keep, long_form, one_line

# The end of the Python server's log when it cannot open its database: uvicorn's own lines
# follow the exception.
PREFECT_SERVER_LOG = """\
  File "/venv/lib/python3.11/site-packages/aiosqlite/core.py", line 466, in connector
    return sqlite3.connect(loc, **kwargs)
           ^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^
sqlalchemy.exc.OperationalError: (sqlite3.OperationalError) unable to open database file
(Background on this error at: https://sqlalche.me/e/21/e3q8)

ERROR:    Application startup failed. Exiting.
Server stopped!
"""


@pytest.mark.parametrize(
    ("log", "cause"),
    [
        (
            PREFECT_SERVER_LOG,
            "sqlalchemy.exc.OperationalError: (sqlite3.OperationalError) unable to open "
            "database file",
        ),
        (
            "Traceback (most recent call last):\n  File \"x\", line 1\n    raise Boom\n"
            "mypkg.Boom: it went wrong\n",
            "mypkg.Boom: it went wrong",  # not a known suffix: the line after the frames
        ),
        ("14:02:11 INFO started\nKeyboardInterrupt\n", "KeyboardInterrupt"),
        ("cc main.c\nmain.c:3: error: cannot compile main.c\nmake: *** [all] 3\n",
         "main.c:3: error: cannot compile main.c"),
        ("panic: reached unreachable code\n", "panic: reached unreachable code"),
        (
            "src/main.zig:2:5: error: use of undeclared identifier 'x'\n    x();\n"
            "error: 1 compilation errors\nBuild Summary: 0/3 steps succeeded (1 failed)\n",
            "src/main.zig:2:5: error: use of undeclared identifier 'x'",
        ),
        ('FATAL:  role "bench" does not exist\nLOG:  shutting down\n',
         'FATAL: role "bench" does not exist'),
        ("Ready to accept connections tcp\n\n", "Ready to accept connections tcp"),
        ("", ""),
        ("\n  \n", ""),
    ],
)  # fmt: skip
def test_the_cause_a_log_gives(log: str, cause: str) -> None:
    assert cause_in(log) == cause


def test_an_error_a_log_explains_is_one_line_with_the_log_in_its_details() -> None:
    error = from_log(
        ServerError, "the python server exited with code 3", PREFECT_SERVER_LOG, "s.log"
    )
    assert str(error) == (
        "the python server exited with code 3: sqlalchemy.exc.OperationalError: "
        "(sqlite3.OperationalError) unable to open database file (log: s.log)"
    )
    assert error.details.startswith("the last lines of s.log:\n  File")
    assert "Server stopped!" in error.details
    empty = from_log(ServerError, "it exited", "", "s.log")
    assert str(empty) == "it exited (log: s.log)" and empty.details == ""


def test_a_bug_says_so_with_its_type() -> None:
    try:
        [][1]
    except IndexError as exc:
        assert bug(exc) == "internal error (a bug): IndexError: list index out of range"
    assert bug(KeyError()) == "internal error (a bug): KeyError"
    assert bug(ValueError("two\nlines")) == "internal error (a bug): ValueError: two lines"


def test_the_long_form_holds_the_details_of_every_error_in_the_chain() -> None:
    log = "Traceback (most recent call last):\nRuntimeError: boom\n"
    try:
        try:
            raise from_log(ServerError, "the server exited", log, "server.log")
        except ServerError as exc:
            raise ServerError(f"during seed: {exc}", details=exc.details) from exc
    except ServerError as exc:
        text = long_form(exc)
    assert text.count("the last lines of server.log") == 1  # the same details once
    assert text.startswith("the last lines of server.log:")
    assert "The above exception was the direct cause" in text
    assert text.rstrip().endswith(
        "during seed: the server exited: RuntimeError: boom (log: server.log)"
    )


def test_kept_failures_are_appended_under_a_dated_title(tmp_path: Path) -> None:
    log = tmp_path / "cell" / "cell.log"
    assert keep(log, "first failed: a", "one\ntwo") == log
    keep(log, "second failed: b", "three")
    text = log.read_text()
    assert text.index("first failed: a\none\ntwo\n") < text.index("second failed: b\nthree\n")
    assert text.startswith("===== 20")


def test_one_line() -> None:
    assert one_line("a\n  b\t c\n") == "a b c"


def test_a_process_killed_by_a_signal_names_the_signal_not_its_logs_last_line() -> None:
    assert exited(1) == "exited with code 1" and exited(-9) == "was killed by SIGKILL"
    assert exited(-15) == "was killed by SIGTERM" and exited(-200) == "was killed by signal 200"
    error = from_log(
        ServerError, "the server was killed by SIGKILL", "The dashboard is off.", "s.log", ""
    )
    assert str(error) == "the server was killed by SIGKILL (log: s.log)"
    assert "The dashboard is off." in error.details
