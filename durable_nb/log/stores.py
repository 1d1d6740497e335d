"""Which store a log is: a PostgreSQL URL opens ``PostgresStore``, anything else is a SQLite
file (``Store``)."""

from __future__ import annotations

import os
from pathlib import Path

from .location import check_name, database_url, is_database_url
from .logstore import LogStore
from .store import Store

__all__ = ["log_target", "open_store"]


def log_target(log: str | os.PathLike[str]) -> Path | str:
    """How a log is named once opened: a database URL as given, a file's absolute path."""
    if is_database_url(log):
        return database_url(str(log))
    check_name(log)
    return Path(log).expanduser().absolute()


def open_store(
    log: str | os.PathLike[str], *, readonly: bool = False, recover: bool = True,
    create: bool = True,
) -> LogStore:  # fmt: skip
    """Open the log ``log`` names (a ``.db`` file, or ``postgresql://user@host/dbname``;
    ``create=False``: a database must hold a log already)."""
    if is_database_url(log):
        from .store_postgres import PostgresStore  # psycopg only when a log needs it

        return PostgresStore(
            database_url(str(log)), readonly=readonly, recover=recover, create=create
        )
    check_name(log)
    return Store(log, readonly=readonly, recover=recover)
