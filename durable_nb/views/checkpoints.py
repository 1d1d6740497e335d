"""The checkpoints saved inside steps (``checkpoint()``) as a DataFrame: one row per
checkpoint, its metrics as columns. Read from columns and JSON only: no state is unpickled."""

from __future__ import annotations

import json
from typing import Any

import pandas as pd

from ..log.checkpoints import history_rows
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
        rows = history_rows(store, workflow, step)
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
