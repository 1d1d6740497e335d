"""Durable by construction (issue 28): damage is refused, local commits never wait on anything
remote, a stop flushes, and transient errors are recovered from. Real kernels, real files,
real ``kill -9``."""

from __future__ import annotations

import hashlib
import os
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from .conftest import ROOT, python
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


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A tmpfs of 24 MiB mounted for the test: a disk that fills up for real."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs to fill a disk needs root")
    disk = tmp_path / "disk"
    disk.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=24m", "tmpfs", str(disk)],
                          capture_output=True, text=True)  # fmt: skip
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


HOG = """\
@step
def hog():
    with open("filler", "wb") as f:  # fills the disk: this step's own row cannot be written
        try:
            while True:
                f.write(bytes(1 << 16))
                f.flush()
        except OSError:
            pass
    return bytes(100_000)
"""


def test_a_run_whose_end_could_not_be_written_holds_its_workflow_against_no_one(
    small_disk: Path,
) -> None:
    log = small_disk / ".durable" / "nb.db"
    kernel = Kernel(small_disk, kernel_env(small_disk / "nb.ipynb"))
    try:
        for code in (SETUP, STEPS + HOG, "%%durable ok\nout = [work(i) for i in range(3)]\n"):
            assert kernel.execute(code).status == "ok"
        reply = kernel.execute("%%durable full\nx = hog()\n")
        assert reply.status == "error" and reply.error is not None
        assert reply.error["ename"] == "LogFileError" and "full" in reply.error["evalue"]
        (small_disk / "filler").unlink()  # space is back
        deadline = time.monotonic() + 20
        while _status(log, "full") == "running":  # its end is written in the background
            assert time.monotonic() < deadline, "the run's end was never written"
            time.sleep(0.2)
        assert _status(log, "full") == "failed"
        other = python(  # another process runs the same workflow: not refused
            "import sys, durable_nb\nfrom durable_nb import step, workflow\n"
            "with workflow('full', store=durable_nb.Store(sys.argv[1])):\n    pass\n"
            "print('ran')\n",
            str(log), cwd=small_disk,
        )  # fmt: skip
        out, err = other.communicate(timeout=60)
        assert other.returncode == 0 and out == "ran\n", err
    finally:
        kernel.close()
    statuses = [s for (s,) in sqlite3.connect(log).execute("SELECT status FROM runs")]
    assert "crashed" not in statuses and "running" not in statuses


def _status(log: Path, workflow: str) -> str:
    conn = sqlite3.connect(log)
    try:
        row = conn.execute(
            "SELECT status FROM runs WHERE workflow = ? ORDER BY id LIMIT 1", (workflow,)
        ).fetchone()
    finally:
        conn.close()
    return row[0]


CHECKPOINTS = r"""
import os, sys, time
from pathlib import Path
from durable_nb import Store, step, workflow

disk = Path(sys.argv[1])
store = Store(disk / "x.db")
free = os.statvfs(disk).f_bavail * os.statvfs(disk).f_frsize
with open(disk / "filler", "wb") as f:  # leave room for the WAL, not for the log to grow
    f.write(bytes(free - (7 << 20)))

@step
def chunk(i):
    return bytes([i]) * 400_000

with workflow("w", store=store):
    for i in range(13):  # about 5 MiB in the WAL, past the checkpoint threshold
        chunk(i)
time.sleep(1.5)  # the checkpointer tries, and finds no space
print("log before", os.path.getsize(disk / "x.db"), flush=True)
os.unlink(disk / "filler")
deadline = time.monotonic() + 15
while os.path.getsize(disk / "x.db") < (4 << 20) and time.monotonic() < deadline:
    time.sleep(0.2)
print("log after", os.path.getsize(disk / "x.db"), flush=True)
store.close()
"""


