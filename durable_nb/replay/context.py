"""Where a step is being called: the run in progress and the enclosing step, per context.

A workflow sets the context's scope when it starts; a step sets its own while it runs, so
that steps it calls are keyed under it. Executors mark their workers, where steps run plain.
"""

from __future__ import annotations

import contextvars
import itertools
import threading
import warnings
from typing import TYPE_CHECKING

from ..errors import DurableWarning
from ..log.records import StepKey

if TYPE_CHECKING:
    from .calls import Call
    from .run import Run

__all__ = ["Scope", "current", "current_run", "find_scope", "on_worker", "running", "worker"]


class Scope:
    """Where a step is being called: its run, the enclosing step's key (and call, where
    ``checkpoint()`` saves), call counts."""

    __slots__ = ("_key", "_text", "call", "counts", "run")

    def __init__(self, run: Run, key: StepKey | None, call: Call | None = None) -> None:
        self.run = run
        self._key = key
        self.call = call
        self._text: str | None = None if key else ""
        self.counts: dict[tuple[str, str], itertools.count[int]] = {}

    @property
    def key(self) -> str:
        """The enclosing step's key as text ('' at the top level), made when first needed."""
        if self._text is None:
            assert self._key is not None
            scope, name, digest, occurrence = self._key
            self._text = f"{scope}/{name}:{digest[:16]}:{occurrence}"
        return self._text


current: contextvars.ContextVar[Scope | None] = contextvars.ContextVar(
    "durable_nb_scope", default=None
)
"""The scope of this context: set by a workflow, and by a step while it runs."""

running: list[Scope] = []  # top-level scopes of the runs in progress in this process
_MAIN = threading.main_thread().ident
worker: contextvars.ContextVar[bool] = contextvars.ContextVar("on_worker", default=False)
"""True on an executor's worker, where steps run plain."""


def on_worker() -> contextvars.Token[bool]:
    """Mark this context as an executor's worker: steps called here run plain (executors)."""
    current.set(None)
    return worker.set(True)


def find_scope() -> Scope | None:
    """Where a step called here belongs: the context's scope; in a thread that did not
    inherit it (a ``ThreadPoolExecutor``'s), the one run in progress in the process."""
    found = current.get()
    if found is not None or threading.get_ident() == _MAIN or not running or worker.get():
        return found
    if len(running) == 1:
        return running[0]
    warnings.warn(
        "a step called from a thread while several workflows run is not durable: it cannot "
        "tell which run it belongs to; pass contextvars.copy_context() to the thread",
        DurableWarning,
        stacklevel=3,
    )
    return None


def current_run() -> Run | None:
    """The run that a step called here would belong to, or None."""
    found = find_scope()
    return found.run if found else None
