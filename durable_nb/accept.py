"""Accepting a change: stored results that replay although their step's code changed.

After a cosmetic or known-safe change (a renamed variable, a faster but equal helper), the
stored completed records of a step are marked valid for its *current* code and
dependencies. The log keeps a note of who accepted which digests; ``forget`` undoes it.
"""

from __future__ import annotations

import getpass
import json
import os
import socket

from .dependencies import ACCEPTED, RunDependencies
from .engine import get_store, registered_step
from .errors import DurableError
from .store import Store

__all__ = ["accept"]


def accept(workflow: str, step: str | None = None, *, store: Store | None = None) -> int:
    """Make the stored results of a workflow's steps (or of one step) replay although their
    code or dependencies changed: after a cosmetic or known-safe change.

    The records are marked valid for each step's *current* code and dependencies (as
    defined in this process, read now); a note in the log records who, when, and the
    digests replaced. ``forget`` undoes it (the records run again). Returns how many
    records were accepted.
    """
    store = store or get_store()
    names = [step] if step else store.step_names(workflow)
    if not names:
        raise DurableError(
            f"workflow {workflow!r} has no completed steps in {store.path}; "
            "%durable info lists the workflows"
        )
    who = f"{getpass.getuser()}@{socket.gethostname()} pid {os.getpid()}"
    count = 0
    for name in names:
        live = registered_step(name)
        if live is None:
            raise DurableError(
                f"step {name!r} is not defined in this process; run the cell that defines "
                "it, then accept again"
            )
        digest = live.dependencies.digest(RunDependencies())
        accepted = ACCEPTED + digest.base
        count += store.accept(workflow, name, accepted, json.dumps(digest.doc(name)), who)
    return count
