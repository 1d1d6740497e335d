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
import os
import sys
import threading
import time
import traceback
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple, TypeVar, overload

from . import serialization
from .capture import Tee, task_output
from .digests import args_digest, code_digest
from .errors import BlobError, DurableError, DurableWarning
from .records import CompletedRow, StepKey, StepRow, StoredStep
from .store import Store

if TYPE_CHECKING:
    from .store_async import AsyncStore

__all__ = [
    "Decision",
    "Run",
    "Step",
    "current_run",
    "decide",
    "get_store",
    "open_log",
    "step",
    "workflow",
]

F = TypeVar("F", bound=Callable[..., Any])

_Result = tuple[str | None, str | None, int | None, str | None, str | None, bytes | None]
"""(format, blob digest, size, type name, short repr, inline bytes) of a step's value."""
_Error = tuple[str | None, str | None, str | None]
"""(type name, message, traceback text) of a step's exception."""

REPLAY_MARK = "[replayed] "
"""Prefix of each line of a replayed step's stdout."""

# -- the log of this process --------------------------------------------------------------

_store_lock = threading.Lock()
_store: Store | None = None
_default_path: Path | None = None


def default_log_path() -> Path:
    """Where the log is when nobody said: ``DURABLE_NB_DB``, else the set default, else
    ``.durable/default.db`` in the working directory."""
    env = os.environ.get("DURABLE_NB_DB")
    if env:
        return Path(env)
    return _default_path or Path(".durable") / "default.db"


def open_log(path: str | os.PathLike[str] | None = None) -> Store:
    """Open (or create) the log at ``path`` and make it this process's current log."""
    global _store, _default_path
    with _store_lock:
        target = Path(path).expanduser().absolute() if path else default_log_path().absolute()
        if _store is not None and _store.path == target:
            return _store
        new = Store(target)
        if _store is not None:
            _store.close()
        _store, _default_path = new, target
        return new


def set_default_log_path(path: str | os.PathLike[str]) -> None:
    """Use ``path`` as the log from now on unless ``DURABLE_NB_DB`` says otherwise."""
    global _default_path, _store
    with _store_lock:
        _default_path = Path(path).expanduser().absolute()
        if _store is not None and _store.path != _default_path:
            _store.close()
            _store = None


def get_store() -> Store:
    """The current log, opened on first use."""
    store = _store
    if store is not None:
        return store
    return open_log(None)


def current_store_path() -> Path | None:
    """The path of the open current log, if one is open."""
    store = _store
    return store.path if store is not None else None


def close_log() -> None:
    """Close the current log, if any."""
    global _store
    with _store_lock:
        if _store is not None:
            _store.close()
            _store = None


# -- runs -----------------------------------------------------------------------------------


class _Scope:
    """Where a step is being called: its run, the enclosing step's key, call counts."""

    __slots__ = ("_key", "_text", "counts", "run")

    def __init__(self, run: Run, key: StepKey | None) -> None:
        self.run = run
        self._key = key
        self._text: str | None = None if key else ""
        self.counts: dict[tuple[str, str], int] = {}

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


def current_run() -> Run | None:
    """The run that a step called here would belong to, or None."""
    scope = _current.get()
    return scope.run if scope else None


class Decision(NamedTuple):
    """What to do with a step call: replay ``record``, or run it (saying ``reason``)."""

    record: StoredStep | None = None
    reason: str | None = None

    @property
    def replay(self) -> bool:
        """Whether the call is answered from the log."""
        return self.record is not None


_RUN = Decision()


def decide(
    completed: dict[StepKey, dict[str, StoredStep]] | None, key: StepKey, code: str, name: str
) -> Decision:
    """The replay rule: replay a completed record with the same key and code digest.

    Anything else runs: no completed record (never run, or it raised, was interrupted or
    crashed), only records made by other code (the reason says so), or a fresh run.
    """
    if completed is None:
        return Decision(reason="fresh run: the log is ignored")
    by_code = completed.get(key)
    if by_code is None:
        return _RUN
    record = by_code.get(code)
    if record is None:
        newest = max(by_code.values(), key=lambda r: r.id)
        return Decision(reason=f"code of {name} changed since run {newest.run_id}")
    return Decision(record)


