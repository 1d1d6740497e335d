"""What steps and cells show, kept and shown again (issue 16): linear capture, every kind of
output replayed in a fresh kernel, bounded sizes."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import pytest

from durable_nb import step, workflow
from durable_nb.replay.capture import KEPT

from .kernels import Kernel, kernel_env, notebook, run_all

SHOWY = """\
import logging, sys
import matplotlib
matplotlib.use("module://matplotlib_inline.backend_inline")
import matplotlib.pyplot as plt
import pandas as pd
from IPython.display import display
from tqdm import tqdm
from durable_nb import step

logging.basicConfig(level=logging.INFO, format="LOG %(levelname)s %(message)s", force=True)

@step
def train(n):
    with open("calls.txt", "a") as f:
        f.write("train\\n")
    print("epoch 1 done")
    for _ in tqdm(range(n), desc="fitting", file=sys.stderr, mininterval=0):
        pass
    logging.info("loss went down")
    display(pd.DataFrame({"loss": [0.5, 0.25]}))
    fig, ax = plt.subplots()
    ax.plot([1, 2, 3])
    plt.show()
    return n
"""
CELL = "%%durable showy --force\nresult = train(50)\n"


def kinds(cell: object) -> list[str]:
    """What a cell showed, in order: stream names and the mime types of displays."""
    out = []
    for o in cell.outputs:  # type: ignore[attr-defined]
        if o.output_type == "stream":
            out.append(o.name)
        elif o.output_type == "display_data":
            out.append("+".join(sorted(k for k in o.data if k != "text/plain")) or "text")
    return out


def texts(cell: object, name: str) -> str:
    return "".join(o.text for o in cell.outputs if o.output_type == "stream" and o.name == name)  # type: ignore[attr-defined]


def stored(log: Path, column: str = "stdout") -> dict[str, object]:
    """What each step's row holds in ``column``, by step name."""
    query = f"SELECT name, {column} FROM steps"
    return dict(sqlite3.connect(log).execute(query).fetchall())


def test_a_replayed_step_shows_everything_it_showed(tmp_path: Path) -> None:
    env = kernel_env(tmp_path / "showy.ipynb")
    first = run_all(notebook("%load_ext durable_nb", SHOWY, CELL), tmp_path, env)
    second = run_all(notebook("%load_ext durable_nb", SHOWY, CELL), tmp_path, env)  # fresh kernel
    assert (tmp_path / "calls.txt").read_text() == "train\n"  # the second run replayed it
    shown = second.cells[2]
    assert "text/html" in kinds(shown) and "image/png" in kinds(shown)
    assert "[replayed] epoch 1 done" in texts(shown, "stdout")
    err = texts(shown, "stderr")
    assert "[replayed] LOG INFO loss went down" in err
    bar = [line for line in err.splitlines() if "fitting" in line]
    assert len(bar) == 1 and "50/50" in bar[0]  # the bar's final state, once
    assert kinds(first.cells[2]).count("image/png") == kinds(shown).count("image/png") == 1
    conn = sqlite3.connect(tmp_path / ".durable" / "showy.db")
    stdout, output = conn.execute("SELECT stdout, output FROM steps").fetchone()
    assert stdout == "epoch 1 done\n" and '"display"' in output and '"stderr"' in output


def test_printing_many_lines_in_a_durable_cell_stays_linear(tmp_path: Path) -> None:
    kernel = Kernel(tmp_path, kernel_env(tmp_path / "lines.ipynb"))
    try:
        kernel.execute("%load_ext durable_nb")
        code = "for i in range(40_000):\n    print('line', i)"
        t0 = time.perf_counter()
        assert kernel.execute(code, timeout=300).status == "ok"
        plain = time.perf_counter() - t0
        t0 = time.perf_counter()
        reply = kernel.execute("%%durable lines\n" + code, timeout=300)
        durable = time.perf_counter() - t0
        assert reply.status == "ok"
        assert durable < 2 * plain + 0.5, (durable, plain)
    finally:
        kernel.close()


