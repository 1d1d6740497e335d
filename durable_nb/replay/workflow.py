"""Workflows: ``with workflow(NAME):``, ``async with``, ``@workflow``, and ``plan()``.

Entering a workflow starts a run in the log and makes it the context's scope, so that steps
called inside replay from the workflow's earlier runs; leaving it records how the run ended.
"""

from __future__ import annotations

import contextvars
import functools
import inspect
from collections.abc import Callable
from typing import Any

from ..errors import DurableError, PlanStop
from ..log.current_log import get_store
from ..log.store import Store
from . import capture
from .codeinfo import display_name
from .context import Scope, current, running
from .plan import Plan
from .run import Run

__all__ = ["plan", "workflow"]


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
        self._token: contextvars.Token[Scope | None] | None = None
        self._wrapped: Callable[..., Any] | None = None
        if fn is not None:
            self._wrapped = _named_workflow(fn, display_name(fn), store, fresh)
            functools.update_wrapper(self, fn)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if self._wrapped is not None:  # ``@workflow`` on a function: run it as a workflow
            return self._wrapped(*args, **kwargs)
        (fn,) = args  # ``@workflow("name")``: decorate the function
        return _named_workflow(fn, self.name or display_name(fn), self.store, self.fresh)

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
        self._root = Scope(self.run, None)
        self._token = current.set(self._root)
        if not self.plan:
            running.append(self._root)
        return self.run

    def _leave(self, exc: BaseException | None) -> bool:
        assert self.run is not None and self._token is not None
        try:
            current.reset(self._token)
        except ValueError:  # exited in another context (e.g. a task): just clear it
            current.set(None)
        if self._root in running:
            running.remove(self._root)
            if not running:
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


def plan(target: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
    """What calling a ``@workflow`` function would do now, without running any step.

    Calls ``target(*args, **kwargs)`` with replay only: completed steps replay; at the first
    step that would run, it stops and returns a ``Plan`` naming it and why. Nothing is
    written to the log. For an ``async def`` workflow it returns an awaitable.
    """
    spec = getattr(target, "__durable_workflow__", None)
    if spec is None:
        raise DurableError(
            f"plan() takes a @workflow function, not {target!r}; for a block of code use "
            "with workflow(NAME, plan=True) as run: ... then run.plan_result"
        )
    name, store = spec
    fn = target.__wrapped__  # type: ignore[attr-defined]
    if inspect.iscoroutinefunction(fn):

        async def planned() -> Plan:
            async with workflow(name, store=store, plan=True) as run:
                await fn(*args, **kwargs)
            return run.plan_result

        return planned()
    with workflow(name, store=store, plan=True) as run:
        fn(*args, **kwargs)
    return run.plan_result
