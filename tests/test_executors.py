"""A step's calls on a real Dask cluster (LocalCluster, 2 worker processes on 127.0.0.1),
every result committed in the kernel's log: a driver killed mid-map, a worker killed
mid-task, one call of 40 failing, a replay that sends nothing, a real kernel."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path

import pytest

distributed = pytest.importorskip("distributed")

import durable_nb  # noqa: E402
from durable_nb import DurableWarning  # noqa: E402
from durable_nb.log.current_log import close_log  # noqa: E402

from .conftest import ROOT, current_log, log_sql  # noqa: E402
from .dask_tasks import dies, fails, flaky, sweep, work  # noqa: E402
from .kernels import Kernel, kernel_env  # noqa: E402


class Counting(distributed.diagnostics.plugin.SchedulerPlugin):  # type: ignore[misc]
    """Counts the tasks the scheduler was given (every key that reached ``processing``)."""

    name = "counting"

    def __init__(self) -> None:
        self.keys: set[str] = set()

    def transition(self, key: str, start: str, finish: str, *args: object, **kw: object) -> None:
        if finish == "processing":
            self.keys.add(str(key))


def tasks(client: distributed.Client, *, reset: bool = False) -> int:
    def count(dask_scheduler: distributed.Scheduler, reset: bool) -> int:
        plugin = dask_scheduler.plugins["counting"]
        n = len(plugin.keys)
        if reset:
            plugin.keys.clear()
        return n

    return client.run_on_scheduler(count, reset=reset)


@pytest.fixture(scope="module")
def cluster() -> Iterator[distributed.LocalCluster]:
    before = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join([str(ROOT), before or ""])  # workers import tests
    try:
        with distributed.LocalCluster(
            n_workers=2, processes=True, threads_per_worker=1, host="127.0.0.1",
            dashboard_address=None, silence_logs=40,
        ) as lc:  # fmt: skip
            yield lc
    finally:
        if before is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = before


@pytest.fixture
def client(cluster: distributed.LocalCluster) -> Iterator[distributed.Client]:
    with distributed.Client(cluster) as c, durable_nb.use_executor(c):
        c.register_plugin(Counting())
        tasks(c, reset=True)
        yield c


@pytest.fixture
def log(tmp_path: Path, log_target: Path | str) -> Iterator[Path | str]:
    """The current log: a SQLite file, then a PostgreSQL database."""
    target = log_target if isinstance(log_target, str) else tmp_path / ".durable" / "dask.db"
    with current_log(target) as path:  # type: ignore[arg-type]
        yield path


def ran(counter: Path) -> list[int]:
    return [int(n) for n in counter.read_text().split()] if counter.exists() else []


def committed_so_far(log: Path) -> int:
    """How many calls the driver has committed (0 while it is still creating its log: the
    file exists a moment before its tables)."""
    try:
        return len(rows(log, "completed")) if log.exists() else 0
    except sqlite3.OperationalError as exc:
        if "no such table" not in str(exc):
            raise
        return 0


def rows(log: Path | str, status: str) -> list[str]:
    conn = log_sql(log)
    try:
        query = "SELECT args_repr FROM steps WHERE status = ? ORDER BY id"
        return [args.split(",")[0] for (args,) in conn.execute(query, (status,))]
    finally:
        conn.close()


def idle(client: distributed.Client, timeout: float = 60) -> None:
    """Wait until the scheduler holds no task (a killed client's are released)."""
    deadline = time.monotonic() + timeout
    while client.run_on_scheduler(lambda dask_scheduler: len(dask_scheduler.tasks)) > 1:
        assert time.monotonic() < deadline, "the cluster kept tasks of a dead client"
        time.sleep(0.1)


def test_a_driver_killed_mid_map_resumes_without_resubmitting_what_committed(
    client: distributed.Client, tmp_path: Path
) -> None:
    counter, log = tmp_path / "ran.txt", tmp_path / "driver.db"
    cmd = [sys.executable, "-c", "from tests.dask_tasks import main; main()",
           client.scheduler.address, str(log), str(counter), "40", "0.15"]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    driver = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 120
    while committed_so_far(log) < 12 and time.monotonic() < deadline:
        time.sleep(0.05)
    driver.send_signal(signal.SIGKILL)
    driver.wait()
    committed = {int(a) for a in rows(log, "completed")}
    assert 12 <= len(committed) < 40
    idle(client)
    before = len(ran(counter))
    tasks(client, reset=True)

    again = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180)
    assert again.returncode == 0, again.stdout + again.stderr
    assert f"results {sum(i * i for i in range(40))}" in again.stdout
    second = ran(counter)[before:]
    assert sorted(second) == sorted(set(range(40)) - committed)  # misses only, once each
    assert tasks(client) == 40 - len(committed)  # and only they reached the scheduler
    assert sorted(int(a) for a in rows(log, "completed")) == list(range(40))


