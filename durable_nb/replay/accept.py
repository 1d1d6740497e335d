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

from ..errors import DurableError
from ..log.current_log import get_store
from ..log.store import Store
from .engine import registered_step
from .walk import RunDependencies

__all__ = ["accept"]


def accept(workflow: str, step: str | None = None, *, store: Store | None = None) -> int:
    """Make the stored results of a workflow's steps (or of one step) replay although their
    code or dependencies changed: after a cosmetic or known-safe change.

    Per call, the record the workflow used last (replayed or made) is marked valid for the
    step's *current* code and dependencies, as defined in this process and read now, with
    the code its arguments brought found again by name. A note in the log records who, when,
    and the digests replaced; ``forget`` undoes it (the records run again). Returns how many
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
    deps = RunDependencies()
    count = 0
    for name in names:
        live = registered_step(name)
        if live is None:
            raise DurableError(
                f"step {name!r} is not defined in this process; run the cell that defines "
                "it, then accept again"
            )
        changes: list[tuple[int, str, str]] = []
        documents: dict[str, str] = {}
        lost = 0
        for record_id, old in store.last_used(workflow, name):
            doc = store.digest_document(old)
            now = live.dependencies.current(deps, doc.get("refs", []) if doc else [])
            if now is None:  # an argument's code (a lambda, a local class) is not found again
                lost += 1
                continue
            changes.append((record_id, old, now.value))
            documents[now.value] = json.dumps(now.doc(name))
        if lost and not changes:
            raise DurableError(
                f"the records of step {name!r} cannot be accepted: the code their arguments "
                "brought (a lambda or a local function) cannot be found again; run it again"
            )
        count += store.accept(workflow, name, changes, documents, who)
    return count
