"""No hangs, no races, no silent loss of durability (issue 18): each with real processes,
kernels and files."""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import nbformat
import numpy as np
import pytest

import durable_nb
from durable_nb import LogFileError, Store, step, workflow

from .conftest import python, unprivileged_python
from .kernels import Kernel, kernel_env, notebook


def test_durable_nb_run_exits_when_the_kernel_dies_and_a_rerun_resumes(tmp_path: Path) -> None:
    path = tmp_path / "dies.ipynb"
    nb = notebook(
        "%load_ext durable_nb",
        "from durable_nb import step\n@step\ndef work(i):\n"
        "    with open('calls.txt', 'a') as f:\n        f.write(f'{i}\\n')\n    return i\n",
        "%%durable job\nimport os\nvals = [work(i) for i in range(3)]\n"
        "if not os.path.exists('ok'):\n    os._exit(1)\nprint(vals)\n",
    )
    nbformat.write(nb, str(path))
    cmd = [sys.executable, "-m", "durable_nb.cli", "run", str(path), "--timeout", "5"]
    started = time.monotonic()
    died = subprocess.run(cmd, env=kernel_env(), capture_output=True, text=True, timeout=120)
    assert time.monotonic() - started < 30
    assert died.returncode == 1
    assert "the kernel died while running cell 3 (%%durable job)" in died.stderr
    (tmp_path / "ok").touch()
    again = subprocess.run(cmd, env=kernel_env(), capture_output=True, text=True, timeout=120)
    assert again.returncode == 0, again.stderr
    assert "job: 3 steps replayed, 0 run" in again.stdout
    assert (tmp_path / "calls.txt").read_text().split() == ["0", "1", "2"]


def test_durable_nb_run_stops_on_sigterm_and_shuts_its_kernel_down(tmp_path: Path) -> None:
    path = tmp_path / "long.ipynb"
    cell = "import os, time\nopen('kernel.pid', 'w').write(str(os.getpid()))\ntime.sleep(300)"
    nbformat.write(notebook(cell), str(path))
    cmd = [sys.executable, "-m", "durable_nb.cli", "run", str(path)]
    proc = subprocess.Popen(cmd, env=kernel_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    pid_file, deadline = tmp_path / "kernel.pid", time.monotonic() + 60
    while not pid_file.exists() or not pid_file.read_text():
        assert time.monotonic() < deadline, "the kernel never ran the cell"
        time.sleep(0.05)
    kernel_pid = int(pid_file.read_text())
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=30)
    assert proc.returncode != 0
    deadline = time.monotonic() + 10
    while Path(f"/proc/{kernel_pid}").exists():  # shut down, not left running
        assert time.monotonic() < deadline, "the kernel was left running"
        time.sleep(0.05)


def _open(path: Path, barrier: object, results: object) -> None:
    barrier.wait()  # type: ignore[attr-defined]
    try:
        Store(path).close()
        results.put("ok")  # type: ignore[attr-defined]
    except Exception as exc:  # reported to the test
        results.put(f"{type(exc).__name__}: {exc}")  # type: ignore[attr-defined]


