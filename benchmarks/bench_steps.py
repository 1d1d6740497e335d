"""Sync step costs, each against its baseline measured in the same run.

1. Checkpoint overhead of a step with a small result vs a raw sqlite3 INSERT + COMMIT on a
   file with the same pragmas (WAL, synchronous=NORMAL). Target ratio <= 2.0.
2. Replay cost per completed step (target <= 10 us) and a 10,000-step replay (< 0.2 s).
3. Store and load of a 100 MiB numpy array result vs joblib.Memory (target <= 1.5x each).
4. Dependencies: a step calling 3 helpers and reading 3 globals, one a 10 MB numpy array;
   checkpoint overhead per call vs a raw commit (target <= 2.5x), replay per call, and the
   first call of a run (which hashes the array once).

Usage: python benchmarks/bench_steps.py [--repeat 7]
"""

from __future__ import annotations

import argparse
import gc
import os
import shutil
import sqlite3
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from joblib import Memory

import durable_nb
from durable_nb import Store, step, workflow


def settle() -> None:
    """Start each measurement alike: no garbage to collect, no dirty pages being written."""
    gc.collect()
    os.sync()


def raw_commit_us(folder: Path, n: int, autocheckpoint: int = 1000) -> float:
    """Per-row cost of INSERT + COMMIT of a small row, WAL and synchronous=NORMAL, with
    SQLite's automatic checkpoint (1000, the default) or without it (0)."""
    settle()
    conn = sqlite3.connect(folder / f"raw{autocheckpoint}.db")
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = NORMAL")
    conn.execute(f"PRAGMA wal_autocheckpoint = {autocheckpoint}")
    conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, k TEXT, v BLOB)")
    conn.commit()
    payload = b"\x80\x05K*." * 4
    t0 = time.perf_counter()
    for i in range(n):
        conn.execute("INSERT INTO t (k, v) VALUES (?, ?)", (f"k{i}", payload))
        conn.commit()
    elapsed = time.perf_counter() - t0
    conn.close()
    return elapsed / n * 1e6


def small(i: int) -> dict[str, float]:
    return {"i": i, "loss": i * 0.5}


durable_small = step(small)


def step_overhead_us(folder: Path, n: int) -> tuple[float, float]:
    """(per-step cost inside a workflow, per-call cost of the plain function)."""
    store = Store(folder / "steps.db")
    settle()
    t0 = time.perf_counter()
    for i in range(n):
        small(i)
    plain = (time.perf_counter() - t0) / n * 1e6
    with workflow("overhead", store=store):
        t0 = time.perf_counter()
        for i in range(n):
            durable_small(i)
        durable = (time.perf_counter() - t0) / n * 1e6
    store.close()
    return durable, plain


def replay_cost(folder: Path, n: int) -> tuple[float, float]:
    """(us per replayed step, seconds for a whole n-step workflow replay incl. its start)."""
    store = Store(folder / "replay.db")
    with workflow("replay", store=store):
        for i in range(n):
            durable_small(i)
    t0 = time.perf_counter()
    with workflow("replay", store=store) as run:
        t1 = time.perf_counter()
        for i in range(n):
            durable_small(i)
        t2 = time.perf_counter()
    total = time.perf_counter() - t0
    assert run.steps_replayed == n and run.steps_run == 0
    store.close()
    return (t2 - t1) / n * 1e6, total


