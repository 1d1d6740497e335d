"""What a durable cell reads and changes in the namespace, and the rule that skips it.

A cell is **skipped** (not executed; what it changed restored, its outputs shown again) only
when all of these hold, and otherwise it runs (its steps still replay):

1. its last run completed (not failed, not interrupted: a Ctrl-C that the code caught
   counts as an interrupt) and saved what it changed;
2. its source is the same (``source_digest``);
3. every value it reads is the same: each name it loads, including names it also assigns
   (``x = f(x)``), digested before it runs; functions and classes with what they depend
   on (as for steps), steps by their dependency digest;
4. every step call its last run used (replayed or ran) would still replay: same code and
   dependencies (``StepDependencies.still_valid``).

What a run changed is read off the namespace, not the code: every name bound to another
object than before (by an assignment, a magic such as ``%time``, ``exec``, ``globals()``),
every name removed, and every name it read whose value changed in place (its digest before
and after differ: ``results.append(...)``, ``df.loc[...] = ...``, ``model.fit(...)``).
Those are saved; when one cannot be (a value that cannot be pickled, a function defined in
the notebook, a module changed in place), or when what the cell reads cannot be judged (a
value that cannot be digested, ``exec`` of code it builds), the cell is not saved and runs
again next time, and its summary line says why.
"""

from __future__ import annotations

import copy
import importlib
import json
import pickle
import re
import types
from collections.abc import Iterable, Mapping, MutableMapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple

from . import serialization
from .cells import MARKER, RUNNER, CellReads
from .dependencies import RunDependencies, explain, input_digest
from .digests import value_digest
from .records import CellRecord, RunRecord
from .store import Store

if TYPE_CHECKING:
    from .engine import Run

__all__ = [
    "CellChanges",
    "CellInputs",
    "NamespaceGuard",
    "Skip",
    "changes",
    "load_outputs",
    "restore",
    "save_cell",
    "skippable",
]

# The shell's own names: history (_i3, _5), the display hook's, the builtins.
_SHELL = frozenset({
    "In", "Out", "get_ipython", "exit", "quit", "_oh", "_ih", "_dh", "__builtins__",
    "__builtin__", "__name__", "__doc__", "__spec__", "__loader__", "__package__", MARKER,
    RUNNER,
})  # fmt: skip
_HISTORY = re.compile(r"_{1,3}$|_i{1,3}$|_i?\d+$")
_UNSET = object()


def _ignored(name: str) -> bool:
    return name in _SHELL or name.startswith("__durable_nb") or bool(_HISTORY.match(name))


class CellInputs:
    """The values a cell reads, digested before it runs."""

    def __init__(self, namespace: Mapping[str, Any], reads: CellReads) -> None:
        self.attrs = frozenset(reads.attrs)
        self.unknown = reads.unknown
        self.objects: dict[str, Any] = {}
        self.digests: dict[str, str] = {}
        self.opaque: list[str] = []
        run = RunDependencies()
        for name in reads.names:
            if _ignored(name) or name not in namespace:
                continue
            obj = namespace[name]
            digest, opaque = input_digest(name, obj, self.attrs, run)
            self.objects[name], self.digests[name] = obj, digest
            if opaque:
                self.opaque.append(name)
        self.digest = value_digest(tuple(sorted(self.digests.items())))

    def unjudgeable(self) -> str | None:
        """Why this cell's inputs cannot be judged (then it is never skipped), or None."""
        if self.unknown:
            return f"what it reads cannot be known ({self.unknown})"
        if self.opaque:
            name = self.opaque[0]
            kind = type(self.objects[name]).__qualname__
            return f"{name} ({kind}) cannot be digested, so a change to it could not be seen"
        return None


class CellChanges(NamedTuple):
    """What a run changed in the namespace."""

    names: list[str]  # bound to another object, new, or changed in place
    deleted: list[str]
    unsaved: str | None  # why they cannot be saved, if they cannot


def changes(
    namespace: Mapping[str, Any], before: Mapping[str, Any], inputs: CellInputs
) -> CellChanges:
    """Compare the namespace with its shallow copy ``before`` the run (and the inputs'
    digests): names rebound, new, removed, or whose value changed in place."""
    names = [n for n, v in namespace.items() if before.get(n, _UNSET) is not v and not _ignored(n)]
    deleted = [n for n in before if n not in namespace and not _ignored(n)]
    run = RunDependencies()
    for name, obj in inputs.objects.items():
        if namespace.get(name, _UNSET) is not obj or name in inputs.opaque:
            continue
        digest, _ = input_digest(name, obj, inputs.attrs, run)
        if digest == inputs.digests[name]:
            continue
        if isinstance(obj, types.ModuleType):
            return CellChanges([], [], f"it changes module {name} in place")
        names.append(name)
    return CellChanges(names, deleted, inputs.unjudgeable())


@dataclass(frozen=True)
class _Variables:
    payload: bytes
    blobs: list[str]
    unsaved: str | None


