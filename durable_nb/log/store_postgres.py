"""The log in a PostgreSQL database: ``PostgresStore`` is ``LogStore``'s I/O for psycopg 3.

What differs from SQLite, and only that, is here:

- SQL: the shared statements are written with ``?`` and ``:name`` parameters; ``_translate``
  turns them into psycopg's ``%s`` / ``%(name)s`` (outside string literals), and adds
  ``RETURNING id`` to an insert into a table with ids (psycopg has no ``lastrowid``).
- Ownership: a run is held by a session-level advisory lock taken in ``begin_run``'s
  transaction; a kernel that dies anywhere loses its session and the lock with it, so the
  next opener finds the run's lock free and marks it crashed. Two openers of one workflow
  serialize on a transaction-level lock of its name.
- Large values: in table ``blobs`` (chunks of ``CHUNK`` bytes), written in the transaction
  of the row that points to them (``DatabaseBlobs`` keeps them until then), so that a backup
  of the database is the whole log.
- Credentials: never in the URL (refused); libpq reads ``PGPASSWORD``, ``~/.pgpass`` or
  ``PGSERVICE``.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from functools import lru_cache
from typing import Any

from ..errors import BlobError, LogFileError
from .blobs import pack, unpack
from .logstore import LogStore
from .records import BlobsCollected, CheckpointRow
from .schema_postgres import LOCK_KEY, MIGRATIONS, SCHEMA, SCHEMA_VERSION
from .sql import end_run, last_used, referenced_blobs

try:
    import psycopg
    from psycopg import conninfo
except ImportError:  # pragma: no cover - the extra is not installed
    psycopg = None  # type: ignore[assignment]

__all__ = ["PostgresStore"]

log = logging.getLogger(__name__)

_RUN_KEY = 0x444E4231 << 32  # advisory lock of run n: _RUN_KEY + n ("DNB1")
_WORKFLOW_KEY = 0x444E4232  # with hashtext(workflow): begin_run's look at a workflow
_ID_TABLES = ("runs", "steps", "notes", "checkpoint_states", "checkpoints")
_TOKENS = re.compile(r"'(?:[^']|'')*'|\?|(?<![:\w]):([A-Za-z_]\w*)|%")


@lru_cache(maxsize=512)
def _translate(sql: str) -> str:
    """``sql`` with psycopg's placeholders (and ``RETURNING id`` on an insert with ids)."""

    def token(match: re.Match[str]) -> str:
        text = match.group(0)
        if text.startswith("'"):
            return text.replace("%", "%%")
        if text == "?":
            return "%s"
        if text == "%":
            return "%%"
        return f"%({match.group(1)})s"

    out = _TOKENS.sub(token, sql)
    insert = re.match(r"\s*INSERT INTO (\w+)", out)
    if insert and insert.group(1) in _ID_TABLES and "RETURNING" not in out:
        out += " RETURNING id"
    return out


if psycopg is not None:

    class _Cursor(psycopg.Cursor):  # type: ignore[misc]
        """A cursor whose ``lastrowid`` is the id an insert returned."""

        @property
        def lastrowid(self) -> int | None:
            row = self.fetchone()
            return row[0] if row else None


class _Connection:
    """A psycopg connection that takes the log's shared SQL (``?``, ``:name``)."""

    def __init__(self, pg: Any) -> None:
        self.pg = pg

    def execute(self, sql: str, params: Any = None) -> Any:
        return self.pg.execute(_translate(sql), params if params is not None else ())

    def executemany(self, sql: str, seq: Iterable[Any]) -> Any:
        cursor = self.pg.cursor()
        cursor.executemany(_translate(sql), list(seq))
        return cursor

    @property
    def in_transaction(self) -> bool:
        return self.pg.info.transaction_status != psycopg.pq.TransactionStatus.IDLE

    def close(self) -> None:
        self.pg.close()


