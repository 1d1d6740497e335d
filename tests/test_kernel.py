"""``%%durable`` in real ipykernel processes: crash, Run All, skip, await, errors, Ctrl-C."""

from __future__ import annotations

import json
import re
import sqlite3
import time
from pathlib import Path

import pytest
from nbclient.exceptions import CellExecutionError

from .conftest import executions
from .kernels import Kernel, cell_text, kernel_env, notebook, run_all

SETUP = "%load_ext durable_nb"
# How long each step sleeps is read from slow.json (a file replay does not see), so the tests
# can make a step slow in one kernel and fast in the next without changing its dependencies.
STEPS = """\
import json, time
from durable_nb import step

@step
def work(i):
    with open("counter.txt", "a") as f:
        f.write(f"{i}\\n")
    print(f"step {i}")
    with open("slow.json") as f:
        time.sleep(json.load(f).get(str(i), 0.01))
    return i * i
"""


def slow(folder: Path, **seconds: float) -> None:
    """Make steps sleep: ``slow(folder, **{"6": 30})``; ``slow(folder)`` makes all quick."""
    (folder / "slow.json").write_text(json.dumps(seconds))


SWEEP = """\
%%durable ten
squares = [work(i) for i in range(1, 11)]
total = sum(squares)
print("total", total)
"""
EXPECTED = [i * i for i in range(1, 11)]