def _pack(store: Store, namespace: Mapping[str, Any], change: CellChanges) -> _Variables:
    """Serialize what a cell changed (large values to blobs)."""
    saved: dict[str, tuple[str, Any]] = {name: ("deleted", None) for name in change.deleted}
    blobs: list[str] = []
    for name in change.names:
        value = namespace[name]
        if isinstance(value, types.ModuleType):
            saved[name] = ("module", value.__name__)
            continue
        if isinstance(value, (types.FunctionType, type)) and value.__module__ == "__main__":
            return _Variables(b"", [], f"{name} is defined in the notebook and cannot be stored")
        try:
            encoded = serialization.encode(value)
        except serialization.NotSerializable as exc:
            return _Variables(b"", [], f"{name} cannot be pickled ({exc.reason})")
        if encoded.inline:
            saved[name] = (encoded.format, encoded.segments[0])
        else:
            digest = store.blobs.write(encoded.segments)
            blobs.append(digest)
            saved[name] = ("blob:" + encoded.format, digest)
    return _Variables(pickle.dumps(saved, protocol=5), blobs, None)


def restore(store: Store, payload: bytes, namespace: MutableMapping[str, Any]) -> list[str]:
    """Put what a saved cell changed back into ``namespace`` (and remove what it deleted);
    returns the names restored."""
    saved: dict[str, tuple[str, Any]] = pickle.loads(payload)
    values: dict[str, Any] = {}
    for name, (fmt, data) in saved.items():
        if fmt == "deleted":
            continue
        if fmt == "module":
            values[name] = importlib.import_module(data)
        elif fmt.startswith("blob:"):
            values[name] = serialization.decode(fmt[5:], store.blobs.read(data))
        else:
            values[name] = serialization.decode(fmt, (data,))
    namespace.update(values)  # all or nothing: a damaged blob raised before any update
    for name, (fmt, _) in saved.items():
        if fmt == "deleted":
            namespace.pop(name, None)
    return list(values)


def save_cell(
    run: Run, namespace: Mapping[str, Any], change: CellChanges, outputs: list[Any]
) -> str | None:
    """Keep what a completed cell changed, its outputs and the step calls its run used;
    returns why not, if they cannot be kept (the cell then runs again next time)."""
    why = change.unsaved
    variables = _pack(run.store, namespace, change) if why is None else None
    if variables is not None:
        why = variables.unsaved
    if why is not None or variables is None:
        run.store.note("cell not saved", str(why), workflow=run.workflow, run_id=run.id)
        return why
    used = json.dumps(
        [[name, digest, base, refs] for (name, digest), (base, refs) in run.used.items()]
    )
    payload = json.dumps(outputs, default=str).encode()
    run.store.save_cell(run.id, variables.payload, payload, variables.blobs, used)
    return None


class Skip(NamedTuple):
    """A completed run the cell can be skipped for, or why not (``reason``: worth saying)."""

    run: RunRecord | None = None
    cell: CellRecord | None = None
    reason: str | None = None


def skippable(store: Store, name: str, source: str, inputs: CellInputs) -> Skip:
    """The completed run a cell can be skipped for (the rule in this module's docstring)."""
    run = store.last_run(name)
    if (
        run is None
        or run.status != "completed"
        or run.source_digest != source
        or run.inputs_digest != inputs.digest
        or inputs.unjudgeable()
    ):
        return Skip()
    cell = store.cell(run.id)
    if cell is None:
        return Skip()
    if cell.steps is None:
        return Skip(reason="it was saved by an older durable_nb, which did not record its steps")
    stale = _stale_step(store, json.loads(cell.steps), run.id)
    return Skip(reason=stale) if stale else Skip(run, cell)


def _stale_step(store: Store, used: Iterable[list[Any]], run_id: int) -> str | None:
    """Why one of the step calls a run used would not replay now, or None if all would."""
    from .engine import registered_step

    deps = RunDependencies()
    for name, digest, base, refs in used:
        step = registered_step(name)
        if step is None:
            return f"step {name} is not defined (run the cells that define it first)"
        valid = step.dependencies.still_valid(deps, digest, base, refs)
        if valid is None:
            return f"whether the arguments of step {name} changed cannot be told"
        if not valid:
            now = step.dependencies.digest(deps)
            return explain(store.digest_document(digest), now, name, run_id)
    return None


def load_outputs(payload: bytes) -> list[tuple[str, Any, Any]]:
    """The outputs ``save_cell`` stored (JSON: never unpickled)."""
    return [tuple(item) for item in json.loads(payload)]  # type: ignore[misc]


class NamespaceGuard:
    """Lets a cell run in ``namespace`` and then puts the namespace back (for ``--plan``).

    Names the cell binds are unbound or rebound as they were; the values it reads are
    replaced, while it runs, by deep copies, so that in-place changes (``results.append``)
    touch only the copies. Values that cannot be deep-copied, and what helpers change
    through globals the cell does not read, are not protected.
    """

    def __init__(self, namespace: MutableMapping[str, Any], reads: Iterable[str]) -> None:
        self.namespace = namespace
        self.saved = dict(namespace)
        for name in reads:
            value = namespace.get(name)
            if value is None or callable(value) or isinstance(value, types.ModuleType):
                continue
            try:
                namespace[name] = copy.deepcopy(value)
            except Exception:  # a client, a lock: left as it is
                continue

    def restore(self) -> None:
        """Put every name back as it was before the cell ran."""
        namespace, saved = self.namespace, self.saved
        for name in [n for n in namespace if n not in saved]:
            del namespace[name]
        for name, value in saved.items():
            if namespace.get(name, _UNSET) is not value:
                namespace[name] = value
