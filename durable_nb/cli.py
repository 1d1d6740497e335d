"""The ``durable-nb`` command: a thin layer that turns library errors into one-line messages."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

from .errors import DurableError

__all__ = ["main"]


def _run(args: argparse.Namespace) -> int:
    from .runner import run_notebook

    if not args.notebook.endswith(".ipynb"):
        raise SystemExit(f"durable-nb run: {args.notebook} is not a notebook (.ipynb)")
    result = run_notebook(args.notebook, timeout=args.timeout, output=args.output)
    if result.error:
        print(f"durable-nb run: a cell failed: {result.error}", file=sys.stderr)
        print(f"log: {result.log} (run again to resume)", file=sys.stderr)
        return 1
    print(f"log: {result.log}")
    return 0


def _emit(df: Any, fmt: str) -> None:
    if fmt == "csv":
        df.to_csv(sys.stdout, index=False)
    elif fmt == "json":
        sys.stdout.write(df.to_json(orient="records", date_format="iso", indent=1) + "\n")
    else:
        import pandas as pd

        with pd.option_context("display.max_rows", None, "display.width", 200):
            print(df.to_string(index=False) if len(df) else "(empty)")


def _log(args: argparse.Namespace) -> int:
    from . import views

    df = views.steps(workflow=args.workflow, log=args.path)
    if args.format == "table":
        df = df[["run", "workflow", "step", "args", "attempt", "status", "started", "duration",
                 "result_type", "result_repr", "error_message", "replayed"]]  # fmt: skip
    _emit(df, args.format)
    return 0


def _runs(args: argparse.Namespace) -> int:
    from . import views

    _emit(views.runs(log=args.path), args.format)
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``durable-nb`` (every command has help)."""
    parser = argparse.ArgumentParser(
        prog="durable-nb", description="Durable notebook experiments: run, inspect, back up."
    )
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
    ):
        cmd = sub.add_parser(name, help=text, description=f"{text[0].upper()}{text[1:]}.")
        cmd.add_argument("path", help="a notebook (.ipynb) or a log file (.db)")
        if name == "log":
            cmd.add_argument("--workflow", help="only this workflow")
        cmd.add_argument("--format", choices=["table", "csv", "json"], default="table")
        cmd.set_defaults(handler=handler)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``durable-nb``."""
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except DurableError as exc:
        print(f"durable-nb {args.command}: {exc}", file=sys.stderr)
        return 2
    except FileNotFoundError as exc:
        print(f"durable-nb {args.command}: {exc.strerror}: {exc.filename}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
