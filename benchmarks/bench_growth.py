"""Cost as the log grows: a year of experiments in one file.

The log is grown with 1,000-step workflows (copies of one real workflow's rows, for speed)
until it holds N steps; then, for a new 1,000-step workflow of small-dict steps, measured:
checkpoint per step and replay per step (both including the workflow's start), and
``steps(workflow=...)`` of one 1,000-step workflow, ``runs()`` and ``steps()`` of the whole
log. The baseline is the same figures at 10,000 steps, in the same run (target: within 1.3x
at 1,000,000), and a raw sqlite3 commit (target: checkpoint <= 2x at 10,000).

Usage: python benchmarks/bench_growth.py [--sizes 10000,100000,1000000] [--repeat 3]
"""

from __future__ import annotations

import argparse
import shutil
import sqlite3
import statistics
import tempfile
import time
from pathlib import Path

import durable_nb
from durable_nb import Store, step, workflow

COPIED = (
    "scope, name, args_digest, occurrence, code_digest, attempt, status, started_at, ended_at, "
    "result_format, result_size, result_type, result_repr, args_repr, result"
)


def small(i: int) -> dict[str, float]:
    return {"i": i, "loss": i * 0.5}


durable_small = step(small)


def grow(store: Store, target: int, template: int) -> None:
    """Add copies of run ``template``'s 1,000 steps, as new workflows, up to ``target``."""
    conn = store.conn
    count = conn.execute("SELECT count(*) FROM steps").fetchone()[0]
    k = conn.execute("SELECT count(*) FROM runs").fetchone()[0]
    while count < target:
        with store.transaction():
            for _ in range(min(50, (target - count) // 1000 or 1)):
                k += 1
                name = f"filler-{k}"
                run_id = conn.execute(
                    "INSERT INTO runs (workflow, status, started_at, ended_at, owner, pid, "
                    "steps_run) VALUES (?, 'completed', ?, ?, 'gone:x:1:1', 1, 1000)",
                    (name, time.time(), time.time()),
                ).lastrowid
                conn.execute(
                    f"INSERT INTO steps (run_id, workflow, {COPIED}) "
                    f"SELECT ?, ?, {COPIED} FROM steps WHERE run_id = ?",
                    (run_id, name, template),
                )
                count += 1000


def measure(store: Store, name: str, n: int = 1000) -> tuple[float, float, float]:
    """(us per checkpointed step, us per replayed step, ms of steps(workflow=name))."""
    t0 = time.perf_counter()
    with workflow(name, store=store):
        for i in range(n):
            durable_small(i)
    checkpoint = (time.perf_counter() - t0) / n * 1e6
    t0 = time.perf_counter()
    with workflow(name, store=store) as run:
        for i in range(n):
            durable_small(i)
    replay = (time.perf_counter() - t0) / n * 1e6
    assert run.steps_replayed == n
    t0 = time.perf_counter()
    df = durable_nb.steps(workflow=name, log=store)
    view = (time.perf_counter() - t0) * 1e3
    assert len(df) == n
    return checkpoint, replay, view


def raw_commit_us(folder: Path, n: int = 3000) -> float:
    (folder / "raw.db").unlink(missing_ok=True)
    conn = sqlite3.connect(folder / "raw.db")
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = NORMAL")
    conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, k TEXT, v BLOB)")
    conn.commit()
    t0 = time.perf_counter()
    for i in range(n):
        conn.execute("INSERT INTO t (k, v) VALUES (?, ?)", (f"k{i}", b"\x80\x05K*." * 4))
        conn.commit()
    conn.close()
    return (time.perf_counter() - t0) / n * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10000,100000,1000000")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    folder = Path(tempfile.mkdtemp(prefix="dnb-growth-"))
    try:
        store = Store(folder / "growth.db")
        with workflow("template", store=store) as first:
            for i in range(1000):
                durable_small(i)
        raw = statistics.median(raw_commit_us(folder) for _ in range(args.repeat))
        durable_nb.steps(workflow="template", log=store)  # pandas imported before timing
        rows = []
        for size in sizes:
            grow(store, size, first.id)
            # at rest, as a log grown over months is: the bulk copy's WAL folded in
            store.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            measure(store, f"warm-{size}")  # caches as a working kernel has them
            figures = [measure(store, f"probe-{size}-{r}") for r in range(args.repeat)]
            ck, rp, view = (statistics.median(f[i] for f in figures) for i in range(3))
            t0 = time.perf_counter()
            durable_nb.runs(log=store)
            runs_ms = (time.perf_counter() - t0) * 1e3
            total = store.conn.execute("SELECT count(*) FROM steps").fetchone()[0]
            all_s = None
            if size == sizes[-1]:  # (first call of the process, median of repeat calls)
                calls = []
                for _ in range(args.repeat):
                    t0 = time.perf_counter()
                    assert len(durable_nb.steps(log=store)) == total
                    calls.append(time.perf_counter() - t0)
                all_s = (calls[0], statistics.median(calls))
            mb = (folder / "growth.db").stat().st_size / 1e6
            rows.append((total, mb, ck, rp, view, runs_ms, all_s))
        store.close()
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    print(f"durable_nb {durable_nb.__version__}, sqlite {sqlite3.sqlite_version}, "
          f"median of {args.repeat}; raw sqlite3 commit {raw:.1f} us")  # fmt: skip
    print("| log holds | file | checkpoint/step | replay/step | steps(workflow=one) | runs() |")
    print("|---|---|---|---|---|---|")
    for total, mb, ck, rp, view, runs_ms, _ in rows:
        print(f"| {total:,} | {mb:.0f} MB | {ck:.0f} us | {rp:.1f} us | {view:.1f} ms | "
              f"{runs_ms:.1f} ms |")  # fmt: skip
    base, last = rows[0], rows[-1]
    print(f"checkpoint at {base[0]:,} (workflow start included): {base[2] / raw:.2f}x a raw "
          "commit (bench_steps.py measures the <= 2x target without it)")  # fmt: skip
    print(f"at {last[0]:,} vs {base[0]:,}: checkpoint {last[2] / base[2]:.2f}x, replay "
          f"{last[3] / base[3]:.2f}x (targets <= 1.3); steps(workflow=one) {last[4]:.1f} ms "
          f"(target <= 20 ms)")  # fmt: skip
    if last[6] is not None:
        print(f"steps() of all {last[0]:,}: {last[6][1]:.2f} s, median of {args.repeat} calls "
              f"(target <= 2 s); the process's first call {last[6][0]:.2f} s")  # fmt: skip


if __name__ == "__main__":
    main()