def test_a_worker_killed_mid_task_and_the_map_completes(
    client: distributed.Client, log: Path, tmp_path: Path
) -> None:
    counter = tmp_path / "ran.txt"
    pids = list(client.run(os.getpid).values())

    def kill_one() -> None:
        while len(ran(counter)) < 4:
            time.sleep(0.02)
        os.kill(pids[0], signal.SIGKILL)

    killer = threading.Thread(target=kill_one)
    killer.start()
    results = sweep(16, str(counter), 0.3)
    killer.join()
    assert results == [i * i for i in range(16)]
    assert sorted(int(a) for a in rows(log, "completed")) == list(range(16))
    assert pids[0] not in client.run(os.getpid).values()  # it was killed, and replaced
    assert len(ran(counter)) >= 16  # (its task ran again, unless it died between two)
    run = durable_nb.runs().iloc[-1]
    assert run["status"] == "completed" and run["steps_run"] == 16


def test_one_failing_call_of_forty_fails_alone_and_the_map_raises_after_the_rest(
    client: distributed.Client, log: Path, tmp_path: Path
) -> None:
    counter = tmp_path / "ran.txt"
    with pytest.raises(ValueError, match="call 17 failed") as info:
        sweep(40, str(counter), 0.0, 17)
    assert "1 of 40 calls of work failed" in "".join(getattr(info.value, "__notes__", []))
    assert sorted(int(a) for a in rows(log, "completed")) == sorted(set(range(40)) - {17})
    steps = durable_nb.steps()
    failed = steps[steps["status"] == "failed"].iloc[0]
    assert failed["args"].startswith("17,") and failed["error_type"] == "ValueError"
    conn = log_sql(log)
    trace, stdout = conn.execute(
        "SELECT error_traceback, stdout FROM steps WHERE status = 'failed'"
    ).fetchone()
    conn.close()
    assert "dask_tasks.py" in trace and 'raise ValueError(f"call {i} failed")' in trace
    assert stdout == "working on 17\n"  # what it printed on the worker


