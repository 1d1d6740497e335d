"""Logs read where they are replicated: Litestream's VFS opens a replica read-only and
fetches its pages on demand, so the views read it without restoring it and write nothing to
disk; an open replica follows its replica (the VFS polls for new transactions), and one
opened ``as_of`` a moment shows the log as it was then (``litestream_set_time``).

The VFS runs in a process of its own (``vfs_server``), started with this process's AWS
settings as they are now (one again when they change), and the views' queries go to it:
each answered with all its rows, several replicas at once.
"""

from __future__ import annotations

import atexit
import contextlib
import dataclasses
import functools
import inspect
import itertools
import os
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import quote

from ..errors import LogFileError, ReplicationError, SchemaTooNewError
from ..log.connection import migrated_image
from ..log.schema import APPLICATION_ID, SCHEMA_VERSION
from ..log.store import Store
from .replica import Replica, child_environment, parse_url
from .vfs_server import read_message, write_message

__all__ = ["NothingThen", "ReplicaLog", "in_place", "moment", "unavailable"]

_SERVER = str(Path(__file__).with_name("vfs_server.py"))
TIMEOUT = 120.0
"""Seconds to wait for one answer of the VFS process (an open, a query)."""
POLL = "24h"
"""How often an open replica asks its object store for new transactions by itself: rarely.
Each poll is a request per replica (100 replicas polled each second saturate a server and
bill a million requests a day); instead a view compares the root's one listing with what
each replica has and opens again only those that changed (``Fleet``)."""


class _Server:
    """The VFS process, and the answers to the requests sent to it (by id)."""

    def __init__(self, environment: dict[str, str]) -> None:
        self.environment = environment
        self.proc = subprocess.Popen(
            [sys.executable, _SERVER], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL, env=environment,
        )  # fmt: skip
        self._ids = itertools.count(1)
        self._ready: Future[Any] = Future()  # the server's first word: loaded, or why not
        self._waiting: dict[int, Future[Any]] = {0: self._ready}
        self._send = threading.Lock()
        self.stopped: str | None = None
        threading.Thread(target=self._answers, name="durable-nb vfs answers", daemon=True).start()

    def _answers(self) -> None:
        assert self.proc.stdout is not None
        while (message := read_message(self.proc.stdout)) is not None:
            rid, ok, value = message
            future = self._waiting.pop(rid, None)
            if future is not None:
                future.set_result((ok, value))
        self.proc.stdout.close()
        self.stopped = f"the process reading replicas in place stopped (exit {self.proc.wait()})"
        for future in list(self._waiting.values()):
            future.set_result((False, ("stopped", self.stopped)))
        self._waiting.clear()

    def close(self) -> None:
        """End the process (its stdin closed: it finishes what it was asked and exits)."""
        with self._send:
            if self.proc.stdin is not None and not self.proc.stdin.closed:
                with contextlib.suppress(OSError):
                    self.proc.stdin.close()
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def ready(self) -> str | None:
        """None once the VFS is loaded; else why it cannot be."""
        ok, value = self._ready.result()
        return None if ok else value[1]

    def call(self, *request: Any) -> Any:
        """Send ``request`` and wait for its answer; a failure as (kind, message) raised."""
        if self.stopped:
            raise _Failed("stopped", self.stopped)
        rid = next(self._ids)
        future: Future[Any] = Future()
        self._waiting[rid] = future
        try:
            with self._send:
                assert self.proc.stdin is not None
                write_message(self.proc.stdin, (rid, request))
        except OSError:
            self._waiting.pop(rid, None)
            raise _Failed("stopped", "the process reading replicas in place stopped") from None
        try:
            ok, value = future.result(timeout=TIMEOUT)
        except TimeoutError:
            self._waiting.pop(rid, None)
            raise _Failed("timeout", f"no answer in {TIMEOUT:.0f} s") from None
        if not ok:
            raise _Failed(*value)
        return value


class _Failed(Exception):
    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


