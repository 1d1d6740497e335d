"""Checkpoints inside a step in the log: save a call's newest state (the trigger
``checkpoints_newest`` drops the older one in the same statement), find it again, finish
the checkpoints of a completed call, list unfinished calls for the views. SQL text is in
``sql``; the row is built by ``replay.calls.Call.checkpoint_row``."""

from __future__ import annotations

import sqlite3
from typing import TYPE_CHECKING, Any

from .records import CheckpointRow, StepKey, StoredCheckpoint
from .sql import CHECKPOINT_CALL, FINISH_CHECKPOINTS, INSERT_CHECKPOINT

if TYPE_CHECKING:
    from .store import Store

__all__ = ["finish", "kept_keys", "newest", "save", "state_payload", "unfinished_rows"]


def _call(workflow: str, key: StepKey) -> tuple[str, str, str, str, int]:
    scope, name, digest, occurrence = key
    return workflow, name, digest, scope, occurrence


def save(store: Store, row: CheckpointRow) -> int:
    """Commit ``row`` (its blob, if any, is written already); the call's older state is
    dropped in the same statement (trigger ``checkpoints_newest``). The new row's id."""
    return store.write(INSERT_CHECKPOINT, tuple(row))


def newest(store: Store, workflow: str, key: StepKey) -> StoredCheckpoint | None:
    """The newest state saved for a call that has not completed, whatever its digest."""
    row = store.conn.execute(
        "SELECT id, run_id, code_digest, attempt, seq, state_format, state_blob, signature, "
        f"metrics FROM checkpoints WHERE {CHECKPOINT_CALL} AND state_format IS NOT NULL "
        "AND done = 0 ORDER BY id DESC LIMIT 1",
        _call(workflow, key),
    ).fetchone()
    return StoredCheckpoint(*row) if row else None


def kept_keys(store: Store, workflow: str) -> set[StepKey]:
    """The calls of ``workflow`` whose newest state is kept and not finished (a run
    finishes them as they complete, whichever attempt or run saved them)."""
    rows = store.conn.execute(
        "SELECT scope, name, args_digest, occurrence FROM checkpoints WHERE workflow = ? "
        "AND state_format IS NOT NULL AND done = 0",
        (workflow,),
    ).fetchall()
    return {tuple(row) for row in rows}  # type: ignore[misc]


def finish(store: Store, workflow: str, key: StepKey) -> None:
    """A call completed (or replayed a completed record): its kept state is dropped, its
    blob left to ``gc`` (with ``keep_checkpoints``, kept and marked done: never resumed)."""
    store.write(FINISH_CHECKPOINTS, _call(workflow, key))


def state_payload(store: Store, checkpoint_id: int) -> bytes:
    """The inline serialized state of one checkpoint."""
    row = store.conn.execute(
        "SELECT state FROM checkpoints WHERE id = ?", (checkpoint_id,)
    ).fetchone()
    return row[0]


def unfinished_rows(store: Store, workflow: str | None, step: str | None) -> list[tuple[Any, ...]]:
    """Calls that checkpointed and have not completed (running, crashed, failed or
    interrupted), from their newest checkpoint, in the shape of ``experiment_rows``:
    (workflow, scope, name, args digest, occurrence, run, the run's status, checkpoint
    number, params JSON, metrics JSON, when the attempt started, the checkpoint's time)."""
    try:
        return store.conn.execute(
            "SELECT c.workflow, c.scope, c.name, c.args_digest, c.occurrence, c.run_id, "
            "r.status, c.seq, c.params, c.metrics, c.started_at, c.created_at "
            "FROM checkpoints c JOIN runs r ON r.id = c.run_id "
            "WHERE c.state_format IS NOT NULL AND c.done = 0 AND (?1 IS NULL OR c.workflow = "
            "?1) AND (?2 IS NULL OR c.name = ?2) ORDER BY c.id",
            (workflow, step),
        ).fetchall()
    except sqlite3.OperationalError as exc:  # a log older than checkpoints, read-only
        if "no such table" not in str(exc):
            raise
        return []
