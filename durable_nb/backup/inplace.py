"""Logs read where they are replicated: Litestream's VFS opens a replica read-only and
fetches its pages on demand, so the views read it without restoring it and write nothing to
disk. An open replica shows the transactions its replica had when it was opened (it does
not poll: ``POLL``; a ``Fleet`` opens again those that moved), and one opened ``as_of`` a
moment shows the log as it was then (``litestream_set_time``).

The VFS runs in a process of its own (``vfs_server``), started with this process's AWS
settings as they are now (another one when they change), and the views' queries go to it:
each answered with all its rows, several replicas at once.
"""

from __future__ import annotations

import atexit
import contextlib
import itertools
import numbers
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable
from concurrent.futures import Future, InvalidStateError
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote

from ..errors import LogFileError, ReplicationError, SchemaTooNewError
from ..log.connection import migrated_image
from ..log.schema import APPLICATION_ID, SCHEMA_VERSION
from ..log.store import Store
from .replica import Replica, child_environment
from .vfs_server import read_message, write_message

__all__ = ["NothingThen", "ReplicaLog", "moment", "read_once", "start", "unavailable"]

T = TypeVar("T")

_SERVER = str(Path(__file__).with_name("vfs_server.py"))
TIMEOUT = 60.0
"""Seconds to wait for the VFS process to load, and for an open's answer (a query's: ten
times that). An open waits for a replica that is not there (one deleted since the root was
listed) forever: past this, the process is stopped, that replica is named as unreadable, and
what the process served is opened again in another."""
POLL = "24h"
"""How often an open replica asks its object store for new transactions by itself: rarely.
Each poll is a request per replica (100 replicas polled each second saturate a server and
bill a million requests a day); instead a view compares the root's one listing with what
each replica has and opens again only those that changed (``Fleet``)."""
_SETTINGS = ("PYTHONPATH",)  # besides the AWS ones: where this Python finds apsw and the VFS


