"""What the views share: opening the log they read, and timestamps as pandas types."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

import pandas as pd

from ..log.current_log import get_store
from ..log.location import resolve_log
from ..log.store import Store

__all__ = ["LogArg", "opened", "times"]

LogArg = str | os.PathLike[str] | Store | None
"""A log as views take it: None (the current log), a path (a notebook or a .db file), a Store."""


@contextmanager
def opened(log: LogArg) -> Iterator[Store]:
    """The store a view reads: the current log (``None``), a ``Store``, or a path opened
    read-only for the view and closed after it."""
    if log is None:
        yield get_store()
    elif isinstance(log, Store):
        yield log
    else:
        store = Store(resolve_log(log), readonly=True)
        try:
            yield store
        finally:
            store.close()


def times(seconds: pd.Series) -> pd.Series:
    """Unix seconds as UTC timestamps, in nanoseconds also when there are none."""
    return pd.to_datetime(seconds.astype("float64"), unit="s", utc=True).astype(
        "datetime64[ns, UTC]"
    )
