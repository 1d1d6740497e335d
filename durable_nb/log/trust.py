"""Adopting a log from elsewhere on the user's word: its values signed with the user's key."""

from __future__ import annotations

import os

from . import current_log
from .connection import sign_values
from .location import resolve_log
from .stores import log_target, open_store

__all__ = ["trust"]


def trust(log: str | os.PathLike[str] | None = None) -> int:
    """Sign every stored value of a log (a ``.db`` file or a notebook; by default the
    current log) with your key, so that its steps replay and its cells restore here; returns
    how many. Only for a log you trust (a restored backup, a colleague's): its pickles will
    be loaded, and a pickle can run code."""
    current = current_log.current_store()
    path = log_target(resolve_log(log)) if log is not None else current_log.get_store().path
    mine = current is not None and current.path == path
    store = current if mine else open_store(path, create=False)
    try:
        with store.transaction() as conn:
            count = sign_values(conn)
        store.note("trust", f"{count} stored values signed with this user's key")
    finally:
        if store is not current:
            store.close()
    return count
