"""Connecting to a PostgreSQL log: its URL checked, the session set up, the log's shared
SQL translated for psycopg, and a connection that survives the server's or a proxy's
closing it (an idle timeout, a restart): a statement outside a transaction is sent again on
a new session, and the store takes its locks again there.

The shared statements are written with ``?`` and ``:name`` parameters (SQLite's);
``translate`` turns them into psycopg's ``%s`` / ``%(name)s`` outside string literals and
adds ``RETURNING id`` to an insert into a table with ids (psycopg has no ``lastrowid``). It
knows no comments, quoted identifiers, dollar quoting or ``E''`` strings: the log's SQL has
none.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Iterable
from functools import lru_cache
from typing import Any

from ..errors import LogFileError
from .schema_postgres import SCHEMA

try:
    import psycopg
    from psycopg import conninfo
except ImportError:  # pragma: no cover - the extra is not installed
    psycopg = None  # type: ignore[assignment]

__all__ = ["PgConnection", "check_url", "one_line", "translate"]

_ID_TABLES = ("runs", "steps", "notes", "checkpoint_states", "checkpoints")
_TOKENS = re.compile(r"'(?:[^']|'')*'|\?|(?<![:\w]):([A-Za-z_]\w*)|%")
_ENDS = ("ROLLBACK", "RELEASE")  # statements that end a transaction already lost
_SESSION = {  # unless the URL says otherwise: a dead server or network is noticed
    "connect_timeout": "10",
    "keepalives": "1",
    "keepalives_idle": "30",
    "keepalives_interval": "10",
    "keepalives_count": "3",
}


@lru_cache(maxsize=512)
def translate(sql: str) -> str:
    """``sql`` with psycopg's placeholders (and ``RETURNING id`` on an insert with ids)."""

    def token(match: re.Match[str]) -> str:
        text = match.group(0)
        if text.startswith("'"):
            return text.replace("%", "%%")
        if text == "?":
            return "%s"
        if text == "%":
            return "%%"
        return f"%({match.group(1)})s"

    out = _TOKENS.sub(token, sql)
    insert = re.match(r"\s*INSERT INTO (\w+)", out)
    if insert and insert.group(1) in _ID_TABLES and "RETURNING" not in out:
        out += " RETURNING id"
    return out


def check_url(url: str) -> dict[str, Any]:
    """The connection parameters of a log's URL; one line (never echoing the URL's text)
    when it is not one, or holds a password."""
    if psycopg is None:
        raise LogFileError("a PostgreSQL log needs psycopg 3: pip install 'psycopg[binary]'")
    try:
        info = conninfo.conninfo_to_dict(url)
    except psycopg.Error:
        raise LogFileError(
            "not a valid PostgreSQL URL: write it as postgresql://user@host:port/dbname"
        ) from None
    if info.get("password"):
        raise LogFileError(
            "the log's URL holds a password: remove it from the URL (and the notebook) and "
            "give it in PGPASSWORD, ~/.pgpass or a PGSERVICE entry"
        )
    return info


def one_line(exc: BaseException) -> str:
    """The first line of a driver's error, for a one-line message."""
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def _without_nul(params: Any) -> Any:
    """``params`` with NUL characters in text replaced (PostgreSQL's text cannot hold them;
    SQLite's can): U+FFFD, as a decoder marks what it could not keep."""

    def clean(value: Any) -> Any:
        return value.replace("\0", "\ufffd") if isinstance(value, str) else value

    if isinstance(params, dict):
        return {key: clean(value) for key, value in params.items()}
    return tuple(clean(value) for value in params)


if psycopg is not None:

    class _Cursor(psycopg.Cursor):  # type: ignore[misc]
        """A cursor whose ``lastrowid`` is the id an insert returned."""

        @property
        def lastrowid(self) -> int | None:
            row = self.fetchone()
            return row[0] if row else None


