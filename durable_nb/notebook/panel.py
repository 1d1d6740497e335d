"""The restore panel: an ipywidgets view over the public restore API.

It only calls ``restore_points``, ``restore``, ``runs`` and ``steps``: no SQL and no
subprocess here. Slow calls run on a worker thread with the buttons disabled, so the notebook
stays responsive; errors show as one line in the panel's status, never as a traceback.
"""

from __future__ import annotations

import html
import tempfile
import threading
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import ipywidgets as w
import pandas as pd

from ..backup import restore
from ..backup.litestream import log_path, replica_url_for
from ..errors import DurableError
from ..views import frames

__all__ = ["RestorePanel", "diff_logs"]


def diff_logs(backup: str | Path, live: str | Path | None) -> pd.DataFrame:
    """Runs present only in the backup, only in the live log, or with another status."""
    theirs = frames.runs(log=backup)[["run", "workflow", "status", "steps_run"]]
    if live is None or not Path(live).exists():
        mine = theirs.iloc[0:0]
    else:
        mine = frames.runs(log=live)[["run", "workflow", "status", "steps_run"]]
    merged = theirs.merge(
        mine, on=["run", "workflow"], how="outer", suffixes=("_backup", "_local"), indicator=True
    )
    where = merged["_merge"].map(
        {"left_only": "only in backup", "right_only": "only locally", "both": "both"}
    )
    merged["difference"] = where.astype(str)
    other = (where == "both") & (
        merged["status_backup"].astype(str) != merged["status_local"].astype(str)
    )
    merged.loc[other, "difference"] = "other status"
    changed = merged[merged["difference"] != "both"]
    return changed[["run", "workflow", "difference", "status_backup", "status_local"]].reset_index(
        drop=True
    )