def test_what_a_step_prints_is_kept_bounded(log_path: Path) -> None:
    @step
    def loud() -> int:
        print("x" * (3 * KEPT))
        return 1

    with workflow("loud"):
        loud()
    kept = sqlite3.connect(log_path).execute("SELECT stdout FROM steps").fetchone()[0]
    assert KEPT <= len(kept) < KEPT + 200
    assert f"[... {3 * KEPT + 1 - KEPT:,} characters of output not kept ...]" in kept


@pytest.mark.parametrize("steps", [20, 5000])
def test_timeline_stays_bounded(log_path: Path, steps: int) -> None:
    import matplotlib.pyplot  # noqa: F401  (imported before the clock starts)

    import durable_nb

    quick = step(abs)
    with workflow("many"):
        for i in range(steps):
            quick(-i)
    t0 = time.perf_counter()
    fig = durable_nb.timeline("many")
    assert time.perf_counter() - t0 < 2.0
    assert fig.get_size_inches()[1] <= 0.25 * 300 + 1.3
    title = fig.axes[0].get_title()
    assert (steps > 300) == ("one bar per run and step" in title)


def test_log_lines_are_kept_once_and_the_streams_put_back(log_path: Path) -> None:
    import io
    import logging
    import sys
    import threading

    stream = io.StringIO()
    handler = logging.StreamHandler(stream)  # bound to its own stream, as basicConfig's is
    logging.root.addHandler(handler)
    logging.root.setLevel(logging.INFO)
    before = sys.stdout, sys.stderr

    @step
    def inner() -> int:
        logging.info("inner says 1")
        return 1

    @step
    def outer() -> int:
        return inner() + 1

    @step
    def slow_in_thread(i: int) -> int:
        time.sleep(0.2)
        return i

    try:
        with workflow("logs"):
            outer()
            worker = threading.Thread(target=slow_in_thread, args=(1,))
            worker.start()  # a router in place while the main thread tees
            time.sleep(0.05)
            inner()
            worker.join()
    finally:
        logging.root.removeHandler(handler)
    assert (sys.stdout, sys.stderr) == before
    rows = stored(log_path, "output")
    assert rows["outer"].count("inner says 1") == 1


def test_streams_are_teed_per_step_and_honour_redirects(log_path: Path) -> None:
    import contextlib
    import io
    import sys

    before = sys.stdout, sys.stderr

    @step
    def inner(i: int) -> int:
        print(f"inner {i}")
        return i

    @step
    def outer(i: int) -> int:
        print(f"outer {i}")
        return inner(i) + 1

    buffer = io.StringIO()
    with workflow("shared"):
        outer(1)
        assert (sys.stdout, sys.stderr) == before  # the real streams between steps
        print("between steps")  # the cell's, no step's
        with contextlib.redirect_stdout(buffer):  # a step under someone else's stream
            outer(2)
        outer(3)
    assert (sys.stdout, sys.stderr) == before
    assert buffer.getvalue() == "outer 2\ninner 2\n"
    rows = (
        sqlite3.connect(log_path)
        .execute("SELECT name, args_repr, stdout FROM steps ORDER BY id")
        .fetchall()
    )
    shown = {(name, args): out for name, args, out in rows}
    for i in (1, 2, 3):
        assert shown[("outer", str(i))] == f"outer {i}\ninner {i}\n"
        assert shown[("inner", str(i))] == f"inner {i}\n"
    assert all("between" not in (out or "") for _, _, out in rows)


def test_the_stream_under_a_run_is_not_kept_alive_after_it(log_path: Path) -> None:
    import gc
    import io
    import sys
    import weakref

    @step
    def prints() -> int:
        print("kept")
        return 1

    before = sys.stdout
    recorder = io.StringIO()  # as a kernel's cell recorder stands under a durable cell
    sys.stdout = recorder
    try:
        with workflow("alive"):
            prints()
    finally:
        sys.stdout = before
    assert recorder.getvalue() == "kept\n"
    gone = weakref.ref(recorder)
    del recorder
    gc.collect()
    assert gone() is None


