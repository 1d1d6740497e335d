"""The replay engine: workflows, steps and the rule that decides replay.

A ``workflow`` is a context manager (or decorator) that starts a *run* in the log; inside it,
each call of a ``step`` looks up its key — (scope, name, argument digest, occurrence) — in
the workflow's completed records. ``decide()`` is the replay rule, in one place. A step
called outside any workflow is an ordinary function call.

This module imports nothing from IPython, ipywidgets, pandas or boto3.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import inspect
import itertools
import math
import numbers
import operator
import sys
import threading
import time
import warnings
import weakref
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, NamedTuple, TypeVar, overload

from . import capture, interrupts, serialization
from .calls import Call, args_repr, encode
from .capture import REPLAY_MARK, Capture, Event
from .codeinfo import code_digest, package_version
from .current_log import (  # noqa: F401 - the engine's API as before
    close_log,
    current_store,
    current_store_path,
    default_log_path,
    get_store,
    open_log,
    set_default_log_path,
)
from .dependencies import RunDependencies, StepDependencies, explain
from .digests import Arguments, args_digest
from .errors import BlobError, DurableError, DurableWarning, PlanStop, user_stacklevel
from .plan import Plan
from .records import CompletedRow, StepKey, StepRow, StoredStep
from .store import Store

if TYPE_CHECKING:
    from .store_async import AsyncStore

__all__ = [
    "REPLAY_MARK",
    "Decision",
    "Run",
    "Step",
    "current_run",
    "decide",
    "get_store",
    "open_log",
    "registered_step",
    "step",
    "workflow",
]

F = TypeVar("F", bound=Callable[..., Any])

_PYTHON = sys.version.split()[0]


# -- runs -----------------------------------------------------------------------------------


class _Scope:
    """Where a step is being called: its run, the enclosing step's key, call counts."""

    __slots__ = ("_key", "_text", "counts", "run")

    def __init__(self, run: Run, key: StepKey | None) -> None:
        self.run = run
        self._key = key
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


_current: contextvars.ContextVar[_Scope | None] = contextvars.ContextVar(
    "durable_nb_scope", default=None
)


_running: list[_Scope] = []  # top-level scopes of the runs in progress in this process
_MAIN = threading.main_thread().ident
_on_worker: contextvars.ContextVar[bool] = contextvars.ContextVar("on_worker", default=False)


def on_worker() -> contextvars.Token[bool]:
    """Mark this context as an executor's worker: steps called here run plain (executors)."""
    _current.set(None)
    return _on_worker.set(True)


def _scope() -> _Scope | None:
    """Where a step called here belongs: the context's scope; in a thread that did not
    inherit it (a ``ThreadPoolExecutor``'s), the one run in progress in the process."""
    scope = _current.get()
    if scope is not None or threading.get_ident() == _MAIN or not _running or _on_worker.get():
        return scope
    if len(_running) == 1:
        return _running[0]
    warnings.warn(
        "a step called from a thread while several workflows run is not durable: it cannot "
        "tell which run it belongs to; pass contextvars.copy_context() to the thread",
        DurableWarning,
        stacklevel=3,
    )
    return None


def current_run() -> Run | None:
    """The run that a step called here would belong to, or None."""
    scope = _scope()
    return scope.run if scope else None


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


