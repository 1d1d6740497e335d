"""Sync step costs, each against its baseline measured in the same run.

1. Checkpoint overhead of a step with a small result vs a raw sqlite3 INSERT + COMMIT on a
   file with the same pragmas (WAL, synchronous=NORMAL). Target ratio <= 2.0.
2. Replay cost per completed step (target <= 10 us) and a 10,000-step replay (< 0.2 s).
3. Store and load of a 100 MiB numpy array result vs joblib.Memory (target <= 1.5x each).
4. Dependencies: a step calling 3 helpers and reading 3 globals, one a 10 MB numpy array;
   checkpoint overhead per call vs a raw commit (target <= 2.5x), replay per call, and the
   first call of a run (which hashes the array once).

With --store postgresql (bench_postgres.py: the server, the baseline, DBOS), the log is a
PostgreSQL database on the server at --url or on a throw-away one with default durability
(fsync on), a fresh database per run:

1. Checkpoint overhead vs a raw psycopg autocommit INSERT of a small row (and the same with
   RETURNING id, as the log inserts), timed in turns of 100 steps and 100 rows. Target
   ratio <= 1.5.
2. Replay cost per completed step (target <= 50 us) and a 10,000-step replay.
3 and 4 (numpy arrays and dependencies) are SQLite's only. With --dbos-python, the
interpreter of an environment that has dbos, DBOS's step and replay on the same server.

Usage: python benchmarks/bench_steps.py [--repeat 7]
       python benchmarks/bench_steps.py --store postgresql [--url URL] [--dbos-python PY]
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
from durable_nb.log.logstore import LogStore
from durable_nb.log.stores import open_store


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


def open_at(where: Path | str, name: str) -> LogStore:
    """The log ``name`` in a folder (a SQLite file), or the log in a PostgreSQL database."""
    return open_store(where) if isinstance(where, str) else Store(where / f"{name}.db")


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


def replay_cost(where: Path | str, n: int) -> tuple[float, float]:
    """(us per replayed step, seconds for a whole n-step workflow replay incl. its start)."""
    store = open_at(where, "replay")
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


def checkpoint_vs_raw_us(url: str, n: int) -> tuple[float, float, float, float]:
    """(us per step inside a workflow, per plain call, per raw INSERT, per raw INSERT ...
    RETURNING id) on the PostgreSQL log at ``url``, the steps and the INSERTs in turns."""
    import bench_postgres as pg  # beside this file

    store = open_at(url, "steps")
    raw = pg.RawInsert(url)
    settle()
    t0 = time.perf_counter()
    for i in range(n):
        small(i)
    plain = (time.perf_counter() - t0) / n * 1e6

    def steps(start: int, count: int) -> float:
        t0 = time.perf_counter()
        for i in range(start, start + count):
            durable_small(i)
        return time.perf_counter() - t0

    with workflow("overhead", store=store):
        durable, raw_us, returning_us = pg.interleave(n, steps, raw)
    raw.close()
    store.close()
    return durable, plain, raw_us, returning_us


def main_postgres(args: argparse.Namespace) -> None:
    """Sections 1 and 2 on a PostgreSQL log, and DBOS's figures beside them."""
    import bench_postgres as pg  # beside this file

    raw, raw_ret, ours, plain, replay_us, replay_10k = [], [], [], [], [], []
    with pg.server(args.url) as admin:
        print(f"durable_nb {durable_nb.__version__}, {pg.describe(admin)}, "
              f"median of {args.repeat} runs, a fresh database each")  # fmt: skip
        for _ in range(args.repeat):
            with pg.fresh_database(admin, "bench_steps") as url:
                d, p, b, b_ret = checkpoint_vs_raw_us(url, args.n)
                ours.append(d)
                plain.append(p)
                raw.append(b)
                raw_ret.append(b_ret)
                us, total = replay_cost(url, 10_000)
                replay_us.append(us)
                replay_10k.append(total)
        dbos = pg.run_dbos(args.dbos_python, admin, args.n, args.repeat)

    med = statistics.median
    overhead = med(ours) - med(plain)
    ratios = sorted((o - p) / b for o, p, b in zip(ours, plain, raw, strict=True))
    ratio = med(ratios)
    ratio_ret = med((o - p) / b for o, p, b in zip(ours, plain, raw_ret, strict=True))
    print("\n1. checkpoint of a step with a small result (one INSERT ... RETURNING id, autocommit)")
    print(f"   raw psycopg INSERT (autocommit, one commit a row): {med(raw):8.1f} us")
    print(f"   the same with RETURNING id (as the log inserts):   {med(raw_ret):8.1f} us")
    print(f"   durable step overhead (call {med(ours):.1f} us - plain {med(plain):.2f} us): "
          f"{overhead:8.1f} us")  # fmt: skip
    print(f"   ratio (median of the {len(raw)} runs' ratios, {ratios[0]:.2f} to "
          f"{ratios[-1]:.2f}): {ratio:.2f}   (target <= 1.5); vs the INSERT ... RETURNING id: "
          f"{ratio_ret:.2f}")  # fmt: skip
    print("\n2. replay")
    print(f"   per completed step: {med(replay_us):.2f} us   (target <= 50 us; the runs' "
          f"{min(replay_us):.2f} to {max(replay_us):.2f})")  # fmt: skip
    print(f"   10,000-step workflow, start to end: {med(replay_10k):.3f} s")
    print("\n3, 4. numpy results and dependencies: measured on SQLite only (without --store)")
    pg.print_dbos(dbos, overhead, ratio, med(replay_us))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("-n", type=int, default=3000, help="steps per overhead measurement")
    parser.add_argument("--store", choices=("sqlite", "postgresql"), default="sqlite")
    parser.add_argument(
        "--url",
        help="postgresql://user@host:port/db of a server whose user may CREATE DATABASE "
        "(default: a throw-away server with PostgreSQL's default durability)",
    )
    parser.add_argument(
        "--dbos-python", help="with --store postgresql: an interpreter that has dbos"
    )
    args = parser.parse_args()
    if args.store != "postgresql" and (args.url or args.dbos_python):
        parser.error("--url and --dbos-python need --store postgresql")
    if args.store == "postgresql":
        main_postgres(args)
        return
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
