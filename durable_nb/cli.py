"""The ``durable-nb`` command: a thin layer that turns library errors into one-line messages."""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from collections.abc import Sequence
from typing import Any

from .errors import DurableError
from .log.location import resolve_log
from .log.records import RUN_STATUSES

__all__ = ["main"]


class UsageError(Exception):
    """A command given something it cannot use (exit status 2, as for a bad option)."""


def _run(args: argparse.Namespace) -> int:
    from .notebook.runner import run_notebook

    if not args.notebook.endswith(".ipynb"):
        raise UsageError(f"{args.notebook} is not a notebook (.ipynb)")
    result = run_notebook(args.notebook, timeout=args.timeout, output=args.output)
    log = f"log: {result.log}" if result.log else "log: none (no durable cell ran)"
    if not result.error:
        print(log)
        return 0
    keep = args.output or result.interrupted  # (-o: a failed cell's traceback is kept)
    hint = "" if keep else " (-o OUT.ipynb keeps the executed notebook and traceback)"
    print(f"durable-nb run: {result.error}{hint}", file=sys.stderr)
    print(f"{log} (run again to resume)" if result.log else log, file=sys.stderr)
    return 130 if result.interrupted else 1


def _for_people(df: Any) -> Any:
    """A table's cells as a person reads them: times to the second (UTC), durations in
    seconds or milliseconds, ``-`` for nothing."""
    import pandas as pd

    shown = df.copy()
    for name in shown.columns:
        column = shown[name]
        if pd.api.types.is_datetime64_any_dtype(column):
            shown[name] = column.dt.strftime("%Y-%m-%d %H:%M:%SZ")
        elif pd.api.types.is_timedelta64_dtype(column):
            seconds = column.dt.total_seconds()
            shown[name] = [
                "-" if pd.isna(s) else f"{s:.2f} s" if s >= 1 else f"{1000 * s:.2f} ms"
                for s in seconds
            ]
    return shown.astype(object).where(shown.notna(), "-")


def _for_programs(df: Any) -> Any:
    """A table's cells for csv / json: durations as seconds (``<name>_seconds``), times as
    ISO 8601 UTC to the microsecond."""
    import pandas as pd

    out = df.copy()
    for name in df.columns:
        column = df[name]
        if pd.api.types.is_timedelta64_dtype(column):
            out[name] = column.dt.total_seconds()
            out = out.rename(columns={name: f"{name}_seconds"})
        elif pd.api.types.is_datetime64_any_dtype(column):
            out[name] = column.dt.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    return out


def _emit(df: Any, fmt: str) -> None:
    if fmt == "csv":
        _for_programs(df).to_csv(sys.stdout, index=False)
    elif fmt == "json":
        records = _for_programs(df).to_json(orient="records", indent=1)
        sys.stdout.write(records + "\n")
    else:
        import pandas as pd

        with pd.option_context("display.max_rows", None, "display.width", 200):
            print(_for_people(df).to_string(index=False) if len(df) else "(empty)")


def _log(args: argparse.Namespace) -> int:
    from .views import frames

    df = frames.steps(workflow=args.workflow, log=args.path)
    if args.format == "table":
        df = df[["run", "workflow", "step", "args", "attempt", "status", "started", "duration",
                 "result_type", "result_repr", "error_message", "replayed"]]  # fmt: skip
    df = df.rename(columns={"replayed": "times_replayed"})  # a count, not yes / no
    if args.workflow and df.empty:
        _say_workflows(args)
    _emit(df, args.format)
    return 0


def _experiments(args: argparse.Namespace) -> int:
    from .views.experiments import experiments

    df = experiments(args.workflow, args.step, log=args.path)
    if args.workflow and df.empty:
        _say_workflows(args)
    if args.format == "table":
        df = df.drop(columns=["started"])
    _emit(df, args.format)
    return 0


def _say_workflows(args: argparse.Namespace) -> None:
    """Nothing matched ``--workflow``: say which workflows the log has (on stderr)."""
    from .views import frames

    names = sorted(set(frames.runs(log=args.path)["workflow"]))
    print(f"durable-nb {args.command}: no rows for workflow {args.workflow!r}"
          f"{' and step ' + repr(args.step) if getattr(args, 'step', None) else ''}; the log's "
          f"workflows: {', '.join(names) or 'none'}", file=sys.stderr)  # fmt: skip


def _runs(args: argparse.Namespace) -> int:
    from .views import frames

    _emit(frames.runs(log=args.path), args.format)
    return 0


def _gc(args: argparse.Namespace) -> int:
    from .log.stores import open_store

    with open_store(resolve_log(args.path), create=False) as store:
        print(f"{store.collect_blobs(grace=args.grace)} from {store.blobs.folder}")
    return 0