class DatabaseBlobs:
    """Large values in table ``blobs``: ``write`` keeps a blob until the store's next write
    (or transaction) puts it in the same transaction as the row that points to it."""

    CHUNK = 32 << 20  # bytes per row

    def __init__(self, store: PostgresStore) -> None:
        self._store = store
        self._pending: dict[str, bytes] = {}
        self.folder = f"{store.name} (table blobs)"

    def write(self, segments: Iterable[bytes | memoryview]) -> str:
        """Keep ``segments`` for the next commit; their digest."""
        digest, chunks = pack(segments)
        if digest not in self._pending:
            self._pending[digest] = b"".join(chunks)
        return digest

    def flush(self, conn: Any) -> dict[str, bytes]:
        """Insert the kept blobs through ``conn`` (in a transaction); those it took."""
        taken = {}
        for digest in list(self._pending):
            data = self._pending.pop(digest, None)
            if data is None:
                continue
            taken[digest] = data
            conn.executemany(
                "INSERT INTO blobs (digest, seq, data) VALUES (?, ?, ?) ON CONFLICT DO NOTHING",
                [
                    (digest, i, data[start : start + self.CHUNK])
                    for i, start in enumerate(range(0, max(len(data), 1), self.CHUNK))
                ],
            )
        return taken

    def keep(self, taken: dict[str, bytes]) -> None:
        """Blobs taken by a transaction that rolled back: kept for the next one."""
        for digest, data in taken.items():
            self._pending.setdefault(digest, data)

    @property
    def pending(self) -> bool:
        return bool(self._pending)

    def read(self, digest: str) -> list[memoryview]:
        """The segments of a blob; ``BlobError`` if missing or damaged."""
        data = self._pending.get(digest)
        if data is None:
            rows = self._store.conn.execute(
                "SELECT data FROM blobs WHERE digest = ? ORDER BY seq", (digest,)
            ).fetchall()
            if not rows:
                raise BlobError(
                    f"blob {digest} is missing from {self._store.name}; the step will run again",
                    digest=digest,
                )
            data = rows[0][0] if len(rows) == 1 else b"".join(r[0] for r in rows)
        return unpack(bytearray(data), digest, f"{digest} in {self._store.name}")


class _ThreadTwin:
    """The async twin on PostgreSQL: the store's own writes, on a worker thread."""

    def __init__(self, store: PostgresStore) -> None:
        self.store = store

    async def open(self) -> _ThreadTwin:
        return self

    async def insert(self, row: Any) -> int:
        return await asyncio.to_thread(self.store.insert, row)

    async def close(self) -> None:
        return None

    def stop(self) -> None:
        return None


def _version(pg: Any) -> int:
    """The schema version of the log in ``pg``'s database (0: none yet)."""
    found = pg.execute(
        "SELECT 1 FROM information_schema.tables WHERE table_schema = %s AND table_name = 'meta'",
        (SCHEMA,),
    ).fetchone()
    if not found:
        return 0
    return int(pg.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone()[0])


def _one_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


