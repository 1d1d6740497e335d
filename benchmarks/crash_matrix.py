"""Crash matrix: a 200-step workflow SIGKILLed at N random moments, rerun until done.

Results mix small values (in the log) and 1.1 MiB values (blob files), so kills land inside
commits and inside blob writes. Counted over all kills:

- kills, and how many landed inside a blob write (a temporary blob file was left)
- cycles: workflows driven to completion through the kills
- resumed: restarts that skipped every step committed before the kill (must be 100 %)
- double executions: completed steps executed again (must be 0)
- integrity failures: ``PRAGMA integrity_check`` not ok after a kill (must be 0)
- mismatches: final results differing from an uninterrupted run (must be 0)
- orphan blobs: blob files no row points to (written, then killed before the row committed)
  and how many ``Store.collect_blobs`` removes once the process is gone (left: must be 0)

Usage: python benchmarks/crash_matrix.py [-n 100] [--seed 1] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import durable_nb
from durable_nb.log.sql import referenced_blobs

ROOT = Path(__file__).resolve().parent.parent
STEPS = 200

WORKER = r"""
import hashlib, os, sys
import durable_nb
from durable_nb import step, workflow

folder = sys.argv[1]
os.environ["ATTEMPT"] = sys.argv[2]

@step
def work(i):
    # The attempt number comes from the environment, which replay does not see: a global
    # that changes with every attempt would be a dependency of the step.
    with open(f"{folder}/executions.txt", "a") as counter:
        counter.write(f"{os.environ['ATTEMPT']} {i}\n")
    total = sum(range(20_000 + i))
    if i % 10 == 9:
        return bytes([i % 256]) * (1_100_000 + i)   # a blob file
    return {"i": i, "total": total}

with workflow("matrix", store=durable_nb.Store(f"{folder}/.durable/matrix.db")) as run:
    results = [work(i) for i in range(STEPS)]
print("replayed", run.steps_replayed)
print("digest", hashlib.sha256(repr(results).encode()).hexdigest())
""".replace("STEPS", str(STEPS))


def start(folder: Path, attempt: int) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(
        [sys.executable, "-c", WORKER, str(folder), str(attempt)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def committed(log: Path) -> set[int]:
    if not log.exists():
        return set()
    conn = sqlite3.connect(log)
    try:
        rows = conn.execute(
            "SELECT args_repr FROM steps WHERE workflow = 'matrix' AND status = 'completed'"
        ).fetchall()
    except sqlite3.OperationalError as exc:  # killed before its schema was created
        if "no such table" not in str(exc):
            raise
        rows = []
    finally:
        conn.close()
    return {int(r[0]) for r in rows}


def integrity(log: Path) -> str:
    if not log.exists():
        return "ok"
    conn = sqlite3.connect(log)
    try:
        return conn.execute("PRAGMA integrity_check").fetchone()[0]
    finally:
        conn.close()


def executions(folder: Path) -> list[tuple[int, int]]:
    path = folder / "executions.txt"
    if not path.exists():
        return []
    return [tuple(map(int, line.split())) for line in path.read_text().splitlines() if line]  # type: ignore[misc]


def orphans(folder: Path) -> int:
    log = folder / ".durable" / "matrix.db"
    blobs = folder / ".durable" / "matrix.blobs"
    if not blobs.exists():
        return 0
    conn = sqlite3.connect(log)
    try:
        referenced = referenced_blobs(conn)
    finally:
        conn.close()
    files = [p for p in blobs.glob("??/*")]
    return sum(1 for p in files if p.name.startswith(".tmp-") or p.name not in referenced)


def partial_blobs(folder: Path) -> set[str]:
    """The temporary files of blob writes in the folder (one is left by a kill mid-write)."""
    return {p.name for p in (folder / ".durable" / "matrix.blobs").glob("??/.tmp-*")}


def collect(folder: Path) -> int:
    """Blob files removed by ``collect_blobs`` once the cycle's process is gone."""
    with durable_nb.Store(folder / ".durable" / "matrix.db") as store:
        return store.collect_blobs(grace=0).files


def tally_orphans(figures: dict[str, float], folder: Path) -> None:
    figures["orphan_blobs"] += orphans(folder)
    figures["gc_removed"] += collect(folder)
    figures["orphans_after_gc"] += orphans(folder)