def _sanitizer(args: argparse.Namespace) -> int:
    from pathlib import Path

    print(Path(__file__).parent / "notebook" / "nbval_sanitize.cfg")  # (pytest not needed)
    return 0


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def _replicate(args: argparse.Namespace) -> int:
    import signal
    import time

    from .backup import replication

    log = resolve_log(args.path)
    replicator = replication.replicate(args.url, log=log)
    print(f"replicating {log} to {replicator.url}; Ctrl-C stops (after a final sync)")
    signal.signal(signal.SIGTERM, _interrupt)  # a service manager stops us like Ctrl-C
    try:
        while replicator.process is not None and replicator.process.poll() is None:
            time.sleep(0.5)
        print(
            f"litestream stopped: {replicator.last_error() or 'no error logged'}", file=sys.stderr
        )
        return 1
    except KeyboardInterrupt:
        replicator.stop()
        print("replication stopped")
        return 0


def _restore_points(args: argparse.Namespace) -> int:
    from .backup import restore

    points = restore.restore_points(args.url)
    if not len(points):
        raise UsageError(
            f"no restore points at {args.url}: nothing has been replicated there; check the "
            "URL (durable-nb replicate PATH URL starts replicating a log)"
        )
    _emit(points, args.format)
    return 0


def _restore(args: argparse.Namespace) -> int:
    from pathlib import Path

    from .backup import restore
    from .backup.replica import parse_url

    target, log = args.output, None
    if (
        target is None
    ):  # the default file replica .durable/replica/<stem> belongs to .durable/<stem>.db
        replica = parse_url(args.url)
        folder = Path(replica.path)
        if replica.scheme != "file" or folder.parent.name != "replica":
            raise UsageError("give -o OUT (where to write the restored log)")
        log = folder.parent.parent / f"{folder.name}.db"
    path = restore.restore(
        args.url, timestamp=args.timestamp, txid=args.txid, to=target, log=log,
        progress=lambda message: print(message, file=sys.stderr),
    )  # fmt: skip
    print(f"restored: {path}")
    return 0


def _fleet(args: argparse.Namespace) -> int:
    from .backup.fleet import fleet
    from .backup.inplace import moment

    if args.as_of is not None:
        try:
            moment(args.as_of)
        except ValueError:
            raise UsageError(
                f"--as-of {args.as_of!r} is not a time: give an ISO 8601 time, e.g. "
                "2026-12-07T10:00Z"
            ) from None
    observed = fleet(args.root, cache=args.cache, in_place=not args.pull)
    with warnings.catch_warnings():  # (its warning says what the error below says)
        warnings.simplefilter("ignore")
        nothing = observed.logs().empty
    if nothing:
        raise UsageError(
            f"no replicated logs under {args.root}; check the URL (a fleet root is the folder "
            "logs replicate under: durable-nb replicate PATH ROOT/)"
        )
    if args.pull:
        pulled = observed.pull(progress=sys.stderr.isatty())
        counts = pulled["action"].value_counts()
        print(
            f"{len(pulled)} logs: {counts.get('pulled', 0)} pulled, "
            f"{counts.get('unchanged', 0)} unchanged, {counts.get('failed', 0)} failed",
            file=sys.stderr,
        )
    df = observed.runs(status=args.status, as_of=args.as_of)
    if args.format == "table":
        df = df.drop(columns=["pid"])
    _emit(df, args.format)
    return 0


def _seconds(text: str) -> float:
    """A number of seconds, 0 or more (for argparse)."""
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value >= 0:  # (NaN too)
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds, 0 or more")
    return value


_PATH_HELP = "a notebook (.ipynb) or a log file (.db)"
_URL_HELP = "file:///dir or s3://bucket/prefix"


