"""What a step depends on, and its digest: the part of the replay rule that sees code changes.

A step's *dependency digest* decides, with its key, whether a stored result may be replayed
(PRODUCT §3). It covers, transitively, starting from the step's function:

- the code of the function and of every function, class (its methods and class attributes),
  ``functools.partial``, bound method and nested ``@step`` it references that is the user's
  own: defined in the notebook (``__main__``) or in a module outside site-packages and the
  standard library, reached through a global name, a closure cell, a default value, an
  attribute of a user module (``helpers.f``) or an argument (a callback, an instance of a
  notebook class);
- the values of the module-level globals and closure variables those functions read, by the
  canonical value digest (``digests.value_digest``);
- not installed packages: their modules, functions and classes are *recorded* (name and
  version, for the run's environment) and count only with ``track_versions=True``.

A name the code only mutates through a statement such as ``log.append(x)`` or
``logger.info(...)`` (and never reads otherwise) is an output of the step, not an input, and
is left out; unless it names code (``helpers.update(d)``: the module's function counts) or an
object of the user's class (``aug.add(d)``: its method may read its state), which count as
any name read. Values that cannot be digested count by their type and are listed as such.

When values are read: at each call (a value that may change in place is checked at each
call by a fast digest of its pickle). A value whose digest is costly (more than ~256 KiB of
data: a big array, a DataFrame, a model, a table of 10,000 entries) is hashed once per run
per object; binding the name
to another object is seen at the next call; a big numpy array changed in place is seen at
the next call when a sample of 512 of its elements changed (``arr += 1``, ``arr[:] = ...``;
a change of a few elements may be missed until the next run); other big objects changed in
place during a run are seen from the next run on.

Modules a function imports in its body count as module globals do (the attributes it uses;
a user module not imported yet is imported when the call is digested; names given to
``getattr`` or ``vars(m)[...]`` as strings count as attributes). Code that calls
``eval``, ``exec`` or ``globals()`` reads names known only when it runs: it cannot be judged,
and runs every time. A decorator of the user's own under ``@step`` is the step's code (its
closure counts); installed wrappers are looked through.

Code digests ignore comments, whitespace, docstrings and decorator lines (they hash the
AST). A function from a file that was edited on disk but not re-imported is digested by its
bytecode, so the digest always describes the code that runs.
"""

from __future__ import annotations

import builtins
import functools
import importlib.util
import inspect
import os
import pickle
import sys
import types
import warnings
from collections.abc import Callable, Iterable
from typing import Any, NamedTuple

from xxhash import xxh3_64_intdigest, xxh3_128_hexdigest

from .codeinfo import (
    code_digest,
    code_info,
    installed_package,
    is_user_file,
    is_user_module,
    module_source,
    package_version,
    self_state,
)
from .digests import _PRIMITIVES, digest_value, legacy_digest
from .errors import DurableWarning, user_stacklevel
from .serialization import short_repr

__all__ = [
    "Digest",
    "Entry",
    "RunDependencies",
    "StepDependencies",
    "explain",
    "input_digest",
]

BIG = 256 << 10
"""A value whose digest reads more than this many bytes is hashed once per run."""

_BUILTIN_NAMES = frozenset(dir(builtins))
_CLASS_SKIP = frozenset({"__dict__", "__weakref__", "__module__", "__qualname__", "__doc__"})


# -- one call's digest ------------------------------------------------------------------


class RunTimeNames(Exception):
    """Code reads globals by names known only when it runs (``eval``, ``globals()[...]``)."""


class Entry(NamedTuple):
    """One thing a call depends on: ``label`` is e.g. ``code helper``, ``global FACTOR``."""

    label: str
    digest: str
    value: Any = None  # the value, kept for a short repr in a reason (only when small)


# The version of the digest rules, in each digest's document: 2 since a dict's order counts
# (a change of rule then says so, instead of "changed" between two equal-looking values); 3
# since which installed module, function or class a name refers to counts.
RULES = 3


class Digest:
    """A call's dependency digest, with the entries it was made from."""

    __slots__ = ("base", "entries", "opaque", "packages", "refs", "value")

    def __init__(
        self,
        value: str,
        base: str,
        entries: list[Entry],
        packages: set[str],
        opaque: list[str],
        refs: list[list[str]] | None = None,
    ) -> None:
        self.value = value  # the digest stored with a record
        self.base = base  # the same without what the arguments brought (for ``accept``)
        self.entries = entries
        self.packages = packages  # installed top-level packages the code references
        self.opaque = opaque  # labels of values digested by their type only
        # the code the arguments brought, as [label, module, qualname]: enough to find it
        # again later, without the arguments, and check that it is unchanged
        self.refs = refs or []

    def doc(self, step: str) -> dict[str, Any]:
        """The JSON document stored beside the digest: what it covers, with short reprs."""
        doc = {
            "step": step,
            "base": self.base,
            "entries": [[e.label, e.digest, _shown(e.value)] for e in self.entries],
            "refs": self.refs,
            "rules": RULES,
        }
        if self.opaque:  # values digested by their type only: a change to them is not seen
            doc["opaque"] = self.opaque
        return doc


