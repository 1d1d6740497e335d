"""Async steps: concurrent, each checkpointed on its own, replayed in program order."""

from __future__ import annotations

import asyncio
import random
import signal
import sqlite3
import time
from pathlib import Path

import pytest

from durable_nb import Store, step, workflow
from durable_nb.log.stores import open_store

from .conftest import executions, integrity, log_sql, python
from .kernels import Kernel, cell_text, kernel_env, notebook, run_all


def test_occurrences_follow_call_order_not_finish_order(log_target: Path | str) -> None:
    calls: list[int] = []

    @step
    async def draw(tag: str) -> float:
        calls.append(1)
        await asyncio.sleep(random.random() / 50)  # finish in a random order
        return random.random()

    async def flow(store: Store) -> list[float]:
        async with workflow("draws", store=store):
            return await asyncio.gather(*(draw("same") for _ in range(20)))

    with open_store(log_target) as store:
        first = asyncio.run(flow(store))
        second = asyncio.run(flow(store))
    assert second == first
    assert len(calls) == 20


def test_async_retries_and_sync_steps_inside(tmp_path: Path, log_target: Path | str) -> None:
    attempts = tmp_path / "attempts.txt"  # a file: what the step reads of it is not a dependency

    @step(retries=2, retry_delay=0.0)
    async def shaky() -> str:
        with attempts.open("a") as f:
            f.write("1")
        if len(attempts.read_text()) < 3:
            raise TimeoutError("slow service")
        return "ok"

    @step
    def plain(x: int) -> int:
        return x + 1

    async def flow(store: Store) -> tuple[str, int]:
        async with workflow("mix", store=store):
            return await shaky(), plain(1)

    with open_store(log_target) as store:
        assert asyncio.run(flow(store)) == ("ok", 2)
        assert asyncio.run(flow(store)) == ("ok", 2)
        rows = store.conn.execute("SELECT name, attempt, status FROM steps ORDER BY id").fetchall()
    assert attempts.read_text() == "111"
    assert rows == [
        ("shaky", 1, "failed"),
        ("shaky", 2, "failed"),
        ("shaky", 3, "completed"),
        ("plain", 1, "completed"),
    ]


def test_cancelled_step_is_interrupted_and_completed_ones_stay(log_target: Path | str) -> None:
    @step
    async def quick(i: int) -> int:
        return i

    @step
    async def slow() -> None:
        await asyncio.sleep(30)

    async def flow(store: Store) -> None:
        async with workflow("cancel", store=store):
            await quick(1)
            task = asyncio.ensure_future(slow())
            await asyncio.sleep(0.05)
            task.cancel()
            await task

    with open_store(log_target) as store:
        with pytest.raises(asyncio.CancelledError):
            asyncio.run(flow(store))
        rows = store.conn.execute("SELECT name, status FROM steps ORDER BY id").fetchall()
        run = store.conn.execute("SELECT status FROM runs").fetchone()
    assert rows == [("quick", "completed"), ("slow", "interrupted")]
    assert run == ("interrupted",)


SCRIPT = r"""
import asyncio, sys, hashlib
import durable_nb
from durable_nb import step, workflow
from durable_nb.log.stores import open_store

log, counter = sys.argv[1], sys.argv[2]

@step
async def call(i):
    with open(counter, "a") as f:
        f.write(f"{i}\n")
    await asyncio.sleep(0.05 + (i % 7) * 0.03)
    print(f"done {i}", flush=True)
    return {"i": i, "answer": i * 3}

async def main():
    async with workflow("agents", store=open_store(log)) as run:
        sem = asyncio.Semaphore(25)
        async def limited(i):
            async with sem:
                return await call(i)
        results = await asyncio.gather(*(limited(i) for i in range(200)))
    print("replayed", run.steps_replayed, "run", run.steps_run)
    print("digest", hashlib.sha256(repr(results).encode()).hexdigest())

asyncio.run(main())
"""


def run_script(folder: Path, kill_after: int | None, log: Path | str = "x.db") -> str:
    proc = python(SCRIPT, str(log), "counter.txt", cwd=folder)
    assert proc.stdout is not None
    out = []
    done = 0
    for line in proc.stdout:
        out.append(line)
        done += line.startswith("done ")
        if kill_after is not None and done >= kill_after:
            proc.send_signal(signal.SIGKILL)
            break
    proc.wait(timeout=120)
    return "".join(out)


def test_200_concurrent_steps_killed_and_resumed(tmp_path: Path, log_target: Path | str) -> None:
    reference = tmp_path / "reference"
    reference.mkdir()
    expected = run_script(reference, None).splitlines()[-1]
    log = log_target if isinstance(log_target, str) else tmp_path / "x.db"

    run_script(tmp_path, 90, log)
    if isinstance(log, Path):
        assert integrity(log) == "ok"
    conn = log_sql(log)
    committed = {
        int(a) for (a,) in conn.execute("SELECT args_repr FROM steps WHERE status = 'completed'")
    }
    conn.close()
    assert 80 <= len(committed) < 200
    out = run_script(tmp_path, None, log)
    assert out.splitlines()[-1] == expected
    assert out.splitlines()[-2] == f"replayed {len(committed)} run {200 - len(committed)}"
    seen = executions(tmp_path)
    assert sorted(seen) == list(range(200))
    assert all(seen[i] == 1 for i in committed)  # completed ones were not executed again
    if isinstance(log, Path):
        assert integrity(log) == "ok"


