"""A step's calls on a Dask LocalCluster (2 worker processes, 127.0.0.1).

1. 200 calls x 50 ms: durable ``step.map`` (each result committed in the log as it arrives)
   against plain ``client.map`` + ``client.gather`` in the same run (target <= 1.15x).
2. The same map fully replayed (target <= 0.05 s, and zero tasks sent to the scheduler).

Medians of several runs. Usage: python benchmarks/bench_dask.py [--calls 200] [--runs 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")  # the figures, not 200 progress updates

from distributed import Client, LocalCluster
from distributed.diagnostics.plugin import SchedulerPlugin

import durable_nb
from durable_nb import step, workflow
from durable_nb.log.current_log import close_log, open_log


def nap(i: int) -> int:
    time.sleep(0.05)
    return i


durable_nap = step(nap)


class Counting(SchedulerPlugin):
    name = "counting"

    def __init__(self) -> None:
        self.count = 0

    def transition(self, key: str, start: str, finish: str, *args: object, **kw: object) -> None:
        if finish == "processing":
            self.count += 1


def sent(client: Client) -> int:
    return client.run_on_scheduler(lambda dask_scheduler: dask_scheduler.plugins["counting"].count)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    n = args.calls
    with (
        tempfile.TemporaryDirectory() as tmp,
        LocalCluster(
            n_workers=2,
            processes=True,
            threads_per_worker=1,
            host="127.0.0.1",
            dashboard_address=None,
            silence_logs=40,
        ) as cluster,  # fmt: skip
        Client(cluster) as client,
    ):
        client.register_plugin(Counting())
        open_log(Path(tmp) / "bench.db")
        client.gather(client.map(nap, range(8), pure=False))  # workers warm
        plain, durable, replayed, tasks = [], [], [], []
        for r in range(args.runs):
            start = time.perf_counter()
            assert client.gather(client.map(nap, range(n), pure=False)) == list(range(n))
            plain.append(time.perf_counter() - start)
            start = time.perf_counter()
            with workflow(f"sweep-{r}"):
                assert durable_nap.map(range(n), executor=client) == list(range(n))
            durable.append(time.perf_counter() - start)
            before = sent(client)
            start = time.perf_counter()
            with workflow(f"sweep-{r}") as run:
                assert durable_nap.map(range(n), executor=client) == list(range(n))
            replayed.append(time.perf_counter() - start)
            tasks.append(sent(client) - before)
            assert run.steps_replayed == n
        close_log()
    p, d, rp = (statistics.median(x) for x in (plain, durable, replayed))
    print(f"durable_nb {durable_nb.__version__}: {n} calls x 50 ms on a LocalCluster of 2 workers")
    print(f"plain client.map + gather: {p:.2f} s")
    print(f"durable map: {d:.2f} s = {d / p:.3f}x plain (target <= 1.15x)")
    print(f"replayed map: {rp * 1000:.1f} ms (target <= 50 ms), tasks sent: {max(tasks)}")
    print(f"  runs: plain {plain}, durable {durable}, replayed {replayed}")


if __name__ == "__main__":
    main()
