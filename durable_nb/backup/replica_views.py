"""The one-log views (``durable_nb.runs()`` and the others), which also read a replica in
place: ``durable_nb.runs("s3://bucket/team/host/nb-1a2b3c/nb", as_of="2026-12-07T10:00Z")``
shows that log as it was then, without restoring it."""

from __future__ import annotations

from ..views import checkpoints as _checkpoints
from ..views import experiments as _experiments
from ..views import frames
from .inplace import in_place

__all__ = ["checkpoints", "events", "experiments", "runs", "steps", "timeline"]

runs = in_place(frames.runs)
steps = in_place(frames.steps)
events = in_place(frames.events)
timeline = in_place(frames.timeline)
experiments = in_place(_experiments.experiments)
checkpoints = in_place(_checkpoints.checkpoints)