def test_checkpoints_come_back_after_a_full_disk(small_disk: Path) -> None:
    proc = python(CHECKPOINTS, str(small_disk), cwd=small_disk)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    before, after = (int(line.split()[-1]) for line in out.splitlines())
    assert before < (3 << 20)  # not all folded in while the disk was full
    assert after >= (4 << 20), err  # folded in once there is space again


BURST = r"""
import sys, durable_nb
from durable_nb import step, workflow

durable_nb.open_log(sys.argv[1])
durable_nb.replicate(sys.argv[2])

@step
def work(i):
    return {"i": i}

with workflow("burst"):
    for i in range(6):
        work(i)
durable_nb.stop_replication()
print("done", flush=True)
"""


def test_a_burst_agent_leaves_its_whole_log_in_the_replica(tmp_path: Path) -> None:
    """The seeds' own case: an agent that lives half a second, and exits."""
    root = f"file://{tmp_path / 'replicas'}/"
    proc = python(BURST, str(tmp_path / "agent.db"), root, cwd=tmp_path)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0 and out == "done\n", err
    assert "DurableWarning" not in err  # it lacked nothing
    import durable_nb

    copy = durable_nb.restore(root, to=tmp_path / "restored.db", log=tmp_path / "agent.db")
    rows = sqlite3.connect(copy).execute("SELECT count(*) FROM steps WHERE status = 'completed'")
    assert rows.fetchone() == (6,)


OUTAGE = r"""
import os, sys, time, durable_nb
from durable_nb import step, workflow

durable_nb.open_log(sys.argv[1])
durable_nb.replicate(sys.argv[2])

@step
def big(i):
    return bytes([i]) * 2_000_000  # a blob file

print("replicating", flush=True)
sys.stdin.readline()  # the endpoint is down now
started = time.monotonic()
with workflow("outage"):
    value = big(1)
took = time.monotonic() - started  # the commit is local: it waits on nothing remote
status = durable_nb.replication_status()
print("committed", len(value), status.blobs_pending, took < 2, flush=True)
sys.stdin.readline()  # the endpoint is back
durable_nb.stop_replication()
print("stopped", durable_nb.replication_status().state, flush=True)
"""


def test_an_s3_outage_delays_a_blob_and_loses_no_computed_result(tmp_path: Path) -> None:
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    import boto3

    s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                      aws_access_key_id="k", aws_secret_access_key="s")  # fmt: skip
    s3.create_bucket(Bucket="team")
    env = {**os.environ, "AWS_ACCESS_KEY_ID": "k", "AWS_SECRET_ACCESS_KEY": "s",
           "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true",
           "AWS_ENDPOINT_URL_S3": endpoint, "PYTHONPATH": str(ROOT)}  # fmt: skip
    env.pop("AWS_CA_BUNDLE", None)
    url = "s3://team/agents/agent"
    proc = subprocess.Popen(
        [sys.executable, "-c", OUTAGE, str(tmp_path / "agent.db"), url], cwd=tmp_path, env=env,
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert proc.stdin is not None and proc.stdout is not None
    try:
        assert proc.stdout.readline() == "replicating\n", proc.stderr.read() if proc.stderr else ""
        server.stop()  # the endpoint goes away: a step that makes a blob goes on
        proc.stdin.write("\n")
        proc.stdin.flush()
        assert proc.stdout.readline() == "committed 2000000 1 True\n"
        server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
        server.start()  # back (moto keeps its buckets in this process)
        proc.stdin.write("\n")
        proc.stdin.flush()
        assert proc.stdout.readline() == "stopped stopped\n"
        proc.wait(timeout=60)
        listed = s3.list_objects_v2(Bucket="team", Prefix="agents/")["Contents"]
        assert any("/blobs/" in o["Key"] for o in listed)  # uploaded once it came back
    finally:
        proc.kill()
        server.stop()
    assert proc.returncode == 0
    rows = sqlite3.connect(tmp_path / "agent.db").execute("SELECT status FROM steps")
    assert rows.fetchall() == [("completed",)]
