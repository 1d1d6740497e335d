"""A step's calls on an executor: a Dask cluster, or any ``concurrent.futures.Executor``.

The kernel stays the only writer of the log. ``Step.map(xs, executor=client)`` first applies
the replay rule to every call, in input order (so occurrence numbers follow submission
order): completed calls replay here and never reach the cluster; only the misses are
submitted, each under a task key of its own (two identical calls are two occurrences, and
Dask must not merge them). Workers never open the log: a call runs in ``run_remote``, which
captures what it prints and returns an ``Outcome``; the kernel commits each one as it
arrives (a large value blob-first, as for a local step), with what it printed: shown again on
replay (live, a worker's output goes where the worker's goes).

Faults: a call that raises is logged failed with its remote traceback, the other calls go
on (none is cancelled) and are committed, then the map raises the first error; a step's
``retries`` submit it again after ``retry_delay`` (times ``backoff``), meanwhile. A worker
killed mid-task is Dask's to reschedule; once it gives up, ``KilledWorker`` is the call's
error. Ctrl-C cancels the outstanding calls, logs them interrupted, and re-raises. A kernel
killed mid-map loses nothing committed: the rerun replays those calls and submits the rest.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import pickle
import queue
import sys
import threading
import time
import traceback
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..errors import DurableError
from . import context
from .capture import Capture, Event, settle

if TYPE_CHECKING:
    from .calls import Call
    from .engine import Step

__all__ = ["Outcome", "RemoteError", "run_remote", "use_executor"]

_BAR_FROM = 20  # calls: a map of fewer shows no progress bar
_default: list[Any] = []  # the executor set by use_executor, innermost last


class RemoteError(Exception):
    """An exception raised on a worker that could not travel back as itself."""


@dataclass
class Outcome:
    """What one call did on a worker: when, what it showed, its value or its error."""

    started: float
    ended: float
    events: list[Event] = field(default_factory=list)
    value: Any = None
    error: BaseException | None = None
    trace: str | None = None


def _portable(exc: BaseException) -> BaseException:
    try:
        pickle.loads(pickle.dumps(exc))
    except Exception:
        return RemoteError(f"{type(exc).__name__}: {exc}")
    return exc


def _shipped(fn: Any, executor: Any) -> Any:
    """The function as sent to a process pool: cloudpickled (a notebook's functions are in
    ``__main__``, which pickle can only name), unless the pool shares this process."""
    if isinstance(executor, concurrent.futures.ThreadPoolExecutor):
        return fn
    try:
        import cloudpickle
    except ImportError:
        return fn
    return cloudpickle.dumps(fn)


def run_remote(fn: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Outcome:
    """Run one call where the executor puts it, capturing what it prints (on the worker)."""
    if isinstance(fn, bytes):
        fn = pickle.loads(fn)
    if getattr(fn, "__durable_step__", False):  # sent by name: its module's step
        fn = fn.fn
    token = context.on_worker()  # steps it calls run plain here: only the kernel writes
    started = time.time()
    shown = Capture(routed=True)
    value = error = trace = None
    try:
        value = fn(*args, **kwargs)
    except Exception as exc:
        error, trace = _portable(exc), "".join(traceback.format_exception(exc))
    finally:
        shown.stop()
        context.worker.reset(token)
    return Outcome(started, time.time(), settle(shown.events), value, error, trace)


class use_executor:  # used like a function, and as a context manager
    """Make ``executor`` the default of ``Step.map`` / ``Step.submit``: from now on, or
    inside ``with durable_nb.use_executor(client):`` only."""

    def __init__(self, executor: Any) -> None:
        self.executor = executor
        _default.append(executor)

    def __repr__(self) -> str:
        return f"default executor of step.map / submit: a {type(self.executor).__name__}"

    def __enter__(self) -> Any:
        return self.executor

    def __exit__(self, *exc: object) -> None:
        if self.executor in _default:
            _default.reverse()
            _default.remove(self.executor)  # the innermost one
            _default.reverse()


def _chosen(executor: Any) -> Any:
    chosen = executor if executor is not None else (_default[-1] if _default else None)
    if chosen is None:
        raise DurableError(
            "no executor: pass executor=client (a dask.distributed.Client or a "
            "concurrent.futures.Executor), or set one with durable_nb.use_executor(client)"
        )
    if not callable(getattr(chosen, "submit", None)):
        raise DurableError(
            f"executor={chosen!r:.60} is not an executor: pass a dask.distributed.Client "
            "(Client('tcp://host:8786') for an address) or a concurrent.futures.Executor"
        )
    return chosen


def _is_dask(executor: Any) -> bool:
    distributed = sys.modules.get("distributed")
    return distributed is not None and isinstance(executor, distributed.Client)


class _Submitter:
    """Submits calls to one executor; each finished future lands in ``done``."""

    def __init__(self, executor: Any, step: Step) -> None:
        self.executor, self.step = executor, step
        self.dask = _is_dask(executor)
        self.done: queue.Queue[Any] = queue.Queue()
        self.prefix = f"{step.name}-{uuid.uuid4().hex[:8]}"

    def submit(self, calls: list[tuple[Call, int]], attempt: int = 1) -> list[Any]:
        fn: Any = self.step  # by name when importable, else by value (Step.__reduce__)
        if self.dask:  # one graph update; explicit keys: identical calls stay apart
            keys = [f"{self.prefix}-{n}-{call.key[2][:12]}-{attempt}" for call, n in calls]
            futures = self.executor.map(
                run_remote, [fn] * len(calls), [c.args for c, _ in calls],
                [c.kwargs for c, _ in calls], key=keys, pure=False,
            )  # fmt: skip
        else:
            fn = self.shipped = getattr(self, "shipped", None) or _shipped(fn, self.executor)
            futures = [self.executor.submit(run_remote, fn, c.args, c.kwargs) for c, _ in calls]
        for future in futures:
            future.add_done_callback(self.done.put)
        return futures

    def cancel(self, futures: list[Any]) -> None:
        if self.dask and futures:
            self.executor.cancel(futures)
        else:
            for future in futures:
                future.cancel()


def _outcome(future: Any) -> Outcome:
    """A finished future as an Outcome (an error of the cluster itself, e.g. KilledWorker,
    becomes the call's error)."""
    try:
        return future.result()
    except BaseException as exc:  # whatever ended it is the call's error
        if isinstance(exc, KeyboardInterrupt):
            raise
        now = time.time()
        return Outcome(now, now, [], None, exc, None)


def _commit(step: Step, call: Call, attempt: int, outcome: Outcome) -> bool:
    """Log one finished call; True when it failed and should be submitted again."""
    if outcome.error is not None:
        error = outcome.error
        if outcome.trace:
            with contextlib.suppress(AttributeError, TypeError):
                error.__durable_nb_remote__ = outcome.trace  # type: ignore[attr-defined]
        return step._failed(call, attempt, outcome.started, outcome.events, error)
    step._succeeded(call, attempt, outcome.started, outcome.events, outcome.value)
    return False


def _scope_or_none() -> Any:
    return context.current.get() or context.find_scope()


def _bar(total: int, replayed: int, name: str) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=replayed, desc=f"{name}.map", unit="call",
                disable=total < _BAR_FROM, leave=True)  # fmt: skip