_SHOWN = frozenset({*_PRIMITIVES, tuple, list, dict, set, frozenset})


def _shown(value: Any) -> str | None:
    """A short repr of a small value, for a reason such as ``(10 -> 100)``."""
    if value is None or type(value) not in _SHOWN:
        return None
    if type(value) not in _PRIMITIVES and len(value) > 8:
        return None
    text = short_repr(value)
    return text if len(text) <= 40 else None


_warned: set[tuple[str, str]] = set()  # (step, label) said once per process


class RunDependencies:
    """Per-run caches: each step's last walk, digests of big values by object, and the
    installed packages seen (for the run's environment)."""

    __slots__ = ("arguments", "big", "packages", "walks")

    def __init__(self) -> None:
        self.big: dict[int, tuple[Any, str, Any, tuple[Any, ...]]] = {}  # id -> (obj, digest,
        # fingerprint, code inside)
        self.packages: set[str] = set()
        self.walks: dict[StepDependencies, _Walk] = {}
        # (step, ids of the code its arguments held) -> (base, walk, digest, that code)
        self.arguments: dict[tuple[Any, ...], tuple[Digest, _Walk, Digest, list[Any]]] = {}

    def environment(self) -> dict[str, str]:
        """Versions of the packages this run's steps reference, and Python's."""
        env = {"python": sys.version.split()[0]}
        for top in sorted(self.packages):
            version = package_version(top)
            if version:
                env[top] = version
        return env


_MISSING = object()


def _immutable(obj: Any) -> bool:
    """A primitive, or a tuple or frozenset of primitives (and tuples of them)."""
    t = type(obj)
    if t in _PRIMITIVES:
        return True
    return (t is tuple or t is frozenset) and all(_immutable(v) for v in obj)


_CODE = (types.ModuleType, types.FunctionType, types.MethodType)
# A Step's own attributes (the rest, set by the user, count as a function's would).
_STEP_OWN = frozenset({
    "_binding", "fn", "name", "retries", "backoff", "retry_delay", "is_async",
    "dependencies", "_arguments",
})  # fmt: skip


