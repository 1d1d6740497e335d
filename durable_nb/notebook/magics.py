"""IPython integration: the ``%%durable`` cell and the ``%durable`` line magic.

A ``%%durable`` cell is not run by a cell magic (a magic that calls ``run_cell`` breaks
top-level ``await`` in ipykernel and hides failures from nbclient). Instead an input
transformer replaces the ``%%durable`` line with a marker call, and an AST transformer wraps
the cell's statements in ``with __durable_nb_cell__(...)`` (see ``cells.rewrite``): the shell
then runs it like any cell, so ``await`` works, an exception fails the cell, and tracebacks
show the user's lines. ``DurableCell`` is that context manager: it decides skip or run,
tees the cell's outputs, and delegates the rest to the engine.
"""

from __future__ import annotations

import argparse
import io
import json
import linecache
import re
import sys
from pathlib import Path
from typing import Any

from IPython.core.error import UsageError
from IPython.core.magic import Magics, cell_magic, line_magic, magics_class
from IPython.core.magic_arguments import argument, magic_arguments, parse_argstring

from ..errors import DurableError
from ..log import current_log
from ..log.connection import no_folder
from ..log.location import LogLocation, check_name, is_database_url, locate_log
from ..log.trust import trust
from ..replay import capture
from ..replay.accept import accept
from ..replay.capture import Stream, budget
from ..replay.digests import source_digest
from ..replay.workflow import workflow
from . import cells, cellstate

__all__ = ["DurableCell", "DurableMagics", "load", "unload"]

_HEADER = re.compile(r"^\s*%%durable(?![\w?])(.*)$")
_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.:\-]*$")
_WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
_PARAMETERS = "# Parameters\n"  # first line of the cell papermill injects (-p NAME VALUE)
_COMMANDS = [
    "info", "open", "forget", "accept", "gc", "log", "experiments", "timeline", "replicate",
    "replication", "restore", "fleet", "trust",
]  # fmt: skip


def _split_header(lines: list[str]) -> list[str]:
    """Input transformer: turn a ``%%durable ARGS`` first line into the marker call."""
    if not lines:
        return lines
    match = _HEADER.match(lines[0].rstrip("\n"))
    if match is None:
        return lines
    body = lines[1:]
    code = [line.rstrip() for line in body if line.strip()]
    quiet = bool(code) and code[-1].endswith(";")
    args = match.group(1).strip()
    marker = f"{cells.MARKER}({args!r}, {source_digest(''.join(body))!r}, {quiet})\n"
    return [marker, *body]


class _Rewriter:
    """AST transformer (IPython's ``ast_transformers`` protocol) for durable cells."""

    def visit(self, node: Any) -> Any:
        return cells.rewrite(node)


def _size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000  # type: ignore[assignment]
    return f"{n} B"


def _unquote(arg: str) -> str:
    """``'/tmp/with space.db'`` -> ``/tmp/with space.db`` (IPython keeps the quotes)."""
    if len(arg) >= 2 and arg[0] == arg[-1] and arg[0] in "'\"":
        return arg[1:-1]
    return arg


def _duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def _count(n: int, noun: str) -> str:
    """``1 variable``, ``2 variables``."""
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def _show_path(path: Path | str) -> str:
    if not isinstance(path, Path):  # a PostgreSQL log's URL, its blobs table
        return path
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


class _Replayed:
    """A stored rich output, shown again through the display hook."""

    def __init__(self, data: dict[str, Any], metadata: dict[str, Any]) -> None:
        self.data, self.metadata = data, metadata

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None) -> Any:
        return self.data, self.metadata

    def __repr__(self) -> str:
        return str(self.data.get("text/plain", "<replayed output>"))


class _Recorder(Stream):
    """The cell's ``sys.stdout`` / ``sys.stderr``: passes writes on and records them."""

    def __init__(self, target: Any, record: Any) -> None:
        super().__init__(target)
        self._record = record

    def write(self, text: str) -> int:
        self._record(text)
        return self.target.write(text)


