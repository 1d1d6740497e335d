"""Checkpoints off the steps' path: a background thread folds the WAL into the log file.

SQLite's automatic checkpoint runs inside whichever commit crosses the WAL threshold, and
costs that commit milliseconds (an fsync); spread over a thousand steps it is a fifth of a
checkpoint's cost. Our connections switch it off (``wal_autocheckpoint = 0``) and this thread
runs a PASSIVE checkpoint (never blocks writers or readers, and is safe beside Litestream)
when the WAL has grown past 4 MiB, and a TRUNCATE one past 64 MiB (several writers at once
can outpace passive ones); ``journal_size_limit`` shrinks the file after a reset.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
from pathlib import Path

__all__ = ["Checkpointer"]

log = logging.getLogger(__name__)

_LIMIT = 16 << 20  # journal_size_limit: what a WAL is shrunk to after a reset


class Checkpointer:
    """Runs ``PRAGMA wal_checkpoint(PASSIVE)`` for one log when its WAL exceeds a size."""

    def __init__(
        self,
        path: Path,
        *,
        interval: float = 0.5,
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
        try:
            while not self._stop.wait(self.interval):
                size = self._wal_size()
                if size <= self.wal_bytes:
                    continue
                if conn is None:
                    conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
                    conn.execute("PRAGMA busy_timeout = 10000")
                    conn.execute(f"PRAGMA journal_size_limit = {_LIMIT}")
                # PASSIVE never blocks. TRUNCATE gives the disk space back: once PASSIVE has
                # copied every frame of a WAL past 16 MiB (it is then quick), or at once past
                # 64 MiB, when writers (several kernels) outpace the passive ones.
                if size > self.truncate_bytes:
                    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
                    continue
                _, frames, copied = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
                if size > _LIMIT and frames == copied:
                    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
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
