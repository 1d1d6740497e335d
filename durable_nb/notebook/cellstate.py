"""What a durable cell reads and changes in the namespace, and the rule that skips it.

A cell is **skipped** (not executed; what it changed restored, its outputs shown again) only
when all of these hold, and otherwise it runs (its steps still replay):

1. its last run completed (not failed, not interrupted: a Ctrl-C that the code caught
   counts as an interrupt) and saved what it changed;
2. its code is the same, comments and formatting aside (``CellReads.digest``);
3. everything it reads is the same, found by the walk that finds a step's dependencies,
   the cell's body standing for the function's (``dependencies.cell_inputs``): each name
   it may load before binding it (``x = f(x)`` reads ``x``; ``results = []`` then
   ``results.append`` does not), with the code, modules and values it reaches; each module
   it imports (``from pkg import mod`` included, and what ``from m import *`` takes) by
   what importing it would load;
4. every step call its last run used (replayed or ran) would still replay: same code and
   dependencies (``StepDependencies.still_valid``);
5. every module of the user's it imports holds, once restored, what it held when the cell
   ended (a cell that ran ``cfg.RATE = 2`` is skipped in the kernel where that holds, and
   runs again in a fresh one).

What a run changed is read off the namespace, not the code: every name bound to another
object than before (by an assignment, a magic such as ``%time``, ``exec``, ``globals()``),
every name removed, and every value bound in the namespace that it read (itself or through
its helpers) and changed in place (``results.append(...)``, ``df.loc[...] = ...``,
``model.fit(...)``). Those are saved. When a run changed in place what a skip cannot
restore (an attribute of a module, a class or a function it reads: ``cfg.RATE = 2``,
``Model.scale = 3``, ``f.calls = 0``, or a value only they hold), when a value cannot be
saved (it cannot be pickled, a function defined in the notebook), or when what the cell
reads cannot be judged (a value that cannot be digested, ``exec`` of code it builds), the
cell is not saved and runs again next time, and its summary line says why.
"""

from __future__ import annotations

import collections
import contextlib
import copy
import copyreg
import functools
import gc
import importlib
import importlib.util
import io
import json
import pickle
import re
import sys
import types
from collections.abc import Iterable, Mapping, MutableMapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple

from ..log import serialization
from ..log.records import CellRecord, RunRecord
from ..log.signing import CELL, sign, valid
from ..log.store import Store
from ..replay.codeinfo import is_user_module, star_names
from ..replay.dependencies import cell_inputs, module_state
from ..replay.digests import digest_value
from ..replay.reasons import explain
from ..replay.walk import RunDependencies
from ..replay.walk import immutable as _immutable
from .cells import MARKER, RUNNER, CellReads

if TYPE_CHECKING:
    from ..replay.run import Run

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
    """What a cell reads, digested before it runs by the walk a step's code gets
    (``dependencies.cell_inputs``), and kept to tell afterwards what the cell changed."""

    def __init__(self, namespace: dict[str, Any], reads: CellReads) -> None:
        self.reads = reads
        names = set(reads.names)
        imports = list(reads.imports)
        self.modules: list[str] = []  # the modules it imports: checked after a skip restores
        for module, taken in reads.starred:  # read after ``from module import *``: inputs
            names |= set(taken) - (star_names(module) or frozenset())  # unless it binds them
        unknown = reads.unknown
        for name in reads.reloads:  # importlib.reload(cfg): what cfg's file holds now
            module = namespace.get(name)
            if isinstance(module, types.ModuleType):
                imports.append((module.__name__, 0, ()))
            else:
                unknown = unknown or f"it reloads {name}, which is not a module now"
        for module, level, fromlist in imports:
            if not level:
                self.modules += [module, *(f"{module}.{n}" for n in fromlist if n != "*")]
        self.names = sorted(n for n in names if not _ignored(n))
        self.objects = {n: namespace[n] for n in self.names if n in namespace}
        self.document, self.walk, unreadable = cell_inputs(
            namespace, self.names, frozenset(reads.attrs), frozenset(reads.bare), imports,
            RunDependencies(),
        )  # fmt: skip
        self.digest = self.document.value
        self.unknown = unknown or unreadable

    def unjudgeable(self) -> str | None:
        """Why this cell's inputs cannot be judged (then it is never skipped), or None."""
        if self.unknown:
            return f"what it reads cannot be known ({self.unknown})"
        for label in self.document.opaque:
            what = label.partition(" ")[2]
            name = what.partition(".")[0]
            obj = self.objects.get(name)
            kind = f" ({type(obj).__qualname__})" if what == name and obj is not None else ""
            return f"{what}{kind} cannot be digested, so a change to it could not be seen"
        return None

    def values(self) -> dict[str, str]:
        """The digests of the values (not code, not modules) bound in the namespace that the
        cell reads, directly or through its helpers, by name: what it may change in place."""
        found = {}
        for entry in self.document.entries:
            kind, _, name = entry.label.partition(" ")
            if kind == "global" and name.isidentifier():
                found[name] = entry.digest
        return found


