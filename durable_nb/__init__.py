"""durable_nb: durable notebook cells, checkpointed in a per-notebook SQLite log.

``%load_ext durable_nb`` registers the ``%%durable`` magic; ``@step`` marks functions whose
calls are checkpointed and replayed. Heavy modules (pandas, ipywidgets, boto3, IPython) are
imported only when the feature that needs them is used.
"""

from __future__ import annotations

from typing import Any

from .backup.fleet import Fleet, fleet  # the module is light: boto3 and pandas load on first use
from .errors import (
    BlobError,
    CheckpointError,
    DurableError,
    DurableWarning,
    LogFileError,
    PlanStop,
    ReplicationError,
    SchemaTooNewError,
    WorkflowBusyError,
)
from .log.current_log import get_store, open_log
from .log.store import Store
from .log.trust import trust
from .replay.accept import accept
from .replay.checkpoints import acheckpoint, checkpoint, last_checkpoint
from .replay.context import current_run
from .replay.engine import Step, step
from .replay.executors import use_executor  # dask is imported by the user, never here
from .replay.plan import Plan
from .replay.run import Run
from .replay.workflow import plan, workflow
from .views.experiments import compare  # pandas is imported when it is called

__version__ = "0.1.0"

_LAZY = {  # name -> module: these import pandas / boto3, so they load on first use
    **dict.fromkeys(
        ("checkpoints", "events", "experiments", "runs", "steps", "timeline"),
        "backup.replica_views",  # a log, or a replica read in place
    ),
    "result": "views.frames",
    **dict.fromkeys(("replicate", "replication_status", "stop_replication"), "backup.replication"),
    **dict.fromkeys(("restore", "restore_points"), "backup.restore"),
    "FleetPanel": "notebook.fleet_panel",
    "RestorePanel": "notebook.panel",
}

__all__ = [
    "BlobError",
    "CheckpointError",
    "DurableError",
    "DurableWarning",
    "Fleet",
    "FleetPanel",
    "LogFileError",
    "Plan",
    "PlanStop",
    "ReplicationError",
    "RestorePanel",
    "Run",
    "SchemaTooNewError",
    "Step",
    "Store",
    "WorkflowBusyError",
    "accept",
    "acheckpoint",
    "checkpoint",
    "checkpoints",
    "compare",
    "current_run",
    "events",
    "experiments",
    "fleet",
    "get_store",
    "last_checkpoint",
    "load_ipython_extension",
    "open_log",
    "plan",
    "replicate",
    "replication_status",
    "restore",
    "restore_points",
    "result",
    "runs",
    "step",
    "steps",
    "stop_replication",
    "timeline",
    "trust",
    "unload_ipython_extension",
    "use_executor",
    "workflow",
]


def __getattr__(name: str) -> Any:
    """Load views and replication on first use, so ``import durable_nb`` stays light."""
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'durable_nb' has no attribute {name!r}")


def load_ipython_extension(ipython: Any) -> None:
    """``%load_ext durable_nb``: register the magics (imported only now)."""
    from .notebook.magics import load

    load(ipython)


def unload_ipython_extension(ipython: Any) -> None:
    """``%unload_ext durable_nb``: remove the magics and the cell transformer."""
    from .notebook.magics import unload

    unload(ipython)
