"""The execution log's logic, once for every backend: runs and their owners, steps, cells,
notes, forgetting. ``LogStore`` speaks the SQL the backends share (``sql`` has the
statements); a backend (``store.Store``: a SQLite file; ``store_postgres.PostgresStore``: a
PostgreSQL database) opens the connection, writes, holds transactions and owns the few
statements that differ, as class attributes.

Writes of a step are a single INSERT in autocommit mode (one atomic commit, no explicit
transaction), which keeps a checkpoint as cheap as a raw insert. Multi-statement changes use
``with store.transaction():`` (BEGIN, SAVEPOINT when nested, rollback on any
``BaseException``).
"""

from __future__ import annotations

import json
import logging
import operator
import os
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, ClassVar

from ..errors import DurableWarning, LogFileError, WorkflowBusyError, user_stacklevel
from . import owner as owners
from .records import (
    BlobsCollected,
    CellRecord,
    CompletedRow,
    RunRecord,
    StepKey,
    StepRow,
    StoredStep,
)
from .sql import (
    IN_WORKFLOW,
    INDEX_RUN,
    INDEXED,
    INSERT_COMPLETED,
    INSERT_STEP,
    MARK_CRASHED,
    PRELOAD_MAX_BYTES,
    RUN_COLUMNS,
    workflow_rows,
)

__all__ = ["LogStore"]

log = logging.getLogger(__name__)


def _run(row: tuple[Any, ...]) -> RunRecord:
    return RunRecord(*row)


