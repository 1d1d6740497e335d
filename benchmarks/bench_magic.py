"""Cost of the notebook integration, measured in real kernels.

1. ``%load_ext durable_nb`` in a fresh kernel (target <= 0.3 s), vs ``%load_ext autoreload``
   as the baseline of an ordinary extension.
2. An empty ``%%durable`` cell vs the same plain cell (target: adds <= 5 ms). The
   ``%%durable`` cell runs with --force, so each execution starts and ends a run.
3. Skip of an unchanged cell that read small inputs, vs the same plain cell
   (target: adds <= 5 ms).
4. Skip of a cell that read a 100 MB array and appended to a list, vs joblib.Memory loading
   the same 100 MB array from its cache (target <= 1.5x).

Usage: python benchmarks/bench_magic.py [--repeat 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from jupyter_client.manager import start_new_kernel

ROOT = Path(__file__).resolve().parent.parent


def timed(kc, code: str) -> float:  # type: ignore[no-untyped-def]
    t0 = time.perf_counter()
    reply = kc.execute_interactive(code, timeout=60, output_hook=lambda msg: None)
    elapsed = time.perf_counter() - t0
    assert reply["content"]["status"] == "ok", reply["content"]
    return elapsed


def in_kernel_seconds(kc, code: str) -> float:  # type: ignore[no-untyped-def]
    """Time ``code`` inside the kernel (no messaging noise)."""
    out: list[str] = []

    def hook(msg) -> None:  # type: ignore[no-untyped-def]
        if msg["msg_type"] == "stream":
            out.append(msg["content"]["text"])

    probe = (
        f"import time as _t\n_t0 = _t.perf_counter()\n{code}\nprint('T', _t.perf_counter() - _t0)"
    )
    kc.execute_interactive(probe, timeout=60, output_hook=hook)
    line = [x for x in "".join(out).splitlines() if x.startswith("T ")][-1]
    return float(line.split()[1])


SMALL = "%%durable small\ndoubled = [v * 2 for v in vals]"
BIG_SETUP = """\
import numpy as np
from joblib import Memory
big = np.random.default_rng(0).random(100 * 2**20 // 8)
def load_big(i):
    return big
cached_big = Memory({folder!r} + "/joblib", verbose=0).cache(load_big)
cached_big(0)
"""
BIG_CELL = "%%durable bigread\nacc.append(float(big.sum()))"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--cells", type=int, default=40)
    args = parser.parse_args()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    load, baseline_load, plain, durable = [], [], [], []
    small_plain, small_skip, joblib_load, big_skip = [], [], [], []
    for _ in range(args.repeat):
        folder = tempfile.mkdtemp(prefix="dnb-magic-")
        km, kc = start_new_kernel(kernel_name="python3", cwd=folder, env=env)
        try:
            load_ext = "get_ipython().run_line_magic('load_ext', '{}')"
            baseline_load.append(in_kernel_seconds(kc, load_ext.format("autoreload")))
            load.append(in_kernel_seconds(kc, load_ext.format("durable_nb")))
            timed(kc, "x = 1")
            timed(kc, "%%durable bench --force\nx = 1")
            for _ in range(args.cells):
                plain.append(timed(kc, "x = 1"))
                durable.append(timed(kc, "%%durable bench --force\nx = 1"))
            timed(kc, "vals = list(range(50))")
            timed(kc, SMALL)  # the run the skips below restore
            for _ in range(args.cells):
                small_plain.append(timed(kc, SMALL.split("\n", 1)[1]))
                small_skip.append(timed(kc, SMALL))
            timed(kc, BIG_SETUP.format(folder=folder))
            timed(kc, "acc = []")
            timed(kc, BIG_CELL)  # the run the skips below restore
            for _ in range(5):
                joblib_load.append(timed(kc, "loaded = cached_big(0)"))
                timed(kc, "acc = []")
                big_skip.append(timed(kc, BIG_CELL))
        finally:
            kc.stop_channels()
            km.shutdown_kernel(now=True)
    med = statistics.median
    print(f"python {sys.version.split()[0]}, median of {args.repeat} kernels")
    print(f"1. %load_ext durable_nb: {med(load):.3f} s (baseline %load_ext autoreload "
          f"{med(baseline_load):.3f} s)   (target <= 0.3 s)")  # fmt: skip
    added = (med(durable) - med(plain)) * 1000
    print(f"2. empty cell round trip: plain {med(plain) * 1000:.2f} ms, %%durable "
          f"{med(durable) * 1000:.2f} ms, added {added:.2f} ms   (target <= 5 ms)")  # fmt: skip
    added = (med(small_skip) - med(small_plain)) * 1000
    print(f"3. skipped cell, small inputs: plain {med(small_plain) * 1000:.2f} ms, skipped "
          f"{med(small_skip) * 1000:.2f} ms, added {added:.2f} ms   (target <= 5 ms)")  # fmt: skip
    ratio = med(big_skip) / med(joblib_load)
    print(f"4. skip of a cell that read a 100 MB array and appended to a list: "
          f"{med(big_skip) * 1000:.1f} ms; joblib.Memory load of the array "
          f"{med(joblib_load) * 1000:.1f} ms; ratio {ratio:.2f}   (target <= 1.5)")  # fmt: skip


if __name__ == "__main__":
    main()
