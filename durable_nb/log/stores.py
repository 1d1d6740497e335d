"""Which store a log is: a PostgreSQL URL opens ``PostgresStore``, anything else is a SQLite
file (``Store``)."""

from __future__ import annotations

import os
from pathlib import Path

from .location import is_database_url
from .logstore import LogStore
from .store import Store

__all__ = ["log_target", "open_store"]


def log_target(log: str | os.PathLike[str]) -> Path | str:
    """How a log is named once opened: a database URL as given, a file's absolute path."""
    if is_database_url(log):
        return str(log)
    return Path(log).expanduser().absolute()


def open_store(
    log: str | os.PathLike[str], *, readonly: bool = False, recover: bool = True
) -> LogStore:
    """Open the log ``log`` names (a ``.db`` file, or ``postgresql://user@host/dbname``)."""
    if is_database_url(log):
        from .store_postgres import PostgresStore  # psycopg only when a log needs it

        return PostgresStore(str(log), readonly=readonly, recover=recover)
    return Store(log, readonly=readonly, recover=recover)
