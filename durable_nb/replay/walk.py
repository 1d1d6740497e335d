"""What a step reaches: the walk from its function through the code and values it uses.

A ``Walk`` starts at a function (or a name a cell reads) and follows globals, closure cells,
defaults, attributes of user modules, classes and their bases, wrappers and nested steps,
yielding one ``Entry`` per thing that counts (code by its AST digest, values by their
canonical digest, installed objects by which one they are). It keeps what it read, so the
next call checks by identity that nothing changed instead of walking again. See
``dependencies`` for what counts and why.
"""

from __future__ import annotations

import builtins
import functools
import importlib.util
import inspect
import pickle
import sys
import types
from collections.abc import Iterable
from typing import Any, NamedTuple

from xxhash import xxh3_128_hexdigest

from ..log.serialization import short_repr
from .codeinfo import (
    code_info,
    installed_package,
    is_user_module,
    module_digest,
    module_source,
    package_version,
    self_state,
)
from .digests import PRIMITIVES, digest_value
from .fingerprints import fingerprint_of

__all__ = [
    "BIG",
    "RULES",
    "Digest",
    "Entry",
    "RunDependencies",
    "RunTimeNames",
    "Walk",
    "code_label",
    "immutable",
    "public_names",
    "shown_value",
]


BIG = 256 << 10
"""A value whose digest reads more than this many bytes is hashed once per run."""

_BUILTIN_NAMES = frozenset(dir(builtins))
_CLASS_SKIP = frozenset({"__dict__", "__weakref__", "__module__", "__qualname__", "__doc__"})


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
            "entries": [[e.label, e.digest, shown_value(e.value)] for e in self.entries],
            "refs": self.refs,
            "rules": RULES,
        }
        if self.opaque:  # values digested by their type only: a change to them is not seen
            doc["opaque"] = self.opaque
        return doc


_SHOWN = frozenset({*PRIMITIVES, tuple, list, dict, set, frozenset})


def shown_value(value: Any) -> str | None:
    """A short repr of a small value, for a reason such as ``(10 -> 100)``."""
    if value is None or type(value) not in _SHOWN:
        return None
    if type(value) not in PRIMITIVES and len(value) > 8:
        return None
    text = short_repr(value)
    return text if len(text) <= 40 else None


class RunDependencies:
    """Per-run caches: each step's last walk, digests of big values by object, and the
    installed packages seen (for the run's environment)."""

    __slots__ = ("arguments", "big", "packages", "walks")

    def __init__(self) -> None:
        self.big: dict[int, tuple[Any, str, Any, tuple[Any, ...]]] = {}  # id -> (obj, digest,
        # fingerprint, code inside)
        self.packages: set[str] = set()
        self.walks: dict[Any, Walk] = {}  # a StepDependencies -> its last walk
        # (step, ids of the code its arguments held) -> (base, walk, digest, that code)
        self.arguments: dict[tuple[Any, ...], tuple[Digest, Walk, Digest, list[Any]]] = {}

    def environment(self) -> dict[str, str]:
        """Versions of the packages this run's steps reference, and Python's."""
        env = {"python": sys.version.split()[0]}
        for top in sorted(self.packages):
            version = package_version(top)
            if version:
                env[top] = version
        return env


_MISSING = object()


_ATOMIC = frozenset({*PRIMITIVES, range, type(...)})


def immutable(obj: Any) -> bool:
    """A value no one can change in place: a primitive (a range, ``...``), or a tuple or
    frozenset of such values."""
    t = type(obj)
    if t in _ATOMIC:
        return True
    return (t is tuple or t is frozenset) and all(immutable(v) for v in obj)


_CODE = (types.ModuleType, types.FunctionType, types.MethodType)
# A Step's own attributes (the rest, set by the user, count as a function's would).
_STEP_OWN = frozenset({
    "_binding", "fn", "name", "retries", "backoff", "retry_delay", "is_async",
    "dependencies", "_arguments",
})  # fmt: skip


