"""Which store a log is: a PostgreSQL URL opens ``PostgresStore``, anything else is a SQLite
file (``Store``)."""

from __future__ import annotations

import os

from .location import log_target
from .logstore import LogStore
from .store import Store

__all__ = ["log_target", "open_store"]


def open_store(
    log: str | os.PathLike[str], *, readonly: bool = False, recover: bool = True,
    create: bool = True,
) -> LogStore:  # fmt: skip
    """Open the log ``log`` names (a ``.db`` file, or ``postgresql://user@host/dbname``;
    ``create=False``: a database must hold a log already)."""
    target = log_target(log)
    if isinstance(target, str):
        from .store_postgres import PostgresStore  # psycopg only when a log needs it

        return PostgresStore(target, readonly=readonly, recover=recover, create=create)
    return Store(target, readonly=readonly, recover=recover)