@pytest.mark.parametrize("under", ["plain", "redirected"])
def test_a_capture_left_by_a_ctrl_c_before_its_try_is_undone_when_the_run_ends(
    log_path: Path, under: str
) -> None:
    """A Ctrl-C landing between a step's ``Capture()`` and its ``try`` leaves the capture
    running; the end of the last run undoes it (streams back, nothing recorded later)."""
    import contextlib
    import io
    import sys

    from durable_nb.replay.capture import Capture

    @step
    def later() -> int:
        print("later")
        return 1

    before = sys.stdout, sys.stderr
    sink = io.StringIO()
    with contextlib.redirect_stdout(sink) if under == "redirected" else contextlib.nullcontext():
        under_run = sys.stdout
        with pytest.raises(KeyboardInterrupt), workflow("left"):
            left = Capture()  # what the interrupted step started, never stopped
            raise KeyboardInterrupt
        assert (sys.stdout, sys.stderr) == (under_run, before[1])  # put back
        print("between runs")
        with workflow("left"):
            later()
        assert (sys.stdout, sys.stderr) == (under_run, before[1])
    assert left.events == [] and (sys.stdout, sys.stderr) == before
    printed = sqlite3.connect(log_path).execute("SELECT stdout FROM steps WHERE name = 'later'")
    assert printed.fetchall() == [("later\n",)]


def test_wrapped_and_redirected_streams_are_recorded_once_in_the_right_step(
    log_path: Path,
) -> None:
    import contextlib
    import io
    import sys

    before = sys.stdout, sys.stderr
    kept: list[object] = []

    class Wrap:  # a user's wrapper that passes writes on (as wandb's or a logger's)
        def __init__(self, target: object) -> None:
            self.target = target

        def write(self, text: str) -> int:
            return self.target.write(text)  # type: ignore[attr-defined]

        def flush(self) -> None:
            pass

    @step
    def keeps_the_stream() -> int:
        kept.append(Wrap(sys.stdout))  # wraps the step's own tee
        return 0

    @step
    def inner(i: int) -> int:
        print(f"inner {i}")
        return i

    @step
    def prints(i: int) -> int:
        print(f"prints {i}")
        return i

    @step
    def redirects(i: int) -> int:
        with contextlib.redirect_stdout(sys.stderr):
            inner(i)  # to stderr: its own stdout, its parent's stderr
        with contextlib.redirect_stdout(io.StringIO()):
            inner(i + 1)  # to a buffer: its own, not its parent's
        return i

    with workflow("wrapped"):
        keeps_the_stream()
        sys.stdout = kept[0]  # the cell puts the wrapper in place: a tee under it
        try:
            prints(1)
        finally:
            sys.stdout = before[0]
        redirects(5)
    assert (sys.stdout, sys.stderr) == before
    rows = (
        sqlite3.connect(log_path)
        .execute("SELECT name, args_repr, stdout, output FROM steps ORDER BY id")
        .fetchall()
    )
    shown = {(name, args): (out, output) for name, args, out, output in rows}
    assert shown[("prints", "1")][0] == "prints 1\n"  # once, not once per tee
    assert shown[("inner", "5")][0] == "inner 5\n"
    assert shown[("inner", "6")][0] == "inner 6\n"
    out, output = shown[("redirects", "5")]
    assert not out and "inner 5" in output and "inner 6" not in output
    assert '"stderr"' in output


@pytest.mark.filterwarnings("ignore:step waits")  # the Event it waits on is not digested
def test_streams_are_put_back_when_thread_steps_outlive_the_run(log_path: Path) -> None:
    import sys
    import threading

    before = sys.stdout, sys.stderr
    go = threading.Event()

    @step
    def waits(i: int) -> int:
        go.wait(5)
        print(f"waited {i}")
        return i

    @step
    def quick() -> int:
        print("quick")
        return 1

    with workflow("outlived"):
        quick()
        worker = threading.Thread(target=waits, args=(1,))
        worker.start()  # a router in place, still there when the run ends
        time.sleep(0.05)
    go.set()
    worker.join()
    assert (sys.stdout, sys.stderr) == before
    rows = stored(log_path)
    assert rows == {"waits": "waited 1\n", "quick": "quick\n"}