class CellChanges(NamedTuple):
    """What a run changed in the namespace."""

    names: list[str]  # bound to another object, new, or changed in place
    inplace: list[str]  # of those, the ones changed in place (restored in place)
    deleted: list[str]
    unsaved: str | None  # why they cannot be saved, if they cannot


def changes(
    namespace: dict[str, Any], before: Mapping[str, Any], inputs: CellInputs, run: Run
) -> CellChanges:
    """Compare the namespace with its shallow copy ``before`` the run, and what the cell
    read with what it was: names rebound, new or removed; values bound in the namespace and
    changed in place (restored in place by a skip); and modules, classes and functions
    changed in place (``cfg.RATE = 2``, ``Model.scale = 3``, ``f.calls = 0``), or values
    only they hold: those a skip could not restore, so the cell runs again next time."""
    names = [n for n, v in namespace.items() if before.get(n, _UNSET) is not v and not _ignored(n)]
    deleted = [n for n in before if n not in namespace and not _ignored(n)]
    why = inputs.unjudgeable()
    if run.failures:
        name, error = run.failures[0]
        why = why or f"step {name} failed ({error}) and the cell went on"
    inplace = []
    handled = set()  # values bound in the namespace, whose change is saved here
    for name, digest in inputs.values().items():
        obj = before.get(name, _UNSET)
        if obj is _UNSET or namespace.get(name, _UNSET) is not obj:
            continue
        handled.add(id(obj))
        if _is_code(obj) or isinstance(obj, types.ModuleType) or _immutable(obj):
            continue  # (a module's attributes are the walk's: ``changed`` below)
        try:
            now = digest_value(obj).digest
        except Exception:  # its own methods raise now: it cannot be judged
            now = None
        if now != digest:
            inplace.append(name)
    elsewhere = inputs.walk.changed(namespace, handled)
    if elsewhere:
        why = why or f"the cell changed {', '.join(elsewhere[:3])} in place"
    return CellChanges(names + [n for n in inplace if n not in names], inplace, deleted, why)


def _is_code(obj: Any) -> bool:
    """Functions, classes, methods, steps and wrappers of code: code, whose digest
    changes with what it reads, not with changes made to it. A callable object (a model, an
    ``Accumulator`` with ``__call__``) is a value: its changes in place count."""
    if isinstance(obj, _CODE) or getattr(type(obj), "__durable_step__", False):
        return True
    try:  # a wrapper of code: lru_cache, functools.wraps objects, numba and np.vectorize
        return any(hasattr(obj, name) for name in ("__wrapped__", "py_func", "pyfunc"))
    except Exception:  # a proxy that raises on unknown attributes: a value
        return False


_CODE = (types.FunctionType, types.BuiltinFunctionType, types.MethodType, type, functools.partial)


def _module_states(names: Iterable[str]) -> dict[str, dict[str, str]]:
    """What each of the user's modules among ``names`` holds now, if it is imported."""
    run = RunDependencies()
    states = {}
    for name in dict.fromkeys(names):
        module = sys.modules.get(name)
        if module is not None and is_user_module(name):
            states[name] = module_state(module, run)
    return states