class _Outputs:
    """Records what a cell prints and displays, while letting it through live."""

    def __init__(self, shell: Any) -> None:
        self.shell = shell
        self.items: list[tuple[str, Any, Any]] = []
        self.paused = False  # a terminal display hook prints Out[n]: already kept as result

    def _stream(self, name: str) -> Any:
        def record(text: str) -> None:
            if self.paused:
                return
            last = self.items[-1] if self.items else None
            if last is not None and last[0] == "stream" and last[1] == name:
                last[2].append(text)  # pieces, joined once when saved: linear, not quadratic
            else:
                self.items.append(("stream", name, [text]))

        return record

    def saved(self) -> list[tuple[str, Any, Any]]:
        """The outputs to keep: streams joined, at most ``capture.KEPT`` characters in all."""
        texts = iter(budget(["".join(b) for kind, _, b in self.items if kind == "stream"]))
        return [
            (kind, a, next(texts)) if kind == "stream" else (kind, a, b)
            for kind, a, b in self.items
        ]

    def start(self) -> None:
        self._streams = sys.stdout, sys.stderr
        sys.stdout = _Recorder(sys.stdout, self._stream("stdout"))
        sys.stderr = _Recorder(sys.stderr, self._stream("stderr"))
        pub = self.shell.display_pub
        self._had_own_publish = "publish" in vars(pub)
        original = pub.publish

        def publish(data: dict[str, Any], metadata: Any = None, *args: Any, **kw: Any) -> Any:
            if not kw.get("update"):
                kept = {k: v for k, v in data.items() if k != _WIDGET_VIEW}
                self.items.append(("display", kept, metadata or {}))
            return original(data, metadata, *args, **kw)

        self._original = original
        pub.publish = publish

    def stop(self) -> None:
        sys.stdout, sys.stderr = self._streams
        pub = self.shell.display_pub
        if self._had_own_publish:
            pub.publish = self._original
        else:
            del pub.publish

    def result(self, value: Any) -> None:
        data, metadata = self.shell.display_formatter.format(value)
        self.items.append(("result", data, metadata))

    def replay(self, items: list[tuple[str, Any, Any]]) -> None:
        """Show stored outputs again, in order, each line of text marked ``[replayed]``."""
        for kind, a, b in items:
            if kind == "stream":
                (sys.stdout if a == "stdout" else sys.stderr).write(capture.marked(b))
            elif kind == "display":
                self.shell.display_pub.publish(a, b)
            elif kind == "result":
                self.shell.displayhook(_Replayed(a, b))


def _restore_header(filename: str, header: str) -> None:
    """Show ``%%durable ...`` (not the marker call) as line 1 of the cell in tracebacks."""
    entry = linecache.cache.get(filename)
    if entry and entry[2] and entry[2][0].startswith(cells.MARKER):
        lines = [header + "\n", *entry[2][1:]]
        linecache.cache[filename] = (entry[0], entry[1], lines, entry[3])


def _flush_inline_figures() -> None:
    """Show pending inline matplotlib figures now, so they are part of the cell's output."""
    if "matplotlib_inline.backend_inline" in sys.modules:
        from matplotlib_inline.backend_inline import flush_figures

        flush_figures()


