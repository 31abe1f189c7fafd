"""The one list of what makes two results comparable: the settings declared as measurement
settings (bench.config.run.setting, on RunConfig and on the workloads' and adapters' Options),
read alike by `compare` (gate.settings_differences), the report's series
(aggregate.series_key) and its warnings (aggregate.comparability_warnings)."""

from __future__ import annotations

import pytest

from bench.cells.settings import SETTINGS
from bench.compare import gate
from bench.compare.settings import measurement_fields, measurement_settings
from bench.config.run import RunConfig
from bench.report.aggregate import comparability_warnings, series_key
from bench.results import Result, load_result
from tests.helpers import RESOURCES

RESOURCE = RESOURCES / "report/20261126T164000Z-3f2a/python-sqlite-memory.json"

# Every setting (RunConfig's, then the workloads' and the adapters'), a value other than the
# stored result's, and whether it is a measurement setting: a new one must be decided here.
CHANGED: dict[str, tuple[object, bool]] = {
    "workload": ("lifecycle", True),
    "mode": ("open", True),
    "duration_s": (2.0, True),
    "warmup_s": (0.5, True),
    "concurrency": ([1, 4, 16], True),
    "rate": (50.0, True),
    "engine_procs": (2, True),
    "server_cpus": ([0], True),
    "client_cpus": ([1], True),
    "rate_sweep": ("10:50:10", True),
    "slo": ("p99<20ms", True),
    "no_services": (True, True),
    "duet": (True, True),
    "preload": (1000, True),
    "preload_shape": ("task_runs=5", True),
    "soak_s": (1800.0, True),
    "cost": (True, True),
    "cost_block": (10, True),
    "cost_blocks": (5, True),
    "cost_services": (True, True),
    "profile": (True, True),
    "tasks": (20, True),
    "deployments": (5, True),
    "speedup": (2.0, True),
    "readers": (4, True),
    # what is compared (the server and its options), or how the tool runs, not what it measures
    "url": ("http://127.0.0.1:4200/api", False),
    "allow_remote": (True, False),
    "server_workers": (4, False),
    "provider": ("docker", False),
    "no_pin": (True, False),
    "repeat": (3, False),
    "keep_first": (True, False),
    "target_pct": (5.0, False),
    "budget_min": (10.0, False),
}


def stored() -> Result:
    return load_result(RESOURCE)


def with_setting(result: Result, name: str, value: object) -> Result:
    return result.model_copy(update={"config": result.config.model_copy(update={name: value})})


def test_every_field_is_decided_and_the_marked_ones_are_the_list() -> None:
    assert set(CHANGED) == set(SETTINGS)
    assert measurement_fields() == tuple(name for name, (_, marked) in CHANGED.items() if marked)


@pytest.mark.parametrize(("name", "value", "marked"), [(n, *vm) for n, vm in CHANGED.items()])
def test_compare_series_and_warnings_read_one_marking(
    name: str, value: object, marked: bool
) -> None:
    base = stored()
    other = with_setting(base, name, value)
    stored_value = base.config.model_dump().get(name, SETTINGS[name].info.default)
    assert other.config.model_dump()[name] != stored_value
    differences = gate.settings_differences([base], [other])
    warnings = comparability_warnings([base, other])
    if marked:
        assert differences == [
            f"measurement setting {name}: {measurement_settings(base.config)[name]} before, "
            f"{measurement_settings(other.config)[name]} after"
        ]
        assert series_key(base) != series_key(other)
        [warning] = warnings
        assert f"different settings: {name} " in warning
    else:
        assert differences == []
        assert series_key(base) == series_key(other)
        assert warnings == []


def test_a_workload_option_counts_whatever_the_workload() -> None:
    """`tasks` split flow-runs series only; workers and mixed use it too."""
    workers = with_setting(stored(), "workload", "workers")
    more_tasks = with_setting(workers, "tasks", 50)
    assert series_key(workers) != series_key(more_tasks)
    assert gate.settings_differences([workers], [more_tasks]) == [
        "measurement setting tasks: 10 before, 50 after"
    ]


def test_settings_read_as_text_that_is_equal_only_when_the_values_are() -> None:
    config = RunConfig(concurrency=[1, 4], duration_s=5, rate=0.1, server_cpus=[0, 1])
    settings = measurement_settings(config)
    assert settings["concurrency"] == "1,4" and settings["duration_s"] == "5"
    assert settings["rate"] == "0.1" and settings["server_cpus"] == "0,1"
    assert settings["preload"] == "none" and settings["no_services"] == "no"
    close = measurement_settings(config.model_copy(update={"rate": 0.1000001}))
    assert close["rate"] != settings["rate"]