def _module_differs(saved: dict[str, dict[str, str]]) -> str | None:
    """Why one of the user's modules a cell imported is not as the cell left it, or None.
    Each is imported if it is not yet (a module first imported by the cell)."""
    for name, then in saved.items():
        module = _import(name)
        now = module_state(module, RunDependencies())
        changed = [label.partition(" ")[2] for label in then if now.get(label) != then[label]]
        changed += [label.partition(" ")[2] for label in now if label not in then]
        if changed:
            return (
                f"{', '.join(changed[:3])} differs from what the cell left (it changed "
                f"{name} in place, or something did since)"
            )
    return None


def _pack(
    store: Store, namespace: Mapping[str, Any], before: Mapping[str, Any], change: CellChanges,
    inputs: CellInputs, shells: Iterable[int],
) -> _Variables:  # fmt: skip
    """Serialize what a cell changed, all values in one pickle (so that two names bound to
    one object still are after a restore), large ones to a blob; or say why a restore of
    copies could not give what the run left (``_shared``)."""
    modules: dict[str, str] = {}
    values: dict[str, Any] = {}
    for name in change.names:
        value = namespace[name]
        if isinstance(value, types.ModuleType):
            modules[name] = value.__name__
            continue
        if getattr(type(value), "__durable_step__", False) or (
            isinstance(value, (types.FunctionType, type)) and value.__module__ == "__main__"
        ):
            return _Variables(b"", [], f"{name} is defined in the notebook and cannot be stored")
        values[name] = value
    aliases, why = _aliases(values, before, change, inputs)
    if why is not None:
        return _Variables(b"", [], why)
    for name in aliases:
        del values[name]
    held: set[int] = set()
    try:
        encoded = serialization.encode(values, seen=held)
    except serialization.NotSerializable as exc:
        return _Variables(b"", [], _unpicklable(values, exc.reason))
    why = _shared(namespace, values, held, change, shells)
    if why is not None:
        return _Variables(b"", [], why)
    blobs: list[str] = []
    if encoded.inline:
        data: Any = encoded.segments[0]
    else:
        data = store.blobs.write(encoded.segments)
        blobs.append(data)
    state = {
        "format": encoded.format if encoded.inline else "blob:" + encoded.format,
        "values": data,
        "modules": modules,
        "inplace": change.inplace,
        "deleted": change.deleted,
        "aliases": aliases,
    }
    return _Variables(pickle.dumps(state, protocol=5), blobs, None)


def _unpicklable(values: dict[str, Any], reason: str) -> str:
    """Which variable cannot be pickled, and why (the first found alone)."""
    for name, value in values.items():
        try:
            serialization.encode(value)
        except serialization.NotSerializable as exc:
            kind = type(value).__qualname__
            return f"{name} (a {kind}) cannot be pickled ({exc.reason})"
    return f"a variable cannot be pickled ({reason})"


def _aliases(
    values: dict[str, Any], before: Mapping[str, Any], change: CellChanges, inputs: CellInputs
) -> tuple[dict[str, str], str | None]:
    """Names the cell bound to an object another name held before it ran (``b = base``):
    a skip binds them to that name's object again (its value is an input, so the same), not
    to a copy. ({name: the name that held it}, or why that cannot be done.)"""
    held_by = {id(v): n for n, v in before.items() if not _ignored(n) and not _immutable(v)}
    aliases: dict[str, str] = {}
    for name, value in values.items():
        other = held_by.get(id(value))
        if other is None or other == name or name in change.inplace:
            continue
        if other not in inputs.objects or inputs.objects[other] is not value:
            return {}, f"{name} is the object {other} held, which the cell does not read"
        if other in change.inplace:
            return {}, f"{name} is the object {other} held, which the cell changed in place"
        aliases[name] = other
    return aliases, None


