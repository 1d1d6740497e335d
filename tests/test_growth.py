"""A log used for a year (issue 16): bounded files, aligned replayed arrays, indexed reads."""

from __future__ import annotations

import os
import sqlite3
import time
from pathlib import Path

import numpy as np

import durable_nb
from durable_nb import Store, step, workflow

from .kernels import Kernel, kernel_env


def test_replayed_arrays_are_aligned(log_path: Path) -> None:
    @step
    def make(n: int) -> tuple[np.ndarray, np.ndarray]:
        return np.arange(n, dtype=np.float64), np.ones(n + 3, dtype=np.int8)

    with workflow("aligned"):
        make(300_000)
    with workflow("aligned") as run:
        floats, small = make(300_000)
    assert run.steps_replayed == 1
    assert floats.flags.aligned and small.flags.aligned
    assert floats.ctypes.data % 64 == 0  # its own segment of the memory-mapped blob
    assert float(floats @ floats) == float(np.arange(300_000.0) @ np.arange(300_000.0))


def test_the_wal_returns_to_a_bounded_size(tmp_path: Path) -> None:
    log = tmp_path / "wal.db"
    quick = step(abs)
    with Store(log) as store, workflow("burst", store=store):
        for i in range(30_000):
            quick(-i)
        deadline = time.monotonic() + 10
        wal = Path(f"{log}-wal")
        while wal.stat().st_size > 17 << 20:  # the checkpoint thread catches up
            assert time.monotonic() < deadline, f"WAL still {wal.stat().st_size} bytes"
            time.sleep(0.1)


def test_only_the_newest_cell_snapshot_is_kept_and_gc_frees_the_rest(tmp_path: Path) -> None:
    kernel = Kernel(tmp_path, kernel_env(tmp_path / "snap.ipynb"))
    cell = (
        "%%durable snap --force\nimport numpy as np\n"
        "arr = np.random.default_rng().random(400_000)\n"
    )
    try:
        kernel.execute("%load_ext durable_nb")
        for _ in range(4):
            assert kernel.execute(cell).status == "ok"
        blobs = tmp_path / ".durable" / "snap.blobs"
        assert len([p for p in blobs.rglob("*") if p.is_file()]) == 4
        for path in blobs.rglob("*"):
            if path.is_file():
                os.utime(path, (time.time() - 120, time.time() - 120))  # past the grace period
        reply = kernel.execute("%durable gc")
        assert "removed 3 unreferenced blob files" in reply.stdout
        info = kernel.execute("%durable info").stdout
        assert "size: log " in info and "in 1 files" in info
        again = kernel.execute(cell.replace(" --force", ""))
        assert "snap: skipped" in again.stdout  # the newest snapshot still restores
    finally:
        kernel.close()


def test_a_log_is_indexed_by_workflow(tmp_path: Path) -> None:
    with Store(tmp_path / "x.db") as store:
        plan = store.conn.execute(
            "EXPLAIN QUERY PLAN SELECT id FROM steps WHERE workflow = ? AND status = 'completed'",
            ("w",),
        ).fetchall()
    assert any("steps_by_workflow" in row[-1] for row in plan)


def test_an_old_log_gets_the_index_and_keeps_its_records(tmp_path: Path) -> None:
    from durable_nb.schema import MIGRATIONS
    from durable_nb.store import _statements

    old = tmp_path / "old.db"
    conn = sqlite3.connect(old)
    for script in MIGRATIONS[:5]:
        for statement in _statements(script):
            conn.execute(statement)
    conn.execute("PRAGMA user_version = 5")
    conn.execute("PRAGMA application_id = 1145979441")
    conn.commit()
    conn.close()
    quick = step(abs)
    with Store(old) as store, workflow("w", store=store):
        quick(-1)
    assert durable_nb.runs(log=old)["status"].tolist() == ["completed"]
    indexes = sqlite3.connect(old).execute("SELECT name FROM sqlite_master WHERE type = 'index'")
    assert ("steps_by_workflow",) in indexes.fetchall()
