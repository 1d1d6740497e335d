"""Replication of a log with the real Litestream binary.

``replicate()`` runs ``litestream replicate`` as a managed child process for one log (a
``Replicator`` with a state: stopped, running, failed). Blob files go to the replica from a
thread of their own, so a step's commit never waits on the replica (an outage only delays
them); ``stop_replication()`` returns once the replica holds the log's newest change and every
blob, or after a timeout that it reports with what is missing. Restoring is ``restore``'s.
"""

from __future__ import annotations

import atexit
import enum
import json
import logging
import math
import os
import shutil
import sqlite3
import subprocess
import tempfile
import threading
import time
import warnings
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from ..errors import DurableWarning, ReplicationError
from ..log import current_log
from ..log.blobs import blob_folder, set_mirror
from ..log.location import is_database_url
from .litestream import (
    die_with_parent,
    litestream_binary,
    log_path,
    ltx_points,
    replica_url_for,
    spawner,
)
from .replica import Replica, child_environment, parse_url

__all__ = [
    "ReplicationStatus",
    "Replicator",
    "State",
    "lag_seconds",
    "replicate",
    "replication_status",
    "stop_replication",
]

log = logging.getLogger(__name__)


class State(enum.Enum):
    """Lifecycle of a ``Replicator``."""

    STOPPED = "stopped"
    RUNNING = "running"
    FAILED = "failed"


@dataclass(frozen=True)
class ReplicationStatus:
    """What ``%durable replication`` shows."""

    state: str
    url: str | None
    pid: int | None
    replicated_txid: int | None
    replicated_at: datetime | None
    lag_seconds: float | None
    last_error: str | None
    blobs_pending: int = 0  # blob files not on the replica yet (uploaded in the background)

    def __str__(self) -> str:
        if self.url is None:
            return "replication: not started (%durable replicate [URL] starts it)"
        lines = [f"replication: {self.state}" + (f" (pid {self.pid})" if self.pid else "")]
        lines.append(f"replica: {self.url}")
        if self.replicated_txid is not None and self.replicated_at is not None:
            stamp = self.replicated_at.isoformat(timespec="milliseconds")
            lines.append(f"newest replicated: txid {self.replicated_txid} at {stamp}")
        else:
            lines.append("newest replicated: nothing yet")
        if self.lag_seconds is not None:
            lines.append(f"behind the local log by: {self.lag_seconds:.1f} s")
        if self.blobs_pending:
            lines.append(f"blob files waiting to be uploaded: {self.blobs_pending}")
        if self.last_error:
            lines.append(f"last error: {self.last_error}")
        return "\n".join(lines)


class _BlobUploads:
    """Blob files of one log on their way to its replica, copied by a thread of their own:
    a step's commit is local and complete without them (its blob is written before its row,
    on the local disk), and an outage of the replica only delays them. Each is tried again
    after a pause that doubles up to 30 s; ``wait`` says when all are there."""

    def __init__(self, replica: Replica, folder: Path) -> None:
        self.replica = replica
        self.folder = folder
        self.pending: dict[str, Path] = {}  # digest -> file, oldest first
        self.last_error: str | None = None
        self._changed = threading.Condition()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="durable-nb blob uploads",
                                        daemon=True)  # fmt: skip
        self._thread.start()

    def add(self, digest: str, path: Path) -> None:
        """Queue a blob file (``blobs.set_mirror``'s callback: it returns at once)."""
        with self._changed:
            self.pending.setdefault(digest, path)
            self._changed.notify_all()

    def _run(self) -> None:
        pause = 0.5
        while True:
            with self._changed:
                while not self.pending and not self._stopping:
                    self._changed.wait()
                if self._stopping:
                    return
                digest, path = next(iter(self.pending.items()))
            try:
                if path.exists():  # (collected meanwhile: nothing points to it any more)
                    self.replica.put_blob(digest, path)
            except ReplicationError as exc:
                self.last_error = str(exc)
                log.warning("blob %s not uploaded yet: %s", digest, exc)
                with self._changed:
                    self._changed.wait(pause)
                pause = min(2 * pause, 30.0)
                continue
            pause, self.last_error = 0.5, None
            with self._changed:
                self.pending.pop(digest, None)
                self._changed.notify_all()

    def wait(self, timeout: float) -> bool:
        """Wait until every queued blob is on the replica; whether they all are."""
        deadline = time.monotonic() + timeout
        with self._changed:
            self._changed.notify_all()  # a pause after an error ends now: try at once
            while self.pending and not self._stopping:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._changed.wait(left)
            return not self.pending

    def stop(self) -> None:
        """Stop the thread (what is still queued stays on the local disk)."""
        with self._changed:
            self._stopping = True
            self._changed.notify_all()
        self._thread.join(timeout=5)


