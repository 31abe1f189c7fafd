"""The flow that `bench.conformance` runs with the real Prefect client: one flow run, N tasks.

Run as a script (`python flow.py --tasks N`) in a child process whose environment
points PREFECT_API_URL at the server under test. It imports only prefect and the standard
library, so it runs in any interpreter that has prefect, and it prints one line, RESULT_PREFIX
followed by JSON: the client's version, the flow run's id and final state, and the ids of the
task runs it made (in the order they ran). Exit code 0 when the flow run completed, else 1.
With `--for-s S` it runs the flow again and again until S seconds have passed (a user of the
real client, for benchmarks/client_retries.py), a line each, and exits 0.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

RESULT_PREFIX = "prefect-bench-conformance: "
FLOW_NAME = "prefect-bench-conformance"


def run_flow(tasks: int) -> dict[str, Any]:
    """Run the flow with `tasks` tasks, called one after the other, and say what it made."""
    # imported here so that the parent can import RESULT_PREFIX without importing prefect
    import prefect
    from prefect import flow, task
    from prefect.context import TaskRunContext

    @task
    def step(index: int) -> str:
        context = TaskRunContext.get()
        assert context is not None
        return str(context.task_run.id)

    @flow(name=FLOW_NAME)
    def conformance(tasks: int) -> list[str]:
        return [step(index) for index in range(tasks)]

    state = conformance(tasks, return_state=True)
    completed = state.is_completed()
    flow_run_id = state.state_details.flow_run_id
    return {
        "client_version": prefect.__version__,
        "flow_run_id": str(flow_run_id) if flow_run_id else None,
        "state": state.type.value,
        "message": state.message,
        "task_run_ids": state.result() if completed else [],
    }


def main(argv: list[str] | None = None) -> int:
    """Entry point of the child process."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tasks", type=int, required=True)
    parser.add_argument("--for-s", type=float, default=None)
    args = parser.parse_args(argv)
    if args.for_s is not None:
        until = time.monotonic() + args.for_s
        while time.monotonic() < until:
            print(RESULT_PREFIX + json.dumps(run_flow(args.tasks)), flush=True)
        return 0
    outcome = run_flow(args.tasks)
    print(RESULT_PREFIX + json.dumps(outcome), flush=True)
    return 0 if outcome["state"] == "COMPLETED" else 1


if __name__ == "__main__":
    sys.exit(main())
