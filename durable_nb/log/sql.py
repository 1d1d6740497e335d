"""The SQL text of the log, shared by the store and its async twin: statements and the
queries that find a workflow's rows. Nothing here does I/O."""

from __future__ import annotations

from typing import Any

from .records import CheckpointRow, CompletedRow, StepRow
from .serialization import PICKLE

__all__ = [
    "CHECKPOINT_CALL",
    "CHECKPOINT_UPDATED",
    "INDEXED",
    "INDEX_RUN",
    "INSERT_COMPLETED",
    "INSERT_STEP",
    "IN_WORKFLOW",
    "MARK_CRASHED",
    "NEXT_CHECKPOINT",
    "PRELOAD_MAX_BYTES",
    "RUN_COLUMNS",
    "SAVE_CHECKPOINT_REPLACING",
    "end_run",
    "last_used",
    "referenced_blobs",
    "workflow_rows",
]

PRELOAD_MAX_BYTES = 64 << 10  # inline results up to this size are loaded with the index

RUN_COLUMNS = (
    "id, workflow, status, started_at, ended_at, owner, pid, source_digest, inputs_digest, "
    "steps_run, steps_replayed, error"
)
INSERT_STEP = (
    f"INSERT INTO steps ({', '.join(StepRow._fields)}) "
    f"VALUES ({', '.join('?' * len(StepRow._fields))})"
)
# The common checkpoint: fewer parameters, literal status and format, NULL for the rest.
INSERT_COMPLETED = (
    f"INSERT INTO steps ({', '.join(CompletedRow._fields)}, status, result_format) "
    f"VALUES ({', '.join('?' * len(CompletedRow._fields))}, 'completed', '{PICKLE}')"
)

# A call's checkpoints: the same workflow and key (scope, name, argument digest, occurrence).
CHECKPOINT_CALL = "workflow = ? AND name = ? AND args_digest = ? AND scope = ? AND occurrence = ?"
# A call's newest state in place of its older one (its history row: trigger
# checkpoint_history); the next ones of the same call update that row in place (cheaper: its
# key does not change), by its id (trigger checkpoint_history_next).
SAVE_CHECKPOINT_REPLACING = (  # SQLite's (PostgreSQL: an upsert)
    f"INSERT OR REPLACE INTO checkpoint_states ({', '.join(CheckpointRow._fields)}) "
    f"VALUES ({', '.join('?' * len(CheckpointRow._fields))})"
)
CHECKPOINT_UPDATED = tuple(  # the fields of CheckpointRow other than the call's key
    i for i, f in enumerate(CheckpointRow._fields)
    if f not in ("workflow", "scope", "name", "args_digest", "occurrence")
)  # fmt: skip
NEXT_CHECKPOINT = (
    "UPDATE checkpoint_states SET "
    + ", ".join(f"{CheckpointRow._fields[i]} = ?" for i in CHECKPOINT_UPDATED)
    + " WHERE id = ? AND done = 0"
)


def end_run(smaller: str) -> str:
    """How a run ended; ``smaller``: the backend's scalar minimum (``min``, ``least``)."""
    return (
        "UPDATE runs SET status = :status, ended_at = :ended, steps_run = :ran, "
        "steps_replayed = :replayed, replayed_steps = :ids, error = :error, "
        f"environment = :environment, indexed = 1, first_step = {smaller}(coalesce("
        "first_step, :first), coalesce(:first, first_step)) WHERE id = :run"
    )


def last_used(greater: str, replayed: str) -> str:
    """The completed records of step :step of workflow :workflow with the newest run that
    used each (made or replayed it); ``greater``: the backend's scalar maximum,
    ``replayed``: rows (run, step) of the runs' replayed step ids."""
    return (
        "SELECT s.id, s.code_digest, s.scope, s.args_digest, s.occurrence, "
        f"{greater}(s.run_id, coalesce(max(r.run), 0)) FROM steps s LEFT JOIN ({replayed}) "
        "AS r ON r.step = s.id WHERE s.workflow = :workflow AND s.name = :step "
        "AND s.status = 'completed' GROUP BY s.id"
    )


# A crashed run keeps its record: when its last step ended (not when the crash was
# noticed) and how many steps it ran.
MARK_CRASHED = (
    "UPDATE runs SET status = 'crashed', ended_at = coalesce((SELECT max(ended_at) FROM steps "
    "WHERE id >= coalesce(runs.first_step, 0) AND run_id = runs.id), started_at), "
    "steps_run = (SELECT count(*) FROM steps WHERE id >= coalesce(runs.first_step, 0) "
    "AND run_id = runs.id AND status IN ('completed', 'not_durable')), "
    "error = 'the process running it died' WHERE id = ? AND status = 'running'"
)
# A run's steps into workflow_steps (when it ends, or is found crashed): its rows lie from
# runs.first_step on, so this reads only what was written since it started.
INDEX_RUN = (
    "INSERT INTO workflow_steps (workflow, step) SELECT workflow, id FROM steps "
    "WHERE id >= coalesce((SELECT first_step FROM runs WHERE id = :run), 0) "
    "AND run_id = :run ON CONFLICT DO NOTHING"
)
INDEXED = "UPDATE runs SET indexed = 1 WHERE id = ?"


# The ids of workflow :workflow's step rows: those indexed in workflow_steps, and those of
# its runs not indexed yet (in progress, or killed and not yet found), which lie from their
# first_step on.
IN_WORKFLOW = (
    "id IN (SELECT step FROM workflow_steps WHERE workflow = :workflow UNION ALL SELECT id "
    "FROM steps WHERE id >= coalesce((SELECT min(first_step) FROM runs WHERE workflow = "
    ":workflow AND indexed = 0), 9223372036854775807) AND run_id IN (SELECT id FROM runs "
    "WHERE workflow = :workflow AND indexed = 0))"
)


def workflow_rows(columns: str, extra: str = "") -> str:
    """SQL for the step rows of workflow ``:workflow`` (and ``extra`` conditions), in id
    order."""
    return f"SELECT {columns} FROM steps WHERE {IN_WORKFLOW} {extra} ORDER BY id"


def referenced_blobs(conn: Any) -> set[str]:
    """The digests of every blob a log's rows point to (step results, cell variables and
    checkpoint states)."""
    used = {
        digest
        for (digest,) in conn.execute(
            "SELECT DISTINCT result_blob FROM steps WHERE result_blob IS NOT NULL"
        )
    }
    for (digests,) in conn.execute("SELECT blobs FROM cells WHERE blobs != ''"):
        used.update(digests.split())
    used.update(
        digest
        for (digest,) in conn.execute(
            "SELECT state_blob FROM checkpoint_states WHERE state_blob IS NOT NULL"
        )
    )
    return used
