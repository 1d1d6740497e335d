"""``durable_nb.steps()`` and ``durable_nb.experiments()`` on a log of 100,000 steps
(targets: <= 1 s each).

The log is written through the engine (real checkpoints), then read back several times. The
baseline is the plain ``SELECT *`` of the same rows with sqlite3 and ``pd.DataFrame``; for
``experiments``, the same rows' JSON documents parsed with ``json.loads`` into a DataFrame.

Usage: python benchmarks/bench_views.py [--steps 100000] [--repeat 5]
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import statistics
import tempfile
import time
from pathlib import Path

import pandas as pd

import durable_nb
from durable_nb import Store, step, workflow


@step
def work(i: int) -> dict[str, float]:
    return {"i": i, "loss": 1 / (i + 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    path = Path(tempfile.mkdtemp(prefix="dnb-views-")) / "big.db"
    t0 = time.perf_counter()
    with Store(path) as store:
        for chunk in range(10):
            with workflow(f"w{chunk}", store=store):
                for i in range(args.steps // 10):
                    work(i)
    print(f"wrote {args.steps:,} steps in {time.perf_counter() - t0:.1f} s "
          f"({path.stat().st_size / 2**20:.1f} MiB)")  # fmt: skip
    ours, base = [], []
    for _ in range(args.repeat):
        t0 = time.perf_counter()
        df = durable_nb.steps(log=path)
        ours.append(time.perf_counter() - t0)
        assert len(df) == args.steps
        t0 = time.perf_counter()
        conn = sqlite3.connect(path)
        rows = conn.execute("SELECT id, run_id, workflow, name, args_repr, status, started_at, "
                            "ended_at, result_repr FROM steps").fetchall()  # fmt: skip
        pd.DataFrame.from_records(rows)
        conn.close()
        base.append(time.perf_counter() - t0)
    table, parsed = [], []
    for _ in range(args.repeat):
        t0 = time.perf_counter()
        df = durable_nb.experiments(step="work", log=path)
        table.append(time.perf_counter() - t0)
        assert len(df) == args.steps and {"i", "loss"} <= set(df.columns)
        t0 = time.perf_counter()
        conn = sqlite3.connect(path)
        docs = conn.execute("SELECT params, metrics FROM steps WHERE name = 'work'").fetchall()
        pd.DataFrame([{**json.loads(p), **json.loads(m)} for p, m in docs])
        conn.close()
        parsed.append(time.perf_counter() - t0)
    med = statistics.median
    print(
        f"steps(): {med(ours):.3f} s median of {args.repeat} (target <= 1 s); "
        f"plain SELECT into a DataFrame: {med(base):.3f} s; ratio {med(ours) / med(base):.2f}"
    )
    print(
        f"experiments(): {med(table):.3f} s (target <= 1 s); the JSON parsed in Python into "
        f"a DataFrame: {med(parsed):.3f} s; ratio {med(table) / med(parsed):.2f}"
    )


if __name__ == "__main__":
    main()
