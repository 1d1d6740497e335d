"""One call of a step inside a run, and the log row of each of its finished attempts.

Every row a step writes is built here, by ``Call.row``: the key, the dependency digest, the
result or the error, what it showed, its parameters and result fields (``log.documents``).
``run.Run.record`` stores the digest's document (once per digest and process) before the
row, so every row's digest can be explained later.
"""

from __future__ import annotations

import contextlib
import json
import time
import traceback
from typing import TYPE_CHECKING, Any

from ..log import serialization
from ..log.documents import metrics_document, result_documents
from ..log.records import CheckpointRow, CompletedRow, StepKey, StepRow
from ..log.serialization import PICKLE, args_repr
from ..log.signing import sign, sign_blob
from .capture import Event, settle, stdout_of

if TYPE_CHECKING:
    from .digests import Arguments
    from .run import Run
    from .walk import Digest

__all__ = ["Call", "args_repr"]


def encode(value: Any) -> tuple[serialization.Encoded | None, str | None]:
    """A step value's encoding, or None and why it is not durable."""
    try:
        return serialization.encode(value), None
    except serialization.NotSerializable as exc:
        return None, f"result cannot be pickled ({exc.reason}); it runs again next time"


_TRACEBACK_CHARS = 20_000
_new_row = tuple.__new__  # a NamedTuple from a tuple, without its Python-level __new__
_COPIED = 4096  # inline values up to this size are bound as a bytearray (about 1 us less)


def _traceback(error: BaseException, step: str) -> str:
    """The traceback to keep for a failed step: its last 20,000 characters, or, when the
    error came out of a nested step whose row already holds it, a pointer to that row (so a
    deep recursion of steps keeps one traceback, not one per level)."""
    remote = getattr(error, "__durable_nb_remote__", None)
    if remote is not None:  # raised on a worker: its traceback there
        return remote[-_TRACEBACK_CHARS:]
    inner = getattr(error, "__durable_nb_step__", None)
    if inner is not None:
        return f"{type(error).__name__} raised in nested step {inner}; its row has the traceback"
    with contextlib.suppress(AttributeError, TypeError):  # exceptions without a __dict__
        error.__durable_nb_step__ = step  # type: ignore[attr-defined]
    return "".join(traceback.format_exception(error))[-_TRACEBACK_CHARS:]


class Call:
    """One call of a step in a run: its key, its digest, its arguments, why it runs."""

    __slots__ = ("args", "arguments", "attempt", "checkpoints", "digest", "keep", "key",
                 "kwargs", "name", "reason", "run", "shown", "started", "state_row")  # fmt: skip

    def __init__(
        self,
        run: Run,
        name: str,
        key: StepKey,
        digest: Digest,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        arguments: Arguments | None = None,
    ) -> None:
        self.run = run
        self.name = name
        self.key = key
        self.digest = digest
        self.args = args
        self.kwargs = kwargs
        self.arguments = arguments  # the step's signature, for the params document
        self.reason: str | None = None
        self.attempt = 1
        self.started = 0.0  # when the running attempt started
        self.state_row: int | None = None  # the id of the state it saved last
        self.checkpoints = 0  # number of its newest checkpoint (saved, or resumed from)
        self.keep = False  # keep its checkpoints' states once it completes
        self.shown: tuple[str, str | None] | None = None  # (args repr, params), once needed

    def row(
        self,
        attempt: int,
        started: float,
        printed: list[Event],
        *,
        value: Any = None,
        encoded: serialization.Encoded | None = None,
        blob: str | None = None,
        error: BaseException | None = None,
        note: str | None = None,
        interrupted: bool = False,
    ) -> StepRow | CompletedRow:
        """The row of one finished attempt: failed or interrupted (``error``), else completed
        with ``value`` (not durable when ``encoded`` is None; ``interrupted`` when Ctrl-C
        arrived while it ran: kept, never replayed). The common checkpoint (value inline,
        nothing printed, nothing to note) is the smaller ``CompletedRow``."""
        run, (scope, name, digest, occurrence) = self.run, self.key
        if self.arguments is not None:
            shown, params = self.arguments.documents(self.args, self.kwargs)
        else:
            shown, params = args_repr(self.args, self.kwargs), None
        reason = note or self.reason
        if interrupted:
            reason = "Ctrl-C arrived while it ran and it returned: kept, but it runs again"
        if error is None and encoded is not None and encoded.inline and not printed and not reason:
            type_name, value_repr, metrics = result_documents(value)
            payload = encoded.segments[0]
            signature = sign(PICKLE, payload)
            if encoded.size <= _COPIED:  # sqlite3 looks up an adapter for bytes, not bytearray
                payload = bytearray(payload)
            return _new_row(CompletedRow, (
                run.id, run.workflow, scope, name, digest, occurrence, self.digest.value,
                attempt, started, time.time(), encoded.size, type_name, value_repr, shown,
                payload, params, metrics, signature,
            ))  # fmt: skip
        events = settle(printed) if printed else []
        stdout = stdout_of(events) or None
        extra = any(e[0] != "stdout" for e in events)
        output = json.dumps(events, default=str) if extra else None
        fmt = size = type_name = value_repr = payload = metrics = signature = None
        error_type = message = trace = None
        if error is not None:
            status = "failed" if isinstance(error, Exception) else "interrupted"
            error_type, message = type(error).__name__, str(error)[:2000]
            trace = _traceback(error, name)
        else:
            status = "completed" if encoded is not None else "not_durable"
            status = "interrupted" if interrupted else status
            type_name, value_repr = serialization.describe(value)
            metrics = metrics_document(value)
            if encoded is not None:
                fmt, size = encoded.format, encoded.size
                payload = encoded.segments[0] if encoded.inline else None
                signature = sign(fmt, payload) if payload is not None else sign_blob(fmt, blob)
        return StepRow(
            run.id, run.workflow, scope, name, digest, occurrence, self.digest.value, attempt,
            status, started, time.time(), fmt, blob, size, type_name, value_repr, shown,
            error_type, message, reason, stdout, payload, trace, output, params,  # type: ignore[arg-type]
            metrics, signature,
        )  # fmt: skip

    def checkpoint_row(
        self, seq: int, encoded: serialization.Encoded, blob: str | None, metrics: str | None
    ) -> CheckpointRow:
        """The row of one state saved by this call's running attempt (``checkpoint()``):
        its key and digest as its step rows have them, the state signed as a value is."""
        run, (scope, name, digest, occurrence) = self.run, self.key
        if self.shown is None:  # the same for each checkpoint of the call
            self.shown = (
                self.arguments.documents(self.args, self.kwargs)
                if self.arguments is not None
                else (args_repr(self.args, self.kwargs), None)
            )
        shown, params = self.shown
        payload = encoded.segments[0] if encoded.inline else None
        fmt = encoded.format
        signature = sign(fmt, payload) if payload is not None else sign_blob(fmt, blob)
        return CheckpointRow(
            run.workflow, scope, name, digest, occurrence, run.id, self.digest.value,
            self.attempt, seq, self.started, time.time(), shown, params, fmt, blob,
            encoded.size, bytes(payload) if payload is not None else None, metrics, signature,
            self.keep,
        )  # fmt: skip

    def document(self) -> str:
        """The JSON document of this call's digest (what it covers)."""
        return json.dumps(self.digest.doc(self.name))
