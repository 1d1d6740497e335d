"""The agent of ``06_fleet_observer``: a workflow of steps, run in processes of its own.

``python -c "import agents; agents.main()" ROOT FOLDER`` runs it on the log
``FOLDER/.durable/agent.db``, replicated under the fleet root ROOT with the real litestream.
Step ``AGENT_FAILS_AT`` (an environment variable) fails, as a flaky tool call would.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import durable_nb


@durable_nb.step
def think(i: int) -> str:
    if os.environ.get("AGENT_FAILS_AT") == str(i):
        raise RuntimeError(f"tool call {i} timed out")
    return f"thought {i}"


@durable_nb.workflow
def solve(task: str, n: int = 5) -> list[str]:
    return [think(i) for i in range(n)]


def main() -> None:
    root, folder = sys.argv[1], Path(sys.argv[2])
    durable_nb.open_log(folder / ".durable" / "agent.db")
    replicator = durable_nb.replicate(root)  # under ROOT, at DURABLE_NB_REPLICA_NAME
    try:
        solve("summarise the logs")
    except RuntimeError as exc:
        print(f"failed: {exc}")
    replicator.wait_synced(timeout=30)
    durable_nb.stop_replication()
