"""A real, throw-away PostgreSQL server for tests: Debian's binaries, a temporary folder, a free
port on loopback, trust authentication (user ``durable``), stopped and removed afterwards.

PostgreSQL refuses to run as root: as root the folder is given to the ``postgres`` user and
``initdb``/``pg_ctl`` run as that user (``runuser``).
"""

from __future__ import annotations

import atexit
import glob
import os
import re
import shlex
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import psycopg

BIN_GLOB = "/usr/lib/postgresql/*/bin"
USER = "durable"  # the superuser initdb creates; trust authentication, loopback only
# Durability off: tests want speed, not a real commit (benchmarks pass fast=False).
FAST_OPTIONS = ("fsync=off", "synchronous_commit=off", "full_page_writes=off")
MAX_CONNECTIONS = 200  # a test runs 16 processes plus kernels
PORT_ATTEMPTS = 5
TIMEOUT = 120  # seconds, for initdb and for pg_ctl start/stop


def find_bin_dir() -> Path:
    """The newest ``/usr/lib/postgresql/<version>/bin`` that has ``initdb`` (highest version)."""

    def version(path: str) -> tuple[int, ...]:
        name = Path(path).parent.name
        return tuple(int(n) for n in re.findall(r"\d+", name))

    found = [p for p in glob.glob(BIN_GLOB) if os.access(Path(p) / "initdb", os.X_OK)]
    if not found:
        raise RuntimeError(
            f"PostgreSQL server not found (no {BIN_GLOB}/initdb): apt-get install -y postgresql"
        )
    return Path(max(found, key=version))


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PostgresServer:
    """One PostgreSQL server in a temporary folder, on a free port of 127.0.0.1.

    ``fast`` (the default, for tests) turns fsync, synchronous commit and full-page writes off;
    ``fast=False`` keeps PostgreSQL's defaults (benchmarks want a real commit).
    """

    def __init__(self, fast: bool = True) -> None:
        self.fast = fast
        self.folder: Path | None = None
        self.port: int | None = None
        self.bin_dir: Path | None = None

    # -- life cycle -------------------------------------------------------------------------

    def start(self) -> PostgresServer:
        """initdb a new cluster in a temporary folder and start the server (waits until it
        accepts connections). Does nothing if already started. Returns ``self``."""
        if self.port is not None:
            return self
        bin_dir = find_bin_dir()
        self.bin_dir = bin_dir
        self.folder = Path(tempfile.mkdtemp(prefix="durable-nb-pg-"))
        atexit.register(self.stop)
        try:
            if os.geteuid() == 0:
                shutil.chown(self.folder, user=self._postgres_user())
            self._run(
                "initdb",
                "-D",
                str(self.folder / "data"),
                "-A",
                "trust",
                "-U",
                USER,
                "--no-sync",
                "--encoding=UTF8",
                "--locale=C",
            )
            self.port = self._start_on_free_port()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Stop the server (fast shutdown) and remove its folder. Safe to call more than once."""
        folder, self.folder = self.folder, None
        if folder is None:
            return
        atexit.unregister(self.stop)
        try:
            if (folder / "data" / "postmaster.pid").exists():  # also after a failed start
                for mode in ("fast", "immediate"):
                    try:
                        done = self._run(
                            "pg_ctl",
                            "-D",
                            str(folder / "data"),
                            "-m",
                            mode,
                            "-w",
                            "stop",
                            check=False,
                            cwd=folder,
                        )
                    except subprocess.TimeoutExpired:
                        continue
                    if done.returncode == 0:
                        break
        finally:
            self.port = None
            shutil.rmtree(folder, ignore_errors=True)

    def __enter__(self) -> PostgresServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- databases --------------------------------------------------------------------------

    def url(self, dbname: str = "postgres") -> str:
        """The connection URL of database ``dbname`` on this server."""
        if self.port is None:
            raise RuntimeError("the PostgreSQL server is not started")
        return f"postgresql://{USER}@127.0.0.1:{self.port}/{dbname}"

    def create_database(self, name: str) -> str:
        """Create database ``name``; returns its URL."""
        from psycopg import sql

        with self._admin() as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return self.url(name)

    def drop_database(self, name: str) -> None:
        """Drop database ``name`` if it exists, even with sessions still connected to it."""
        from psycopg import sql

        with self._admin() as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )

    @contextmanager
    def fresh_database(self, prefix: str = "test") -> Iterator[str]:
        """The URL of a new, uniquely named, empty database, dropped afterwards."""
        name = f"{prefix}_{uuid.uuid4().hex[:16]}"
        url = self.create_database(name)
        try:
            yield url
        finally:
            self.drop_database(name)

    # -- helpers ----------------------------------------------------------------------------

    def _admin(self) -> psycopg.Connection:
        """An autocommit connection to database ``postgres`` (psycopg imported when used)."""
        import psycopg

        return psycopg.connect(self.url("postgres"), autocommit=True, connect_timeout=10)

    @staticmethod
    def _postgres_user() -> str:
        try:
            import pwd

            return pwd.getpwnam("postgres").pw_name
        except KeyError:
            raise RuntimeError(
                "running as root, but there is no 'postgres' user to run PostgreSQL as: "
                "apt-get install -y postgresql"
            ) from None

    def _run(
        self, program: str, *args: str, check: bool = True, cwd: Path | None = None
    ) -> subprocess.CompletedProcess[str]:
        """Run one of PostgreSQL's programs (as ``postgres`` when we are root)."""
        assert self.bin_dir is not None
        cmd = [str(self.bin_dir / program), *args]
        if os.geteuid() == 0:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        # No PG* variable of the caller's (PGDATA, PGPORT, PGOPTIONS...) may reach the server.
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        done = subprocess.run(
            cmd,
            cwd=cwd or self.folder,  # a folder the postgres user can enter
            env=env,
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
        )
        if check and done.returncode != 0:
            raise RuntimeError(
                f"{program} failed (exit {done.returncode}): {shlex.join(cmd)}\n"
                f"{done.stdout}{done.stderr}"
            )
        return done

    def _start_on_free_port(self) -> int:
        """pg_ctl start on a free port; another port if this one was taken meanwhile."""
        assert self.folder is not None
        log = self.folder / "log"
        options = ["-c", f"max_connections={MAX_CONNECTIONS}"]
        if self.fast:
            options += [arg for option in FAST_OPTIONS for arg in ("-c", option)]
        for _ in range(PORT_ATTEMPTS):
            port = free_port()
            offset = log.stat().st_size if log.exists() else 0
            server_args = ["-k", str(self.folder), "-h", "127.0.0.1", "-p", str(port), *options]
            done = self._run(
                "pg_ctl",
                "-D",
                str(self.folder / "data"),
                "-o",
                shlex.join(server_args),
                "-l",
                str(log),
                "-t",
                str(TIMEOUT),
                "-w",
                "start",
                check=False,
            )
            if done.returncode == 0:
                return port
            text = log.read_bytes()[offset:].decode(errors="replace") if log.exists() else ""
            if "already in use" not in text:
                tail = "\n".join(text.splitlines()[-20:])
                raise RuntimeError(
                    f"pg_ctl start failed (exit {done.returncode}) on port {port}:\n"
                    f"{done.stdout}{done.stderr}\n--- last lines of the server log ---\n{tail}"
                )
        raise RuntimeError(f"pg_ctl start: no free port after {PORT_ATTEMPTS} attempts")
