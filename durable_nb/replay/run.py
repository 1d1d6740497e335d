"""One execution of a workflow: its row in the log, and what replay needs of it in memory
(the completed records it may replay, what it replayed and ran, how it ended)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import sys
import threading
import time
import warnings
from typing import TYPE_CHECKING, Any

from ..errors import DurableWarning, PlanStop, user_stacklevel
from ..log import checkpoints, serialization
from ..log.records import CompletedRow, StepRow, StoredStep
from ..log.signing import NotSigned, valid
from ..log.store import Store
from . import interrupts
from .codeinfo import package_version
from .reasons import explain
from .walk import RunDependencies

if TYPE_CHECKING:
    from ..log.store_async import AsyncStore
    from .calls import Call
    from .plan import Plan

__all__ = ["Run"]

_PYTHON = sys.version.split()[0]


class Run:
    """One execution of a workflow: the log's run row plus what replay needs in memory.

    With ``plan=True`` nothing is written: the first step that would run raises
    ``PlanStop`` instead of running.
    """

    def __init__(
        self,
        store: Store,
        workflow: str,
        *,
        fresh: bool = False,
        plan: bool = False,
        source_digest: str | None = None,
        inputs_digest: str | None = None,
    ) -> None:
        self.store = store
        self.workflow = workflow
        self.plan = plan
        self.completed = None if fresh else store.completed_steps(workflow)
        # calls with a kept checkpoint state: finished as they complete or replay
        self.kept = set() if plan else checkpoints.kept_keys(store, workflow)
        self.id = (
            0
            if plan
            else store.begin_run(workflow, source_digest=source_digest, inputs_digest=inputs_digest)
        )
        self.started = time.perf_counter()
        self.steps_run = 0
        self.replayed: list[int] = []  # ids of the step records this run replayed
        self.status = "running"
        self.deps = RunDependencies()
        # (step, digest) of every call answered from the log or completed: a cell's skip
        # later needs each to be still valid; the value: what its arguments brought (refs)
        self.used: dict[tuple[str, str], list[list[str]]] = {}
        self.interrupts = interrupts.count()
        self._watching = not plan and interrupts.watch()
        self.remarks: list[str] = []  # said once at the end of the run (version changes, ...)
        self.plan_result: Plan | None = None
        self._versions: dict[tuple[str, str, str], list[str]] = {}
        self._environments: dict[int, dict[str, tuple[str, str]]] = {}  # run -> changed
        self._predating = 0
        self._warned: set[str] = set()
        self._aio: AsyncStore | None = None
        self._aio_ready: asyncio.Future[AsyncStore] | None = None
        self.tasks: set[asyncio.Task[Any]] = set()  # async steps running now
        self.lock = threading.Lock()
        self.failures: list[tuple[str, str]] = []  # (step, error) of calls that failed for good
        self.plan_stop: PlanStop | None = None  # the first step a plan would run
        self.first_row: int | None = None
        self.submitted: dict[concurrent.futures.Future[Any], Call] = {}  # step.submit calls
        # not finished yet

    async def async_store(self) -> AsyncStore:
        """The aiosqlite twin of the store, opened by the first async step that needs it."""
        if self._aio_ready is None:
            self._aio = self.store.async_twin()
            self._aio_ready = asyncio.ensure_future(self._aio.open())
        return await asyncio.shield(self._aio_ready)  # a cancelled step does not cancel it

    async def afinish(self, exc: BaseException | None) -> None:
        """``finish`` for async code: steps still running (``gather`` raised, say) are
        cancelled and awaited, so that they log themselves interrupted in this run, then
        the async twin is closed."""
        me = asyncio.current_task()
        pending = [t for t in self.tasks if t is not me and not t.done()]
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)
        if self._aio is not None:
            aio, self._aio = self._aio, None
            await aio.close()
        self.finish(exc)

    def finish(self, exc: BaseException | None) -> None:
        """Record the run's end: completed, failed (Exception) or interrupted (otherwise),
        once the calls submitted to an executor and not waited for have arrived."""
        exc = self._await_submitted(exc)
        if self._watching:
            self._watching = False
            interrupts.unwatch()
        if (exc is None or isinstance(exc, PlanStop)) and self.saw_interrupt:
            status, error = "interrupted", "KeyboardInterrupt, caught by the code"
        elif exc is None or isinstance(exc, PlanStop):
            status, error = "completed", None
        elif isinstance(exc, Exception):
            status, error = "failed", f"{type(exc).__name__}: {exc}"
        else:
            status, error = "interrupted", type(exc).__name__
        self.status = status
        self._remark()
        if self.plan:
            return
        if self._aio is not None:
            self._aio.stop()
        self.store.end_run(
            self.id,
            status,
            steps_run=self.steps_run,
            replayed=self.replayed,
            error=error,
            environment=self.deps.environment(),
            first_row=self.first_row,
        )

    def _await_submitted(self, exc: BaseException | None) -> BaseException | None:
        """Wait for the ``step.submit`` calls nobody waited for, so that each is logged in
        this run (said in its remarks); on Ctrl-C meanwhile, log those still out interrupted.
        Returns the run's exception (a Ctrl-C here becomes it)."""
        waiting = list(self.submitted.items())
        if not waiting:
            return exc
        said = f"waited for {len(waiting)} submitted calls the workflow had not waited for"
        self.remarks.append(said)
        self.warn_once("submitted", f"workflow {self.workflow}: {said} (wait for them before "
                                    "it ends: future.result())")  # fmt: skip
        try:
            concurrent.futures.wait([future for future, _ in waiting])
        except KeyboardInterrupt as stop:
            interrupt = KeyboardInterrupt()
            for future, call in waiting:
                if not future.done():
                    future.cancel()
                    self.record(call, call.row(1, time.time(), [], error=interrupt))
            return exc or stop
        return exc

    def _remark(self) -> None:
        for (package, then, now), names in self._versions.items():
            which = ", ".join(dict.fromkeys(names))
            self.remarks.append(f"{package} {then} -> {now} since the stored results of {which}")
        if self._predating:
            self.remarks.append(
                f"{self._predating} steps ran again: their records were written before "
                f"digests covered dependencies; %durable accept {self.workflow} replays them"
            )

    @property
    def saw_interrupt(self) -> bool:
        """Whether Ctrl-C arrived during the run (even if the code caught it)."""
        return interrupts.count() != self.interrupts

    @property
    def steps_replayed(self) -> int:
        """How many step calls this run answered from the log."""
        return len(self.replayed)

    @property
    def elapsed(self) -> float:
        """Seconds since the run started."""
        return time.perf_counter() - self.started

    def load(self, record: StoredStep) -> Any:
        """The stored value of a completed step (see ``stored_value``); an inline one not
        loaded with the index is read now."""
        payload, blob = record.payload, record.result_blob
        if payload is None and blob is None:
            payload = self.store.step_payload(record.id)
        return self.stored_value(record.result_format, blob, record.signature, payload)

    def stored_value(
        self, fmt: str, blob: str | None, signature: bytes | None, payload: bytes | None
    ) -> Any:
        """A stored value (a step's result, a checkpoint's state): in ``blob``, or inline
        (``payload``), unpickled only when it carries the user's signature (``NotSigned``
        otherwise); a blob's content digest is checked as it is read."""
        if blob is not None:
            if not valid(signature, fmt, blob=blob):
                raise NotSigned()
            return serialization.decode(fmt, self.store.blobs.read(blob))
        if payload is None or not valid(signature, fmt, payload):
            raise NotSigned()
        return serialization.decode(fmt, (payload,))

    def explain(self, stale: StoredStep, call: Call) -> str:
        """Why ``call`` runs although the log has ``stale`` for its key."""
        doc = self.store.digest_document(stale.code_digest)
        return self.explain_digest(doc, call, stale.run_id)

    def explain_digest(self, doc: dict[str, Any] | None, call: Call, run_id: int) -> str:
        """Why ``call`` does not use what was stored under the digest documented by ``doc``."""
        if doc is None:
            self._predating += 1
        return explain(doc, call.digest, call.name, run_id)

    def record(self, call: Call, row: StepRow | CompletedRow) -> None:
        """Commit a finished attempt (its digest's document first, once per process)."""
        self.store.remember_digest(row.code_digest, call.document)
        self._first_row(self.store.insert(row))

    async def arecord(self, call: Call, row: StepRow | CompletedRow) -> None:
        """``record`` for async steps: the row goes through the aiosqlite twin."""
        self.store.remember_digest(row.code_digest, call.document)
        store = await self.async_store()
        self._first_row(await store.insert(row))

    def _first_row(self, row_id: int) -> None:
        """Keep the run's lowest row id: where its rows start, even if ids were reused."""
        if self.first_row is None or 0 < row_id < self.first_row:
            self.first_row = row_id

    def compare_environment(self, record: StoredStep, call: Call) -> None:
        """Note packages whose version changed since ``record`` was made (said at the end)."""
        changed = self._environments.get(record.run_id)
        if changed is None:  # once per run that made a replayed record
            then = self.store.run_environment(record.run_id)
            changed = self._environments[record.run_id] = {}
            for package, old in then.items():
                now = _PYTHON if package == "python" else package_version(package)
                if now and old != now:
                    changed[package] = (old, now)
        if not changed:
            return
        for package in (*call.digest.packages, "python"):
            if package in changed:
                old, now = changed[package]
                self._versions.setdefault((package, old, now), []).append(call.name)

    def warn_once(self, name: str, message: str) -> None:
        """Warn about ``name`` once per run."""
        if name not in self._warned:
            self._warned.add(name)
            warnings.warn(message, DurableWarning, stacklevel=user_stacklevel())