def test_top_level_await_concurrent_steps_survive_a_kernel_kill(tmp_path: Path) -> None:
    setup = (
        "import asyncio\nfrom durable_nb import step\n"
        "@step\nasync def call(i):\n"
        "    with open('counter.txt', 'a') as f:\n        f.write(f'{i}\\n')\n"
        "    with open('delay.txt') as f:\n        delay = float(f.read())\n"
        "    await asyncio.sleep(delay + (i % 5) * 0.02)\n    return i * 2\n"
    )
    cell = (
        "%%durable agents\nsem = asyncio.Semaphore(20)\n"
        "async def limited(i):\n    async with sem:\n        return await call(i)\n"
        "answers = await asyncio.gather(*(limited(i) for i in range(200)))\nsum(answers)"
    )
    env = kernel_env(tmp_path / "agents.ipynb")
    kernel = Kernel(tmp_path, env)
    try:
        kernel.execute("%load_ext durable_nb")
        (tmp_path / "delay.txt").write_text("0.1")  # a file: not a dependency of the step
        kernel.execute(setup)
        kernel.send(cell)
        counter = tmp_path / "counter.txt"
        deadline = time.monotonic() + 60
        while not counter.exists() or len(counter.read_text().split()) < 100:
            assert time.monotonic() < deadline, "the cell never got going"
            time.sleep(0.01)
    finally:
        kernel.kill()
    conn = sqlite3.connect(tmp_path / ".durable" / "agents.db")
    committed = {
        int(a) for (a,) in conn.execute("SELECT args_repr FROM steps WHERE status = 'completed'")
    }
    conn.close()
    assert 0 < len(committed) < 200
    (tmp_path / "delay.txt").write_text("0")
    nb = notebook("%load_ext durable_nb", setup, cell)
    run_all(nb, tmp_path, env)
    out = cell_text(nb.cells[2])
    assert str(sum(i * 2 for i in range(200))) in out
    assert f"agents: {len(committed)} steps replayed, {200 - len(committed)} run" in out
    seen = executions(tmp_path)
    assert all(seen[i] == 1 for i in committed)
    assert sorted(seen) == list(range(200))


def test_concurrent_steps_each_keep_their_own_printed_output(tmp_path: Path) -> None:
    import contextlib
    import io
    import sys

    @step
    def note(i: int) -> None:
        print(f"inner {i}")

    @step
    async def talk(i: int) -> int:
        print(f"start {i}")
        await asyncio.sleep(0.01 * (3 - i))  # the others print in between
        note(i)
        print(f"end {i}")
        return i

    async def flow(store: Store) -> list[int]:
        async with workflow("talk", store=store):
            results = await asyncio.gather(*(talk(i) for i in range(3)))
            print("body")  # not inside any step
            return results

    screen = sys.stdout
    with Store(tmp_path / "x.db") as store:
        first = io.StringIO()
        with contextlib.redirect_stdout(first):
            assert asyncio.run(flow(store)) == [0, 1, 2]
        rows = dict(store.conn.execute("SELECT args_repr, stdout FROM steps WHERE name = 'talk'"))
        again = io.StringIO()
        with contextlib.redirect_stdout(again):
            assert asyncio.run(flow(store)) == [0, 1, 2]
    assert sys.stdout is screen
    assert rows == {str(i): f"start {i}\ninner {i}\nend {i}\n" for i in range(3)}
    assert sorted(first.getvalue().splitlines()) == sorted(
        [f"{w} {i}" for i in range(3) for w in ("start", "inner", "end")] + ["body"]
    )
    assert again.getvalue().splitlines() == [
        *(f"[replayed] {w} {i}" for i in range(3) for w in ("start", "inner", "end")),
        "body",
    ]


def test_async_steps_printed_output_replays_in_a_fresh_kernel(tmp_path: Path) -> None:
    setup = (
        "import asyncio, sys\nfrom durable_nb import step\n"
        "@step\nasync def talk(i):\n"
        "    print(f'hello {i}')\n    await asyncio.sleep(0.02 * (3 - i))\n"
        "    print(f'bye {i}')\n    return i\n"
    )
    cell = "%%durable talk --force\nsum(await asyncio.gather(*(talk(i) for i in range(3))))"
    env = kernel_env(tmp_path / "talk.ipynb")
    nb = notebook("%load_ext durable_nb", setup, cell, "print(type(sys.stdout).__name__)")
    run_all(nb, tmp_path, env)
    assert "talk: 0 steps replayed, 3 run" in cell_text(nb.cells[2])
    nb = notebook("%load_ext durable_nb", setup, cell, "print(type(sys.stdout).__name__)")
    run_all(nb, tmp_path, env)
    out = cell_text(nb.cells[2])
    assert "talk: 3 steps replayed, 0 run" in out
    for i in range(3):
        assert f"[replayed] hello {i}\n[replayed] bye {i}\n" in out
    assert cell_text(nb.cells[3]) == "OutStream\n"