def _shared(
    namespace: Mapping[str, Any], values: dict[str, Any], held: set[int], change: CellChanges,
    shells: Iterable[int] = (),
) -> str | None:  # fmt: skip
    """Why a skip, which restores copies, would not leave what the run left: an object of
    the saved values that a name the cell did not change holds too (``outer['k']`` is
    ``inner``), or that something else holds (``cfg = holder['x']``), or a value changed in
    place that cannot be changed in place again (so its other holders would keep the old
    one). None when there is nothing such."""
    saved = set(values) | set(change.names)
    restorable = {n for n in change.inplace if _restorable(values[n])}
    in_place = {id(values[n]) for n in restorable}
    for name, value in namespace.items():
        if name in saved or _ignored(name) or _immutable(value) or _is_code(value):
            continue
        if isinstance(value, types.ModuleType) or id(value) in in_place:
            continue  # (a value changed back in place: every holder sees it)
        if id(value) in held:
            return (
                f"what it changed ({', '.join(sorted(values))}) holds the object {name} holds, "
                "which a skip would restore as a copy"
            )
    for name in set(change.inplace) - restorable:
        if _held_elsewhere(namespace, values[name], held, shells):
            kind = type(values[name]).__qualname__
            return f"{name} (a {kind}) is held elsewhere too and cannot be changed in place again"
    for name in change.names:
        value = values.get(name)
        if name in change.inplace or value is None or _immutable(value) or _is_code(value):
            continue
        if _held_elsewhere(namespace, value, held, shells):
            return f"{name} is an object something else holds too, which a skip would copy"
    return None


def _held_elsewhere(
    namespace: Mapping[str, Any], value: Any, held: set[int], shells: Iterable[int] = ()
) -> bool:
    """Whether something besides the namespace, the shell's own mappings (``shells``: ids),
    its output history and the values saved with it refers to ``value`` (looked for only
    when its reference count says so)."""
    if sys.getrefcount(value) <= _REFS:
        return False
    mine = {id(namespace), id(namespace.get("Out")), id(namespace.get("_oh")), *shells}
    for referrer in gc.get_referrers(value):
        if id(referrer) in mine or id(referrer) in held:
            continue
        if isinstance(referrer, _VIEWS):
            continue  # (the callers', and the buffers of the pickle being made of it)
        if _the_shells(referrer):  # its last result, its display hook's
            continue
        return True
    return False


_SHELL_MODULES = ("IPython.", "ipykernel.", "traitlets.")
_MANAGED_BUFFER = type(gc.get_referents(memoryview(bytearray(1)))[0])  # (a memoryview's)
_VIEWS = (types.FrameType, memoryview, pickle.PickleBuffer, _MANAGED_BUFFER)


def _the_shells(referrer: Any) -> bool:
    """Whether ``referrer`` is the shell's own (an object of IPython, ipykernel or
    traitlets, or the attributes of one): it keeps the cell's last result for ``_``/``Out``."""
    if type(referrer).__module__.startswith(_SHELL_MODULES):
        return True
    if type(referrer) is dict:  # the attributes of an object: whose?
        return any(
            type(owner).__module__.startswith(_SHELL_MODULES)
            for owner in gc.get_referrers(referrer)
            if getattr(owner, "__dict__", None) is referrer
        )
    return False


_REFS = 5  # references to a value held only by one name of the namespace, as counted in
# ``_held_elsewhere`` (the namespace, the values being saved, the callers' names, the argument)


@dataclass(frozen=True)
class _Variables:
    payload: bytes
    blobs: list[str]
    unsaved: str | None


def restore(store: Store, skip: Skip, namespace: MutableMapping[str, Any]) -> list[str] | str:
    """Put what a saved cell changed back into ``namespace`` (and remove what it deleted);
    returns the names restored, or why not after all.

    Every step call the saved run used must still be valid, judged with the restored values
    in place (a cell may set what its steps read: ``CFG['lr'] = 0.5; train(2)``), and every
    module of the user's it imported must hold what it held when the cell ended: if not,
    the namespace is put back as it was (and modules first imported here are forgotten
    again, so that the cell imports them itself). A value the cell changed in place is then
    changed in place again, where its type allows, so that other names bound to it see it.
    """
    assert skip.run is not None and skip.cell is not None
    loaded = set(sys.modules)
    try:
        restored = _restore(store, skip, namespace)
    except BaseException:
        _forget_modules(loaded)
        raise
    if isinstance(restored, str):
        _forget_modules(loaded)
    return restored


