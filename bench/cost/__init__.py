"""What a request costs the server, counted by callgrind (--cost): the command the server
runs under and its collection switched on and off (`callgrind`), an endpoint's request sent in
blocks (`blocks`), a cost cell's endpoints and their kept dumps (`endpoints`), a scenario's runs
replayed in blocks, per run and per step (`scenarios`), a step's dumps summed into one
(`merge`), a services process's cost per run beside the API's (`services`)."""

from bench.cost.blocks import Blocks
from bench.cost.callgrind import CostError, command_prefix, missing_tools
from bench.cost.endpoints import KEPT_FOLDER, CostedEndpoint, CostTarget, count_endpoints
from bench.cost.scenarios import COSTED_WORKLOADS, SCENARIO_BLOCK, TAG, count_scenario
from bench.cost.services import ServicesTarget, prefect_waiting

# A server under callgrind starts ~10x slower (Prefect 3.9.1: 60-110 s here, on a busy machine).
STARTUP_TIMEOUT_S = 600.0

__all__ = [
    "COSTED_WORKLOADS",
    "KEPT_FOLDER",
    "SCENARIO_BLOCK",
    "STARTUP_TIMEOUT_S",
    "TAG",
    "Blocks",
    "CostError",
    "CostTarget",
    "CostedEndpoint",
    "ServicesTarget",
    "command_prefix",
    "count_endpoints",
    "count_scenario",
    "missing_tools",
    "prefect_waiting",
]