def test_processes_opening_a_new_log_at_once_all_succeed(tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("fork")
    failures: list[str] = []
    for trial in range(6):
        path = tmp_path / f"t{trial}" / ".durable" / "new.db"
        barrier, results = ctx.Barrier(4), ctx.Queue()
        procs = [ctx.Process(target=_open, args=(path, barrier, results)) for _ in range(4)]
        for p in procs:
            p.start()
        for p in procs:
            p.join(timeout=60)
        failures += [r for r in (results.get(timeout=10) for _ in procs) if r != "ok"]
        assert sqlite3.connect(path).execute("PRAGMA integrity_check").fetchone() == ("ok",)
    assert failures == []


HOLDER = """
import sys, time
import durable_nb
from durable_nb import step, workflow
durable_nb.open_log(sys.argv[1])
with workflow("held"):
    print("started", flush=True)
    time.sleep(300)
"""


def test_a_killed_process_not_yet_reaped_does_not_hold_its_workflow(tmp_path: Path) -> None:
    log = tmp_path / "z.db"
    holder = python(HOLDER, str(log), cwd=tmp_path)
    assert holder.stdout is not None and holder.stdout.readline() == "started\n"
    os.kill(holder.pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while Path(f"/proc/{holder.pid}/stat").read_text().split(")")[-1].split()[0] != "Z":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    try:  # a zombie now: killed, its parent (this test) has not waited for it
        with Store(log) as store, workflow("held", store=store) as run:
            assert run.id == 2
        statuses = [r.status for r in Store(log).runs()]
        assert statuses == ["crashed", "completed"]
    finally:
        holder.wait()


class Model:
    @step
    @staticmethod
    def prepare(x: int) -> int:
        return x + 1

    @step
    @classmethod
    def build(cls, x: int) -> tuple[str, int]:
        return cls.__name__, x

    @step
    def predict(self, x: int) -> int:
        return x * 2


def test_steps_above_staticmethod_and_classmethod(log_path: Path) -> None:
    m = Model()
    for expected_run in (5, 0):
        with workflow("methods") as run:
            assert (m.prepare(1), Model.prepare(1)) == (2, 2)
            assert m.build(2) == Model.build(2) == ("Model", 2)
            assert m.predict(3) == 6
        assert run.steps_run == expected_run


def chatty(i: int) -> int:
    for k in range(3):
        print(f"step {i} line {k}")
        time.sleep(0.005)
    return i * i


def test_steps_in_a_thread_pool_are_durable_and_keep_their_own_output(log_path: Path) -> None:
    work = step(chatty)
    for expected in ((8, 0), (0, 8)):
        with workflow("pool") as run, ThreadPoolExecutor(4) as pool:
            assert list(pool.map(work, range(8))) == [i * i for i in range(8)]
        assert (run.steps_run, run.steps_replayed) == expected
    rows = sqlite3.connect(log_path).execute("SELECT args_repr, stdout FROM steps").fetchall()
    assert len(rows) == 8
    for i, out in rows:
        assert out == "".join(f"step {i} line {k}\n" for k in range(3))


def test_steps_in_to_thread_keep_their_own_output(log_path: Path) -> None:
    work = step(chatty)

    async def flow() -> list[int]:
        async with workflow("to-thread"):
            return await asyncio.gather(*(asyncio.to_thread(work, i) for i in range(6)))

    assert asyncio.run(flow()) == [i * i for i in range(6)]
    rows = sqlite3.connect(log_path).execute("SELECT args_repr, stdout FROM steps").fetchall()
    assert sorted(int(i) for i, _ in rows) == list(range(6))
    for i, out in rows:
        assert out == "".join(f"step {i} line {k}\n" for k in range(3))


def test_when_gather_raises_the_other_steps_end_with_the_run(log_path: Path) -> None:
    done: list[int] = []

    @step
    async def slow(i: int) -> int:
        await asyncio.sleep(0.5)
        done.append(i)
        return i

    @step
    async def bad() -> None:
        await asyncio.sleep(0.05)
        raise ValueError("boom")

    async def flow() -> None:
        async with workflow("gather"):
            await asyncio.gather(bad(), *(slow(i) for i in range(5)))

    async def main() -> None:
        with pytest.raises(ValueError, match="boom"):
            await flow()
        await asyncio.sleep(0.8)  # the loop goes on: nothing may still write to that run

    asyncio.run(main())
    conn = sqlite3.connect(log_path)
    run = conn.execute("SELECT status, steps_run, ended_at FROM runs").fetchone()
    rows = conn.execute("SELECT name, status, ended_at FROM steps ORDER BY id").fetchall()
    assert run[:2] == ("failed", 0) and done == []
    assert sorted((n, s) for n, s, _ in rows) == [("bad", "failed")] + [("slow", "interrupted")] * 5
    assert all(ended <= run[2] for _, _, ended in rows)


def test_deep_recursion_of_steps_keeps_one_traceback(log_path: Path) -> None:
    @step
    def dive(n: int) -> int:
        if n == 0:
            raise RuntimeError("bottom")
        return dive(n - 1)

    with pytest.raises(RuntimeError), workflow("deep"):
        dive(100)
    conn = sqlite3.connect(log_path)
    count, total = conn.execute(
        "SELECT count(*), sum(length(error_traceback)) FROM steps"
    ).fetchone()
    assert count == 101 and total < 60_000
    pointer = conn.execute("SELECT error_traceback FROM steps ORDER BY id DESC").fetchone()[0]
    assert pointer == "RuntimeError raised in nested step dive; its row has the traceback"


def test_a_folder_given_as_the_log_is_one_clear_line(tmp_path: Path) -> None:
    with pytest.raises(LogFileError, match="is a folder, not a log file; give a file path"):
        Store(tmp_path)
    out = subprocess.run(
        [sys.executable, "-m", "durable_nb.cli", "log", str(tmp_path)],
        capture_output=True, text=True, timeout=60,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])},
    )  # fmt: skip
    assert out.returncode == 2 and out.stderr.count("\n") == 1 and "is a folder" in out.stderr


def test_a_log_on_a_read_only_folder_can_be_viewed(tmp_path: Path) -> None:
    folder = tmp_path / "mount"
    with Store(folder / "ro.db") as store, workflow("w", store=store):
        step(abs, -3)
    folder.chmod(0o555)
    try:
        script = (
            "import durable_nb\n"
            f"print(durable_nb.runs(log={str(folder / 'ro.db')!r})['status'].tolist())\n"
            f"print(len(durable_nb.steps(log={str(folder / 'ro.db')!r})))\n"
        )
        out = unprivileged_python(script, tmp_path)
        assert out.returncode == 0, out.stderr
        assert out.stdout == "['completed']\n1\n"
    finally:
        folder.chmod(0o755)


def _write_one(path: Path) -> None:
    with Store(path) as store, workflow("w2", store=store):
        step(abs, -4)


