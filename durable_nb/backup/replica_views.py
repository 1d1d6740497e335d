"""The one-log views (``durable_nb.runs()`` and the others), which also read a replica in
place: ``durable_nb.runs("s3://bucket/team/host/nb-1a2b3c/nb", as_of="2026-12-07T10:00Z")``
shows that log as it was then, without restoring it."""

from __future__ import annotations

import dataclasses
import functools
import inspect
from collections.abc import Callable
from typing import Any

from ..errors import ReplicationError
from ..log.location import is_database_url
from ..log.store import Store
from ..views import checkpoints as _checkpoints
from ..views import experiments as _experiments
from ..views import frames
from . import inplace
from .replica import Replica, parse_url

__all__ = ["checkpoints", "events", "experiments", "in_place", "runs", "steps", "timeline"]


def _check_replicated(replica: Replica) -> None:
    """A one-line error if nothing is replicated at ``replica`` (the VFS would wait for it)."""
    parent, _, name = replica.path.rpartition("/")
    if name not in {item.name for item in dataclasses.replace(replica, path=parent).listing()}:
        raise ReplicationError(
            f"nothing is replicated at {replica.url}; check the URL (durable_nb.fleet(ROOT)"
            ".logs() lists the replicas under a root)",
            url=replica.url,
        )


def _is_url(log: Any) -> bool:
    """Whether ``log`` is a replica's URL (a PostgreSQL log's is read as any log)."""
    return isinstance(log, str) and "://" in log and not is_database_url(log)


def in_place(view: Callable[..., Any]) -> Callable[..., Any]:
    """``view`` that also reads a replica in place: ``log=`` a replica URL (``s3://…``,
    ``file:///…``), at ``as_of`` a moment if given (without restoring it)."""
    signature = inspect.signature(view)
    as_of = inspect.Parameter("as_of", inspect.Parameter.KEYWORD_ONLY, default=None)

    @functools.wraps(view)
    def reading(*args: Any, as_of: Any = None, **kwargs: Any) -> Any:
        bound = signature.bind(*args, **kwargs)
        log = bound.arguments.get("log")
        if not _is_url(log):
            if as_of is not None:
                raise ValueError(
                    "as_of= shows a replica as it was at a moment: give its URL as log= "
                    "(s3://bucket/prefix or file:///dir), or Fleet views as_of="
                )
            return view(*args, **kwargs)
        replica = parse_url(log)
        inplace.start()  # (it loads while the replica's folder is listed)
        _check_replicated(replica)

        def read(store: Store) -> Any:
            bound.arguments["log"] = store
            return view(*bound.args, **bound.kwargs)

        return inplace.read_once(replica, read, as_of=as_of)

    reading.__signature__ = signature.replace(  # type: ignore[attr-defined]
        parameters=[*signature.parameters.values(), as_of]
    )
    reading.__doc__ = (view.__doc__ or "") + (
        "\n\n    ``log`` may be a replica's URL: it is read in place (nothing restored), as it "
        "was at ``as_of`` (a time) when given."
    )
    return reading


runs = in_place(frames.runs)
steps = in_place(frames.steps)
events = in_place(frames.events)
timeline = in_place(frames.timeline)
experiments = in_place(_experiments.experiments)
checkpoints = in_place(_checkpoints.checkpoints)
