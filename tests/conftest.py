"""Shared fixtures: real files in a temporary folder, real subprocesses."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import tempfile
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

import durable_nb
from durable_nb.log import current_log as current_log_module
from durable_nb.log.current_log import close_log

from .postgres import PostgresServer

ROOT = Path(__file__).resolve().parent.parent

# The user's signing key (``durable_nb.log.signing``) lives in a folder of the test session's
# own, which every kernel and process the tests start inherits: never in ~/.config.
os.environ["XDG_CONFIG_HOME"] = tempfile.mkdtemp(prefix="durable-nb-tests-config-")
os.environ.pop("DURABLE_NB_KEY", None)


@contextmanager
def current_log(path: Path) -> Iterator[Path]:
    """``path`` as the process's current log; afterwards its replication (if any) is stopped,
    the log closed and the default log what it was."""
    default = current_log_module._default_path
    durable_nb.open_log(path)
    try:
        yield path
    finally:
        durable_nb.stop_replication(log=path)
        close_log()
        current_log_module._default_path = default


@pytest.fixture
def log_path(tmp_path: Path) -> Iterator[Path]:
    """A fresh log path, made the process's current log."""
    with current_log(tmp_path / ".durable" / "test.db") as path:
        yield path


def executions(folder: Path) -> dict[int, int]:
    """How many times each step really ran: the numbers the test steps append to
    ``counter.txt`` before working, whatever the log says ({} before any has run)."""
    path = folder / "counter.txt"
    return dict(Counter(int(n) for n in path.read_text().split())) if path.exists() else {}


def integrity(path: Path) -> str:
    """PRAGMA integrity_check of a log, from a separate connection."""
    conn = sqlite3.connect(path)
    try:
        return conn.execute("PRAGMA integrity_check").fetchone()[0]
    finally:
        conn.close()


def python(
    script: str, *args: str, cwd: Path, env_extra: dict[str, str] | None = None, **kw: object
) -> subprocess.Popen[str]:
    """Start ``script`` in a new Python process with the project importable."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1", **(env_extra or {})}
    return subprocess.Popen(
        [sys.executable, "-c", script, *args],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kw,  # type: ignore[arg-type]
    )


def unprivileged_python(script: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run a script without the power to ignore file permissions (drops root's override)."""
    cmd = [sys.executable, "-c", script]
    if os.geteuid() == 0:
        cmd = ["setpriv", "--bounding-set=-dac_override,-dac_read_search", "--", *cmd]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=60)


def old_log(path: Path, version: int, step: str = "train", result: object = None) -> Path:
    """A log as a durable_nb of schema ``version`` left it: one completed run with one
    completed step ``step`` (arguments ``3``) whose value is ``result``."""
    import pickle

    from durable_nb.log.connection import _statements
    from durable_nb.log.schema import APPLICATION_ID, MIGRATIONS

    conn = sqlite3.connect(path)
    for script in MIGRATIONS[:version]:
        for statement in _statements(script):
            conn.execute(statement)
    conn.execute(f"PRAGMA user_version = {version}")
    conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
    conn.execute(
        "INSERT INTO runs (workflow, status, started_at, ended_at, owner, pid) "
        "VALUES ('w', 'completed', 1, 2, 'gone:host:1:1', 1)"
    )
    conn.execute(
        "INSERT INTO steps (run_id, workflow, scope, name, args_digest, occurrence, "
        "code_digest, attempt, status, started_at, ended_at, result_format, args_repr, result) "
        "VALUES (1, 'w', '', ?, 'a1', 0, 'c1', 1, 'completed', 1, 2, 'pickle', '3', ?)",
        (step, pickle.dumps(result)),
    )
    conn.commit()
    conn.close()
    return path


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """A real PostgreSQL server (``tests.postgres``), started the first time a test asks for it
    and stopped at the end of the session. Without Debian's postgresql package the tests that
    need it are skipped, saying how to get it; under CI (``CI=true``) that is a failure."""
    try:
        server = PostgresServer().start()
    except RuntimeError as exc:
        if "apt-get install" not in str(exc):
            raise
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(f"{exc} (.ci/run installs it)")
        pytest.skip(str(exc))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def pg_url(postgres_server: PostgresServer) -> Iterator[str]:
    """The URL of a new, empty database on ``postgres_server``, dropped after the test."""
    with postgres_server.fresh_database() as url:
        yield url


@pytest.fixture
def pg_log(pg_url: str) -> Iterator[str]:
    """A fresh PostgreSQL log (its URL), the process's current log for the test."""
    with current_log(pg_url) as url:  # type: ignore[arg-type]
        yield url  # type: ignore[misc]


@pytest.fixture(params=["sqlite", "postgresql"])
def log_target(request: pytest.FixtureRequest, tmp_path: Path) -> Path | str:
    """Where a fresh log goes, on each backend in turn: a SQLite file's path, then a
    PostgreSQL database's URL (on ``postgres_server``)."""
    if request.param == "sqlite":
        return tmp_path / ".durable" / "test.db"
    return request.getfixturevalue("pg_url")


@pytest.fixture
def any_log(log_target: Path | str) -> Iterator[Path | str]:
    """A fresh log on each backend in turn (``log_target``), the process's current log."""
    with current_log(log_target) as log:  # type: ignore[arg-type]
        yield log


def log_sql(log: Path | str) -> Any:
    """A connection of the test's own to a log of either backend, taking SQLite's SQL
    (``?`` parameters) on both: ``execute`` with ``fetchall`` / ``fetchone``; ``with conn:``
    commits (PostgreSQL: each statement commits)."""
    if isinstance(log, str):
        from durable_nb.log.connection_postgres import PgConnection

        class Connection(PgConnection):
            def __enter__(self) -> Connection:
                return self

            def __exit__(self, *exc: object) -> None:
                return None

        return Connection(log)
    return sqlite3.connect(log)