class Replicator:
    """A ``litestream replicate`` child process for one log."""

    def __init__(
        self, log_path: Path, url: str | None = None, *, sync_interval: str = "1s",
        monitor_interval: str = "1s",
    ) -> None:  # fmt: skip
        self.log_path = log_path
        self.url = replica_url_for(url, log_path)
        self.replica: Replica = parse_url(self.url)
        self.sync_interval = sync_interval
        self.monitor_interval = monitor_interval
        self.state = State.STOPPED
        self.process: subprocess.Popen[bytes] | None = None
        self.log_file = log_path.with_name(log_path.stem + ".litestream.log")
        self._config_dir: str | None = None
        self._lock = threading.Lock()
        self.uploads: _BlobUploads | None = None

    def __repr__(self) -> str:
        return f"<Replicator {self.log_path.name} -> {self.url} {self.state.value}>"

    def start(self) -> Replicator:
        """Check the replica, copy missing blobs, start litestream; refuse a second start."""
        with self._lock:
            if self.state is State.RUNNING and self.process and self.process.poll() is None:
                raise ReplicationError(
                    f"replication of {self.log_path.name} is already running (pid "
                    f"{self.process.pid}) to {self.url}; %durable replication shows its state"
                )
            binary = litestream_binary()
            self.replica.check()
            self._copy_blobs()
            self.uploads = _BlobUploads(self.replica, self._blob_folder())
            set_mirror(self._blob_folder(), self.uploads.add)
            self._config_dir = tempfile.mkdtemp(prefix="durable-nb-litestream-")
            config = Path(self._config_dir) / "litestream.yml"
            db = {
                "path": str(self.log_path),
                "monitor-interval": self.monitor_interval,
                "replica": {
                    **self.replica.litestream_config(),
                    "sync-interval": self.sync_interval,
                },
            }
            config.write_text(json.dumps({"dbs": [db]}))  # JSON is YAML; no ${VAR} in it
            output = open(self.log_file, "ab")  # noqa: SIM115 - handed to the child
            os.chmod(self.log_file, 0o600)
            self.process = spawner.popen(
                [binary, "replicate", "-no-expand-env", "-config", str(config)],
                env=child_environment(), stdout=output, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, preexec_fn=die_with_parent,
            )  # fmt: skip
            output.close()
            time.sleep(0.3)
            if self.process.poll() is not None:
                self.state = State.FAILED
                set_mirror(self._blob_folder(), None)
                self.uploads.stop()
                raise ReplicationError(
                    f"litestream exited at once: {self.last_error() or 'no output'}"
                )
            self.state = State.RUNNING
            log.info("replicating %s to %s (pid %d)", self.log_path, self.url, self.process.pid)
            return self

    def stop(self, timeout: float = 30) -> str | None:
        """Stop litestream once the replica holds the log's newest change and every blob
        file, or after ``timeout`` seconds; returns what the replica lacks then (None when
        it lacks nothing)."""
        with self._lock:
            missing = self._flush(timeout) if self.state is State.RUNNING else None
            set_mirror(self._blob_folder(), None)
            if self.uploads is not None:
                self.uploads.stop()
            proc, self.process = self.process, None
            if proc is not None and proc.poll() is None:
                proc.terminate()  # litestream flushes what it has on SIGTERM
                try:
                    proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
            if self._config_dir:
                shutil.rmtree(self._config_dir, ignore_errors=True)
                self._config_dir = None
            if self.state is State.RUNNING:
                self.state = State.STOPPED
            return missing

    def _flush(self, timeout: float) -> str | None:
        """Wait for the blob uploads and for litestream to ship the newest change (at most
        ``timeout`` seconds in all); what is still missing, or None."""
        deadline = time.monotonic() + timeout
        blobs = self.uploads.wait(timeout) if self.uploads is not None else True
        running = self.process is not None and self.process.poll() is None
        synced = running and self.wait_synced(max(0.0, deadline - time.monotonic()))
        lacks = []
        if not synced:
            lag = self.status().lag_seconds
            lacks.append("the log's newest changes" + (f" ({lag:.1f} s of them)" if lag else ""))
        if not blobs and self.uploads is not None:
            lacks.append(f"{len(self.uploads.pending)} blob files")
        if not lacks:
            return None
        error = (self.uploads.last_error if self.uploads else None) or self.last_error()
        return " and ".join(lacks) + (f" (last error: {error})" if error else "")

    def wait_synced(self, timeout: float = 10) -> bool:
        """Wait until the replica holds the log's newest change; True if it does.

        Litestream stamps a copy after reading what it copies, so a commit made in between
        can look replicated by time alone: the newest replicated point must also stay the
        same for two sync intervals (a missed commit makes a newer one in that time)."""
        deadline = time.monotonic() + timeout
        settle = min(3.0, max(0.3, 2 * _seconds(self.sync_interval)))
        seen: tuple[int | None, float] | None = None  # (newest txid, since when) once caught up
        while time.monotonic() < deadline:
            status = self.status()
            if status.lag_seconds is None or status.lag_seconds > 0:
                seen = None
            elif seen is None or seen[0] != status.replicated_txid:
                seen = (status.replicated_txid, time.monotonic())
            elif time.monotonic() - seen[1] >= settle:
                return True
            time.sleep(0.1)
        return False

    def _blob_folder(self) -> Path:
        return blob_folder(self.log_path)

    def _copy_blobs(self) -> None:
        folder = self._blob_folder()
        if not folder.exists():
            return
        for path in folder.glob("??/*"):
            if not path.name.startswith(".") and not self.replica.blob_exists(path.name):
                self.replica.put_blob(path.name, path)

    def last_error(self) -> str | None:
        """The newest error or warning line of litestream's log, or None."""
        try:
            lines = self.log_file.read_text(errors="replace").splitlines()
        except OSError:
            return None
        for line in reversed(lines[-200:]):
            if "level=ERROR" in line or "level=WARN" in line or line.startswith("ERROR"):
                return line.strip()
        return None

    def status(self) -> ReplicationStatus:
        """Running or not, newest replicated point, lag behind the local log, last error."""
        running = self.process is not None and self.process.poll() is None
        if self.state is State.RUNNING and not running:
            self.state = State.FAILED
        txid = at = None
        unreachable = None
        try:
            self.replica.check()  # fails in seconds where litestream would hang a minute
            points = ltx_points(self.replica, newest_only=True)
        except ReplicationError as exc:
            points, unreachable = [], str(exc)
        if points:
            txid, at = points[0]["txid"], points[0]["time"]
        local = _last_local_change(self.log_path)
        lag = lag_seconds(local, at) if local is not None and at else None
        pending = len(self.uploads.pending) if self.uploads is not None else 0
        error = unreachable or self.last_error() or (self.uploads and self.uploads.last_error)
        return ReplicationStatus(
            self.state.value, self.url, self.process.pid if running and self.process else None,
            txid, at, lag, error, pending,
        )  # fmt: skip


