"""Capture of what steps show, while letting it through live, and showing it again.

What a step shows is a list of events, in order: ``("stdout", text)``, ``("stderr", text)``
(tqdm bars, warnings, logging) and ``("display", data, metadata)`` (``display()``, a
figure's ``plt.show()``). A sync step in the main thread puts ``Shared`` tees in
place of ``sys.stdout`` and ``sys.stderr`` for the time it runs (the same two objects step
after step, while the streams under them stay the same); a step nested in it only adds its
event list to theirs, after its parent's. Between steps the streams are the real ones
again. Where a step finds the streams replaced by someone else's wrapper inside a running
step (``redirect_stdout``), it tees them with ``Tee`` objects of its own. While
async steps or steps in other threads capture, the streams are ``_Router`` objects that
pass each write on and append it to the event lists of the steps the writing context is
inside (``contextvars``: each asyncio task and each thread has its own, so concurrent
steps keep their output apart; an inner step's output is its outer step's too). Rich
displays reach the same lists through ``record_display``, which the notebook integration
calls; what logging handlers bound to the original streams write is recorded by one
handler while any step captures. ``replay`` shows the events again, each line marked.

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
    "Shared",
    "Stream",
    "Tee",
    "budget",
    "clip",
    "forget_streams",
    "marked",
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


class Stream:
    """A stand-in for ``sys.stdout`` / ``sys.stderr`` that passes every write on to
    ``target`` (so output stays live); subclasses decide what else a write does. A plain
    class, not an ``io.TextIOBase`` (the io base costs more than the capture). Other
    attributes come from ``target``."""

    __slots__ = ("target",)

    def __init__(self, target: Any) -> None:
        self.target = target

    def __getattr__(self, name: str) -> Any:
        return getattr(self.target, name)

    def write(self, text: str) -> int:
        return self.target.write(text)

    def flush(self) -> None:
        self.target.flush()

    def isatty(self) -> bool:
        return False

    def writable(self) -> bool:
        return True


class Tee(Stream):
    """Keeps each write as an event of one step."""

    __slots__ = ("__dict__", "events", "stream")  # (a __dict__: ``sys.stdout.write = f``)

    def __init__(self, target: Any, events: list[Event], stream: str) -> None:
        super().__init__(target)
        self.events = events
        self.stream = stream

    def write(self, text: str) -> int:
        if not _inside.replaying and not _thread_steps():
            self.events.append((self.stream, text))
        return self.target.write(text)


class Shared(Stream):
    """Keeps each write as an event of every sync step running in the main thread that
    captures through it (``_main``, outermost first); with none, it only passes writes on.
    A write that reaches a second ``Shared`` down the chain (a user's wrapper around one,
    wrapped again by the next step) is kept once, by the first."""

    __slots__ = ("__dict__", "stream")  # (a __dict__: wandb and others set ``.write``)

    def __init__(self, target: Any, stream: str) -> None:
        self.target = target
        self.stream = stream

    def write(self, text: str) -> int:
        if not _main or _inside.active or _thread_steps():
            return self.target.write(text)
        for events in _main:
            events.append((self.stream, text))
        _inside.active = True
        try:
            return self.target.write(text)
        finally:
            _inside.active = False

    def isatty(self) -> bool:
        return False if _main else bool(self.target.isatty())


def _thread_steps() -> bool:
    """Whether the writer is a step running in another thread than the main one: its text
    is its own (its router keeps it), not the main-thread step's running meanwhile."""
    return bool(_lists.get()) and threading.get_ident() != _MAIN


class _Inside(threading.local):
    active = False  # in a Shared tee's write, on this thread
    replaying = False  # writing a replayed step's marked lines (``replay`` keeps them)


_inside = _Inside()


class _Nowhere(Shared):
    """What a step puts in place of a stream set to None: writes go nowhere and are not
    kept (``print`` does nothing then, as without durable_nb)."""

    __slots__ = ()

    def __init__(self, stream: str) -> None:
        super().__init__(None, stream)

    def write(self, text: str) -> int:
        return len(text)

    def flush(self) -> None:
        pass

    def isatty(self) -> bool:
        return False