_names = itertools.count(1)  # a database name per open: the VFS's log lines name it
_starting = threading.Lock()
_servers: list[_Server] = []  # the newest serves; older ones end with this process


def _server() -> _Server:
    """The VFS process for the AWS settings as they are now (started if needed)."""
    environment = child_environment()
    if "PYTHONPATH" in os.environ:  # where this Python finds apsw and the VFS
        environment["PYTHONPATH"] = os.environ["PYTHONPATH"]
    with _starting:
        newest = _servers[-1] if _servers else None
        if (
            newest is None
            or newest.environment != environment
            or (newest.stopped and newest.ready() is None)  # ended after loading: again
        ):
            _servers.append(_Server(environment))
        return _servers[-1]


@atexit.register
def _stop_all() -> None:
    """At exit: each VFS process ends as its requests' stream does."""
    for server in _servers:
        server.close()


def unavailable() -> str | None:
    """None if replicas can be read in place here; else why not, in words (the VFS process
    starts now, if it is not running, while the caller goes on)."""
    why = _server().ready()
    return None if why is None else f"Litestream's VFS cannot load here ({why})"


def start() -> None:
    """Start the VFS process now (it takes a few tenths of a second), without waiting."""
    _server()


def moment(as_of: Any) -> str:
    """A time (datetime, pandas Timestamp, ISO 8601 text, Unix seconds; UTC unless it says
    otherwise) as the VFS takes it: ``2026-12-07T10:00:00.000000Z``."""
    import pandas as pd

    try:
        when = (
            pd.Timestamp(as_of, unit="s") if isinstance(as_of, int | float) else pd.Timestamp(as_of)
        )
    except (ValueError, TypeError):
        when = pd.NaT
    if when is pd.NaT:
        raise ValueError(
            f"as_of={as_of!r} is not a time: give a datetime, an ISO 8601 string such as "
            "'2026-12-07T10:00Z', or Unix seconds"
        )
    when = when.tz_localize("UTC") if when.tzinfo is None else when.tz_convert("UTC")
    return when.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class _Connection:
    """A replica open in the VFS process, as the views use a connection: ``execute(sql,
    params)`` answers with all its rows at once; errors as this package's."""

    def __init__(self, server: _Server, handle: int, url: str) -> None:
        self.server = server
        self._handle = handle
        self._url = url
        self._closed = False

    def execute(self, sql: str, params: Any = ()) -> _Rows:
        try:
            rows = self.server.call("query", self._handle, sql, tuple(params) if isinstance(
                params, list) else params)  # fmt: skip
        except _Failed as exc:
            if exc.kind == "no_table":  # a log older than a view: as sqlite3 says it
                raise sqlite3.OperationalError(str(exc)) from None
            raise _failed(self._url, exc) from None
        return _Rows(rows)

    def serialize(self) -> bytes:
        try:
            return self.server.call("serialize", self._handle)
        except _Failed as exc:
            raise _failed(self._url, exc) from None

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            with contextlib.suppress(_Failed):  # (if the process ended, nothing is open)
                self.server.call("close", self._handle)


class _Rows:
    def __init__(self, rows: list[tuple[Any, ...]]) -> None:
        self._rows = rows

    def fetchall(self) -> list[tuple[Any, ...]]:
        return self._rows

    def fetchone(self) -> tuple[Any, ...] | None:
        return self._rows[0] if self._rows else None


def _failed(url: str, exc: BaseException) -> ReplicationError:
    return ReplicationError(f"cannot read the replica {url} in place: {exc}", url=url)


class NothingThen(ReplicationError):
    """A replica opened ``as_of`` a moment before its first transaction."""


