"""prefect-bench: a benchmark matrix orchestrator for Prefect API servers."""

__version__ = "0.1.0"
