"""The execution log as pandas DataFrames, and a timeline plot.

Views read columns only: they never unpickle a stored value, so a log from someone else's
machine is safe to look at. ``result()`` loads one value, explicitly. Every view takes
``log=``: a path to a ``.db`` log or to a notebook (its ``.durable/<stem>.db``), or a
``Store``; by default the current log.
"""

from __future__ import annotations

import operator
from typing import TYPE_CHECKING, Any

import pandas as pd

from ..errors import LogFileError
from ..log import queries, serialization
from ..log.records import RUN_STATUSES, STEP_STATUSES
from ..log.signing import valid
from ..log.store import Store
from . import columnar
from .reading import LogArg, check_status, opened, since_seconds, times

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["events", "result", "runs", "steps", "timeline"]

STATUS_COLOURS = {
    "completed": "#2e7d32",
    "failed": "#c62828",
    "interrupted": "#ef6c00",
    "not_durable": "#6a1b9a",
    "running": "#1565c0",
}


def runs_frame(rows: list[tuple[Any, ...]]) -> pd.DataFrame:
    """The ``runs()`` DataFrame of rows from ``run_rows`` (of one log or of many)."""
    df = pd.DataFrame.from_records(
        rows,
        columns=["run", "workflow", "status", "started", "ended", "steps_run",
                 "steps_replayed", "pid", "error"],
    )  # fmt: skip
    df["status"] = pd.Categorical(df["status"], categories=RUN_STATUSES)
    df["started"] = times(df["started"])
    df["ended"] = times(df["ended"])
    df["duration"] = df["ended"] - df["started"]
    df = df.astype({"run": "int64", "steps_run": "int64", "steps_replayed": "int64"})
    return df[["run", "workflow", "status", "started", "ended", "duration", "steps_run",
               "steps_replayed", "pid", "error"]]  # fmt: skip


def runs(log: LogArg = None, *, status: str | None = None, since: Any = None) -> pd.DataFrame:
    """One row per run: workflow, status, start, end, duration, steps run and replayed;
    only runs of ``status`` / started at or after ``since`` when given (filtered in SQL)."""
    check_status(status, RUN_STATUSES)
    with opened(log) as store:
        return runs_frame(queries.run_rows(store, status, since_seconds(since)))


_STEP_COLUMNS = {
    "id": "int", "run_id": "int", "workflow": "text", "name": "text", "args_repr": "text",
    "occurrence": "int", "attempt": "int", "status": "text", "started_at": "real",
    "ended_at": "real", "result_type": "text", "result_size": "int", "result_repr": "text",
    "error_type": "text", "error_message": "text", "reason": "text",
}  # fmt: skip
"""The steps columns ``steps()`` reads, and their kinds (for the columnar reader)."""
_STEP_NAMES = {
    "run_id": "run", "name": "step", "args_repr": "args", "started_at": "started",
    "ended_at": "ended",
}  # fmt: skip
_TEXT = [_STEP_NAMES.get(c, c) for c, kind in _STEP_COLUMNS.items()
         if kind == "text" and c != "status"]  # fmt: skip
"""The text columns of ``steps()`` (``status`` is made a Categorical)."""
COLUMNAR_ROWS = 150_000
"""From this many rows on, ``steps()`` of a whole log reads through Arrow (``columnar``):
the child process costs about 0.35 s, sqlite3 about 4.6 us a row and Arrow 1.2."""
_TEXT_DTYPE = pd.Series([""]).dtype  # pandas' default for strings: "str" (pandas 3), object