RATE = 0.5
NAMES = ("a", "b", "c")
WEIGHTS = np.random.default_rng(1).random(10 * 2**20 // 8)  # 10 MB, hashed once per run


def scale(x: float) -> float:
    return x * RATE


def offset(x: float) -> float:
    return x + len(NAMES)


def pick(i: int) -> float:
    return float(WEIGHTS[i % 1000])


def rich(i: int) -> dict[str, float]:
    return {"i": i, "v": scale(i) + offset(i) + pick(i)}


durable_rich = step(rich)


def dependencies_us(folder: Path, n: int) -> tuple[float, float, float, float]:
    """(us per checkpointed call, us per plain call, us per replayed call, ms of the first
    call of a replaying run) for the step with helpers and globals."""
    store = Store(folder / "deps.db")
    settle()
    t0 = time.perf_counter()
    for i in range(n):
        rich(i)
    plain = (time.perf_counter() - t0) / n * 1e6
    with workflow("deps", store=store):
        t0 = time.perf_counter()
        for i in range(n):
            durable_rich(i)
        durable = (time.perf_counter() - t0) / n * 1e6
    with workflow("deps", store=store) as run:
        t0 = time.perf_counter()
        durable_rich(0)
        first = (time.perf_counter() - t0) * 1e3
        t0 = time.perf_counter()
        for i in range(1, n):
            durable_rich(i)
        replay = (time.perf_counter() - t0) / (n - 1) * 1e6
    assert run.steps_replayed == n
    store.close()
    return durable, plain, replay, first


BIG = np.random.default_rng(0).random(100 * 2**20 // 8)


def big_result(i: int) -> np.ndarray:
    return BIG


def big_durable(folder: Path, i: int) -> tuple[float, float]:
    store = Store(folder / f"big{i}.db")
    fn = step(big_result)
    with workflow("big", store=store):
        t0 = time.perf_counter()
        fn(i)
        stored = time.perf_counter() - t0
    with workflow("big", store=store):
        t0 = time.perf_counter()
        value = fn(i)
        loaded = time.perf_counter() - t0
    assert value.shape == BIG.shape
    store.close()
    return stored, loaded


def big_joblib(folder: Path, i: int) -> tuple[float, float]:
    mem = Memory(folder / f"joblib{i}", verbose=0)
    fn = mem.cache(big_result)
    t0 = time.perf_counter()
    fn(i)
    stored = time.perf_counter() - t0
    t0 = time.perf_counter()
    value = fn(i)
    loaded = time.perf_counter() - t0
    assert value.shape == BIG.shape
    return stored, loaded


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("-n", type=int, default=3000, help="steps per overhead measurement")
    args = parser.parse_args()
    print(f"durable_nb {durable_nb.__version__}, sqlite {sqlite3.sqlite_version}, "
          f"median of {args.repeat} runs")  # fmt: skip

    raw, raw_off, ours, plain, replay_us, replay_10k = [], [], [], [], [], []
    big_ours, big_job, deps = [], [], []
    for r in range(args.repeat):
        folder = Path(tempfile.mkdtemp(prefix="dnb-bench-"))
        try:
            if r % 2:  # alternate the order: neither side always runs on a warmer machine
                d, p = step_overhead_us(folder, args.n)
            raw.append(raw_commit_us(folder, args.n))
            raw_off.append(raw_commit_us(folder, args.n, autocheckpoint=0))
            if not r % 2:
                d, p = step_overhead_us(folder, args.n)
            ours.append(d)
            plain.append(p)
            deps.append(dependencies_us(folder, args.n))
            us, total = replay_cost(folder, 10_000)
            replay_us.append(us)
            replay_10k.append(total)
            big_job.append(big_joblib(folder, r))
            big_ours.append(big_durable(folder, r))
        finally:
            shutil.rmtree(folder)

    med = statistics.median
    overhead = med(ours) - med(plain)
    # each run's ratio against the baseline measured beside it, then their median: the
    # machine's drift between runs cancels out
    ratio = med((o - p) / b for o, p, b in zip(ours, plain, raw, strict=True))
    ratio_off = med((o - p) / b for o, p, b in zip(ours, plain, raw_off, strict=True))
    print("\n1. checkpoint of a step with a small result")
    print(f"   raw sqlite3 INSERT+COMMIT (WAL, NORMAL): {med(raw):8.1f} us")
    print(f"   the same without automatic checkpoints: {med(raw_off):8.1f} us "
          "(durable_nb checkpoints on a background thread)")  # fmt: skip
    print(f"   durable step overhead (call {med(ours):.1f} us - plain {med(plain):.2f} us): "
          f"{overhead:8.1f} us")  # fmt: skip
    print(f"   ratio (median of the {len(raw)} runs' ratios): {ratio:.2f}   (target <= 2.0); "
          f"vs the commit without checkpoints: {ratio_off:.2f}")  # fmt: skip
    print("\n2. replay")
    print(f"   per completed step: {med(replay_us):.2f} us   (target <= 10 us)")
    print(f"   10,000-step workflow, start to end: {med(replay_10k):.3f} s   (target < 0.2 s)")
    store_o, load_o = med(x[0] for x in big_ours), med(x[1] for x in big_ours)
    store_j, load_j = med(x[0] for x in big_job), med(x[1] for x in big_job)
    print("\n3. 100 MiB numpy array result")
    print(f"   store: durable_nb {store_o:.3f} s, joblib.Memory {store_j:.3f} s, "
          f"ratio {store_o / store_j:.2f}   (target <= 1.5)")  # fmt: skip
    print(f"   load:  durable_nb {load_o:.3f} s, joblib.Memory {load_j:.3f} s, "
          f"ratio {load_o / load_j:.2f}   (target <= 1.5)")  # fmt: skip
    deps_ratio = med((d[0] - d[1]) / b for d, b in zip(deps, raw, strict=True))
    print("\n4. a step calling 3 helpers and reading 3 globals (one a 10 MB array)")
    print(f"   checkpoint overhead: {med(d[0] - d[1] for d in deps):.1f} us, ratio to the raw "
          f"commit {deps_ratio:.2f}   (target <= 2.5)")  # fmt: skip
    print(f"   replay per call: {med(d[2] for d in deps):.2f} us; first call of a run (hashes "
          f"the array): {med(d[3] for d in deps):.2f} ms")  # fmt: skip


if __name__ == "__main__":
    main()