class _Walk:
    """One traversal from a step's function: the entries, in a deterministic order, and
    what it read on the way, so that the next call can check that nothing changed by
    identity (and, for mutable values, by digest) instead of walking again."""

    __slots__ = ("attrs", "digest", "entries", "functions", "keys", "opaque", "packages",
                 "reads", "refs", "rehash", "run", "seen")  # fmt: skip

    def __init__(self, run: RunDependencies) -> None:
        self.run = run
        self.entries: list[Entry] = []
        self.seen: set[Any] = set()  # ids of what was walked (and (module, attrs) pairs)
        self.packages: set[str] = set()
        self.opaque: list[str] = []
        self.functions: list[tuple[Any, Any, Any, Any]] = []  # (fn, code, defaults, kw)
        self.reads: list[tuple[Any, str, Any]] = []  # (mapping, key, value it had)
        self.attrs: list[tuple[Any, str, Any]] = []  # (object, attribute, value it had)
        self.keys: list[tuple[Any, int]] = []  # (class dict, how many members it had)
        self.rehash: list[tuple[Any, Any, bool]] = []  # (mutable value, fingerprint, big)
        self.refs: list[list[str]] = []  # what arguments brought (see ``Digest.refs``)
        self.digest: Digest | None = None

    def unchanged(self) -> bool:
        """Whether everything this walk read is as it was (so its digest still holds)."""
        try:
            for fn, code, defaults, kwdefaults in self.functions:
                if (
                    fn.__code__ is not code
                    or fn.__defaults__ is not defaults
                    or fn.__kwdefaults__ is not kwdefaults
                ):
                    return False
            for mapping, key, value in self.reads:
                if mapping.get(key, _MISSING) is not value:
                    return False
            for obj, attr, value in self.attrs:
                if getattr(obj, attr) is not value:
                    return False
            for mapping, count in self.keys:  # a member added (each one is read by identity)
                if len(mapping) != count:
                    return False
            for obj, fingerprint, big in self.rehash:
                if _fingerprint(obj, big=big) != fingerprint:
                    self.run.big.pop(id(obj), None)  # changed in place: hash it again
                    return False
        except Exception:  # e.g. a closure cell emptied since: walk again
            return False
        return True

    # functions, classes, modules

    def function(self, fn: types.FunctionType, label: str) -> None:
        if id(fn) in self.seen:
            return
        self.seen.add(id(fn))
        code = fn.__code__
        info = code_info(code)
        self.entries.append(Entry(f"code {label}", info.digest))
        defaults, kwdefaults = fn.__defaults__, fn.__kwdefaults__
        self.functions.append((fn, code, defaults, kwdefaults))  # autoreload swaps __code__
        if defaults or kwdefaults:
            self.value(f"defaults {label}", (defaults, kwdefaults))
        own = fn.__dict__
        if own and not ("registry" in own and "dispatch" in own):  # (singledispatch's own)
            # ``h.scale = 2``: it may read them; not those it sets itself (``w.calls += 1``,
            # a timer's ``w.seconds = ...``): its state, which a replay does not update
            self._attributes(label.removeprefix("step "), own, skip=info.stored)
        glob = fn.__globals__
        module = glob.get("__name__")
        prefix = "" if module == "__main__" else f"{module}."
        for name in info.globals:
            obj = glob.get(name, _MISSING)
            self.reads.append((glob, name, obj))
            if obj is not _MISSING:
                used = info.attrs
                if name in info.bare and type(obj) is types.ModuleType:  # passed on: any
                    used = _public(obj)  # of its attributes may be read where it goes
                self.reference(f"{prefix}{name}", obj, used)
            elif name not in _BUILTIN_NAMES:
                self.entries.append(Entry(f"global {prefix}{name}", "undefined"))
        for name in info.outputs:  # `NAME.update(d)`: an output, unless NAME is code
            obj = glob.get(name, _MISSING)
            self.reads.append((glob, name, obj))
            self._output(f"{prefix}{name}", obj, info.attrs)
        for builtin in info.dynamic:
            if builtin not in glob:  # the builtin, not a global of the same name
                raise RunTimeNames(f"{label.removeprefix('step ')} calls {builtin}()")
        for module_name, level, fromlist in info.imports:  # `from cfg import RATE` in it
            self._imported(module_name, level, fromlist, glob, info.attrs)
        if fn.__closure__:
            names = code.co_freevars
            for name, read, cell in zip(names, info.freevars, fn.__closure__, strict=True):
                try:
                    contents = cell.cell_contents
                except ValueError:  # not assigned yet
                    continue
                self.attrs.append((cell, "cell_contents", contents))
                inner = name if label.startswith("step ") else f"{label}.{name}"
                if read:
                    self.reference(inner, contents, info.attrs, kind="closure")
                else:
                    self._output(inner, contents, info.attrs, kind="closure")

    def _attributes(
        self, name: str, own: dict[str, Any], skip: frozenset[str] = frozenset()
    ) -> None:
        """The attributes a user set on a function or a step (not dunders, not ``skip``)."""
        if ("attributes", id(own)) in self.seen:
            return
        self.seen.add(("attributes", id(own)))
        self.keys.append((own, len(own)))
        for key in sorted(own):
            if key in skip or (key.startswith("__") and key.endswith("__")):
                continue
            value = own[key]
            self.reads.append((own, key, value))
            self.reference(f"{name}.{key}", value, frozenset(), kind="attribute")

    def _output(self, name: str, obj: Any, attrs: frozenset[str], *, kind: str = "global") -> None:
        """A name the code only uses as ``NAME.mutator(...)``: a list appended to, a logger,
        a file are outputs (left out), but a module's, a class's or a function's code runs
        (``helpers.update(d)``), and so does a user's object's method, which may read its
        state (``aug.add(d)``): those count as any name read."""
        t = type(obj)
        if (
            t in _CODE
            or isinstance(obj, type)
            or getattr(t, "__durable_step__", False)
            or is_user_module(getattr(t, "__module__", None))
        ):
            self.reference(name, obj, attrs, kind=kind)

    def cls(self, cls: type) -> None:
        if id(cls) in self.seen:
            return
        self.seen.add(id(cls))
        qualname = _label(cls)
        self.attrs.append((cls, "__bases__", cls.__bases__))
        meta = type(cls)
        if meta is not type and is_user_module(meta.__module__):  # its methods run on cls
            self.attrs.append((cls, "__class__", meta))
            self.reference(f"{qualname} metaclass", meta, frozenset())
        for base in cls.__bases__:
            if base is not object:
                self.reference(f"{qualname} base", base, frozenset())
        members = vars(cls)
        self.keys.append((members, len(members)))
        if "__pydantic_fields__" in members:  # pydantic keeps fields out of the class dict
            self._pydantic(cls, qualname)
        for name in sorted(members):
            if name in _CLASS_SKIP:
                continue
            attr = members[name]
            if type(attr).__name__ == "PydanticDescriptorProxy":  # a validator: _pydantic's
                continue
            self.reads.append((members, name, attr))
            if isinstance(attr, (staticmethod, classmethod)):
                attr = attr.__func__
            if isinstance(attr, functools.cached_property):
                attr = attr.func
            if isinstance(attr, property):
                for part in (attr.fget, attr.fset, attr.fdel):
                    if isinstance(part, types.FunctionType):
                        self.function(part, f"{qualname}.{name}")
            elif isinstance(attr, types.FunctionType):
                self.function(attr, f"{qualname}.{name}")
            elif isinstance(attr, type):
                self.reference(f"{qualname}.{name}", attr, frozenset())
            elif not (name.startswith("__") and name.endswith("__")) and name != "_abc_impl":
                self.value(f"global {qualname}.{name}", attr)

    def _pydantic(self, cls: type, qualname: str) -> None:
        """A pydantic model class: its fields (annotation, default, factory) and the code of
        its validators and serializers."""
        fields = vars(cls)["__pydantic_fields__"]
        described = []
        for name, field in sorted(fields.items()):
            required = field.is_required()
            default = None if required or field.default_factory else field.default
            described.append((name, repr(field.annotation), required, default))
            if field.default_factory is not None:
                self.reference(f"{qualname}.{name} default_factory", field.default_factory,
                               frozenset())  # fmt: skip
        self.value(f"global {qualname} fields", described)
        decorators = vars(cls).get("__pydantic_decorators__")
        for group in ("validators", "field_validators", "root_validators", "field_serializers",
                      "model_serializers", "model_validators", "computed_fields"):  # fmt: skip
            for name, decorator in sorted(getattr(decorators, group, {}).items()):
                func = getattr(decorator, "func", None)
                func = getattr(func, "__func__", func)  # bound to the class
                if isinstance(func, property):
                    func = func.fget
                if isinstance(func, types.FunctionType):
                    self.function(func, f"{qualname}.{name}")

    def reference(
        self, name: str, obj: Any, attrs: frozenset[str], *, kind: str = "global"
    ) -> None:
        """What a name found in code (global, closure cell, argument) brings in."""
        t = type(obj)
        if t in _PRIMITIVES:
            digest = xxh3_128_hexdigest(pickle.dumps(obj, protocol=5))
            self.entries.append(Entry(f"{kind} {name}", digest, obj))
            return
        if t is types.FunctionType:
            if is_user_module(obj.__module__):
                self.function(obj, _label(obj))
            else:
                self._installed(f"{kind} {name}", obj.__module__, obj.__qualname__)
            self._wrapped(name, obj, attrs, kind)
            return
        if t is types.ModuleType:
            if is_user_module(obj.__name__):
                self._module(obj, attrs)
            else:
                self._installed(f"{kind} {name}", obj.__name__)
            return
        if isinstance(obj, type):
            if is_user_module(obj.__module__):
                self.cls(obj)
            else:
                self._installed(f"{kind} {name}", obj.__module__, obj.__qualname__)
            return
        if getattr(t, "__durable_step__", False):  # a nested step: its result is made of it
            self.attrs.append((obj, "fn", obj.fn))
            self.reference(name, inspect.unwrap(obj.fn), attrs, kind=kind)
            fn = inspect.unwrap(obj.fn)
            own = code_info(fn.__code__).stored if isinstance(fn, types.FunctionType) else ()
            self._attributes(name, vars(obj), skip=_STEP_OWN | own)  # ``g.scale = 5``
            return
        if t is functools.partial:
            self.reference(f"{name}.func", obj.func, attrs, kind=kind)
            keywords = dict(sorted(obj.keywords.items()))  # called the same in any order
            self.value(f"{kind} {name}", (obj.args, keywords))
            return
        if t is types.MethodType:
            func = obj.__func__
            if not is_user_module(getattr(func, "__module__", None)):
                module = getattr(func, "__module__", None)
                self._installed(f"{kind} {name}", module, getattr(func, "__qualname__", None))
                self.value(f"{kind} {name}.__self__", obj.__self__)  # its object's state
                return  # (not the package's code)
            self.reference(f"{name}.__func__", obj.__func__, attrs, kind=kind)
            self.reference(f"{name}.__self__", obj.__self__, attrs, kind=kind)
            return
        if t is types.BuiltinFunctionType or t is types.BuiltinMethodType:
            module = getattr(obj, "__module__", None)
            self._installed(f"{kind} {name}", module, getattr(obj, "__qualname__", None))
            return
        try:
            wrapped = getattr(obj, "__wrapped__", None)  # lru_cache and other wrappers
        except Exception:  # a proxy that raises on unknown attributes
            wrapped = None
        if wrapped is not None and callable(obj) and id(obj) not in self.seen:
            self.seen.add(id(obj))
            self.attrs.append((obj, "__wrapped__", wrapped))
            if is_user_module(getattr(t, "__module__", None)):  # a decorator of the user's,
                self.cls(t)  # as a class: its __call__ and what it holds (k in Scaled(f, k))
                own = getattr(obj, "__dict__", None)
                if own:
                    self._attributes(name, own, skip=_self_state(t))
            self.reference(name, wrapped, attrs, kind=kind)
            return
        module = getattr(t, "__module__", None)
        if is_user_module(module):
            self.cls(t)
        else:
            self._package(module)
        self.value(f"{kind} {name}", obj)

    def _wrapped(self, name: str, fn: Any, attrs: frozenset[str], kind: str) -> None:
        """An installed function around the user's (its ``__module__`` may say the user's):
        a decorator's wrapper (``__wrapped__``), ``functools.singledispatch`` (every
        registered implementation)."""
        if ("wrapped", id(fn)) in self.seen:
            return
        self.seen.add(("wrapped", id(fn)))
        wrapped = getattr(fn, "__wrapped__", None)
        if wrapped is not None:
            self.attrs.append((fn, "__wrapped__", wrapped))
            self.reference(name, wrapped, attrs, kind=kind)
        registry = getattr(fn, "registry", None)
        if isinstance(registry, types.MappingProxyType) and hasattr(fn, "dispatch"):
            self.keys.append((registry, len(registry)))
            for klass, impl in list(registry.items()):
                self.reads.append((registry, klass, impl))
                self.reference(f"{name}[{getattr(klass, '__qualname__', klass)}]", impl, attrs,
                               kind=kind)  # fmt: skip

    def _imported(
        self, name: str, level: int, fromlist: tuple[str, ...], glob: dict[str, Any],
        attrs: frozenset[str],
    ) -> None:  # fmt: skip
        """A module a function imports in its body: the attributes of it that it uses, as for
        a module global; for ``from pkg import sub``, the submodule too. A module of the
        user's not imported yet is imported now, just before the call that would import it
        (also when the call then replays): the same digest in a fresh process as in a warm
        one. Installed ones are recorded, never imported here."""
        try:
            full = importlib.util.resolve_name("." * level + name, glob.get("__package__"))
        except (ImportError, ValueError) as exc:  # the call will fail the same way
            self.entries.append(Entry(f"import {name}", f"unresolvable: {type(exc).__name__}"))
            return
        for target in (full, *(f"{full}.{n}" for n in fromlist if n != "*")):
            module = sys.modules.get(target)
            if module is None:
                if module_source(target)[0] != "user":  # installed, built in, or no module
                    if target == full:
                        self._package(full)
                    continue
                try:
                    module = importlib.import_module(target)
                except Exception as exc:  # the call will fail the same way: let it
                    self.entries.append(Entry(f"import {target}", f"failed: {type(exc).__name__}"))
                    continue
            self.reads.append((sys.modules, target, module))  # replaced: walk again
            self.reference(target, module, attrs)

    def _module(self, module: types.ModuleType, attrs: frozenset[str]) -> None:
        if (id(module), attrs) in self.seen:  # packages that import each other
            return
        self.seen.add((id(module), attrs))
        members = vars(module)
        for attr in sorted(attrs & members.keys()):
            obj = members[attr]
            self.reads.append((members, attr, obj))
            self.reference(f"{module.__name__}.{attr}", obj, attrs)
        lazy = members.get("__getattr__")  # PEP 562: names it serves count through its code
        if lazy is not None and attrs - members.keys():
            self.reads.append((members, "__getattr__", lazy))
            try:
                self.reference(f"{module.__name__}.__getattr__", lazy, attrs)
            except RunTimeNames:  # the lazy-import idiom (globals()[name] = ...): not walked
                self.entries.append(Entry(f"code {module.__name__}.__getattr__", "dynamic"))

    def _installed(self, label: str, module: str | None, qualname: str | None = None) -> None:
        """An installed (or built-in) module, function or class a name refers to: which one
        counts (``Model = Ridge`` -> ``Lasso``, ``AGG = max`` -> ``min``), not its code; its
        package is recorded for the run's environment."""
        self._package(module)
        what = f"{module}.{qualname}" if qualname else str(module)
        self.entries.append(Entry(label, f"installed {what}", what))

    def _package(self, module: str | None) -> None:
        top = installed_package(module)
        if top is not None:
            self.packages.add(top)

    def value(self, label: str, obj: Any) -> None:
        """A value by its canonical digest (and the code inside it: functions in a list, a
        class's methods for its objects); big ones once per run per object, unless their
        fingerprint shows a change."""
        big = self.run.big
        hit = big.get(id(obj))
        if hit is not None and hit[0] is obj and hit[2] == _fingerprint(obj, big=True):
            _, digest, fingerprint, code = hit
            self.rehash.append((obj, fingerprint, True))
            self.entries.append(Entry(label, digest))
        else:
            try:
                digest, cost, opaque, code = digest_value(obj)
            except Exception:  # a value whose own methods raise (a broken __eq__ or buffer)
                t = type(obj)
                digest, cost, opaque, code = f"type:{t.__module__}.{t.__qualname__}", 0, True, ()
            if opaque:
                self.opaque.append(label)
            elif cost > BIG:
                fingerprint = _fingerprint(obj, big=True)
                big[id(obj)] = (obj, digest, fingerprint, code)
                self.rehash.append((obj, fingerprint, True))
            elif not _immutable(obj):
                self.rehash.append((obj, _fingerprint(obj), False))  # may change in place
            self.entries.append(Entry(label, digest, obj))
        name = label.partition(" ")[2]
        for inner in dict.fromkeys(code):  # each function or class once, in order found
            if inner is not obj:  # (a callable with no module of its own names itself)
                self.reference(name, inner, frozenset())


