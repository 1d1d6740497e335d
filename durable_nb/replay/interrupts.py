"""Knowing that Ctrl-C arrived, even when the user's code caught it.

Training loops (Keras, Lightning) catch ``KeyboardInterrupt`` and return the partial model.
A step that returns after an interrupt must not be replayed as if it had finished, so while a
workflow runs in the main thread, SIGINT goes through a handler that counts it and then does
what the previous handler did (in IPython: raise ``KeyboardInterrupt``). A step compares the
count before and after its call.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType
from typing import Any

__all__ = ["count", "seen", "unwatch", "watch"]

seen = 0
"""How many SIGINTs arrived while a workflow was watching (read it; ``count()`` too)."""
_watchers = 0
_previous: Any = None
_lock = threading.Lock()


def count() -> int:
    """How many SIGINTs arrived while a workflow was watching."""
    return seen


def _handler(signum: int, frame: FrameType | None) -> Any:
    global seen
    seen += 1
    previous = _previous
    if callable(previous):
        return previous(signum, frame)
    if previous == signal.SIG_IGN:
        return None
    raise KeyboardInterrupt


def watch() -> bool:
    """Start counting SIGINTs (nested calls share one handler); False where signals cannot
    be handled (a thread other than the main one)."""
    global _watchers, _previous
    if threading.current_thread() is not threading.main_thread():
        return False
    with _lock:
        if _watchers == 0:
            current = signal.getsignal(signal.SIGINT)
            if current is not _handler:
                _previous = current
                signal.signal(signal.SIGINT, _handler)
        _watchers += 1
    return True


def unwatch() -> None:
    """Undo one ``watch()``; the last one puts the previous handler back."""
    global _watchers
    with _lock:
        _watchers -= 1
        if _watchers == 0 and signal.getsignal(signal.SIGINT) is _handler:
            signal.signal(signal.SIGINT, _previous)
