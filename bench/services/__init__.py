"""Service providers: who provides PostgreSQL and Redis to a cell, chosen from a name table.

Automatic choice, per service: `external` (the user gave a URL) > `docker` (a daemon answers
and the image exists) > `local` (binaries on PATH). `--provider NAME` forces one; if it cannot
provide the service here, the cell is skipped saying why and how to fix it.

What PostgreSQL and Redis are (probes, binaries, URLs) lives once in kinds.py; a provider only
says where the service runs.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Protocol

from bench.core.errors import CellSkipped, ConfigError
from bench.services.base import PostgresService, RedisService, ServiceKind, ServiceProvider
from bench.services.docker import DockerProvider, remove_leftover_containers
from bench.services.external import ExternalProvider, remove_leftover_databases
from bench.services.local import LocalProvider


class ProviderFactory(Protocol):
    """A provider class: checks availability and builds a provider for an environment."""

    name: str

    def __call__(self, env: Mapping[str, str] | None = None) -> ServiceProvider: ...

    def unavailable_reason(
        self, kind: ServiceKind, env: Mapping[str, str] | None = None
    ) -> str | None: ...


PROVIDERS: dict[str, ProviderFactory] = {
    "external": ExternalProvider,
    "docker": DockerProvider,
    "local": LocalProvider,
}
# Automatic order: what the user pointed at first, then the isolated, then the bare machine.
AUTO_ORDER = ("external", "docker", "local")


def choose(
    kind: ServiceKind, forced: str | None = None, env: Mapping[str, str] | None = None
) -> ServiceProvider:
    """The provider that provides `kind` here: `forced`, or the first available in AUTO_ORDER.

    ConfigError for an unknown name; CellSkipped (with every reason) when none can.
    """
    env = os.environ if env is None else env
    if forced is not None:
        factory = PROVIDERS.get(forced)
        if factory is None:
            raise ConfigError(f"unknown provider {forced!r}; choose one of {', '.join(PROVIDERS)}")
        if reason := factory.unavailable_reason(kind, env):
            raise CellSkipped(f"provider {forced} cannot provide {kind} here: {reason}")
        return factory(env)
    reasons = []
    for name in AUTO_ORDER:
        factory = PROVIDERS[name]
        reason = factory.unavailable_reason(kind, env)
        if reason is None:
            return factory(env)
        reasons.append(f"{name}: {reason}")
    raise CellSkipped(f"no provider can provide {kind} here ({'; '.join(reasons)})")


def remove_leftovers(env: Mapping[str, str] | None = None) -> list[str]:
    """Remove what crashed runs left with the providers: containers, external databases.

    Only things marked as prefect-bench's whose owning process is gone; call once per run.
    (Temporary folders, the local services' among them: bench.core.ownership.remove_dead_folders.)
    Returns a description of each thing removed.
    """
    removed = [f"container {name}" for name in remove_leftover_containers(env)]
    removed += [f"database {name}" for name in remove_leftover_databases(env)]
    return removed


__all__ = [
    "AUTO_ORDER",
    "PROVIDERS",
    "DockerProvider",
    "ExternalProvider",
    "LocalProvider",
    "PostgresService",
    "ProviderFactory",
    "RedisService",
    "ServiceKind",
    "ServiceProvider",
    "choose",
    "remove_leftover_containers",
    "remove_leftover_databases",
    "remove_leftovers",
]
