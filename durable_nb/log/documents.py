"""The JSON documents of a step's row: its parameters and its result's fields.

At checkpoint time, the only moment the values are in hand, a step's row gets two small JSON
documents (``steps.params`` and ``steps.metrics``):

- ``params``: its arguments bound to parameter names, defaults filled in. JSON scalars are
  kept as they are, numpy scalars converted, anything else is a short repr string;
- ``metrics``: its result's fields: a dict or other Mapping, dataclass, NamedTuple, pydantic
  model or pandas Series gives its fields (nested mappings flattened as ``a.b``, at most
  ``MAX_FIELDS``); a scalar gives ``result``; anything else gives nothing.

They are read back by ``durable_nb.experiments()`` (one row per call, one column per
parameter and per result field) and by any SQLite client::

    sqlite3 .durable/x.db "SELECT json_extract(params, '$.lr'), json_extract(metrics,
        '$.loss') FROM steps WHERE name = 'train' AND status = 'completed'"

Nothing here unpickles anything: the documents are plain JSON, written from the live values.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Iterable, Mapping
from typing import Any

from .serialization import describe, short_repr

Texts = tuple[list[str], str]

__all__ = [
    "MAX_FIELDS",
    "flat_texts",
    "metrics_document",
    "params_document",
    "result_documents",
]

MAX_FIELDS = 50
"""Result fields (and parameters) kept per call; the rest are left out."""

_SCALARS = (bool, int, float, str, type(None))


def _jsonable(value: Any) -> Any:
    """A JSON scalar for ``value``: itself, a numpy scalar's Python value, or a short repr
    (non-finite floats as ``"nan"`` / ``"inf"``, which pandas reads back as numbers)."""
    t = type(value)
    if t.__module__ == "numpy" and hasattr(value, "item") and getattr(value, "ndim", 1) == 0:
        value = value.item()
        t = type(value)
    if t is float and not math.isfinite(value):
        return repr(value)
    if t is int and value.bit_length() > 14_000 and _too_long(value):
        return short_repr(value)
    if t in _SCALARS:
        return value
    for base in (bool, int, float, str):  # a subclass (an IntEnum, a str subclass)
        if isinstance(value, base):
            return _jsonable(base(value))
    return short_repr(value)


def _too_long(value: int) -> bool:
    """More digits than Python turns into text (``sys.set_int_max_str_digits``)."""
    try:
        repr(value)
    except ValueError:
        return True
    return False


def _flatten(
    fields: Mapping[Any, Any], out: dict[str, Any], prefix: str = "", depth: int = 0
) -> None:
    for key, value in fields.items():
        if len(out) >= MAX_FIELDS:
            return
        name = f"{prefix}{key}"
        inner = _nested(value) if depth < 3 else None
        if inner is not None:  # a dict, dataclass or NamedTuple inside: its fields as a.b
            _flatten(inner, out, f"{name}.", depth + 1)
            continue
        while name in out:  # {"a.b": 1, "a": {"b": 2}}: both kept, the second as a.b~2
            name += "~2"
        out[name] = _jsonable(value)


def _nested(value: Any) -> Mapping[Any, Any] | None:
    if isinstance(value, Mapping):
        return value
    if (dataclasses.is_dataclass(value) and not isinstance(value, type)) or (
        isinstance(value, tuple) and hasattr(type(value), "_fields")
    ):
        try:
            return _fields(value)
        except Exception:  # a field never set (init=False): kept as its short repr
            return None
    return None


def _fields(value: Any) -> Mapping[Any, Any] | None:
    """The named fields of a structured result, or None."""
    if isinstance(value, Mapping):
        return value
    t = type(value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
    if isinstance(value, tuple) and hasattr(t, "_fields"):  # a NamedTuple
        return dict(zip(t._fields, value, strict=False))
    dump = getattr(value, "model_dump", None)  # pydantic 2 (1: .dict())
    if callable(dump) and t.__module__ != "builtins":
        try:
            fields = dump()
        except Exception:
            return None
        return fields if isinstance(fields, Mapping) else None
    if t.__module__.startswith("pandas") and t.__name__ == "Series" and len(value) <= MAX_FIELDS:
        return {str(k): v for k, v in value.items()}
    return None


_ENCODE = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, default=str).encode


_quote = json.encoder.encode_basestring  # the C one, as json.dumps uses
_finite = math.isfinite


def _flat(fields: dict[Any, Any]) -> str | None:
    """The JSON of a dict that is already a flat document of scalars (the common case,
    written at once, as json.dumps would write it), or None."""
    if len(fields) > MAX_FIELDS:
        return None
    texts = flat_texts(fields.items())
    return None if texts is None else texts[1]


_names: dict[str, tuple[str, str]] = {}  # a name: its JSON key with ':', its repr with ': '


def _name(key: str) -> tuple[str, str]:
    if len(_names) > 4096:
        _names.clear()
    texts = _names[key] = (f"{_quote(key)}:", f"{key!r}: ")
    return texts


def flat_texts(pairs: Iterable[tuple[Any, Any]], keyed: bool = False) -> Texts | None:
    """For (name, value) pairs whose names are strings and values JSON scalars: each
    value's short repr (``'name': repr`` with ``keyed``, as a dict's repr shows it) and the
    JSON object of the pairs as json.dumps writes it, each value formatted once (the
    checkpoint needs both); None for anything else (then the general path is taken)."""
    shown = []
    parts = []
    try:
        for key, value in pairs:
            names = _names.get(key) if type(key) is str else None
            if names is None:
                if type(key) is not str:
                    return None
                names = _name(key)
            t = type(value)
            if t is int:  # (exact types: repr() is their own, and twice as fast as int.__repr__)
                text = doc = repr(value)
            elif t is float:
                if not _finite(value):
                    return None
                text = doc = repr(value)
            elif t is str:
                text = repr(value) if len(value) <= 80 else repr(value[:80])
                doc = _quote(value)
            elif t is bool:
                text, doc = ("True", "true") if value else ("False", "false")
            elif value is None:
                text, doc = "None", "null"
            else:
                return None
            parts.append(names[0] + doc)
            if len(text) > 80:
                text = text[:77] + "..."
            shown.append(names[1] + text if keyed else text)
    except ValueError:  # an int too long to convert to text
        return None
    return shown, "{" + ",".join(parts) + "}"


def result_documents(value: Any) -> tuple[str, str, str | None]:
    """(type name, short repr, ``metrics`` JSON) of a step's result, as
    ``serialization.describe`` and ``metrics_document`` give them; a small dict of scalars
    or a scalar (the common results) in one pass."""
    t = type(value)
    if t is dict and len(value) <= 6:
        texts = flat_texts(value.items(), keyed=True)
        if texts is not None:
            text = "{" + ", ".join(texts[0]) + "}"
            text = text if len(text) <= 80 else text[:77] + "..."
            return "dict", text, texts[1] if value else None
    elif t is int or t is float or t is str or t is bool:
        texts = flat_texts((("result", value),))
        if texts is not None:
            return t.__name__, texts[0][0], texts[1]
    return (*describe(value), metrics_document(value))


def params_document(named: Mapping[str, Any]) -> str | None:
    """The ``params`` JSON of a call whose arguments, by name, are ``named``."""
    if not named:
        return None
    flat = _flat(named) if type(named) is dict else None
    if flat is not None:
        return flat
    out: dict[str, Any] = {}
    for name, value in named.items():
        if len(out) >= MAX_FIELDS:
            break
        out[name] = _jsonable(value)
    return _ENCODE(out)


def metrics_document(value: Any) -> str | None:
    """The ``metrics`` JSON of a result: its fields, ``{"result": value}`` for a scalar,
    or None for anything else."""
    t = type(value)
    if t is dict:
        flat = _flat(value)
        if flat is not None:
            return flat if value else None
    if (t in _SCALARS and value is not None) or (
        t.__module__ == "numpy" and getattr(value, "ndim", None) == 0
    ):
        return _ENCODE({"result": _jsonable(value)})
    try:
        fields = _fields(value)
    except Exception:  # a result whose own accessors raise: no fields, the row still counts
        return None
    if not fields:
        return None
    out: dict[str, Any] = {}
    _flatten(fields, out)
    return _ENCODE(out)