def _seconds(interval: str) -> float:
    """Litestream's interval text (``100ms``, ``1s``, ``2m``) in seconds."""
    for unit, factor in (("ms", 0.001), ("s", 1.0), ("m", 60.0), ("h", 3600.0)):
        if interval.endswith(unit):
            try:
                return float(interval[: -len(unit)]) * factor
            except ValueError:
                break
    return 1.0


def lag_seconds(local: float, replicated: datetime) -> float:
    """How far a replica whose newest point is ``replicated`` is behind a log last changed
    at ``local`` (Unix time), to the millisecond: the resolution of LTX timestamps, which
    litestream takes after the change it copies, so a copy in the same millisecond is 0."""
    return max(0.0, (math.floor(local * 1000) - round(replicated.timestamp() * 1000)) / 1000)


def _last_local_change(path: Path) -> float | None:
    """Unix time of the newest change recorded in a log."""
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            row = conn.execute(
                "SELECT max(t) FROM (SELECT max(started_at) t FROM runs UNION ALL "
                "SELECT max(ended_at) FROM runs UNION ALL SELECT max(ended_at) FROM steps "
                "UNION ALL SELECT max(ts) FROM notes)"
            ).fetchone()
        finally:
            conn.close()
    except sqlite3.Error:
        return None
    return row[0] if row else None


