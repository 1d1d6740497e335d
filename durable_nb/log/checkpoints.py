"""Checkpoints inside a step in the log: save a call's newest state (one row per call in
``checkpoint_states``, replaced in one statement that also appends the checkpoint's history
row), find it again, finish the checkpoints of a completed call, list unfinished calls for
the views. SQL text is in ``sql``; the row is built by ``replay.calls.Call.checkpoint_row``."""

from __future__ import annotations

import operator
from typing import TYPE_CHECKING, Any

from .records import CheckpointRow, StepKey, StoredCheckpoint
from .sql import CHECKPOINT_CALL, CHECKPOINT_UPDATED, NEXT_CHECKPOINT

if TYPE_CHECKING:
    from .logstore import LogStore as Store

__all__ = ["finish", "history_rows", "kept_keys", "newest", "save", "unfinished_rows"]


_UPDATED = operator.itemgetter(*CHECKPOINT_UPDATED)  # a row's values NEXT_CHECKPOINT sets


def _call(workflow: str, key: StepKey) -> tuple[str, str, str, str, int]:
    scope, name, digest, occurrence = key
    return workflow, name, digest, scope, occurrence


def save(store: Store, row: CheckpointRow, state_row: int | None = None) -> int:
    """Commit ``row`` (its blob, if any, is written already) in place of the call's older
    state, its history row with it: one statement, one commit. ``state_row``: the id of the
    row this call saved last, updated in place if it is still there. Returns the row's id."""
    if state_row is not None:
        in_place = (*_UPDATED(row), state_row)
        if store.write(NEXT_CHECKPOINT, in_place, changed=True):
            return state_row
    return store.write(store.SAVE_CHECKPOINT, tuple(row))


def newest(store: Store, workflow: str, key: StepKey) -> StoredCheckpoint | None:
    """The newest state saved for a call that has not completed, whatever its digest."""
    row = store.conn.execute(
        "SELECT run_id, code_digest, attempt, seq, state_format, state_blob, state, signature "
        f"FROM checkpoint_states WHERE {CHECKPOINT_CALL} AND done = 0",
        _call(workflow, key),
    ).fetchone()
    return StoredCheckpoint(*row) if row else None


def kept_keys(store: Store, workflow: str) -> set[StepKey]:
    """The calls of ``workflow`` that keep a state not finished (a run finishes them as
    they complete, whichever attempt or run saved them)."""
    rows = store.conn.execute(
        "SELECT scope, name, args_digest, occurrence FROM checkpoint_states "
        "WHERE workflow = ? AND done = 0",
        (workflow,),
    ).fetchall()
    return {tuple(row) for row in rows}  # type: ignore[misc]


def finish(store: Store, workflow: str, key: StepKey) -> None:
    """A call completed (or replayed a completed record): its state is dropped, its blob
    left to ``gc`` (with ``keep_checkpoints``, kept and marked done: never resumed)."""
    call = _call(workflow, key)  # (one row at most: one of the two statements changes it)
    store.write(f"DELETE FROM checkpoint_states WHERE {CHECKPOINT_CALL} AND done = 0 AND NOT "
                "keep", call)  # fmt: skip
    for sql in store.KEEP_FINISHED:  # its kept state in place of an older kept one
        store.write(sql, call)


def unfinished_rows(store: Store, workflow: str | None, step: str | None) -> list[tuple[Any, ...]]:
    """Calls that checkpointed and have not completed (running, crashed, failed or
    interrupted), from their newest checkpoint, in the shape of ``experiment_rows``:
    (workflow, scope, name, args digest, occurrence, run, the run's status, checkpoint
    number, params JSON, metrics JSON, when the attempt started, the checkpoint's time)."""
    return _rows(
        store,
        "SELECT c.workflow, c.scope, c.name, c.args_digest, c.occurrence, c.run_id, "
        "r.status, c.seq, c.params, c.metrics, c.started_at, c.created_at "
        "FROM checkpoint_states c JOIN runs r ON r.id = c.run_id WHERE c.done = 0 "
        f"{_of(workflow, step)}ORDER BY c.created_at",
        {"workflow": workflow, "step": step},
    )


def history_rows(store: Store, workflow: str | None, step: str | None) -> list[tuple[Any, ...]]:
    """Every checkpoint of ``workflow``'s calls of ``step`` (None: all), oldest first: (run,
    workflow, step, args, attempt, number, time, state size, whether its state is kept,
    metrics JSON)."""
    return _rows(
        store,
        "SELECT c.run_id, c.workflow, c.name, c.args_repr, c.attempt, c.seq, "
        "c.created_at, c.state_size, EXISTS (SELECT 1 FROM checkpoint_states s WHERE "
        "s.workflow = c.workflow AND s.name = c.name AND s.args_digest = c.args_digest "
        "AND s.scope = c.scope AND s.occurrence = c.occurrence AND s.run_id = c.run_id "
        "AND s.attempt = c.attempt AND s.seq = c.seq), c.metrics FROM checkpoints c "
        f"WHERE TRUE {_of(workflow, step)}ORDER BY c.id",
        {"workflow": workflow, "step": step},
    )


def _of(workflow: str | None, step: str | None) -> str:
    """The conditions for checkpoints ``c`` of ``workflow`` / ``step`` (None: any)."""
    return ("AND c.workflow = :workflow " if workflow is not None else "") + (
        "AND c.name = :step " if step is not None else ""
    )


def _rows(store: Store, sql: str, params: dict[str, Any]) -> list[tuple[Any, ...]]:
    try:
        return store.conn.execute(sql, params).fetchall()
    except store.ERRORS as exc:  # a log older than checkpoints, read-only
        if "no such table" not in str(exc):
            raise
        return []
