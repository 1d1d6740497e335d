"""Checkpoints inside a step (issue 29): a long call killed at epoch 6 of 10 goes on from
epoch 6, never from 0, and only when its code and dependencies are what saved the state."""

from __future__ import annotations

import asyncio
import signal
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

import durable_nb
from durable_nb import CheckpointError, checkpoint, last_checkpoint, step, workflow

from .conftest import log_sql, python
from .kernels import Kernel, kernel_env

# One epoch of "training": the state carries an array (a blob file once it is big enough).
# The epoch is counted in epochs.txt once its checkpoint is committed.
TRAIN = """
import time
import numpy as np
import durable_nb
from durable_nb import step

def fit_one_epoch(weights):
    time.sleep(EPOCH_SECONDS)
    return weights * 0.9

@step
def train(lr, epochs=10):
    state = durable_nb.last_checkpoint()
    weights, start = (state["weights"], state["epoch"] + 1) if state else (np.ones(SIZE), 0)
    for epoch in range(start, epochs):
        weights = fit_one_epoch(weights)
        durable_nb.checkpoint({"weights": weights, "epoch": epoch}, loss=float(weights[0]))
        with open("epochs.txt", "a") as f:
            f.write(f"{epoch}\\n")
    return float(weights.sum())
"""


def train_source(epoch_seconds: float = 0.15, size: int = 200_000) -> str:
    return TRAIN.replace("EPOCH_SECONDS", str(epoch_seconds)).replace("SIZE", str(size))


UNINTERRUPTED = float((np.ones(200_000) * 0.9**10).sum())


def epochs(folder: Path) -> Counter[int]:
    path = folder / "epochs.txt"
    return Counter(int(n) for n in path.read_text().split()) if path.exists() else Counter()


