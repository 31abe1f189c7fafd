"""Typed errors raised by the library; only `bench.cli` turns them into messages and exit codes."""


class BenchError(Exception):
    """Base class of every error prefect-bench reports to its user.

    Its message is one line that names the cause; `details` is what explains it at length (the
    last lines of a log, a client's traceback): written to the cell's log, and shown with `-v`
    (bench.core.failures)."""

    def __init__(self, message: str, details: str = "") -> None:
        super().__init__(message)
        self.details = details


class ConfigError(BenchError):
    """Bad input: an unknown name, a bad number, an unreadable file."""


class CellSkipped(BenchError):
    """The cell cannot run on this machine; the message says why and what would fix it."""


class ProvisionError(BenchError):
    """A backing service (PostgreSQL, Redis) could not be provided."""


class ServerError(BenchError):
    """The server under test failed to start, or died."""


class VerificationError(BenchError):
    """A workload request did not answer as the API promises."""


class ResultsError(BenchError):
    """A result could not be written or read."""
