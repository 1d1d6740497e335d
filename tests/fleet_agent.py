"""An agent of the fleet tests, run as a script in a process of its own.

``python fleet_agent.py run ROOT LOG``: opens LOG, replicates it under ROOT (a URL ending
in ``/``) with the real litestream, runs the workflow ``agent`` of ``STEPS`` steps, waits
until the replica holds it, stops. ``python fleet_agent.py observe ROOT NAME CACHE``: pulls
log NAME of the fleet with ``Fleet.open`` and runs the same workflow there.

Each step appends its number to the file ``COUNTER`` before working (what really ran), and
raises at step ``FAIL_AT``; both are read inside the step, so the step's code and globals,
hence its digest, are the same in every process.
"""

from __future__ import annotations

import os
import sys

import durable_nb


@durable_nb.step
def work(i: int) -> int:
    with open(os.environ["COUNTER"], "a") as f:
        f.write(f"{i}\n")
    if os.environ.get("FAIL_AT") == str(i):
        raise RuntimeError(f"agent failed at step {i}")
    return i * i


@durable_nb.workflow
def agent(n: int) -> int:
    return sum(work(i) for i in range(n))


def main() -> int:
    mode, root = sys.argv[1], sys.argv[2]
    steps = int(os.environ.get("STEPS", "10"))
    if mode == "observe":
        fleet = durable_nb.fleet(root, cache=sys.argv[4])
        print("opened", fleet.open(sys.argv[3]))
        print("result", agent(steps))
        return 0
    durable_nb.open_log(sys.argv[3])
    replicator = durable_nb.replicate(root)
    try:
        print("result", agent(steps))
    except RuntimeError as exc:
        print("failed", exc)
    synced = replicator.wait_synced(30)
    durable_nb.stop_replication()
    print("synced" if synced else "not synced")
    return 0 if synced else 3


if __name__ == "__main__":
    sys.exit(main())
