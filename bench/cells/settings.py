"""A run's settings from what was given: RunConfig's and those the workloads and server
adapters add (bench.compare.settings.MODELS), each checked by its own declaration, then the
workload's checks across settings. The command line and the tests build a cell's config here,
so a setting is declared once, beside what it is for.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError
from pydantic.fields import FieldInfo

from bench.cells.runner import parse_url
from bench.compare.settings import MODELS
from bench.config.run import DEFAULT_WORKLOAD, URL_WORKLOAD, RunConfig, declared
from bench.core.errors import ConfigError
from bench.cost import COSTED_WORKLOADS, SCENARIO_BLOCK
from bench.workloads import WORKLOADS, ScenarioWorkload, get_workload


@dataclass(frozen=True)
class Declared:
    """One setting as its model declares it: the field, its flag (None: not given on the
    command line), the metavar (None with a flag: a switch) and how its text reads."""

    name: str
    info: FieldInfo
    flag: str | None
    metavar: str | None
    text: str | None


def _gathered() -> dict[str, Declared]:
    found: dict[str, Declared] = {}
    for model in MODELS:
        for name, info, how in declared(model):
            known = found.get(name)
            if known is not None and known.flag != how.get("flag"):
                raise RuntimeError(f"setting {name} is declared twice, with different flags")
            found[name] = Declared(name, info, how.get("flag"), how.get("metavar"), how.get("text"))
    return found


SETTINGS: dict[str, Declared] = _gathered()
ENDPOINT_WORKLOADS = [n for n, w in WORKLOADS.items() if not isinstance(w, ScenarioWorkload)]


Model = TypeVar("Model", bound=BaseModel)


def _checked(model: type[Model], values: Mapping[str, Any]) -> Model:
    """`model` of `values`; ConfigError naming the option of the first problem."""
    try:
        return model.model_validate(values)
    except ValidationError as exc:
        error = exc.errors()[0]
        name = str(error["loc"][0]) if error["loc"] else ""
        flag = SETTINGS[name].flag if name in SETTINGS else None
        message = error["msg"].removeprefix("Value error, ")
        if not flag:  # a check across options names its option itself
            raise ConfigError(message) from None
        raise ConfigError(f"{flag}: {message[0].lower()}{message[1:]}") from None


def run_config(given: Mapping[str, Any]) -> RunConfig:
    """The config of the settings `given` (field name → value; the rest default): every
    setting of every workload and server adapter is stored, as results have always kept them.
    ConfigError, naming the option, for a bad value or a combination the workload refuses."""
    unknown = sorted(set(given) - set(SETTINGS))
    if unknown:
        raise ConfigError(f"unknown settings: {', '.join(unknown)}")
    values = {k: v for k, v in given.items() if v is not None or k in RunConfig.model_fields}
    name = values.get("workload") or (URL_WORKLOAD if values.get("url") else DEFAULT_WORKLOAD)
    workload = get_workload(name)
    scenario = isinstance(workload, ScenarioWorkload)
    if scenario and values.get("cost"):  # one user (or the scenario refused by name)
        if values.get("cost_block") is None:
            values["cost_block"] = SCENARIO_BLOCK  # runs per block: a flow run is 16 steps
    elif scenario and workload.default_concurrency and values.get("concurrency") is None:
        values["concurrency"] = list(workload.default_concurrency)
    added: dict[str, Any] = {}
    for model in MODELS:
        if model is not RunConfig:
            own = {k: v for k, v in values.items() if k in model.model_fields}
            added |= _checked(model, own).model_dump()
    core = {k: v for k, v in values.items() if k in RunConfig.model_fields}
    config = _checked(RunConfig, core | added)
    if scenario and (refusal := workload.refusal(config)) is not None:
        raise ConfigError(refusal)
    if config.url:
        parse_url(config.url, config.allow_remote)  # bad input: before anything is written
    if config.cost and scenario and config.workload not in COSTED_WORKLOADS:
        raise ConfigError(
            f"--cost counts what can be replayed one at a time by one user with the services "
            f"off (the {', '.join(ENDPOINT_WORKLOADS)} workloads, the "
            f"{', '.join(COSTED_WORKLOADS)} scenario), not the {config.workload} scenario"
        )
    if config.cost_services and not scenario:
        raise ConfigError(
            "--cost-services counts what the services do per flow run: give it with a "
            f"scenario of flow runs ({', '.join(COSTED_WORKLOADS)}), not {config.workload}"
        )
    if config.rate_sweep and scenario:
        raise ConfigError(
            f"--rate-sweep measures endpoints (the {', '.join(ENDPOINT_WORKLOADS)} workloads), "
            f"not the {config.workload} scenario"
        )
    return config


def pinned(config: RunConfig) -> RunConfig:
    """The server and the load generator each on cores of its own, where there are two or more:
    the last quarter of the usable cores (at least one) for the load generator, the rest for
    the server. Not with --no-pin, not when either is pinned by hand, not behind a --url (that
    server is not ours to pin), not in a duet (each server and its load on CPUs of their own:
    cells.together)."""
    if config.no_pin or config.url or config.server_cpus or config.client_cpus or config.duet:
        return config
    usable = sorted(os.sched_getaffinity(0))
    if len(usable) < 2:
        return config
    client = max(1, len(usable) // 4)
    return config.model_copy(
        update={"server_cpus": usable[:-client], "client_cpus": usable[-client:]}
    )