def _fingerprint(obj: Any, *, big: bool = False) -> Any:
    """What tells, cheaply, at the next call in this process whether a value changed in
    place: its pickle's digest (no canonical form needed within one process); for a big
    numpy array, its shape, dtype and a sample of about 512 of its elements (``_sample``: a
    change of only a few elements can be missed; for other big values, see the module doc)."""
    t = type(obj)
    if t.__module__ == "numpy" and t.__name__ == "ndarray" and not obj.dtype.hasobject:
        sample = _sample(obj) if big else obj.tobytes()
        return (obj.shape, obj.dtype, xxh3_64_intdigest(sample))
    if big:
        return "big"  # once per run (documented): hashing it at each call would cost its size
    try:
        return xxh3_128_hexdigest(pickle.dumps(obj, protocol=5))
    except Exception:
        return digest_value(obj).digest


def _sample(arr: Any) -> bytes:
    """About 512 elements of a big array, evenly spread in memory order, at a stride that
    is no multiple of a page (samples a whole number of pages apart share cache sets: twice
    as slow to read). No copy of the array: a strided one is gathered at the same places
    (a copy of 10 MB at every call would cost milliseconds)."""
    if arr.ndim == 1:
        flat = arr
    elif arr.flags.c_contiguous:
        flat = arr.reshape(-1)
    elif arr.flags.f_contiguous:
        flat = arr.T.reshape(-1)
    else:  # strided in several dimensions
        return arr.flat[_sample_places(arr.size)].tobytes()
    return flat[:: _stride(flat.size)].tobytes()


