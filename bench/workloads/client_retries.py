"""The retries of the Prefect client installed beside prefect-bench (bench.engine.retry), for the
scenarios that emulate it: flow runs (flow-runs, mixed's writers) and workers.

What the client retries is in its code (`prefect.client.base`): the statuses and, since
CONNECT_RETRIED_SINCE, a refused connection once it has had an answer. How often is in its
settings, read by the installed Prefect itself in a subprocess (importing Prefect here would
cost a second and create ~/.prefect): its defaults, as a fresh profile has them, with the
PREFECT_CLIENT_* variables of this environment applied, so that a user can emulate clients
configured otherwise (PREFECT_CLIENT_MAX_RETRIES=0: clients that never retry).
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
import tempfile

from bench.config.versions import version_key
from bench.core.errors import ConfigError
from bench.engine.retry import RetryPolicy

# `send()`'s retry_codes (408, 429, 502, 503 since 3.0), before PREFECT_CLIENT_RETRY_EXTRA_CODES
RETRIED_STATUSES = frozenset({408, 429, 502, 503})
# httpx.ConnectError joined the retried exceptions, once connected (PrefectHQ/prefect#20276)
CONNECT_RETRIED_SINCE = "3.6.12"
# The settings of 3.9.1, the client emulated where no Prefect is installed.
WITHOUT_PREFECT = {"version": "3.9.1", "max_retries": 5, "jitter_factor": 0.2, "extra_codes": []}

_READ_SETTINGS = """
import importlib.metadata, json
from prefect.settings import get_current_settings
client = get_current_settings().client
print(json.dumps({
    "version": importlib.metadata.version("prefect"),
    "max_retries": client.max_retries,
    "jitter_factor": client.retry_jitter_factor,
    "extra_codes": sorted(client.retry_extra_codes),
}))
"""


@functools.cache
def client_retries() -> RetryPolicy:
    """The installed Prefect client's retries (read once per process)."""
    settings = _read_settings()
    return RetryPolicy(
        statuses=RETRIED_STATUSES | frozenset(settings["extra_codes"]),
        max_retries=settings["max_retries"],
        jitter_factor=settings["jitter_factor"],
        connect_once_connected=version_key(settings["version"])
        >= version_key(CONNECT_RETRIED_SINCE),
        version=settings["version"],
    )


def _read_settings() -> dict[str, object]:
    """The client settings as the installed Prefect reads them, in a fresh Prefect home."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env |= {k: v for k, v in os.environ.items() if k.startswith("PREFECT_CLIENT_")}
    with tempfile.TemporaryDirectory(prefix="prefect-bench-client-") as home:
        done = subprocess.run(
            [sys.executable, "-c", _READ_SETTINGS],
            env=env | {"PREFECT_HOME": home},
            capture_output=True,
            text=True,
            check=False,
        )
    if done.returncode != 0:
        if "ModuleNotFoundError: No module named 'prefect'" in done.stderr:
            return WITHOUT_PREFECT
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise ConfigError(f"the Prefect client's retry settings do not read: {last}")
    return json.loads(done.stdout)
