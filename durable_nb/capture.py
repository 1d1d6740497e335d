"""Capture of what steps show, while letting it through live, and showing it again.

What a step shows is a list of events, in order: ``("stdout", text)``, ``("stderr", text)``
(tqdm bars, warnings, logging) and ``("display", data, metadata)`` (``display()``, a
figure's ``plt.show()``). While any step captures, ``sys.stdout`` and ``sys.stderr`` are
``_Router`` objects that pass each write on and append it to the event lists of the steps
the writing context is inside (``contextvars``: each asyncio task and each thread has its
own, so concurrent steps keep their output apart, and an inner step's output is its
outer step's too). Rich displays reach the same lists through ``record_display``, which the
notebook integration calls; logging handlers that hold the original stream are captured
by a temporary handler. ``replay`` shows the events again, each line marked.

This module knows nothing of IPython: the notebook integration registers how to show a
display again (``set_display``).
"""

from __future__ import annotations

import contextvars
import logging
import sys
import threading
from collections.abc import Callable
from typing import Any

__all__ = [
    "KEPT",
    "REPLAY_MARK",
    "Capture",
    "Tee",
    "clip",
    "record_display",
    "replay",
    "set_display",
    "settle",
    "stdout_of",
]

KEPT = 1 << 20
"""Characters of output kept per step or cell; the middle of longer output is replaced by
a line that says how much was left out (the live output is never cut)."""

REPLAY_MARK = "[replayed] "
"""Prefix of each line a replayed step shows again."""

Event = tuple[Any, ...]


def clip(text: str, limit: int = KEPT) -> str:
    """``text``, or its first and last ``limit // 2`` characters and what was left out."""
    if len(text) <= limit:
        return text
    half = limit // 2
    left = len(text) - 2 * half
    return f"{text[:half]}\n[... {left:,} characters of output not kept ...]\n{text[-half:]}"


class Tee:
    """Writes to ``target`` (so output stays live) and passes each write to ``on_write``.

    A plain class, not an ``io.TextIOBase`` (the io base costs more than the capture).
    Other attributes come from ``target``.
    """

    __slots__ = ("_on_write", "target")

    def __init__(self, target: Any, on_write: Callable[[str], None]) -> None:
        self.target = target
        self._on_write = on_write

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


# The event lists of the steps the current context (task, thread) is inside, outermost first.
_lists: contextvars.ContextVar[tuple[list[Event], ...]] = contextvars.ContextVar(
    "durable_nb_capture", default=()
)


class _Router(Tee):
    """``sys.stdout`` / ``sys.stderr`` while steps capture."""

    __slots__ = ("stream",)

    def __init__(self, target: Any, stream: str) -> None:
        super().__init__(target, self._route)
        self.stream = stream

    def _route(self, text: str) -> None:
        for events in _lists.get():
            events.append((self.stream, text))


_users = 0  # captures active right now, in every task and thread
_users_lock = threading.Lock()


def _install() -> None:
    global _users
    with _users_lock:
        _users += 1
        if not isinstance(sys.stdout, _Router):
            sys.stdout = _Router(sys.stdout, "stdout")
        if not isinstance(sys.stderr, _Router):
            sys.stderr = _Router(sys.stderr, "stderr")


def _uninstall() -> None:
    global _users
    with _users_lock:
        _users -= 1
        if _users == 0:
            if isinstance(sys.stdout, _Router):
                sys.stdout = sys.stdout.target
            if isinstance(sys.stderr, _Router):
                sys.stderr = sys.stderr.target


class _Logged(logging.Handler):
    """Records what logging handlers bound to the real streams write, as stderr events."""

    def __init__(self, shown: list[logging.Handler]) -> None:
        super().__init__(min(h.level for h in shown))
        self.shown = shown

    def emit(self, record: logging.LogRecord) -> None:
        for handler in self.shown:
            if record.levelno >= handler.level and handler.filter(record):
                _route_text("stderr", handler.format(record) + "\n")
                return


def _route_text(stream: str, text: str) -> None:
    for events in _lists.get():
        events.append((stream, text))


def _bypassing_handlers() -> list[logging.Handler]:
    """The root logger's stream handlers that write to a stream object of their own (not
    the routed ``sys.stderr``), so their lines would not be captured."""
    found = []
    for handler in logging.getLogger().handlers:
        stream = getattr(handler, "stream", None)
        if isinstance(handler, logging.StreamHandler) and not isinstance(stream, _Router):
            found.append(handler)
    return found


class Capture:
    """What one step call shows, from ``start`` to ``stop``: ``events``."""

    __slots__ = ("_logged", "_token", "events")

    def __init__(self) -> None:
        self.events: list[Event] = []
        self._token = _lists.set((*_lists.get(), self.events))
        _install()
        shown = _bypassing_handlers() if logging.getLogger().handlers else None
        self._logged = _Logged(shown) if shown else None
        if self._logged is not None:
            logging.getLogger().addHandler(self._logged)

    def stop(self) -> None:
        """Stop capturing (what was shown stays in ``events``)."""
        if self._logged is not None:
            logging.getLogger().removeHandler(self._logged)
        _uninstall()
        try:
            _lists.reset(self._token)
        except ValueError:  # stopped in another context than started: drop this list only
            _lists.set(tuple(e for e in _lists.get() if e is not self.events))


def record_display(data: dict[str, Any], metadata: dict[str, Any] | None) -> None:
    """A rich display (``display()``, a figure) shown now: part of the capturing steps'."""
    lists = _lists.get()
    if lists:
        event = ("display", data, metadata or {})
        for events in lists:
            events.append(event)


def _last_states(text: str) -> str:
    """Text as a terminal shows it: of each line rewritten with carriage returns (a
    progress bar), only its final state."""
    if "\r" not in text:
        return text
    return "\n".join(line.rstrip("\r").rpartition("\r")[2] for line in text.split("\n"))


def settle(events: list[Event]) -> list[Event]:
    """Events to store: consecutive writes of one stream joined, progress bars in their
    final state, text clipped past ``KEPT``."""
    merged: list[Event] = []
    for event in events:
        if event[0] != "display" and merged and merged[-1][0] == event[0]:
            merged[-1][1].append(event[1])
        elif event[0] != "display":
            merged.append((event[0], [event[1]]))
        else:
            merged.append(event)
    return [(e[0], clip(_last_states("".join(e[1])))) if e[0] != "display" else e for e in merged]


def stdout_of(events: list[Event]) -> str:
    """What the events wrote to stdout."""
    return "".join(e[1] for e in events if e[0] == "stdout")


_show_display: Callable[[dict[str, Any], dict[str, Any]], None] | None = None


def set_display(show: Callable[[dict[str, Any], dict[str, Any]], None] | None) -> None:
    """How to show a display again (the notebook integration sets it; None: as text)."""
    global _show_display
    _show_display = show


def _marked(text: str) -> str:
    return "".join(REPLAY_MARK + line for line in text.splitlines(keepends=True))


def replay(events: list[Event]) -> None:
    """Show a replayed step's events again, in order, each line of text marked."""
    for kind, *rest in events:
        if kind == "stdout":
            sys.stdout.write(_marked(rest[0]))
        elif kind == "stderr":
            sys.stderr.write(_marked(rest[0]))
        elif _show_display is not None:
            _show_display(rest[0], rest[1])
        else:
            text = rest[0].get("text/plain")
            if text:
                sys.stdout.write(_marked(text + "\n"))