def _step_frame(store: Store, columns: str, workflow: str | None, run: int | None,
                status: str | None, since: float | None) -> pd.DataFrame:  # fmt: skip
    if workflow is None and run is None:  # (Arrow reads files and databases, not replicas)
        ids = store.step_ids()
        if ids[1] - ids[0] >= COLUMNAR_ROWS:
            sql, params = store.all_steps_query(columns, status=status, since=since)
            frame = None
            if store.local:
                frame = columnar.read_frame(
                    store.path, sql, params, ids, _STEP_COLUMNS, categorical=("status",)
                )
            elif (table := store.arrow_table(sql, [*ids, *params])) is not None:
                frame = table.to_pandas()
            if frame is not None:
                return frame.rename(columns=_STEP_NAMES)
    rows = store.step_rows(columns, workflow, run, status=status, since=since)
    return pd.DataFrame.from_records(
        rows, columns=[_STEP_NAMES.get(name, name) for name in _STEP_COLUMNS]
    )


def steps(
    workflow: str | None = None, run: int | None = None, log: LogArg = None, *,
    status: str | None = None, since: Any = None,
) -> pd.DataFrame:  # fmt: skip
    """One row per step attempt, with its status, timing, result summary and replay count;
    only attempts of ``status`` / started at or after ``since`` when given (in SQL)."""
    check_status(status, STEP_STATUSES)
    if run is not None:
        run = operator.index(run)  # numpy integers too (sqlite binds them as BLOB)
    with opened(log) as store:
        columns = ", ".join(_STEP_COLUMNS)
        df = _step_frame(store, columns, workflow, run, status, since_seconds(since))
        replays = queries.replayed_ids(store, workflow)
    for column in _TEXT:  # the same dtypes from sqlite3 and from Arrow
        if df[column].dtype != _TEXT_DTYPE:
            df[column] = df[column].astype(_TEXT_DTYPE)
    df["status"] = pd.Categorical(df["status"], categories=STEP_STATUSES)
    df["started"] = times(df["started"])
    df["ended"] = times(df["ended"])
    df["duration"] = df["ended"] - df["started"]
    counts = pd.Series(replays, dtype="int64")
    df["replayed"] = df["id"].map(counts.value_counts()).fillna(0).astype("int64")
    df["result_size"] = df["result_size"].astype("Int64")
    return df.astype({"id": "int64", "run": "int64", "occurrence": "int64", "attempt": "int64"})


def events(log: LogArg = None, *, since: Any = None) -> pd.DataFrame:
    """Every state change of runs and steps, in time order (the ``events`` view); only those
    at or after ``since`` when given."""
    start = since_seconds(since)
    with opened(log) as store:
        rows = queries.event_rows(store, start)
    df = pd.DataFrame.from_records(
        rows, columns=["ts", "workflow", "run", "step", "kind", "detail"]
    )
    df["ts"] = pd.to_datetime(df["ts"], utc=True, format="ISO8601")
    df["kind"] = df["kind"].astype("category")
    df["run"] = df["run"].astype("Int64")
    return df


def result(
    workflow: str,
    step: str,
    occurrence: int | None = None,
    *,
    args: str | None = None,
    log: LogArg = None,
) -> Any:
    """Load one stored step result (it unpickles it: only a value signed with your key).

    The newest completed call of ``step``; ``args`` picks the call whose arguments read so
    in ``steps()["args"]``, ``occurrence`` the n-th call with the same arguments in its run.
    """
    with opened(log) as store:
        try:
            fmt, inline, blob, signature = store.step_value_ref(workflow, step, occurrence, args)
        except LookupError as exc:
            raise LogFileError(f"{exc}; durable_nb.steps() lists what the log has") from None
        if not valid(signature, fmt, inline, blob):
            raise LogFileError(
                f"the stored value of {step} is not signed with your key (a log from elsewhere, "
                "or edited), so it is not unpickled; durable_nb.trust(PATH) adopts a log you trust"
            )
        segments = store.blobs.read(blob) if blob else [inline]
        return serialization.decode(fmt, segments)