class Run:
    """One execution of a workflow: the log's run row plus what replay needs in memory."""

    def __init__(
        self,
        store: Store,
        workflow: str,
        *,
        fresh: bool = False,
        source_digest: str | None = None,
        inputs_digest: str | None = None,
    ) -> None:
        self.store = store
        self.workflow = workflow
        self.completed = None if fresh else store.completed_steps(workflow)
        self.id = store.begin_run(
            workflow, source_digest=source_digest, inputs_digest=inputs_digest
        )
        self.started = time.perf_counter()
        self.steps_run = 0
        self.replayed: list[int] = []  # ids of the step records this run replayed
        self.status = "running"
        self._warned: set[str] = set()
        self._aio: AsyncStore | None = None
        self._aio_ready: asyncio.Future[AsyncStore] | None = None

    async def async_store(self) -> AsyncStore:
        """The aiosqlite twin of the store, opened by the first async step that needs it."""
        if self._aio_ready is None:
            from .store_async import AsyncStore

            self._aio = AsyncStore(self.store.path)
            self._aio_ready = asyncio.ensure_future(self._aio.open())
        return await asyncio.shield(self._aio_ready)  # a cancelled step does not cancel it

    async def afinish(self, exc: BaseException | None) -> None:
        """``finish`` for async code: closes the async twin first."""
        if self._aio is not None:
            aio, self._aio = self._aio, None
            await aio.close()
        self.finish(exc)

    def finish(self, exc: BaseException | None) -> None:
        """Record the run's end: completed, failed (Exception) or interrupted (otherwise)."""
        if exc is None:
            status, error = "completed", None
        elif isinstance(exc, Exception):
            status, error = "failed", f"{type(exc).__name__}: {exc}"
        else:
            status, error = "interrupted", type(exc).__name__
        self.status = status
        if self._aio is not None:
            self._aio.stop()
        self.store.end_run(
            self.id,
            status,
            steps_run=self.steps_run,
            replayed=self.replayed,
            error=error,
        )

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

    def warn_once(self, name: str, message: str) -> None:
        """Warn about ``name`` once per run."""
        if name not in self._warned:
            self._warned.add(name)
            warnings.warn(message, DurableWarning, stacklevel=4)


class workflow:
    """A durable workflow: ``with workflow("name"):``, ``async with ...``, or a decorator.

    Each entry starts a run in the log; steps called inside replay from the workflow's
    earlier runs. ``fresh=True`` ignores the log (every step runs again).
    """

    def __init__(
        self,
        name: str | Callable[..., Any] | None = None,
        *,
        store: Store | None = None,
        fresh: bool = False,
        source_digest: str | None = None,
        inputs_digest: str | None = None,
    ) -> None:
        fn = name if callable(name) else None
        self.name = None if fn is not None else name
        self.store = store
        self.fresh = fresh
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
            source_digest=self.source_digest,
            inputs_digest=self.inputs_digest,
        )
        self._token = _current.set(_Scope(self.run, None))
        return self.run

    def _leave(self) -> Run:
        assert self.run is not None and self._token is not None
        try:
            _current.reset(self._token)
        except ValueError:  # exited in another context (e.g. a task): just clear it
            _current.set(None)
        return self.run

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> None:
        self._leave().finish(exc)

    async def __aenter__(self) -> Run:
        return self.__enter__()

    async def __aexit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> None:
        await self._leave().afinish(exc)


def _display_name(fn: Callable[..., Any]) -> str:
    """A function's qualified name without the ``<locals>`` of enclosing functions."""
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

        return run_async

    @functools.wraps(fn)
    def run_sync(*args: Any, **kwargs: Any) -> Any:
        with workflow(name, store=store, fresh=fresh):
            return fn(*args, **kwargs)

    return run_sync


# -- steps ----------------------------------------------------------------------------------


def _emit_replayed(stdout: str) -> None:
    lines = stdout.splitlines(keepends=True)
    sys.stdout.write("".join(REPLAY_MARK + line for line in lines))


def _encode(value: Any) -> tuple[serialization.Encoded | None, str | None]:
    """A step value's encoding, or None and why it is not durable."""
    try:
        return serialization.encode(value), None
    except serialization.NotSerializable as exc:
        return None, f"result cannot be pickled ({exc.reason}); it runs again next time"


def _common(encoded: serialization.Encoded | None, printed: list[str], reason: str | None) -> bool:
    """Whether a finished call is the common checkpoint (``CompletedRow``): its value pickled
    inline, nothing printed, no reason to note."""
    return encoded is not None and encoded.inline and not printed and reason is None


def _result(value: Any, encoded: serialization.Encoded | None, blob: str | None) -> _Result:
    """The result columns of a value: inline bytes, or the digest of its blob file."""
    type_name, value_repr = serialization.describe(value)
    if encoded is None:
        return None, None, None, type_name, value_repr, None
    inline = encoded.segments[0] if encoded.inline else None
    return encoded.format, blob, encoded.size, type_name, value_repr, inline  # type: ignore[return-value]


