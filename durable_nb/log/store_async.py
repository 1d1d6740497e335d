"""The async twin of ``Store`` for checkpoints of async steps, on aiosqlite.

It shares the SQL text, the pragmas and the error translation with ``store``; it differs
only in I/O: statements run on aiosqlite's thread, so the event loop never waits on a commit
while hundreds of steps are in flight.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import aiosqlite

from .connection import fail, pragmas
from .records import CompletedRow, StepRow
from .sql import INSERT_COMPLETED, INSERT_STEP

__all__ = ["AsyncStore"]


class AsyncStore:
    """Writes step records to a log through an aiosqlite connection."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._conn: aiosqlite.Connection | None = None

    async def open(self) -> AsyncStore:
        """Connect (the file exists and is migrated: the sync ``Store`` opened it first)."""
        try:
            self._conn = await aiosqlite.connect(self.path, isolation_level=None)
            for pragma in pragmas():
                await self._conn.execute(pragma)
        except sqlite3.Error as exc:
            raise fail(self.path, exc, "open") from None
        return self

    async def insert(self, row: StepRow | CompletedRow) -> int:
        """Record one finished attempt of a step in a single commit; returns its id."""
        sql = INSERT_COMPLETED if type(row) is CompletedRow else INSERT_STEP
        return await self._write(sql, tuple(row))  # a plain tuple, as Store.insert binds

    async def _write(self, sql: str, params: tuple[object, ...]) -> int:
        assert self._conn is not None, "AsyncStore.open() first"
        try:
            cursor = await self._conn.execute(sql, params)
        except sqlite3.Error as exc:
            raise fail(self.path, exc, "write") from None
        return cursor.lastrowid or 0

    async def close(self) -> None:
        """Close the connection and its thread."""
        if self._conn is not None:
            conn, self._conn = self._conn, None
            await conn.close()

    def stop(self) -> None:
        """Close without awaiting (from sync code, or when the event loop is gone)."""
        if self._conn is not None:
            conn, self._conn = self._conn, None
            conn.stop()