def map_calls(
    step: Step, iterables: tuple[Iterable[Any], ...], executor: Any = None,
    stop: threading.Event | None = None,
) -> list[Any]:  # fmt: skip
    """``Step.map``: results in input order; see the module's docstring."""
    if step.is_async:
        raise DurableError(f"step {step.name} is async: map runs plain functions on workers")
    argsets = list(zip(*iterables, strict=False))  # as map(): the shortest decides
    chosen = _chosen(executor)
    scope = _scope_or_none()
    if scope is None:  # outside a workflow nothing is durable: compute, as a map would
        return [o.value if o.error is None else _raise(o) for o in _plain(chosen, step, argsets)]
    results: list[Any] = [None] * len(argsets)
    todo: list[tuple[Call, int]] = []
    for i, args in enumerate(argsets):  # in input order: occurrences follow it
        call = step._call(scope, args, {})
        replayed, value = step._lookup(call)
        if replayed:
            results[i] = value
        else:
            todo.append((call, i))
    if not todo:
        return results  # fully replayed: nothing reaches the executor
    submitter = _Submitter(chosen, step)
    attempts = {i: 1 for _, i in todo}
    index = {}
    for future, item in zip(submitter.submit(todo), todo, strict=True):
        index[future] = item
    replayed = len(argsets) - len(todo)
    bar = _bar(len(argsets), replayed, step.name)
    failures: list[tuple[int, BaseException]] = []
    waiting: list[tuple[float, Call, int]] = []  # retries not yet due (retry_delay, backoff)
    try:
        while index or waiting:
            if waiting:
                _resubmit_due(submitter, waiting, attempts, index)
            try:
                future = submitter.done.get(timeout=_wait(waiting))
            except queue.Empty:
                if stop is not None and stop.is_set():  # amap's task was cancelled
                    raise KeyboardInterrupt from None
                continue
            if future not in index:  # not one of ours any more (never expected)
                continue
            call, i = index[future]
            outcome = _outcome(future)
            retry = _commit(step, call, attempts[i], outcome)
            del index[future]  # only now: a Ctrl-C before this logs the call interrupted
            if retry:
                delay = step._delay(attempts[i])
                attempts[i] += 1
                waiting.append((time.monotonic() + delay, call, i))
                continue
            if outcome.error is None:
                results[i] = outcome.value
            else:
                failures.append((i, outcome.error))
            bar.update()
            bar.set_postfix(replayed=replayed, failed=len(failures), running=len(index),
                            refresh=False)  # fmt: skip
    except BaseException as exc:  # Ctrl-C, or the log failing: nothing is left running
        submitter.cancel(list(index))
        if isinstance(exc, KeyboardInterrupt):
            interrupt = KeyboardInterrupt()
            for call, i in [*index.values(), *((c, i) for _, c, i in waiting)]:
                call.run.record(call, call.row(attempts[i], time.time(), [], error=interrupt))
        raise
    finally:
        bar.close()
    if failures:
        first = min(failures, key=lambda f: f[0])[1]  # the first in input order
        if len(failures) > 1 or len(todo) > 1:
            note = (
                f"{len(failures)} of {len(argsets)} calls of {step.name} failed; the others "
                "are in the log"
            )
            if hasattr(first, "add_note"):
                first.add_note(note)
        raise first
    return results