def _mount_tmpfs(where: Path) -> bool:
    """Mount a small tmpfs at ``where`` (root only); False where mounting is not allowed."""
    where.mkdir()
    if os.geteuid() != 0:
        return False
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(where)],
                          capture_output=True, timeout=30)  # fmt: skip
    return done.returncode == 0


def test_a_log_on_a_read_only_file_system_says_so_and_can_be_viewed(tmp_path: Path) -> None:
    mount = tmp_path / "ro"
    if not _mount_tmpfs(mount):
        pytest.skip("mounting a read-only file system needs root and mount(8)")
    try:
        with Store(mount / ".durable" / "kept.db") as store, workflow("w", store=store):
            step(abs, -3)
        subprocess.run(["mount", "-o", "remount,ro", str(mount)], check=True, timeout=30)
        assert durable_nb.runs(log=mount / ".durable" / "kept.db")["status"].tolist() == [
            "completed"
        ]
        with pytest.raises(LogFileError) as new:
            Store(mount / ".durable" / "new.db")
        with pytest.raises(LogFileError) as old:  # at open, or at its first write
            _write_one(mount / ".durable" / "kept.db")
        for error in (new.value, old.value):
            text = str(error)
            assert "\n" not in text and "make its folder writable" in text, text
        assert "Read-only file system" in str(new.value)
    finally:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True, timeout=30)


def test_views_take_numpy_integers(log_path: Path) -> None:
    with workflow("np") as run:
        step(abs, -1)
    assert len(durable_nb.steps(run=np.int64(run.id))) == 1
    assert durable_nb.result("np", "abs", occurrence=np.int64(0)) == 1


def test_the_api_finds_the_notebook_log_before_load_ext(tmp_path: Path) -> None:
    script = "import durable_nb\nprint(durable_nb.get_store().path)\n"
    proc = python(
        script, cwd=tmp_path, env_extra={"DURABLE_NB_NOTEBOOK": str(tmp_path / "a.ipynb")}
    )
    out, err = proc.communicate(timeout=60)
    assert out.strip() == str(tmp_path / ".durable" / "a.db"), err


def test_open_a_quoted_path_with_spaces_in_a_kernel(tmp_path: Path) -> None:
    target = tmp_path / "with space" / "my log.db"
    target.parent.mkdir()  # (%durable open creates no folder but .durable/)
    kernel = Kernel(tmp_path, kernel_env(tmp_path / "q.ipynb"))
    try:
        kernel.execute("%load_ext durable_nb")
        reply = kernel.execute(f"%durable open '{target}'")
        assert reply.status == "ok", reply.error
        assert f"log: {target}" in reply.stdout
        bad = kernel.execute(f"%durable open {tmp_path}")
        assert bad.status == "error" and "is a folder, not a log file" in bad.stderr
    finally:
        kernel.close()
    assert target.exists() and not (tmp_path / "'").exists()


def test_parallel_papermill_runs_with_other_parameters_do_not_refuse_each_other(
    tmp_path: Path,
) -> None:
    nb = notebook(
        "%load_ext durable_nb",
        "alpha = 1",
        "import time\nfrom durable_nb import step\n@step\ndef work(i):\n"
        "    with open(f'calls-{i}.txt', 'a') as f:\n        f.write('x')\n"
        "    time.sleep(0.3)\n    return i\n",
        "%%durable sweep\nvals = [work(alpha * 10 + i) for i in range(3)]\nprint(vals)",
        tags={1: ["parameters"]},
    )
    nbformat.write(nb, str(tmp_path / "in.ipynb"))
    env = kernel_env()
    env.pop("DURABLE_NB_NOTEBOOK", None)
    papermill = [sys.executable, "-m", "papermill", "--cwd", str(tmp_path), "-k", "python3"]

    def start(alpha: int) -> subprocess.Popen[str]:
        out = str(tmp_path / f"out{alpha}.ipynb")
        cmd = [*papermill, str(tmp_path / "in.ipynb"), out, "-p", "alpha", str(alpha)]
        return subprocess.Popen(
            cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )

    runs = [start(alpha) for alpha in (1, 2, 3)]  # at the same time, one default log
    for proc in runs:
        _, err = proc.communicate(timeout=240)
        assert proc.returncode == 0, err[-2000:]
    assert sorted(p.name for p in tmp_path.glob("calls-*.txt")) == sorted(
        f"calls-{a * 10 + i}.txt" for a in (1, 2, 3) for i in range(3)
    )
    again = start(2)
    _, err = again.communicate(timeout=240)
    assert again.returncode == 0, err[-2000:]
    text = "".join(
        o.get("text", "") for o in nbformat.read(str(tmp_path / "out2.ipynb"), 4).cells[4].outputs
    )
    assert "[20, 21, 22]" in text and re.search(r"sweep@\w{8}: skipped, unchanged", text)
    assert all(p.read_text() == "x" for p in tmp_path.glob("calls-*.txt"))  # nothing ran twice