class _Server:
    """The VFS process, and the answers to the requests sent to it (by id)."""

    def __init__(self, environment: dict[str, str]) -> None:
        self.environment = environment
        self.scratch = tempfile.mkdtemp(prefix="durable-nb-vfs-")
        self.proc = subprocess.Popen(
            [sys.executable, _SERVER, self.scratch], stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
            env={**environment, "TMPDIR": self.scratch},
        )  # fmt: skip
        self._ids = itertools.count(1)
        self._ready: Future[Any] = Future()  # the server's first word: loaded, or why not
        self._waiting: dict[int, Future[Any]] = {0: self._ready}
        self._send = threading.Lock()
        self._registry = threading.Lock()  # _waiting and stopped, together
        self.stopped: str | None = None
        self.retired = False  # the AWS settings changed: no new opens here
        self.handles = 0  # replicas open here
        self._counting = threading.Lock()
        threading.Thread(target=self._answers, name="durable-nb vfs answers", daemon=True).start()

    def _answers(self) -> None:
        assert self.proc.stdout is not None
        while (message := read_message(self.proc.stdout)) is not None:
            rid, ok, value = message
            with self._registry:
                future = self._waiting.pop(rid, None)
            if future is not None:
                _settle(future, (ok, value))
        self.proc.stdout.close()
        code = self.proc.wait()
        with self._registry:
            self.stopped = (
                self.stopped or f"the process reading replicas in place stopped (exit {code})"
            )
            left, self._waiting = list(self._waiting.values()), {}
        for future in left:
            _settle(future, (False, ("stopped", self.stopped)))
        shutil.rmtree(self.scratch, ignore_errors=True)

    def close(self, *, kill: str | None = None) -> None:
        """End the process: its stdin closed, it exits (``kill``: at once, for this reason)."""
        if kill:
            with self._registry:  # first: no request goes to it from now on
                self.stopped = self.stopped or f"the process reading replicas in place was {kill}"
        with self._send:
            if self.proc.stdin is not None and not self.proc.stdin.closed:
                with contextlib.suppress(OSError):
                    self.proc.stdin.close()
        try:
            self.proc.wait(timeout=0 if kill else 5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def ready(self) -> str | None:
        """None once the VFS is loaded; else why it cannot be."""
        try:
            ok, value = self._ready.result(timeout=TIMEOUT)
        except TimeoutError:
            _settle(self._ready, (False, ("unavailable", f"it did not load in {TIMEOUT:.0f} s")))
            self.close(kill="stopped (it did not load)")
            ok, value = self._ready.result()
        return None if ok else value[1]

    def cannot_load(self) -> bool:
        """Whether it said the VFS cannot load here (not: it stopped, or was stopped)."""
        if not self._ready.done():
            return False
        ok, value = self._ready.result()
        return not ok and value[0] == "unavailable"

    @property
    def usable(self) -> bool:
        """Running, loaded, and the one new opens go to."""
        return not (self.stopped or self.retired)

    def call(self, *request: Any) -> Any:
        """Send ``request`` and wait for its answer; a failure as (kind, message) raised."""
        rid = next(self._ids)
        future: Future[Any] = Future()
        with self._registry:
            if self.stopped:
                raise _Failed("stopped", self.stopped)
            self._waiting[rid] = future
        try:
            with self._send:
                assert self.proc.stdin is not None
                write_message(self.proc.stdin, (rid, request))
        except (OSError, ValueError):  # (ValueError: its stdin closed meanwhile)
            self._waiting.pop(rid, None)
            raise _Failed("stopped", "the process reading replicas in place stopped") from None
        opening = request[0] == "open"
        try:
            ok, value = future.result(timeout=TIMEOUT if opening else 10 * TIMEOUT)
        except TimeoutError:
            with self._registry:
                self._waiting.pop(rid, None)
            if not opening:  # a long query (a whole old-schema log from S3): it alone fails
                raise _Failed("timeout", f"no answer in {10 * TIMEOUT:.0f} s") from None
            # an open waiting for a replica that is not there (it never gives up): stop the
            # process; the fleet opens what it served again, in another
            self.close(kill="stopped (an open of a replica that is not there hung)")
            raise _Failed(
                "timeout", f"no answer in {TIMEOUT:.0f} s (was it deleted meanwhile?)"
            ) from None
        if not ok:
            raise _Failed(*value)
        return value

    def count(self, change: int) -> None:
        """A replica was opened here (+1) or closed (-1); a retired process ends with its
        last one."""
        with self._counting:
            self.handles += change
            last = self.retired and self.handles <= 0
        if last:
            self.close()


def _settle(future: Future[Any], answer: tuple[bool, Any]) -> None:
    """``answer`` as the future's result, unless it has one (a timeout and the process's
    end can both settle it)."""
    with contextlib.suppress(InvalidStateError):
        future.set_result(answer)


class _Failed(Exception):
    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


_READABLE = re.compile(r"[A-Za-z0-9._~/#%+=,@-]*")  # what the VFS finds a replica at
_names = itertools.count(1)  # a database name per open: the VFS's log lines name it
_starting = threading.Lock()
_servers: list[_Server] = []  # the newest serves; older ones end with their last replica


def _server() -> _Server:
    """The VFS process for the AWS settings as they are now (started if needed: again if it
    ended, unless because the VFS cannot load here)."""
    environment = child_environment()
    environment |= {key: os.environ[key] for key in _SETTINGS if key in os.environ}
    with _starting:
        newest = _servers[-1] if _servers else None
        if newest is not None and newest.environment != environment:
            newest.retired = True  # its replicas are opened again on the new one
            if newest.handles <= 0:
                newest.close()
            newest = None
        if newest is None or (not newest.usable and not newest.cannot_load()):
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
    """A time (datetime, pandas Timestamp, ISO 8601 text, Unix seconds, ``"now"``; UTC
    unless it says otherwise) as the VFS takes it: ``2026-12-07T10:00:00.000000Z``."""
    import pandas as pd

    try:
        if isinstance(as_of, numbers.Real) and not isinstance(as_of, bool):
            when = pd.Timestamp(float(as_of), unit="s", tz="UTC")  # (numpy integers too)
        elif isinstance(as_of, str) and as_of.strip().lower() in ("now", "today"):
            when = pd.Timestamp.now(tz="UTC")  # (pandas reads "now" as local wall time)
        else:
            when = pd.Timestamp(as_of)
    except (ValueError, TypeError, OverflowError):
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
            self.server.count(-1)


class _Rows:
    def __init__(self, rows: list[tuple[Any, ...]]) -> None:
        self._rows = rows

    def fetchall(self) -> list[tuple[Any, ...]]:
        return self._rows

    def fetchone(self) -> tuple[Any, ...] | None:
        return self._rows[0] if self._rows else None


def _failed(url: str, exc: _Failed) -> ReplicationError:
    return ReplicationError(
        f"cannot read the replica {url} in place: {exc}", url=url, kind=exc.kind
    )


class NothingThen(ReplicationError):
    """A replica opened ``as_of`` a moment before its first transaction."""


class ReplicaLog:
    """One replica opened in place, read-only, as a ``Store`` (``.store``) for the views;
    ``as_of``: the log as it was at that moment. It shows the transactions its replica had
    when it was opened (it does not poll: ``POLL``); open it again to see newer ones.

    Kept by a ``Fleet`` and read from several threads: ``use()`` / ``done()`` around each
    read, and ``retire()`` instead of ``close()``, so that it closes when its last read ends."""

    def __init__(self, replica: Replica, *, as_of: Any = None) -> None:
        self.url = replica.url
        self.as_of = None if as_of is None else moment(as_of)
        if not _READABLE.fullmatch(replica.path):
            raise ReplicationError(
                f"cannot read {self.url} in place: Litestream's VFS cannot open a replica whose "
                "path has spaces, letters beyond ASCII or '?' in it",
                url=self.url,
            )
        self._users = 0
        self._retired = False
        self._using = threading.Lock()
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
        server.count(+1)
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
        """Whether the process that reads it still runs, and is the one that serves."""
        return self._conn.server.usable

    def use(self) -> bool:
        """One more read of it begins (False if it is retired: open it again)."""
        with self._using:
            if self._retired:
                return False
            self._users += 1
            return True

    def done(self) -> None:
        """A read of it ended (a retired replica closes with its last)."""
        with self._using:
            self._users -= 1
            last = self._retired and self._users == 0
        if last:
            self.close()

    def retire(self) -> None:
        """No new reads; closed now, or when the reads under way end."""
        with self._using:
            self._retired = True
            idle = self._users == 0
        if idle:
            self.close()

    def txid(self) -> int:
        """The newest transaction this connection has of the replica."""
        (text,) = self._conn.execute("SELECT litestream_txid()").fetchall()[0]
        return int(text, 16)

    def close(self) -> None:
        """Close its connection."""
        self.store.close()
        self._conn.close()


def read_once(replica: Replica, read: Callable[[Store], T], *, as_of: Any = None) -> T:
    """``read`` of ``replica`` opened in place for it alone (closed after): once more, in a
    new process, if the process serving it was stopped meanwhile (an open in it hung)."""
    for attempt in (1, 2):
        try:
            reader = ReplicaLog(replica, as_of=as_of)
            try:
                return read(reader.store)
            finally:
                reader.close()
        except ReplicationError as exc:
            if attempt == 2 or getattr(exc, "kind", None) != "stopped":
                raise
    raise AssertionError("unreachable")
