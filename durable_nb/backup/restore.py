"""Restoring a log from its replica with the real Litestream binary.

``restore_points()`` lists what can be restored; ``restore()`` restores into a temporary
file, checks it (``PRAGMA integrity_check``), fetches its blobs, then replaces the live log
(keeping a dated backup, stopping and reporting its replication meanwhile) or writes a copy.
``pull_copy`` is the fleet's: one replica into a local copy.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sqlite3
import threading
import warnings
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import DurableWarning, ReplicationError
from ..log import current_log
from ..log.blobs import blob_folder
from ..log.connection import connect, fail
from ..log.sql import referenced_blobs
from ..log.store import Store
from . import replication
from .litestream import log_path, ltx_points, replica_url_for, run_litestream
from .replica import Replica, parse_url, private_dirs

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["pull_copy", "restore", "restore_points"]

Progress = Callable[[str], None]


def _replica_for(url: str | None, log: str | os.PathLike[str] | None) -> Replica:
    """The replica to read: ``url``, else where ``replicate()`` puts the log's (reading it
    creates nothing: no current log, no replica folder)."""
    replica = parse_url(replica_url_for(url, log_path(log, open_log=False)))
    replica.check(create=False)
    return replica


def restore_points(
    url: str | None = None, *, log: str | os.PathLike[str] | None = None
) -> pd.DataFrame:
    """What can be restored from a replica, newest first: time (ms), txid, level, size."""
    import pandas as pd

    replica = _replica_for(url, log)
    points = ltx_points(replica)
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
        try:
            when = datetime.fromisoformat(timestamp.replace("Z", "+00:00"))
        except ValueError:
            raise ReplicationError(
                f"timestamp {timestamp!r} is not a time: give ISO 8601 UTC, e.g. "
                "2026-11-21T22:39:04Z (restore_points lists the restore points)"
            ) from None
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
    points = ltx_points(replica)
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


def _check_txid(replica: Replica, txid: int) -> None:
    """A one-line error for a transaction id the replica cannot restore."""
    txids = {p["txid"] for p in ltx_points(replica)}
    if txids and not min(txids) <= txid <= max(txids):
        raise ReplicationError(
            f"no restore point with txid {txid} (the replica has {min(txids)} to "
            f"{max(txids)}); restore_points() (durable-nb restore-points URL) lists them"
        )


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
    run_litestream([*args, replica.litestream_url()], one_thread=one_thread)
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
        connect(temp, adopt=False).close()  # an older schema is migrated here, in the copy
        # (its values, if unsigned, are left to trust: a pulled log is someone else's)
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
    live = log_path(log, open_log=to is None)  # a copy elsewhere opens no log
    target = Path(to).absolute() if to is not None else live
    if to is not None and target.exists():
        raise ReplicationError(
            f"the restore target {target} exists; choose another path or remove it first"
        )
    replica = _replica_for(url, log)
    created = [p for p in (target.parent, *target.parent.parents) if not p.exists()]
    target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    temp = target.with_name(f".{target.name}.restoring-{os.getpid()}")
    temp.unlink(missing_ok=True)
    restored = False
    try:
        if timestamp is not None:
            txid = _txid_at(replica, timestamp)
        elif txid is not None:
            _check_txid(replica, txid)
        say(f"restoring from {replica.url} (then PRAGMA integrity_check)")
        _restored(replica, temp, txid)
        connect(temp, adopt=False).close()  # migrated, its unsigned values left to trust
        blobs = _referenced_blobs(temp)
        folder = blob_folder(target)
        missing = [d for d in sorted(blobs) if not (folder / d[:2] / d).exists()]
        lacking = 0
        for i, digest in enumerate(missing, 1):
            say(f"fetching blob {i}/{len(missing)}")
            if not replica.blob_exists(digest):  # (uploads run behind the log): its step
                lacking += 1  # is not stored, and runs again saying so
                continue
            replica.get_blob(digest, folder / digest[:2] / digest)
        if lacking:
            warnings.warn(
                f"{lacking} blob files the restored log points to are not on the replica "
                "(they were still on their way when it was copied): their steps will run "
                "again",
                DurableWarning,
                stacklevel=2,
            )
        if to is not None:
            os.replace(temp, target)
            restored = True
            say(f"restored a copy to {target}")
            return target
        say("replacing the live log")
        _replace_live(live, temp)
        restored = True
    finally:
        temp.unlink(missing_ok=True)
        for suffix in ("-wal", "-shm"):
            Path(f"{temp}{suffix}").unlink(missing_ok=True)
        if not restored:  # a failed restore leaves no folder behind
            for folder in created:
                with contextlib.suppress(OSError):  # (not empty: blobs fetched, kept)
                    folder.rmdir()
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
    was_replicating = replication.replicators.get(live)
    if was_replicating is not None:
        replication.stop_replication(live)  # litestream must not ship the swap as a change
    reopen = current_log.current_store_path() == live
    if reopen:
        current_log.close_log()
    if live.exists() and _open_elsewhere(live):
        if reopen:
            current_log.open_log(live)
        if was_replicating is not None:
            replication.replicators[live] = was_replicating.start()
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
        replication.stopped_by_restore[live] = was_replicating.url
        warnings.warn(
            f"replication of {live} to {was_replicating.url} was stopped by the restore; "
            "start it again with %durable replicate (or durable_nb.replicate())",
            DurableWarning,
            stacklevel=3,
        )