class DurableCell:
    """The context manager a rewritten ``%%durable`` cell runs in."""

    def __init__(
        self,
        ext: Extension,
        args: str,
        digest: str,
        quiet: bool = False,
        *,
        reads: tuple[Any, ...] = (),
    ) -> None:
        self.ext = ext
        self.header = f"%%durable {args}".rstrip()
        self.opts = ext.parse_cell_args(args)
        self.digest = digest  # of its text: names the workflow when the cell has no NAME
        self.reads = cells.CellReads(*reads)
        self.execute = True
        self.name = ext.workflow_name(self.opts.name, digest)
        self._outputs = _Outputs(ext.shell)
        self._flow: workflow | None = None
        self._guard: cellstate.NamespaceGuard | None = None  # while planning
        self._before: dict[str, Any] = {}
        self._not_skipped = ""  # why an unchanged-looking cell runs, said in its summary

    @staticmethod
    def _cell_filename() -> str:
        """The cell's code name: the first frame outside this module."""
        frame = sys._getframe(1)
        while frame.f_code.co_filename == __file__:
            frame = frame.f_back  # type: ignore[assignment]
        return frame.f_code.co_filename

    def show(self, value: Any) -> None:
        """Display the cell's last expression (as the shell would) and record it."""
        if value is not None and self._guard is None:
            self._outputs.result(value)
            self._outputs.paused = True
            try:
                self.ext.shell.displayhook(value)
            finally:
                self._outputs.paused = False

    def _skip(self, store: Any, inputs: cellstate.CellInputs) -> bool:
        """Restore an unchanged cell's changes and outputs; False if it must run."""
        skip = cellstate.skippable(store, self.name, self.reads.digest, inputs)
        if skip.reason:
            self._not_skipped = f"; not skipped: {skip.reason}"
        if skip.run is None or skip.cell is None:
            return False
        try:
            names = cellstate.restore(store, skip, self.ext.shell.user_ns)
        except Exception as exc:  # a lost or damaged blob, say: run the cell instead
            print(f"{self.name}: cannot restore the saved cell ({exc}); running it")
            return False
        if isinstance(names, str):  # a step its last run used would not replay now
            self._not_skipped = f"; not skipped: {names}"
            return False
        self._outputs.replay(cellstate.load_outputs(skip.cell.outputs))
        store.note("cell skipped", f"unchanged since run {skip.run.id}", workflow=self.name)
        print(
            f"{self.name}: skipped, unchanged since run {skip.run.id}; "
            f"{_count(len(names), 'variable')} restored, log {_show_path(store.path)}"
        )
        return True

    def _plan(self, store: Any, inputs: cellstate.CellInputs) -> None:
        """Start a plan: the cell runs with replay only, in a namespace put back after."""
        if not self.opts.force:
            skip = cellstate.skippable(store, self.name, self.reads.digest, inputs)
            if skip.run is not None:
                print(f"plan {self.name}: the cell would be skipped (unchanged since run "
                      f"{skip.run.id}); nothing was run")  # fmt: skip
                self.execute = False
                return
        self._guard = cellstate.NamespaceGuard(self.ext.shell.user_ns, inputs.names)
        self._flow = workflow(self.name, store=store, fresh=self.opts.fresh, plan=True)
        try:
            self._flow.__enter__()
        except BaseException:
            self._guard.restore()  # the copies it put in the namespace go
            raise
        self._quiet = sys.stdout, sys.stderr
        sys.stdout = sys.stderr = io.StringIO()  # the cell's own output is not the plan

    def _end_plan(self, exc_type: Any, exc: BaseException | None, tb: Any) -> bool:
        __tracebackhide__ = True
        assert self._flow is not None and self._guard is not None
        sys.stdout, sys.stderr = self._quiet
        self._guard.restore()
        stopped = self._flow.__exit__(exc_type, exc, tb)
        run = self._flow.run
        if run is not None and run.plan_result is not None and (exc is None or stopped):
            print(run.plan_result)
        return stopped

    def __enter__(self) -> DurableCell:
        __tracebackhide__ = True
        _restore_header(self._cell_filename(), self.header)
        store = current_log.get_store(recover=not self.opts.plan)  # a plan writes nothing
        namespace = self.ext.shell.user_ns
        self.inputs = cellstate.CellInputs(namespace, self.reads)
        if self.opts.plan:
            self._plan(store, self.inputs)
            return self
        if not (self.opts.force or self.opts.fresh) and self._skip(store, self.inputs):
            self.execute = False
            return self
        self._before = dict(namespace)  # what it changes is read off the namespace after
        inputs = self.inputs
        store.remember_digest(inputs.digest, lambda: json.dumps(inputs.document.doc("cell")))
        self._flow = workflow(
            self.name, store=store, fresh=self.opts.fresh, source_digest=self.reads.digest,
            inputs_digest=inputs.digest,
        )  # fmt: skip
        self._flow.__enter__()
        self._outputs.start()
        return self

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> bool:
        __tracebackhide__ = True
        if self._flow is None:
            return False
        if self._guard is not None:
            return self._end_plan(exc_type, exc, tb)
        self._stop_outputs(exc)
        self._flow.__exit__(exc_type, exc, tb)
        return self._summary(exc)

    async def __aenter__(self) -> DurableCell:
        __tracebackhide__ = True
        return self.__enter__()

    async def __aexit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> bool:
        __tracebackhide__ = True
        if self._flow is None or self._guard is not None:
            return self.__exit__(exc_type, exc, tb)
        self._stop_outputs(exc)
        await self._flow.__aexit__(exc_type, exc, tb)  # cancels async steps still running
        return self._summary(exc)

    def _stop_outputs(self, exc: BaseException | None) -> None:
        try:
            if exc is None:
                _flush_inline_figures()
        finally:
            self._outputs.stop()

    def _summary(self, exc: BaseException | None) -> bool:
        """Save what a completed cell changed, and say what happened in one line."""
        assert self._flow is not None
        run = self._flow.run
        assert run is not None
        note = ""
        if run.status == "completed":
            namespace = self.ext.shell.user_ns
            try:
                change = cellstate.changes(namespace, self._before, self.inputs, run)
                shells = [getattr(self.ext.shell, "user_ns_hidden", {})]  # (holds ``_``)
                saved = cellstate.save_cell(run, namespace, self._before, change,
                                            self._outputs.saved(), self.inputs, shells)  # fmt: skip
            except Exception as exc:  # the cell itself completed: say it, do not fail it
                saved = f"its state could not be saved ({type(exc).__name__}: {exc})"
            if saved and saved not in self._not_skipped:  # (said once: the same reason)
                note = f"; the cell will run again next time: {saved}"
        elif exc is None:  # the code caught a Ctrl-C: what it made may be partial
            note = "; Ctrl-C arrived during the run: the cell will run again next time"
        outcome = {"completed": "", "failed": ", failed", "interrupted": ", interrupted"}
        remarks = "".join(f"; {remark}" for remark in run.remarks)
        failed = f", {len(run.failures)} failed" if run.failures else ""
        print(
            f"{self.name}: {run.steps_replayed} steps replayed, {run.steps_run} run{failed} "
            f"({_duration(run.elapsed)}{outcome.get(run.status, '')}), "
            f"log {_show_path(run.store.path)}{remarks}{self._not_skipped}{note}"
        )
        return False


