"""Checkpoints inside a step, each against its baseline measured in the same run.

1. A 100 MiB numpy state: ``checkpoint()`` inside a running step vs ``np.save`` + ``os.fsync``
   of it to the same disk (target <= 1.5x); ``np.save`` without fsync shown too.
2. A small state (a dict of floats): ``checkpoint()`` vs a raw sqlite3 INSERT + COMMIT with
   the log's pragmas (WAL, synchronous=NORMAL) (target <= 2x).
3. ``last_checkpoint()`` of the 100 MiB state in a later attempt, then a pass over the
   array, vs ``np.load`` then the same pass (target <= 1.5x); ``np.load(mmap_mode="r")`` too
   (a blob's arrays are mapped, not copied).

Medians of ``--repeat`` runs; the machine is noisy, so read the ratios.

Usage: python benchmarks/bench_checkpoints.py [--repeat 5]
"""

from __future__ import annotations

import argparse
import gc
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from bench_steps import raw_commit_us  # the same baseline as the steps'

import durable_nb
from durable_nb import Store, checkpoint, last_checkpoint, step, workflow

BIG = 100 * 2**20 // 8  # float64 elements in 100 MiB
SMALL_N = 2000


def settle() -> None:
    gc.collect()
    os.sync()


def np_save(folder: Path, array: np.ndarray, fsync: bool) -> float:
    settle()
    t0 = time.perf_counter()
    with open(folder / "state.npy", "wb") as f:
        np.save(f, array)
        if fsync:
            f.flush()
            os.fsync(f.fileno())
    return time.perf_counter() - t0


def np_load(folder: Path, mmap: bool = False) -> float:
    settle()
    t0 = time.perf_counter()
    float(np.load(folder / "state.npy", mmap_mode="r" if mmap else None).sum())
    return time.perf_counter() - t0


# Timings leave the steps through the environment, which replay does not read (a global
# dict the steps wrote to would be one of their dependencies, and change between attempts).
def timed(name: str, seconds: float) -> None:
    os.environ[f"DNB_BENCH_{name}"] = repr(seconds)


def timing(name: str) -> float:
    return float(os.environ[f"DNB_BENCH_{name}"])


@step
def big_state(tag: str) -> int:
    """Attempt 1 checkpoints a 100 MiB state (timed) and fails; the next run's attempt
    resumes it through ``last_checkpoint()`` (timed)."""
    settle()
    t0 = time.perf_counter()
    state = last_checkpoint()
    if state is not None:
        float(state["array"].sum())  # read it all, as np.load does
        timed("LOAD", time.perf_counter() - t0)
        return int(state["array"].shape[0])
    array = np.random.default_rng(0).random(BIG)
    settle()
    t0 = time.perf_counter()
    checkpoint({"array": array, "epoch": 1}, loss=0.5)
    timed("SAVE", time.perf_counter() - t0)
    raise RuntimeError("stop after the checkpoint")


@step
def small_states(tag: str, n: int) -> int:
    settle()
    t0 = time.perf_counter()
    for i in range(n):
        checkpoint({"epoch": i, "loss": 1.0 / (i + 1), "lr": 1e-3, "acc": 0.5})
    timed("SMALL", (time.perf_counter() - t0) / n * 1e6)
    return n


def one_run(folder: Path, k: int) -> dict[str, float]:
    store = Store(folder / f"ck{k}.db")
    array = np.random.default_rng(0).random(BIG)
    figures = {
        "np_save_fsync": np_save(folder, array, fsync=True),
        "np_save": np_save(folder, array, fsync=False),
        "np_load": np_load(folder),
        "np_load_mmap": np_load(folder, mmap=True),
    }
    del array
    try:
        with workflow("bench", store=store):
            big_state(f"r{k}")
    except RuntimeError:
        pass
    figures["save"] = timing("SAVE")
    with workflow("bench", store=store):
        assert big_state(f"r{k}") == BIG  # resumed, not recomputed
    figures["load"] = timing("LOAD")
    (folder / f"raw{k}").mkdir()
    figures["raw_us"] = raw_commit_us(folder / f"raw{k}", SMALL_N)
    with workflow("small", store=store):
        small_states(f"r{k}", SMALL_N)
    figures["small_us"] = timing("SMALL")
    store.close()
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="dnb-bench-ck-", dir=os.environ.get("BENCH_DIR")))
    try:
        runs = [one_run(folder, k) for k in range(args.repeat)]
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    med = {key: statistics.median(r[key] for r in runs) for key in runs[0]}
    print(f"durable_nb {durable_nb.__version__}, medians of {args.repeat} runs")
    print("1. 100 MiB numpy state")
    print(f"   checkpoint():          {med['save'] * 1e3:8.1f} ms")
    print(f"   np.save + os.fsync:    {med['np_save_fsync'] * 1e3:8.1f} ms   ratio "
          f"{med['save'] / med['np_save_fsync']:.2f} (target <= 1.5)")  # fmt: skip
    print(f"   np.save (no fsync):    {med['np_save'] * 1e3:8.1f} ms   ratio "
          f"{med['save'] / med['np_save']:.2f}")  # fmt: skip
    print("2. small state (a dict of floats)")
    print(f"   checkpoint():          {med['small_us']:8.1f} us")
    print(f"   raw INSERT + COMMIT:   {med['raw_us']:8.1f} us   ratio "
          f"{med['small_us'] / med['raw_us']:.2f} (target <= 2)")  # fmt: skip
    print("3. resuming the 100 MiB state")
    print(f"   last_checkpoint() + sum: {med['load'] * 1e3:6.1f} ms")
    print(f"   np.load + sum:         {med['np_load'] * 1e3:8.1f} ms   ratio "
          f"{med['load'] / med['np_load']:.2f} (target <= 1.5)")  # fmt: skip
    print(f"   np.load(mmap) + sum:   {med['np_load_mmap'] * 1e3:8.1f} ms   ratio "
          f"{med['load'] / med['np_load_mmap']:.2f}")  # fmt: skip


if __name__ == "__main__":
    main()
