"""Looking before running: what a workflow would replay and run now, without running it.

``workflow(NAME, plan=True)`` runs a workflow's code with replay only: completed steps
replay, and the first step that would run raises ``PlanStop`` instead (the workflow catches
it), so nothing runs and nothing is written. ``plan(flow)`` (module ``workflow``) does it
for a ``@workflow`` function; ``%%durable NAME --plan`` for a cell. A ``Plan`` says what it found.
"""

from __future__ import annotations

from typing import NamedTuple

__all__ = ["Plan"]


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
