"""Digests that decide replay: of a call's arguments, of values, of a cell's source.

The digests are canonical: equal values give equal digests in every process, whatever
``PYTHONHASHSEED`` is. Keyword arguments, sets and an object's attributes are sorted; dicts
keep their order (a step may iterate one); dataclasses and plain objects are digested by
their fields and attributes (not by their pickle, which depends on set order);
numpy arrays by dtype (field names included), shape and data. A value that cannot be digested
(a client, a connection) counts by its type only, and ``ValueDigest.opaque`` says so.

A call's arguments are first bound to the function's signature (``Arguments``), so that
``f(5)``, ``f(x=5)`` and ``f(5, y=<its default>)`` are one key, and the bound arguments of a
``functools.partial`` are part of it.

xxh3-128, not a cryptographic hash: digests run on every step call, and a key only has to
tell apart the calls of one workflow, not resist an adversary.
"""

from __future__ import annotations

import collections
import contextlib
import enum
import functools
import hashlib
import inspect
import io
import math
import pickle
import types
import uuid
from collections.abc import Callable
from typing import Any, NamedTuple

from xxhash import xxh3_128, xxh3_128_hexdigest

from ..log.documents import flat_texts, params_document
from ..log.serialization import args_repr
from .codeinfo import is_user_module

__all__ = [
    "Arguments",
    "ValueDigest",
    "args_digest",
    "digest_value",
    "source_digest",
    "value_digest",
]

PRIMITIVES = frozenset({type(None), bool, int, float, complex, str, bytes})
_NO_STATE = getattr(object, "__getstate__", None)


class ValueDigest(NamedTuple):
    """The digest of a value, what it cost, whether part of it was by type only, and the
    code found inside it (functions, classes, steps, and the classes of objects), which
    the value's digest names but does not cover: ``dependencies`` walks it."""

    digest: str
    cost: int  # about how many bytes were read to make it
    opaque: bool  # some part of it could not be digested and counts by its type
    code: tuple[Any, ...] = ()


_OBJECT_BUDGET = 500  # objects of installed packages walked by their state, per value


class _Acc:
    __slots__ = ("active", "code", "cost", "legacy", "objects", "opaque", "truncated")

    def __init__(self, *, legacy: bool = False) -> None:
        self.legacy = legacy  # the rules before RULES 2 (``legacy_digest``)
        self.cost = 0
        self.objects = 0  # objects of installed packages walked so far
        self.opaque = False
        self.truncated = False  # the walk stopped at the budget
        self.code: list[Any] = []
        self.active: dict[int, int] = {}  # containers being digested: a cycle refers back


def _sorted(items: list[Any]) -> list[Any]:
    try:
        items.sort()
    except TypeError:
        items.sort(key=repr)
    return items


def _default_reduce(t: type) -> bool:
    """Whether instances pickle as their ``__dict__`` and slots (no custom reduce or state)."""
    return (
        t.__reduce_ex__ is object.__reduce_ex__
        and t.__reduce__ is object.__reduce__
        and getattr(t, "__getstate__", None) is _NO_STATE
    )


def _slots(t: type) -> list[str]:
    names: list[str] = []
    for klass in t.__mro__:
        declared = klass.__dict__.get("__slots__", ())
        for name in (declared,) if isinstance(declared, str) else declared:
            if name not in ("__dict__", "__weakref__"):
                names.append(name)
    return names


def _state(value: Any, t: type, acc: _Acc, skip: Any = ()) -> tuple[Any, ...]:
    """An object's own attributes: its ``__dict__`` (in any order: set in another order,
    they are the same object) and the slots of its classes; not the names in ``skip``, nor
    the values a ``functools.cached_property`` keeps (a cache, filled when first read)."""
    attrs = vars(value) if hasattr(value, "__dict__") else {}
    own = [
        (_canon(k, acc), _canon(v, acc)) for k, v in attrs.items()
        if k not in skip
        and (acc.legacy or not isinstance(getattr(t, k, None), functools.cached_property))
    ]  # fmt: skip
    slots = [(n, _canon(getattr(value, n), acc)) for n in _slots(t) if hasattr(value, n)]
    return (("dict", *_sorted(own)), *slots)


