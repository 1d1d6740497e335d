"""Checkpoints off the steps' path: a background thread folds the WAL into the log file.

SQLite's automatic checkpoint runs inside whichever commit crosses the WAL threshold, and
costs that commit milliseconds (an fsync); spread over a thousand steps it is a fifth of a
checkpoint's cost. Our connections switch it off (``wal_autocheckpoint = 0``) and this thread
looks at the WAL ten times a second. Past 4 MiB it runs a PASSIVE checkpoint (never blocks
writers or readers, and is safe beside Litestream). A WAL only starts over once every frame
is copied, which PASSIVE never sees while a writer goes on; so past 16 MiB a RESTART follows
it, which copies the few frames left while the writer waits (milliseconds, every few
thousand steps: a 40,000-step burst waited 0.15 s in all where TRUNCATEs had cost 0.36 s).
With nobody writing, or past 64 MiB (several writers outpacing us), TRUNCATE (after the
PASSIVE) gives the disk space back; ``journal_size_limit`` shrinks the file after a reset.
A RESTART or TRUNCATE waits at most 20 ms for readers (it holds new writers meanwhile); after
one that a reader kept busy, none is tried for a second, then two, up to ten, until PASSIVE
finds everything copied again (the reader let go). A look that finds the log busy or locked
tries again at the next one; any other error (a full disk, an I/O error) is said once and
tried again after a pause that doubles up to 30 s, until a checkpoint succeeds: a moment
without space does not stop checkpoints for the life of the process. The thread only opens
the log that exists (it never creates one where the log was moved or restored away).
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
import time
from pathlib import Path
from urllib.parse import quote

__all__ = ["Checkpointer"]

log = logging.getLogger(__name__)

_LIMIT = 16 << 20  # journal_size_limit: what a WAL is shrunk to after a reset
_BUSY_MS = 20  # how long a RESTART or TRUNCATE may keep writers waiting for a reader
_FIRST_WAIT, _MAX_WAIT = 1.0, 10.0  # seconds without blocking checkpoints after a busy one
_RETRY_FIRST, _RETRY_MAX = 0.5, 30.0  # seconds before trying again after an error


class Checkpointer:
    """Folds one log's WAL into the file from a thread, as the module doc says."""

    def __init__(
        self,
        path: Path,
        *,
        interval: float = 0.1,
        wal_bytes: int = 4 << 20,
        truncate_bytes: int = 64 << 20,
    ) -> None:
        self.path = path
        self.interval = interval
        self.wal_bytes = wal_bytes
        self.truncate_bytes = truncate_bytes  # past this, truncate even while writers write
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._run, name=f"durable-nb checkpoint {path.name}", daemon=True
        )
        self._thread.start()

    def _wal_size(self) -> int:
        try:
            return os.stat(f"{self.path}-wal").st_size
        except OSError:
            return 0

    def _run(self) -> None:
        conn: sqlite3.Connection | None = None
        before, folded = -1, False  # the WAL's size at the previous look; folded in since
        hold_off, wait = 0.0, _FIRST_WAIT  # no blocking checkpoint before hold_off
        retry, failing = _RETRY_FIRST, False  # after an error: the pause, and said once
        try:
            while not self._stop.wait(self.interval):
                size = self._wal_size()
                idle, before = size == before, size
                if size <= self.wal_bytes or (idle and folded):
                    continue  # small, or nobody has written since it was all folded in
                try:
                    if conn is None:
                        conn = self._connect()
                    folded, hold_off, wait = self._fold(conn, size, idle, hold_off, wait)
                except sqlite3.OperationalError as exc:
                    if "locked" in str(exc) or "busy" in str(exc):  # at the next look
                        folded = False
                        continue
                    conn = self._failed(conn, exc, failing)
                    failing, folded = True, False
                    if self._stop.wait(retry):
                        break
                    retry = min(2 * retry, _RETRY_MAX)
                    continue
                if failing:
                    log.warning("checkpoints of %s work again", self.path)
                retry, failing = _RETRY_FIRST, False
        except sqlite3.Error as exc:  # not an operational error: the file is not a log now
            log.warning("checkpoints of %s stopped: %s", self.path, exc)
        finally:
            if conn is not None:
                conn.close()

    def _connect(self) -> sqlite3.Connection:
        """The thread's connection, to the log as it exists (``mode=rw`` creates nothing)."""
        uri = f"file:{quote(str(self.path))}?mode=rw"
        conn = sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False)
        conn.execute(f"PRAGMA busy_timeout = {_BUSY_MS}")
        conn.execute(f"PRAGMA journal_size_limit = {_LIMIT}")
        return conn

    def _failed(self, conn: sqlite3.Connection | None, exc: sqlite3.Error, said: bool) -> None:
        """After an error other than busy: say it once, and drop the connection (the next
        try opens it again: the file may have been replaced meanwhile)."""
        if not said:
            log.warning("checkpoints of %s failed (%s); trying again", self.path, exc)
        if conn is not None:
            conn.close()

    def _fold(
        self, conn: sqlite3.Connection, size: int, idle: bool, hold_off: float, wait: float
    ) -> tuple[bool, float, float]:
        """One look's checkpoints: (all folded in, hold_off, wait), as the module doc says."""
        _, frames, copied = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        done = frames == copied
        if done:
            hold_off, wait = 0.0, _FIRST_WAIT  # whoever held a snapshot has let go
        if size > self.truncate_bytes or (idle and size > _LIMIT):
            mode = "TRUNCATE"  # gives the disk space back
        elif size > _LIMIT and not idle:
            mode = "RESTART"  # makes the writer's next commit start the WAL over
        else:
            return done, hold_off, wait
        if time.monotonic() < hold_off:
            return False, hold_off, wait
        busy = conn.execute(f"PRAGMA wal_checkpoint({mode})").fetchone()[0]
        if busy:  # a reader holds a snapshot (Litestream, a viewer): try again later
            return False, time.monotonic() + wait, min(2 * wait, _MAX_WAIT)
        # after a RESTART the file keeps its size until the next commit: if none comes,
        # the next (idle) look truncates it
        return mode == "TRUNCATE", 0.0, _FIRST_WAIT

    def stop(self) -> None:
        """Stop the thread (idempotent)."""
        self._stop.set()
        if self._thread is not threading.current_thread():
            self._thread.join(timeout=5)
