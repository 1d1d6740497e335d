"""Experiments as data: each call's parameters and result fields, as JSON beside its row.

At checkpoint time, the only moment the values are in hand, a step's row gets two small JSON
documents (``steps.params`` and ``steps.metrics``):

- ``params``: its arguments bound to parameter names, defaults filled in. JSON scalars are
  kept as they are, numpy scalars converted, anything else is a short repr string;
- ``metrics``: its result's fields: a dict or other Mapping, dataclass, NamedTuple, pydantic
  model or pandas Series gives its fields (nested mappings flattened as ``a.b``, at most
  ``MAX_FIELDS``); a scalar gives ``result``; anything else gives nothing.

They are read back by ``views.experiments`` (one row per call, one column per parameter and
per result field) and by any SQLite client::

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

from .errors import DurableError
from .serialization import describe, short_repr

Texts = tuple[list[str], str]

__all__ = [
    "MAX_FIELDS",
    "compare",
    "experiments",
    "flat_texts",
    "metrics_document",
    "params_document",
    "result_documents",
    "styled",
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


# -- the table ------------------------------------------------------------------------------


_NON_FINITE = {"nan", "inf", "-inf"}
_INT64 = (-(2**63), 2**63 - 1)


def _column(values: list[Any]) -> Any:
    """A column with a real dtype: booleans, integers, floats (missing as NA / NaN), text
    (``"nan"`` / ``"inf"``, as non-finite floats are written, read as numbers)."""
    import pandas as pd

    kinds = {type(v) for v in values} - {type(None)}
    if int in kinds and any(type(v) is int and not _INT64[0] <= v <= _INT64[1] for v in values):
        return values  # integers past 64 bits: kept exact, as Python ints
    if kinds == {bool}:
        return pd.array(values, dtype="boolean")
    if kinds == {int}:
        return pd.array(values, dtype="Int64")
    if kinds and kinds <= {int, float}:
        return pd.array([float("nan") if v is None else v for v in values], dtype="float64")
    if str in kinds and kinds <= {str, int, float}:
        texts = {v for v in values if type(v) is str}
        if texts <= _NON_FINITE:  # a text column that holds "nan" among other words stays text
            return pd.to_numeric(pd.Series(values), errors="coerce").to_numpy()
    return values


def experiments(
    workflow: str | None = None,
    step: str | None = None,
    *,
    latest: bool = True,
    log: Any = None,
) -> Any:
    """One row per call of a step: columns ``workflow``, ``run``, ``step``, one per
    parameter and one per result field (real dtypes), then ``duration`` and ``started``.

    ``latest`` (the default): per call, its newest completed record (after a code change
    and a rerun, the new values only). ``latest=False``: every attempt, failed ones too,
    with ``status`` and ``error`` columns. A parameter named like one of those columns
    is ``param.NAME``; a result field named like a parameter or a column is ``result.NAME``.
    Read from the JSON written at checkpoint time: nothing is unpickled.
    """
    import pandas as pd

    from .views import _opened, _times

    with _opened(log) as store:
        rows = store.experiment_rows(workflow, step, completed=latest)
    if latest:  # the newest record of each call, in the order the calls first appear
        newest: dict[tuple[Any, ...], tuple[Any, ...]] = {}
        for row in rows:  # in id order: a later record replaces an earlier one
            newest[row[:5]] = row
        rows = list(newest.values())
    # one parse per column, not per row: the documents joined into one JSON array
    params = json.loads("[" + ",".join(r[8] or "{}" for r in rows) + "]")
    metrics = json.loads("[" + ",".join(r[9] or "{}" for r in rows) + "]")
    param_names = list(dict.fromkeys(k for p in params for k in p))
    metric_names = list(dict.fromkeys(k for m in metrics for k in m))
    fixed = ("workflow", "run", "step", "status", "error", "duration", "started")
    shown = [f"param.{name}" if name in fixed else name for name in param_names]
    taken = {*shown, *fixed}
    data: dict[str, Any] = {
        "workflow": [r[0] for r in rows],
        "run": pd.array([r[5] for r in rows], dtype="int64"),
        "step": [r[2] for r in rows],
    }
    if not latest:
        data["status"] = pd.Categorical([r[6] for r in rows])
        data["error"] = [r[7] for r in rows]
    for name, column in zip(param_names, shown, strict=True):
        data[column] = _column([p.get(name) for p in params])
    results = []
    for name in metric_names:  # (a field "param.x" would read as a renamed parameter)
        column = f"result.{name}" if name in taken or name.startswith("param.") else name
        results.append(column)
        data[column] = _column([m.get(name) for m in metrics])
    started = _times(pd.Series([r[10] for r in rows], dtype="float64"))
    data["duration"] = _times(pd.Series([r[11] for r in rows], dtype="float64")) - started
    data["started"] = started
    df = pd.DataFrame(data)
    df.attrs["results"] = results
    return df


def compare(workflow: str, run_a: int, run_b: int, *, log: Any = None) -> Any:
    """What differs between two runs of a workflow, one row per call: ``step``, ``args``,
    how each run got it (``ran``, ``replayed`` or missing), and ``difference``: ``only in
    run N``, the result fields that differ (``loss: 0.5 -> 0.4``), or empty when equal."""
    import pandas as pd

    from .views import _opened

    if run_a == run_b:
        raise DurableError(f"compare takes two different runs of {workflow!r}, not {run_a} twice")
    with _opened(log) as store:
        known = {run.id for run in store.runs(workflow)}
        for run in (run_a, run_b):
            if run not in known:
                raise DurableError(
                    f"{workflow!r} has no run {run}; its runs are "
                    f"{_listed(sorted(known)) or 'none'} (durable_nb.runs({workflow!r}))"
                )
        a, b = store.run_calls(run_a), store.run_calls(run_b)
    calls: dict[tuple[Any, ...], dict[str, Any]] = {}
    for run, rows in ((run_a, a), (run_b, b)):
        for scope, name, digest, occurrence, shown, fields, how in rows:
            entry = calls.setdefault(
                (scope, name, digest, occurrence), {"step": name, "args": shown}
            )
            entry[run] = (how, json.loads(fields) if fields else {})
    out = []
    for entry in calls.values():
        one, two = entry.get(run_a), entry.get(run_b)
        if one is None or two is None:
            difference = f"only in run {run_a if one is not None else run_b}"
        else:
            changed = [
                f"{k}: {one[1].get(k)} -> {two[1].get(k)}"
                for k in dict.fromkeys([*one[1], *two[1]])
                if one[1].get(k) != two[1].get(k)
            ]
            difference = "; ".join(changed)
        out.append(
            {
                "step": entry["step"],
                "args": entry["args"],
                f"run {run_a}": one[0] if one else None,
                f"run {run_b}": two[0] if two else None,
                "difference": difference,
            }
        )
    columns = ["step", "args", f"run {run_a}", f"run {run_b}", "difference"]
    return pd.DataFrame(out, columns=columns)


def _listed(ids: list[int]) -> str:
    shown = ", ".join(map(str, ids[-10:]))
    return shown if len(ids) <= 10 else f"..., {shown}"


_LOWER_IS_BETTER = ("loss", "err", "mse", "mae", "rmse", "time", "latency", "cost")


def styled(df: Any) -> Any:
    """The experiments table for a notebook: sorted by its first numeric result field, the
    best value of each numeric result column highlighted (the lowest for names such as
    ``loss`` or ``error``, else the highest)."""
    import pandas as pd

    known = {"workflow", "run", "step", "status", "error", "duration", "started"}
    numeric = [
        c for c in df.columns
        if c not in known and pd.api.types.is_numeric_dtype(df[c])
        and not pd.api.types.is_bool_dtype(df[c])
    ]  # fmt: skip
    results = [c for c in numeric if c in _results(df)]
    if results:
        low = any(word in results[0].lower() for word in _LOWER_IS_BETTER)
        df = df.sort_values(results[0], ascending=low, kind="stable").reset_index(drop=True)
    style = df.style
    for column in results:
        lower = any(word in column.lower() for word in _LOWER_IS_BETTER)
        best = style.highlight_min if lower else style.highlight_max
        style = best(subset=[column], props="font-weight: bold; background-color: #c8e6c9")
    return style


def _results(df: Any) -> set[str]:
    return set(df.attrs.get("results", ()))