replicators: dict[Path, Replicator] = {}
stopped_by_restore: dict[Path, str] = {}  # log -> the URL it was replicated to


@atexit.register
def _stop_all() -> None:
    """At exit (a kernel's end, a script's, ``durable-nb run``'s): flush, then stop."""
    for replicator in list(replicators.values()):
        missing = replicator.stop(timeout=15)
        if missing:
            log.warning("replication of %s stopped lacking %s", replicator.log_path, missing)


def replicate(
    url: str | None = None, *, log: str | os.PathLike[str] | None = None,
    sync_interval: str = "1s", monitor_interval: str = "1s",
) -> Replicator:  # fmt: skip
    """Start replicating a log (default: the current one) to ``url`` (default: a local file
    replica beside it). Stopped with the interpreter; a second start says it is running."""
    path = log_path(log)
    replicator = Replicator(  # parses the URL: a bad one is refused first
        path, url, sync_interval=sync_interval, monitor_interval=monitor_interval
    )
    current = replicators.get(path)
    if current is not None and current.state is State.RUNNING:
        current.start()  # raises "already running" while its process lives
    replicators[path] = replicator
    stopped_by_restore.pop(path, None)
    return replicator.start()


def replication_status(log: str | os.PathLike[str] | None = None) -> ReplicationStatus:
    """The state of this process's replication of a log."""
    path = log_path(log)
    replicator = replicators.get(path)
    if replicator is None:
        url = stopped_by_restore.get(path)
        why = "stopped by a restore of the log; %durable replicate starts it again"
        return ReplicationStatus("stopped", url, None, None, None, None, why if url else None)
    return replicator.status()


def stop_replication(log: str | os.PathLike[str] | None = None, *, timeout: float = 30) -> None:
    """Stop replicating a log: returns once the replica holds the log's newest change and
    every blob file, or after ``timeout`` seconds, saying in a warning what it lacks."""
    if is_database_url(log if log is not None else current_log.current_store_path()):
        return  # (never replicated by Litestream)
    replicator = replicators.pop(log_path(log), None)
    if replicator is not None:
        _say_missing(replicator, replicator.stop(timeout))


def _say_missing(replicator: Replicator, missing: str | None) -> None:
    if missing:
        warnings.warn(
            f"replication of {replicator.log_path.name} stopped before {replicator.url} held "
            f"everything: it lacks {missing}; start replication again to send them",
            DurableWarning,
            stacklevel=3,
        )
