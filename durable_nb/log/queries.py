"""The read queries of the views that are not the engine's (``Store`` has those): a log's
runs, the steps its runs replayed, its events. Functions of a ``Store`` (a log file, or a
replica read in place), so that only this wing speaks SQL."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .logstore import LogStore as Store

__all__ = ["event_rows", "replayed_ids", "run_rows"]


def run_rows(store: Store, status: str | None = None, since: float | None = None) -> list[Any]:
    """The runs (of ``status`` / started at or after ``since``, Unix time), in id order:
    (id, workflow, status, started, ended, steps run, steps replayed, pid, error)."""
    where = ("AND status = :status " if status is not None else "") + (
        "AND started_at >= :since " if since is not None else ""
    )
    return store.conn.execute(
        "SELECT id, workflow, status, started_at, ended_at, steps_run, steps_replayed, pid, "
        f"error FROM runs WHERE TRUE {where}ORDER BY id",
        {"status": status, "since": since},
    ).fetchall()


def replayed_ids(store: Store, workflow: str | None = None) -> list[int]:
    """The ids of the step rows the runs (of ``workflow``) replayed, once per replay."""
    of_workflow = "AND workflow = ?" if workflow is not None else ""
    lists = store.conn.execute(
        "SELECT replayed_steps FROM runs WHERE replayed_steps IS NOT NULL "
        f"AND replayed_steps != '[]' {of_workflow}",
        () if workflow is None else (workflow,),
    ).fetchall()
    return [i for (text,) in lists for i in json.loads(text)]


def event_rows(store: Store, since: float | None = None) -> list[Any]:
    """The ``events`` view (at or after ``since``, Unix time), in time order."""
    if since is None:
        return store.conn.execute("SELECT * FROM events ORDER BY ts").fetchall()
    since = min(max(since, 0.0), 253402300799.0) if since == since else 253402300799.0  # (a
    # time both backends can write as text: years 1970 to 9999; NaN: after every event)
    return store.conn.execute(
        f"SELECT * FROM events WHERE ts >= {store.ISO_TIME} ORDER BY ts", (since,)
    ).fetchall()
