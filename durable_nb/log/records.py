"""Records read from the log: frozen dataclasses, built from rows only in ``store``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

__all__ = [
    "RUN_STATUSES",
    "STEP_STATUSES",
    "CellRecord",
    "CheckpointRow",
    "RunRecord",
    "StepKey",
    "StepRow",
    "StoredCheckpoint",
    "StoredStep",
]

RUN_STATUSES = ["running", "completed", "failed", "interrupted", "crashed"]
STEP_STATUSES = ["completed", "failed", "interrupted", "not_durable"]

StepKey = tuple[str, str, str, int]
"""(scope, step name, argument digest, occurrence) within one workflow."""


@dataclass(frozen=True)
class RunRecord:
    """One execution of a workflow."""

    id: int
    workflow: str
    status: str
    started_at: float
    ended_at: float | None
    owner: str
    pid: int
    source_digest: str | None
    inputs_digest: str | None
    steps_run: int
    steps_replayed: int
    error: str | None


@dataclass(frozen=True)
class StoredStep:
    """A completed step as the replay rule needs it; ``payload`` is None when not preloaded."""

    id: int
    run_id: int
    code_digest: str
    result_format: str
    payload: bytes | None
    result_blob: str | None
    printed: bool  # it showed something (stdout, stderr or displays) to show again
    signature: bytes | None = None  # the user's signature of its value (``signing``)


@dataclass(frozen=True)
class StoredCheckpoint:
    """The newest saved state of a call (``checkpoint()``), as ``last_checkpoint`` needs it."""

    run_id: int
    code_digest: str
    attempt: int
    seq: int
    state_format: str
    state_blob: str | None
    state: bytes | None  # inline (else in the blob)
    signature: bytes | None


@dataclass(frozen=True)
class CellRecord:
    """What a completed notebook cell left: its variables, its displayed outputs, and the
    step calls its run used."""

    run_id: int
    variables: bytes
    outputs: bytes
    steps: str | None  # JSON: the step calls the run used (None: saved by an older version)
    modules: str | None = None  # JSON: what the user's modules it imports held at its end
    signature: bytes | None = None  # the user's signature of ``variables`` (``signing``)


class BlobsCollected(NamedTuple):
    """What ``Store.collect_blobs`` removed."""

    files: int
    bytes: int

    def __str__(self) -> str:
        if not self.files:
            return "no unreferenced blob files to remove"
        return f"removed {self.files} unreferenced blob files ({self.bytes / 2**20:.1f} MiB)"


class CompletedRow(NamedTuple):
    """The common checkpoint: a completed step whose value is pickled inline, that printed
    nothing and has no reason to note. Its INSERT binds only these columns (status and
    format are literals), about 3 us less per step than a ``StepRow``."""

    run_id: int
    workflow: str
    scope: str
    name: str
    args_digest: str
    occurrence: int
    code_digest: str
    attempt: int
    started_at: float
    ended_at: float
    result_size: int
    result_type: str
    result_repr: str
    args_repr: str
    result: bytes | bytearray
    params: str | None
    metrics: str | None
    signature: bytes


class StepRow(NamedTuple):
    """One finished attempt of a step (failed, interrupted, not durable, or completed with a
    blob, printed output or a reason), in the column order of its INSERT."""

    run_id: int
    workflow: str
    scope: str
    name: str
    args_digest: str
    occurrence: int
    code_digest: str
    attempt: int
    status: str
    started_at: float
    ended_at: float
    result_format: str | None
    result_blob: str | None
    result_size: int | None
    result_type: str | None
    result_repr: str | None
    args_repr: str
    error_type: str | None
    error_message: str | None
    reason: str | None
    stdout: str | None
    result: bytes | None
    error_traceback: str | None
    output: str | None  # JSON events when it showed more than stdout (stderr, displays)
    params: str | None  # JSON: its arguments by parameter name (``log.documents``)
    metrics: str | None  # JSON: its result's fields (``log.documents``)
    signature: bytes | None  # the user's signature of its value (``signing``)


class CheckpointRow(NamedTuple):
    """One saved state of a running call, as inserted (built by ``calls.Call``)."""

    workflow: str
    scope: str
    name: str
    args_digest: str
    occurrence: int
    run_id: int
    code_digest: str
    attempt: int
    seq: int
    started_at: float
    created_at: float
    args_repr: str
    params: str | None
    state_format: str
    state_blob: str | None
    state_size: int
    state: bytes | None
    metrics: str | None
    signature: bytes
    keep: bool