def _import(name: str) -> types.ModuleType:
    """Import a module for a skip, quietly: what it prints when it loads is in the cell's
    saved output already."""
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        return importlib.import_module(name)


def _forget_modules(loaded: set[str]) -> None:
    """Remove the modules imported since ``loaded`` was taken (by a restore that failed)."""
    for name in [m for m in sys.modules if m not in loaded]:
        del sys.modules[name]


def _restore(store: Store, skip: Skip, namespace: MutableMapping[str, Any]) -> list[str] | str:
    assert skip.run is not None and skip.cell is not None
    if not valid(skip.cell.signature, CELL, skip.cell.variables):
        return (
            "the saved cell is not signed with your key (a log from elsewhere, or edited), so "
            "it is not unpickled; durable_nb.trust(PATH) adopts a log you trust"
        )
    state: dict[str, Any] = pickle.loads(skip.cell.variables)
    fmt, data = state["format"], state["values"]
    if fmt.startswith("blob:"):
        values = serialization.decode(fmt[5:], store.blobs.read(data))
    else:
        values = serialization.decode(fmt, (data,))
    for name, module in state["modules"].items():
        values[name] = _import(module)
    for name, other in state.get("aliases", {}).items():  # the object that name holds here
        values[name] = namespace[other]
    # all or nothing: a damaged blob or a missing module raised before any change
    before = {name: namespace.get(name, _UNSET) for name in (*values, *state["deleted"])}
    namespace.update(values)
    for name in state["deleted"]:
        namespace.pop(name, None)
    stale = _stale_step(store, json.loads(skip.cell.steps or "[]"), skip.run.id)
    if stale is None:
        stale = _module_differs(json.loads(skip.cell.modules or "{}"))
    if stale is not None:
        for name, value in before.items():
            if value is _UNSET:
                namespace.pop(name, None)
            else:
                namespace[name] = value
        return stale
    for name in state["inplace"]:
        old = before.get(name, _UNSET)
        if old is not _UNSET and _into(old, values[name]):
            namespace[name] = old
    return list(values)


def _into(current: Any, new: Any) -> bool:
    """Make ``current`` what ``new`` is, in place, as unpickling would build it, when that
    can be exact (then every other holder of ``current`` sees it); whether it was."""
    if type(current) is not type(new) or not _restorable(new):
        return False
    t = type(current)
    if t.__module__ == "numpy" and t.__name__ == "ndarray":
        if current.shape != new.shape or current.dtype != new.dtype or not current.flags.writeable:
            return False
        current[...] = new
        return True
    if isinstance(current, collections.deque):
        if current.maxlen != new.maxlen:
            return False
        current.clear()
        current.extend(new)
    elif isinstance(current, dict):  # item by item: Counter.update would add, and an
        current.clear()  # OrderedDict keeps its order only through its own methods
        for key, value in dict.items(new):
            current[key] = value
        if isinstance(current, collections.defaultdict):
            current.default_factory = new.default_factory
    elif isinstance(current, (list, bytearray)):
        current[:] = new
    elif isinstance(current, set):
        current.clear()
        current.update(new)
    reduced = new.__reduce_ex__(5)
    state = reduced[2] if len(reduced) > 2 else None
    if hasattr(current, "__setstate__") and state is not None:
        current.__setstate__(state)  # its own way (pandas, random.Random, ...)
        return True
    slots: dict[str, Any] = {}
    if isinstance(state, tuple) and len(state) == 2:  # (__dict__, __slots__), as pickle has
        state, slots = state[0], state[1] or {}
    if hasattr(current, "__dict__") and (state is None or isinstance(state, dict)):
        current.__dict__.clear()
        current.__dict__.update(state or {})
    for key, value in slots.items():
        setattr(current, key, value)
    return True