def _keywords(mapping: dict[str, Any], acc: _Acc) -> Any:
    """Keyword arguments (a partial's, a function's keyword defaults): order has no meaning."""
    return ("dict", *_sorted([(_canon(k, acc), _canon(v, acc)) for k, v in mapping.items()]))


_BUILTIN_BASES = (dict, list, tuple, set, frozenset, str, bytes, int, float, complex)


def _canon(value: Any, acc: _Acc) -> Any:
    """A structure of primitives equal for equal values, with type tags where it matters."""
    t = type(value)
    acc.cost += 8
    if t in PRIMITIVES:
        if t is str or t is bytes:
            acc.cost += len(value)
        return value
    me = id(value)
    back = acc.active.get(me)
    if back is not None:  # a cycle: refer to the enclosing one, by depth
        return ("cycle", len(acc.active) - back)
    acc.active[me] = len(acc.active)
    try:
        return _canon_new(value, t, acc)
    finally:
        del acc.active[me]


def _qualname(value: Any) -> str:
    """A routine's qualified name (a callable descriptor object may have none: its type's)."""
    name = getattr(value, "__qualname__", None)
    return name if isinstance(name, str) else type(value).__qualname__


def _canon_new(value: Any, t: type, acc: _Acc) -> Any:
    if t is tuple or t is list:
        return (t.__name__, *[_canon(v, acc) for v in value])
    if t is dict:  # by its items in order: a step may iterate it (list(d), a prompt)
        items = [(_canon(k, acc), _canon(v, acc)) for k, v in value.items()]
        ordered = _sorted(items[:])
        if ordered == items or acc.legacy:  # sorted: the form older logs stored
            return ("dict", *ordered)
        return ("dict-ordered", *items)
    if t is set or t is frozenset:
        return (t.__name__, *_sorted([_canon(v, acc) for v in value]))
    module = t.__module__
    if module == "numpy" and t.__name__ == "ndarray":
        if value.dtype.hasobject:
            return ("ndarray-object", value.shape, _canon(value.tolist(), acc))
        acc.cost += value.nbytes
        dtype = value.dtype.descr if value.dtype.names else value.dtype.str
        data = value if value.flags.c_contiguous else value.copy(order="C")
        flat = data.reshape(-1)  # a view; 0-d arrays too
        return ("ndarray", dtype, value.shape, xxh3_128_hexdigest(flat.view("u1").data))
    if module.startswith("pandas") and t.__name__ in ("DataFrame", "Series", "Index"):
        return _pandas(value, t, acc)
    if getattr(t, "__durable_step__", False):
        acc.code.append(value)
        return ("step", value.name)
    if t is functools.partial:  # its function's code counts, and its own arguments
        return ("partial", _canon(value.func, acc), _canon(value.args, acc),
                _keywords(value.keywords, acc))  # fmt: skip
    if callable(value) and (inspect.isroutine(value) or isinstance(value, type)):
        func = getattr(value, "__func__", value)  # a bound method: its function's module
        module_ = getattr(func, "__module__", None) or getattr(
            getattr(func, "__objclass__", None), "__module__", None
        )  # (``str.lower``: its class's)
        if module_ is None or is_user_module(module_):
            acc.code.append(value)  # named here; its code is walked by ``dependencies``
        elif func is not value:  # a package's method: the object it is bound to counts
            owner = _canon(getattr(value, "__self__", None), acc)
            return ("method", module_, _qualname(value), owner)
        return ("callable", module_ or "", _qualname(value))
    user = is_user_module(module)
    if user:
        acc.code.append(t)  # an object of the user's class: its methods count
    fields = getattr(t, "__dataclass_fields__", None)
    if fields is not None:  # its fields, and attributes set besides them (__post_init__)
        state = [(name, _canon(getattr(value, name, None), acc)) for name in fields]
        has_dict = hasattr(value, "__dict__") and not acc.legacy
        extra = _state(value, t, acc, skip=fields) if has_dict else ()
        if extra and extra[0] == ("dict",) and len(extra) == 1:
            extra = ()  # nothing besides its fields: the form older logs stored
        return ("dataclass", module, t.__qualname__, *state, *extra)
    if isinstance(value, tuple) and hasattr(t, "_fields"):  # a NamedTuple
        return ("namedtuple", module, t.__qualname__, *[_canon(v, acc) for v in value])
    if isinstance(value, _BUILTIN_BASES):
        # a subclass of a builtin (AttrDict, defaultdict, IntEnum...): its contents and state
        base = next(b for b in _BUILTIN_BASES if isinstance(value, b))
        if base in (str, bytes, int, float, complex):
            inner: Any = base.__repr__(value)
        else:
            inner = _canon(base(value), acc)
        factory = getattr(value, "default_factory", None)  # a defaultdict: what it makes
        if factory is not None and isinstance(value, collections.defaultdict) and not acc.legacy:
            inner = (inner, ("default_factory", _canon(factory, acc)))
        return ("subclass", module, t.__qualname__, inner, *_state(value, t, acc))
    if t is types.SimpleNamespace and not acc.legacy:  # its attributes, as an object's
        return ("namespace", *_state(value, t, acc))
    if hasattr(t, "__pydantic_fields__") and hasattr(t, "model_fields") and not acc.legacy:
        # a pydantic model (asked of its class: an object's __getattr__ is not called): its
        # fields and which were set, as sets are digested (its pickle holds that set in an
        # order that changes with PYTHONHASHSEED)
        fields_set = getattr(value, "__pydantic_fields_set__", None)
        if isinstance(fields_set, set):
            extra = [_canon(getattr(value, n, None), acc) for n in _PYDANTIC_STATE]
            return ("pydantic", module, t.__qualname__, *_state(value, t, acc),
                    _canon(fields_set, acc), *extra)  # fmt: skip
    if _default_reduce(t) and (hasattr(value, "__dict__") or _slots(t)):
        if not user:
            acc.objects += 1
            if acc.objects > _OBJECT_BUDGET:  # a live resource (a client, a loop): by type
                acc.opaque = acc.truncated = True
                return ("type", module, t.__qualname__)
        return ("object", module, t.__qualname__, *_state(value, t, acc))
    try:
        data = _pickled(value, acc)
    except Exception:
        acc.opaque = True
        return ("type", module, t.__qualname__)
    acc.cost += len(data)
    return ("pickle", module, t.__qualname__, xxh3_128_hexdigest(data))


