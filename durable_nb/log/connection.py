"""Opening a log file: creating it user-only, checking it, its pragmas, its migrations.

``connect`` refuses what is not a durable_nb log (another SQLite database, a folder, a
damaged file, a newer schema) in one line that says what to do, and brings older logs to
the current schema (``schema.MIGRATIONS``) in one write transaction, safe when several
processes open a new log at the same moment. ``fail`` turns SQLite and OS errors about the
file into such lines.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import time
import warnings
from pathlib import Path
from urllib.parse import quote

from ..errors import DurableWarning, LogFileError, SchemaTooNewError, user_stacklevel
from .schema import APPLICATION_ID, MIGRATIONS, SCHEMA_VERSION, SIGNED
from .signing import CELL, sign, sign_blob

__all__ = ["connect", "fail", "migrated_image", "pragmas", "sign_values"]

log = logging.getLogger(__name__)

_SQLITE_MAGIC = b"SQLite format 3\x00"
_QUICK_CHECK_MAX_BYTES = 64 << 20  # a full quick_check of bigger logs would slow every open


def fail(path: Path, exc: BaseException, doing: str) -> LogFileError:
    """Translate a sqlite3/OS error about the log file into one line saying what to do."""
    text = str(exc)
    lower = text.lower()
    if "malformed" in text or "not a database" in text or "corrupt" in text:
        return LogFileError(
            f"the log {path} is corrupted ({text}); restore it with durable_nb.restore() or "
            "move it aside to start a new log",
            path=str(path),
        )
    if (
        "readonly" in lower
        or "read-only" in lower
        or isinstance(exc, PermissionError)
        or ("unable to open" in lower)
    ):
        return LogFileError(
            f"cannot {doing} the log {path} ({text}); make its folder writable, or pick "
            "another file with %durable open PATH or DURABLE_NB_DB",
            path=str(path),
        )
    if "full" in text:
        return LogFileError(
            f"cannot {doing} the log {path}: {text}; free some space and run again "
            "(nothing was half-written)",
            path=str(path),
        )
    return LogFileError(f"cannot {doing} the log {path}: {text}", path=str(path))


_WAL_HEADER = 32  # bytes: a WAL file that long or shorter holds no frame


def _check_wal(path: Path) -> None:
    """Refuse a log that cannot be what the WAL beside it belongs to: missing, empty, or
    without a SQLite header while its WAL holds frames. SQLite would drop those frames (the
    committed steps of a kernel killed before a checkpoint) and start a new log over them."""
    wal = Path(f"{path}-wal")
    try:
        frames = wal.stat().st_size > _WAL_HEADER
    except OSError:
        return
    if not frames:
        return
    try:
        with open(path, "rb") as f:
            head = f.read(len(_SQLITE_MAGIC))
    except FileNotFoundError:
        head = None
    if head == _SQLITE_MAGIC:
        return
    what = "missing" if head is None else "empty" if not head else "damaged (no SQLite header)"
    raise LogFileError(
        f"the log {path} is {what}, but its WAL {wal.name} holds committed changes; nothing "
        "was written. Copy both files aside, then restore the log from its replica "
        "(durable_nb.restore(), durable-nb restore), or move both aside to start a new log",
        path=str(path),
    )


def _check_header(path: Path) -> None:
    """Refuse a file that is not SQLite before SQLite touches it."""
    with open(path, "rb") as f:
        head = f.read(len(_SQLITE_MAGIC))
    if head and head != _SQLITE_MAGIC:
        raise LogFileError(
            f"{path} is not a SQLite file, so it cannot be a durable_nb log; move it aside "
            "or pick another log with %durable open PATH",
            path=str(path),
        )


def _create(path: Path) -> None:
    """Create the log file and its folder, user-only (0600 / 0700; the folders above it as
    ``mkdir -p`` would: a script's own layout). Other processes may be creating the same
    ones at the same moment: whoever comes second uses them."""
    try:
        if not path.parent.is_dir():
            in_the_way = no_folder(path, create=True)  # a file where a folder goes
            if in_the_way is not None:
                raise in_the_way
            path.parent.parent.mkdir(parents=True, exist_ok=True)  # the user's own folders
            path.parent.mkdir(mode=0o700, exist_ok=True)  # .durable/: user-only
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
    except FileExistsError:
        if path.is_dir():
            raise _directory(path) from None
        return
    except OSError as exc:
        raise fail(path, exc, "create") from None
    os.close(fd)


def no_folder(path: str | os.PathLike[str], *, create: bool = False) -> LogFileError | None:
    """Why the log ``path`` has no folder to be created in, or None: a file in the way, or
    (unless ``create``) a missing folder, other than a ``.durable/`` in a folder that
    exists. ``%durable open`` asks it first: a typo in a path is not a new history."""
    path = Path(path).expanduser().absolute()
    if path.parent.is_dir():
        return None
    below, above = path.parent, path.parent.parent
    while not above.exists() and above != above.parent:  # up to the nearest that exists
        below, above = above, above.parent
    if not above.is_dir() or (below.exists() and not below.is_dir()):
        what = f"{above if not above.is_dir() else below} is a file, not a folder; pick"
    elif (
        create or below.exists() or (path.parent.name == ".durable" and above == path.parent.parent)
    ):
        return None  # (``below`` exists now: another process has just created it)
    else:
        what = f"the folder {below} does not exist; create it first, or pick"
    return LogFileError(
        f"cannot create the log {path}: {what} another path (%durable open PATH or DURABLE_NB_DB)",
        path=str(path),
    )


def _directory(path: Path) -> LogFileError:
    return LogFileError(
        f"{path} is a folder, not a log file; give a file path such as {path / 'log.db'} "
        "(%durable open PATH or DURABLE_NB_DB)",
        path=str(path),
    )


def pragmas(*, readonly: bool = False) -> list[str]:
    """The pragmas of every connection to a log (sync and async)."""
    settings = [
        # busy_timeout: another kernel (or our async twin) may be writing; wait, don't fail.
        "PRAGMA busy_timeout = 10000",
    ]
    if not readonly:
        settings += [
            # WAL: Litestream needs it, and readers (views, other kernels) never block us.
            "PRAGMA journal_mode = WAL",
            # NORMAL in WAL: a commit survives a process crash (kill -9); a power loss may
            # drop the last commits but never corrupts the file. FULL would fsync each step.
            "PRAGMA synchronous = NORMAL",
            # No checkpoint inside a step's commit: the Checkpointer thread does it.
            "PRAGMA wal_autocheckpoint = 0",
            # After a checkpoint resets the WAL, shrink its file to 16 MiB: a burst of steps
            # must not leave a WAL many times the size of the log.
            "PRAGMA journal_size_limit = 16777216",
        ]
    return settings


def connect(path: Path, *, readonly: bool = False, adopt: bool = True) -> sqlite3.Connection:
    """Open (creating if needed) a log file, check it, set its pragmas and migrate it. A log
    written before values were signed is the user's own when it is migrated here (``adopt``):
    its values are signed with the user's key, and a warning says so once; a restored or
    pulled copy is opened with ``adopt=False`` (``trust`` adopts it, on the user's word)."""
    if path.is_dir():
        raise _directory(path)
    _check_wal(path)
    if not path.exists():
        if readonly:
            raise LogFileError(f"no log at {path}; check the path", path=str(path))
        _create(path)
    _check_header(path)
    target = f"file:{quote(str(path))}?mode=ro" if readonly else f"file:{quote(str(path))}"
    try:
        conn = sqlite3.connect(target, uri=True, isolation_level=None, check_same_thread=False)
    except sqlite3.Error as exc:
        raise fail(path, exc, "open") from None
    try:
        conn.execute("PRAGMA busy_timeout = 10000")  # first: another process may be creating it
        try:
            _check_schema(conn, path)
        except sqlite3.OperationalError as exc:
            if not readonly or ("unable to open" not in str(exc) and "readonly" not in str(exc)):
                raise
            # A read-only folder (a mount, a restored backup): SQLite cannot make the WAL's
            # shared-memory file, so read the file as it is, as an immutable database.
            conn.close()
            conn = sqlite3.connect(
                f"file:{quote(str(path))}?mode=ro&immutable=1", uri=True, isolation_level=None,
                check_same_thread=False,
            )  # fmt: skip
            _check_schema(conn, path)
        for pragma in pragmas(readonly=readonly):
            if "journal_mode" in pragma:
                _set_wal(conn)
            else:
                conn.execute(pragma)
        if not readonly:
            _migrate(conn, adopt=adopt, path=path)
        elif conn.execute("PRAGMA user_version").fetchone()[0] < SCHEMA_VERSION:
            conn = _migrated_copy(conn)
    except sqlite3.Error as exc:
        conn.close()
        raise fail(path, exc, "open" if readonly else "write") from None
    except BaseException:
        conn.close()
        raise
    return conn


def _migrated_copy(conn: sqlite3.Connection) -> sqlite3.Connection:
    """A log of an older schema opened read-only: the file cannot be migrated, so views
    read a migrated copy of it in memory (the file stays as it is; the first process that
    writes to it migrates it)."""
    size = _file_size(conn)
    if size > _QUICK_CHECK_MAX_BYTES:
        warnings.warn(
            f"this log is of an older schema and opened read-only, so it is read through a "
            f"copy in memory ({size >> 20} MiB, at each open); open it once with "
            "%durable open PATH (writable) to update it",
            DurableWarning,
            stacklevel=user_stacklevel(),
        )
    copy = sqlite3.connect(":memory:", isolation_level=None, check_same_thread=False)
    try:
        conn.backup(copy)
        _migrate(copy, quiet=True)
    except BaseException:
        copy.close()
        raise
    finally:
        conn.close()
    return copy


def migrated_image(image: bytes) -> sqlite3.Connection:
    """A log of an older schema that cannot be migrated where it is (a replica read in
    place), given as its serialized bytes: a migrated copy of it in memory."""
    data = bytearray(image)
    data[18:20] = b"\x01\x01"  # a rollback-journal image: memory cannot hold a WAL
    copy = sqlite3.connect(":memory:", isolation_level=None, check_same_thread=False)
    try:
        copy.deserialize(bytes(data))
        _migrate(copy, quiet=True)
    except BaseException:
        copy.close()
        raise
    return copy


def _file_size(conn: sqlite3.Connection) -> int:
    pages, size = conn.execute(
        "SELECT (SELECT page_count FROM pragma_page_count), "
        "(SELECT page_size FROM pragma_page_size)"
    ).fetchone()
    return int(pages * size)


def _set_wal(conn: sqlite3.Connection, timeout: float = 10.0) -> None:
    """Put the file in WAL mode. SQLite answers "locked" at once, without waiting, while
    another process switches a new file's mode: ask again until it is done."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if conn.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
                conn.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.01)


def _check_schema(conn: sqlite3.Connection, path: Path) -> None:
    """Refuse files of other applications, newer schemas and damaged files, read-only."""
    # One statement, one snapshot: another process may be creating the schema right now.
    app_id, version, tables = conn.execute(
        "SELECT (SELECT application_id FROM pragma_application_id), "
        "(SELECT user_version FROM pragma_user_version), (SELECT count(*) FROM sqlite_master)"
    ).fetchone()
    if app_id != APPLICATION_ID and (app_id != 0 or version != 0 or tables):
        raise LogFileError(
            f"{path} is a SQLite database but not a durable_nb log; pick another file "
            "with %durable open PATH",
            path=str(path),
        )
    if version > SCHEMA_VERSION:
        raise SchemaTooNewError(
            f"the log {path} was written by a newer durable_nb (schema {version}, this one "
            f"knows {SCHEMA_VERSION}); upgrade durable_nb to use it",
            path=str(path),
            version=version,
        )
    if path.stat().st_size <= _QUICK_CHECK_MAX_BYTES:
        result = conn.execute("PRAGMA quick_check").fetchall()
        if result != [("ok",)]:
            first = " ".join(str(result[0][0]).split())[:200]  # one line
            raise fail(path, sqlite3.DatabaseError(f"corrupt: {first}"), "open")


def _statements(script: str) -> list[str]:
    """The SQL statements of a migration script (semicolons in strings are kept)."""
    statements, pending = [], ""
    for piece in script.split(";"):
        pending += piece + ";"
        if sqlite3.complete_statement(pending):
            if pending.strip(" \n;"):
                statements.append(pending)
            pending = ""
    return statements


def _say_if_slow(conn: sqlite3.Connection, version: int) -> None:
    """Warn before a migration that takes seconds (indexing the steps of a big log)."""
    steps = conn.execute("SELECT coalesce(max(id), 0) FROM steps").fetchone()[0]
    if steps > 200_000:
        warnings.warn(
            f"updating the log from schema {version} to {SCHEMA_VERSION} ({steps:,} steps): "
            "a few seconds, once",
            DurableWarning,
            stacklevel=user_stacklevel(),
        )


def _migrate(
    conn: sqlite3.Connection, *, quiet: bool = False, adopt: bool = False,
    path: Path | None = None,
) -> None:  # fmt: skip
    """Apply the migrations this file lacks, in one write transaction that first reads the
    version again (two processes opening a new log at once must not both migrate it);
    ``quiet``: no warning that it takes seconds (a copy in memory, not the user's file);
    ``adopt``: sign the values of a log from before signatures (the user's own)."""
    if conn.execute("PRAGMA user_version").fetchone()[0] >= SCHEMA_VERSION:
        return
    conn.execute("BEGIN IMMEDIATE")
    signed = 0
    try:
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version and version < SCHEMA_VERSION and not quiet:
            _say_if_slow(conn, version)
        for number, script in enumerate(MIGRATIONS[version:], start=version + 1):
            for statement in _statements(script):
                conn.execute(statement)
            conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
            conn.execute(f"PRAGMA user_version = {number}")
            log.debug("migrated log to schema %d", number)
        if version and version < SIGNED and adopt:
            signed = sign_values(conn)
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    if signed:
        warnings.warn(
            f"durable_nb now signs stored values: the {signed} values of {path or 'this log'}, "
            "written before, are signed with your key (your own log; a log from elsewhere is "
            "adopted with durable_nb.trust(PATH))",
            DurableWarning,
            stacklevel=user_stacklevel(),
        )


def sign_values(conn: sqlite3.Connection) -> int:
    """Sign every stored value of a log with the user's key (``trust``, and the upgrade of
    the user's own log); how many. In the caller's transaction."""
    rows = conn.execute(
        "SELECT id, result_format, result, result_blob FROM steps "
        "WHERE status IN ('completed', 'interrupted') AND result_format IS NOT NULL"
    ).fetchall()
    steps = [
        (sign_blob(fmt, blob) if blob else sign(fmt, payload or b""), step_id)
        for step_id, fmt, payload, blob in rows
    ]
    conn.executemany("UPDATE steps SET signature = ? WHERE id = ?", steps)
    cells = [
        (sign(CELL, variables), run_id)
        for run_id, variables in conn.execute("SELECT run_id, variables FROM cells")
    ]
    conn.executemany("UPDATE cells SET signature = ? WHERE run_id = ?", cells)
    states = [
        (sign_blob(fmt, blob) if blob else sign(fmt, payload or b""), row_id)
        for row_id, fmt, payload, blob in conn.execute(
            "SELECT id, state_format, state, state_blob FROM checkpoint_states"
        ).fetchall()
    ]
    conn.executemany("UPDATE checkpoint_states SET signature = ? WHERE id = ?", states)
    return len(steps) + len(cells) + len(states)
