"""Blob files no row refers to: left by forget and by kills between a blob and its row;
collected once older than a grace period, never one that a row uses or is about to use."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from durable_nb import Store, step, workflow

from .conftest import ROOT, integrity
from .kernels import Kernel, kernel_env

MiB = 1 << 20


def blob_files(store: Store) -> set[str]:
    return {p.name for p in store.blobs.files()}


def age(store: Store, seconds: float) -> None:
    """Make every file of the blob folder ``seconds`` old."""
    then = time.time() - seconds
    for path in store.blobs.files():
        os.utime(path, (then, then))


def test_collects_forgotten_and_orphan_blobs_and_keeps_the_rest(tmp_path: Path) -> None:
    calls: list[int] = []

    @step
    def big(i: int) -> bytes:
        calls.append(i)
        return bytes([i]) * (2 * MiB)

    with Store(tmp_path / "x.db") as store:
        with workflow("keep", store=store):
            big(1)
        with workflow("drop", store=store):
            big(2)
        orphan = store.blobs.write([b"o" * (2 * MiB)])  # its process died before the row
        leftover = store.blobs.path(orphan).with_name(".tmp-killed-mid-write")
        leftover.write_bytes(b"partial")
        blob_of = dict(store.conn.execute("SELECT workflow, result_blob FROM steps"))
        store.forget("drop")
        age(store, 3600)
        young = store.blobs.write([b"y" * MiB])  # a row about to commit points here
        before = blob_files(store)

        collected = store.collect_blobs(grace=60)

        after = blob_files(store)
        assert collected.files == 3 and collected.bytes > 4 * MiB
        assert str(collected).startswith("removed 3 unreferenced blob files (4.0 MiB)")
        assert before - after == {blob_of["drop"], orphan, leftover.name}
        assert after == {blob_of["keep"], young}
        with workflow("keep", store=store):
            assert big(1) == bytes([1]) * (2 * MiB)  # still replayed from its blob
        assert calls == [1, 2]
        assert str(store.collect_blobs(grace=60)) == "no unreferenced blob files to remove"
    assert integrity(tmp_path / "x.db") == "ok"
    conn = sqlite3.connect(tmp_path / "x.db")
    notes = conn.execute("SELECT kind, detail FROM events WHERE kind = 'collect blobs'")
    assert [d for _, d in notes] == [f"removed 3 unreferenced blob files ({collected.bytes} bytes)"]
    conn.close()


def test_a_reused_blob_is_young_again_and_survives(tmp_path: Path) -> None:
    with Store(tmp_path / "x.db") as store:
        digest = store.blobs.write([b"same" * MiB])
        age(store, 3600)
        # another run stores the same value: the file exists and is reused, its row not
        # committed yet when a collection comes by
        assert store.blobs.write([b"same" * MiB]) == digest
        assert store.collect_blobs(grace=60).files == 0
        assert digest in blob_files(store)


def test_cell_variables_blobs_are_kept(tmp_path: Path) -> None:
    """Cell variables stored as blobs are referenced from the cells table, not from steps."""
    nb = tmp_path / "big.ipynb"
    kernel = Kernel(tmp_path, kernel_env(nb))
    try:
        kernel.execute("%load_ext durable_nb")
        reply = kernel.execute("%%durable big\ndata = b'v' * (3 * 2**20)\nlen(data)")
        assert reply.status == "ok", reply.error
        store = Store(tmp_path / ".durable" / "big.db", readonly=True)
        age(store, 3600)
        kept = blob_files(store)
        assert len(kept) == 1
        reply = kernel.execute("%durable gc")
        assert reply.stdout == "no unreferenced blob files to remove from .durable/big.blobs\n"
        reply = kernel.execute("%durable forget big")
        assert "%durable gc frees their blob files" in reply.stdout
        reply = kernel.execute("%durable gc")
        assert reply.stdout.startswith("removed 1 unreferenced blob files (3.0 MiB) from ")
        assert blob_files(store) == set()
        store.close()
    finally:
        kernel.close()


def test_cli_gc(tmp_path: Path) -> None:
    @step
    def big() -> bytes:
        return b"z" * (2 * MiB)

    with Store(tmp_path / ".durable" / "nb.db") as store:
        with workflow("w", store=store):
            big()
        store.forget("w")
    done = subprocess.run(
        [sys.executable, "-m", "durable_nb.cli", "gc", str(tmp_path / "nb.ipynb"), "--grace", "0"],
        capture_output=True, text=True, cwd=ROOT, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("removed 1 unreferenced blob files (2.0 MiB) from ")
    assert not [p for p in (tmp_path / ".durable" / "nb.blobs").rglob("*") if p.is_file()]