class RestorePanel:
    """Pick a restore point of a replica, preview it against the live log, restore it."""

    def __init__(self, url: str | None = None, *, log: str | Path | None = None) -> None:
        self.log = log_path(log)  # (one line for a PostgreSQL log: no Litestream replicas)
        self.url = w.Text(
            value=url or replica_url_for(None, self.log),
            description="Replica",
            layout=w.Layout(width="70%"),
        )
        self.refresh_button = w.Button(description="Refresh", icon="refresh")
        self.points = w.Select(
            options=[], description="Points", rows=8, layout=w.Layout(width="70%")
        )
        self.preview = w.HTML(value="")
        self.restore_button = w.Button(description="Restore", button_style="danger", disabled=True)
        self.confirm_button = w.Button(
            description="Confirm: replace the live log", button_style="danger",
            layout=w.Layout(display="none", width="auto"),
        )  # fmt: skip
        self.copy_button = w.Button(description="Restore to copy", disabled=True)
        self.progress = w.IntProgress(value=0, min=0, max=100, layout=w.Layout(width="30%"))
        self.status = w.HTML(value="")
        self._frame: pd.DataFrame | None = None
        self._busy = threading.Lock()
        self.refresh_button.on_click(lambda _: self._background("refreshing", self.refresh))
        self.points.observe(self._on_pick, names="value")
        self.restore_button.on_click(lambda _: self._ask_confirmation())
        self.confirm_button.on_click(lambda _: self._background("restoring", self.restore_live))
        self.copy_button.on_click(lambda _: self._background("restoring a copy", self.restore_copy))
        self.widget = w.VBox(
            [
                w.HTML(f"<b>Restore {html.escape(self.log.name)}</b>"),
                w.HBox([self.url, self.refresh_button]),
                self.points,
                self.preview,
                w.HBox([self.restore_button, self.confirm_button, self.copy_button]),
                w.HBox([self.progress, self.status]),
            ]
        )

    def _ipython_display_(self) -> None:
        from IPython.display import display

        display(self.widget)

    # -- running things off the main thread ----------------------------------------

    def _set_buttons(self, enabled: bool) -> None:
        chosen = self.points.value is not None
        self.refresh_button.disabled = not enabled
        self.restore_button.disabled = not (enabled and chosen)
        self.copy_button.disabled = not (enabled and chosen)
        if not enabled:
            self.confirm_button.layout.display = "none"

    def _say(self, text: str, *, error: bool = False) -> None:
        colour = "#c62828" if error else "inherit"
        self.status.value = f'<span style="color:{colour}">{html.escape(text)}</span>'

    def _background(self, doing: str, job: Callable[[], None]) -> threading.Thread | None:
        if not self._busy.acquire(blocking=False):
            self._say("busy: wait for the current operation to finish")
            return None

        def run() -> None:
            try:
                self._set_buttons(False)
                self.progress.value = 5
                self._say(f"{doing}…")
                job()
                self.progress.value = 100
            except DurableError as exc:
                self.progress.value = 0
                self._say(f"{type(exc).__name__}: {exc}", error=True)
            except Exception as exc:  # the panel must not die on an unexpected error
                self.progress.value = 0
                self._say(f"unexpected {type(exc).__name__}: {exc}", error=True)
            finally:
                self._busy.release()
                self._set_buttons(True)

        thread = threading.Thread(target=run, name=f"durable-nb {doing}", daemon=True)
        self.thread = thread
        thread.start()
        return thread

    def _step(self, message: str) -> None:
        self.progress.value = min(95, self.progress.value + 15)
        self._say(message)

    # -- actions -------------------------------------------------------------------

    def refresh(self) -> None:
        """List the replica's restore points."""
        frame = restore.restore_points(self.url.value, log=self.log)
        self._frame = frame
        self.points.options = [
            (f"{t.strftime('%Y-%m-%d %H:%M:%S.%f')[:-3]} UTC · txid {x} · {s:,} B", int(x))
            for t, x, s in zip(frame["time"], frame["txid"], frame["size"], strict=True)
        ]
        self._say(f"{len(frame)} restore points" if len(frame) else "no restore points yet")

    def _on_pick(self, change: dict[str, Any]) -> None:
        if change["new"] is not None:
            self._background("loading the preview", self.show_preview)

    def show_preview(self) -> None:
        """Restore the chosen point to a temporary copy and show its runs and the diff."""
        txid = self.points.value
        with tempfile.TemporaryDirectory(prefix="durable-nb-preview-") as folder:
            copy = Path(folder) / "preview.db"
            restore.restore(self.url.value, txid=txid, to=copy, log=self.log, progress=self._step)
            runs = frames.runs(log=copy)
            diff = diff_logs(copy, self.log)
        shown = runs[["run", "workflow", "status", "started", "steps_run", "steps_replayed"]].copy()
        shown["started"] = shown["started"].dt.strftime("%Y-%m-%d %H:%M:%S UTC")
        diff_html = (
            diff.to_html(index=False, classes="durable-diff")
            if len(diff)
            else "<p>no difference with the live log</p>"
        )
        self.preview.value = (
            f"<h4>Runs at txid {txid}</h4>"
            + shown.to_html(index=False, classes="durable-preview")
            + "<h4>Compared with the live log</h4>"
            + diff_html
        )
        self._say(f"preview of txid {txid}: {len(runs)} runs, {len(diff)} differences")

    def _ask_confirmation(self) -> None:
        self.confirm_button.layout.display = ""
        self._say("restoring replaces the live log (a dated backup is kept): confirm to go on")

    def restore_live(self) -> None:
        """Replace the live log with the chosen point (keeps a backup, reopens the store)."""
        txid = self.points.value
        path = restore.restore(self.url.value, txid=txid, log=self.log, progress=self._step)
        self._say(f"restored {path.name} to txid {txid}; the replaced file was kept as a .bak")

    def restore_copy(self) -> None:
        """Write the chosen point to ``<stem>.restored-<time>.db`` beside the live log."""
        stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
        target = self.log.with_name(f"{self.log.stem}.restored-{stamp}.db")
        path = restore.restore(
            self.url.value, txid=self.points.value, to=target, log=self.log, progress=self._step
        )
        self.restored_copy = path
        self._say(f"restored a copy to {path.name}; open it with %durable open {path} "
                  f"or durable_nb.runs(log='{path}')")  # fmt: skip