class Extension:
    """State of the extension in one shell: where the log is, the current cell id."""

    def __init__(self, shell: Any) -> None:
        self.shell = shell
        self.location: LogLocation = locate_log(shell.user_ns)
        self.cell_id: str | None = None
        self.parameters: str | None = None  # digest of injected parameters (papermill)
        self.publish: tuple[Any, bool] = (None, False)  # the shell's publish, and if its own
        current_log.set_default_log_path(self.location.path)

    def store(self) -> Any:
        """The log, opened on first use."""
        return current_log.get_store()

    def workflow_name(self, name: str | None, digest: str) -> str:
        """The workflow of a ``%%durable`` cell: NAME, else the cell's id (else a digest of
        its source); in a run with injected parameters (papermill), ``@`` and a digest of
        them, so that runs with other parameters have workflows (and histories) of their
        own and the same parameters resume."""
        base = name or (f"cell-{self.cell_id}" if self.cell_id else f"cell-{digest[:10]}")
        return f"{base}@{self.parameters[:8]}" if self.parameters else base

    def pre_run_cell(self, info: Any) -> None:
        self.cell_id = getattr(info, "cell_id", None)
        raw = getattr(info, "raw_cell", "") or ""
        if raw.lstrip().startswith(_PARAMETERS):  # the cell papermill injects
            self.parameters = source_digest(raw)

    def parse_cell_args(self, line: str) -> argparse.Namespace:
        __tracebackhide__ = True
        try:
            opts = parse_argstring(DurableMagics.durable_cell, line)
        except UsageError as exc:  # e.g. unrecognized arguments: --frsh
            raise UsageError(
                f"{exc}; usage: %%durable [NAME] [--force] [--fresh] [--plan]"
            ) from None
        if opts.name is not None and not _NAME.match(opts.name):
            raise UsageError(
                f"invalid workflow name {opts.name!r}: use letters, digits and - _ . : "
                "(e.g. %%durable my-sweep)"
            )
        return opts

    def cell(self, args: str, digest: str, quiet: bool = False, **kw: Any) -> DurableCell:
        __tracebackhide__ = True
        if "reads" not in kw:
            raise DurableError(
                "this %%durable cell was not rewritten (the AST transformer is missing); "
                "run %reload_ext durable_nb and run the cell again"
            )
        return DurableCell(self, args, digest, quiet, **kw)