class Run:
    """One execution of a workflow: the log's run row plus what replay needs in memory.

    With ``plan=True`` nothing is written: the first step that would run raises
    ``PlanStop`` instead of running.
    """

    def __init__(
        self,
        store: Store,
        workflow: str,
        *,
        fresh: bool = False,
        plan: bool = False,
        source_digest: str | None = None,
        inputs_digest: str | None = None,
    ) -> None:
        self.store = store
        self.workflow = workflow
        self.plan = plan
        self.completed = None if fresh else store.completed_steps(workflow)
        self.id = (
            0
            if plan
            else store.begin_run(workflow, source_digest=source_digest, inputs_digest=inputs_digest)
        )
        self.started = time.perf_counter()
        self.steps_run = 0
        self.replayed: list[int] = []  # ids of the step records this run replayed
        self.status = "running"
        self.deps = RunDependencies()
        # (step, digest) of every call answered from the log or completed: a cell's skip
        # later needs each to be still valid; the value: what its arguments brought (refs)
        self.used: dict[tuple[str, str], list[list[str]]] = {}
        self.interrupts = interrupts.count()
        self._watching = not plan and interrupts.watch()
        self.remarks: list[str] = []  # said once at the end of the run (version changes, ...)
        self.plan_result: Plan | None = None
        self._versions: dict[tuple[str, str, str], list[str]] = {}
        self._environments: dict[int, dict[str, tuple[str, str]]] = {}  # run -> changed
        self._predating = 0
        self._warned: set[str] = set()
        self._aio: AsyncStore | None = None
        self._aio_ready: asyncio.Future[AsyncStore] | None = None
        self.tasks: set[asyncio.Task[Any]] = set()  # async steps running now
        self.lock = threading.Lock()
        self.failures: list[tuple[str, str]] = []  # (step, error) of calls that failed for good
        self.plan_stop: PlanStop | None = None  # the first step a plan would run
        self.first_row: int | None = None

    async def async_store(self) -> AsyncStore:
        """The aiosqlite twin of the store, opened by the first async step that needs it."""
        if self._aio_ready is None:
            from .store_async import AsyncStore

            self._aio = AsyncStore(self.store.path)
            self._aio_ready = asyncio.ensure_future(self._aio.open())
        return await asyncio.shield(self._aio_ready)  # a cancelled step does not cancel it

    async def afinish(self, exc: BaseException | None) -> None:
        """``finish`` for async code: steps still running (``gather`` raised, say) are
        cancelled and awaited, so that they log themselves interrupted in this run, then
        the async twin is closed."""
        me = asyncio.current_task()
        pending = [t for t in self.tasks if t is not me and not t.done()]
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)
        if self._aio is not None:
            aio, self._aio = self._aio, None
            await aio.close()
        self.finish(exc)

    def finish(self, exc: BaseException | None) -> None:
        """Record the run's end: completed, failed (Exception) or interrupted (otherwise)."""
        if self._watching:
            self._watching = False
            interrupts.unwatch()
        if (exc is None or isinstance(exc, PlanStop)) and self.saw_interrupt:
            status, error = "interrupted", "KeyboardInterrupt, caught by the code"
        elif exc is None or isinstance(exc, PlanStop):
            status, error = "completed", None
        elif isinstance(exc, Exception):
            status, error = "failed", f"{type(exc).__name__}: {exc}"
        else:
            status, error = "interrupted", type(exc).__name__
        self.status = status
        self._remark()
        if self.plan:
            return
        if self._aio is not None:
            self._aio.stop()
        self.store.end_run(
            self.id,
            status,
            steps_run=self.steps_run,
            replayed=self.replayed,
            error=error,
            environment=self.deps.environment(),
            first_row=self.first_row,
        )

    def _remark(self) -> None:
        for (package, then, now), names in self._versions.items():
            which = ", ".join(dict.fromkeys(names))
            self.remarks.append(f"{package} {then} -> {now} since the stored results of {which}")
        if self._predating:
            self.remarks.append(
                f"{self._predating} steps ran again: their records were written before "
                f"digests covered dependencies; %durable accept {self.workflow} replays them"
            )

    @property
    def saw_interrupt(self) -> bool:
        """Whether Ctrl-C arrived during the run (even if the code caught it)."""
        return interrupts.count() != self.interrupts

    @property
    def steps_replayed(self) -> int:
        """How many step calls this run answered from the log."""
        return len(self.replayed)

    @property
    def elapsed(self) -> float:
        """Seconds since the run started."""
        return time.perf_counter() - self.started

    def load(self, record: StoredStep) -> Any:
        """The stored value of a completed step (reads its blob and checks its digest)."""
        if record.result_blob is not None:
            return serialization.decode(
                record.result_format, self.store.blobs.read(record.result_blob)
            )
        payload = record.payload
        if payload is None:
            payload = self.store.step_payload(record.id)
        return serialization.decode(record.result_format, (payload,))

    def explain(self, stale: StoredStep, call: Call) -> str:
        """Why ``call`` runs although the log has ``stale`` for its key."""
        doc = self.store.digest_document(stale.code_digest)
        if doc is None:
            self._predating += 1
        return explain(doc, call.digest, call.name, stale.run_id)

    def record(self, call: Call, row: StepRow | CompletedRow) -> None:
        """Commit a finished attempt (its digest's document first, once per process)."""
        self.store.remember_digest(row.code_digest, call.document)
        self._first_row(self.store.insert(row))

    async def arecord(self, call: Call, row: StepRow | CompletedRow) -> None:
        """``record`` for async steps: the row goes through the aiosqlite twin."""
        self.store.remember_digest(row.code_digest, call.document)
        store = await self.async_store()
        self._first_row(await store.insert(row))

    def _first_row(self, row_id: int) -> None:
        """Keep the run's lowest row id: where its rows start, even if ids were reused."""
        if self.first_row is None or 0 < row_id < self.first_row:
            self.first_row = row_id

    def compare_environment(self, record: StoredStep, call: Call) -> None:
        """Note packages whose version changed since ``record`` was made (said at the end)."""
        changed = self._environments.get(record.run_id)
        if changed is None:  # once per run that made a replayed record
            then = self.store.run_environment(record.run_id)
            changed = self._environments[record.run_id] = {}
            for package, old in then.items():
                now = _PYTHON if package == "python" else package_version(package)
                if now and old != now:
                    changed[package] = (old, now)
        if not changed:
            return
        for package in (*call.digest.packages, "python"):
            if package in changed:
                old, now = changed[package]
                self._versions.setdefault((package, old, now), []).append(call.name)

    def warn_once(self, name: str, message: str) -> None:
        """Warn about ``name`` once per run."""
        if name not in self._warned:
            self._warned.add(name)
            warnings.warn(message, DurableWarning, stacklevel=user_stacklevel())


