"""Typed errors raised by the library; only `bench.cli` turns them into messages and exit codes."""


class BenchError(Exception):
    """Base class of every error prefect-bench reports to its user."""


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
