"""1,000 concurrent async steps that each ``await asyncio.sleep(0.01)``.

Targets: the whole gather completes in <= 0.5 s wall, checkpoints included, and replays in
<= 0.05 s. Baseline: the same workload without durable_nb, in the same run.

Usage: python benchmarks/bench_async.py [--steps 1000] [--repeat 5]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path

from durable_nb import Store, step, workflow


async def call(i: int) -> dict[str, int]:
    await asyncio.sleep(0.01)
    return {"i": i, "tokens": i * 7}


durable_call = step(call)


async def plain(n: int) -> float:
    t0 = time.perf_counter()
    await asyncio.gather(*(call(i) for i in range(n)))
    return time.perf_counter() - t0


async def durable(store: Store, n: int) -> tuple[float, int, int]:
    t0 = time.perf_counter()
    async with workflow("agents", store=store) as run:
        await asyncio.gather(*(durable_call(i) for i in range(n)))
    return time.perf_counter() - t0, run.steps_run, run.steps_replayed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    base, first, replay = [], [], []
    for _ in range(args.repeat):
        base.append(asyncio.run(plain(args.steps)))
        with Store(Path(tempfile.mkdtemp(prefix="dnb-async-")) / "a.db") as store:
            elapsed, ran, _ = asyncio.run(durable(store, args.steps))
            assert ran == args.steps
            first.append(elapsed)
            elapsed, _, replayed = asyncio.run(durable(store, args.steps))
            assert replayed == args.steps
            replay.append(elapsed)
    med = statistics.median
    print(f"{args.steps} concurrent async steps (sleep 10 ms each), median of {args.repeat}")
    print(f"  without durable_nb: {med(base):.3f} s")
    print(f"  durable, first run: {med(first):.3f} s   (target <= 0.5 s), "
          f"ratio {med(first) / med(base):.2f}")  # fmt: skip
    print(f"  durable, replay:    {med(replay):.3f} s   (target <= 0.05 s), "
          f"ratio {med(replay) / med(base):.2f}")  # fmt: skip


if __name__ == "__main__":
    main()
