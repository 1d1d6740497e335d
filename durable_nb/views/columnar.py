"""Large reads of a log as columns: Arrow, through ADBC's SQLite driver, in a child process.

The sqlite3 module builds a Python tuple per row and an object per value; for the million rows
of a log used daily for a year that is most of the time ``steps()`` takes. ADBC's driver
steps SQLite and fills Arrow arrays in C, so a child process reads the rows (in id-range
partitions, on threads) and hands them back in Arrow's IPC format, which pandas takes as
columns. The SQL text comes from ``Store``; this module only does the I/O.

Why a child: the driver links its own copy of SQLite. POSIX file locks belong to a process,
and closing any handle on a file drops all of them, so a second SQLite inside the kernel
would, each time it closed the log, release the locks of the kernel's own connections
(another process could then write under them, or delete the WAL they use). In a child
process it is one more reader, as any SQLite client is.

The driver infers each column's type from its first rows and fails on a later value of
another type (a column NULL in the first thousand rows, text further on): every partition's
query therefore starts with one typed row, dropped after reading. Partitions are separate
read transactions: a view taken while another process writes may show one partition at a
newer commit than the other (rows are never half-shown).
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["read_frame"]

log = logging.getLogger(__name__)

_TYPED = {"int": "0", "real": "0.0", "text": "''"}
_TIMEOUT = 600.0  # seconds; a child that takes longer is stopped and sqlite3 reads instead


def _typed_query(sql: str, types: dict[str, str]) -> str:
    """``sql`` after one row of the right type per column (see the module doc)."""
    first = ", ".join(f"{_TYPED[kind]} AS {name}" for name, kind in types.items())
    return f"SELECT {first} UNION ALL SELECT * FROM ({sql})"


def read_frame(
    path: Path, sql: str, params: list[Any], ids: tuple[int, int], types: dict[str, str],
    *, categorical: tuple[str, ...] = (), partitions: int = min(4, os.cpu_count() or 1),
) -> pd.DataFrame | None:  # fmt: skip
    """The rows of ``sql`` as a DataFrame, or None when they cannot be read so (no pyarrow,
    or the child failed: the caller then reads them with sqlite3).

    ``sql`` takes an id range ``[lo, hi)`` as its first two parameters, then ``params``;
    ``ids`` bounds the ids to read; ``types`` names the columns and their kinds (int, real,
    text) in order. Text columns come back in pandas' default string dtype (those named in
    ``categorical`` as pandas Categoricals, encoded in the child), integer columns with NULLs
    as floats (as pandas reads them from Arrow).
    """
    if not all(importlib.util.find_spec(m) for m in ("pyarrow", "adbc_driver_sqlite")):
        return None
    lo, hi = ids
    if hi <= lo:
        return None
    step = max(1, -(-(hi - lo) // partitions))
    ranges = [(start, min(start + step, hi)) for start in range(lo, hi, step)]
    # The rows come back in a user-only temporary file (a pipe costs a tenth of a second more
    # per 100 MB, and the parent's polling takes a core from the child's threads).
    try:
        handle, out = tempfile.mkstemp(prefix="durable-nb-view-", suffix=".arrow",
                                       dir=_scratch(path))  # fmt: skip
    except OSError as exc:
        log.debug("reading %s with sqlite3: %s", path, exc)
        return None
    os.close(handle)
    request = {"path": str(path), "sql": _typed_query(sql, types), "params": params,
               "ranges": ranges, "out": out, "categorical": categorical}  # fmt: skip
    try:
        child = subprocess.Popen(
            [sys.executable, __file__], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )  # fmt: skip
        try:
            import pyarrow as pa  # while the child reads (a first import costs 0.1-0.2 s)
            import pyarrow.ipc

            _, errors = child.communicate(json.dumps(request).encode(), timeout=_TIMEOUT)
        except BaseException:  # a timeout, Ctrl-C, a broken pyarrow: the child goes too
            child.kill()
            child.wait()
            raise
        if child.returncode != 0:  # e.g. a read-only folder: no shared-memory file
            log.debug("reading %s with sqlite3: %s", path, errors.decode(errors="replace"))
            return None
        with pa.OSFile(out) as source:
            table = pa.ipc.open_file(source).read_all()
    except (OSError, ValueError, ImportError, subprocess.TimeoutExpired) as exc:  # Arrow's too
        log.debug("reading %s with sqlite3: %s", path, exc)
        return None
    finally:
        os.unlink(out)
    frame = table.to_pandas()
    first = next(iter(types))
    if len(frame) and not frame[first].is_monotonic_increasing:
        frame = frame.sort_values(first, ignore_index=True)
    return frame


def _scratch(log: Path) -> str | None:
    """/dev/shm (in memory: 0.15 s less per 100 MB than on disk) when it has room for three
    times the log (a container's is often 64 MB, shared with data loaders), else the default
    temporary folder."""
    shm = "/dev/shm"
    try:
        room = os.statvfs(shm)
        needed = 3 * os.path.getsize(log)
    except OSError:
        return None
    writable = os.access(shm, os.W_OK)
    return shm if writable and room.f_bavail * room.f_frsize > needed else None


def _read(path: str, sql: str, params: list[Any], out: list[Any], i: int) -> None:
    """One partition, in the child: its rows without the typed first one (or the error).
    The driver's own API, not its DB-API module (which imports pandas: 0.2 s more)."""
    import adbc_driver_manager as adbc
    import adbc_driver_sqlite
    import pyarrow as pa

    try:
        # mode=ro: a read-only connection never checkpoints or deletes the WAL when it closes
        with (
            adbc_driver_sqlite.connect(f"file:{quote(path)}?mode=ro") as db,
            adbc.AdbcConnection(db) as conn,
            adbc.AdbcStatement(conn) as statement,
        ):
            statement.set_sql_query("PRAGMA busy_timeout = 10000")  # wait for writers
            statement.execute_update()
            statement.set_sql_query(sql)
            names = [str(n) for n in range(len(params))]
            statement.bind(pa.record_batch([pa.array([v]) for v in params], names=names))
            stream, _ = statement.execute_query()
            out[i] = pa.RecordBatchReader._import_from_c(stream.address).read_all().slice(1)
    except Exception as exc:  # handed to the child's main thread, which exits with it
        out[i] = exc


def _child() -> None:
    """Read the request on stdin; write the rows to its ``out`` file in Arrow's IPC format."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.ipc

    request = json.load(sys.stdin)
    ranges = request["ranges"]
    path, sql, params = request["path"], request["sql"], request["params"]
    out: list[Any] = [None] * len(ranges)
    threads = [
        threading.Thread(target=_read, args=(path, sql, [a, b, *params], out, i))
        for i, (a, b) in enumerate(ranges)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for part in out:
        if isinstance(part, Exception):
            sys.exit(f"{type(part).__name__}: {part}")
    table = pa.concat_tables(out)
    for name in request["categorical"]:
        i = table.schema.get_field_index(name)
        table = table.set_column(i, name, pc.dictionary_encode(table.column(i)))
    with pa.OSFile(request["out"], "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table)
    os._exit(0)  # written and closed: skip freeing a million rows (0.1 s)


if __name__ == "__main__":
    _child()
