"""The fleet panel: a live ipywidgets view over the logs replicated under one root.

It only calls the public ``Fleet`` API (``overview``, ``runs``, ``steps``, ``checkpoints``,
``timeline``, ``open``): no SQL here. One worker thread per panel makes every call, one at a
time: the refresh every ``interval`` seconds while the panel is shown, and what the user asks
for; ``close()`` ends it. Errors and warnings show as one line in the panel, never a traceback.
"""

from __future__ import annotations

import functools
import html
import io
import os
import queue
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import ipywidgets as w
import pandas as pd

from ..backup.fleet import Fleet, fleet
from ..errors import DurableError

__all__ = ["FleetPanel"]

NEWEST_RUNS = 50
"""How many of a log's runs the panel lists: the newest."""

_local = threading.local()  # where the warnings of this thread's fleet calls go, if anywhere
Job = Callable[[], str | None]


def _one_at_a_time(
    method: Callable[[FleetPanel], str | None],
) -> Callable[[FleetPanel], str | None]:
    """The worker's calls and direct ones (``panel.refresh()`` in a cell) take turns."""

    @functools.wraps(method)
    def serial(self: FleetPanel) -> str | None:
        with self._calls:
            return method(self)

    return serial


def _one_line(text: object, limit: int = 400) -> str:
    line = " ".join(str(text).split())
    return line if len(line) <= limit else line[: limit - 1] + "…"


def _ago(lag: Any) -> str:
    """A Timedelta as ``4 s``, ``3 min``, ``2 h 5 min`` or ``3 d``; ``—`` if unknown."""
    if pd.isna(lag):
        return "—"
    s = max(0, int(lag.total_seconds()))
    if s < 120:
        return f"{s} s"
    if s < 7200:
        return f"{s // 60} min"
    return f"{s // 3600} h {s % 3600 // 60} min" if s < 172800 else f"{s // 86400} d"


def _when(t: Any) -> str:
    return "—" if pd.isna(t) else t.strftime("%Y-%m-%d %H:%M:%S")


@contextmanager
def _warnings_into(sink: list[str]) -> Iterator[None]:
    """The warnings this thread raises meanwhile go to ``sink``, the others where they went.

    Not ``catch_warnings``: it swaps process-wide state, so in a worker thread it would take
    (or keep for good) the warnings of the cells the user runs meanwhile."""
    if not getattr(warnings.showwarning, "fleet_panel", False):
        shown = warnings.showwarning

        def show(message: Any, category: Any, filename: str, lineno: int,
                 file: Any = None, line: str | None = None) -> None:  # fmt: skip
            into = getattr(_local, "sink", None)
            if into is None:
                shown(message, category, filename, lineno, file, line)
            else:
                into.append(_one_line(message))

        show.fleet_panel = True  # type: ignore[attr-defined]
        warnings.showwarning = show
    _local.sink = sink
    try:
        yield
    finally:
        _local.sink = None