def test_a_replayed_map_sends_nothing_and_shows_what_the_calls_printed(
    client: distributed.Client, log: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    counter = tmp_path / "ran.txt"
    first = sweep(20, str(counter))
    assert tasks(client, reset=True) == 20
    capsys.readouterr()
    start = time.perf_counter()
    again = sweep(20, str(counter))
    took = time.perf_counter() - start
    assert again == first and tasks(client) == 0 and len(ran(counter)) == 20
    assert took < 2, took  # the benchmark holds the 0.05 s figure; here: no cluster at all
    assert "[replayed] working on 7" in capsys.readouterr().out
    assert durable_nb.runs().iloc[-1]["steps_replayed"] == 20


def test_ctrl_c_cancels_the_outstanding_calls_and_logs_them_interrupted(
    client: distributed.Client, log: Path, tmp_path: Path
) -> None:
    counter = tmp_path / "ran.txt"

    def interrupt() -> None:
        while len(ran(counter)) < 3:
            time.sleep(0.02)
        os.kill(os.getpid(), signal.SIGINT)

    threading.Thread(target=interrupt).start()
    start = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        sweep(20, str(counter), 0.5)
    assert time.monotonic() - start < 5  # not the 5 s the 20 calls would take
    interrupted, completed = rows(log, "interrupted"), rows(log, "completed")
    assert interrupted  # each call is in the log, committed or interrupted
    assert {int(a) for a in interrupted} | {int(a) for a in completed} == set(range(20))
    idle(client)
    assert len(ran(counter)) < 20  # cancelled: the rest never ran


def test_identical_calls_are_two_tasks_and_two_records(
    client: distributed.Client, log: Path, tmp_path: Path
) -> None:
    counter = str(tmp_path / "ran.txt")
    with durable_nb.workflow("twins"):
        assert work.map([3, 3, 3], [counter] * 3) == [9, 9, 9]
    assert tasks(client) == 3 and Counter(ran(Path(counter))) == {3: 3}
    occurrences = durable_nb.steps()["occurrence"].tolist()
    assert sorted(occurrences) == [0, 1, 2]  # committed as they arrived


def test_a_failed_call_is_submitted_again_after_its_retry_delay(
    client: distributed.Client, log: Path, tmp_path: Path
) -> None:
    counter = str(tmp_path / "ran.txt")
    with durable_nb.workflow("flaky"):
        assert flaky.map([1, 2], [counter] * 2) == [1, 2]
        assert flaky.submit(3, counter).result(timeout=60) == 3
    conn = log_sql(log)
    for i in (1, 2, 3):
        attempts = conn.execute(
            "SELECT attempt, status, started_at, ended_at FROM steps WHERE args_repr LIKE ? "
            "ORDER BY attempt",
            (f"{i},%",),
        ).fetchall()
        assert [(a, s) for a, s, _, _ in attempts] == [
            (1, "failed"), (2, "failed"), (3, "completed")
        ]  # fmt: skip
        gaps = [attempts[k + 1][2] - attempts[k][3] for k in (0, 1)]
        assert gaps[0] >= 0.4 and gaps[1] >= 0.8  # retry_delay, then times backoff
    assert tasks(client) == 9  # each attempt its own task


def test_a_retry_the_executor_cannot_take_fails_the_future(log: Path) -> None:
    from concurrent.futures.process import BrokenProcessPool

    with (
        ProcessPoolExecutor(1) as pool,
        durable_nb.use_executor(pool),
        durable_nb.workflow("broken"),
    ):
        future = dies.submit(1)
        with pytest.raises(BrokenProcessPool):
            future.result(timeout=60)  # not a future left pending for good


def test_ctrl_c_logs_a_call_waiting_for_its_retry_interrupted(
    client: distributed.Client, log: Path
) -> None:
    def interrupt() -> None:
        while not rows(log, "failed"):
            time.sleep(0.02)
        time.sleep(0.3)
        os.kill(os.getpid(), signal.SIGINT)

    threading.Thread(target=interrupt).start()
    with pytest.raises(KeyboardInterrupt), durable_nb.workflow("waits"):
        fails.map([7])  # its retry is due in 30 s
    assert rows(log, "failed") == ["7"] and rows(log, "interrupted") == ["7"]


def test_a_process_pool_and_a_default_executor(log: Path, tmp_path: Path) -> None:
    counter = str(tmp_path / "ran.txt")
    with ProcessPoolExecutor(2) as pool, durable_nb.use_executor(pool):
        with durable_nb.workflow("pool"):
            assert work.map(range(6), [counter] * 6) == [i * i for i in range(6)]
            future = work.submit(10, counter)
            assert future.result(timeout=60) == 100
        with durable_nb.workflow("pool"):
            assert work.map(range(6), [counter] * 6) == [i * i for i in range(6)]
            assert work.submit(10, counter).result() == 100
    assert sorted(ran(Path(counter))) == [0, 1, 2, 3, 4, 5, 10]
    no_executor = pytest.raises(durable_nb.DurableError, match="no executor: pass executor=")
    with no_executor, durable_nb.workflow("none"):
        work.map(range(2), [counter] * 2)
    address = pytest.raises(durable_nb.DurableError, match=r"is not an executor: .*Client\('tcp")
    with address, durable_nb.workflow("none"):
        work.map(range(2), [counter] * 2, executor="tcp://127.0.0.1:8786")

    @durable_nb.step
    async def later(i: int) -> int:
        return i

    for call in (lambda: later.map([1], executor=pool), lambda: later.submit(1, executor=pool)):
        with pytest.raises(durable_nb.DurableError, match="is async"), durable_nb.workflow("a"):
            call()
    close_log()


def test_a_durable_cell_in_a_real_kernel_maps_on_the_cluster_and_replays_after_a_restart(
    cluster: distributed.LocalCluster, tmp_path: Path
) -> None:
    counter = tmp_path / "ran.txt"
    cell = (
        "%%durable sweep\n"
        "from tests.dask_tasks import work\n"
        f"squares = work.map(range(8), [{str(counter)!r}] * 8, executor=client)\n"
        f"more = await work.amap(range(8, 10), [{str(counter)!r}] * 2, executor=client)\n"
        "print(sum(squares) + sum(more))\n"
    )
    address = cluster.scheduler_address
    setup = f"%load_ext durable_nb\nfrom distributed import Client\nclient = Client({address!r})"
    for attempt in range(2):
        kernel = Kernel(tmp_path, kernel_env(tmp_path / "nb.ipynb"))
        try:
            assert kernel.execute(setup, timeout=60).status == "ok"
            reply = kernel.execute(cell, timeout=120)
            assert reply.status == "ok", reply.error
            assert str(sum(i * i for i in range(10))) in reply.stdout
            if attempt == 1:  # what a call printed on its worker, from the log
                assert "working on 3" in reply.stdout
        finally:
            kernel.close()
    assert sorted(ran(counter)) == list(range(10))  # the second kernel replayed all ten

    kernel = Kernel(tmp_path, kernel_env(tmp_path / "nb.ipynb"))
    try:
        assert kernel.execute(setup, timeout=60).status == "ok"
        failing = (
            "%%durable failing\n"
            "from tests.dask_tasks import work\n"
            f"work.map(range(8), [{str(counter)!r}] * 8, [0.0] * 8, [5] * 8, executor=client)\n"
        )
        reply = kernel.execute(failing, timeout=120)
        assert reply.status == "error" and "call 5 failed" in reply.error["evalue"]
        done = kernel.execute(
            "import durable_nb\n"
            "print(durable_nb.steps(workflow='failing')['status'].value_counts().to_dict())"
        )
        assert "'completed': 7" in done.stdout and "'failed': 1" in done.stdout
    finally:
        kernel.close()


def test_pool_workers_never_write_the_log_and_run_the_code_they_were_sent(
    log: Path, tmp_path: Path
) -> None:
    from concurrent.futures import ThreadPoolExecutor

    counter = str(tmp_path / "ran.txt")
    for pool in (ThreadPoolExecutor(2), ProcessPoolExecutor(1)):
        with pool, durable_nb.workflow(f"rows-{type(pool).__name__}"):
            assert work.map(range(3), [counter] * 3, executor=pool) == [0, 1, 4]
    assert len(rows(log, "completed")) == 6  # one row per call: none written by a worker

    with ProcessPoolExecutor(1) as pool:  # one worker, reused: it must not keep old code

        @durable_nb.step(name="versioned")
        def versioned(i: int) -> str:
            return f"v1-{i}"

        with durable_nb.workflow("versions"):
            assert versioned.map([1], executor=pool) == ["v1-1"]

        @durable_nb.step(name="versioned")
        def versioned(i: int) -> str:
            return f"v2-{i}"

        with durable_nb.workflow("versions"):
            assert versioned.map([1], executor=pool) == ["v2-1"]


def test_a_submitted_call_nobody_waited_for_is_logged_before_the_run_ends(
    log: Path, tmp_path: Path
) -> None:
    counter = str(tmp_path / "ran.txt")
    with ThreadPoolExecutor(2) as pool, durable_nb.use_executor(pool):
        warned = pytest.warns(DurableWarning, match="waited for 1 submitted calls")
        with warned, durable_nb.workflow("forgot") as run:
            work.submit(5, counter, sleep=0.5)  # its future is never waited for
        assert rows(log, "completed") == ["5"]  # in the log when the workflow ended
    assert "waited for 1 submitted calls" in run.remarks[0]