# The event lists of the steps the current context (task, thread) is inside, outermost first.
_lists: contextvars.ContextVar[tuple[list[Event], ...]] = contextvars.ContextVar(
    "durable_nb_capture", default=()
)


class _Router(Stream):
    """``sys.stdout`` / ``sys.stderr`` while steps capture off the main thread or in
    asyncio tasks: each write goes to the event lists of the writing context's steps."""

    __slots__ = ("__dict__", "stream")

    def __init__(self, target: Any, stream: str) -> None:
        super().__init__(target)
        self.stream = stream

    def write(self, text: str) -> int:
        if not _inside.replaying:
            for events in _lists.get():
                events.append((self.stream, text))
        return self.target.write(text)


# Sync steps in the main thread (one at a time, nested): their event lists, outermost first;
# those that capture through the Shared tees, and those that tee the streams themselves.
_main: list[list[Event]] = []
_teed: list[list[Event]] = []
_MAIN = threading.main_thread().ident
_out: Shared | None = None  # the tees the outermost main-thread step puts in place
_err: Shared | None = None


_unstopped: list[Capture] = []  # the main thread's captures not yet stopped, oldest first
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
    """Records what logging handlers bound to the real streams write, as events of the
    stream each one writes to."""

    def __init__(self, shown: list[logging.Handler]) -> None:
        super().__init__(min(h.level for h in shown))
        self.shown = shown

    def emit(self, record: logging.LogRecord) -> None:
        for handler in self.shown:
            if record.levelno >= handler.level and handler.filter(record):
                stream = getattr(handler, "stream", None)
                real = _out.target if _out is not None else None
                name = "stdout" if stream is sys.__stdout__ or stream is real else "stderr"
                _route_text(name, handler.format(record) + "\n")
                return


def _route_text(stream: str, text: str) -> None:
    for events in _capturing():
        events.append((stream, text))


def _bypassing_handlers() -> list[logging.Handler]:
    """The root logger's stream handlers that write to a stream object of their own (not
    the routed ``sys.stderr``), so their lines would not be captured."""
    found = []
    for handler in logging.root.handlers:
        stream = getattr(handler, "stream", None)
        if isinstance(handler, logging.StreamHandler) and not isinstance(
            stream, (_Router, Tee, Shared)
        ):
            found.append(handler)
    return found


class Capture:
    """What one step call shows, from creation to ``stop``: ``events``.

    The outermost sync step in the main thread puts the ``Shared`` tees in place and puts
    the streams back at ``stop``; a step nested in it adds its list to theirs. Where the
    streams are someone else's wrappers, a step swaps them for ``Tee``s of its own (a nested
    step's write through its parent's). Async steps (``routed``) and
    steps in other threads run interleaved, so they are routed by context instead.
    """

    __slots__ = ("_err", "_kind", "_logged", "_out", "_tees", "_token", "events")

    def __init__(self, *, routed: bool = False) -> None:
        events: list[Event] = []
        self.events = events
        if routed or threading.get_ident() != _MAIN:
            self._kind = _ROUTED
            self._token = _lists.set((*_lists.get(), events))
            _install()
        elif _main and sys.stdout is _out and sys.stderr is _err:  # nested: write through
            self._kind = _NESTED
            _main.append(events)
        else:
            with _users_lock:  # (``with``: a Ctrl-C cannot leave it held)
                out, err = sys.stdout, sys.stderr
                if not _main and _tees_over(out, err):
                    self._kind = _OUTER
                    self._out, self._err = out, err
                    sys.stdout, sys.stderr = _out, _err
                    _main.append(events)
                else:  # the streams are someone else's wrappers (or a router): tee them
                    self._kind = _TEED
                    _teed.append(events)
                    self._tees = (
                        _Nowhere("stdout") if out is None else Tee(out, events, "stdout"),
                        _Nowhere("stderr") if err is None else Tee(err, events, "stderr"),
                    )
                    self._out, self._err = out, err
                    sys.stdout, sys.stderr = self._tees
        self._logged = _log_start() if logging.root.handlers else False
        if self._kind != _ROUTED:
            _unstopped.append(self)

    def stop(self) -> None:
        """Stop capturing (what was shown stays in ``events``); once: a capture
        ``forget_streams`` stopped already is left as it is."""
        kind = self._kind
        if kind != _ROUTED:
            if _unstopped and _unstopped[-1] is self:
                _unstopped.pop()
            elif any(c is self for c in _unstopped):
                _drop(_unstopped, self)
            else:
                return
        if self._logged:
            _log_stop()
        if kind <= _OUTER:  # _NESTED or _OUTER
            events = self.events
            if _main and _main[-1] is events:
                _main.pop()
            else:
                _drop(_main, events)
            if kind == _OUTER:
                with _users_lock:
                    if sys.stdout is _out and sys.stderr is _err:
                        sys.stdout, sys.stderr = self._out, self._err
                    else:
                        _put_back(self._out, self._err)
            return
        if kind == _TEED:
            out, err = self._tees
            with _users_lock:  # a router its threads no longer need is not put back
                _restore("stdout", out, self._out.target if _spent(self._out) else self._out)
                _restore("stderr", err, self._err.target if _spent(self._err) else self._err)
            _drop(_teed, self.events)
            return
        _uninstall()
        try:
            _lists.reset(self._token)
        except ValueError:  # stopped in another context than started: drop this list only
            _lists.set(tuple(e for e in _lists.get() if e is not self.events))