class FleetPanel(w.VBox):
    """The logs under a fleet root, one row each, refreshed every ``interval`` seconds; pick
    one to see its runs, a failed run's error, its timeline, and open it here to replay it."""

    def __init__(
        self, root: str | Fleet, *, interval: float | None = 5.0,
        cache: str | os.PathLike[str] | None = None,
    ) -> None:  # fmt: skip
        self.fleet = root if isinstance(root, Fleet) else fleet(root, cache=cache)
        self._owns_fleet = not isinstance(root, Fleet)
        self.interval = interval
        self.summary = w.HTML(f"<b>Fleet {html.escape(self.fleet.url)}</b> · reading…")
        self.refresh_button = w.Button(description="Refresh", icon="refresh")
        self.table = w.HTML(layout=w.Layout(max_height="18em", overflow="auto"))
        self.logs = w.Select(options=[], description="Log", rows=6, layout=w.Layout(width="70%"))
        self.open_button = w.Button(
            description="Open here", button_style="warning", disabled=True,
            tooltip="make this log the current one: the next cell replays its workflow",
        )  # fmt: skip
        self.runs = w.HTML()
        self.run_pick = w.Dropdown(
            options=[("all runs", None)], description="Run", layout=w.Layout(width="50%")
        )
        self.error = w.HTML()
        self.metrics = w.HTML()
        self.timeline = w.Image(format="png", layout=w.Layout(display="none"))
        self.status = w.HTML()
        super().__init__([
            w.HBox([self.summary, self.refresh_button]), self.table,
            w.HBox([self.logs, self.open_button]), self.runs, self.run_pick, self.error,
            self.metrics, self.timeline, self.status,
        ])  # fmt: skip
        self._view_count = 0  # the frontend counts its views: no refresh while none shows it
        self._overview: pd.DataFrame | None = None
        self._runs: pd.DataFrame | None = None
        self._shown: tuple[str, Any] | None = None  # the log and replica time of the detail
        self._said_by: Job | None = None
        self._quiet = False  # set while the worker changes a selection itself
        self._jobs: queue.SimpleQueue[Job | None] = queue.SimpleQueue()
        self._stop = threading.Event()
        self._calls = threading.RLock()
        self._idle = False  # shown nowhere, its replicas closed
        self.refresh_button.on_click(lambda _: self._ask(self.refresh))
        self.logs.observe(lambda _: self._quiet or self._ask(self.show_log), names="value")
        self.run_pick.observe(lambda _: self._quiet or self._ask(self.show_run), names="value")
        self.open_button.on_click(lambda _: self._ask(self.open_here))
        self._ask(self.refresh)
        self._thread = threading.Thread(target=self._work, name="durable-nb fleet", daemon=True)
        self._thread.start()

    # -- the worker ----------------------------------------------------------------

    def _ask(self, job: Job) -> None:
        if not self._stop.is_set():
            self._jobs.put(job)

    def _work(self) -> None:
        due = time.monotonic() + (self.interval or 0)
        while not self._stop.is_set():
            wait = None if self.interval is None else max(0.0, due - time.monotonic())
            try:
                jobs = [self._jobs.get(timeout=wait)]
            except queue.Empty:
                due = time.monotonic() + (self.interval or 0)
                jobs = [self.refresh] if self._view_count else [self._rest]
            while not self._jobs.empty():  # what piled up meanwhile, each once
                jobs.append(self._jobs.get_nowait())
            for job in dict.fromkeys(jobs):
                if job is None or self._stop.is_set():
                    return
                self._run(job)

    def _run(self, job: Job) -> None:
        """``job``, its message, warnings or error shown in one line; it never raises."""
        said: list[str] = []
        try:
            with _warnings_into(said):
                message = job()
        except DurableError as exc:
            self._say(f"{type(exc).__name__}: {exc}", job, "#c62828")
        except Exception as exc:  # the panel must not die, nor raise into the kernel
            self._say(f"unexpected {type(exc).__name__}: {exc}", job, "#c62828")
        else:
            if said:
                more = f" (and {len(said) - 1} more warnings)" if len(said) > 1 else ""
                self._say(" · ".join(filter(None, [message, said[-1] + more])), job, "#ef6c00")
            elif message:
                self._say(message, job)
            elif self._said_by == job:  # its earlier trouble is over
                self._say("", job)

    def _say(self, text: str, job: Job | None = None, colour: str = "inherit") -> None:
        self._said_by = job
        self.status.value = f'<span style="color:{colour}">{html.escape(_one_line(text))}</span>'

    @_one_at_a_time
    def _rest(self) -> str | None:
        """Shown nowhere (its output cleared): no reads, and its replicas closed meanwhile."""
        if self._owns_fleet and not self._idle:
            self.fleet.close()
        self._idle = True
        return None

    def close(self) -> None:
        """Stop the refresh (its thread ends) and close the panel's widgets."""
        if not self._stop.is_set():
            self._stop.set()
            self._jobs.put(None)
            if self._thread is not threading.current_thread():
                self._thread.join(timeout=10)  # a read under way ends first
            if self._owns_fleet and not self._thread.is_alive():
                self.fleet.close()
            for part in self.children:
                for widget in (*getattr(part, "children", ()), part):
                    widget.close()
        super().close()

    # -- what it shows ---------------------------------------------------------------

    @_one_at_a_time
    def refresh(self) -> str | None:
        """Read every log's overview row and show them; the chosen log's detail too if its
        replica changed since it was shown."""
        self._idle = False
        frame = self.fleet.overview()
        self._overview = frame.set_index("log")
        names = frame["log"].astype(str).tolist()
        chosen = self.logs.value
        if list(self.logs.options) != names:
            self._quiet = True
            try:
                self.logs.options = names
                self.logs.value = chosen if chosen in names else None
            finally:
                self._quiet = False
        errors = [f"unreadable: {e}" if isinstance(e, str) else x if isinstance(x, str) else ""
                  for e, x in zip(frame["error"], frame["last_error"], strict=True)]  # fmt: skip
        shown = pd.DataFrame({
            "log": names, "activity (UTC)": frame["activity"].map(_when),
            "lag": frame["lag"].map(_ago), "runs": frame["runs"], "running": frame["running"],
            "failed": frame["failed"], "last error": [_one_line(e, 120) for e in errors],
        })  # fmt: skip
        self.table.value = shown.to_html(index=False, classes="durable-fleet")
        stamp = pd.Timestamp.now(tz="UTC").strftime("%H:%M:%S")
        self.summary.value = (
            f"<b>Fleet {html.escape(self.fleet.url)}</b> · {len(frame)} logs, "
            f"{int(frame['running'].sum())} runs running, {int(frame['failed'].sum())} failed · "
            f"refreshed {stamp} UTC"
        )
        if self.logs.value is None and chosen is not None:
            return self.show_log()  # the chosen log is gone
        if self.logs.value is not None and self._key(self.logs.value) != self._shown:
            return self.show_log()
        return None

    def _key(self, name: str) -> tuple[str, Any]:
        replicated = None if self._overview is None else self._overview["replicated"].get(name)
        return name, replicated

    @_one_at_a_time
    def show_log(self) -> str | None:
        """Show the chosen log's newest runs, the checkpoints of its running calls, and the
        chosen run (its failed step's error, its timeline)."""
        name = self.logs.value
        self.open_button.disabled = name is None
        if name is None:
            self._shown = self._runs = None
            for part in (self.runs, self.error, self.metrics):
                part.value = ""
            self.timeline.layout.display = "none"
            return None
        same_log = self._shown is not None and self._shown[0] == name
        self._shown = self._key(name)
        runs = self.fleet.runs(log=name)
        self._runs = runs
        newest = runs.iloc[::-1].head(NEWEST_RUNS)
        table = newest[["run", "workflow", "status", "started", "duration", "steps_run",
                        "steps_replayed", "error"]].copy()  # fmt: skip
        table["started"] = table["started"].map(_when)
        table["duration"] = table["duration"].map(
            lambda d: "—" if pd.isna(d) else f"{d.total_seconds():.1f} s"
        )
        table["error"] = table["error"].map(lambda e: _one_line(e, 120) if e else "")
        more = f" (the newest {NEWEST_RUNS} of {len(runs)})" if len(runs) > NEWEST_RUNS else ""
        self.runs.value = f"<h4>Runs of {html.escape(name)}{more}</h4>" + table.to_html(
            index=False, classes="durable-fleet-runs", na_rep=""
        )
        options = [("all runs", None)] + [
            (f"run {r} · {wf} · {st}", int(r))
            for r, wf, st in zip(newest["run"], newest["workflow"], newest["status"],
                                 strict=True)
        ]  # fmt: skip
        chosen = self.run_pick.value if same_log else None  # another log: all its runs
        if list(self.run_pick.options) != options or chosen != self.run_pick.value:
            self._quiet = True
            try:
                self.run_pick.options = options
                self.run_pick.value = chosen if chosen in dict(options).values() else None
            finally:
                self._quiet = False
        self.metrics.value = self._running_metrics(name, runs)
        return self.show_run()

    def _running_metrics(self, name: str, runs: pd.DataFrame) -> str:
        """The newest checkpoint of each call of the log's running runs, with its metrics."""
        running = runs.loc[runs["status"] == "running", "run"]
        if running.empty:
            return ""
        found = self.fleet.checkpoints(log=name)
        found = found[found["run"].isin(running)]
        if found.empty:
            return ""
        newest = found.groupby(["run", "step", "args", "attempt"], sort=False).tail(1)
        shown = newest.drop(columns=["log", "workflow", "size", "kept"])
        shown = shown.assign(time=shown["time"].map(_when))
        return "<h4>Checkpoints of running calls</h4>" + shown.to_html(
            index=False, classes="durable-fleet-checkpoints", na_rep=""
        )

    @_one_at_a_time
    def show_run(self) -> str | None:
        """Show the chosen run's failed step and its error, and the timeline of that run (of
        every run if none is chosen)."""
        name, run, runs = self.logs.value, self.run_pick.value, self._runs
        if name is None or runs is None:
            return None
        row = runs[runs["run"] == run] if run is not None else runs.iloc[0:0]
        workflow = str(row["workflow"].iloc[0]) if len(row) else None
        error = ""
        if len(row) and str(row["status"].iloc[0]) == "failed":
            failed = self.fleet.steps(workflow, log=name, status="failed")
            failed = failed[failed["run"] == run]
            if len(failed):
                last = failed.iloc[-1]
                error = (f"run {run}: step {last['step']}({last['args']}) failed\n"
                         f"{last['error_type']}: {last['error_message']}")  # fmt: skip
            else:  # it failed outside its steps
                error = f"run {run} failed\n{row['error'].iloc[0]}"
        style = "white-space:pre-wrap;color:#c62828"
        self.error.value = error and (
            f'<pre class="durable-fleet-error" style="{style}">{html.escape(error[:4000])}</pre>'
        )
        if runs.empty:
            self.timeline.layout.display = "none"
            return None
        figure = self.fleet.timeline(name, workflow, run)
        png = io.BytesIO()
        figure.savefig(png, format="png", dpi=80)
        self.timeline.value = png.getvalue()
        self.timeline.layout.display = ""
        return None

    @_one_at_a_time
    def open_here(self) -> str | None:
        """Make the chosen log the current log (``Fleet.open``): the next cell replays it."""
        name = self.logs.value
        if name is None:
            return "choose a log first"
        path = self.fleet.open(name)
        return f"{name} is the current log now ({path}): run its workflow and it replays"
