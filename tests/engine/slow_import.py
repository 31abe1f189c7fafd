"""A scenario whose module takes a second to import, as one that imports a large library
(Prefect takes ~1.2 s here, several on a busy machine): the engine's processes import it when
they unpickle the scenario."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from bench.engine import VirtualUser

time.sleep(1.0)  # the import's cost, not a wait for anything


async def ok(user: VirtualUser, params: Mapping[str, Any]) -> None:
    await user.http("ok", "GET", "/ok")