def _stride(size: int) -> int:
    stride = size // 512
    return stride + 9 if stride >= 64 else max(1, stride)


@functools.lru_cache(maxsize=64)
def _sample_places(size: int) -> Any:
    """The flat indices ``_sample`` reads in a strided array of ``size`` elements."""
    import numpy as np

    return np.arange(0, size, _stride(size))


def _public(module: types.ModuleType) -> frozenset[str]:
    """A module's names, dunders left out."""
    return frozenset(n for n in vars(module) if not (n.startswith("__") and n.endswith("__")))


def _self_state(cls: type) -> frozenset[str]:
    """What a wrapper class's ``__call__`` keeps on its object (``self.calls += 1``): its
    state, as a function's own attributes are, not an input."""
    call = vars(cls).get("__call__")
    code = getattr(call, "__code__", None)
    if not isinstance(code, types.CodeType) or not code.co_varnames:
        return frozenset()
    return self_state(code)


def _user_code(fn: types.FunctionType) -> bool:
    """Whether a function's code is in a file of the user's (functools.wraps copies
    ``__module__`` from the function it wraps, so the module name cannot tell)."""
    filename = fn.__code__.co_filename
    if filename.startswith("<"):  # the notebook's cells, exec'd code
        return is_user_module(fn.__module__)
    return is_user_file(filename)