class Walk:
    """One traversal from a step's function: the entries, in a deterministic order, and
    what it read on the way, so that the next call can check that nothing changed by
    identity (and, for mutable values, by digest) instead of walking again."""

    __slots__ = ("attrs", "digest", "entries", "functions", "keys", "keysets", "opaque",
                 "owners", "packages", "reads", "refs", "rehash", "run", "seen")  # fmt: skip

    def __init__(self, run: RunDependencies, *, watch: bool = False) -> None:
        self.run = run
        # watch (a cell's walk): also keep whose state each mapping and value is, by id, and
        # watch what could be added (attributes of a function or module) so that what the
        # cell changes in place is seen afterwards (``changed``)
        self.owners: dict[int, str] | None = {} if watch else None
        self.keysets: dict[int, frozenset[Any]] = {}  # (watch) the members each mapping had
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
                if fingerprint_of(obj, big=big) != fingerprint:
                    self.run.big.pop(id(obj), None)  # changed in place: hash it again
                    return False
        except Exception:  # e.g. a closure cell emptied since: walk again
            return False
        return True

    def changed(self, namespace: dict[str, Any], handled: set[int]) -> list[str]:
        """What this walk read that is no longer as it was, apart from the names of
        ``namespace`` and the values whose ids are in ``handled`` (a cell's walk, afterwards:
        what the cell changed in place in modules, classes, functions and the values only
        they hold)."""
        owners = self.owners or {}
        found: list[str] = []
        for fn, code, defaults, kwdefaults in self.functions:
            if (fn.__code__, fn.__defaults__, fn.__kwdefaults__) != (code, defaults, kwdefaults):
                found.append(code_label(fn))
        for mapping, key, value in self.reads:
            now = mapping.get(key, _MISSING)
            if now is value or mapping is namespace or mapping is sys.modules:
                continue
            owner = owners.get(id(mapping), "an object")
            if type(now) is types.ModuleType and now.__name__ == f"{owner}.{key}":
                continue  # a package gained the submodule imported meanwhile
            found.append(f"{owner}.{key}")
        for obj, attr, value in self.attrs:
            if getattr(obj, attr, _MISSING) is not value:
                found.append(owners.get(id(obj), f"{type(obj).__qualname__}.{attr}"))
        for mapping, count in self.keys:
            if len(mapping) == count or mapping is namespace:
                continue
            owner = owners.get(id(mapping), "an object")
            then = self.keysets.get(id(mapping))
            if then is None:
                found.append(f"{owner} (members added)")
                continue
            for key in sorted(then.symmetric_difference(mapping), key=str):
                if not (isinstance(key, str) and key.startswith("__")):  # (__slotnames__,
                    found.append(f"{owner}.{key}")  # which pickling adds to a class)
        for obj, fingerprint, big in self.rehash:
            if id(obj) not in handled and fingerprint_of(obj, big=big) != fingerprint:
                found.append(owners.get(id(obj), type(obj).__qualname__))
        return list(dict.fromkeys(found))

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
        if (own or self.owners is not None) and not ("registry" in own and "dispatch" in own):
            # ``h.scale = 2``: it may read them; not those it sets itself (``w.calls += 1``,
            # a timer's ``w.seconds = ...``): its state, which a replay does not update
            # (singledispatch's own are its registry)
            self._attributes(label.removeprefix("step "), own, skip=info.stored)
        glob = fn.__globals__
        module = glob.get("__name__")
        prefix = "" if module == "__main__" else f"{module}."
        self.names(glob, info.globals, info.attrs, info.bare, prefix)
        for name in info.outputs:  # `NAME.update(d)`: an output, unless NAME is code
            obj = glob.get(name, _MISSING)
            self.reads.append((glob, name, obj))
            self._output(f"{prefix}{name}", obj, info.attrs)
        for builtin in info.dynamic:
            if builtin not in glob:  # the builtin, not a global of the same name
                raise RunTimeNames(f"{label.removeprefix('step ')} calls {builtin}()")
        for module_name, level, fromlist in info.imports:  # `from cfg import RATE` in it
            self.imported(module_name, level, fromlist, glob, info.attrs)
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

    def _members(self, mapping: Any, owner: str) -> None:
        """Watch ``mapping`` (a class's or a function's attributes) for members added or
        removed (each member is also read by identity)."""
        self.keys.append((mapping, len(mapping)))
        if self.owners is not None:
            self.owners[id(mapping)] = owner
            self.keysets[id(mapping)] = frozenset(mapping)

    def names(
        self, glob: dict[str, Any], names: Iterable[str], attrs: frozenset[str],
        bare: frozenset[str], prefix: str = "",
    ) -> None:  # fmt: skip
        """The names code reads from its namespace ``glob`` (a module's, or the notebook's):
        each value by what it brings in; a module used other than as ``NAME.attr`` (passed
        on whole) by all its attributes, since any of them may be read where it goes."""
        if self.owners is not None:
            self.owners.setdefault(id(glob), prefix.rstrip(".") or "the notebook")
        for name in names:
            obj = glob.get(name, _MISSING)
            self.reads.append((glob, name, obj))
            if obj is not _MISSING:
                used = attrs
                if name in bare and type(obj) is types.ModuleType:
                    used = public_names(obj)
                self.reference(f"{prefix}{name}", obj, used)
            elif name not in _BUILTIN_NAMES:
                self.entries.append(Entry(f"global {prefix}{name}", "undefined"))

    def _attributes(
        self, name: str, own: dict[str, Any], skip: frozenset[str] = frozenset()
    ) -> None:
        """The attributes a user set on a function or a step (not dunders, not ``skip``)."""
        if ("attributes", id(own)) in self.seen:
            return
        self.seen.add(("attributes", id(own)))
        self._members(own, name)
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
            or (self.owners is not None and obj is not _MISSING)  # a cell's: what its
        ):  # helpers append to is what the cell changes, and its old value is an input
            self.reference(name, obj, attrs, kind=kind)

    def cls(self, cls: type) -> None:
        if id(cls) in self.seen:
            return
        self.seen.add(id(cls))
        qualname = code_label(cls)
        self.attrs.append((cls, "__bases__", cls.__bases__))
        meta = type(cls)
        if meta is not type and is_user_module(meta.__module__):  # its methods run on cls
            self.attrs.append((cls, "__class__", meta))
            self.reference(f"{qualname} metaclass", meta, frozenset())
        for base in cls.__bases__:
            if base is not object:
                self.reference(f"{qualname} base", base, frozenset())
        members = vars(cls)
        self._members(members, qualname)
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
        if t in PRIMITIVES:
            digest = xxh3_128_hexdigest(pickle.dumps(obj, protocol=5))
            self.entries.append(Entry(f"{kind} {name}", digest, obj))
            return
        if t is types.FunctionType:
            if is_user_module(obj.__module__):
                self.function(obj, code_label(obj))
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

    def imported(
        self, name: str, level: int, fromlist: tuple[str, ...], glob: dict[str, Any],
        attrs: frozenset[str], *, load: bool = True,
    ) -> None:  # fmt: skip
        """A module code imports: the attributes of it that it uses, as for a module global;
        for ``from pkg import sub``, the submodule too. A module of the user's not imported
        yet is imported now, just before the call that would import it (also when the call
        then replays): the same digest in a fresh process as in a warm one. Installed ones are
        recorded, never imported here. ``load=False`` (a cell, whose code may prepare what a
        module finds when it loads): nothing is imported; each module counts by what
        importing it would load (``module_digest``: the user's files, a package's version),
        the same in a fresh kernel as in one that imported it already."""
        try:
            full = importlib.util.resolve_name("." * level + name, glob.get("__package__"))
        except (ImportError, ValueError) as exc:  # the call will fail the same way
            self.entries.append(Entry(f"import {name}", f"unresolvable: {type(exc).__name__}"))
            return
        for target in (full, *(f"{full}.{n}" for n in fromlist if n != "*")):
            if not load:
                source = module_digest(target)
                if source != "missing" or target == full:  # (``from m import f``: f no module)
                    self._package(target)
                    self.entries.append(Entry(f"import {target}", source))
                continue
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
        if self.owners is not None:  # a cell's: an attribute it names may be added to it
            self.owners[id(members)] = module.__name__
            self.reads.extend((members, attr, _MISSING) for attr in attrs - members.keys())
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
        if hit is not None and hit[0] is obj and hit[2] == fingerprint_of(obj, big=True):
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
                fingerprint = fingerprint_of(obj, big=True)
                big[id(obj)] = (obj, digest, fingerprint, code)
                self.rehash.append((obj, fingerprint, True))
            elif not immutable(obj):
                self.rehash.append((obj, fingerprint_of(obj), False))  # may change in place
            if self.owners is not None:
                self.owners.setdefault(id(obj), label.partition(" ")[2])
            self.entries.append(Entry(label, digest, obj))
        name = label.partition(" ")[2]
        for inner in dict.fromkeys(code):  # each function or class once, in order found
            if inner is not obj:  # (a callable with no module of its own names itself)
                self.reference(name, inner, frozenset())


def public_names(module: types.ModuleType) -> frozenset[str]:
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


def code_label(obj: types.FunctionType | type) -> str:
    """``helper`` for the notebook's own, ``helpers.helper`` for a user module's."""
    name = obj.__qualname__.rpartition("<locals>.")[2]
    return name if obj.__module__ == "__main__" else f"{obj.__module__}.{name}"