def _resubmit_due(
    submitter: _Submitter, waiting: list[tuple[float, Call, int]], attempts: dict[int, int],
    index: dict[Any, tuple[Call, int]],
) -> None:  # fmt: skip
    """Submit the retries whose delay has passed (each attempt under a key of its own)."""
    now = time.monotonic()
    due = [(call, i) for at, call, i in waiting if at <= now]
    if due:
        waiting[:] = [w for w in waiting if w[0] > now]
        for call, i in due:
            (again,) = submitter.submit([(call, i)], attempts[i])
            index[again] = (call, i)


def _wait(waiting: list[tuple[float, Call, int]]) -> float:
    """How long to wait for the next finished call: until the next retry is due, at most
    0.2 s (a cancelled ``amap`` is noticed in that time)."""
    if not waiting:
        return 0.2
    return max(0.0, min(0.2, min(w[0] for w in waiting) - time.monotonic()))


def _plain_call(fn: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    return fn(*args, **kwargs)


def _raise(outcome: Outcome) -> Any:
    raise outcome.error  # type: ignore[misc]


def _plain(executor: Any, step: Step, argsets: list[tuple[Any, ...]]) -> Iterator[Outcome]:
    if _is_dask(executor):
        futures = executor.map(run_remote, [step] * len(argsets), argsets,
                               [{}] * len(argsets), pure=False)  # fmt: skip
        yield from executor.gather(futures)
        return
    fn = _shipped(step, executor)
    futures = [executor.submit(run_remote, fn, args, {}) for args in argsets]
    for future in futures:
        yield future.result()


def submit_call(
    step: Step, args: tuple[Any, ...], kwargs: dict[str, Any], executor: Any = None
) -> concurrent.futures.Future[Any]:
    """``Step.submit``: a future of the call's value. A completed call replays at once (the
    future is already done); else the call runs on the executor and its row is committed
    when it arrives. A call nobody waited for is waited for when the workflow ends (logged
    interrupted if Ctrl-C stops that wait), never lost."""
    if step.is_async:
        raise DurableError(f"step {step.name} is async: submit runs plain functions on workers")
    chosen = _chosen(executor)
    out: concurrent.futures.Future[Any] = concurrent.futures.Future()
    scope = _scope_or_none()
    if scope is None:  # outside a workflow: a plain call (its kwargs are not the executor's)
        return chosen.submit(_plain_call, step.fn, args, kwargs)
    call = step._call(scope, args, kwargs)
    replayed, value = step._lookup(call)
    if replayed:
        out.set_result(value)
        return out
    submitter = _Submitter(chosen, step)
    call.run.submitted[out] = call  # the run's end waits for it, if nobody else does
    out.add_done_callback(lambda done: call.run.submitted.pop(done, None))

    def send(attempt: int) -> None:
        (remote,) = submitter.submit([(call, 0)], attempt)
        remote.add_done_callback(lambda future: arrived(future, attempt))

    def arrived(future: Any, attempt: int) -> None:
        outcome = _outcome(future)
        try:
            again = _commit(step, call, attempt, outcome)
        except BaseException as exc:  # handed to whoever waits
            out.set_exception(exc)
            return
        if again:  # retries, after retry_delay (times backoff), each a task of its own
            timer = threading.Timer(step._delay(attempt), resend, (attempt + 1,))
            timer.daemon = True
            timer.start()
        elif outcome.error is not None:
            out.set_exception(outcome.error)
        else:
            out.set_result(outcome.value)

    def resend(attempt: int) -> None:
        try:
            send(attempt)
        except BaseException as exc:  # the executor broke or was shut down meanwhile
            out.set_exception(exc)

    send(1)
    return out


async def amap_calls(step: Step, iterables: tuple[Iterable[Any], ...], executor: Any) -> list[Any]:
    """``Step.amap``: ``map`` for async code (it waits in a thread, the loop stays free)."""
    stop = threading.Event()
    try:
        return await asyncio.to_thread(map_calls, step, iterables, executor, stop)
    except BaseException:  # cancelled (Ctrl-C in an async cell): the thread stops too
        stop.set()
        raise
