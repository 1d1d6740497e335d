"""The log in one SQLite file: ``Store`` is ``LogStore``'s I/O for SQLite (with
``connection``, which opens and migrates the file), large values in a blob folder beside it.

A step's write is one INSERT on a shared cursor in autocommit mode; ``transaction`` is
``BEGIN IMMEDIATE``; a run's owner is a process of this machine (``owner``); a thread of the
log's own checkpoints the WAL (``checkpoint``).
"""

from __future__ import annotations

import os
import sqlite3
import time
from pathlib import Path
from typing import Any

from . import owner as owners
from .blobs import BlobStore, blob_folder
from .checkpoint import Checkpointer
from .connection import connect, fail
from .logstore import LogStore
from .records import BlobsCollected
from .sql import (
    CHECKPOINT_CALL,
    SAVE_CHECKPOINT_REPLACING,
    end_run,
    last_used,
    referenced_blobs,
)

__all__ = ["Store"]


class Store(LogStore):
    """One durable_nb log file: runs, steps, cells and notes, plus its blob folder."""

    BEGIN = "BEGIN IMMEDIATE"
    ERRORS = (sqlite3.Error,)
    END_RUN = end_run("min")
    REPLAYED_BY_RUN = (
        "SELECT value FROM json_each((SELECT coalesce(replayed_steps, '[]') FROM runs "
        "WHERE id = :run))"
    )
    LAST_USED = last_used(
        "max",
        "SELECT runs.id AS run, CAST(j.value AS INTEGER) AS step FROM runs, "
        "json_each(runs.replayed_steps) AS j WHERE runs.workflow = :workflow "
        "AND runs.replayed_steps IS NOT NULL",
    )
    ISO_TIME = "strftime('%Y-%m-%dT%H:%M:%f', ?, 'unixepoch')"
    SAVE_CHECKPOINT = SAVE_CHECKPOINT_REPLACING
    KEEP_FINISHED = (
        f"UPDATE OR REPLACE checkpoint_states SET done = 1 WHERE {CHECKPOINT_CALL} AND done = 0 "
        "AND keep",
    )

    def __init__(
        self, path: str | os.PathLike[str], *, readonly: bool = False, recover: bool = True,
        conn: Any = None,
    ) -> None:  # fmt: skip
        """Open the log at ``path`` (``readonly``: never written). ``conn``: a connection
        opened elsewhere (a replica read in place: ``path`` is its URL), read-only; it needs
        ``execute(sql, params)`` with ``fetchall()`` / ``fetchone()``, and ``close()``."""
        self.local = conn is None  # a file of this machine (not a replica read in place)
        self.path = Path(path).expanduser().absolute() if self.local else Path(path)
        self.name = self.path.name
        self.readonly = readonly = readonly or not self.local
        self.blobs = BlobStore(blob_folder(self.path))
        self.conn = connect(self.path, readonly=readonly) if self.local else conn
        self._cursor = self.conn.cursor() if self.local else None  # writes share one (+1 us
        # a statement with a cursor of its own)
        self._checkpointer = None if readonly else Checkpointer(self.path)
        self._begin(recover=recover)

    def _stop(self) -> None:
        if self._checkpointer is not None:
            self._checkpointer.stop()

    def _fail(self, exc: BaseException, action: str) -> Exception:
        return fail(self.path, exc, action)  # type: ignore[arg-type]

    def write(self, sql: str, params: Any, *, changed: bool = False) -> int:
        """One statement (of ``sql``), one atomic commit (autocommit mode); the new rowid,
        if any (with ``changed``: how many rows it changed)."""
        try:
            with self._lock:
                cursor = self._cursor.execute(sql, params)
                return cursor.rowcount if changed else cursor.lastrowid or 0
        except sqlite3.Error as exc:
            raise fail(self.path, exc, "write") from None

    def _held(self, run_id: int, owner: str) -> bool:
        if owner == self._me:
            return run_id in self._active
        return owners.is_alive(owner)

    def async_twin(self) -> Any:
        """A store for async steps' writes: aiosqlite's thread, the same file."""
        from .store_async import AsyncStore

        return AsyncStore(self.path)

    def sizes(self) -> tuple[int, int, int, int]:
        """(log bytes, WAL bytes, blob bytes, blob files) on disk."""
        log = self.path.stat().st_size if self.path.exists() else 0
        wal = Path(f"{self.path}-wal")
        wal_size = wal.stat().st_size if wal.exists() else 0
        files = [f.stat().st_size for f in self.blobs.files()]
        return log, wal_size, sum(files), len(files)

    def collect_blobs(self, grace: float = 60.0) -> BlobsCollected:
        """Delete the blob files no row refers to, once older than ``grace`` seconds.

        They are left by ``forget`` and by processes killed between writing a blob and
        committing its row. Runs in a write transaction, so no row commits meanwhile; a blob
        written (or reused) for a row still to commit is younger than ``grace`` and stays.
        Replicas keep their copies (older restore points may need them).
        """
        cutoff = time.time() - grace
        removed = size = 0
        with self.transaction() as conn:
            used = referenced_blobs(conn)
            for path in self.blobs.files():
                if path.name in used:
                    continue
                try:
                    info = path.stat()
                    if info.st_mtime > cutoff:
                        continue
                    path.unlink()
                except FileNotFoundError:
                    continue
                removed += 1
                size += info.st_size
            if removed:
                conn.execute(
                    "INSERT INTO notes (ts, kind, detail) VALUES (?, 'collect blobs', ?)",
                    (time.time(), f"removed {removed} unreferenced blob files ({size} bytes)"),
                )
        return BlobsCollected(removed, size)
