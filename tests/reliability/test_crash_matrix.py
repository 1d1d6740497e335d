"""The crash matrix, small enough for every test run (the script runs it bigger)."""

from __future__ import annotations

import json
import random
import subprocess
import sys
import time
from pathlib import Path

from ..conftest import ROOT, integrity
from ..kernels import Kernel, kernel_env


def test_crash_matrix_20_kills() -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "crash_matrix.py"), "-n", "20", "--json"],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    figures = json.loads(done.stdout)
    assert figures["kills"] == 20
    assert figures["double_executions"] == 0
    assert figures["integrity_failures"] == 0
    assert figures["mismatches"] == 0
    assert figures["restarts"] > 0 and figures["resumed"] == figures["restarts"]
    assert figures["cycles"] >= 1
    assert figures["gc_removed"] == figures["orphan_blobs"]  # every orphan is collected
    assert figures["orphans_after_gc"] == 0


# The attempt number is read from a file: a global that changes with every attempt would be a
# dependency of the step (and rightly make it run again).
SETUP = """\
import time
from durable_nb import step
@step
def work(i):
    with open("attempt.txt") as f:
        attempt = f.read()
    with open("executions.txt", "a") as f:
        f.write(f"{attempt} {i}\\n")
    time.sleep(0.01 + (i % 7) * 0.004)
    return i * i
"""
# The cell says when its code has started, and ends in a pause: an interrupt is sent only
# while the cell's own code runs. One landing in ipykernel's handling of the request, before
# or after the code (a few ms), makes ipykernel log "KeyboardInterrupt caught in kernel." and
# send no execute_reply at all: its window, not ours, and a hang for the test.
CELL = (
    "%%durable sixty\n"
    "open('started.txt', 'w').write(open('attempt.txt').read())\n"
    "squares = [work(i) for i in range(60)]\n"
    "print(sum(squares))\n"
    "time.sleep(1.0)"
)


def executions(folder: Path) -> list[tuple[int, int]]:
    path = folder / "executions.txt"
    if not path.exists():
        return []
    return [tuple(map(int, line.split())) for line in path.read_text().split("\n") if line]  # type: ignore[misc]


def committed(log: Path) -> set[int]:
    import sqlite3

    if not log.exists():
        return set()
    conn = sqlite3.connect(log)
    try:
        rows = conn.execute("SELECT args_repr FROM steps WHERE status = 'completed'").fetchall()
    except sqlite3.OperationalError as exc:  # killed before its schema was created
        if "no such table" not in str(exc):
            raise
        rows = []
    finally:
        conn.close()
    return {int(r[0]) for r in rows}


def started(folder: Path, attempt: int, timeout: float = 60) -> None:
    """Wait until the cell's own code runs in this attempt."""
    marker = folder / "started.txt"
    deadline = time.monotonic() + timeout
    while not (marker.exists() and marker.read_text() == str(attempt)):
        assert time.monotonic() < deadline, f"attempt {attempt}: the cell never started"
        time.sleep(0.005)


def drive(folder: Path, disrupt: str, n: int, seed: int) -> None:
    """Run the cell, disrupt it (kill the kernel or interrupt it) at random moments, n
    times, then let it finish; no completed step may ever run again."""
    rng = random.Random(seed)
    log = folder / ".durable" / "nb.db"
    env = kernel_env(folder / "nb.ipynb")
    snapshots: dict[int, set[int]] = {}
    kernel = None
    for attempt in range(1, n + 2):
        if kernel is None:
            kernel = Kernel(folder, env)
            kernel.execute("%load_ext durable_nb")
        (folder / "attempt.txt").write_text(str(attempt))
        kernel.execute(SETUP)
        snapshots[attempt] = committed(log)
        msg_id = kernel.send(CELL)
        if attempt == n + 1:
            reply = kernel.wait(msg_id, timeout=120)
            assert reply["content"]["status"] == "ok"
            break
        if disrupt == "interrupt":
            started(folder, attempt)
        time.sleep(rng.uniform(0.0, 0.9))
        if disrupt == "kill":
            kernel.kill()
            kernel = None
        else:
            kernel.km.interrupt_kernel()
            kernel.wait(msg_id, timeout=60)
        if log.exists():  # (a kill before the cell opened the log leaves none to check)
            assert integrity(log) == "ok"
    assert kernel is not None
    result = kernel.execute("print(squares == [i * i for i in range(60)])")
    kernel.close()
    assert result.stdout.strip() == "True"
    for attempt, step in executions(folder):
        assert step not in snapshots[attempt], f"step {step} ran again in attempt {attempt}"
    assert {s for _, s in executions(folder)} == set(range(60))


def test_kernel_sigkill_at_random_moments(tmp_path: Path) -> None:
    drive(tmp_path, "kill", n=4, seed=7)


def test_kernel_interrupt_at_random_moments(tmp_path: Path) -> None:
    drive(tmp_path, "interrupt", n=20, seed=11)
    import sqlite3

    conn = sqlite3.connect(tmp_path / ".durable" / "nb.db")
    statuses = [r[0] for r in conn.execute("SELECT status FROM runs ORDER BY id")]
    assert statuses[-1] == "completed"
    assert set(statuses[:-1]) <= {"interrupted", "completed"}