def _format_option(cmd: argparse.ArgumentParser) -> None:
    cmd.add_argument(
        "--format", choices=["table", "csv", "json"], default="table",
        help="table (for people: times in UTC to the second; default), csv or json (every "
        "column, full precision)",
    )  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``durable-nb`` (every command has help)."""
    parser = argparse.ArgumentParser(
        prog="durable-nb", description="Durable notebook experiments: run, inspect, back up.",
        epilog="Exit status: 0 done; 1 a notebook's cell failed (run); 2 a command could not "
        "do what it was asked (a one-line message says why); 130 interrupted.",
    )  # fmt: skip
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    run = sub.add_parser(
        "run", help="execute a notebook in a real kernel, resuming from its log",
        description="Execute NOTEBOOK in a new kernel with its log beside it; run it again "
        "after a crash and it resumes. Exit status 1 when a cell fails.",
    )  # fmt: skip
    run.add_argument("notebook", help="the .ipynb file")
    run.add_argument("--timeout", type=float, default=None, help="seconds per cell")
    run.add_argument("-o", "--output", help="write the executed notebook here")
    run.set_defaults(handler=_run)

    for name, handler, text in (
        ("log", _log, "print the steps of a log"),
        ("runs", _runs, "print the runs of a log"),
        ("experiments", _experiments, "print one row per call: its parameters and results"),
    ):
        cmd = sub.add_parser(name, help=text, description=f"{text[0].upper()}{text[1:]}.")
        cmd.add_argument("path", help=_PATH_HELP)
        if name in ("log", "experiments"):
            cmd.add_argument("--workflow", help="only this workflow")
        if name == "experiments":
            cmd.add_argument("--step", help="only this step")
        _format_option(cmd)
        cmd.set_defaults(handler=handler)

    san = sub.add_parser(
        "nbval-sanitizer", help="print the path of durable_nb's nbval sanitizer rules",
        description="Print the path of the nbval sanitizer file shipped with durable_nb "
        "(pytest --nbval uses it by itself unless --nbval-sanitize-with names another).",
    )  # fmt: skip
    san.set_defaults(handler=_sanitizer)

    gc = sub.add_parser(
        "gc", help="delete blob files that no row of a log refers to",
        description="Delete the blob files of PATH's log that no row refers to (left by "
        "forget, or by a process killed while storing a value), once older than --grace.",
    )  # fmt: skip
    gc.add_argument("path", help=_PATH_HELP)
    gc.add_argument("--grace", type=_seconds, default=60.0, help="seconds (default 60)")
    gc.set_defaults(handler=_gc)

    rep = sub.add_parser(
        "replicate", help="replicate a log with Litestream, in the foreground",
        description="Replicate PATH's log to URL (default: a file replica beside it) until "
        "Ctrl-C, which stops after a final sync.",
    )  # fmt: skip
    rep.add_argument("path", help=_PATH_HELP)
    rep.add_argument("url", nargs="?", help=_URL_HELP)
    rep.set_defaults(handler=_replicate)

    points = sub.add_parser(
        "restore-points", help="list what a replica can restore",
        description="List the restore points of the replica at URL, newest first.",
    )  # fmt: skip
    points.add_argument("url", help=_URL_HELP)
    _format_option(points)
    points.set_defaults(handler=_restore_points)

    res = sub.add_parser(
        "restore", help="restore a log from a replica",
        description="Restore the newest point of URL (or the one at --timestamp / --txid) to "
        "OUT; without -o, a default file replica restores over its own log, keeping a backup.",
    )  # fmt: skip
    res.add_argument("url", help=_URL_HELP)
    when = res.add_mutually_exclusive_group()
    when.add_argument("--timestamp", help="ISO 8601 time, e.g. 2026-11-21T22:39:04.420Z")
    when.add_argument("--txid", type=int, help="transaction id (from restore-points)")
    res.add_argument("-o", "--output", metavar="OUT",
                     help="write the restored log here (must not exist)")  # fmt: skip
    res.set_defaults(handler=_restore)

    fl = sub.add_parser(
        "fleet", help="the runs of every log replicated under a root",
        description="Print the runs of every log replicated under ROOT (a URL ending in /), "
        "read where they are (Litestream's VFS: nothing restored); --pull reads a local cache "
        "of their copies instead, brought up to date first (only the logs that changed are "
        "downloaded).",
    )  # fmt: skip
    fl.add_argument("root", help="s3://bucket/prefix/ or file:///dir/")
    fl.add_argument(
        "--pull",
        action="store_true",
        help="pull the logs that changed into the cache, and read the copies",
    )
    fl.add_argument(
        "--as-of",
        metavar="TIME",
        help="the runs as they were at TIME (ISO 8601, e.g. 2026-12-07T10:00Z)",
    )
    fl.add_argument("--status", choices=RUN_STATUSES, help="only runs of this status")
    fl.add_argument("--cache", help="the folder of the pulled copies (default: per root, "
                    "under the user's cache folder)")  # fmt: skip
    _format_option(fl)
    fl.set_defaults(handler=_fleet)
    return parser


def _one_line(message: Warning | str, category: type[Warning], *args: Any, **kw: Any) -> str:
    return f"durable-nb: {message}\n"


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``durable-nb``."""
    args = build_parser().parse_args(argv)
    warnings.formatwarning = _one_line  # no source line under a warning in a terminal
    try:
        return args.handler(args)
    except (DurableError, UsageError) as exc:
        print(f"durable-nb {args.command}: {exc}", file=sys.stderr)
        return 2
    except FileNotFoundError as exc:
        print(f"durable-nb {args.command}: {exc.strerror}: {exc.filename}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # durable-nb log nb.ipynb | head: the reader has had enough
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # (Python flushes stdout at exit once more)
        return 141  # as a command killed by SIGPIPE


if __name__ == "__main__":
    sys.exit(main())