@magics_class
class DurableMagics(Magics):
    """``%durable`` and ``%%durable``."""

    def __init__(self, shell: Any, ext: Extension) -> None:
        super().__init__(shell)
        self.ext = ext

    @magic_arguments()
    @argument("name", nargs="?", help="workflow name (default: the cell's id)")
    @argument("--force", action="store_true", help="run even if the cell is unchanged")
    @argument("--fresh", action="store_true", help="ignore the log: every step runs again")
    @argument(
        "--plan",
        action="store_true",
        help="run nothing: say which step would run first, and why (replays the others)",
    )
    @cell_magic("durable")
    def durable_cell(self, line: str, cell: str) -> None:
        """Run the cell as a durable workflow: its @step calls are checkpointed and replayed.

        A cell that completed with the same source and the same inputs is not run again: its
        variables are restored and its output is shown again. --force runs it anyway (steps
        still replay); --fresh ignores the log; --plan runs the cell with replay only and
        stops before the first step that would run, saying which and why (the log and the
        namespace are left as they were).
        """
        return self.shell.run_cell(f"%%durable {line}\n{cell}")

    @magic_arguments()
    @argument(
        "command",
        choices=_COMMANDS,
        help="info: where the log is; open PATH: use another log; forget NAME: drop records; "
        "accept NAME: replay records although code or dependencies changed; "
        "gc: delete blob files no record uses; "
        "log [NAME]: the steps as a table; experiments [NAME] [STEP]: one row per call, "
        "its parameters and results; timeline [NAME]: the steps over time; "
        "replicate [URL]: back the log up with Litestream; replication: its state; "
        "restore [URL]: the restore panel; fleet ROOT: a live panel of the logs replicated "
        "under ROOT (open one here to replay it); trust [PATH]: sign a log from elsewhere "
        "with your key",
    )
    @argument("args", nargs="*", help="PATH, NAME or URL, as the command needs")
    @argument("--step", help="with forget or accept: only this step's records")
    @line_magic("durable")
    def durable_line(self, line: str) -> None:
        """The log: ``%durable info | open PATH | forget NAME | accept NAME | gc | log [NAME] |
        timeline [NAME] | trust [PATH]``, its backup: ``replicate [URL] | replication |
        restore [URL]``, and the logs of many: ``fleet ROOT``."""
        opts = parse_argstring(self.durable_line, line)
        opts.args = [_unquote(arg) for arg in opts.args]
        handler = getattr(self, f"_{opts.command}")
        try:
            handler(opts)
        except DurableError as exc:
            raise UsageError(str(exc)) from None

    def _info(self, opts: argparse.Namespace) -> None:
        loc = self.ext.location
        store = self.ext.store()
        print(f"log: {store.path}")
        if str(store.path) != str(loc.path):  # opened from Python (open_log, Fleet.open)
            loc = LogLocation(store.path, None, "opened from Python (open_log, Fleet.open)")
        print(f"found by: {loc.how}" + (f" ({loc.notebook})" if loc.notebook else ""))
        log, wal, blobs, files = store.sizes()
        print(f"size: log {_size(log)} (WAL {_size(wal)}), blobs {_size(blobs)} in {files} files")
        names = store.workflows()
        if not names:
            print("workflows: none yet")
        for name in names:
            runs = store.runs(name)
            print(f"workflow {name}: {len(runs)} runs, last {runs[-1].status}")

    def _name(self, opts: argparse.Namespace) -> str | None:
        if len(opts.args) > 1:
            raise UsageError(f"usage: %durable {opts.command} [NAME]")
        return opts.args[0] if opts.args else None

    def _log(self, opts: argparse.Namespace) -> None:
        from IPython.display import display

        from ..views import frames

        name = self._name(opts)
        df = frames.steps(workflow=name)
        columns = ["run", "workflow", "step", "args", "attempt", "status", "started",
                   "duration", "result_type", "result_repr", "error_type", "error_message",
                   "replayed"]  # fmt: skip
        display(df[columns].set_index("run"))

    def _experiments(self, opts: argparse.Namespace) -> None:
        from IPython.display import display

        from ..views.experiments import experiments, styled

        if len(opts.args) > 2:
            raise UsageError("usage: %durable experiments [WORKFLOW] [STEP]")
        workflow, step = (*opts.args, None, None)[:2]
        display(styled(experiments(workflow, step)))

    def _timeline(self, opts: argparse.Namespace) -> None:
        import io

        from IPython.display import Image, display

        from ..views import frames

        png = io.BytesIO()
        frames.timeline(workflow=self._name(opts)).savefig(png, format="png", dpi=100)
        display(Image(png.getvalue()))

    def _replicate(self, opts: argparse.Namespace) -> None:
        from ..backup import replication

        url = self._name(opts)
        replicator = replication.replicate(url, log=self.ext.store().path)
        pid = replicator.process.pid if replicator.process else "?"
        print(f"replicating {_show_path(replicator.log_path)} to {replicator.url} (pid {pid})")

    def _replication(self, opts: argparse.Namespace) -> None:
        from ..backup import replication

        print(replication.replication_status(log=self.ext.store().path))

    def _restore(self, opts: argparse.Namespace) -> None:
        from IPython.display import display

        from .panel import RestorePanel

        display(RestorePanel(self._name(opts), log=self.ext.store().path))

    def _fleet(self, opts: argparse.Namespace) -> None:
        from IPython.display import display

        from .fleet_panel import FleetPanel

        if len(opts.args) != 1:
            raise UsageError("usage: %durable fleet ROOT (s3://bucket/prefix/ or file:///dir/)")
        display(FleetPanel(opts.args[0]))

    def _open(self, opts: argparse.Namespace) -> None:
        if len(opts.args) != 1:
            raise UsageError("usage: %durable open PATH (or postgresql://user@host/dbname)")
        check_name(opts.args[0])  # (a URL of something else: one line, not a new folder)
        database = is_database_url(opts.args[0])  # (it says itself if it holds a log)
        existed = database or Path(opts.args[0]).expanduser().exists()
        missing = None if existed else no_folder(opts.args[0])
        if missing is not None:  # a typo in PATH is not a new history in a new folder
            raise missing
        store = current_log.open_log(opts.args[0])
        self.ext.location = LogLocation(store.path, None, "%durable open")
        if existed:
            n = len(store.workflows())
            print(f"log: {store.path} ({n} workflow{'' if n == 1 else 's'})")
        else:  # a typo in PATH would otherwise look like a history gone
            print(f"log: {store.path} (new: there was no log at this path; it is empty)")

    def _trust(self, opts: argparse.Namespace) -> None:
        if len(opts.args) > 1:
            raise UsageError("usage: %durable trust [PATH]")
        count = trust(opts.args[0] if opts.args else None)
        print(f"{count} stored values signed with your key: they replay and restore here")

    def _forget(self, opts: argparse.Namespace) -> None:
        if len(opts.args) != 1:
            raise UsageError("usage: %durable forget NAME [--step STEP]")
        name = opts.args[0]
        store = self.ext.store()
        if name not in store.workflows():
            raise UsageError(f"no workflow {name!r} in {store.path}; %durable info lists them")
        count = store.forget(name, opts.step)
        what = f"{count} records of step {opts.step}" if opts.step else f"{count} runs"
        print(f"{name}: forgot {what}; they will run again (%durable gc frees their blob files)")

    def _accept(self, opts: argparse.Namespace) -> None:
        if len(opts.args) != 1:
            raise UsageError("usage: %durable accept NAME [--step STEP]")
        name = opts.args[0]
        count = accept(name, opts.step, store=self.ext.store())
        what = f"step {opts.step}" if opts.step else "its steps"
        print(
            f"{name}: {count} records of {what} accepted for their current code and "
            f"dependencies; they replay from now on (noted in the log; %durable forget {name}"
            f"{' --step ' + opts.step if opts.step else ''} makes them run again)"
        )

    def _gc(self, opts: argparse.Namespace) -> None:
        if opts.args:
            raise UsageError("usage: %durable gc")
        store = self.ext.store()
        print(f"{store.collect_blobs()} from {_show_path(store.blobs.folder)}")