class workflow:
    """A durable workflow: ``with workflow("name"):``, ``async with ...``, or a decorator.

    Each entry starts a run in the log; steps called inside replay from the workflow's
    earlier runs. ``fresh=True`` ignores the log (every step runs again). ``plan=True``
    writes nothing and stops at the first step that would run; ``run.plan_result`` (a
    ``Plan``) says which and why.
    """

    def __init__(
        self,
        name: str | Callable[..., Any] | None = None,
        *,
        store: Store | None = None,
        fresh: bool = False,
        plan: bool = False,
        source_digest: str | None = None,
        inputs_digest: str | None = None,
    ) -> None:
        fn = name if callable(name) else None
        self.name = None if fn is not None else name
        self.store = store
        self.fresh = fresh
        self.plan = plan
        self.source_digest = source_digest
        self.inputs_digest = inputs_digest
        self.run: Run | None = None
        self._token: contextvars.Token[_Scope | None] | None = None
        self._wrapped: Callable[..., Any] | None = None
        if fn is not None:
            self._wrapped = _named_workflow(fn, _display_name(fn), store, fresh)
            functools.update_wrapper(self, fn)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if self._wrapped is not None:  # ``@workflow`` on a function: run it as a workflow
            return self._wrapped(*args, **kwargs)
        (fn,) = args  # ``@workflow("name")``: decorate the function
        return _named_workflow(fn, self.name or _display_name(fn), self.store, self.fresh)

    def __enter__(self) -> Run:
        if self.name is None:
            raise DurableError("a workflow needs a name: with workflow('my-sweep'): ...")
        self.run = Run(
            self.store or get_store(),
            self.name,
            fresh=self.fresh,
            plan=self.plan,
            source_digest=self.source_digest,
            inputs_digest=self.inputs_digest,
        )
        self._root = _Scope(self.run, None)
        self._token = _current.set(self._root)
        if not self.plan:
            _running.append(self._root)
        return self.run

    def _leave(self, exc: BaseException | None) -> bool:
        assert self.run is not None and self._token is not None
        try:
            _current.reset(self._token)
        except ValueError:  # exited in another context (e.g. a task): just clear it
            _current.set(None)
        if self._root in _running:
            _running.remove(self._root)
            if not _running:
                capture.forget_streams()
        if not self.plan:
            return False
        run = self.run
        stop = run.plan_stop
        if stop is not None:
            run.plan_result = Plan(run.workflow, run.steps_replayed, stop.step, stop.args_repr,
                                   stop.reason)  # fmt: skip
        else:
            run.plan_result = Plan(run.workflow, run.steps_replayed)
        return isinstance(exc, PlanStop)

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> bool:
        planned = self._leave(exc)
        assert self.run is not None
        self.run.finish(exc)
        return planned

    async def __aenter__(self) -> Run:
        return self.__enter__()

    async def __aexit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> bool:
        planned = self._leave(exc)
        assert self.run is not None
        await self.run.afinish(exc)
        return planned


