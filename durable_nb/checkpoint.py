"""Checkpoints off the steps' path: a background thread folds the WAL into the log file.

SQLite's automatic checkpoint runs inside whichever commit crosses the WAL threshold, and
costs that commit milliseconds (an fsync); spread over a thousand steps it is a fifth of a
checkpoint's cost. Our connections switch it off (``wal_autocheckpoint = 0``) and this thread
looks at the WAL ten times a second. Past 4 MiB it runs a PASSIVE checkpoint (never blocks
writers or readers, and is safe beside Litestream). A WAL only starts over once every frame
is copied, which PASSIVE never sees while a writer goes on; so past 16 MiB a RESTART follows
it, which copies the few frames left while the writer waits (milliseconds, every few
thousand steps: a 40,000-step burst waited 0.15 s in all where TRUNCATEs had cost 0.36 s).
With nobody writing, or past 64 MiB (several writers outpacing us), TRUNCATE gives the disk
space back; ``journal_size_limit`` shrinks the file after a reset. A RESTART or TRUNCATE
waits at most 20 ms for readers (it holds new writers meanwhile); one that a reader kept
busy is not tried again for a second, then two, up to a minute.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
import time
from pathlib import Path

__all__ = ["Checkpointer"]

log = logging.getLogger(__name__)

_LIMIT = 16 << 20  # journal_size_limit: what a WAL is shrunk to after a reset
_BUSY_MS = 20  # how long a RESTART or TRUNCATE may keep writers waiting for a reader


class Checkpointer:
    """Runs ``PRAGMA wal_checkpoint(PASSIVE)`` for one log when its WAL exceeds a size."""

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
        self.truncate_bytes = truncate_bytes  # past this, wait for readers and truncate
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
        before, folded = -1, False  # the WAL's size at the previous look; all copied then
        hold_off, wait = 0.0, 1.0  # no blocking checkpoint before then (a reader held one)
        try:
            while not self._stop.wait(self.interval):
                size = self._wal_size()
                idle, before = size == before, size
                if size <= self.wal_bytes or (idle and folded):
                    continue  # small, or nobody writing since it was all copied
                if conn is None:
                    conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
                    # A blocking checkpoint holds new writers while it waits for readers:
                    # never long. One that a reader keeps busy (Litestream holds a read
                    # transaction; so may a viewer) is tried again later, less and less often.
                    conn.execute(f"PRAGMA busy_timeout = {_BUSY_MS}")
                    conn.execute(f"PRAGMA journal_size_limit = {_LIMIT}")
                folded = idle
                blocking = time.monotonic() >= hold_off
                if blocking and (size > self.truncate_bytes or (idle and size > _LIMIT)):
                    mode = "TRUNCATE"
                else:
                    conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
                    mode = "RESTART" if blocking and size > _LIMIT and not idle else ""
                if mode:
                    busy = conn.execute(f"PRAGMA wal_checkpoint({mode})").fetchone()[0]
                    wait = min(2 * wait, 60.0) if busy else 1.0
                    hold_off = time.monotonic() + wait if busy else 0.0
        except sqlite3.Error as exc:  # the log is closed, moved or restored under us: stop
            log.debug("checkpoint of %s stopped: %s", self.path, exc)
        finally:
            if conn is not None:
                conn.close()

    def stop(self) -> None:
        """Stop the thread (idempotent)."""
        self._stop.set()
        if self._thread is not threading.current_thread():
            self._thread.join(timeout=5)
