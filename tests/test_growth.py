"""A log used for a year (issue 16): bounded files, aligned replayed arrays, indexed reads."""

from __future__ import annotations

import os
import sqlite3
import time
from pathlib import Path

import numpy as np

import durable_nb
from durable_nb import Store, step, workflow

from .conftest import old_log
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


def test_a_reader_holding_a_snapshot_never_holds_up_a_burst(tmp_path: Path) -> None:
    """A viewer (or Litestream) keeps a read transaction open while 20,000 steps write 80 MB
    of WAL: the checkpoints that wait for readers give up within milliseconds, and back off,
    so no step waits long (a TRUNCATE that waited for the reader once failed the step)."""
    log = tmp_path / "held.db"
    quick = step(abs)
    with Store(log) as store:
        with workflow("first", store=store):
            quick(1)
        reader = sqlite3.connect(log, isolation_level=None)
        reader.execute("BEGIN")
        assert reader.execute("SELECT count(*) FROM steps").fetchone() == (1,)
        slowest = 0.0
        with workflow("burst", store=store) as run:
            for i in range(20_000):
                started = time.perf_counter()
                quick(-i)
                slowest = max(slowest, time.perf_counter() - started)
        assert run.steps_run == 20_000 and Path(f"{log}-wal").stat().st_size > 64 << 20
        assert slowest < 0.5, f"a step waited {slowest:.2f} s for a checkpoint"
        reader.execute("COMMIT")  # let go: the next tries (backing off) give the space back
        reader.close()
        deadline = time.monotonic() + 15
        while Path(f"{log}-wal").stat().st_size > 17 << 20:
            assert time.monotonic() < deadline, "the WAL was not folded in once the reader left"
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


def test_a_workflow_reads_only_its_own_steps(tmp_path: Path) -> None:
    quick = step(abs)
    with Store(tmp_path / "x.db") as store:
        for name in ("a", "b", "a"):
            with workflow(name, store=store):
                quick(-1)
        plan = store.conn.execute(
            "EXPLAIN QUERY PLAN SELECT step FROM workflow_steps WHERE workflow = 'a'"
        ).fetchall()
        assert any("PRIMARY KEY" in row[-1] or "USING" in row[-1] for row in plan)
        assert [r[0] for r in store.step_rows("run_id", "a")] == [1]  # run 3 replayed it
        assert [r[0] for r in store.step_rows("run_id", "b")] == [2]
        assert [r[0] for r in store.step_rows("run_id", run=2)] == [2]


def test_a_crashed_runs_steps_are_found_and_indexed(tmp_path: Path) -> None:
    script = (
        "import os, sys, durable_nb\nfrom durable_nb import step, workflow\n"
        "durable_nb.open_log(sys.argv[1])\nwith workflow('w'):\n"
        "    step(abs, -1)\n    step(abs, -2)\n    os._exit(1)\n"
    )
    from .conftest import python

    log = tmp_path / "c.db"
    proc = python(script, str(log), cwd=tmp_path)
    proc.communicate(timeout=60)
    quick = step(abs)
    with Store(log) as store:
        assert store.conn.execute("SELECT indexed FROM runs").fetchone() == (1,)  # on open
        with workflow("w", store=store) as run:
            quick(-1), quick(-2), quick(-3)
        assert (run.steps_replayed, run.steps_run) == (2, 1)


def test_an_old_log_is_indexed_and_keeps_its_records(tmp_path: Path) -> None:
    old = old_log(tmp_path / "old.db", 5, step="abs", result=1)
    with Store(old) as store:
        assert [r[0] for r in store.step_rows("name", "w")] == ["abs"]
        assert len(durable_nb.steps(workflow="w", log=store)) == 1
