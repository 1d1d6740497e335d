"""The log file: creation, permissions, the events view, and files it must refuse untouched."""

from __future__ import annotations

import hashlib
import shutil
import signal
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest

from durable_nb import LogFileError, SchemaTooNewError, Store, WorkflowBusyError, step, workflow
from durable_nb.log.schema import SCHEMA_VERSION
from durable_nb.log.stores import open_store

from .conftest import python


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_log_and_folder_are_user_only(tmp_path: Path) -> None:
    path = tmp_path / "nb" / ".durable" / "x.db"
    Store(path).close()
    assert path.stat().st_mode & 0o777 == 0o600
    assert path.parent.stat().st_mode & 0o777 == 0o700
    wal = path.with_name("x.db-wal")
    with Store(path) as store, workflow("w", store=store):
        pass
        assert wal.exists() and wal.stat().st_mode & 0o777 == 0o600


def test_schema_is_versioned_and_wal(tmp_path: Path) -> None:
    path = tmp_path / "x.db"
    Store(path).close()
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION,)
    assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)


def test_events_read_with_the_sqlite3_shell(tmp_path: Path) -> None:
    path = tmp_path / "x.db"

    @step
    def train(lr: float) -> dict[str, float]:
        return {"lr": lr, "loss": 0.5}

    @step
    def broken() -> None:
        raise ValueError("bad input")

    with Store(path) as store:
        with workflow("sweep", store=store):
            train(0.1)
        with pytest.raises(ValueError), workflow("sweep", store=store):
            train(0.1)
            broken()
    shell = shutil.which("sqlite3")
    assert shell, "the sqlite3 shell is part of the machine image"
    out = subprocess.run(
        [shell, str(path), "SELECT * FROM events ORDER BY ts;"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    lines = out.splitlines()
    kinds = [line.split("|")[4] for line in lines]
    assert kinds == [
        "run started", "step started", "step completed", "run completed",
        "run started", "step started", "step failed", "run failed",
    ]  # fmt: skip
    assert lines[0].startswith(time.strftime("%Y-"))
    assert "|sweep|1|train|step completed|-> dict {'lr': 0.1, 'loss': 0.5}" in out
    assert "|broken|step failed|ValueError: bad input" in out
    assert "run failed|0 run, 1 replayed; ValueError: bad input" in out


def test_not_sqlite_is_refused_untouched(tmp_path: Path) -> None:
    path = tmp_path / "notes.db"
    path.write_text("these are my notes, not a database\n" * 100)
    before = digest(path)
    with pytest.raises(LogFileError, match="is not a SQLite file") as info:
        Store(path)
    assert "\n" not in str(info.value)
    assert digest(path) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.db"]


def test_other_applications_database_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "app.db"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE users (name TEXT)")
    conn.commit()
    conn.close()
    before = digest(path)
    with pytest.raises(LogFileError, match="not a durable_nb log"):
        Store(path)
    assert digest(path) == before


def test_corrupted_log_is_refused_untouched(tmp_path: Path) -> None:
    path = tmp_path / "x.db"

    @step
    def payload(i: int) -> str:
        return "x" * 3000

    with Store(path) as store, workflow("w", store=store):
        for i in range(200):
            payload(i)
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    raw = bytearray(path.read_bytes())
    for offset in range(4096 * 3, 4096 * 3 + 2000):
        raw[offset] = 0x5A
    path.write_bytes(bytes(raw))
    before = digest(path)
    with pytest.raises(LogFileError, match=r"corrupted.*restore it"):
        Store(path)
    assert digest(path) == before


def test_newer_schema_is_refused_untouched(tmp_path: Path) -> None:
    path = tmp_path / "x.db"
    Store(path).close()
    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 5}")
    conn.commit()
    conn.close()
    before = digest(path)
    with pytest.raises(SchemaTooNewError, match=r"newer durable_nb.*upgrade durable_nb"):
        Store(path)
    assert digest(path) == before


def test_dead_owner_run_becomes_crashed_and_live_one_is_refused(
    tmp_path: Path, log_target: Path | str
) -> None:
    path = log_target
    holder = python(
        "import sys, time, durable_nb\n"
        "from durable_nb.log.stores import open_store\n"
        "store = open_store(sys.argv[1])\n"
        "with durable_nb.workflow('long', store=store):\n"
        "    print('holding', flush=True)\n"
        "    time.sleep(60)\n",
        str(path),
        cwd=tmp_path,
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == "holding"
        with open_store(path) as store:
            with (
                pytest.raises(WorkflowBusyError, match=f"process {holder.pid}") as info,
                workflow("long", store=store),
            ):
                pass
            assert info.value.pid == holder.pid
            with workflow("other", store=store):  # a different workflow is not blocked
                pass
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    with open_store(path) as store:
        runs = {r.workflow: r for r in store.runs()}
        assert runs["long"].status == "crashed"
        with workflow("long", store=store):  # the lease is free again
            pass


def test_recycled_pid_is_not_taken_for_the_owner(tmp_path: Path) -> None:
    from durable_nb.log import owner

    me = owner.current_owner()
    host, boot, pid, ticks = me.rsplit(":", 3)
    assert owner.is_alive(me)
    assert not owner.is_alive(f"{host}:{boot}:{pid}:{int(ticks) + 1}")
    assert not owner.is_alive(f"other-host:{boot}:{pid}:{ticks}")


def test_forget_drops_a_workflow_or_one_step(log_target: Path | str) -> None:
    calls: list[str] = []

    @step
    def a() -> int:
        calls.append("a")
        return 1

    @step
    def b() -> int:
        calls.append("b")
        return 2

    with open_store(log_target) as store:
        with workflow("w", store=store):
            a(), b()
        assert store.forget("w", step="b") == 1
        with workflow("w", store=store):
            a(), b()
        assert calls == ["a", "b", "b"]
        assert store.forget("w") == 2
        assert store.runs("w") == []
        kinds = [r[0] for r in store.conn.execute("SELECT kind FROM events ORDER BY ts")]
        assert kinds == ["forget", "forget"]


def test_wal_is_folded_in_by_the_background_checkpointer(tmp_path: Path) -> None:
    path = tmp_path / "x.db"

    @step
    def chunk(i: int) -> bytes:
        return bytes(200_000)  # under the blob threshold: 30 of them grow the WAL past 4 MiB

    with Store(path) as store:
        assert store.conn.execute("PRAGMA wal_autocheckpoint").fetchone() == (0,)
        with workflow("w", store=store):
            for i in range(30):
                chunk(i)
        deadline = time.monotonic() + 10
        while path.stat().st_size < 4 << 20:  # the pages reached the main file
            assert time.monotonic() < deadline, "no checkpoint happened"
            time.sleep(0.1)