def wait_for_epochs(folder: Path, n: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while sum(epochs(folder).values()) < n:
        assert time.monotonic() < deadline, f"only {epochs(folder)} epochs ran"
        time.sleep(0.02)


SWEEP = "%%durable sweep\nresult = train(0.1)\nprint('result', result)\n"


def test_sigkill_during_epoch_6_resumes_from_epoch_6_in_a_fresh_kernel(tmp_path: Path) -> None:
    env = kernel_env(tmp_path / "train.ipynb")
    kernel = Kernel(tmp_path, env)
    try:
        kernel.execute("%load_ext durable_nb")
        assert kernel.execute(train_source()).status == "ok"
        kernel.send(SWEEP)
        wait_for_epochs(tmp_path, 6)  # epochs 0-5 checkpointed, 6 under way
    finally:
        kernel.kill()
    fresh = Kernel(tmp_path, env)
    try:
        fresh.execute("%load_ext durable_nb")
        fresh.execute(train_source())
        reply = fresh.execute(SWEEP)
    finally:
        fresh.close()
    assert reply.status == "ok", reply.error
    ran = epochs(tmp_path)
    assert all(ran[e] == 1 for e in range(6)), ran  # never from 0 again
    assert sorted(ran) == list(range(10))
    assert f"result {UNINTERRUPTED}" in reply.stdout
    # the call completed: its states are dropped, its metrics stay
    done = durable_nb.checkpoints(log=tmp_path / ".durable" / "train.db")
    assert not done["kept"].any()
    assert len(done) >= 10 and done["loss"].iloc[-1] == pytest.approx(0.9**10)


def test_ctrl_c_during_a_step_then_rerun_resumes(tmp_path: Path) -> None:
    kernel = Kernel(tmp_path, kernel_env(tmp_path / "train.ipynb"))
    try:
        kernel.execute("%load_ext durable_nb")
        kernel.execute(train_source())
        msg_id = kernel.send(SWEEP)
        wait_for_epochs(tmp_path, 4)
        kernel.km.interrupt_kernel()
        assert kernel.wait(msg_id)["content"]["status"] == "error"  # KeyboardInterrupt
        interrupted = sum(epochs(tmp_path).values())
        reply = kernel.execute(SWEEP)
    finally:
        kernel.close()
    ran = epochs(tmp_path)
    assert all(ran[e] == 1 for e in range(interrupted)), ran
    assert f"result {UNINTERRUPTED}" in reply.stdout


def test_a_retry_after_an_exception_resumes_and_the_reason_says_so(any_log: Path | str) -> None:
    ran: list[int] = []

    @step(retries=1, retry_delay=0)
    def flaky(n: int) -> float:
        state = last_checkpoint()
        start, total = (state["epoch"] + 1, state["total"]) if state else (0, 0.0)
        for epoch in range(start, n):
            ran.append(epoch)
            total += epoch
            checkpoint({"epoch": epoch, "total": total}, total=total)
            if epoch == 5 and ran.count(5) == 1:
                raise RuntimeError("the GPU fell over")
        return total

    with workflow("retry"):
        assert flaky(10) == sum(range(10))
    assert ran == list(range(10))
    rows = durable_nb.steps(workflow="retry")
    assert rows["status"].tolist() == ["failed", "completed"]
    assert rows["reason"].iloc[1].startswith("resumed from checkpoint 6 of flaky (attempt 1")


ASYNC = """
import asyncio, sys
import durable_nb
from durable_nb import step, workflow

durable_nb.open_log(sys.argv[1])

@step
async def crawl(pages):
    state = durable_nb.last_checkpoint()
    done = state or []
    for page in range(len(done), pages):
        await asyncio.sleep(0.1)
        done = [*done, page * page]
        durable_nb.checkpoint(done, pages=len(done))
        with open("epochs.txt", "a") as f:
            f.write(f"{page}\\n")
    return sum(done)

async def main():
    async with workflow("crawler"):
        return await asyncio.gather(crawl(10), crawl(12))

print("result", asyncio.run(main()))
"""


def test_an_async_step_killed_mid_way_resumes(tmp_path: Path) -> None:
    log = str(tmp_path / "agent.db")
    first = python(ASYNC, log, cwd=tmp_path)
    wait_for_epochs(tmp_path, 8)
    first.send_signal(signal.SIGKILL)
    first.wait()
    again = python(ASYNC, log, cwd=tmp_path)
    out, err = again.communicate(timeout=60)
    assert again.returncode == 0, err
    assert (
        out.strip() == f"result [{sum(p * p for p in range(10))}, {sum(p * p for p in range(12))}]"
    )
    # 22 pages in all, none twice: both calls went on from their newest checkpoint
    assert sum(epochs(tmp_path).values()) == 22


def test_a_changed_helper_starts_from_0_and_says_why(
    any_log: Path | str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The notebook's helper cell is edited between the crash and the rerun: the saved
    state was made by other code, so the call starts over, saying what changed."""
    namespace: dict[str, object] = {"__name__": "__main__"}
    source = (
        "import os\nfrom durable_nb import step, checkpoint, last_checkpoint\n"
        "def fit_one_epoch(x):\n    return x + STEP\n"
        "@step\ndef train(epochs):\n"
        "    state = last_checkpoint()\n"
        "    start, x = (state[0] + 1, state[1]) if state else (0, 0)\n"
        "    for epoch in range(start, epochs):\n"
        "        with open(os.environ['EPOCHS'], 'a') as f:\n"
        "            f.write(f'{epoch}\\n')\n"
        "        x = fit_one_epoch(x)\n"
        "        checkpoint((epoch, x))\n"
        "        if epoch == 5 and os.environ.get('FAIL'):\n"
        "            raise RuntimeError('stop')\n"
        "    return x\n"
    )
    monkeypatch.setenv("EPOCHS", str(tmp_path / "epochs.txt"))
    monkeypatch.setenv("FAIL", "1")
    exec(source.replace("STEP", "1"), namespace)
    with pytest.raises(RuntimeError), workflow("changed"):
        namespace["train"](10)  # type: ignore[operator]
    exec(source.replace("STEP", "2"), namespace)  # the helper changed
    monkeypatch.delenv("FAIL")
    with workflow("changed"):
        assert namespace["train"](10) == 20  # type: ignore[operator]
    ran = [int(n) for n in (tmp_path / "epochs.txt").read_text().split()]
    assert ran == [*range(6), *range(10)]  # from 0 again
    reason = durable_nb.steps(workflow="changed")["reason"].iloc[-1]
    assert reason.startswith("checkpoint 6 of train not used:") and "fit_one_epoch" in reason


def test_a_checkpoint_survives_a_litestream_restore_onto_a_new_folder(tmp_path: Path) -> None:
    """Checkpoints (and their state's blob) go to the replica with the log; restored on a
    new folder, the call goes on from its newest checkpoint there."""
    first, second = tmp_path / "laptop", tmp_path / "server"
    first.mkdir()
    second.mkdir()
    replica = f"file://{tmp_path / 'replica'}"
    # The laptop: epochs 0-5 of a 10-epoch call, then the process dies (os._exit after the
    # replica has caught up, as a machine lost after its last sync).
    slow = train_source(epoch_seconds=1.0)  # the flush at the end takes ~2 s of them
    laptop = slow + (
        "import os, sys\nfrom durable_nb import workflow\n"
        "durable_nb.open_log(sys.argv[1])\n"
        "replicator = durable_nb.replicate(sys.argv[2], sync_interval='100ms')\n"
        "import threading\n"
        "def lose_the_machine():\n"
        "    while not os.path.exists('epochs.txt') or len(open('epochs.txt').readlines()) < 6:\n"
        "        time.sleep(0.005)\n"
        "    durable_nb.stop_replication()\n"  # the replica holds everything so far
        "    os._exit(9)\n"
        "threading.Thread(target=lose_the_machine, daemon=True).start()\n"
        "with workflow('sweep'):\n"
        "    train(0.1)\n"
    )
    proc = python(laptop, str(first / "x.db"), replica, cwd=first)
    proc.communicate(timeout=120)
    assert 6 <= sum(epochs(first).values()) < 10
    restored = second / ".durable" / "x.db"
    (second / ".durable").mkdir()
    durable_nb.restore(replica, to=restored)
    server = slow + (
        "import sys\nfrom durable_nb import workflow\n"
        "durable_nb.open_log(sys.argv[1])\n"
        "with workflow('sweep'):\n"
        "    print('result', train(0.1))\n"
    )
    out, err = python(server, str(restored), cwd=second).communicate(timeout=120)
    assert f"result {UNINTERRUPTED}" in out, err
    on_server = epochs(second)
    assert min(on_server) >= 6, on_server  # went on from the laptop's newest checkpoint


def test_checkpoint_outside_a_step_or_on_a_worker_is_one_line(any_log: Path | str) -> None:
    with pytest.raises(CheckpointError, match="inside a running @step call"):
        checkpoint({"epoch": 1})
    with pytest.raises(CheckpointError, match="inside a running @step call"):
        last_checkpoint()

    @step
    def remote(i: int) -> int:
        checkpoint(i)
        return i

    with workflow("pool"), pytest.raises(CheckpointError, match="executor's worker"):
        remote.map([1, 2], executor=ThreadPoolExecutor(2))


def test_keep_checkpoints_keeps_the_newest_state(any_log: Path | str) -> None:
    @step(keep_checkpoints=True)
    def kept(n: int) -> int:
        for i in range(n):
            checkpoint(i, i=i)
        return n

    @step
    def dropped(n: int) -> int:
        for i in range(n):
            checkpoint(i, i=i)
        return n

    with workflow("keep"):
        kept(3)
        dropped(3)
    rows = durable_nb.checkpoints(workflow="keep")
    assert rows.groupby("step")["kept"].sum().to_dict() == {"dropped": 0, "kept": 1}
    assert rows["i"].tolist() == [0, 1, 2, 0, 1, 2]
    conn = log_sql(any_log)
    assert conn.execute("SELECT count(*) FROM checkpoint_states").fetchone() == (1,)
    kinds = [k for (k,) in conn.execute("SELECT kind FROM events WHERE kind LIKE '%checkpoint'")]
    assert kinds == ["step checkpoint"] * 6


def test_a_tampered_checkpoint_state_is_never_unpickled(
    any_log: Path | str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import os
    import pickle

    monkeypatch.setenv("EPOCHS", str(tmp_path / "epochs.txt"))
    monkeypatch.setenv("FAIL", "1")

    @step
    def long(n: int) -> int:
        state = last_checkpoint()
        start = state + 1 if state is not None else 0
        for i in range(start, n):
            with open(os.environ["EPOCHS"], "a") as f:
                f.write(f"{i}\n")
            checkpoint(i)
            if i == 2 and os.environ.get("FAIL"):
                raise RuntimeError("stop")
        return n

    with pytest.raises(RuntimeError), workflow("tamper"):
        long(5)
    evil = pickle.dumps(Counter)  # any other pickle: it must never be loaded unsigned
    conn = log_sql(any_log)
    with conn:
        conn.execute("UPDATE checkpoint_states SET state = ?", (evil,))
    monkeypatch.delenv("FAIL")
    said = "checkpoint 3 of long not used"
    with pytest.warns(durable_nb.DurableWarning, match=said), workflow("tamper"):
        assert long(5) == 5
    ran = [int(n) for n in (tmp_path / "epochs.txt").read_text().split()]
    assert ran == [0, 1, 2, 0, 1, 2, 3, 4]  # from 0: the state was not trusted


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_last_checkpoint_is_none_on_a_fresh_call(any_log: Path | str, kind: str) -> None:
    seen: list[object] = []

    if kind == "sync":

        @step
        def fresh() -> int:
            seen.append(last_checkpoint())
            return 1

        with workflow(kind):
            fresh()
    else:

        @step
        async def afresh() -> int:
            seen.append(last_checkpoint())
            return 1

        async def flow() -> None:
            async with workflow(kind):
                await afresh()

        asyncio.run(flow())
    assert seen == [None]


def test_experiments_and_the_timeline_show_a_call_cut_short(
    any_log: Path | str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A crashed (here: failed) call is a row of experiments() with its newest checkpoint's
    metrics, and the timeline ticks each checkpoint on its attempt's bar."""
    import os

    monkeypatch.setenv("FAIL", "1")

    @step
    def fit(lr: float, epochs: int = 8) -> dict[str, float]:
        loss = 1.0
        for epoch in range(epochs):
            loss *= 1 - lr
            checkpoint({"epoch": epoch}, loss=loss, epoch=epoch)
            if epoch == 3 and os.environ.get("FAIL"):
                raise RuntimeError("cut short")
        return {"loss": loss}

    with pytest.raises(RuntimeError), workflow("sweep"):
        fit(0.5)
    table = durable_nb.experiments("sweep")
    assert table["progress"].tolist() == ["checkpoint 4 (run failed)"]
    assert table["lr"].tolist() == [0.5] and table["loss"].tolist() == [0.0625]
    monkeypatch.delenv("FAIL")
    with workflow("sweep"):
        fit(0.1)  # another call completes: a row without progress
    both = durable_nb.experiments("sweep")
    assert both["progress"].isna().tolist() == [True, False]  # completed calls first
    figure = durable_nb.timeline("sweep")
    ax = figure.axes[0]
    ticks = [line for line in ax.lines if line.get_marker() == "|"]
    assert len(ticks) == 1 and len(ticks[0].get_xdata()) == 4 + 8
    assert "checkpoint" in [t.get_text() for t in ax.get_legend().get_texts()]


AGENT = """
import os, sys
import durable_nb
from durable_nb import checkpoint, step, workflow

durable_nb.open_log(sys.argv[1])
durable_nb.replicate(sys.argv[2], sync_interval="100ms")

@step
def crawl(pages):
    for page in range(pages):
        checkpoint(page, pages_done=page + 1)
        if page == 4:
            raise RuntimeError("the site went down")

try:
    with workflow("crawler"):
        crawl(10)
except RuntimeError:
    pass
durable_nb.stop_replication()
"""


def test_a_fleet_observer_sees_an_agents_progress(tmp_path: Path) -> None:
    root = f"file://{tmp_path / 'fleet'}/"
    agent = python(AGENT, str(tmp_path / "agent-1.db"), root, cwd=tmp_path)
    _, err = agent.communicate(timeout=120)
    assert agent.returncode == 0, err
    fleet = durable_nb.fleet(root, cache=tmp_path / "cache")
    seen = fleet.checkpoints("crawler")
    assert seen["pages_done"].tolist() == [1, 2, 3, 4, 5]
    assert [name.rsplit("/", 1)[-1] for name in set(seen["log"])] == ["agent-1"]
    progress = fleet.experiments("crawler")["progress"].tolist()
    assert progress == ["checkpoint 5 (run failed)"]


EDGES = """
import importlib, os, sys
import durable_nb
from durable_nb import checkpoint, last_checkpoint, step

@step
def train(epochs):
    if os.environ.get("DONE_AT_ONCE"):  # this attempt completes without checkpoints
        return -1
    state = last_checkpoint()
    start = state["epoch"] + 1 if state else 0
    with open(os.environ["EPOCHS"], "a") as f:
        f.write(f"start {start}\\n")
    for epoch in range(start, epochs):
        module = importlib.import_module(os.environ["STATE_MODULE"])  # (unseen by replay)
        model = getattr(module, os.environ.get("STATE_CLASS", "Model"))()
        checkpoint({"epoch": epoch, "model": model})
        if epoch == 2 and os.environ.get("FAIL"):
            raise RuntimeError("stop")
    if os.environ.get("NOT_DURABLE"):
        return lambda: epochs  # not durable: the call runs again, from its state
    return epochs
"""


def _edges(tmp_path: Path) -> dict[str, object]:
    namespace: dict[str, object] = {"__name__": "__main__"}
    exec(EDGES, namespace)
    return namespace


@pytest.fixture
def state_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> object:
    """A module of the state's class, which the step imports by a name replay cannot see."""
    import importlib
    import sys

    name = f"ck_state_{tmp_path.name.replace('-', '_')}"
    (tmp_path / f"{name}.py").write_text("class Model:\n    pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("STATE_MODULE", name)
    module = importlib.import_module(name)
    yield module
    sys.modules.pop(name, None)


def starts(tmp_path: Path) -> list[int]:
    return [int(line.split()[1]) for line in (tmp_path / "epochs.txt").read_text().splitlines()]


def test_what_resumes_and_what_does_not(
    any_log: Path | str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, state_module: object
) -> None:
    """The review's cases: a call that completes without touching its checkpoints drops
    them; a fresh run does not resume; a result that is not durable keeps them (it runs
    again, from its state); a state whose class is gone makes the call start over."""
    monkeypatch.setenv("EPOCHS", str(tmp_path / "epochs.txt"))
    ns = _edges(tmp_path)
    train = ns["train"]

    monkeypatch.setenv("FAIL", "1")
    with pytest.raises(RuntimeError), workflow("a"):
        train(5)  # type: ignore[operator]
    monkeypatch.delenv("FAIL")
    with workflow("a", fresh=True):
        assert train(5) == 5  # type: ignore[operator]
    assert starts(tmp_path) == [0, 0]  # fresh: the log's checkpoint is not resumed

    monkeypatch.setenv("FAIL", "1")
    with pytest.raises(RuntimeError), workflow("b"):
        train(5)  # type: ignore[operator]
    monkeypatch.delenv("FAIL")
    monkeypatch.setenv("DONE_AT_ONCE", "1")
    with workflow("b"):
        assert train(5) == -1  # type: ignore[operator]
    assert not durable_nb.checkpoints("b")["kept"].any()  # dropped as the call completed
    conn = log_sql(any_log)  # as if the process died between its row and the drop:
    with conn:
        conn.execute(
            "INSERT INTO checkpoint_states (workflow, scope, name, args_digest, occurrence, "
            "run_id, code_digest, attempt, seq, started_at, created_at, args_repr, "
            "state_format, state_size, state) SELECT workflow, scope, name, args_digest, "
            "occurrence, run_id, code_digest, attempt, seq, started_at, created_at, args_repr, "
            "'pickle', 5, ? FROM checkpoints WHERE workflow = 'b' ORDER BY id DESC LIMIT 1",
            (bytes.fromhex("80054b012e"),),
        )
    assert durable_nb.checkpoints("b")["kept"].any()
    with workflow("b"):
        assert train(5) == -1  # type: ignore[operator]  # replayed: the state is dropped
    assert not durable_nb.checkpoints("b")["kept"].any()
    monkeypatch.delenv("DONE_AT_ONCE")

    monkeypatch.setenv("NOT_DURABLE", "1")
    with pytest.warns(durable_nb.DurableWarning), workflow("c"):
        train(5)  # type: ignore[operator]
    with pytest.warns(durable_nb.DurableWarning), workflow("c"):
        train(5)  # type: ignore[operator]
    monkeypatch.delenv("NOT_DURABLE")
    assert starts(tmp_path)[-2:] == [0, 5]  # ran again, from its newest state

    (tmp_path / "epochs.txt").unlink()
    monkeypatch.setenv("FAIL", "1")
    with pytest.raises(RuntimeError), workflow("d"):
        train(5)  # type: ignore[operator]
    monkeypatch.delenv("FAIL")
    module = state_module.__name__  # type: ignore[attr-defined]
    state_module.Renamed = type("Renamed", (), {"__module__": module})  # type: ignore[attr-defined]
    del state_module.Model  # type: ignore[attr-defined]  # the state's class is renamed
    monkeypatch.setenv("STATE_CLASS", "Renamed")
    with pytest.warns(durable_nb.DurableWarning, match="state unreadable"), workflow("d"):
        assert train(5) == 5  # type: ignore[operator]
    assert starts(tmp_path) == [0, 0]


def test_experiments_show_a_rerun_cut_short_after_an_older_version_completed(
    any_log: Path | str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, state_module: object
) -> None:
    monkeypatch.setenv("EPOCHS", str(tmp_path / "epochs.txt"))
    ns = _edges(tmp_path)
    with workflow("e"):
        ns["train"](5)  # type: ignore[operator]
    ns = _edges(tmp_path)
    exec("def helper():\n    return 1\n", ns)  # the step's code changes: a new version
    exec(EDGES.replace("return epochs\n", "return epochs + helper()\n"), ns)
    monkeypatch.setenv("FAIL", "1")
    with pytest.raises(RuntimeError), workflow("e"):
        ns["train"](5)  # type: ignore[operator]
    shown = durable_nb.experiments("e")
    assert shown["progress"].tolist()[-1] == "checkpoint 3 (run failed)"


KERNEL_STEPS = """
import asyncio, os
import durable_nb
from durable_nb import step

def fit_one_epoch(x):
    return x + 1

def note(epoch):
    with open("epochs.txt", "a") as f:
        f.write(f"{epoch}\\n")

@step(retries=1, retry_delay=0)
def train(epochs):
    state = durable_nb.last_checkpoint()
    start, x = (state["epoch"] + 1, state["x"]) if state else (0, 0)
    for epoch in range(start, epochs):
        if epoch == 5 and os.environ.get("GPU_FAILS"):  # every attempt
            raise MemoryError("out of GPU memory")
        x = fit_one_epoch(x)
        durable_nb.checkpoint({"epoch": epoch, "x": x})
        note(epoch)
        if epoch == 5 and os.environ.pop("GPU_FAILS_ONCE", None):
            raise MemoryError("out of GPU memory")
    return x

@step
async def crawl(pages):
    state = durable_nb.last_checkpoint()
    done = state or []
    for page in range(len(done), pages):
        await asyncio.sleep(0.15)
        done = [*done, page]
        durable_nb.checkpoint(done)
        note(100 + page)
    return len(done)
"""


def test_in_a_kernel_retries_async_steps_and_a_changed_helper(tmp_path: Path) -> None:
    """The other acceptance cases in real kernels: a retry after an exception goes on from
    epoch 6; an async step killed with its kernel goes on in a fresh kernel; a changed helper
    starts the call from 0, and the step's reason says why."""
    env = kernel_env(tmp_path / "nb.ipynb")
    kernel = Kernel(tmp_path, env)
    try:
        kernel.execute("%load_ext durable_nb")
        assert kernel.execute(KERNEL_STEPS).status == "ok"
        kernel.execute("import os; os.environ['GPU_FAILS_ONCE'] = '1'")
        retried = kernel.execute("%%durable retry\nx = train(10)\nprint('x', x)")
        assert "x 10" in retried.stdout, retried.stderr
        assert sorted(epochs(tmp_path)) == list(range(10))  # 0-5 once each: resumed at 6
        assert all(n == 1 for n in epochs(tmp_path).values())
        kernel.send("%%durable crawler\nn = await crawl(12)\nprint('pages', n)")
        wait_for_epochs(tmp_path, 10 + 5)  # five pages checkpointed
    finally:
        kernel.kill()
    fresh = Kernel(tmp_path, env)
    try:
        fresh.execute("%load_ext durable_nb")
        fresh.execute(KERNEL_STEPS)
        crawled = fresh.execute("%%durable crawler\nn = await crawl(12)\nprint('pages', n)")
        assert "pages 12" in crawled.stdout, crawled.stderr
        pages = Counter(e for e in epochs(tmp_path).elements() if e >= 100)
        assert sorted(pages) == list(range(100, 112))
        assert max(pages.values()) == 1  # none of the checkpointed pages ran again
        # a changed helper: the state saved by the old code is not resumed
        fresh.execute("import os; os.environ['GPU_FAILS'] = '1'")
        failed = fresh.execute("%%durable changed\ny = train(8)")  # both attempts fail at 5
        assert failed.status == "error"
        fresh.execute("del os.environ['GPU_FAILS']\ndef fit_one_epoch(x):\n    return x + 2\n")
        (tmp_path / "epochs.txt").unlink()
        again = fresh.execute("%%durable changed\ny = train(8)\nprint('y', y)")
        reasons = fresh.execute(
            "print(durable_nb.steps(workflow='changed')['reason'].dropna().tolist())"
        )
    finally:
        fresh.close()
    assert "y 16" in again.stdout, again.stderr
    assert sorted(epochs(tmp_path)) == list(range(8))  # from 0 again
    assert "not used" in reasons.stdout and "fit_one_epoch" in reasons.stdout, reasons.stdout


def test_a_kept_state_survives_a_later_rerun_and_forget_spares_a_running_run(
    any_log: Path | str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The second review's cases: a fresh rerun that checkpoints and fails leaves the state
    a completed keep_checkpoints call kept; forget() while a run is running keeps that
    run's state, so it still resumes."""
    import os

    monkeypatch.setenv("EPOCHS", str(tmp_path / "epochs.txt"))

    @step(keep_checkpoints=True)
    def kept(n: int) -> int:
        state = last_checkpoint()
        for i in range(state + 1 if state is not None else 0, n):
            checkpoint(i)
            with open(os.environ["EPOCHS"], "a") as f:
                f.write(f"{i}\n")
            if i == 1 and os.environ.get("FAIL"):
                if os.environ.get("FORGET"):
                    durable_nb.get_store().forget("forget")  # from another "process"
                raise RuntimeError("stop")
        return n

    with workflow("keep"):
        kept(3)
    monkeypatch.setenv("FAIL", "1")
    with pytest.raises(RuntimeError), workflow("keep", fresh=True):
        kept(3)
    conn = log_sql(any_log)
    rows = conn.execute("SELECT run_id, seq, done FROM checkpoint_states ORDER BY id").fetchall()
    assert rows == [(1, 3, 1), (2, 2, 0)]  # the kept state of run 1 is still there

    monkeypatch.setenv("FORGET", "1")
    (tmp_path / "epochs.txt").unlink()
    with pytest.raises(RuntimeError), workflow("forget"):
        kept(4)
    monkeypatch.delenv("FAIL")
    with workflow("forget"):
        assert kept(4) == 4
    assert (tmp_path / "epochs.txt").read_text().split() == ["0", "1", "2", "3"]  # resumed


def test_a_state_row_gone_meanwhile_is_saved_again(any_log: Path | str) -> None:
    """Each checkpoint after a call's first updates its row in place; if that row went
    (another process replaced or forgot it), the checkpoint inserts it again."""

    @step
    def twice() -> int:
        checkpoint(1)
        with log_sql(any_log) as conn:
            conn.execute("DELETE FROM checkpoint_states")
        checkpoint(2)
        checkpoint(3)
        raise RuntimeError("stop")

    with pytest.raises(RuntimeError), workflow("gone"):
        twice()
    conn = log_sql(any_log)
    assert conn.execute("SELECT seq, state_size > 0 FROM checkpoint_states").fetchall() == [(3, 1)]
    assert [r[0] for r in conn.execute("SELECT seq FROM checkpoints ORDER BY id")] == [1, 2, 3]


def test_an_async_steps_acheckpoint_lets_the_loop_go_on(
    any_log: Path | str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``await acheckpoint(state)`` writes from a worker thread: another task on the loop
    runs meanwhile (``checkpoint()`` would hold the loop), and the state resumes as any.
    (The ticks go through the environment, which replay does not read.)"""
    import os

    monkeypatch.setenv("TICKS", "0")
    monkeypatch.setenv("WAITED", "")

    async def ticker(stop: asyncio.Event) -> None:
        while not stop.is_set():
            os.environ["TICKS"] = str(int(os.environ["TICKS"]) + 1)
            await asyncio.sleep(0)

    @step
    async def train(n: int) -> int:
        state = last_checkpoint()
        start = state["epoch"] + 1 if state else 0
        for epoch in range(start, n):
            before = int(os.environ["TICKS"])
            await durable_nb.acheckpoint({"epoch": epoch, "w": np.ones(2_000_000)}, epoch=epoch)
            os.environ["WAITED"] += f"{int(os.environ['TICKS']) - before > 0:d}"
            if epoch == 1 and state is None:
                raise RuntimeError("stop")
        return n

    async def flow() -> int:
        stop = asyncio.Event()
        beat = asyncio.create_task(ticker(stop))
        try:
            async with workflow("async-ck"):
                return await train(3)
        finally:
            stop.set()
            await beat

    with pytest.raises(RuntimeError):
        asyncio.run(flow())
    assert asyncio.run(flow()) == 3
    assert os.environ["WAITED"] == "111"  # the loop went on during each of the three
    rows = durable_nb.checkpoints("async-ck")
    assert rows["epoch"].tolist() == [0, 1, 2] and rows["run"].tolist() == [1, 1, 2]
