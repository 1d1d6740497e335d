"""kill -9 of a process in the middle of a 50-step workflow, then a rerun that resumes."""

from __future__ import annotations

import signal
import sqlite3
import time
from pathlib import Path

import pytest

from .conftest import executions, integrity, log_sql, python

# Each step appends its number to a side file before working: the count of lines per
# number is how many times it really executed, whatever the log says.
SCRIPT = r"""
import os, sys, time
import durable_nb
from durable_nb import step, workflow
from durable_nb.log.stores import open_store

log, counter = sys.argv[1], sys.argv[2]
store = open_store(log)

@step
def work(i):
    with open(counter, "a") as f:
        f.write(f"{i}\n")
    print(f"start {i}", flush=True)
    time.sleep(0.02)
    if i % 10 == 7:
        return bytes([i]) * (1_200_000 + i)     # stored as a blob
    return {"i": i, "square": i * i}

with workflow("fifty", store=store) as run:
    results = [work(i) for i in range(50)]
print("done", run.steps_run, run.steps_replayed, flush=True)
import hashlib
print("digest", hashlib.sha256(repr(results).encode()).hexdigest())
"""


def run_until(tmp_path: Path, kill_at: int | None, log: Path | str = "x.db") -> str:
    """Run the workflow; SIGKILL it once step ``kill_at`` has started. Returns stdout."""
    proc = python(SCRIPT, str(log), "counter.txt", cwd=tmp_path)
    assert proc.stdout is not None
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if kill_at is not None and line.strip() == f"start {kill_at}":
            proc.send_signal(signal.SIGKILL)
            break
    proc.wait(timeout=60)
    if kill_at is None:
        assert proc.returncode == 0, proc.stderr.read() if proc.stderr else ""
    else:
        assert proc.returncode == -signal.SIGKILL
    return "".join(lines)


@pytest.mark.parametrize("kill_points", [(0,), (5, 17, 18), (7, 27, 49)])
def test_kill_and_resume(
    tmp_path: Path, log_target: Path | str, kill_points: tuple[int, ...]
) -> None:
    """On SQLite and on PostgreSQL (whose killed session's lock frees the run at once)."""
    reference = tmp_path / "reference"
    reference.mkdir()
    expected = run_until(reference, None).splitlines()[-1]
    log = log_target if isinstance(log_target, str) else tmp_path / "x.db"

    for point in kill_points:
        run_until(tmp_path, point, log)
        if isinstance(log, Path):
            assert integrity(log) == "ok"
    out = run_until(tmp_path, None, log)
    done, digest_line = out.splitlines()[-2:]
    assert digest_line == expected  # same results as an uninterrupted run

    seen = executions(tmp_path)
    assert sorted(seen) == list(range(50))
    # the steps that were killed ran twice; every other step exactly once
    assert {i for i, n in seen.items() if n > 1} == set(kill_points)
    assert all(n == 2 for i, n in seen.items() if i in kill_points)
    steps_before_last_kill = max(kill_points)
    assert done == f"done {50 - steps_before_last_kill} {steps_before_last_kill}"

    conn = log_sql(log)
    statuses = [r[0] for r in conn.execute("SELECT status FROM runs ORDER BY id")]
    assert statuses == ["crashed"] * len(kill_points) + ["completed"]
    if isinstance(log, Path):
        assert integrity(log) == "ok"


def test_a_crashed_run_keeps_its_record(tmp_path: Path) -> None:
    """Its steps run, and its end when its last step ended, not when the crash was noticed."""
    run_until(tmp_path, kill_at=5)  # steps 0-4 completed, 5 started
    killed = time.time()
    time.sleep(1.0)
    conn = sqlite3.connect(tmp_path / "x.db")
    last_step = conn.execute("SELECT max(ended_at) FROM steps").fetchone()[0]
    conn.close()
    from durable_nb import Store

    with Store(tmp_path / "x.db") as store:  # opening it notices the crash
        (run,) = store.runs("fifty")
    assert run.status == "crashed" and run.steps_run == 5
    assert run.ended_at == last_step and run.ended_at <= killed