def timeline(
    workflow: str | None = None, run: int | None = None, log: LogArg = None, ax: Any = None
) -> Figure:
    """Steps over time: one bar per step attempt, coloured by status (matplotlib)."""
    import matplotlib.dates as mdates
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    df = steps(workflow, run, log)
    attempts = len(df)
    note = ""
    if attempts > MAX_BARS:  # one bar per run and step, the newest ones: a bounded figure
        df, note = _grouped(df)
    if ax is None:
        fig = Figure(figsize=(9, max(2.0, 0.25 * len(df) + 1.2)))
        ax = fig.add_subplot()
    else:
        fig = ax.figure
    starts = mdates.date2num(df["started"].dt.tz_localize(None))
    widths = (df["ended"] - df["started"]).dt.total_seconds() / 86400.0
    widths = widths.clip(lower=1e-3 / 86400)  # a bar for every step, even the instant ones
    colours = [STATUS_COLOURS.get(s, "#757575") for s in df["status"].astype(str)]
    labels = [f"{name}({args})"[:40] for name, args in zip(df["step"], df["args"], strict=True)]
    ax.barh(range(len(df)), widths, left=starts, color=colours, height=0.7)
    marked = _mark_checkpoints(ax, df, workflow, log) if not note else False
    ax.set_yticks(range(len(df)), labels, fontsize=8)
    ax.invert_yaxis()
    ax.xaxis.set_major_formatter(mdates.DateFormatter("%H:%M:%S"))
    ax.set_xlabel("time (UTC)")
    title = workflow or "all workflows"
    ax.set_title(f"{title}: {attempts} step attempts{note}")
    present = [s for s in STEP_STATUSES if s in set(df["status"].astype(str))]
    handles: list[Any] = [Patch(color=STATUS_COLOURS[s], label=s) for s in present]
    if marked:
        from matplotlib.lines import Line2D

        handles.append(Line2D([], [], color="black", marker="|", linestyle="", markersize=9,
                              label="checkpoint"))  # fmt: skip
    ax.legend(handles=handles, loc="lower right")
    fig.tight_layout()
    return fig


def _mark_checkpoints(ax: Any, df: pd.DataFrame, workflow: str | None, log: LogArg) -> bool:
    """A tick on each step attempt's bar where it saved a ``checkpoint()``; whether any."""
    import matplotlib.dates as mdates

    from .checkpoints import checkpoints

    marks = checkpoints(workflow, log=log)
    keys = zip(df["run"], df["step"], df["args"], df["attempt"], strict=True)
    bars = {key: i for i, key in enumerate(keys)}
    xs, ys = [], []
    calls = zip(marks["run"], marks["step"], marks["args"], marks["attempt"], strict=True)
    for (run, name, args, attempt), when in zip(calls, marks["time"], strict=True):
        bar = bars.get((run, name, args, attempt))
        if bar is not None:
            xs.append(mdates.date2num(when.tz_localize(None)))
            ys.append(bar)
    if xs:
        ax.plot(xs, ys, linestyle="", marker="|", color="black", markersize=9)
    return bool(xs)


MAX_BARS = 300
"""Beyond this many step attempts, ``timeline`` draws one bar per run and step."""
_SEVERITY = {"failed": 3, "interrupted": 2, "not_durable": 1, "completed": 0}


def _grouped(df: pd.DataFrame) -> tuple[pd.DataFrame, str]:
    """One row per (run, step): first start, last end, the worst status, how many calls."""
    worst = df["status"].astype(str).map(_SEVERITY)
    frame = df.assign(severity=worst)
    groups = frame.groupby(["run", "step"], sort=False, observed=True).agg(
        started=("started", "min"), ended=("ended", "max"), severity=("severity", "max"),
        calls=("id", "size"),
    ).reset_index()  # fmt: skip
    groups = groups.sort_values("started").tail(MAX_BARS)
    by_severity = {v: k for k, v in _SEVERITY.items()}
    groups["status"] = groups["severity"].map(by_severity)
    groups["args"] = [f"x{n}, run {r}" for n, r in zip(groups["calls"], groups["run"], strict=True)]
    shown = f"the newest {len(groups)} " if len(groups) == MAX_BARS else ""
    return groups, f", one bar per run and step ({shown}groups)"