class _CodeFinder(pickle.Pickler):
    """A pickler that notes the user's functions and classes it meets: pickle writes them
    by name, so their code is added to what ``dependencies`` walks."""

    def __init__(self, file: io.BytesIO, acc: _Acc) -> None:
        super().__init__(file, protocol=5)
        self.acc = acc

    def reducer_override(self, obj: Any) -> Any:
        if isinstance(obj, (types.FunctionType, type)) and is_user_module(obj.__module__):
            self.acc.code.append(obj)
        return NotImplemented


_PYDANTIC_STATE = ("__pydantic_extra__", "__pydantic_private__")

# Modules whose objects pickle without any code of the user's in them: pickled in C, not
# through the code-finding pickler (+2 us for a datetime or a Path argument).
_LEAF_MODULES = frozenset({
    "datetime", "pathlib", "decimal", "uuid", "fractions", "ipaddress", "re", "numpy",
    "zoneinfo", "enum",
})  # fmt: skip


def _pickled(value: Any, acc: _Acc) -> bytes:
    t = type(value)
    if acc.legacy or t.__module__ in _LEAF_MODULES or isinstance(value, enum.Enum):
        return pickle.dumps(value, protocol=5)
    buffer = io.BytesIO()
    _CodeFinder(buffer, acc).dump(value)
    return buffer.getvalue()


