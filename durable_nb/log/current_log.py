"""The log of this process: where it is when nobody said, opened on first use, replaced
when the notebook picks another file."""

from __future__ import annotations

import os
import threading
from pathlib import Path

from .location import database_url, is_database_url, locate_log
from .logstore import LogStore as Store
from .stores import log_target, open_store

__all__ = [
    "close_log",
    "current_store",
    "current_store_path",
    "default_log_path",
    "get_store",
    "open_log",
    "set_default_log_path",
]

_store_lock = threading.Lock()
_store: Store | None = None
_default_path: Path | str | None = None


def default_log_path() -> Path | str:
    """Where the log is when nobody said: ``DURABLE_NB_DB``, else the set default, else
    the notebook's log if the environment names the notebook, else ``.durable/default.db``
    in the working directory."""
    env = os.environ.get("DURABLE_NB_DB")
    if env:
        return database_url(env) if is_database_url(env) else Path(env)
    return _default_path or locate_log().path  # DURABLE_NB_NOTEBOOK, JPY_SESSION_NAME, ...


def open_log(path: str | os.PathLike[str] | None = None, *, recover: bool = True) -> Store:
    """Open (or create) the log at ``path`` and make it this process's current log
    (``recover=False``: runs of dead processes are marked crashed at the first run)."""
    global _store, _default_path
    with _store_lock:
        target = log_target(path or default_log_path())
        if _store is not None and _store.path == target:
            return _store
        new = open_store(target, recover=recover)
        if _store is not None:
            _store.close()
        _store, _default_path = new, target
        return new


def set_default_log_path(path: str | os.PathLike[str]) -> None:
    """Use ``path`` as the log from now on unless ``DURABLE_NB_DB`` says otherwise."""
    global _default_path, _store
    with _store_lock:
        _default_path = log_target(path)
        if _store is not None and _store.path != _default_path:
            _store.close()
            _store = None


def get_store(*, recover: bool = True) -> Store:
    """The current log, opened on first use."""
    store = _store
    if store is not None:
        return store
    return open_log(None, recover=recover)


def current_store() -> Store | None:
    """The open current log, if one is open."""
    return _store


def current_store_path() -> Path | str | None:
    """The path of the open current log, if one is open."""
    store = _store
    return store.path if store is not None else None


def close_log() -> None:
    """Close the current log, if any."""
    global _store
    with _store_lock:
        if _store is not None:
            _store.close()
            _store = None