class PgConnection:
    """A psycopg session on a log that takes the log's shared SQL, sends a statement outside
    a transaction again on a new session when the server closed the old one, and says any
    other loss of the server in one line (``LogFileError``)."""

    def __init__(self, url: str, *, readonly: bool = False) -> None:
        self.info = info = check_url(url)  # (its parameters: no password among them)
        self.url = url
        self.readonly = readonly
        self.settings = {k: v for k, v in _SESSION.items() if k not in info}
        self.reconnected: Callable[[], None] | None = None  # the store's locks, taken again
        self._lock = threading.Lock()
        self._in_transaction = False
        self.pg = self._connect()

    def _connect(self) -> Any:
        options = f"-c search_path={SCHEMA}"
        if self.readonly:
            options += " -c default_transaction_read_only=on"
        try:
            return psycopg.connect(
                self.url, autocommit=True, options=options, cursor_factory=_Cursor,
                application_name="durable_nb", **self.settings,
            )  # fmt: skip
        except psycopg.Error as exc:
            raise LogFileError(
                f"cannot open the PostgreSQL log {self.url}: {one_line(exc)} (is the server "
                "up, and the password in PGPASSWORD or ~/.pgpass?)"
            ) from None

    def execute(self, sql: str, params: Any = None, *, again: bool = True) -> Any:
        """Run one statement of the log's SQL; its cursor (sent once more on a new session
        when ``again`` and the old one was lost)."""
        query, values = translate(sql), () if params is None else params
        pg = self.pg
        if sql.startswith(_ENDS) and self._stuck(pg):  # the transaction went with it
            self._replace(pg)
            return None
        try:
            cursor = self._send(pg, query, values)
        except psycopg.DataError as exc:
            if "NUL" not in str(exc):
                raise
            cursor = pg.execute(query, _without_nul(values))
        except psycopg.OperationalError as exc:
            stuck = not pg.broken and not self._in_transaction and self._stuck(pg)
            if stuck and again:
                self._replace(pg)  # (left mid-command by a Ctrl-C in a cursor of its own)
                return self.execute(sql, params, again=False)
            if not pg.broken:
                raise
            if sql.startswith(_ENDS):  # the server ended the transaction with the session
                self._in_transaction = False
                return None
            if self._in_transaction or sql == "COMMIT":
                self._in_transaction = False
                raise LogFileError(
                    f"the PostgreSQL log {self.url} closed the session in a transaction "
                    f"({one_line(exc)}); what it was writing is lost (it runs again)"
                ) from None
            if not again:  # (a new session lost at once)
                lost = f"lost the PostgreSQL log {self.url}: {one_line(exc)}"
                raise LogFileError(lost) from None
            self._reconnect(pg, exc)
            return self.execute(sql, params, again=False)
        if sql in ("BEGIN", "BEGIN IMMEDIATE"):
            self._in_transaction = True
        elif sql in ("COMMIT", "ROLLBACK"):
            self._in_transaction = False
        return cursor

    def _send(self, pg: Any, query: str, values: Any) -> Any:
        """``pg.execute``; a Ctrl-C that leaves the session in the middle of a command (sent,
        its answer not read: every later command would fail) replaces the session."""
        try:
            return pg.execute(query, values)
        except (KeyboardInterrupt, SystemExit):
            if self._stuck(pg):
                self._replace(pg)
            raise

    @staticmethod
    def _stuck(pg: Any) -> bool:
        """Whether ``pg`` is in the middle of a command no thread is running (psycopg's
        lock held: not another thread's command under way)."""
        with pg.lock:
            return pg.info.transaction_status == psycopg.pq.TransactionStatus.ACTIVE

    def _replace(self, stuck: Any) -> None:
        """A new session in place of one stuck mid-command; its transaction, if any, is
        rolled back by the server as the old one closes."""
        with self._lock:
            if self.pg is not stuck:
                return
            stuck.close()
            self._in_transaction = False
            self.pg = self._connect()
        if self.reconnected is not None:
            self.reconnected()

    def _reconnect(self, broken: Any, exc: BaseException) -> None:
        """A new session in place of ``broken`` (once, whichever thread comes first)."""
        with self._lock:
            if self.pg is not broken:
                return
            try:
                self.pg = self._connect()
            except LogFileError:
                raise LogFileError(
                    f"lost the PostgreSQL log {self.url}: {one_line(exc)}; it cannot be "
                    "reached now (the server down?): run again once it is back"
                ) from None
        if self.reconnected is not None:
            self.reconnected()

    def executemany(self, sql: str, seq: Iterable[Any]) -> Any:
        """Run one statement per parameter set (inside the caller's transaction)."""
        cursor = self.pg.cursor()
        cursor.executemany(translate(sql), list(seq))
        return cursor

    def binary(self) -> Any:
        """A cursor that exchanges values in binary (large values: no text escaping)."""
        return self.pg.cursor(binary=True)

    @property
    def in_transaction(self) -> bool:
        return self._in_transaction

    def close(self) -> None:
        self.pg.close()
