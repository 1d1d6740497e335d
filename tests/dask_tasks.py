"""Steps of the Dask tests, in a module the workers can import (a test file is not one).

``work`` appends its number to the file ``counter`` before working (what really ran, on
whichever worker), prints, sleeps ``sleep`` seconds and raises at ``fail_at``; ``flaky``
fails twice before it returns.
"""

from __future__ import annotations

import time

import durable_nb


@durable_nb.step
def work(i: int, counter: str, sleep: float = 0.0, fail_at: int = -1) -> int:
    with open(counter, "a") as f:
        f.write(f"{i}\n")
    print(f"working on {i}")
    time.sleep(sleep)
    if i == fail_at:
        raise ValueError(f"call {i} failed")
    return i * i


@durable_nb.step(retries=2, retry_delay=0.4, backoff=2)
def flaky(i: int, counter: str) -> int:
    """Fails on its first two attempts (counted in ``counter``), then returns ``i``."""
    with open(counter, "a") as f:
        f.write(f"{i}\n")
    with open(counter) as f:
        if f.read().split().count(str(i)) <= 2:
            raise ConnectionError(f"call {i}: try again")
    return i


@durable_nb.step(retries=1, retry_delay=0.2)
def dies(i: int) -> int:
    """Ends its worker process (a pool breaks)."""
    import os

    os._exit(1)


@durable_nb.step(retries=3, retry_delay=30)
def fails(i: int) -> int:
    raise ConnectionError(f"call {i}: try again")


@durable_nb.workflow
def sweep(n: int, counter: str, sleep: float = 0.0, fail_at: int = -1) -> list[int]:
    return work.map(range(n), [counter] * n, [sleep] * n, [fail_at] * n)


def main() -> None:
    """``python -m tests.dask_tasks ADDRESS LOG COUNTER N SLEEP``: a driver that runs
    ``sweep`` on the cluster at ADDRESS with LOG as its log, and prints the results."""
    import sys

    from distributed import Client

    address, log, counter, n, sleep = sys.argv[1:6]
    durable_nb.open_log(log)
    with Client(address) as client, durable_nb.use_executor(client):
        print("results", sum(sweep(int(n), counter, float(sleep))), flush=True)


if __name__ == "__main__":
    main()