_NESTED, _OUTER, _TEED, _ROUTED = range(4)  # how a capture records (``Capture._kind``)


def _drop(items: list[Any], item: Any) -> None:
    if items and items[-1] is item:
        items.pop()
    else:  # stopped out of order: drop this one only
        items[:] = [e for e in items if e is not item]


def _restore(name: str, tee: Stream, saved: Any) -> None:
    """Put ``saved`` back in place of a step's ``tee`` (called with the lock held): under a
    router that threads' steps still use; not at all where the step put a stream of its own
    in place (``sys.stdout = TextIOWrapper(...)``), which stays, as it would without us."""
    current = getattr(sys, name)
    if current is tee:
        setattr(sys, name, saved)
    elif isinstance(current, _Router) and current.target is tee:
        if _users:
            current.target = saved
        else:
            setattr(sys, name, saved)


def _tees_over(out: Any, err: Any) -> bool:
    """Have ``_out`` and ``_err`` be the ``Shared`` tees the outermost main-thread step puts
    over ``out`` and ``err`` (the previous step's while the streams under them are the same;
    called with the lock held); False when either is a wrapper of ours, which a step then
    tees."""
    global _out, _err
    if _out is not None and _err is not None and _out.target is out and _err.target is err:
        return True
    if isinstance(out, (Tee, _Router)) or isinstance(err, (Tee, _Router)):
        return False
    if _out is None or _out.target is not out:
        _out = _nowhere_or_shared(out, "stdout")
    if _err is None or _err.target is not err:
        _err = _nowhere_or_shared(err, "stderr")
    return True


def _nowhere_or_shared(stream: Any, name: str) -> Shared:
    if stream is None:
        return _Nowhere(name)
    return stream if type(stream) is Shared else Shared(stream, name)


def _put_back(out: Any, err: Any) -> None:
    """Put back the streams the outermost step found, where its tees are no longer both on
    top (called with the lock held; see ``_restore``)."""
    _restore("stdout", _out, out)  # type: ignore[arg-type]
    _restore("stderr", _err, err)  # type: ignore[arg-type]


def forget_streams() -> None:
    """Drop the cached tees once no step captures through them (the engine calls it when the
    last run in progress ends), so that the stream under them (in a kernel, a cell's output
    recorder) is not kept alive until the next step.

    With no run in progress no main-thread step captures, so what one left behind is undone
    first: a Ctrl-C landing between a capture's start and its step's ``try`` (a window of a
    few bytecodes) would otherwise leave its list recording and our tees in place."""
    global _out, _err
    if threading.get_ident() == _MAIN:  # (the main thread cannot start one meanwhile)
        for left in reversed(_unstopped[:]):
            left.stop()
    with _users_lock:
        if not _main and sys.stdout is not _out and sys.stderr is not _err:
            _out = _err = None


