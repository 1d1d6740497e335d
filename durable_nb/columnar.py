"""Large reads of a log as columns: Arrow through ADBC's SQLite driver, on two threads.

The sqlite3 module builds a Python tuple per row and an object per value; for the million rows
of a log used daily for a year that is most of the time ``steps()`` takes. ADBC's driver
steps SQLite and fills Arrow arrays in C, with the GIL released, so the rows are read in
id-range partitions on threads and handed to pandas as columns. The SQL text comes from
``Store``; this module only does the I/O.

The driver infers each column's type from its first rows and fails on a later value of
another type (a column NULL in the first thousand rows, text further on): every partition's
query therefore starts with one typed row, dropped after reading. Partitions are separate
read transactions: a view taken while another process writes may show one partition at a
newer commit than the other (rows are never half-shown).
"""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pandas as pd

__all__ = ["read_frame"]

log = logging.getLogger(__name__)

_TYPED = {"int": "0", "real": "0.0", "text": "''"}


def _typed_query(sql: str, types: dict[str, str]) -> str:
    first = ", ".join(f"{_TYPED[kind]} AS {name}" for name, kind in types.items())
    return f"SELECT {first} UNION ALL SELECT * FROM ({sql})"


def _read(path: Path, sql: str, params: list[Any], out: list[Any], i: int) -> None:
    import adbc_driver_sqlite.dbapi as adbc

    try:
        with adbc.connect(f"file:{quote(str(path))}?mode=ro") as conn, conn.cursor() as cur:
            cur.execute("PRAGMA busy_timeout = 10000")  # as connection.connect: wait for writers
            cur.execute(sql, params)
            out[i] = cur.fetch_arrow_table().slice(1)  # without the typed first row
    except Exception as exc:  # handed to the calling thread, which reads with sqlite3 instead
        out[i] = exc


def read_frame(
    path: Path, sql: str, params: list[Any], ids: tuple[int, int], types: dict[str, str],
    *, partitions: int = min(4, os.cpu_count() or 1),
) -> pd.DataFrame | None:  # fmt: skip
    """The rows of ``sql`` as a DataFrame, or None when the driver cannot read the file
    (the caller then reads it with sqlite3).

    ``sql`` takes an id range ``[lo, hi)`` as its first two parameters, then ``params``;
    ``ids`` bounds the ids to read; ``types`` names the columns and their kinds (int, real,
    text) in order. Text columns come back in pandas' default string dtype, integer columns
    with NULLs as floats (as pandas reads them from Arrow).
    """
    try:
        import pyarrow as pa
    except ImportError:
        return None
    lo, hi = ids
    step = -(-(hi - lo) // partitions)
    ranges = [(start, min(start + step, hi)) for start in range(lo, hi, step)] or [(lo, hi)]
    query = _typed_query(sql, types)
    out: list[Any] = [None] * len(ranges)
    threads = [
        threading.Thread(target=_read, args=(path, query, [a, b, *params], out, i))
        for i, (a, b) in enumerate(ranges)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for part in out:
        if isinstance(part, Exception):  # e.g. a read-only folder: no shared-memory file
            log.debug("reading %s with sqlite3: %s", path, part)
            return None
    table = pa.concat_tables(out)
    frame = table.to_pandas()
    if len(frame) and not frame[next(iter(types))].is_monotonic_increasing:
        frame = frame.sort_values(next(iter(types)), ignore_index=True)
    return frame