def _label(obj: types.FunctionType | type) -> str:
    """``helper`` for the notebook's own, ``helpers.helper`` for a user module's."""
    name = obj.__qualname__.rpartition("<locals>.")[2]
    return name if obj.__module__ == "__main__" else f"{obj.__module__}.{name}"


def _where(obj: Any) -> list[str]:
    """[module, qualname] of a function or class ("" for what cannot be found again)."""
    qualname = getattr(obj, "__qualname__", "")
    if not isinstance(qualname, str) or "<locals>" in qualname or isinstance(obj, types.MethodType):
        return ["", ""]  # a local, or a method bound to an object: not found again by name
    return [getattr(obj, "__module__", "") or "", qualname]


def _resolve(module: str, qualname: str) -> Any:
    """The object ``_where`` described, as it is now, or None."""
    obj: Any = sys.modules.get(module) if module else None
    for part in qualname.split(".") if obj is not None else ():
        obj = getattr(obj, part, None)
    return obj


def input_digest(
    name: str, obj: Any, attrs: frozenset[str], run: RunDependencies
) -> tuple[str, list[str]]:
    """(digest, labels of what in it cannot be digested) of a value a notebook cell reads:
    data by its value, code (a function, a class, a user module's attributes ``attrs``)
    with what it depends on, a step by its dependency digest (whose values of unknown types
    count by type, as for replay)."""
    try:
        if getattr(type(obj), "__durable_step__", False):
            digest = obj.dependencies.digest(run)
            return digest.value, ["dependencies"] if digest.value.startswith("unjudged:") else []
        walk = _Walk(run)
        walk.reference(name, obj, attrs)
        return _combine(walk.entries), walk.opaque
    except (Exception, RecursionError):  # cannot be read: the cell cannot be judged
        return f"unjudged:{os.urandom(8).hex()}", [f"{name} (unreadable)"]