class ReplicaLog:
    """One replica opened in place, read-only, as a ``Store`` (``.store``) for the views;
    kept open, it follows the replica. ``as_of``: the log as it was at that moment."""

    def __init__(self, replica: Replica, *, as_of: Any = None) -> None:
        self.url = replica.url
        self.as_of = None if as_of is None else moment(as_of)
        server = _server()
        why = server.ready()
        if why is not None:
            raise ReplicationError(f"cannot read {self.url} in place: {why}")
        uri = (
            f"file:r{next(_names)}.db?vfs=litestream&replica_url="
            + quote(replica.litestream_url(), safe="")
            + f"&poll_interval={POLL}"
        )
        try:
            handle, app_id, version = server.call("open", uri, self.as_of)
        except _Failed as exc:
            if exc.kind == "nothing_then":
                raise NothingThen(
                    f"the replica {self.url} holds nothing at or before {self.as_of} (its "
                    "log began later); pick a later as_of",
                    url=self.url,
                ) from None
            raise _failed(self.url, exc) from None
        self._conn = _Connection(server, handle, self.url)
        try:
            if app_id != APPLICATION_ID:
                raise LogFileError(f"the replica {self.url} is not a durable_nb log", url=self.url)
            if version > SCHEMA_VERSION:
                raise SchemaTooNewError(
                    f"the replica {self.url} was written by a newer durable_nb (schema "
                    f"{version}, this one knows {SCHEMA_VERSION}); upgrade durable_nb to read it",
                    url=self.url,
                    version=version,
                )
            if version < SCHEMA_VERSION:  # views read a migrated copy of it, in memory
                self.store = Store(self.url, conn=migrated_image(self._conn.serialize()))
            else:
                self.store = Store(self.url, conn=self._conn)
        except BaseException:
            self._conn.close()
            raise

    @property
    def alive(self) -> bool:
        """Whether the process that reads it still runs."""
        return self._conn.server.stopped is None

    def txid(self) -> int:
        """The newest transaction this connection has of the replica."""
        (text,) = self._conn.execute("SELECT litestream_txid()").fetchall()[0]
        return int(text, 16)

    def close(self) -> None:
        """Close its connection."""
        self.store.close()
        self._conn.close()


@contextmanager
def _opened(url: str, as_of: Any) -> Iterator[Store]:
    replica = parse_url(url)
    start()
    parent, _, name = replica.path.rpartition("/")
    if name not in {item.name for item in dataclasses.replace(replica, path=parent).listing()}:
        raise ReplicationError(  # (the VFS would wait for it to appear)
            f"nothing is replicated at {replica.url}; check the URL (durable_nb.fleet(ROOT)"
            ".logs() lists the replicas under a root)",
            url=replica.url,
        )
    reader = ReplicaLog(replica, as_of=as_of)
    try:
        yield reader.store
    finally:
        reader.close()


def _is_url(log: Any) -> bool:
    return isinstance(log, str) and "://" in log


def in_place(view: Callable[..., Any]) -> Callable[..., Any]:
    """``view`` that also reads a replica in place: ``log=`` a replica URL (``s3://…``,
    ``file:///…``), at ``as_of`` a moment if given (without restoring it)."""
    signature = inspect.signature(view)
    as_of = inspect.Parameter("as_of", inspect.Parameter.KEYWORD_ONLY, default=None)

    @functools.wraps(view)
    def reading(*args: Any, as_of: Any = None, **kwargs: Any) -> Any:
        bound = signature.bind(*args, **kwargs)
        log = bound.arguments.get("log")
        if not _is_url(log):
            if as_of is not None:
                raise ValueError(
                    "as_of= shows a replica as it was at a moment: give its URL as log= "
                    "(s3://bucket/prefix or file:///dir), or Fleet views as_of="
                )
            return view(*args, **kwargs)
        with _opened(log, as_of) as store:
            bound.arguments["log"] = store
            return view(*bound.args, **bound.kwargs)

    reading.__signature__ = signature.replace(  # type: ignore[attr-defined]
        parameters=[*signature.parameters.values(), as_of]
    )
    reading.__doc__ = (view.__doc__ or "") + (
        "\n\n    ``log`` may be a replica's URL: it is read in place (nothing restored), as it "
        "was at ``as_of`` (a time) when given."
    )
    return reading