class LogStore:
    """One durable_nb log: runs, steps, cells and notes, and its large values (``blobs``).
    A backend sets ``path``, ``conn`` (``execute`` / ``executemany`` returning a cursor,
    ``in_transaction``, ``close``), ``blobs`` and ``readonly``, then calls ``_begin``."""

    # The statements that differ between backends (the rest is shared: ``sql``).
    BEGIN: ClassVar[str]
    END_RUN: ClassVar[str]
    REPLAYED_BY_RUN: ClassVar[str]  # ids of the steps run :run replayed, one per row
    LAST_USED: ClassVar[str]
    ISO_TIME: ClassVar[str]  # the ISO 8601 UTC text of a Unix time ?, as the events view
    SAVE_CHECKPOINT: ClassVar[str]  # a call's newest state in place of its older one
    KEEP_FINISHED: ClassVar[tuple[str, ...]]  # a completed call's kept state, as done
    ERRORS: ClassVar[tuple[type[BaseException], ...]]  # the driver's errors

    path: Any
    conn: Any
    blobs: Any
    readonly: bool
    name: str  # the log's short name, for messages

    def _begin(self, *, recover: bool) -> None:
        self._lock = threading.RLock()
        self._depth = 0
        self._active: set[int] = set()
        self._unended: dict[int, dict[str, Any]] = {}  # ends not written yet (disk full)
        self._retry: threading.Thread | None = None
        self._closed = threading.Event()
        self._me = owners.current_owner()
        self._digests: set[str] = set()  # digests whose document is stored (this process)
        self._recovered = False
        if not self.readonly and recover:  # else at the first run (a --plan writes nothing)
            self.recover_crashed()

    def _fail(self, exc: BaseException, action: str) -> LogFileError:
        """The one-line error for a failure of the driver while doing ``action``."""
        raise NotImplementedError

    def write(self, sql: str, params: Any, *, changed: bool = False) -> int:
        """One statement (of ``sql``), one atomic commit (autocommit mode); the new row's
        id, if any (with ``changed``: how many rows it changed)."""
        raise NotImplementedError

    def _held(self, run_id: int, owner: str) -> bool:
        """Whether a ``running`` run still has a live owner (this process counts its own)."""
        raise NotImplementedError

    def _claim(self, conn: Any, workflow: str) -> None:
        """In ``begin_run``'s transaction, before it looks: no other opener of the log
        looks at ``workflow``'s runs until it commits (the backend's lock)."""

    def _hold(self, conn: Any, run_id: int) -> None:
        """In ``begin_run``'s transaction: this process owns run ``run_id`` from now on."""

    def _release(self, run_id: int) -> None:
        """Run ``run_id`` ended here and its end is written: its ownership is let go."""

    def async_twin(self) -> Any:
        """A store whose ``insert`` async steps await (``open``, ``insert``, ``close``,
        ``stop``)."""
        raise NotImplementedError

    def arrow_table(self, sql: str, params: list[Any]) -> Any | None:
        """The rows of ``sql`` (``?`` parameters) as an Arrow table, read by the database's
        ADBC driver, or None where the backend has none (a SQLite file is read by the
        views' child process, ``views.columnar``) or it fails (then: ``conn``)."""
        return None

    def sizes(self) -> tuple[int, int, int, int]:
        """(log bytes, WAL bytes, blob bytes, blob count)."""
        raise NotImplementedError

    def collect_blobs(self, grace: float = 60.0) -> BlobsCollected:
        """Delete the large values no row refers to (see the backend)."""
        raise NotImplementedError

    # -- lifecycle -------------------------------------------------------------------

    def close(self) -> None:
        """Close the connection and stop the checkpoint thread (idempotent); ends of runs
        not written yet are tried once more."""
        self._closed.set()
        if self._unended:
            self._write_ends()
        self._stop()
        with self._lock:
            self.conn.close()

    def _stop(self) -> None:
        """Stop what the backend runs beside the connection (before it closes)."""

    def __enter__(self) -> LogStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.path}>"

    @contextmanager
    def transaction(self) -> Iterator[Any]:
        """BEGIN ... COMMIT (SQLite: IMMEDIATE), a SAVEPOINT when nested; rollback on any
        exception."""
        with self._lock:
            name = f"sp{self._depth}"
            self._depth += 1
            try:
                self.conn.execute(self.BEGIN if self._depth == 1 else f"SAVEPOINT {name}")
                try:
                    yield self.conn
                except BaseException:
                    if self._depth == 1:
                        self.conn.execute("ROLLBACK")
                    else:
                        self.conn.execute(f"ROLLBACK TO {name}")
                        self.conn.execute(f"RELEASE {name}")
                    raise
                self.conn.execute("COMMIT" if self._depth == 1 else f"RELEASE {name}")
            except self.ERRORS as exc:
                if self._depth == 1 and self.conn.in_transaction:
                    self.conn.execute("ROLLBACK")
                raise self._fail(exc, "write") from None
            finally:
                self._depth -= 1

    # -- runs ------------------------------------------------------------------------

    def running_here(self) -> list[int]:
        """The runs this process started on this log that have not ended."""
        return sorted(self._active)

    def recover_crashed(self) -> list[int]:
        """Mark runs left ``running`` by processes that are gone as ``crashed``."""
        self._recovered = True
        rows = self.conn.execute("SELECT id, owner FROM runs WHERE status = 'running'").fetchall()
        dead = [run_id for run_id, owner in rows if not self._held(run_id, owner)]
        if dead:
            with self.transaction() as conn:
                conn.executemany(MARK_CRASHED, [(run_id,) for run_id in dead])
                conn.executemany(INDEX_RUN, [{"run": run_id} for run_id in dead])
                conn.executemany(INDEXED, [(run_id,) for run_id in dead])
        return dead

    def begin_run(
        self,
        workflow: str,
        *,
        source_digest: str | None = None,
        inputs_digest: str | None = None,
    ) -> int:
        """Start a run of ``workflow``; refuse if a live process is running it."""
        if not self._recovered:
            self.recover_crashed()
        self._write_ends()  # a run of ours whose end could not be written yet
        with self.transaction() as conn:
            self._claim(conn, workflow)
            for run_id, owner, pid in conn.execute(
                "SELECT id, owner, pid FROM runs WHERE workflow = ? AND status = 'running'",
                (workflow,),
            ).fetchall():
                if run_id in self._unended:  # ended here, written when the log can be
                    continue
                if self._held(run_id, owner):
                    where = f"this process (pid {pid})" if owner == self._me else f"process {pid}"
                    host = owner.split(":", 1)[0]
                    if host != self._me.split(":", 1)[0]:
                        where += f" on {host}"
                    raise WorkflowBusyError(
                        f"workflow {workflow!r} is already running in {where}; "
                        "wait for it to finish or stop that kernel, then run again",
                        workflow=workflow,
                        pid=pid,
                    )
                conn.execute(MARK_CRASHED, (run_id,))
                conn.execute(INDEX_RUN, {"run": run_id})
                conn.execute(INDEXED, (run_id,))
            run_id = conn.execute(
                "INSERT INTO runs (workflow, status, started_at, owner, pid, source_digest, "
                "inputs_digest, first_step) VALUES (?, 'running', ?, ?, ?, ?, ?, "
                "(SELECT coalesce(max(id), 0) + 1 FROM steps))",
                (workflow, time.time(), self._me, os.getpid(), source_digest, inputs_digest),
            ).lastrowid
            assert run_id is not None
            self._hold(conn, run_id)
        self._active.add(run_id)
        return run_id

    def end_run(
        self,
        run_id: int,
        status: str,
        *,
        steps_run: int,
        replayed: list[int],
        error: str | None,
        environment: dict[str, str] | None = None,
        first_row: int | None = None,
    ) -> None:
        """Record how a run ended, with the ids of the step records it replayed and the
        versions of the packages its steps referenced. When the log cannot be written now
        (a full disk, an I/O error), the end is kept and written as soon as it can be: tried
        again in the background with a pause that doubles up to 30 s, and before the next
        run starts; meanwhile the run holds its workflow against no one."""
        self._unended[run_id] = {
            "status": status,
            "ended": time.time(),
            "ran": steps_run,
            "replayed": len(replayed),
            "ids": json.dumps(replayed),
            "error": error,
            "environment": json.dumps(environment) if environment else None,
            "first": first_row,  # its lowest row id (ids can be reused)
            "run": run_id,
        }
        self._active.discard(run_id)
        if not self._write_ends():
            warnings.warn(
                f"the end of run {run_id} could not be written to {self.name} yet (the "
                "log cannot be written now: free some space); it is written once it can be",
                DurableWarning,
                stacklevel=user_stacklevel(),
            )
            self._retry_ends()

    def _write_ends(self) -> bool:
        """Write the kept ends of runs in one transaction; whether all are written."""
        with self._lock:
            if not self._unended:
                return True
            try:
                with self.transaction() as conn:
                    for params in self._unended.values():
                        conn.execute(self.END_RUN, params)
                        conn.execute(INDEX_RUN, params)
            except (LogFileError, *self.ERRORS) as exc:  # (closed meanwhile)
                log.warning("cannot record the end of runs of %s yet: %s", self.path, exc)
                return False
            for run_id in self._unended:  # held until its end is written: never seen crashed
                self._release(run_id)
            self._unended.clear()
            return True

    def _retry_ends(self) -> None:
        """Try the kept ends again in the background until they are written (or closed)."""

        def again() -> None:
            pause = 0.5
            while self._unended and not self._closed.wait(pause):
                if self._write_ends():
                    return
                pause = min(2 * pause, 30.0)

        with self._lock:
            if self._retry is None or not self._retry.is_alive():
                self._retry = threading.Thread(
                    target=again, name=f"durable-nb run ends {self.name}", daemon=True
                )
                self._retry.start()

    def run_environment(self, run_id: int) -> dict[str, str]:
        """The package versions a run recorded ({} when it recorded none)."""
        row = self.conn.execute("SELECT environment FROM runs WHERE id = ?", (run_id,)).fetchone()
        return json.loads(row[0]) if row and row[0] else {}

    def run(self, run_id: int) -> RunRecord:
        """One run by id."""
        row = self.conn.execute(f"SELECT {RUN_COLUMNS} FROM runs WHERE id = ?", (run_id,))
        return _run(row.fetchone())

    def runs(self, workflow: str | None = None) -> list[RunRecord]:
        """All runs, oldest first, optionally of one workflow."""
        if workflow is None:
            rows = self.conn.execute(f"SELECT {RUN_COLUMNS} FROM runs ORDER BY id")
        else:
            rows = self.conn.execute(
                f"SELECT {RUN_COLUMNS} FROM runs WHERE workflow = ? ORDER BY id", (workflow,)
            )
        return [_run(r) for r in rows]

    def last_run(self, workflow: str) -> RunRecord | None:
        """The newest run of ``workflow`` that is not this process's current one."""
        row = self.conn.execute(
            f"SELECT {RUN_COLUMNS} FROM runs WHERE workflow = ? ORDER BY id DESC LIMIT 1",
            (workflow,),
        ).fetchone()
        return _run(row) if row else None

    def workflows(self) -> list[str]:
        """Names of the workflows in the log, in order of first run."""
        rows = self.conn.execute("SELECT workflow FROM runs GROUP BY workflow ORDER BY min(id)")
        return [r[0] for r in rows]

    # -- steps -----------------------------------------------------------------------

    def completed_steps(self, workflow: str) -> dict[StepKey, dict[str, StoredStep]]:
        """Completed records of ``workflow``: per step key, the newest one per code digest."""
        columns = (
            "scope, name, args_digest, occurrence, id, run_id, code_digest, result_format, "
            "CASE WHEN length(result) <= :preload THEN result END, result_blob, "
            "stdout IS NOT NULL OR output IS NOT NULL, signature"
        )
        rows = self.conn.execute(
            workflow_rows(columns, "AND status = 'completed'"),
            {"workflow": workflow, "preload": PRELOAD_MAX_BYTES},
        )
        completed: dict[StepKey, dict[str, StoredStep]] = {}
        for r in rows:
            completed.setdefault((r[0], r[1], r[2], r[3]), {})[r[6]] = StoredStep(*r[4:])
        return completed

    def step_rows(
        self, columns: str, workflow: str | None = None, run: int | None = None, *,
        status: str | None = None, since: float | None = None,
    ) -> list[tuple[Any, ...]]:  # fmt: skip
        """Rows of steps (``columns``), all, or a workflow's, or a run's, in id order; only
        those of ``status`` / started at or after ``since`` (Unix time) when given."""
        params: dict[str, Any] = {
            "workflow": workflow,
            "run": run,
            "status": status,
            "since": since,
        }
        extra = "".join(
            condition
            for condition, value in (
                ("AND run_id = :run ", run),
                ("AND status = :status ", status),
                ("AND started_at >= :since ", since),
            )
            if value is not None
        )
        if workflow is not None:
            return self.conn.execute(workflow_rows(columns, extra), params).fetchall()
        if run is not None:  # its rows lie from its first_step on
            return self.conn.execute(
                f"SELECT {columns} FROM steps WHERE id >= coalesce((SELECT first_step FROM runs "
                f"WHERE id = :run), 0) {extra} ORDER BY id",
                params,
            ).fetchall()
        sql, rest = self.all_steps_query(columns, status=status, since=since)
        return self.conn.execute(sql, [-(1 << 63), (1 << 63) - 1, *rest]).fetchall()

    def step_ids(self) -> tuple[int, int]:
        """The ids of steps rows lie in ``[lo, hi)`` (an empty range for an empty log)."""
        lo, hi = self.conn.execute(  # two subqueries: each reads one end of the rowid b-tree
            "SELECT (SELECT min(id) FROM steps), (SELECT max(id) FROM steps)"
        ).fetchone()
        return (0, 0) if lo is None else (lo, hi + 1)

    @staticmethod
    def all_steps_query(
        columns: str, *, status: str | None = None, since: float | None = None
    ) -> tuple[str, list[Any]]:
        """SQL for the steps rows (``columns``) of the whole log with ids in ``[?, ?)``, in
        id order, of ``status`` / started at or after ``since``, and its other parameters
        (positional, for any SQLite client)."""
        extra = "".join(
            condition
            for condition, value in (("AND status = ? ", status), ("AND started_at >= ? ", since))
            if value is not None
        )
        sql = f"SELECT {columns} FROM steps WHERE id >= ? AND id < ? {extra}ORDER BY id"
        return sql, [value for value in (status, since) if value is not None]

    def experiment_rows(
        self, workflow: str | None, step: str | None, *, completed: bool
    ) -> list[tuple[Any, ...]]:
        """The calls of a workflow (or of a step, or all), in id order: (workflow, scope,
        name, args digest, occurrence, run, status, error, params JSON, metrics JSON,
        started, ended); only completed records when ``completed``."""
        where, values = self._calls_filter(workflow, step, completed)
        return self.conn.execute(
            "SELECT workflow, scope, name, args_digest, occurrence, run_id, status, "
            "error_type || ': ' || error_message, params, metrics, started_at, ended_at "
            f"FROM steps WHERE {where} ORDER BY id",
            values,
        ).fetchall()

    def _calls_filter(
        self, workflow: str | None, step: str | None, completed: bool
    ) -> tuple[str, dict[str, Any]]:
        where = ["TRUE"]
        if workflow is not None:
            where.append("steps." + IN_WORKFLOW)
        if step is not None:
            where.append("steps.name = :step")
        if completed:
            where.append("steps.status = 'completed'")
        return " AND ".join(where), {"workflow": workflow, "step": step}

    def run_calls(self, run_id: int) -> list[tuple[Any, ...]]:
        """The step calls a run made or replayed: (scope, name, args digest, occurrence,
        args repr, metrics JSON, 'ran' | 'replayed'), in id order."""
        columns = "scope, name, args_digest, occurrence, args_repr, metrics"
        ran = self.conn.execute(
            f"SELECT id, {columns}, 'ran' FROM steps WHERE id >= coalesce((SELECT first_step "
            "FROM runs WHERE id = :run), 0) AND run_id = :run AND status = 'completed'",
            {"run": run_id},
        ).fetchall()
        replayed = self.conn.execute(
            f"SELECT id, {columns}, 'replayed' FROM steps WHERE id IN ({self.REPLAYED_BY_RUN})",
            {"run": run_id},
        ).fetchall()
        return [row[1:] for row in sorted(ran + replayed)]

    def step_payload(self, step_id: int) -> bytes:
        """The inline serialized result of one step."""
        row = self.conn.execute("SELECT result FROM steps WHERE id = ?", (step_id,)).fetchone()
        return row[0]

    def step_output(self, step_id: int) -> list[tuple[Any, ...]]:
        """What one step showed, as events (see ``capture``)."""
        stdout, output = self.conn.execute(
            "SELECT stdout, output FROM steps WHERE id = ?", (step_id,)
        ).fetchone()
        if output:
            return [tuple(event) for event in json.loads(output)]
        return [("stdout", stdout)] if stdout else []

    def insert(self, row: StepRow | CompletedRow) -> int:
        """Record one finished attempt of a step in a single commit."""
        if type(row) is CompletedRow:  # bound as a plain tuple: 2 us less than a NamedTuple
            return self.write(INSERT_COMPLETED, tuple(row))
        return self.insert_step(row)  # type: ignore[arg-type]

    def remember_digest(self, digest: str, document: Callable[[], str]) -> None:
        """Store what ``digest`` covers (``document()``, JSON) unless already stored."""
        if digest in self._digests:
            return
        sql = "INSERT INTO digests (digest, doc) VALUES (?, ?) ON CONFLICT DO NOTHING"
        self.write(sql, (digest, document()))
        self._digests.add(digest)

    def digest_document(self, digest: str) -> dict[str, Any] | None:
        """What a stored digest covers, or None for a record older than dependency digests."""
        row = self.conn.execute("SELECT doc FROM digests WHERE digest = ?", (digest,)).fetchone()
        return json.loads(row[0]) if row else None

    def step_names(self, workflow: str) -> list[str]:
        """The names of the steps with completed records in ``workflow``."""
        rows = self.conn.execute(
            "SELECT DISTINCT name FROM steps WHERE workflow = ? AND status = 'completed' "
            "ORDER BY name",
            (workflow,),
        )
        return [r[0] for r in rows]

    def last_used(self, workflow: str, step: str) -> list[tuple[int, str]]:
        """(id, digest) of the completed records of a step that its workflow used last: per
        call, the record the newest run replayed or made."""
        rows = self.conn.execute(self.LAST_USED, {"workflow": workflow, "step": step}).fetchall()
        newest: dict[tuple[str, str, int], tuple[tuple[int, int], int, str]] = {}
        for step_id, digest, scope, args, occurrence, used in rows:
            key = (scope, args, occurrence)
            if key not in newest or (used, step_id) > newest[key][0]:
                newest[key] = ((used, step_id), step_id, digest)
        return sorted((step_id, digest) for _, step_id, digest in newest.values())

    def accept(
        self,
        workflow: str,
        step: str,
        changes: list[tuple[int, str, str]],
        documents: dict[str, str],
        who: str,
    ) -> int:
        """Give records new digests, ``changes`` as (id, old digest, new digest), with the
        new digests' documents; the replaced digests stay in the note this writes."""
        with self.transaction() as conn:
            conn.executemany(
                "UPDATE steps SET code_digest = ? WHERE id = ?",
                [(new, step_id) for step_id, _, new in changes],
            )
            conn.executemany(
                "INSERT INTO digests (digest, doc) VALUES (?, ?) "
                "ON CONFLICT (digest) DO UPDATE SET doc = excluded.doc",
                list(documents.items()),
            )
            old = sorted({d for _, d, _ in changes})
            conn.execute(
                "INSERT INTO notes (ts, workflow, step, kind, detail) VALUES (?,?,?,?,?)",
                (
                    time.time(),
                    workflow,
                    step,
                    "accept",
                    f"{len(changes)} records accepted for digests {', '.join(sorted(documents))}"
                    f" by {who}; their digests were {', '.join(old) or 'none'}",
                ),
            )
        self._digests.update(documents)
        return len(changes)

    def insert_step(self, row: StepRow) -> int:
        """Record one finished attempt of a step in a single commit."""
        return self.write(INSERT_STEP, tuple(row))

    def step_value_ref(
        self, workflow: str, step: str, occurrence: int | None = None, args: str | None = None
    ) -> tuple[str, bytes | None, str | None, bytes | None]:
        """(format, inline bytes, blob digest, signature) of the newest completed call of a
        step, optionally the call with this occurrence and argument text (``args_repr``)."""
        sql = (
            "SELECT result_format, result, result_blob, signature FROM steps WHERE workflow = ? "
            "AND name = ? AND status = 'completed'"
        )
        params: tuple[Any, ...] = (workflow, step)
        if occurrence is not None:
            sql += " AND occurrence = ?"
            params += (operator.index(occurrence),)  # numpy integers too
        if args is not None:
            sql += " AND args_repr = ?"
            params += (args,)
        row = self.conn.execute(sql + " ORDER BY id DESC LIMIT 1", params).fetchone()
        if row is None:
            raise LookupError(f"no completed step {step!r} in workflow {workflow!r}")
        return row

    # -- cells -----------------------------------------------------------------------

    def save_cell(
        self, run_id: int, variables: bytes, outputs: bytes, blobs: list[str], steps: str,
        modules: str = "{}", signature: bytes | None = None,
    ) -> None:  # fmt: skip
        """Keep what a completed cell changed and displayed, and the step calls it used,
        for a later cell skip; older snapshots of the same workflow, which no skip can use
        (skip restores the newest run's), are dropped, and ``collect_blobs`` frees theirs."""
        with self.transaction() as conn:
            conn.execute(
                "INSERT INTO cells (run_id, variables, outputs, blobs, steps, modules, "
                "signature) VALUES (?,?,?,?,?,?,?) ON CONFLICT (run_id) DO UPDATE SET "
                "variables = excluded.variables, outputs = excluded.outputs, "
                "blobs = excluded.blobs, steps = excluded.steps, modules = excluded.modules, "
                "signature = excluded.signature",
                (run_id, variables, outputs, " ".join(blobs), steps, modules, signature),
            )
            conn.execute(
                "DELETE FROM cells WHERE run_id < ? AND run_id IN (SELECT id FROM runs WHERE "
                "workflow = (SELECT workflow FROM runs WHERE id = ?))",
                (run_id, run_id),
            )

    def cell(self, run_id: int) -> CellRecord | None:
        """What run ``run_id`` of a cell left, if it was saved."""
        row = self.conn.execute(
            "SELECT run_id, variables, outputs, steps, modules, signature FROM cells "
            "WHERE run_id = ?",
            (run_id,),
        ).fetchone()
        return CellRecord(*row) if row else None

    # -- notes and forgetting ------------------------------------------------------------

    def note(
        self,
        kind: str,
        detail: str,
        *,
        workflow: str | None = None,
        run_id: int | None = None,
        step: str | None = None,
    ) -> None:
        """Add an event that is not a run or step state change."""
        self.write(
            "INSERT INTO notes (ts, workflow, run_id, step, kind, detail) VALUES (?,?,?,?,?,?)",
            (time.time(), workflow, run_id, step, kind, detail),
        )

    def forget(self, workflow: str, step: str | None = None) -> int:
        """Drop a workflow's records (or one step's) so that they run again; returns a count."""
        with self.transaction() as conn:
            if step is None:
                # foreign_keys is off (it costs every checkpoint): delete children by hand.
                done = "SELECT id FROM runs WHERE workflow = ? AND status != 'running'"
                conn.execute(
                    "DELETE FROM workflow_steps WHERE workflow = ? AND step IN (SELECT id FROM "
                    f"steps WHERE run_id IN ({done}))",
                    (workflow, workflow),
                )
                conn.execute(f"DELETE FROM steps WHERE run_id IN ({done})", (workflow,))
                conn.execute(f"DELETE FROM cells WHERE run_id IN ({done})", (workflow,))
                conn.execute(f"DELETE FROM checkpoints WHERE run_id IN ({done})", (workflow,))
                conn.execute(f"DELETE FROM checkpoint_states WHERE run_id IN ({done})", (workflow,))
                count = conn.execute(
                    "DELETE FROM runs WHERE workflow = ? AND status != 'running'", (workflow,)
                ).rowcount
                detail = f"forgot {count} runs"
            else:
                conn.execute(
                    "DELETE FROM workflow_steps WHERE workflow = ? AND step IN (SELECT id FROM "
                    "steps WHERE workflow = ? AND name = ?)",
                    (workflow, workflow, step),
                )
                count = conn.execute(
                    "DELETE FROM steps WHERE workflow = ? AND name = ?", (workflow, step)
                ).rowcount
                for table in ("checkpoints", "checkpoint_states"):
                    conn.execute(
                        f"DELETE FROM {table} WHERE workflow = ? AND name = ?", (workflow, step)
                    )
                # The cell's saved outputs depend on the step: the cell must run again.
                conn.execute(
                    "DELETE FROM cells WHERE run_id IN (SELECT id FROM runs WHERE workflow = ?)",
                    (workflow,),
                )
                detail = f"forgot {count} records of step {step}"
            conn.execute(
                "INSERT INTO notes (ts, workflow, step, kind, detail) VALUES (?,?,?,?,?)",
                (time.time(), workflow, step, "forget", detail),
            )
        return count
