"""Capture of what steps print, while letting it through live.

A sync step swaps ``sys.stdout`` for a ``Tee`` for the length of its call. Async steps run
interleaved on one event loop, so a swap per step would mix their outputs; instead, while any
async step runs, ``sys.stdout`` is one ``_TaskRouter`` that appends each write to the capture
lists held in the writing task's context (``contextvars``: every asyncio task has its own).
"""

from __future__ import annotations

import contextvars
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

__all__ = ["Capture", "Tee", "task_output"]


class Tee:
    """Writes to ``target`` (so output stays live) and keeps what was written.

    A plain class, not an ``io.TextIOBase``: one is made per step call, and the io base
    costs more than the rest of the capture. Other attributes come from ``target``.
    """

    __slots__ = ("_on_write", "parts", "target")

    def __init__(self, target: Any, on_write: Callable[[str], None] | None = None) -> None:
        self.target = target
        self.parts: list[str] = []
        self._on_write = on_write or self.parts.append

    def __getattr__(self, name: str) -> Any:
        return getattr(self.target, name)

    def write(self, text: str) -> int:
        self._on_write(text)
        return self.target.write(text)

    def flush(self) -> None:
        self.target.flush()

    def isatty(self) -> bool:
        return False

    def writable(self) -> bool:
        return True


# The capture lists of the async steps the current task (or thread) is inside, outermost first.
_sinks: contextvars.ContextVar[tuple[list[str], ...]] = contextvars.ContextVar(
    "durable_nb_task_output", default=()
)


class _TaskRouter(Tee):
    """``sys.stdout`` while async steps run: a write goes to ``target`` and to the capture
    lists of the task that made it (writes outside any async step are only passed on)."""

    __slots__ = ()

    def __init__(self, target: Any) -> None:
        super().__init__(target, self._route)

    @staticmethod
    def _route(text: str) -> None:
        for parts in _sinks.get():
            parts.append(text)


_users = 0  # async step calls inside task_output() right now, in every task and thread
_users_lock = threading.Lock()


@contextmanager
def task_output() -> Iterator[list[str]]:
    """What the current asyncio task, and the tasks it starts, print while the block runs.

    Output still reaches the screen as it is written; concurrent tasks keep apart, and an
    inner capture's text is part of the outer one's, as for nested sync steps.
    """
    global _users
    parts: list[str] = []
    token = _sinks.set((*_sinks.get(), parts))
    with _users_lock:
        _users += 1
        if not isinstance(sys.stdout, _TaskRouter):
            sys.stdout = _TaskRouter(sys.stdout)
    try:
        yield parts
    finally:
        _sinks.reset(token)
        with _users_lock:
            _users -= 1
            if _users == 0 and isinstance(sys.stdout, _TaskRouter):
                sys.stdout = sys.stdout.target


_MAIN = threading.main_thread().ident


class Capture:
    """What one sync step call prints, kept while it reaches the screen.

    In the main thread, ``sys.stdout`` is swapped for a ``Tee`` (the cheapest). In other
    threads (a ``ThreadPoolExecutor``, ``asyncio.to_thread``) steps run at the same time, so
    their writes are routed by context as for async steps: each keeps its own lines.
    """

    __slots__ = ("_routed", "_tee", "parts")

    def __init__(self) -> None:
        if threading.get_ident() == _MAIN:
            self._tee: Tee | None = Tee(sys.stdout)
            self._routed = None
            self.parts = self._tee.parts
            sys.stdout = self._tee
        else:
            self._tee = None
            self._routed = task_output()
            self.parts = self._routed.__enter__()

    def stop(self) -> None:
        """Put ``sys.stdout`` back."""
        if self._tee is not None:
            sys.stdout = self._tee.target
        elif self._routed is not None:
            self._routed.__exit__(None, None, None)
