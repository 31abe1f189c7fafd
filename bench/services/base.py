"""What every service provider hands to the runner: a running PostgreSQL database or Redis db."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Literal

from bench.core.ownership import Labels
from bench.results import ServiceInfo

ServiceKind = Literal["postgres", "redis"]


@dataclass(frozen=True)
class PostgresService:
    """A fresh, empty database the cell owns until the provider's context ends."""

    host: str
    port: int
    user: str
    password: str
    database: str
    info: ServiceInfo

    @property
    def url(self) -> str:
        """libpq-style URL (postgresql://user:pw@host:port/db)."""
        return f"postgresql://{self.user}:{self.password}@{self.host}:{self.port}/{self.database}"


@dataclass(frozen=True)
class RedisService:
    """A Redis server and a logical db number the cell owns (flushed before use)."""

    host: str
    port: int
    db: int
    info: ServiceInfo
    password: str | None = None

    def url(self, db: int | None = None) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}{self.host}:{self.port}/{self.db if db is None else db}"


class ServiceProvider(ABC):
    """Provisions PostgreSQL and Redis for one cell; everything started is torn down on exit."""

    name: ClassVar[str]

    @classmethod
    @abstractmethod
    def unavailable_reason(cls, kind: ServiceKind) -> str | None:
        """None when this provider can provide `kind` here; else why not and what would fix it."""

    def prepare(self, kind: ServiceKind, report: Callable[[str], None]) -> None:  # noqa: B027
        """Fetch what `kind` needs before it starts (the docker provider: a missing image),
        `report`ing progress; nothing to fetch by default."""

    @abstractmethod
    def postgres(self, workdir: Path, labels: Labels) -> AbstractContextManager[PostgresService]:
        """A context that yields a fresh database and removes everything it started on exit."""

    @abstractmethod
    def redis(self, workdir: Path, labels: Labels) -> AbstractContextManager[RedisService]:
        """A context that yields a flushed Redis db and removes everything it started on exit."""