def _pandas(value: Any, t: type, acc: _Acc) -> Any:
    """A DataFrame, Series or Index by its values, index, labels, names, dtypes (categories
    and their order, time zones), ``attrs``, and what the value hash treats as equal (-0.0
    and 0.0; None and NaN in object columns). Not its pickle: that changes with the internal
    layout, e.g. after a round trip."""
    import pandas as pd

    kind = t.__name__
    meta = _pandas_meta(value, kind, acc)
    if not acc.legacy and _cells_by_str(value, kind):  # pandas hashes their str(): an address
        return (kind, meta, *_cells(value, kind, acc))
    try:
        hashed = pd.util.hash_pandas_object(value, index=kind != "Index").to_numpy()
    except (TypeError, ValueError):  # unhashable cells (lists, dicts): their canonical form
        if acc.legacy:
            return (kind, meta, _canon(list(value) if kind == "Index" else value.to_dict(), acc))
        return (kind, meta, *_cells(value, kind, acc))
    acc.cost += hashed.nbytes * 4
    return (kind, value.shape, meta, xxh3_128_hexdigest(hashed.data), _pandas_exact(value, kind))


# What pandas.api.types.infer_dtype says of object cells that hash by their value.
_BY_VALUE = frozenset({
    "string", "bytes", "empty", "integer", "floating", "mixed-integer-float", "boolean",
    "complex", "decimal", "datetime", "datetime64", "date", "time", "timedelta",
    "timedelta64", "period", "interval",
})  # fmt: skip


def _cells_by_str(value: Any, kind: str) -> bool:
    """Whether object cells (or labels) hold other objects, which pandas hashes by str():
    ``<Model object at 0x7f...>`` differs in every process."""
    import pandas as pd

    if kind == "DataFrame":  # (only its object columns are looked at)
        parts = [value.iloc[:, i] for i, d in enumerate(value.dtypes.to_numpy()) if d.kind == "O"]
    else:
        parts = [value]
    if kind != "Index":
        parts.append(value.index)
    labels = []
    for part in parts:
        if isinstance(part, pd.MultiIndex):  # its levels, not its tuples
            labels += list(part.levels)
        elif isinstance(part.dtype, pd.CategoricalDtype):  # its categories
            labels.append(part.dtype.categories)
        elif part.dtype.kind == "O":
            labels.append(part)
    return any(
        label.dtype.kind == "O" and pd.api.types.infer_dtype(label, skipna=True) not in _BY_VALUE
        for label in labels
    )


def _cells(value: Any, kind: str, acc: _Acc) -> tuple[Any, ...]:
    """Labels and cells, canonically, in order (duplicate labels kept apart)."""
    if kind == "Index":
        return (_canon(list(value), acc),)
    columns = list(value.columns) if kind == "DataFrame" else []
    rows = value.to_numpy(dtype=object).tolist()
    return (_canon(list(value.index), acc), _canon(columns, acc), _canon(rows, acc))


def _dtype(dtype: Any, acc: _Acc) -> Any:
    categories = getattr(dtype, "categories", None)
    if categories is not None:  # 'category' alone hides the categories and their order
        return ("category", _canon(list(categories), acc), bool(dtype.ordered))
    return str(dtype)  # time zones included: datetime64[ns, UTC]