def run_matrix(n: int, seed: int) -> dict[str, float]:
    rng = random.Random(seed)
    base = Path(tempfile.mkdtemp(prefix="dnb-matrix-"))
    try:
        reference = base / "reference"
        (reference / ".durable").mkdir(parents=True)
        t0 = time.perf_counter()
        out, _ = start(reference, 0).communicate(timeout=300)
        duration = time.perf_counter() - t0
        expected = out.strip().splitlines()[-1]

        figures = dict.fromkeys(
            ("kills", "in_blob_write", "cycles", "restarts", "resumed", "double_executions",
             "integrity_failures", "mismatches", "orphan_blobs", "gc_removed",
             "orphans_after_gc"), 0,
        )  # fmt: skip
        cycle, attempt = 0, 0
        folder = base / f"cycle{cycle}"
        (folder / ".durable").mkdir(parents=True)
        snapshot: dict[int, set[int]] = {}  # attempt -> steps committed before it started
        while figures["kills"] < n:
            attempt += 1
            snapshot[attempt] = committed(folder / ".durable" / "matrix.db")
            partial_before = partial_blobs(folder)
            proc = start(folder, attempt)
            time.sleep(rng.uniform(0.05, duration))
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                figures["kills"] += 1
                figures["in_blob_write"] += bool(partial_blobs(folder) - partial_before)
                if integrity(folder / ".durable" / "matrix.db") != "ok":
                    figures["integrity_failures"] += 1
                continue
            out, err = proc.communicate()
            if proc.returncode != 0:
                raise RuntimeError(f"attempt {attempt} of the workflow failed:\n{err[-3000:]}")
            figures["mismatches"] += out.strip().splitlines()[-1] != expected if out else 1
            tally_orphans(figures, folder)
            figures = _score(figures, folder, snapshot)
            figures["cycles"] += 1
            cycle += 1
            folder = base / f"cycle{cycle}"
            (folder / ".durable").mkdir(parents=True)
            snapshot = {}
        # finish the last cycle without killing
        attempt += 1
        snapshot[attempt] = committed(folder / ".durable" / "matrix.db")
        last = start(folder, attempt)
        out, err = last.communicate(timeout=300)
        if last.returncode != 0:
            raise RuntimeError(f"the last attempt of the workflow failed:\n{err[-3000:]}")
        figures["mismatches"] += out.strip().splitlines()[-1] != expected
        tally_orphans(figures, folder)
        figures = _score(figures, folder, snapshot)
        figures["cycles"] += 1
        figures["seconds_uninterrupted"] = round(duration, 2)
        return figures
    finally:
        shutil.rmtree(base, ignore_errors=True)


def _score(
    figures: dict[str, float], folder: Path, snapshot: dict[int, set[int]]
) -> dict[str, float]:
    """Count restarts, resumed restarts and double executions of one cycle."""
    by_attempt: dict[int, set[int]] = {}
    for attempt, step in executions(folder):
        by_attempt.setdefault(attempt, set()).add(step)
    for attempt, done_before in snapshot.items():
        ran = by_attempt.get(attempt, set())
        doubles = len(ran & done_before)
        figures["double_executions"] += doubles
        if done_before:
            figures["restarts"] += 1
            figures["resumed"] += doubles == 0
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=100, help="number of SIGKILLs")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args()
    figures = run_matrix(args.n, args.seed)
    if args.json:
        print(json.dumps(figures))
        return
    restarts = figures["restarts"] or 1
    print(f"crash matrix: {STEPS}-step workflow, {figures['kills']} SIGKILLs at random moments "
          f"(uninterrupted run {figures['seconds_uninterrupted']} s)")  # fmt: skip
    print(f"  kills inside a blob write:   {figures['in_blob_write']}")
    print(f"  cycles run to completion:    {figures['cycles']}")
    print(f"  resumed restarts:            {figures['resumed']}/{figures['restarts']} "
          f"({100 * figures['resumed'] / restarts:.0f} %)")  # fmt: skip
    print(f"  completed steps run twice:   {figures['double_executions']}   (must be 0)")
    print(f"  integrity_check failures:    {figures['integrity_failures']}   (must be 0)")
    print(f"  final results mismatching:   {figures['mismatches']}   (must be 0)")
    print(f"  orphan blob files left:      {figures['orphan_blobs']}; removed by collect_blobs: "
          f"{figures['gc_removed']}, left after it: {figures['orphans_after_gc']}")  # fmt: skip


if __name__ == "__main__":
    main()