def _combine(entries: Iterable[Entry]) -> str:
    return xxh3_128_hexdigest("\0".join(f"{e.label}\1{e.digest}" for e in entries).encode())


class StepDependencies:
    """How to digest the calls of one step function."""

    __slots__ = ("fn", "name", "target", "track_versions")

    def __init__(self, fn: Callable[..., Any], name: str, *, track_versions: bool = False) -> None:
        self.fn = fn
        self.name = name
        self.track_versions = track_versions
        target = fn
        while isinstance(target, functools.partial):
            target = target.func
        # Through installed wrappers (lru_cache, torch.no_grad) to the user's code; a wrapper
        # of the user's own is that code: its closure (n in @times(n)) counts, and it leads
        # on to the function it wraps.
        seen = {id(target)}  # (a __wrapped__ cycle ends it)
        while not (isinstance(target, types.FunctionType) and _user_code(target)):
            if not isinstance(target, types.FunctionType) and is_user_module(
                getattr(type(target), "__module__", None)
            ):  # a wrapper object of the user's class: its code and state count
                break
            inner = getattr(target, "__wrapped__", None)
            if inner is None or id(inner) in seen:
                break
            seen.add(id(inner))
            target = inner
        self.target = target

    def digest(self, run: RunDependencies, code: Iterable[Any] = ()) -> Digest:
        """The dependency digest of a call, read now; ``code`` is what its arguments hold
        besides plain values (callbacks, steps, the classes of the user's objects), as
        ``digests.args_digest`` found it."""
        try:
            walk = run.walks.get(self)
            if walk is None or not walk.unchanged():
                walk = run.walks[self] = self._walk(run)
            base = walk.digest
            assert base is not None
            if not code:
                return base
            objs = list(dict.fromkeys(code))
            key = (self, *map(id, objs))
            hit = run.arguments.get(key)
            if hit is not None and hit[0] is base and hit[1].unchanged():
                return hit[2]
            digest, walk = self._with_arguments(run, base, [(obj, _where(obj)) for obj in objs])
            run.arguments[key] = (base, walk, digest, objs)  # objs: their ids stay theirs
            return digest
        except (Exception, RecursionError) as exc:  # what it reads cannot be read: run it
            self.say_once(
                "unreadable",
                f"step {self.name}: {exc}, which reads globals by a name known only when it "
                "runs, so what it depends on cannot be known: it runs every time"
                if isinstance(exc, RunTimeNames)
                else f"step {self.name}: what it depends on cannot be read "
                f"({type(exc).__name__}: {str(exc)[:80]}), so it cannot be judged: it runs "
                "every time",
            )
            unjudged = f"unjudged:{os.urandom(8).hex()}"  # matches no record: it runs
            return Digest(unjudged, unjudged, [], set(), ["dependencies"])

    def current(self, run: RunDependencies, refs: list[list[str]]) -> Digest | None:
        """The digest a call whose arguments brought ``refs`` (``Digest.refs``) would have
        now, found again by name; None when one of them cannot be found."""
        base = self.digest(run)
        found = [(_resolve(module, qualname), [module, qualname]) for _, module, qualname in refs]
        if any(obj is None for obj, _ in found):
            return None
        return self._with_arguments(run, base, found)[0] if found else base

    def still_valid(self, run: RunDependencies, value: str, refs: list[list[str]]) -> bool | None:
        """Whether a call that had digest ``value`` would have it now (None: cannot tell)."""
        now = self.current(run, refs)
        return None if now is None else now.value == value

    def _with_arguments(
        self, run: RunDependencies, base: Digest, found: list[tuple[Any, list[str]]]
    ) -> tuple[Digest, _Walk]:
        extra = _Walk(run)
        for i, (obj, where) in enumerate(found):
            label = f"argument {i}"
            extra.reference(label, obj, frozenset(), kind="argument")
            extra.refs.append([label, *where])
        if not extra.entries:
            return base, extra
        entries = base.entries + extra.entries
        run.packages |= extra.packages
        packages = base.packages | extra.packages
        opaque = base.opaque + extra.opaque
        digest = Digest(_combine(entries), base.base, entries, packages, opaque, extra.refs)
        return digest, extra

    def _walk(self, run: RunDependencies) -> _Walk:
        walk = _Walk(run)
        fn = self.target
        if isinstance(fn, types.FunctionType):
            walk.function(fn, f"step {self.name}")
        else:  # a callable object: its class's code, or an installed function's name
            walk.entries.append(Entry(f"code step {self.name}", code_digest(fn)))
            walk.reference(self.name, fn, frozenset(), kind="callable")
        if self.track_versions:
            walk.packages.add("python")
            for top in sorted(walk.packages):
                version = sys.version.split()[0] if top == "python" else package_version(top)
                walk.entries.append(Entry(f"version {top}", version or "unknown", version))
        # A step that depends on nothing but its own code keeps the digest of that code: the
        # digest older logs stored, so their records of such steps still replay.
        own = walk.entries[0]
        alone = len(walk.entries) == 1 and own.label == f"code step {self.name}"
        base = own.digest if alone else _combine(walk.entries)
        walk.digest = Digest(base, base, walk.entries, walk.packages, walk.opaque)
        run.packages |= walk.packages
        if walk.opaque:
            self._warn_opaque(walk.opaque)
        return walk

    def _warn_opaque(self, opaque: list[str]) -> None:
        for label in opaque:
            self.say_once(
                label,
                f"step {self.name}: {label.partition(' ')[2]} cannot be digested, so only its "
                "type counts for replay; a change to it is not seen (pass what the step needs "
                "of it as arguments)",
            )

    def say_once(self, key: str, message: str) -> None:
        """Warn ``message`` once per process for this step and ``key``."""
        if (self.name, key) not in _warned:
            _warned.add((self.name, key))
            warnings.warn(message, DurableWarning, stacklevel=user_stacklevel())