def _pandas_meta(value: Any, kind: str, acc: _Acc) -> Any:
    """Labels (by type: 1 is not '1'), axis and level names, dtypes, attrs."""
    index = value if kind == "Index" else value.index
    levels = getattr(index, "levels", None)  # a MultiIndex: each level's dtype
    shape = [_canon(list(index.names), acc), _dtype(index.dtype, acc)]
    shape += [_dtype(level.dtype, acc) for level in levels] if levels is not None else []
    if kind == "DataFrame":
        columns = value.columns
        shape += [_canon(list(columns), acc), _canon(list(columns.names), acc),
                  [_dtype(d, acc) for d in value.dtypes]]  # fmt: skip
    elif kind == "Series":
        shape += [_canon(value.name, acc), _dtype(value.dtype, acc)]
    attrs = getattr(value, "attrs", None)
    return (*shape, _keywords(dict(attrs), acc) if attrs else None)


def _pandas_exact(value: Any, kind: str) -> str:
    """Where floats are negative zero and object cells are None (not NaN)."""
    import numpy as np

    hasher = xxh3_128()
    if kind == "DataFrame":  # the float and the object columns each as one block
        floats = value.select_dtypes(include=["floating"]).to_numpy()
        objects = value.select_dtypes(include=["object"]).to_numpy()
    else:
        floats = value.to_numpy() if value.dtype.kind == "f" else None
        objects = value.to_numpy() if value.dtype == object else None
    if floats is not None and floats.size and floats.dtype.kind == "f":
        hasher.update(np.packbits(np.signbit(floats)).tobytes())
    if objects is not None and objects.size:
        hasher.update(np.packbits(np.equal(objects, None)).tobytes())
    return hasher.hexdigest()


def _dumps(canon: Any) -> bytes:
    """The pickle of a canonical structure, without its memo: equal values give equal bytes
    whether or not equal strings in them are one object."""
    buffer = io.BytesIO()
    pickler = pickle.Pickler(buffer, protocol=5)
    pickler.fast = True  # no memo: the canonical form has no cycles (they are ("cycle", n))
    pickler.dump(canon)
    return buffer.getvalue()


def _deep(value: Any) -> str:
    """The digest of a value nested too deep for ``_canon`` (or pickle, or repr): a walk
    without recursion over its containers, leaves by repr (primitives) or type."""
    hasher = xxh3_128()
    stack = [value]
    while stack:
        v = stack.pop()
        t = type(v)
        if t is list or t is tuple:
            hasher.update(f"{t.__name__}{len(v)}(".encode())
            stack.extend(reversed(v))
        elif t is dict:
            hasher.update(f"dict{len(v)}(".encode())
            for k, item in sorted(v.items(), key=lambda kv: repr(kv[0]), reverse=True):
                stack += [item, k]
        elif t in PRIMITIVES:
            hasher.update(repr(v).encode())
        else:
            hasher.update(f"<{t.__module__}.{t.__qualname__}>".encode())
    return "deep:" + hasher.hexdigest()


def digest_value(value: Any) -> ValueDigest:
    """Canonical digest of one value, with its cost, whether part of it was opaque, and the
    code found inside it."""
    acc = _Acc()
    try:
        canon = _canon(value, acc)
    except RecursionError:  # nested too deep for the canonical form
        return ValueDigest(_deep(value), 0, False)
    if acc.truncated:  # too big to walk: its pickle, if it has one, tells values apart
        with contextlib.suppress(Exception):
            return ValueDigest(
                "pickle:" + xxh3_128_hexdigest(pickle.dumps(value, protocol=5)),
                acc.cost, False, tuple(acc.code),
            )  # fmt: skip
    return ValueDigest(xxh3_128_hexdigest(_dumps(canon)), acc.cost, acc.opaque, tuple(acc.code))


def legacy_digest(value: Any) -> str | None:
    """The digest a value had under the rules before ``walk.RULES`` 2 (dicts
    sorted, dataclasses by their fields only...), or None when it cannot be told: to say
    that a digest changed because the rule did, not the value."""
    acc = _Acc(legacy=True)
    try:
        canon = _canon(value, acc)
    except Exception:  # deep values, values whose methods raise: not told
        return None
    if acc.truncated:
        return None
    return xxh3_128_hexdigest(_dumps(canon))


