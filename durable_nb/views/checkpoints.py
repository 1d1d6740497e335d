"""The checkpoints saved inside steps (``checkpoint()``) as a DataFrame: one row per
checkpoint, its metrics as columns. Read from columns and JSON only: no state is unpickled."""

from __future__ import annotations

import json
import sqlite3
from typing import Any

import pandas as pd

from .reading import LogArg, opened, times

__all__ = ["checkpoints"]

_COLUMNS = ["run", "workflow", "step", "args", "attempt", "checkpoint", "time", "size", "kept"]


def checkpoints(
    workflow: str | None = None, step: str | None = None, *, log: LogArg = None
) -> pd.DataFrame:
    """Every checkpoint of ``workflow``'s (or every workflow's) calls of ``step`` (or of
    every step), oldest first: run, workflow, step, args, attempt, its number in the call,
    time (UTC), state size, whether its state is still kept (only a call's newest is, until
    the call completes); then one column per metric."""
    with opened(log) as store:
        try:
            rows = store.conn.execute(
                "SELECT c.run_id, c.workflow, c.name, c.args_repr, c.attempt, c.seq, "
                "c.created_at, c.state_size, EXISTS (SELECT 1 FROM checkpoint_states s WHERE "
                "s.workflow = c.workflow AND s.name = c.name AND s.args_digest = c.args_digest "
                "AND s.scope = c.scope AND s.occurrence = c.occurrence AND s.run_id = c.run_id "
                "AND s.attempt = c.attempt AND s.seq = c.seq), c.metrics FROM checkpoints c "
                "WHERE (?1 IS NULL OR c.workflow = ?1) AND (?2 IS NULL OR c.name = ?2) "
                "ORDER BY c.id",
                (workflow, step),
            ).fetchall()
        except sqlite3.OperationalError as exc:  # a log older than checkpoints, read-only
            if "no such table" not in str(exc):
                raise
            rows = []
    df = pd.DataFrame.from_records([r[:-1] for r in rows], columns=_COLUMNS)
    df = df.astype({"run": "int64", "attempt": "int64", "checkpoint": "int64",
                    "size": "int64", "kept": "bool"})  # fmt: skip
    df["time"] = times(df["time"])
    metrics: list[dict[str, Any]] = [json.loads(r[-1]) if r[-1] else {} for r in rows]
    if any(metrics):
        extra = pd.DataFrame.from_records(metrics, index=df.index)
        extra.columns = [f"metric.{c}" if c in _COLUMNS else c for c in extra.columns]
        df = pd.concat([df, extra.infer_objects()], axis=1)
    return df
