"""Looking before running: what a workflow would replay and run now, without running it.

``workflow(NAME, plan=True)`` runs a workflow's code with replay only: completed steps
replay, and the first step that would run raises ``PlanStop`` instead (the workflow catches
it), so nothing runs and nothing is written. ``plan(flow)`` does it for a ``@workflow``
function; ``%%durable NAME --plan`` for a cell.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any, NamedTuple

from .errors import DurableError

__all__ = ["Plan", "plan"]


class Plan(NamedTuple):
    """What running a workflow would do now: how many steps replay, and the first that runs."""

    workflow: str
    replayed: int
    step: str | None = None  # None: every step call replays
    args: str | None = None
    reason: str | None = None

    def __str__(self) -> str:
        head = f"plan {self.workflow}: {self.replayed} steps replay"
        if self.step is None:
            return f"{head}; nothing would run"
        why = f" ({self.reason})" if self.reason else " (not in the log)"
        return f"{head}, then {self.step}({self.args}) would run{why}; nothing was run"


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
    from .engine import workflow

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