def value_digest(value: Any) -> str:
    """Canonical digest of one value (used for globals and the variables a cell reads)."""
    return digest_value(value).digest


def args_digest(
    args: tuple[Any, ...], kwargs: dict[str, Any], code: list[Any] | None = None
) -> str:
    """Canonical digest of a call's (bound) arguments; keyword order does not matter. The
    code found inside them (callbacks, objects of the user's classes) is added to ``code``."""
    if not kwargs:
        for a in args:
            if type(a) not in PRIMITIVES:
                break
        else:  # only primitives: their pickle is canonical, once no string is there twice
            if len(args) > 1 and len({id(a) for a in args}) < len(args):
                args = _distinct(args)
            return xxh3_128_hexdigest(pickle.dumps(args, protocol=5))
    acc = _Acc()
    try:
        canon = (
            tuple(_canon(a, acc) for a in args),
            tuple(sorted((k, _canon(v, acc)) for k, v in kwargs.items())),
        )
    except RecursionError:  # nested too deep for the canonical form
        return _deep((args, sorted(kwargs.items())))
    except Exception:  # a value whose own methods raise while read
        return _by_pickle(args, kwargs)
    if code is not None:
        code += acc.code
    if acc.truncated:  # too big to walk
        return _by_pickle(args, kwargs)
    return xxh3_128_hexdigest(_dumps(canon))


