"""Experiments as data: one row per call of a step, one column per parameter and per result
field, read from the JSON documents written at checkpoint time (``log.documents``), never
unpickling; ``compare`` puts two runs side by side; ``styled`` colours a table."""

from __future__ import annotations

import json
from typing import Any

from ..errors import DurableError
from ..log.checkpoints import unfinished_rows

__all__ = ["compare", "experiments", "styled"]


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
    A call that saved ``checkpoint()``s and has not completed (running, crashed) is a row
    too, with its newest checkpoint's metrics and a ``progress`` column (``checkpoint 6
    (run crashed)``). Read from the JSON written at checkpoint time: nothing is unpickled.
    """
    import pandas as pd

    from .reading import opened, times

    with opened(log) as store:
        rows = store.experiment_rows(workflow, step, completed=latest)
        unfinished = unfinished_rows(store, workflow, step)
    if latest:  # the newest record of each call, in the order the calls first appear
        newest: dict[tuple[Any, ...], tuple[Any, ...]] = {}
        for row in rows:  # in id order: a later record replaces an earlier one
            newest[row[:5]] = row
        rows = list(newest.values())
    # calls still running or cut short, with their newest checkpoint's metrics (unless the
    # call completed since: a completed record of a later run)
    done: dict[tuple[Any, ...], int] = {}
    for row in rows:
        if row[6] == "completed":
            done[row[:5]] = max(done.get(row[:5], 0), row[5])
    unfinished = [row for row in unfinished if row[5] > done.get(row[:5], 0)]
    progress = [None] * len(rows) + [f"checkpoint {r[7]} (run {r[6]})" for r in unfinished]
    rows += [(*r[:6], "unfinished", None, *r[8:]) for r in unfinished]
    # one parse per column, not per row: the documents joined into one JSON array
    params = json.loads("[" + ",".join(r[8] or "{}" for r in rows) + "]")
    metrics = json.loads("[" + ",".join(r[9] or "{}" for r in rows) + "]")
    param_names = list(dict.fromkeys(k for p in params for k in p))
    metric_names = list(dict.fromkeys(k for m in metrics for k in m))
    fixed = ("workflow", "run", "step", "status", "error", "progress", "duration", "started")
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
    if unfinished:
        data["progress"] = progress
    started = times(pd.Series([r[10] for r in rows], dtype="float64"))
    data["duration"] = times(pd.Series([r[11] for r in rows], dtype="float64")) - started
    data["started"] = started
    df = pd.DataFrame(data)
    df.attrs["results"] = results
    return df


def compare(workflow: str, run_a: int, run_b: int, *, log: Any = None) -> Any:
    """What differs between two runs of a workflow, one row per call: ``step``, ``args``,
    how each run got it (``ran``, ``replayed`` or missing), and ``difference``: ``only in
    run N``, the result fields that differ (``loss: 0.5 -> 0.4``), or empty when equal."""
    import pandas as pd

    from .reading import opened

    if run_a == run_b:
        raise DurableError(f"compare takes two different runs of {workflow!r}, not {run_a} twice")
    with opened(log) as store:
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
