"""Checkpoints inside a step: ``checkpoint(state, **metrics)`` saves the running call's state
in the log before it returns; ``last_checkpoint()`` gives it back to a later attempt of the
same call, so a long step killed at epoch 18 of 20 goes on from epoch 18.

The rule is the step rule's: a state is resumed only by the same call (same workflow and key)
with the same dependency digest; a state saved by code that has changed since is not resumed,
and the call's reason says what changed. Only values signed with the user's key are
unpickled. The log keeps the newest state of a call, and drops it when the call completes
(unless ``@step(keep_checkpoints=True)``); the metrics of every checkpoint stay.
"""

from __future__ import annotations

import asyncio
from typing import Any

from ..errors import BlobError, CheckpointError
from ..log import checkpoints as stored
from ..log import serialization
from ..log.documents import metrics_document
from ..log.signing import NotSigned
from .calls import Call
from .context import current, worker

__all__ = ["acheckpoint", "checkpoint", "last_checkpoint"]


def _running(what: str) -> Call:
    scope = current.get()
    if scope is not None and scope.call is not None:
        return scope.call
    if worker.get():
        raise CheckpointError(
            f"{what}() cannot reach the log from an executor's worker: checkpoint in steps "
            "that run in the workflow's process (not with .map/.submit on an executor)"
        )
    raise CheckpointError(
        f"{what}() works inside a running @step call in a workflow (a %%durable cell or "
        "`with workflow(...)`), not outside one"
    )


def checkpoint(state: Any, **metrics: Any) -> None:
    """Save ``state`` for the running step call, committed before this returns (a large
    state as a blob file first, replicated and signed like any stored value); the keyword
    ``metrics`` (numbers, strings) are kept as JSON beside it, readable without unpickling
    (``durable_nb.checkpoints()``). Only the newest state of a call is kept. In an async
    step, ``await acheckpoint(...)`` writes it without holding up the event loop."""
    _save(_running("checkpoint"), state, metrics)


async def acheckpoint(state: Any, **metrics: Any) -> None:
    """``checkpoint()`` for async steps: the state is pickled and written from a worker
    thread, so the event loop, and the other steps on it, go on meanwhile. Do not change
    ``state`` until this returns."""
    await asyncio.to_thread(_save, _running("acheckpoint"), state, metrics)


def _save(call: Call, state: Any, metrics: dict[str, Any]) -> None:
    try:
        encoded = serialization.encode(state, large=True)  # (arrays out of band at once)
    except serialization.NotSerializable as exc:
        raise CheckpointError(
            f"checkpoint(): the state of {call.name} cannot be pickled ({exc.reason}); save "
            "what can be (arrays, state_dict(), plain values)"
        ) from None
    run = call.run
    blob = None if encoded.inline else run.store.blobs.write(encoded.segments)
    call.checkpoints = max(call.checkpoints, 0) + 1
    row = call.checkpoint_row(call.checkpoints, encoded, blob, metrics_document(metrics))
    run.store.remember_digest(row.code_digest, call.document)
    call.state_row = stored.save(run.store, row, call.state_row)


def last_checkpoint() -> Any:
    """The newest state saved by an earlier attempt of the running call (the same call,
    with the same code and dependencies) that did not complete, or None. A state saved by
    code that has changed since is not resumed: the call's reason says what changed."""
    call = _running("last_checkpoint")
    run = call.run
    found = stored.newest(run.store, run.workflow, call.key)
    if found is None or (found.attempt == call.attempt and found.run_id == run.id):
        return None  # (this very attempt's own: it knows its state)
    if run.completed is None and found.run_id != run.id:
        return None  # a fresh run ignores the log (its own retries still resume)
    where = f"checkpoint {found.seq} of {call.name}"
    if found.code_digest != call.digest.value:
        doc = run.store.digest_document(found.code_digest)
        why = run.explain_digest(doc, call, found.run_id)
        call.reason = f"{where} not used: {why}"
        return None
    try:
        state = run.stored_value(found.state_format, found.state_blob, found.signature,
                                 found.state)  # fmt: skip
    except Exception as exc:  # unsigned, a lost blob, a class that is gone: it starts over
        known = isinstance(exc, (BlobError, NotSigned))
        call.reason = f"{where} not used: {exc if known else f'state unreadable: {exc}'}"
        run.warn_once(f"checkpoint {call.name}", f"step {call.name}: {call.reason}")
        return None
    call.checkpoints = max(call.checkpoints, found.seq)
    call.reason = f"resumed from {where} (attempt {found.attempt} of run {found.run_id})"
    return state