def _by_pickle(args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
    """A call's digest by its pickle, else a key of its own (it runs)."""
    try:
        return "pickle:" + xxh3_128_hexdigest(pickle.dumps((args, kwargs), protocol=5))
    except Exception:
        return f"unjudged:{uuid.uuid4().hex}"


def _distinct(args: tuple[Any, ...]) -> tuple[Any, ...]:
    """``args`` with a repeated str or bytes object replaced by an equal copy: pickle
    writes a repeated object as a reference, an equal one in full."""
    seen: set[int] = set()
    out = []
    for a in args:
        if id(a) in seen and type(a) in (str, bytes) and len(a) > 1:
            a = a[:1] + a[1:]  # an equal object, not the same one
        seen.add(id(a))
        out.append(a)
    return tuple(out)


def _same(value: Any, default: Any) -> bool:
    return value is default or (
        type(value) is type(default)
        and type(value) in PRIMITIVES
        and value == default
        and (type(value) is not float or math.copysign(1.0, value) == math.copysign(1.0, default))
    )  # (-0.0 == 0.0, but a step may tell them apart: 1 / x, copysign)


class Arguments:
    """Binds a call's arguments to a function's signature, for its key.

    Keyword arguments given by position and positional ones given by keyword come out the
    same; arguments equal to their default are left out (so adding a parameter with a
    default keeps old keys); a ``functools.partial``'s own arguments come first.
    """

    __slots__ = (
        "_bound",
        "_defaults",
        "_first_default",
        "_names",
        "_params",
        "_positional",
        "_sig",
        "_simple",
        "binds",
    )  # fmt: skip

    def __init__(self, fn: Callable[..., Any]) -> None:
        bound_args: tuple[Any, ...] = ()
        bound_kw: dict[str, Any] = {}
        target = fn
        while isinstance(target, functools.partial):
            bound_args = target.args + bound_args
            bound_kw = {**target.keywords, **bound_kw}
            target = target.func
        self._bound = (bound_args, bound_kw)
        self.binds = bool(bound_args or bound_kw)  # a partial's: ``merged`` adds them
        try:
            self._sig: inspect.Signature | None = inspect.signature(target)
        except (TypeError, ValueError):
            self._sig = None
        params = list(self._sig.parameters.values()) if self._sig else []
        kinds = {p.kind for p in params}
        positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
        self._params = params
        self._names = [p.name for p in positional]
        self._positional = len(positional)
        self._defaults = [p.default for p in positional]
        first = len(positional)
        while first > 0 and positional[first - 1].default is not inspect.Parameter.empty:
            first -= 1
        self._first_default = first
        self._simple = (
            self._sig is not None
            and not bound_args
            and not bound_kw
            and kinds
            <= {inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD}
        )

    def merged(
        self, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> tuple[tuple[Any, ...], dict[str, Any]]:
        """The call as the underlying function sees it (a partial's arguments included)."""
        bound_args, bound_kw = self._bound
        if not bound_args and not bound_kw:
            return args, kwargs
        return bound_args + args, {**bound_kw, **kwargs}

    def documents(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[str, str | None]:
        """The call's arguments as the log shows them (``args_repr``) and by name as a JSON
        document (``params``, for ``log.documents``); in the common case (plain values given
        by position) from one pass that formats each value once."""
        if self._simple and not kwargs and len(args) == self._positional:
            texts = flat_texts(zip(self._names, args))  # noqa: B905 - same lengths; strict= costs
            if texts is not None:
                if not args:
                    return "", None
                shown = texts[0]
                text = shown[0] if len(shown) == 1 else ", ".join(shown)
                return text if len(text) <= 200 else text[:197] + "...", texts[1]
        return args_repr(args, kwargs), params_document(self.named(args, kwargs))

    def named(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
        """The call's arguments by parameter name, defaults filled in (``args``/``kwargs``
        as ``merged`` gives them); ``*args`` under its name, ``**kwargs`` flattened in."""
        if self._simple and not kwargs and len(args) <= self._positional:
            named = dict(zip(self._names, args, strict=False))
            for name, default in zip(
                self._names[len(args) :], self._defaults[len(args) :], strict=True
            ):
                if default is not inspect.Parameter.empty:
                    named[name] = default
            return named
        if self._sig is None:
            return {**{f"arg{i}": a for i, a in enumerate(args)}, **kwargs}
        try:
            bound = self._sig.bind(*args, **kwargs)
        except TypeError:
            return {**{f"arg{i}": a for i, a in enumerate(args)}, **kwargs}
        bound.apply_defaults()
        named = {}
        for p in self._params:
            value = bound.arguments.get(p.name)
            if p.kind is p.VAR_KEYWORD:
                named.update(value or {})
            else:
                named[p.name] = value
        return named

    def key(
        self, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> tuple[tuple[Any, ...], dict[str, Any]]:
        """The canonical (args, kwargs) of a call, for ``args_digest``."""
        if self._simple and not kwargs and len(args) <= self._positional:
            end = len(args)
            defaults = self._defaults
            while end > self._first_default and _same(args[end - 1], defaults[end - 1]):
                end -= 1
            return (args if end == len(args) else args[:end]), kwargs
        args, kwargs = self.merged(args, kwargs)
        if self._sig is None:
            return args, kwargs
        try:
            bound = self._sig.bind(*args, **kwargs)
        except TypeError:  # the call itself will raise it
            return args, kwargs
        given = bound.arguments
        positional: list[Any] = []
        named: dict[str, Any] = {}
        rest: tuple[Any, ...] = ()
        for p in self._params:
            if p.kind is p.VAR_POSITIONAL:
                rest = given.get(p.name, ())
            elif p.kind is p.VAR_KEYWORD:
                named.update(given.get(p.name, {}))
            elif p.kind is p.KEYWORD_ONLY:
                if p.name in given and not _same(given[p.name], p.default):
                    named[p.name] = given[p.name]
            else:
                positional.append(given.get(p.name, p.default))
        if not rest:
            end = len(positional)
            while end > self._first_default and _same(positional[end - 1], self._defaults[end - 1]):
                end -= 1
            del positional[end:]
        return (*positional, *rest), named


def source_digest(source: str) -> str:
    """Digest of a cell's source text, ignoring trailing whitespace."""
    lines = [line.rstrip() for line in source.strip().splitlines()]
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()[:32]
