"""The report's tests' fixtures: the results of the runs kept in tests/resources."""

from __future__ import annotations

import pytest

from bench.report import collect
from bench.results import Result
from tests.report.helpers import EVENTS_RESULTS, OPEN_DIR, REPEAT_RESULTS, RUN_DIR


@pytest.fixture
def results() -> list[Result]:
    found, warnings = collect([RUN_DIR])
    assert warnings == []
    return found


@pytest.fixture
def open_results() -> list[Result]:
    found, warnings = collect([OPEN_DIR])
    assert warnings == [] and len(found) == 2
    return found


@pytest.fixture
def events_results() -> list[Result]:
    found, warnings = collect([EVENTS_RESULTS])
    assert warnings == [] and {r.schema_version for r in found} == {2}
    assert {r.config.workload for r in found} == {"events"}
    assert [r.cell.name for r in found] == ["python-sqlite-memory", "python-sqlite-redis"]
    return found


@pytest.fixture
def repeated() -> list[Result]:
    found, warnings = collect([REPEAT_RESULTS])
    assert warnings == []
    return found