class PostgresStore(LogStore):
    """One durable_nb log in a PostgreSQL database (schema ``durable_nb``)."""

    BEGIN = "BEGIN"
    ERRORS = (psycopg.Error,) if psycopg is not None else ()
    END_RUN = end_run("least")
    REPLAYED_BY_RUN = (
        "SELECT CAST(jsonb_array_elements_text(CAST(coalesce(replayed_steps, '[]') AS jsonb)) "
        "AS bigint) FROM runs WHERE id = :run"
    )
    LAST_USED = last_used(
        "greatest",
        "SELECT runs.id AS run, CAST(j.value AS bigint) AS step FROM runs, "
        "jsonb_array_elements_text(CAST(runs.replayed_steps AS jsonb)) AS j(value) "
        "WHERE runs.workflow = :workflow AND runs.replayed_steps IS NOT NULL",
    )
    ISO_TIME = "to_char(to_timestamp(?) AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US')"
    SAVE_CHECKPOINT = (
        f"INSERT INTO checkpoint_states ({', '.join(CheckpointRow._fields)}) "
        f"VALUES ({', '.join('?' * len(CheckpointRow._fields))}) "
        "ON CONFLICT (workflow, name, args_digest, scope, occurrence, done) DO UPDATE SET "
        + ", ".join(
            f"{f} = excluded.{f}"
            for f in CheckpointRow._fields
            if f not in ("workflow", "name", "args_digest", "scope", "occurrence", "done")
        )
    )
    KEEP_FINISHED = (
        # the older kept state of the call, if this one is kept too (SQLite: OR REPLACE)
        "DELETE FROM checkpoint_states o WHERE workflow = ? AND name = ? AND args_digest = ? "
        "AND scope = ? AND occurrence = ? AND done = 1 AND EXISTS (SELECT 1 FROM "
        "checkpoint_states k WHERE k.workflow = o.workflow AND k.name = o.name AND "
        "k.args_digest = o.args_digest AND k.scope = o.scope AND k.occurrence = o.occurrence "
        "AND k.done = 0 AND k.keep)",
        "UPDATE checkpoint_states SET done = 1 WHERE workflow = ? AND name = ? AND "
        "args_digest = ? AND scope = ? AND occurrence = ? AND done = 0 AND keep",
    )

    def __init__(self, url: str, *, readonly: bool = False, recover: bool = True) -> None:
        """Open (and, unless ``readonly``, create or migrate) the log in the database at
        ``url`` (``postgresql://user@host:port/dbname``; the password comes from
        ``PGPASSWORD``, ``~/.pgpass`` or ``PGSERVICE``, never from the URL)."""
        if psycopg is None:
            raise LogFileError("a PostgreSQL log needs psycopg 3: pip install 'psycopg[binary]'")
        self.path = url
        try:
            info = conninfo.conninfo_to_dict(url)
        except psycopg.Error as exc:
            raise LogFileError(f"not a PostgreSQL URL: {_one_line(exc)}") from None
        if info.get("password"):
            raise LogFileError(
                "the log's URL holds a password: remove it from the URL (and the notebook) "
                "and give it in PGPASSWORD, ~/.pgpass or a PGSERVICE entry"
            )
        self.name = f"{info.get('dbname', '')}@{info.get('host', 'localhost')}"
        self.readonly = readonly
        self.local = False  # (not a file of this machine)
        self.blobs = DatabaseBlobs(self)
        options = f"-c search_path={SCHEMA}"
        if readonly:
            options += " -c default_transaction_read_only=on"
        try:
            pg = psycopg.connect(
                url, autocommit=True, options=options, cursor_factory=_Cursor,
                application_name="durable_nb",
            )  # fmt: skip
        except psycopg.Error as exc:
            raise LogFileError(
                f"cannot open the PostgreSQL log {url}: {_one_line(exc)} (is the server up, "
                "and the password in PGPASSWORD or ~/.pgpass?)"
            ) from None
        self.conn = _Connection(pg)
        try:
            self._migrate(pg)
        except BaseException:
            pg.close()
            raise
        self._begin(recover=recover)

    def _migrate(self, pg: Any) -> None:
        """Create the log's schema or bring it to this version, once among openers."""
        version = _version(pg)
        if version > SCHEMA_VERSION:
            raise LogFileError(
                f"the log in {self.path} has schema {version}, newer than this durable_nb "
                f"({SCHEMA_VERSION}): upgrade durable_nb"
            )
        if version == SCHEMA_VERSION:
            return
        if self.readonly:
            raise LogFileError(f"no durable_nb log in {self.path} (no schema {SCHEMA} there)")
        with pg.transaction():
            pg.execute("SELECT pg_advisory_xact_lock(%s)", (LOCK_KEY,))
            pg.execute(f"CREATE SCHEMA IF NOT EXISTS {SCHEMA}")
            for script in MIGRATIONS[_version(pg) :]:
                pg.execute(script)
            pg.execute(
                "INSERT INTO meta (key, value) VALUES ('schema', %s) "
                "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (str(SCHEMA_VERSION),),
            )

    def _fail(self, exc: BaseException, action: str) -> LogFileError:
        return LogFileError(f"cannot {action} the PostgreSQL log {self.path}: {_one_line(exc)}")

    @contextmanager
    def transaction(self) -> Iterator[Any]:
        """BEGIN ... COMMIT with the blobs written since the last commit, a SAVEPOINT when
        nested; rollback on any exception."""
        with self._lock, super().transaction() as conn:
            taken = self.blobs.flush(conn) if self._depth == 1 else {}
            try:
                yield conn
            except BaseException:
                self.blobs.keep(taken)
                raise

    def write(self, sql: str, params: Any, *, changed: bool = False) -> int:
        """One statement, one commit (with the blobs written since the last one); the new
        row's id (with ``changed``: how many rows it changed)."""
        with self._lock:
            if self.blobs.pending and self._depth == 0:
                with self.transaction() as conn:
                    cursor = conn.execute(sql, params)
            else:
                try:
                    cursor = self.conn.execute(sql, params)
                except psycopg.Error as exc:
                    raise self._fail(exc, "write") from None
            if changed:
                return cursor.rowcount
            return (cursor.lastrowid or 0) if cursor.description else 0

    # -- owners --------------------------------------------------------------------------

    def _claim(self, conn: Any, workflow: str) -> None:
        conn.execute("SELECT pg_advisory_xact_lock(?, hashtext(?))", (_WORKFLOW_KEY, workflow))

    def _hold(self, conn: Any, run_id: int) -> None:
        conn.execute("SELECT pg_advisory_lock(?)", (_RUN_KEY + run_id,))

    def _release(self, run_id: int) -> None:
        try:
            with self._lock:
                self.conn.execute("SELECT pg_advisory_unlock(?)", (_RUN_KEY + run_id,))
        except psycopg.Error:  # the session is gone: so is the lock
            pass

    def _held(self, run_id: int, owner: str) -> bool:
        """A run is held while its session holds its lock (this store: its own runs)."""
        if owner == self._me and run_id in self._active:
            return True
        with self._lock:
            free = self.conn.execute(
                "SELECT pg_try_advisory_lock(?)", (_RUN_KEY + run_id,)
            ).fetchone()[0]
            if free:
                self.conn.execute("SELECT pg_advisory_unlock(?)", (_RUN_KEY + run_id,))
        return not free

    # -- backend ---------------------------------------------------------------------------

    def async_twin(self) -> _ThreadTwin:
        """Async steps' writes: this store's, on a worker thread."""
        return _ThreadTwin(self)

    def arrow_table(self, sql: str, params: list[Any]) -> Any | None:
        """The rows of ``sql`` through ADBC's PostgreSQL driver (binary COPY into Arrow:
        300,000 steps rows in 1.4 s against 2.1 s through psycopg here), or None without it."""
        try:
            import adbc_driver_postgresql.dbapi as adbc
        except ImportError:
            return None
        numbers = iter(range(1, len(params) + 1))
        text = re.sub(r"\?", lambda _: f"${next(numbers)}", sql)  # (no ? in its literals)
        try:
            with adbc.connect(self.path) as conn, conn.cursor() as cursor:
                cursor.execute(f"SET search_path TO {SCHEMA}")
                cursor.execute(text, params)
                return cursor.fetch_arrow_table()
        except Exception as exc:  # the driver's errors: psycopg reads instead
            log.debug("reading %s through psycopg: %s", self.path, exc)
            return None

    def sizes(self) -> tuple[int, int, int, int]:
        """(the log's tables' bytes, 0, blob bytes, blob count) in the database."""
        log, blob_bytes, count = self.conn.execute(
            "SELECT (SELECT sum(pg_total_relation_size(c.oid)) FROM pg_class c JOIN "
            "pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = ? AND c.relkind = 'r' "
            "AND c.relname != 'blobs'), (SELECT coalesce(sum(length(data)), 0) FROM blobs), "
            "(SELECT count(DISTINCT digest) FROM blobs)",
            (SCHEMA,),
        ).fetchone()
        return int(log or 0), 0, int(blob_bytes), int(count)

    def collect_blobs(self, grace: float = 60.0) -> BlobsCollected:
        """Delete the blobs no row refers to (left by ``forget``). A blob is committed with
        the row that points to it, so none is young: ``grace`` is not needed here."""
        with self.transaction() as conn:
            used = referenced_blobs(conn)
            stored = conn.execute(
                "SELECT digest, sum(length(data)) FROM blobs GROUP BY digest"
            ).fetchall()
            unused = [(digest, size) for digest, size in stored if digest not in used]
            conn.executemany("DELETE FROM blobs WHERE digest = ?", [(d,) for d, _ in unused])
            removed, size = len(unused), sum(int(s) for _, s in unused)
            if removed:
                conn.execute(
                    "INSERT INTO notes (ts, kind, detail) VALUES (?, 'collect blobs', ?)",
                    (time.time(), f"removed {removed} unreferenced blobs ({size} bytes)"),
                )
        return BlobsCollected(removed, size)
