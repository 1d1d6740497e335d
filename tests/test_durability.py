"""Durable by construction (issue 28): damage is refused, local commits never wait on anything
remote, a stop flushes, and transient errors are recovered from. Real kernels, real files,
real ``kill -9``."""

from __future__ import annotations

import hashlib
from pathlib import Path

from .conftest import python
from .kernels import Kernel, kernel_env

SETUP = "%load_ext durable_nb"
STEPS = "from durable_nb import step\n@step\ndef work(i):\n    return {'i': i}\n"
FORTY = "%%durable forty\nout = [work(i) for i in range(40)]\n"


def test_an_emptied_log_beside_its_wal_is_refused_and_nothing_is_written(
    tmp_path: Path,
) -> None:
    kernel = Kernel(tmp_path, kernel_env(tmp_path / "nb.ipynb"))
    try:
        for code in (SETUP, STEPS, FORTY):
            assert kernel.execute(code).status == "ok"
    finally:
        kernel.kill()  # kill -9: the 40 committed steps are only in the WAL
    log = tmp_path / ".durable" / "nb.db"
    wal = Path(f"{log}-wal")
    assert wal.stat().st_size > 32
    log.write_bytes(b"")  # the main file emptied (a bad copy, a full disk, a sync tool)
    before = hashlib.sha256(wal.read_bytes()).hexdigest()
    kernel = Kernel(tmp_path, kernel_env(tmp_path / "nb.ipynb"))
    try:
        for code in (SETUP, STEPS):
            assert kernel.execute(code).status == "ok"
        reply = kernel.execute(FORTY)
        assert reply.status == "error"
        message = f"{reply.error['ename']}: {reply.error['evalue']}" if reply.error else ""
        assert message.startswith("LogFileError: the log ") and "is empty, but its WAL" in message
        assert "restore the log from its replica" in message
        assert len(reply.error["traceback"]) == 1  # one line, no internals
    finally:
        kernel.close()
    assert log.stat().st_size == 0  # nothing was written over it
    assert hashlib.sha256(wal.read_bytes()).hexdigest() == before


def test_a_restore_refused_in_a_worker_thread_keeps_replication_running(tmp_path: Path) -> None:
    """The panel restores from its worker thread; a refused restore starts litestream again
    there, and it must outlive that thread (it dies with the process)."""
    log = tmp_path / ".durable" / "nb.db"
    kernel = Kernel(tmp_path, kernel_env(tmp_path / "nb.ipynb"))
    holder = None
    try:
        for code in (
            SETUP, STEPS, "%%durable few\nout = [work(i) for i in range(3)]\n",
            "import durable_nb\n"
            "r = durable_nb.replicate(sync_interval='100ms', monitor_interval='100ms')\n"
            "assert r.wait_synced(15)\n",
        ):  # fmt: skip
            assert kernel.execute(code).status == "ok"
        holder = python(  # another process with the log open: the restore is refused
            "import sys, time, durable_nb\n"
            "store = durable_nb.Store(sys.argv[1])\nprint('open', flush=True)\ntime.sleep(60)\n",
            str(log), cwd=tmp_path,
        )  # fmt: skip
        assert holder.stdout is not None and holder.stdout.readline() == "open\n"
        reply = kernel.execute(
            "import threading, time\nerrors = []\n"
            "def worker():\n    try:\n        durable_nb.restore()\n"
            "    except Exception as exc:\n        errors.append(str(exc))\n"
            "t = threading.Thread(target=worker)\nt.start()\nt.join()\ntime.sleep(1.5)\n"
            "print(errors)\nprint(durable_nb.replication_status().state)\n"
        )
        assert "open in another process" in reply.stdout, reply.stdout + reply.stderr
        assert reply.stdout.strip().endswith("running")
    finally:
        if holder is not None:
            holder.kill()
            holder.wait()
        kernel.close()