def _args_repr(args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
    if len(args) == 1 and not kwargs:
        return serialization.short_repr(args[0])
    parts = [serialization.short_repr(a) for a in args]
    parts += [f"{k}={serialization.short_repr(v)}" for k, v in kwargs.items()]
    text = ", ".join(parts)
    return text if len(text) <= 200 else text[:197] + "..."


class Step:
    """A callable whose calls inside a workflow are checkpointed and replayed."""

    def __init__(
        self,
        fn: Callable[..., Any],
        *,
        name: str | None = None,
        retries: int = 0,
        backoff: float = 2.0,
        retry_delay: float = 1.0,
    ) -> None:
        if retries < 0:
            raise ValueError("retries must be 0 or more")
        self.fn = fn
        self.name = name or _display_name(fn)
        self.retries = retries
        self.backoff = backoff
        self.retry_delay = retry_delay
        self.is_async = inspect.iscoroutinefunction(fn)
        self._code: str | None = None
        functools.update_wrapper(self, fn)

    @property
    def code_digest(self) -> str:
        """Digest of the function's code (computed once)."""
        if self._code is None:
            self._code = code_digest(self.fn)
        return self._code

    def __get__(self, obj: Any, objtype: Any = None) -> Any:
        return self if obj is None else functools.partial(self.__call__, obj)

    def __repr__(self) -> str:
        return f"<durable step {self.name}>"

    def _key(self, scope: _Scope, args: tuple[Any, ...], kwargs: dict[str, Any]) -> StepKey:
        digest = args_digest(args, kwargs)
        counter = (self.name, digest)
        occurrence = scope.counts.get(counter, 0)
        scope.counts[counter] = occurrence + 1
        return (scope.key, self.name, digest, occurrence)

    def _lookup(self, run: Run, key: StepKey) -> tuple[bool, Any, str | None]:
        """(replayed, value, reason to run instead): the replay rule applied to one call."""
        decision = decide(run.completed, key, self.code_digest, self.name)
        record = decision.record
        if record is None:
            return False, None, decision.reason
        try:
            value = run.load(record)
        except Exception as exc:
            reason = str(exc) if isinstance(exc, BlobError) else f"stored value unreadable: {exc}"
            run.warn_once(self.name, f"step {self.name}: {reason}")
            return False, None, reason
        if record.printed:
            _emit_replayed(run.store.step_stdout(record.id))
        run.replayed.append(record.id)
        return True, value, None

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        scope = _current.get()
        if scope is None:
            return self.fn(*args, **kwargs)
        run = scope.run
        key = self._key(scope, args, kwargs)  # at call time: deterministic under gather()
        if self.is_async:
            return self._call_async(run, key, args, kwargs)
        replayed, value, reason = self._lookup(run, key)
        if replayed:
            return value
        for attempt in range(1, self.retries + 2):
            started = time.time()
            tee = Tee(sys.stdout)
            token = _current.set(_Scope(run, key))
            sys.stdout = tee
            try:
                value = self.fn(*args, **kwargs)
            except BaseException as exc:
                sys.stdout = tee.target
                _current.reset(token)
                if self._record_failure(
                    run, key, attempt, started, args, kwargs, tee.parts, exc, reason
                ):
                    time.sleep(self._delay(attempt))
                    continue
                raise
            sys.stdout = tee.target
            _current.reset(token)
            self._record_success(run, key, attempt, started, args, kwargs, tee.parts, value, reason)
            return value
        raise AssertionError("unreachable")

    async def _call_async(
        self, run: Run, key: StepKey, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        replayed, value, reason = self._lookup(run, key)
        if replayed:
            return value
        for attempt in range(1, self.retries + 2):
            started = time.time()
            token = _current.set(_Scope(run, key))
            with task_output() as printed:
                try:
                    value = await self.fn(*args, **kwargs)
                except BaseException as exc:
                    _current.reset(token)
                    if self._record_failure(
                        run, key, attempt, started, args, kwargs, printed, exc, reason
                    ):
                        await asyncio.sleep(self._delay(attempt))
                        continue
                    raise
            _current.reset(token)
            encoded, why = _encode(value)
            store = await run.async_store()
            if _common(encoded, printed, reason):
                await store.insert_completed(
                    self._completed_row(run, key, attempt, started, args, kwargs, value, encoded)
                )
            else:
                blob = None
                if encoded is not None and not encoded.inline:  # off the loop, before its row
                    blob = await asyncio.to_thread(run.store.blobs.write, encoded.segments)
                await store.insert_step(
                    self._success_row(
                        run, key, attempt, started, args, kwargs, printed, value, encoded, blob,
                        why or reason,
                    )
                )  # fmt: skip
            self._completed(run, value, why)
            return value
        raise AssertionError("unreachable")

    def _delay(self, attempt: int) -> float:
        return self.retry_delay * self.backoff ** (attempt - 1)

    def _row(
        self, run: Run, key: StepKey, attempt: int, status: str, started: float,
        args: tuple[Any, ...], kwargs: dict[str, Any], printed: list[str],
        result: _Result = (None, None, None, None, None, None),
        error: _Error = (None, None, None), reason: str | None = None,
    ) -> StepRow:  # fmt: skip
        """The log row of one finished attempt of this step."""
        scope, name, digest, occurrence = key
        fmt, blob, size, type_name, value_repr, payload = result
        error_type, message, trace = error
        return StepRow(
            run.id, run.workflow, scope, name, digest, occurrence, self.code_digest, attempt,
            status, started, time.time(), fmt, blob, size, type_name, value_repr,
            _args_repr(args, kwargs), error_type, message, reason,
            "".join(printed) or None, payload, trace,
        )  # fmt: skip

    def _record_failure(
        self,
        run: Run,
        key: StepKey,
        attempt: int,
        started: float,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        printed: list[str],
        exc: BaseException,
        reason: str | None,
    ) -> bool:
        """Log a failed or interrupted attempt; True when another attempt should follow."""
        failed = isinstance(exc, Exception)
        error = (
            type(exc).__name__,
            str(exc)[:2000],
            "".join(traceback.format_exception(exc))[-20000:],
        )
        status = "failed" if failed else "interrupted"
        row = self._row(
            run, key, attempt, status, started, args, kwargs, printed, error=error, reason=reason
        )
        run.store.insert_step(row)
        return failed and attempt <= self.retries

    def _success_row(
        self, run: Run, key: StepKey, attempt: int, started: float, args: tuple[Any, ...],
        kwargs: dict[str, Any], printed: list[str], value: Any,
        encoded: serialization.Encoded | None, blob: str | None, reason: str | None,
    ) -> StepRow:  # fmt: skip
        """The log row of a finished call outside the common case: not durable (``encoded``
        None), a value in a blob file, printed output, or a reason to note."""
        status = "completed" if encoded is not None else "not_durable"
        result = _result(value, encoded, blob)
        return self._row(
            run, key, attempt, status, started, args, kwargs, printed, result, reason=reason
        )

    def _completed_row(
        self, run: Run, key: StepKey, attempt: int, started: float, args: tuple[Any, ...],
        kwargs: dict[str, Any], value: Any, encoded: serialization.Encoded,
    ) -> CompletedRow:  # fmt: skip
        """The log row of the common checkpoint: completed, value inline, nothing printed."""
        scope, name, digest, occurrence = key
        type_name, value_repr = serialization.describe(value)
        return CompletedRow(
            run.id, run.workflow, scope, name, digest, occurrence, self.code_digest, attempt,
            started, time.time(), encoded.size, type_name, value_repr, _args_repr(args, kwargs),
            encoded.segments[0],  # type: ignore[arg-type]
        )  # fmt: skip

    def _completed(self, run: Run, value: Any, why: str | None) -> None:
        """Count a finished call; warn once if its value is not durable."""
        run.steps_run += 1
        if why is not None:
            run.warn_once(
                self.name,
                f"step {self.name} returned a {serialization.describe(value)[0]} that cannot "
                f"be pickled; it is not durable and will run again next time "
                f"({why.split(';')[0]})",
            )

    def _record_success(
        self,
        run: Run,
        key: StepKey,
        attempt: int,
        started: float,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        printed: list[str],
        value: Any,
        reason: str | None,
    ) -> None:
        """Commit a completed step; a value that cannot be pickled is logged not durable."""
        encoded, why = _encode(value)
        if _common(encoded, printed, reason):
            run.store.insert_completed(
                self._completed_row(run, key, attempt, started, args, kwargs, value, encoded)
            )
        else:
            blob = None
            if encoded is not None and not encoded.inline:  # the blob exists before its row
                blob = run.store.blobs.write(encoded.segments)
            run.store.insert_step(
                self._success_row(
                    run, key, attempt, started, args, kwargs, printed, value, encoded, blob,
                    why or reason,
                )
            )  # fmt: skip
        self._completed(run, value, why)


@overload
def step(fn: F, /) -> F: ...
@overload
def step(
    *, name: str | None = ..., retries: int = ..., backoff: float = ..., retry_delay: float = ...
) -> Callable[[F], F]: ...
@overload
def step(fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any: ...


def step(fn: Any = None, /, *args: Any, **kwargs: Any) -> Any:
    """Make ``fn`` a durable step: ``@step``, ``@step(retries=3)``, or ``step(fn, *args)``.

    ``step(fn, *args, **kw)`` calls any callable once as a step (named after it).
    Options: ``name``, ``retries`` (extra attempts after an exception), ``retry_delay``
    (seconds before the first retry) and ``backoff`` (multiplier of the delay per attempt).
    """
    if fn is None:
        return lambda f: Step(f, **kwargs)
    if isinstance(fn, Step):
        return fn(*args, **kwargs)
    if not args and not kwargs:
        return Step(fn)
    return _adhoc_step(fn)(*args, **kwargs)


@functools.lru_cache(maxsize=512)
def _adhoc_step(fn: Callable[..., Any]) -> Step:
    return Step(fn)
