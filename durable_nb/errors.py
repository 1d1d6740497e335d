"""Exceptions raised by durable_nb.

Every error is one readable line that ends with what to do next::

    DurableError
    ├── LogFileError            the log file cannot be used (not SQLite, corrupted, read-only)
    │   └── SchemaTooNewError   written by a newer durable_nb
    ├── WorkflowBusyError       the workflow is running in another process
    ├── BlobError               a stored large value is missing or damaged
    └── ReplicationError        Litestream / replica problems

``PlanStop`` is not an ``Exception``: like ``KeyboardInterrupt`` it derives from
``BaseException``, so that a user's ``except Exception`` cannot swallow it.
"""

from __future__ import annotations

import os
import sys
from typing import Any

__all__ = [
    "BlobError",
    "DurableError",
    "DurableWarning",
    "LogFileError",
    "PlanStop",
    "ReplicationError",
    "SchemaTooNewError",
    "WorkflowBusyError",
    "user_stacklevel",
]


class DurableError(Exception):
    """Base class of every durable_nb error; ``str()`` is one line ending with what to do."""

    def __init__(self, message: str, **fields: Any) -> None:
        super().__init__(message)
        self.message = message
        self.fields = fields
        for key, value in fields.items():
            setattr(self, key, value)

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild, (type(self), self.message, self.fields))

    def __str__(self) -> str:
        return self.message

    def _render_traceback_(self) -> list[str]:
        """IPython shows this instead of a traceback: one line, no internals."""
        return [f"{type(self).__name__}: {self.message}"]


def _rebuild(cls: type[DurableError], message: str, fields: dict[str, Any]) -> DurableError:
    err = cls.__new__(cls)
    DurableError.__init__(err, message, **fields)
    return err


class LogFileError(DurableError):
    """The log file cannot be opened or written; it has not been modified."""


class SchemaTooNewError(LogFileError):
    """The log was written by a newer version of durable_nb."""


class WorkflowBusyError(DurableError):
    """The workflow is already running in another live process."""


class CheckpointError(DurableError):
    """``checkpoint()`` / ``last_checkpoint()`` where no step call is running, or a state
    that cannot be saved."""


class BlobError(DurableError):
    """A large stored value is missing from the blob folder or fails its digest check."""


class ReplicationError(DurableError):
    """Litestream, the replica URL or the object store refused what was asked."""


class DurableWarning(UserWarning):
    """Something will not be durable (e.g. a result that cannot be pickled)."""


class PlanStop(BaseException):
    """Raised in a plan run (``workflow(..., plan=True)``) at the first step that would run;
    the workflow catches it. Nothing has been run or written."""

    def __init__(self, step: str, args_repr: str, reason: str | None) -> None:
        super().__init__(step, args_repr, reason)
        self.step, self.args_repr, self.reason = step, args_repr, reason


_PACKAGE = os.path.dirname(os.path.abspath(__file__)) + os.sep


def user_stacklevel() -> int:
    """The ``stacklevel`` of a warning that points at the user's line (the first frame
    outside durable_nb), so that it is shown once and where it matters."""
    level, frame = 1, sys._getframe(1)
    while frame is not None and frame.f_code.co_filename.startswith(_PACKAGE):
        level, frame = level + 1, frame.f_back  # type: ignore[assignment]
    return level