def wait_for_step(folder: Path, i: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while executions(folder).get(i, 0) < 1:
        assert time.monotonic() < deadline, f"step {i} never started"
        time.sleep(0.02)


def test_sigkill_during_step_then_run_all_resumes_then_skips(tmp_path: Path) -> None:
    nb_path = tmp_path / "sweep.ipynb"
    env = kernel_env(nb_path)
    kernel = Kernel(tmp_path, env)
    try:
        assert kernel.execute(SETUP).status == "ok"
        slow(tmp_path, **{"6": 30})
        assert kernel.execute(STEPS).status == "ok"
        kernel.send(SWEEP)
        wait_for_step(tmp_path, 6)
    finally:
        kernel.kill()
    assert executions(tmp_path) == {i: 1 for i in range(1, 7)}

    slow(tmp_path)
    nb = notebook(SETUP, STEPS, SWEEP, "print(squares, total)")
    run_all(nb, tmp_path, env)
    # steps 1-5 replayed (not executed again), 6 ran again, 7-10 ran once
    assert executions(tmp_path) == {i: (2 if i == 6 else 1) for i in range(1, 11)}
    out = cell_text(nb.cells[2])
    assert "[replayed] step 5" in out and "[replayed] step 6" not in out
    assert "ten: 5 steps replayed, 5 run" in out
    assert "log .durable/sweep.db" in out
    assert cell_text(nb.cells[3]) == f"{EXPECTED} {sum(EXPECTED)}\n"
    log = tmp_path / ".durable" / "sweep.db"
    statuses = [r[0] for r in sqlite3.connect(log).execute("SELECT status FROM runs ORDER BY id")]
    assert statuses == ["crashed", "completed"]

    again = notebook(SETUP, STEPS, SWEEP, "print(squares, total)")
    run_all(again, tmp_path, env)
    assert executions(tmp_path) == {i: (2 if i == 6 else 1) for i in range(1, 11)}  # nothing ran
    skipped = cell_text(again.cells[2])
    assert "ten: skipped, unchanged since run 2; 2 variables restored" in skipped
    assert "[replayed] total 385\n" in skipped  # the cell's own output, shown again, marked
    assert cell_text(again.cells[3]) == f"{EXPECTED} {sum(EXPECTED)}\n"


def test_top_level_await_in_a_durable_cell(tmp_path: Path) -> None:
    env = kernel_env(tmp_path / "agents.ipynb")
    nb = notebook(
        SETUP,
        "import asyncio\nfrom durable_nb import step\ncalls = []\n"
        "@step\nasync def fetch(i):\n    calls.append(i)\n    await asyncio.sleep(0.05)\n"
        "    return i * 10\n",
        "%%durable agents\nvalues = await asyncio.gather(*(fetch(i) for i in range(5)))\n"
        "await asyncio.sleep(0)\nvalues",
        "%%durable agents --force\nvalues = await asyncio.gather(*(fetch(i) for i in range(5)))\n"
        "await asyncio.sleep(0)\nvalues",
        "print(calls)",
    )
    run_all(nb, tmp_path, env)
    assert "[0, 10, 20, 30, 40]" in cell_text(nb.cells[2])
    assert "agents: 0 steps replayed, 5 run" in cell_text(nb.cells[2])
    assert "agents: 5 steps replayed, 0 run" in cell_text(nb.cells[3])
    assert cell_text(nb.cells[4]) == "[0, 1, 2, 3, 4]\n"


def test_an_exception_fails_the_cell_and_stops_run_all(tmp_path: Path) -> None:
    env = kernel_env(tmp_path / "broken.ipynb")
    nb = notebook(
        SETUP,
        "%%durable broken\nx = 1\nraise ValueError('bad data in row 7')\n",
        "print('must not run')",
    )
    with pytest.raises(CellExecutionError) as info:
        run_all(nb, tmp_path, env)
    assert "ValueError" in str(info.value) and "bad data in row 7" in str(info.value)
    error = next(o for o in nb.cells[1].outputs if o.output_type == "error")
    shown = re.sub(r"\x1b\[[0-9;]*m", "", "\n".join(error.traceback))
    assert "raise ValueError('bad data in row 7')" in shown  # the user's line
    assert "%%durable broken" in shown
    assert "durable_nb/" not in shown  # not our internals
    assert nb.cells[2].outputs == []


def test_durable_errors_are_one_line(tmp_path: Path) -> None:
    env = kernel_env(tmp_path / "bad.ipynb")
    kernel = Kernel(tmp_path, env)
    try:
        kernel.execute(SETUP)
        reply = kernel.execute("%%durable 'no spaces allowed'\n1\n")
        assert reply.status == "error"
        assert "invalid workflow name" in reply.stderr + str(reply.error)
        reply = kernel.execute("%%durable --bogus\n1\n")
        assert reply.status == "error" and "unrecognized arguments: --bogus" in reply.stderr
        reply = kernel.execute("%durable forget nothing-here")
        assert reply.status == "error" and "no workflow 'nothing-here'" in reply.stderr
        (tmp_path / "notes.txt").write_text("not a database")
        reply = kernel.execute("import durable_nb\ndurable_nb.Store('notes.txt')")
        assert reply.status == "error" and reply.error is not None
        assert reply.error["traceback"] == [
            f"LogFileError: {tmp_path / 'notes.txt'} is not a SQLite file, so it cannot be a "
            "durable_nb log; move it aside or pick another log with %durable open PATH"
        ]
    finally:
        kernel.close()


def test_interrupt_during_a_step_then_rerun_resumes(tmp_path: Path) -> None:
    env = kernel_env(tmp_path / "ctrlc.ipynb")
    kernel = Kernel(tmp_path, env)
    try:
        kernel.execute(SETUP)
        slow(tmp_path, **{"3": 30})
        kernel.execute(STEPS)
        msg_id = kernel.send(SWEEP)
        wait_for_step(tmp_path, 3)
        time.sleep(0.2)
        kernel.km.interrupt_kernel()
        reply = kernel.wait(msg_id)
        assert reply["content"]["status"] == "error"
        assert reply["content"]["ename"] == "KeyboardInterrupt"
        slow(tmp_path)
        again = kernel.execute(SWEEP)
        assert again.status == "ok", again.error
        assert "ten: 2 steps replayed, 8 run" in again.stdout
    finally:
        kernel.close()
    assert executions(tmp_path) == {i: (2 if i == 3 else 1) for i in range(1, 11)}
    conn = sqlite3.connect(tmp_path / ".durable" / "ctrlc.db")
    assert [r[0] for r in conn.execute("SELECT status FROM runs ORDER BY id")] == [
        "interrupted",
        "completed",
    ]
    step3 = conn.execute("SELECT status FROM steps WHERE args_repr = '3' ORDER BY id").fetchall()
    assert step3 == [("interrupted",), ("completed",)]


def test_cell_skip_follows_the_variables_it_reads(tmp_path: Path) -> None:
    env = kernel_env(tmp_path / "skip.ipynb")
    kernel = Kernel(tmp_path, env)
    cell = "%%durable scaled\nscaled = [work(i) * factor for i in range(1, 4)]\nprint(scaled)"
    try:
        kernel.execute(SETUP)
        slow(tmp_path)
        kernel.execute(STEPS)
        kernel.execute("factor = 2")
        first = kernel.execute(cell)
        assert "[2, 8, 18]" in first.stdout and "3 run" in first.stdout
        same = kernel.execute(cell)
        assert "skipped" in same.stdout and "[2, 8, 18]" in same.stdout
        kernel.execute("factor = 3")
        changed = kernel.execute(cell)
        assert ": skipped" not in changed.stdout
        assert "[3, 12, 27]" in changed.stdout and "3 steps replayed, 0 run" in changed.stdout
        forced = kernel.execute(cell.replace("scaled\n", "scaled --force\n", 1))
        assert "3 steps replayed, 0 run" in forced.stdout
        fresh = kernel.execute(cell.replace("scaled\n", "scaled --fresh\n", 1))
        assert "0 steps replayed, 3 run" in fresh.stdout
        info = kernel.execute("%durable info")
        assert "found by: notebook from DURABLE_NB_NOTEBOOK" in info.stdout
        assert "workflow scaled: 4 runs, last completed" in info.stdout
        table = kernel.execute("%durable log scaled")
        assert table.status == "ok" and "<table" in table.results[0]["text/html"]
        assert "work" in table.results[0]["text/html"]
        plot = kernel.execute("%durable timeline scaled")
        assert plot.status == "ok" and "image/png" in plot.results[0]
    finally:
        kernel.close()
    assert executions(tmp_path) == {1: 2, 2: 2, 3: 2}


def test_rich_output_is_restored_on_skip(tmp_path: Path) -> None:
    env = kernel_env(tmp_path / "rich.ipynb")
    cells = (
        SETUP,
        "import pandas as pd\nfrom IPython.display import display, HTML\n",
        "%%durable table\ndf = pd.DataFrame({'a': [1, 2]})\ndisplay(HTML('<b>hi</b>'))\ndf",
    )
    first = run_all(notebook(*cells), tmp_path, env)
    second = run_all(notebook(*cells), tmp_path, env)
    kinds = [(o.output_type, sorted(o.get("data", {}))) for o in first.cells[2].outputs]
    again = [(o.output_type, sorted(o.get("data", {}))) for o in second.cells[2].outputs]
    assert ("display_data", ["text/html", "text/plain"]) in kinds
    assert ("execute_result", ["text/html", "text/plain"]) in kinds
    assert [k for k in again if k[0] != "stream"] == [k for k in kinds if k[0] != "stream"]
    html = next(o for o in second.cells[2].outputs if o.output_type == "execute_result")
    assert "<table" in html.data["text/html"]
    assert "skipped" in cell_text(second.cells[2])


def test_load_twice_and_unload(tmp_path: Path) -> None:
    kernel = Kernel(tmp_path, kernel_env(tmp_path / "x.ipynb"))
    try:
        assert kernel.execute(SETUP).status == "ok"
        assert kernel.execute(SETUP).status == "ok"
        assert kernel.execute("%%durable once\nx = 1\n").stdout.count("once:") == 1
        assert kernel.execute("%unload_ext durable_nb").status == "ok"
        reply = kernel.execute("%durable info")
        assert reply.status == "error"
        assert kernel.execute(SETUP).status == "ok"
        assert kernel.execute("%durable info").status == "ok"
    finally:
        kernel.close()


def test_durable_nb_run_cli(tmp_path: Path) -> None:
    import subprocess
    import sys

    import nbformat

    nb_path = tmp_path / "job.ipynb"
    slow(tmp_path)
    nbformat.write(notebook(SETUP, STEPS, SWEEP.replace("ten", "job")), str(nb_path))
    cmd = [sys.executable, "-m", "durable_nb.cli", "run", str(nb_path)]
    first = subprocess.run(cmd, env=kernel_env(), capture_output=True, text=True, timeout=180)
    assert first.returncode == 0, first.stderr
    assert f"log: {tmp_path / '.durable' / 'job.db'}" in first.stdout
    assert "total 385" in first.stdout
    second = subprocess.run(cmd, env=kernel_env(), capture_output=True, text=True, timeout=180)
    assert "job: skipped" in second.stdout

    bad = tmp_path / "bad.ipynb"
    nbformat.write(notebook("raise RuntimeError('nope')", "print('after')"), str(bad))
    failed = subprocess.run(
        [sys.executable, "-m", "durable_nb.cli", "run", str(bad)],
        env=kernel_env(), capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert failed.returncode == 1
    assert "cell 1 (raise RuntimeError('nope')) failed: RuntimeError: nope" in failed.stderr
    assert "after" not in failed.stdout


def test_a_lost_cell_blob_runs_the_cell_again(tmp_path: Path) -> None:
    import shutil

    kernel = Kernel(tmp_path, kernel_env(tmp_path / "big.ipynb"))
    cell = "%%durable big\narr = bytes(3_000_000)\nprint(len(arr))"
    try:
        kernel.execute(SETUP)
        assert "big: 0 steps replayed" in kernel.execute(cell).stdout
        assert "big: skipped" in kernel.execute(cell).stdout
        shutil.rmtree(tmp_path / ".durable" / "big.blobs")
        again = kernel.execute(cell)
        assert again.status == "ok", again.error
        assert "cannot restore the saved cell" in again.stdout and "is missing" in again.stdout
        assert "3000000" in again.stdout and "big: 0 steps replayed" in again.stdout
    finally:
        kernel.close()