_EXTENSIONS: dict[int, Extension] = {}


def load(shell: Any) -> None:
    """Register the transformers, the magics and the error display (idempotent)."""
    if id(shell) in _EXTENSIONS:
        return
    ext = Extension(shell)
    _EXTENSIONS[id(shell)] = ext
    shell.input_transformers_cleanup.append(_split_header)
    shell.ast_transformers.append(_Rewriter())
    shell.register_magics(DurableMagics(shell, ext))
    shell.events.register("pre_run_cell", ext.pre_run_cell)
    shell.push({cells.MARKER: ext.cell}, interactive=False)
    _capture_displays(shell, ext)


def _capture_displays(shell: Any, ext: Extension) -> None:
    """Rich displays (``display()``, figures) become part of the steps that show them, and
    a replayed step's displays are shown again through the shell."""
    pub = shell.display_pub
    original = pub.publish
    ext.publish = (original, "publish" in vars(pub))

    def publish(data: dict[str, Any], metadata: Any = None, *args: Any, **kw: Any) -> Any:
        if not kw.get("update"):
            kept = {k: v for k, v in data.items() if k != _WIDGET_VIEW}
            if kept:
                capture.record_display(kept, metadata)
        return original(data, metadata, *args, **kw)

    pub.publish = publish
    capture.set_display(lambda data, metadata: shell.display_pub.publish(data, metadata))


def unload(shell: Any) -> None:
    """Undo ``load``."""
    ext = _EXTENSIONS.pop(id(shell), None)
    if ext is None:
        return
    shell.input_transformers_cleanup.remove(_split_header)
    shell.ast_transformers[:] = [t for t in shell.ast_transformers if not isinstance(t, _Rewriter)]
    shell.events.unregister("pre_run_cell", ext.pre_run_cell)
    shell.user_ns.pop(cells.MARKER, None)
    original, had_own = ext.publish
    if had_own:
        shell.display_pub.publish = original
    else:
        vars(shell.display_pub).pop("publish", None)
    capture.set_display(None)
    magics = shell.magics_manager.magics
    magics["line"].pop("durable", None)
    magics["cell"].pop("durable", None)