def _display_name(fn: Callable[..., Any]) -> str:
    """A function's qualified name without the ``<locals>`` of enclosing functions."""
    while isinstance(fn, functools.partial):
        fn = fn.func
    qualname = getattr(fn, "__qualname__", None) or type(fn).__qualname__
    return qualname.rpartition("<locals>.")[2]


def _named_workflow(
    fn: Callable[..., Any], name: str, store: Store | None, fresh: bool
) -> Callable[..., Any]:
    if inspect.iscoroutinefunction(fn):

        @functools.wraps(fn)
        async def run_async(*args: Any, **kwargs: Any) -> Any:
            async with workflow(name, store=store, fresh=fresh):
                return await fn(*args, **kwargs)

        run_async.__durable_workflow__ = (name, store)  # type: ignore[attr-defined]
        return run_async

    @functools.wraps(fn)
    def run_sync(*args: Any, **kwargs: Any) -> Any:
        with workflow(name, store=store, fresh=fresh):
            return fn(*args, **kwargs)

    run_sync.__durable_workflow__ = (name, store)  # type: ignore[attr-defined]
    return run_sync


# -- steps ----------------------------------------------------------------------------------

_steps: weakref.WeakValueDictionary[str, Step] = weakref.WeakValueDictionary()
"""The newest step of each name defined in this process (for ``accept``)."""


class Step:
    """A callable whose calls inside a workflow are checkpointed and replayed.

    ``track_versions=True`` makes the versions of the installed packages its code
    references (and Python's) part of its dependency digest: an upgrade runs it again.
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
    ) -> None:
        _check_options(fn, retries, backoff, retry_delay)
        # @step above @staticmethod / @classmethod: the function inside, bound as they bind
        self._binding = type(fn) if isinstance(fn, (staticmethod, classmethod)) else None
        if self._binding is not None:
            fn = fn.__func__  # type: ignore[union-attr]
        self.fn = fn
        self.name = name or _display_name(fn)
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

    def _call(self, scope: _Scope, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Call:
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
        return Call(run, self.name, key, digest_, args, kwargs, self._arguments)

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
                why = str(exc) if isinstance(exc, BlobError) else f"stored value unreadable: {exc}"
                call.reason = why
                run.warn_once(self.name, f"step {self.name}: {call.reason}")
            else:
                if record.printed and not run.plan:
                    capture.replay(run.store.step_output(record.id))
                run.replayed.append(record.id)
                run.used[(self.name, digest.value)] = digest.refs
                run.compare_environment(record, call)
                return True, value
        if run.plan:  # kept on the run too: the cell's code may catch it (bare except)
            stop = PlanStop(self.name, args_repr(call.args, call.kwargs), call.reason)
            run.plan_stop = run.plan_stop or stop
            raise stop
        return False, None

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        scope = _current.get() or _scope()
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
            started = time.time()
            token = _current.set(_Scope(run, call.key))
            shown = Capture()
            before = interrupts.seen  # (an attribute: a call costs more, in a loop of steps)
            error = None
            try:
                value = self.fn(*args, **kwargs)
            except BaseException as exc:
                error = exc
            finally:  # (a Ctrl-C just after the call still puts the streams back)
                shown.stop()
                _current.reset(token)
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
            started = time.time()
            token = _current.set(_Scope(run, call.key))
            before = interrupts.count()
            shown = Capture(routed=True)  # by task: concurrent steps keep theirs apart
            try:
                value = await self.fn(*args, **kwargs)
            except BaseException as exc:
                shown.stop()
                _current.reset(token)
                if self._failed(call, attempt, started, shown.events, exc):
                    await asyncio.sleep(self._delay(attempt))
                    continue
                raise
            shown.stop()
            _current.reset(token)
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
        """Count a finished call; warn once if its value is not durable."""
        run = call.run
        with run.lock:  # steps may finish in several threads at once
            run.steps_run += 1
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
) -> Callable[[F], F]: ...
@overload
def step(fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any: ...


def step(fn: Any = None, /, *args: Any, **kwargs: Any) -> Any:
    """Make ``fn`` a durable step: ``@step``, ``@step(retries=3)``, or ``step(fn, *args)``.

    ``step(fn, *args, **kw)`` calls any callable once as a step (named after it; a
    ``functools.partial`` after its function, with its bound arguments in the key).
    Options: ``name``, ``retries`` (extra attempts after an exception), ``retry_delay``
    (seconds before the first retry), ``backoff`` (multiplier of the delay per attempt) and
    ``track_versions`` (package upgrades invalidate its records).
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