# -- saying why -------------------------------------------------------------------------

_KINDS = {"code": 0, "defaults": 1, "global": 2, "closure": 3, "argument": 4, "version": 5}


def explain(old: dict[str, Any] | None, new: Digest, name: str, run_id: int) -> str:
    """Why a call whose stored record has document ``old`` runs again with ``new``."""
    if new.value.startswith("unjudged:"):
        return (
            f"what {name} depends on cannot be known before it runs (eval, exec or globals() "
            "in its code, or a value that cannot be read; a warning said which): it runs "
            "every time"
        )
    if old is None:
        return (
            f"the record of {name} (run {run_id}) predates dependency digests; "
            "accept it to replay it"
        )
    before = {label: (digest, shown) for label, digest, shown in old["entries"]}
    now = {e.label: (e.digest, _shown(e.value)) for e in new.entries}
    values = {e.label: e.value for e in new.entries}
    rules = old.get("rules", 1)
    changes: list[tuple[int, str]] = []
    for label, (digest, shown) in now.items():
        kind, _, what = label.partition(" ")
        rank = _KINDS.get(kind, 9)
        if label not in before:
            if rules < 3 and digest.startswith("installed "):
                changes.append((rank, _counted_now(what, digest)))
            else:
                changes.append((rank + 10, f"new dependency {what}"))
        elif before[label][0] != digest:
            if kind == "version":  # a version entry's digest is the version itself
                changes.append((rank, f"{what} {before[label][0]} -> {digest}"))
            elif rules < 2 and _same_by_older_rule(values[label], before[label][0]):
                changes.append((rank, _newer_rule(kind, what)))
            else:
                changes.append((rank, _changed(kind, what, before[label][1], shown)))
    for label in before.keys() - now.keys():
        changes.append((20, f"no longer depends on {label.partition(' ')[2]}"))
    if not changes:
        return f"dependencies of {name} changed since run {run_id}" + _by_type(new)
    changes.sort(key=lambda c: c[0])
    texts = [text for _, text in changes[:3]]
    if len(changes) > 3:
        texts.append(f"{len(changes) - 3} more")
    return "; ".join(texts) + f" since run {run_id}" + _by_type(new)


def _by_type(digest: Digest) -> str:
    """What the reason adds about values only counted by their type (not seen changing)."""
    if not digest.opaque:
        return ""
    names = [label.partition(" ")[2] for label in digest.opaque]
    return f" ({', '.join(dict.fromkeys(names))} counted by type only)"


def _same_by_older_rule(value: Any, stored: str) -> bool:
    """Whether ``value`` has, by the rules before RULES 2, the digest ``stored``: then
    only the rule changed, not the value."""
    return value is not None and legacy_digest(value) == stored


def _newer_rule(kind: str, what: str) -> str:
    return (
        f"{kind} {what} is digested by a newer rule (durable_nb was upgraded; its value "
        "looks the same: accept replays it)"
    )


def _counted_now(what: str, digest: str) -> str:
    return (
        f"durable_nb was upgraded: which installed object {what} is now counts "
        f"({digest.removeprefix('installed ')}); accept replays it"
    )


def _changed(kind: str, what: str, old: str | None, new: str | None) -> str:
    if kind == "code":
        return f"code of {what.removeprefix('step ')} changed"
    noun = {"closure": "closure variable", "defaults": "defaults of", "argument": "code of"}
    detail = f" ({old} -> {new})" if old is not None and new is not None else ""
    return f"{noun.get(kind, kind)} {what} changed{detail}"
