"""What the views share: opening the log they read, their filters, and timestamps as pandas
types."""

from __future__ import annotations

import numbers
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pandas as pd

from ..log.current_log import get_store
from ..log.location import resolve_log
from ..log.logstore import LogStore as Store
from ..log.stores import open_store

__all__ = ["LogArg", "check_status", "opened", "since_seconds", "times"]

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
        store = open_store(resolve_log(log), readonly=True)
        try:
            yield store
        finally:
            store.close()


def times(seconds: pd.Series) -> pd.Series:
    """Unix seconds as UTC timestamps, in nanoseconds also when there are none."""
    return pd.to_datetime(seconds.astype("float64"), unit="s", utc=True).astype(
        "datetime64[ns, UTC]"
    )


def since_seconds(since: Any) -> float | None:
    """A time (datetime, pandas Timestamp, ISO string, Unix seconds) as Unix seconds; a time
    object 1 µs earlier, so that a ``started`` value read from a view (rounded to the
    nanosecond from the stored float) still includes its own row."""
    if since is None or isinstance(since, numbers.Real):
        return float(since) if since is not None else None
    try:
        when = pd.Timestamp(since)
    except (ValueError, TypeError):
        raise ValueError(
            f"since={since!r} is not a time: give a datetime, an ISO 8601 string such as "
            "'2026-12-01T09:00', or Unix seconds"
        ) from None
    return (when.tz_localize("UTC") if when.tzinfo is None else when).timestamp() - 1e-6


def check_status(status: str | None, known: list[str]) -> None:
    """A one-line error for a status filter that is not one of ``known``."""
    if status is not None and status not in known:
        raise ValueError(f"status={status!r} is not one of {', '.join(known)}")
