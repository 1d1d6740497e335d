"""Where a notebook's log lives: ``.durable/<notebook stem>.db`` beside the notebook.

The notebook path comes from what the front end or runner provides, in this order:
``DURABLE_NB_NOTEBOOK`` (set by ``durable-nb run`` and test set-ups), VS Code's
``__vsc_ipynb_file__``, JupyterLab / Notebook 7's ``__session__`` or ``JPY_SESSION_NAME``.
``DURABLE_NB_DB`` overrides everything; with nothing known, ``.durable/default.db`` in the
working directory.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import LogFileError

__all__ = [
    "LogLocation",
    "check_name",
    "database_url",
    "is_database_url",
    "locate_log",
    "log_path_for",
    "log_target",
    "resolve_log",
]


@dataclass(frozen=True)
class LogLocation:
    """A log path and how it was found (said aloud by ``%durable info``)."""

    path: Path | str  # (a PostgreSQL log: its URL)
    notebook: Path | None
    how: str


_DATABASE = re.compile(r"\s*(postgresql|postgres)://", re.IGNORECASE)
_OTHER_URL = re.compile(r"\s*[A-Za-z][A-Za-z0-9+.-]*://")
_CONNINFO = re.compile(r"\s*(host|hostaddr|port|dbname|user|password|service)\s*=")


def is_database_url(log: object) -> bool:
    """Whether ``log`` names a PostgreSQL log (``postgresql://...`` or ``postgres://...``)."""
    return isinstance(log, str) and _DATABASE.match(log) is not None


def database_url(log: str) -> str:
    """A PostgreSQL log's URL as libpq reads it: no spaces around, its scheme in lower case."""
    match = _DATABASE.match(log)
    assert match is not None
    return match.group(1).lower() + "://" + log[match.end() :].strip()


def check_name(log: str | os.PathLike[str]) -> None:
    """One line (never repeating what was given: it may hold a password) when ``log`` looks
    like a URL or connection string of something that is not a log, instead of a file
    created under that name."""
    text = os.fspath(log)
    other = isinstance(text, str) and (_OTHER_URL.match(text) or _CONNINFO.match(text))
    if other and not is_database_url(text):
        raise LogFileError(
            "not a log: give a .db file, a notebook, or a PostgreSQL URL "
            "(postgresql://user@host:port/dbname)"
        )


def log_path_for(notebook: str | os.PathLike[str]) -> Path:
    """The log file of a notebook: ``.durable/<stem>.db`` in the notebook's folder."""
    nb = Path(notebook).expanduser().absolute()
    return nb.parent / ".durable" / f"{nb.stem}.db"


def log_target(log: str | os.PathLike[str]) -> Path | str:
    """How a log is named once opened: a database URL as libpq reads it, a file's absolute
    path."""
    if is_database_url(log):
        return database_url(str(log))
    check_name(log)
    return Path(log).expanduser().absolute()


def resolve_log(log: str | os.PathLike[str]) -> Path | str:
    """The log a path names: a ``.db`` file, or a notebook's ``.durable/<stem>.db`` (a
    PostgreSQL URL: itself)."""
    if is_database_url(log):
        return database_url(str(log))
    check_name(log)
    path = Path(log).expanduser()
    if path.suffix == ".ipynb":
        path = log_path_for(path)
    if not path.exists():
        raise LogFileError(f"no log at {path}; give a .db log file or a notebook that has one")
    return path


def _notebook_hint(namespace: Mapping[str, Any], environ: Mapping[str, str]) -> tuple[str, str]:
    for source, value in (
        ("DURABLE_NB_NOTEBOOK", environ.get("DURABLE_NB_NOTEBOOK")),
        ("VS Code (__vsc_ipynb_file__)", namespace.get("__vsc_ipynb_file__")),
        ("Jupyter (__session__)", namespace.get("__session__")),
        ("Jupyter (JPY_SESSION_NAME)", environ.get("JPY_SESSION_NAME")),
    ):
        if isinstance(value, str) and value.endswith(".ipynb"):
            return value, source
    return "", ""


def _resolve(notebook: Path) -> Path:
    """Jupyter gives the path relative to the server root; the kernel runs in its folder."""
    if notebook.is_absolute() or notebook.exists():
        return notebook.absolute()
    beside = Path(notebook.name)
    return beside.absolute() if beside.exists() else notebook.absolute()


def locate_log(
    namespace: Mapping[str, Any] | None = None, environ: Mapping[str, str] | None = None
) -> LogLocation:
    """Find the log for the notebook described by a kernel namespace and environment."""
    environ = os.environ if environ is None else environ
    namespace = namespace or {}
    if environ.get("DURABLE_NB_DB"):
        env = environ["DURABLE_NB_DB"]
        return LogLocation(
            database_url(env) if is_database_url(env) else Path(env).absolute(),
            None,
            "DURABLE_NB_DB",
        )
    notebook, source = _notebook_hint(namespace, environ)
    if notebook:
        nb = _resolve(Path(notebook))
        return LogLocation(log_path_for(nb), nb, f"notebook from {source}")
    return LogLocation(
        (Path(".durable") / "default.db").absolute(),
        None,
        "notebook path unknown (no __session__, JPY_SESSION_NAME or __vsc_ipynb_file__): "
        "using the default log in the working directory",
    )
