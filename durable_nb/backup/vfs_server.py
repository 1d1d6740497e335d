"""The process that reads replicas in place: run by ``inplace`` as a script, it loads
Litestream's VFS into apsw's SQLite and answers requests on stdin, each a length-prefixed
pickle, on stdout, many at once (a pool of threads, one query at a time per replica).

It is a process of its own because the VFS (Go code) must not live in a notebook kernel: it
reads the environment as it was when its process started (AWS settings a notebook set later
would be unseen), once loaded it makes apsw's other connections in the process fail, and a
crash in it would take the kernel down. It imports nothing of durable_nb.

Requests (each with an id, echoed in its answer):
``open(uri, as_of)`` -> (handle, application_id, user_version), where ``uri`` names a
database ``file:NAME.db`` of its own (the VFS's log lines name it);
``query(handle, sql, params)`` -> rows; ``serialize(handle)`` -> bytes; ``close(handle)``.
An answer is ``(id, True, value)`` or ``(id, False, (kind, message))``.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import pickle
import re
import shutil
import struct
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, BinaryIO
from urllib.parse import quote

_HEADER = struct.Struct(">I")


def read_message(stream: BinaryIO) -> Any:
    """One length-prefixed pickle from ``stream``; None at its end."""
    header = stream.read(_HEADER.size)
    if len(header) < _HEADER.size:
        return None
    (size,) = _HEADER.unpack(header)
    return pickle.loads(stream.read(size))


def write_message(stream: BinaryIO, message: Any) -> None:
    """``message`` as a length-prefixed pickle (the caller holds the stream's lock)."""
    data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    stream.write(_HEADER.pack(len(data)) + data)
    stream.flush()


class _Replicas:
    def __init__(self, scratch: str) -> None:
        import apsw
        import litestream_vfs

        self.apsw = apsw
        self.anchor = apsw.Connection(":memory:")
        self.anchor.enable_load_extension(True)
        self.anchor.load_extension(os.path.splitext(litestream_vfs.loadable_path())[0])
        self.open: dict[int, tuple[Any, threading.Lock]] = {}
        self.handles = itertools.count(1)
        # litestream-vfs 0.5.17: an open that fails closes the file with id 0, the first
        # one opened in the process, whose connection then fails ("vfs file not found:
        # id=0"). So the first file is one never read: a new, empty, writable database whose
        # replica is a folder of this process's own (opening it waits for nothing).
        folder = os.path.join(scratch, "first")
        self.sacrifice = apsw.Connection(
            "file:first.db?vfs=litestream&write_enabled=true&poll_interval=24h&replica_url="
            + quote(f"file://{folder}", safe=""),
            flags=apsw.SQLITE_OPEN_READWRITE | apsw.SQLITE_OPEN_CREATE | apsw.SQLITE_OPEN_URI,
        )

    def handle(self, request: tuple[Any, ...]) -> Any:
        kind, *args = request
        if kind == "open":
            uri, as_of = args
            apsw = self.apsw
            conn = apsw.Connection(uri, flags=apsw.SQLITE_OPEN_READONLY | apsw.SQLITE_OPEN_URI)
            try:
                if as_of is not None:
                    conn.execute("SELECT litestream_set_time(?)", (as_of,)).fetchall()
                app_id, version = conn.execute(
                    "SELECT (SELECT application_id FROM pragma_application_id), "
                    "(SELECT user_version FROM pragma_user_version)"
                ).fetchone()
            except BaseException:
                conn.close()
                raise
            number = next(self.handles)
            self.open[number] = (conn, threading.Lock())
            return number, app_id, version
        conn, lock = self.open[args[0]]
        with lock:
            if kind == "query":
                return conn.execute(args[1], args[2]).fetchall()
            if kind == "serialize":
                return conn.serialize("main")
            if kind == "close":
                del self.open[args[0]]
                conn.close()
                return None
        raise ValueError(f"unknown request {kind!r}")


def _kind(exc: BaseException) -> str:
    text = str(exc)
    if "not available" in text:
        return "nothing_then"  # litestream_set_time before the replica's first transaction
    if "no such table" in text:
        return "no_table"
    return type(exc).__name__


_LOGGED = re.compile(r'name=(\S+)\.db .*?error=("(?:[^"\\]|\\.)*"|\S+)')


def _capture_logs(errors: dict[str, str]) -> None:
    """The VFS logs to the process's stdout and stderr: both go to a pipe read here, and
    the newest error of each database name is kept (it says what an open's failure was)."""
    read_end, write_end = os.pipe()
    os.dup2(write_end, 1)
    os.dup2(write_end, 2)

    def read() -> None:
        with os.fdopen(read_end, "r", errors="replace") as lines:
            for line in lines:
                if found := _LOGGED.search(line):
                    name, text = found.groups()
                    errors[name] = text[1:-1].replace('\\"', '"') if text[0] == '"' else text

    threading.Thread(target=read, name="vfs log", daemon=True).start()


def _message(exc: BaseException, name: str | None, errors: dict[str, str]) -> str:
    """What went wrong: the VFS's own words if it logged them (SQLite's are vague)."""
    if name is not None:
        for _ in range(20):  # the log line is written before the failure returns
            if name in errors:
                return errors.pop(name)
            time.sleep(0.005)
    return str(exc).split("\n")[0] or type(exc).__name__


def main() -> int:
    """Serve requests until stdin ends."""
    stdin = sys.stdin.buffer
    stdout = os.fdopen(os.dup(1), "wb")  # the answers; fd 1 itself is for the VFS's logs
    errors: dict[str, str] = {}
    _capture_logs(errors)
    scratch = sys.argv[1]  # this process's own folder (TMPDIR too: the VFS's buffers)
    try:
        with contextlib.suppress(BrokenPipeError):  # (the process that asked is gone)
            _serve(stdin, stdout, errors, scratch)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    os._exit(0)  # at once: an open stuck waiting for a replica must not keep the process


def _serve(stdin: BinaryIO, stdout: BinaryIO, errors: dict[str, str], scratch: str) -> None:
    lock = threading.Lock()
    try:
        replicas = _Replicas(scratch)
    except Exception as exc:  # (ImportError, apsw.Error): the VFS cannot load here
        write_message(stdout, (0, False, ("unavailable", str(exc).split("\n")[0])))
        return
    write_message(stdout, (0, True, "ready"))

    def answer(rid: int, request: tuple[Any, ...]) -> None:
        try:
            message = (rid, True, replicas.handle(request))
        except Exception as exc:
            name = request[1].partition("?")[0][5:-3] if request[0] == "open" else None
            message = (rid, False, (_kind(exc), _message(exc, name, errors)))
        with lock, contextlib.suppress(BrokenPipeError):
            write_message(stdout, message)

    pool = ThreadPoolExecutor(max_workers=64)
    while (message := read_message(stdin)) is not None:
        rid, request = message
        pool.submit(answer, rid, request)


if __name__ == "__main__":
    sys.exit(main())