def _restorable(value: Any) -> bool:
    """Whether ``_into`` can change an object of this kind in place exactly: a numpy array,
    a list, dict, set, bytearray or deque (subclasses too), or an object pickle rebuilds from
    its class and its state alone (a plain object, a dataclass, a DataFrame, a
    ``random.Random``); not one built from arguments it cannot be given again in place."""
    t = type(value)
    if t.__module__ == "numpy" and t.__name__ == "ndarray":
        return True
    try:
        reduced = value.__reduce_ex__(5)
    except Exception:
        return False
    if isinstance(reduced, str) or len(reduced) < 2:
        return False
    make, args = reduced[0], reduced[1]
    if isinstance(value, (list, dict, set, bytearray, collections.deque)):
        return True  # its contents are set in place whatever its arguments
    if len(reduced) > 3 and (reduced[3] is not None or (len(reduced) > 4 and reduced[4])):
        return False  # items of a container type not handled above
    return (make is copyreg.__newobj__ and args == (t,)) or (make is t and args == ())


def save_cell(
    run: Run, namespace: Mapping[str, Any], before: Mapping[str, Any], change: CellChanges,
    outputs: list[Any], inputs: CellInputs, shells: Iterable[Any] = (),
) -> str | None:  # fmt: skip
    """Keep what a completed cell changed, its outputs, the step calls its run used and
    what the user's modules it imports hold; returns why not, if they cannot be kept (the
    cell then runs again next time)."""
    why = change.unsaved
    ids = [id(mapping) for mapping in shells]  # the shell's own (user_ns_hidden: ``_``)
    variables = _pack(run.store, namespace, before, change, inputs, ids) if why is None else None
    if variables is not None:
        why = variables.unsaved
    if why is not None or variables is None:
        run.store.note("cell not saved", str(why), workflow=run.workflow, run_id=run.id)
        return why
    used = json.dumps([[name, digest, refs] for (name, digest), refs in run.used.items()])
    payload = json.dumps(outputs, default=str).encode()
    modules = json.dumps(_module_states(inputs.modules))
    signature = sign(CELL, variables.payload)
    run.store.save_cell(
        run.id, variables.payload, payload, variables.blobs, used, modules, signature
    )
    return None


class Skip(NamedTuple):
    """A completed run the cell can be skipped for, or why not (``reason``: worth saying)."""

    run: RunRecord | None = None
    cell: CellRecord | None = None
    reason: str | None = None


def skippable(store: Store, name: str, source: str, inputs: CellInputs) -> Skip:
    """The completed run a cell can be skipped for (the rule in this module's docstring),
    or why not when that is worth saying (what it reads changed, it cannot be judged)."""
    run = store.last_run(name)
    if run is None or run.status != "completed" or run.source_digest != source:
        return Skip()
    why = inputs.unjudgeable()
    if why is not None:
        return Skip(reason=why)
    if run.inputs_digest != inputs.digest:
        then = store.digest_document(run.inputs_digest) if run.inputs_digest else None
        if then is None:  # saved by an older durable_nb: no document to compare with
            return Skip()
        return Skip(reason=explain(then, inputs.document, "the cell", run.id))
    cell = store.cell(run.id)
    if cell is None:
        return Skip()
    if cell.steps is None:
        return Skip(reason="it was saved by an older durable_nb, which did not record its steps")
    return Skip(run, cell)  # its steps are checked by ``restore``, with its values in place


def _stale_step(store: Store, used: Iterable[list[Any]], run_id: int) -> str | None:
    """Why one of the step calls a run used would not replay now, or None if all would."""
    from ..replay.engine import registered_step

    deps = RunDependencies()
    for name, digest, refs in used:
        step = registered_step(name)
        if step is None:
            return f"step {name} is not defined (run the cells that define it first)"
        valid = step.dependencies.still_valid(deps, digest, refs)
        if valid is None:
            return f"whether the arguments of step {name} changed cannot be told"
        if not valid:
            now = step.dependencies.current(deps, refs)
            assert now is not None  # still_valid told
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
            if value is None or _is_code(value) or isinstance(value, types.ModuleType):
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
