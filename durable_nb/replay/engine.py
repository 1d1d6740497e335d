"""Steps and the replay rule: ``@step``, ``step(fn, *args)``, and ``decide()``.

Each call of a step inside a workflow (``workflow``) looks up its key — (scope, name, argument
digest, occurrence) — in the workflow's completed records. ``decide()`` is the replay rule, in
one place: replay a completed record with the same key and dependency digest, else run and
commit the result before the call returns. A step called outside any workflow is an ordinary
function call.

This module imports nothing from IPython, ipywidgets, pandas or boto3.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import itertools
import math
import numbers
import operator
import sys
import time
import weakref
from collections.abc import Callable, Iterable
from typing import Any, NamedTuple, TypeVar, overload

from ..errors import BlobError, PlanStop
from ..log import checkpoints, serialization
from ..log.records import StepKey, StoredStep
from ..log.serialization import args_repr
from ..log.signing import NotSigned
from . import capture, interrupts
from .calls import Call, encode
from .capture import Capture, Event
from .codeinfo import code_digest, display_name
from .context import Scope, current, find_scope
from .dependencies import StepDependencies
from .digests import Arguments, args_digest

__all__ = ["Decision", "Step", "decide", "registered_step", "step"]

F = TypeVar("F", bound=Callable[..., Any])


class Decision(NamedTuple):
    """What to do with a step call: replay ``record``, or run it (saying ``reason``, or
    ``stale``: the newest record of the call, made by other code or dependencies)."""

    record: StoredStep | None = None
    reason: str | None = None
    stale: StoredStep | None = None

    @property
    def replay(self) -> bool:
        """Whether the call is answered from the log."""
        return self.record is not None


_RUN = Decision()


def decide(
    completed: dict[StepKey, dict[str, StoredStep]] | None, key: StepKey, digest: str
) -> Decision:
    """The replay rule: replay a completed record with the same key and dependency digest.

    Anything else runs: no completed record (never run, or it raised, was interrupted or
    crashed), only records made by other code or dependencies (``stale``), or a fresh run.
    """
    if completed is None:
        return Decision(reason="fresh run: the log is ignored")
    by_digest = completed.get(key)
    if by_digest is None:
        return _RUN
    record = by_digest.get(digest)
    if record is None:
        return Decision(stale=max(by_digest.values(), key=lambda r: r.id))
    return Decision(record)


# -- steps ----------------------------------------------------------------------------------

_steps: weakref.WeakValueDictionary[str, Step] = weakref.WeakValueDictionary()
"""The newest step of each name defined in this process (for ``accept``)."""


class Step:
    """A callable whose calls inside a workflow are checkpointed and replayed.

    ``track_versions=True`` makes the versions of the installed packages its code
    references (and Python's) part of its dependency digest: an upgrade runs it again.
    ``keep_checkpoints=True`` keeps the state of its calls' newest ``checkpoint()`` once
    they complete (dropped otherwise).
    """

    __durable_step__ = True

    def __init__(
        self,
        fn: Callable[..., Any],
        *,
        name: str | None = None,
        retries: int = 0,
        backoff: float = 2.0,
        retry_delay: float = 1.0,
        track_versions: bool = False,
        keep_checkpoints: bool = False,
    ) -> None:
        _check_options(fn, retries, backoff, retry_delay)
        self.keep_checkpoints = keep_checkpoints
        # @step above @staticmethod / @classmethod: the function inside, bound as they bind
        self._binding = type(fn) if isinstance(fn, (staticmethod, classmethod)) else None
        if self._binding is not None:
            fn = fn.__func__  # type: ignore[union-attr]
        self.fn = fn
        self.name = name or display_name(fn)
        self.retries = retries
        self.backoff = backoff
        self.retry_delay = retry_delay
        self.is_async = inspect.iscoroutinefunction(fn)
        self.dependencies = StepDependencies(fn, self.name, track_versions=track_versions)
        self._arguments = Arguments(fn)
        functools.update_wrapper(self, fn)
        _steps[self.name] = self

    @property
    def code_digest(self) -> str:
        """Digest of the function's own code (its dependencies not included)."""
        return code_digest(self.fn)

    def __get__(self, obj: Any, objtype: Any = None) -> Any:
        if self._binding is staticmethod:
            return self
        if self._binding is classmethod:
            return functools.partial(self.__call__, objtype if objtype is not None else type(obj))
        return self if obj is None else functools.partial(self.__call__, obj)

    def __repr__(self) -> str:
        return f"<durable step {self.name}>"

    def __reduce__(self) -> Any:  # to a worker (executors): by name if importable, else its fn
        module = sys.modules.get(self.__module__)
        if self.__module__ != "__main__" and getattr(module, self.__qualname__, None) is self:
            return self.__qualname__
        return (_worker_step, (self.fn, self.name))

    def map(self, *iterables: Iterable[Any], executor: Any = None) -> list[Any]:
        """Calls on ``executor`` (Dask, any ``concurrent.futures``; see ``executors``) of
        each item of ``zip(*iterables)``, in input order; completed ones replay here."""
        from .executors import map_calls

        return map_calls(self, iterables, executor)

    async def amap(self, *iterables: Iterable[Any], executor: Any = None) -> list[Any]:
        """``map`` for async code: ``await step.amap(xs, executor=client)``."""
        from .executors import amap_calls

        return await amap_calls(self, iterables, executor)

    def submit(self, *args: Any, executor: Any = None, **kwargs: Any) -> Any:
        """One call on ``executor``: a ``concurrent.futures.Future`` of its value."""
        from .executors import submit_call

        return submit_call(self, args, kwargs, executor)

    def _call(self, scope: Scope, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Call:
        """Key and digest a call, at call time (so occurrences are deterministic under
        ``gather()``)."""
        bound = self._arguments.key(args, kwargs)
        code: list[Any] = []  # callbacks, steps, classes of objects found in the arguments
        digest = args_digest(*bound, code)
        if digest.startswith("unjudged:"):  # a key of its own: it runs, and says why once
            self.dependencies.say_once(
                "arguments",
                f"step {self.name}: its arguments cannot be digested (reading them raised), so "
                "no call matches a record: it runs every time",
            )
        counter = (self.name, digest)
        # calls from several threads (main among them) count in turn, without a lock (a
        # Ctrl-C between a lock's acquire and its try would leave it held): the dict's
        # setdefault and a count's next are atomic
        seq = scope.counts.get(counter) or scope.counts.setdefault(counter, itertools.count())
        occurrence = next(seq)
        key = (scope.key, self.name, digest, occurrence)
        if self._arguments.binds:
            args, kwargs = self._arguments.merged(args, kwargs)
        run = scope.run
        digest_ = self.dependencies.digest(run.deps, code)
        call = Call(run, self.name, key, digest_, args, kwargs, self._arguments)
        if self.keep_checkpoints:
            call.keep = True
        return call

    def _lookup(self, call: Call) -> tuple[bool, Any]:
        """(replayed, value): the replay rule applied to one call; sets ``call.reason``."""
        run = call.run
        digest = call.digest
        decision = decide(run.completed, call.key, digest.value)
        if decision is _RUN and not run.plan:  # never run: the common case of a first run
            return False, None
        record = decision.record
        if record is None:
            stale = decision.stale
            call.reason = run.explain(stale, call) if stale is not None else decision.reason
        else:
            try:
                value = run.load(record)
            except Exception as exc:
                known = isinstance(exc, (BlobError, NotSigned))
                why = str(exc) if known else f"stored value unreadable: {exc}"
                call.reason = why
                run.warn_once(self.name, f"step {self.name}: {call.reason}")
            else:
                if record.printed and not run.plan:
                    capture.replay(run.store.step_output(record.id))
                run.replayed.append(record.id)
                if run.kept and call.key in run.kept:  # a state left by a crash after its row
                    checkpoints.finish(run.store, run.workflow, call.key)
                run.used[(self.name, digest.value)] = digest.refs
                run.compare_environment(record, call)
                return True, value
        if run.plan:  # kept on the run too: the cell's code may catch it (bare except)
            stop = PlanStop(self.name, args_repr(call.args, call.kwargs), call.reason)
            run.plan_stop = run.plan_stop or stop
            raise stop
        return False, None

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        scope = current.get() or find_scope()
        if scope is None:
            return self.fn(*args, **kwargs)
        call = self._call(scope, args, kwargs)
        if self.is_async:
            return self._call_async(call, args, kwargs)
        replayed, value = self._lookup(call)
        if replayed:
            return value
        run = call.run
        for attempt in range(1, self.retries + 2):
            call.started = started = time.time()
            call.attempt = attempt
            token = current.set(Scope(run, call.key, call))
            shown = Capture()
            before = interrupts.seen  # (an attribute: a call costs more, in a loop of steps)
            error = None
            try:
                value = self.fn(*args, **kwargs)
            except BaseException as exc:
                error = exc
            finally:  # (a Ctrl-C just after the call still puts the streams back)
                shown.stop()
                current.reset(token)
            if error is not None:
                if self._failed(call, attempt, started, shown.events, error):
                    time.sleep(self._delay(attempt))
                    continue
                raise error
            self._succeeded(call, attempt, started, shown.events, value,
                            interrupts.seen != before)  # fmt: skip
            return value
        raise AssertionError("unreachable")

    async def _call_async(self, call: Call, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        replayed, value = self._lookup(call)
        if replayed:
            return value
        run = call.run
        task = asyncio.current_task()
        if task is not None:  # cancelled if the run ends first (e.g. gather raised)
            run.tasks.add(task)
        try:
            return await self._attempts_async(call, args, kwargs)
        finally:
            run.tasks.discard(task)  # type: ignore[arg-type]

    async def _attempts_async(
        self, call: Call, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        run = call.run
        for attempt in range(1, self.retries + 2):
            call.started = started = time.time()
            call.attempt = attempt
            token = current.set(Scope(run, call.key, call))
            before = interrupts.count()
            shown = Capture(routed=True)  # by task: concurrent steps keep theirs apart
            try:
                value = await self.fn(*args, **kwargs)
            except BaseException as exc:
                shown.stop()
                current.reset(token)
                if self._failed(call, attempt, started, shown.events, exc):
                    await asyncio.sleep(self._delay(attempt))
                    continue
                raise
            shown.stop()
            current.reset(token)
            encoded, why = encode(value)
            blob = None
            if encoded is not None and not encoded.inline:  # off the loop, before its row
                blob = await asyncio.to_thread(run.store.blobs.write, encoded.segments)
            caught = interrupts.count() != before
            await run.arecord(call, call.row(attempt, started, shown.events, value=value,
                                             encoded=encoded, blob=blob, note=why,
                                             interrupted=caught))  # fmt: skip
            self._completed(call, value, why, caught)
            return value
        raise AssertionError("unreachable")

    def _delay(self, attempt: int) -> float:
        return self.retry_delay * self.backoff ** (attempt - 1)

    def _failed(
        self, call: Call, attempt: int, started: float, printed: list[Event], exc: BaseException
    ) -> bool:
        """Log a failed or interrupted attempt; True when another attempt should follow."""
        run = call.run
        run.record(call, call.row(attempt, started, printed, error=exc))
        again = isinstance(exc, Exception) and attempt <= self.retries
        if isinstance(exc, Exception) and not again:
            with run.lock:
                run.failures.append((self.name, f"{type(exc).__name__}: {str(exc)[:80]}"))
        return again

    def _succeeded(
        self, call: Call, attempt: int, started: float, printed: list[Event], value: Any,
        interrupted: bool = False,
    ) -> None:  # fmt: skip
        """Commit an attempt that returned (here or on a worker): its value encoded, a big
        one blob-first (the blob exists before its row), its row, its count."""
        encoded, why = encode(value)
        blob = None
        if encoded is not None and not encoded.inline:
            blob = call.run.store.blobs.write(encoded.segments)
        call.run.record(call, call.row(attempt, started, printed, value=value, encoded=encoded,
                                       blob=blob, note=why, interrupted=interrupted))  # fmt: skip
        self._completed(call, value, why, interrupted)

    def _completed(self, call: Call, value: Any, why: str | None, interrupted: bool) -> None:
        """Count a finished call, finish its checkpoints (unless it runs again: Ctrl-C
        arrived, or its value is not durable); warn once if its value is not durable."""
        run = call.run
        with run.lock:  # steps may finish in several threads at once
            run.steps_run += 1
        if (call.checkpoints or (run.kept and call.key in run.kept)) and not (why or interrupted):
            checkpoints.finish(run.store, run.workflow, call.key)
        if why is None:
            if not interrupted:
                run.used[(self.name, call.digest.value)] = call.digest.refs
            return
        run.warn_once(
            self.name,
            f"step {self.name} returned a {serialization.describe(value)[0]} that cannot "
            f"be pickled; it is not durable and will run again next time "
            f"({why.split(';')[0]})",
        )


@overload
def step(fn: F, /) -> F: ...
@overload
def step(
    *,
    name: str | None = ...,
    retries: int = ...,
    backoff: float = ...,
    retry_delay: float = ...,
    track_versions: bool = ...,
    keep_checkpoints: bool = ...,
) -> Callable[[F], F]: ...
@overload
def step(fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any: ...


def step(fn: Any = None, /, *args: Any, **kwargs: Any) -> Any:
    """Make ``fn`` a durable step: ``@step``, ``@step(retries=3)``, or ``step(fn, *args)``.

    ``step(fn, *args, **kw)`` calls any callable once as a step (named after it; a
    ``functools.partial`` after its function, with its bound arguments in the key).
    Options: ``name``, ``retries`` (extra attempts after an exception), ``retry_delay``
    (seconds before the first retry), ``backoff`` (multiplier of the delay per attempt),
    ``track_versions`` (package upgrades invalidate its records) and ``keep_checkpoints``
    (its calls' newest ``checkpoint()`` states stay once they complete).
    """
    if fn is None:
        return lambda f: _decorated(f, **kwargs)
    if isinstance(fn, Step):
        return fn(*args, **kwargs)
    if not args and not kwargs:
        return _decorated(fn)
    return _adhoc_step(fn)(*args, **kwargs)  # any callable, a class too: step(Model, cfg)


def _decorated(fn: Any, **options: Any) -> Step:
    if isinstance(fn, type):
        raise TypeError(f"@step goes on functions, not on class {fn.__qualname__}: put it on "
                        "the methods to checkpoint")  # fmt: skip
    return Step(fn, **options)


def _check_options(fn: Any, retries: Any, backoff: Any, retry_delay: Any) -> None:
    """One-line errors for what ``Step`` cannot take, before anything else fails on it."""
    if not callable(fn) and not isinstance(fn, (staticmethod, classmethod)):
        raise TypeError(f"step() takes a function, not {type(fn).__name__} "
                        f"{serialization.short_repr(fn)}: write @step above a def, or "
                        "step(fn, *args) for one call")  # fmt: skip
    try:
        whole = not isinstance(retries, bool) and operator.index(retries) >= 0
    except TypeError:
        whole = False
    if not whole:
        raise ValueError(f"retries must be a whole number, 0 or more (got {retries!r})")
    for option, value in (("backoff", backoff), ("retry_delay", retry_delay)):
        real = isinstance(value, numbers.Real) and not isinstance(value, bool)
        if not real or not math.isfinite(value) or value < 0:
            raise ValueError(f"{option} must be a number of 0 or more (got {value!r})")


def _worker_step(fn: Callable[..., Any], name: str) -> Callable[..., Any]:
    return fn  # on a worker a step is its function: plain, and the code that was sent


@functools.lru_cache(maxsize=512)
def _adhoc_step(fn: Callable[..., Any]) -> Step:
    return Step(fn)


def registered_step(name: str) -> Step | None:
    """The newest step named ``name`` defined in this process, if it is still alive."""
    return _steps.get(name)