def test_a_stream_a_step_puts_in_place_stays_and_patched_writes_work(log_path: Path) -> None:
    import io
    import logging
    import sys

    before = sys.stdout, sys.stderr
    mine = io.StringIO()
    patched: list[str] = []

    @step
    def redirects() -> int:
        sys.stdout = mine  # for the rest of the cell, as it would without durable_nb
        return 1

    @step
    def patches() -> int:
        original = sys.stdout.write
        sys.stdout.write = lambda text: patched.append(text) or original(text)  # as wandb does
        print("patched")
        return 2

    @step
    def prints_nowhere() -> int:
        print("to None")  # a no-op, as print is when sys.stdout is None
        return 3

    @step
    def logs() -> int:
        logging.getLogger("t").warning("to stdout")
        return 4

    handler = logging.StreamHandler(before[0])  # bound to the real stdout between steps
    handler.setFormatter(logging.Formatter("%(message)s"))
    handlers = logging.root.handlers[:]
    try:
        with workflow("kept"):
            redirects()
            print("after")
        assert sys.stdout is mine and mine.getvalue() == "after\n"
        sys.stdout = before[0]
        with workflow("kept"):
            patches()
            sys.stdout = None
            prints_nowhere()
            sys.stdout = before[0]
            logging.root.handlers = [handler]  # the only one (pytest's own are not in a kernel)
            logs()
    finally:
        sys.stdout, sys.stderr = before
        logging.root.handlers = handlers
    assert "".join(patched) == "patched\n"
    rows = stored(log_path)
    assert rows["patches"] == "patched\n" and rows["logs"] == "to stdout\n"
    assert rows["prints_nowhere"] is None


def test_a_nested_replay_is_kept_unmarked_in_the_step_around_it(log_path: Path) -> None:
    fail = [True]

    @step
    def inner() -> int:
        print("inner ran")
        return 1

    @step
    def outer() -> int:
        value = inner()
        print("outer ran")
        if fail[0]:
            raise RuntimeError("not yet")
        return value

    with pytest.raises(RuntimeError), workflow("nest"):
        outer()
    fail[0] = False
    with workflow("nest") as run:  # outer runs again, inner replays inside it
        outer()
    assert run.steps_replayed == 1
    stored = (
        sqlite3.connect(log_path)
        .execute("SELECT stdout FROM steps WHERE name = 'outer' AND status = 'completed'")
        .fetchone()[0]
    )
    assert stored == "inner ran\nouter ran\n"  # its replay marks each line once


@pytest.mark.filterwarnings("ignore:step")  # the Events the steps wait on are not digested
def test_a_thread_step_keeps_its_lines_out_of_a_main_thread_step_running_meanwhile(
    log_path: Path,
) -> None:
    import threading

    started, printed = threading.Event(), threading.Event()

    @step
    def in_thread(i: int) -> int:
        started.wait(5)
        print(f"thread {i}")
        printed.set()
        return i

    @step
    def in_main() -> int:
        print("main before")
        started.set()
        printed.wait(5)
        print("main after")
        return 0

    with workflow("apart"):
        worker = threading.Thread(target=in_thread, args=(1,))
        worker.start()
        in_main()
        worker.join()
    rows = stored(log_path)
    assert rows == {"in_main": "main before\nmain after\n", "in_thread": "thread 1\n"}


def test_interleaved_streams_keep_at_most_kept_in_all(log_path: Path) -> None:
    import sys

    @step
    def noisy() -> int:
        for _ in range(8):
            print("o" * (KEPT // 2))
            print("e" * (KEPT // 2), file=sys.stderr)
        return 1

    with workflow("noisy"):
        noisy()
    stdout, output = (
        sqlite3.connect(log_path).execute("SELECT stdout, output FROM steps").fetchone()
    )
    assert len(output) < 1.2 * KEPT and len(stdout) < 1.2 * KEPT