def _spent(stream: Any) -> bool:
    return isinstance(stream, _Router) and _users == 0


_log_users = 0
_log_handler: _Logged | None = None


def _log_start() -> bool:
    """While steps capture, one handler records what logging handlers bound to the real
    streams write (installed by the first capture, removed by the last)."""
    global _log_users, _log_handler
    with _users_lock:
        _log_users += 1
        if _log_users == 1:
            shown = _bypassing_handlers()
            if shown:
                _log_handler = _Logged(shown)
                logging.root.addHandler(_log_handler)
    return True


def _log_stop() -> None:
    global _log_users, _log_handler
    with _users_lock:
        _log_users -= 1
        if _log_users == 0 and _log_handler is not None:
            logging.root.removeHandler(_log_handler)
            _log_handler = None


def _capturing() -> list[list[Event]]:
    """The event lists of the steps capturing in this context."""
    lists = list(_lists.get())
    if (_main or _teed) and threading.get_ident() == _MAIN:
        lists += _main
        lists += _teed
    return lists


def record_display(data: dict[str, Any], metadata: dict[str, Any] | None) -> None:
    """A rich display (``display()``, a figure) shown now: part of the capturing steps'."""
    if _main or _teed or _lists.get():
        event = ("display", data, metadata or {})
        for events in _capturing():
            events.append(event)


def _last_states(text: str) -> str:
    """Text as a terminal shows it: of each line rewritten with carriage returns (a
    progress bar), only its final state."""
    if "\r" not in text:
        return text
    return "\n".join(line.rstrip("\r").rpartition("\r")[2] for line in text.split("\n"))


def budget(texts: list[str], limit: int = KEPT) -> list[str]:
    """Texts clipped so that together they keep about ``limit`` characters, each its share."""
    total = sum(len(t) for t in texts)
    if total <= limit:
        return texts
    return [clip(t, max(2000, limit * len(t) // total)) for t in texts]


def settle(events: list[Event]) -> list[Event]:
    """Events to store: consecutive writes of one stream joined, progress bars in their
    final state, at most ``KEPT`` characters of text in all."""
    merged: list[Event] = []
    for event in events:
        if event[0] != "display" and merged and merged[-1][0] == event[0]:
            merged[-1][1].append(event[1])
        elif event[0] != "display":
            merged.append((event[0], [event[1]]))
        else:
            merged.append(event)
    texts = budget([_last_states("".join(e[1])) for e in merged if e[0] != "display"])
    kept = iter(texts)
    return [(e[0], next(kept)) if e[0] != "display" else e for e in merged]


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


def marked(text: str) -> str:
    """``text`` with each line marked ``[replayed]`` once (lines marked already stay so)."""
    return "".join(
        line if line.startswith(REPLAY_MARK) else REPLAY_MARK + line
        for line in text.splitlines(keepends=True)
    )


def replay(events: list[Event]) -> None:
    """Show a replayed step's events again, in order, each line of text marked. A step
    running around the replayed one keeps the text as it was first shown, unmarked (else
    its own replay would mark it twice)."""
    lists = _capturing()
    for event in events:
        kind = event[0]
        if kind == "display" and _show_display is not None:
            _show_display(event[1], event[2])  # recorded by record_display, as shown
            continue
        for found in lists:
            found.append(tuple(event))  # (read back from JSON: a list)
        if kind != "display":
            _quietly(sys.stderr if kind == "stderr" else sys.stdout, _marked(event[1]))
        elif event[1].get("text/plain"):
            _quietly(sys.stdout, _marked(event[1]["text/plain"] + "\n"))


def _quietly(stream: Any, text: str) -> None:
    """Write ``text`` through our tees without their keeping it."""
    if stream is None:  # print does nothing then
        return
    inside = _inside
    inside.active = inside.replaying = True
    try:
        stream.write(text)
    finally:
        inside.active = inside.replaying = False
