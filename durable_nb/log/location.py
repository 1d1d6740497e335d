"""Where a notebook's log lives: ``.durable/<notebook stem>.db`` beside the notebook.

The notebook path comes from what the front end or runner provides, in this order:
``DURABLE_NB_NOTEBOOK`` (set by ``durable-nb run`` and test set-ups), VS Code's
``__vsc_ipynb_file__``, JupyterLab / Notebook 7's ``__session__`` or ``JPY_SESSION_NAME``.
``DURABLE_NB_DB`` overrides everything; with nothing known, ``.durable/default.db`` in the
working directory.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import LogFileError

__all__ = ["LogLocation", "is_database_url", "locate_log", "log_path_for", "resolve_log"]


@dataclass(frozen=True)
class LogLocation:
    """A log path and how it was found (said aloud by ``%durable info``)."""

    path: Path | str  # (a PostgreSQL log: its URL)
    notebook: Path | None
    how: str


def is_database_url(log: object) -> bool:
    """Whether ``log`` names a PostgreSQL log (``postgresql://...`` or ``postgres://...``)."""
    return isinstance(log, str) and log.startswith(("postgresql://", "postgres://"))


def log_path_for(notebook: str | os.PathLike[str]) -> Path:
    """The log file of a notebook: ``.durable/<stem>.db`` in the notebook's folder."""
    nb = Path(notebook).expanduser().absolute()
    return nb.parent / ".durable" / f"{nb.stem}.db"


def resolve_log(log: str | os.PathLike[str]) -> Path | str:
    """The log a path names: a ``.db`` file, or a notebook's ``.durable/<stem>.db`` (a
    PostgreSQL URL: itself)."""
    if is_database_url(log):
        return str(log)
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
            env if is_database_url(env) else Path(env).absolute(), None, "DURABLE_NB_DB"
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
