"""Cell skip never restores a wrong state: each case in fresh kernels (Restart + Run All),
with the right value after a change, and the skip still happening when nothing changed."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import pytest

from .kernels import Kernel, cell_text, kernel_env, notebook, run_all

SETUP = "%load_ext durable_nb"
DEFS = """\
from durable_nb import step

def mark(name):
    with open("calls.txt", "a") as f:
        f.write(f"{name}\\n")

@step
def inc(v):
    mark("inc")
    return v + 1
"""


def ran(folder: Path) -> list[str]:
    """The steps executed since the last call (and forget them)."""
    path = folder / "calls.txt"
    names = path.read_text().split() if path.exists() else []
    path.unlink(missing_ok=True)
    return names


def run(folder: Path, *cells: str, log: Path | str | None = None) -> list[str]:
    """Run All in a fresh kernel (its log: the notebook's, or the PostgreSQL database at
    ``log``); the text of each cell."""
    env = kernel_env(folder / "nb.ipynb")
    if isinstance(log, str):
        env["DURABLE_NB_DB"] = log
    nb = run_all(notebook(SETUP, *cells), folder, env)
    return [cell_text(c) for c in nb.cells]


def test_a_name_read_and_assigned_is_an_input(tmp_path: Path) -> None:
    cell = "%%durable aug\nx = inc(x)\n"
    out = run(tmp_path, DEFS, "x = 10", cell, "print('x is', x)")
    assert out[-1] == "x is 11\n" and ran(tmp_path) == ["inc"]
    out = run(tmp_path, DEFS, "x = 10", cell, "print('x is', x)")
    assert "aug: skipped" in out[3] and out[-1] == "x is 11\n" and ran(tmp_path) == []
    out = run(tmp_path, DEFS, "x = 100", cell, "print('x is', x)")
    assert ": skipped" not in out[3] and out[-1] == "x is 101\n" and ran(tmp_path) == ["inc"]


def test_changes_made_in_place_are_restored(tmp_path: Path, log_target: Path | str) -> None:
    state = (
        "import pandas as pd\n"
        "class Box:\n    def fit(self, w):\n        self.w = w\n"
        "results, d, box, df = [], {}, Box(), pd.DataFrame({'a': [0, 0]})\n"
    )
    cell = (
        "%%durable mut\nresults.append(inc(1))\nd['k'] = inc(2)\nbox.fit(inc(3))\n"
        "df.loc[1, 'a'] = inc(4)\n"
    )
    show = "print(results, d, box.w, df['a'].tolist())"
    first = run(tmp_path, DEFS, state, cell, show, log=log_target)
    assert first[-1] == "[2] {'k': 3} 4 [0, 5]\n" and len(ran(tmp_path)) == 4
    again = run(tmp_path, DEFS, state, cell, show, log=log_target)
    assert "mut: skipped" in again[3] and "4 variables restored" in again[3]
    assert again[-1] == "[2] {'k': 3} 4 [0, 5]\n" and ran(tmp_path) == []
    changed = run(tmp_path, DEFS, state.replace("[0, 0]", "[7, 7]"), cell, show, log=log_target)
    assert ": skipped" not in changed[3] and changed[-1] == "[2] {'k': 3} 4 [7, 5]\n"


def test_steps_reached_through_a_helper_count(tmp_path: Path) -> None:
    train = "@step\ndef train(v):\n    mark('train')\n    return v * 2\n"
    helper = "def run_all(vs):\n    return [train(v) for v in vs]\n"
    cell = "%%durable via\nres = run_all([1, 2])\n"
    out = run(tmp_path, DEFS, train, helper, cell, "print(res)")
    assert out[-1] == "[2, 4]\n" and ran(tmp_path) == ["train", "train"]
    out = run(tmp_path, DEFS, train, helper, cell, "print(res)")
    assert "via: skipped" in out[4] and out[-1] == "[2, 4]\n"
    fixed = train.replace("v * 2", "v * 3")
    out = run(tmp_path, DEFS, fixed, helper, cell, "print(res)")
    assert ": skipped" not in out[4] and out[-1] == "[3, 6]\n" and ran(tmp_path) == ["train"] * 2


def test_a_step_record_the_run_used_must_still_be_valid(tmp_path: Path) -> None:
    """The step is called through a value the cell does not name (a registry of steps), so
    only the records its last run used show that the step changed."""
    train = (
        "import durable_nb\n@step\ndef train(v):\n    mark('train')\n    return v * 2\n"
        "def by_name(name, v):\n    return durable_nb.replay.engine.registered_step(name)(v)\n"
    )
    cell = "%%durable registry\nres = by_name('train', 5)\n"
    assert run(tmp_path, DEFS, train, cell, "print(res)")[-1] == "10\n"
    out = run(tmp_path, DEFS, train, cell, "print(res)")
    assert "registry: skipped" in out[3]
    out = run(tmp_path, DEFS, train.replace("v * 2", "v * 4"), cell, "print(res)")
    assert "not skipped: code of train changed since run 1" in out[3]
    assert out[-1] == "20\n"


def test_assignments_the_code_does_not_show_are_restored(tmp_path: Path) -> None:
    cell = "%%durable hidden\n%time model = inc(1)\nexec('y = inc(x)')\nglobals()['z'] = inc(3)\n"
    show = "print(model, y, z)"
    first = run(tmp_path, DEFS, "x = 1", cell, show)
    assert first[-1] == "2 2 4\n" and len(ran(tmp_path)) == 3
    again = run(tmp_path, DEFS, "x = 1", cell, show)
    assert "hidden: skipped" in again[3] and "3 variables restored" in again[3]
    assert again[-1] == "2 2 4\n" and ran(tmp_path) == []
    changed = run(tmp_path, DEFS, "x = 5", cell, show)  # x is read inside the exec'd code
    assert ": skipped" not in changed[3] and changed[-1] == "2 6 4\n"


FIT = """\
import time
@step
def fit(n):
    done = 0
    try:
        for done in range(1, n + 1):
            mark(done)
            time.sleep(0.05)
    except KeyboardInterrupt:  # what Keras and Lightning do: return the partial model
        return ("partial", done)
    return ("full", done)
"""
FIT_CELL = "%%durable fitting\nmodel = fit(30)\nprint(model)\n"


def test_a_step_that_caught_ctrl_c_is_not_replayed_nor_the_cell_skipped(tmp_path: Path) -> None:
    kernel = Kernel(tmp_path, kernel_env(tmp_path / "nb.ipynb"))
    try:
        kernel.execute(SETUP)
        kernel.execute(DEFS + FIT)
        msg_id = kernel.send(FIT_CELL)
        calls, deadline = tmp_path / "calls.txt", time.monotonic() + 60
        while not calls.exists() or len(calls.read_text().split()) < 3:
            assert time.monotonic() < deadline, "the step never got going"
            time.sleep(0.02)
        kernel.km.interrupt_kernel()
        reply = kernel.wait(msg_id)
        assert reply["content"]["status"] == "ok"  # the step caught it; the cell went on
        out = kernel.execute("print(model)").stdout
        assert out.startswith("('partial', ")
    finally:
        kernel.close()
    ran(tmp_path)
    out = run(tmp_path, DEFS, FIT, FIT_CELL)
    assert ": skipped" not in out[3] and "('full', 30)" in out[3]
    assert "0 steps replayed, 1 run" in out[3] and len(ran(tmp_path)) == 30
    again = run(tmp_path, DEFS, FIT, FIT_CELL)
    assert "fitting: skipped" in again[3] and "('full', 30)" in again[3]
    rows = sqlite3.connect(tmp_path / ".durable" / "nb.db").execute(
        "SELECT status, result_repr FROM steps ORDER BY id"
    )
    first, second = rows.fetchall()
    assert first[0] == "interrupted" and first[1].startswith("('partial', ")  # kept to look at
    assert second == ("completed", "('full', 30)")


def test_headless_runs_name_unnamed_cells_by_their_id(tmp_path: Path) -> None:
    path = tmp_path / "job.ipynb"
    cell = "%%durable\nvals = [inc(i) for i in range(4)]\nraise RuntimeError('fix me')\n"
    nb = notebook(SETUP, DEFS, cell, "print(vals)")
    nbformat.write(nb, str(path))
    cmd = [sys.executable, "-m", "durable_nb.cli", "run", str(path)]
    first = subprocess.run(cmd, env=kernel_env(), capture_output=True, text=True, timeout=180)
    assert first.returncode == 1 and "fix me" in first.stderr
    assert ran(tmp_path) == ["inc"] * 4
    nb = nbformat.read(str(path), as_version=4)
    nb.cells[2].source = nb.cells[2].source.replace("raise RuntimeError('fix me')", "len(vals)")
    nbformat.write(nb, str(path))
    second = subprocess.run(cmd, env=kernel_env(), capture_output=True, text=True, timeout=180)
    assert second.returncode == 0, second.stderr
    assert f"cell-{nb.cells[2].id}: 4 steps replayed, 0 run" in second.stdout
    assert ran(tmp_path) == []
    third = subprocess.run(cmd, env=kernel_env(), capture_output=True, text=True, timeout=180)
    assert f"cell-{nb.cells[2].id}: skipped" in third.stdout


@pytest.mark.parametrize(
    ("file", "before", "after", "cell", "show", "outputs"),
    [
        (  # import helpers / from helpers import f
            "helpers.py", "def f(v):\n    return v * 2\n", "def f(v):\n    return v * 200\n",
            "%%durable imp\nimport helpers\nfrom helpers import f\ny = helpers.f(inc(1)) + f(1)\n",
            "print(y)", ("6\n", "600\n"),
        ),
        (  # importlib.import_module("m2"): an import by name
            "m2.py", "K = 2\n", "K = 7\n",
            "%%durable imp\nimport importlib\nm = importlib.import_module('m2')\ny = inc(m.K)\n",
            "print(y, m.K)", ("3 2\n", "8 7\n"),
        ),
    ],
)  # fmt: skip
def test_a_module_the_cell_imports_is_an_input(
    tmp_path: Path, file: str, before: str, after: str, cell: str, show: str,
    outputs: tuple[str, str],
) -> None:  # fmt: skip
    (tmp_path / file).write_text(before)
    assert run(tmp_path, DEFS, cell, show)[-1] == outputs[0]
    assert "imp: skipped" in run(tmp_path, DEFS, cell, show)[2]
    (tmp_path / file).write_text(after)
    out = run(tmp_path, DEFS, cell, show)
    assert ": skipped" not in out[2] and out[-1] == outputs[1]


def test_a_cell_that_caught_a_failed_step_runs_again(tmp_path: Path) -> None:
    flaky = (
        "import os\n@step\ndef download(u):\n    if not os.path.exists('network'):\n"
        "        raise ConnectionError('offline')\n    return u.upper()\n"
    )
    cell = (
        "%%durable fetch\nresults = {}\nfor u in ['a', 'b']:\n    try:\n"
        "        results[u] = download(u)\n    except ConnectionError:\n        results[u] = None\n"
    )
    out = run(tmp_path, DEFS, flaky, cell, "print(results)")
    assert "0 steps replayed, 0 run, 2 failed" in out[3]
    assert "the cell will run again next time: step download failed" in out[3]
    (tmp_path / "network").touch()
    out = run(tmp_path, DEFS, flaky, cell, "print(results)")
    assert ": skipped" not in out[3] and out[-1] == "{'a': 'A', 'b': 'B'}\n"
    assert "fetch: skipped" in run(tmp_path, DEFS, flaky, cell, "print(results)")[3]


def test_restored_values_keep_their_aliases(tmp_path: Path) -> None:
    state = "a = []\nholder = {'list': a}\n"
    cell = "%%durable alias\na.append(inc(1))\nx = [inc(2)]\ny = x\n"
    show = "print(holder['list'] is a, x is y, holder, x)"
    assert run(tmp_path, DEFS, state, cell, show)[-1] == "True True {'list': [2]} [3]\n"
    again = run(tmp_path, DEFS, state, cell, show)
    assert "alias: skipped" in again[3] and again[-1] == "True True {'list': [2]} [3]\n"


def test_a_cell_that_changes_what_its_step_reads_is_still_skipped(tmp_path: Path) -> None:
    defs = "CFG = {'lr': 0.1}\n@step\ndef train(v):\n    mark('train')\n    return v * CFG['lr']\n"
    cell = "%%durable tune\nCFG['lr'] = 0.5\nr = train(2)\n"
    first = run(tmp_path, DEFS, defs, cell, "print(r, CFG)")
    assert first[-1] == "1.0 {'lr': 0.5}\n" and "will run again" not in first[3]
    again = run(tmp_path, DEFS, defs, cell, "print(r, CFG)")
    assert "tune: skipped" in again[3] and again[-1] == "1.0 {'lr': 0.5}\n"


def test_a_dataframe_restored_by_a_skip_lets_the_next_cell_skip_too(
    tmp_path: Path, log_target: Path | str
) -> None:
    cells = (
        DEFS,
        "import pandas as pd",
        "%%durable make\ndf = pd.DataFrame({'a': [inc(1), 5], 'b': ['x', 'y']})\n",
        "%%durable use\ntotal = int(df['a'].sum()) + inc(0)\n",
        "print(total)",
    )
    run(tmp_path, *cells, log=log_target)
    second = run(tmp_path, *cells, log=log_target)
    assert "make: skipped" in second[3] and "use: skipped" in second[4]
    assert second[-1] == "8\n"


def test_a_headless_notebook_without_cell_ids_says_how_unnamed_cells_are_named(
    tmp_path: Path,
) -> None:
    path = tmp_path / "old.ipynb"
    nb = notebook(SETUP, "%%durable\nx = 1\n")
    nb.nbformat_minor = 4
    for cell in nb.cells:
        cell.pop("id", None)
    nbformat.write(nb, str(path), version=nbformat.NO_CONVERT)
    cmd = [sys.executable, "-m", "durable_nb.cli", "run", str(path)]
    done = subprocess.run(cmd, env=kernel_env(), capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr
    assert "old.ipynb is nbformat 4.4, whose cells have no ids" in done.stdout


def test_what_a_cell_takes_from_a_module_it_imports_is_an_input(tmp_path: Path) -> None:
    """``from cfg import RATE`` in the cell, then ``cfg.RATE = 70`` elsewhere: the module's
    file is unchanged, but what the cell takes of it is not, so it runs."""
    (tmp_path / "cfgmod.py").write_text("RATE = 60\n")
    kernel = Kernel(tmp_path, kernel_env(tmp_path / "nb.ipynb"))
    cell = "%%durable takes\nfrom cfgmod import RATE as RR\nv = inc(RR)\n"
    try:
        for code in (SETUP, DEFS, "import cfgmod"):
            assert kernel.execute(code).status == "ok"
        assert kernel.execute(cell).status == "ok"
        assert "skipped" in kernel.execute(cell).stdout  # nothing changed
        kernel.execute("cfgmod.RATE = 70")
        again = kernel.execute(cell)
        assert ": skipped" not in again.stdout, again.stdout
        assert kernel.execute("print(v)").stdout == "71\n"
    finally:
        kernel.close()


def test_a_callable_object_changed_in_place_is_restored(tmp_path: Path) -> None:
    """A model with ``__call__`` is a value: its change in place is restored by a skip."""
    state = (
        "class Acc:\n    def __init__(self):\n        self.total = 0\n"
        "    def __call__(self, x):\n        return x + self.total\n"
        "acc = Acc()\n"
    )
    cell = "%%durable acc\nacc.total += inc(4)\n"
    show = "print(acc.total, acc(1))"
    assert run(tmp_path, DEFS, state, cell, show)[-1] == "5 6\n" and ran(tmp_path) == ["inc"]
    again = run(tmp_path, DEFS, state, cell, show)
    assert "acc: skipped" in again[3] and again[-1] == "5 6\n" and ran(tmp_path) == []


def test_a_plan_puts_back_a_callable_object_the_cell_changes() -> None:
    from durable_nb.notebook.cellstate import NamespaceGuard

    class Acc:
        def __init__(self) -> None:
            self.total = 0

        def __call__(self, x: int) -> int:
            return x + self.total

    import functools

    @functools.lru_cache
    def cached(x: int) -> int:  # a wrapper of code, not a value: never deep-copied
        return x

    namespace = {"acc": Acc(), "cached": cached}
    guard = NamespaceGuard(namespace, ["acc", "cached"])
    assert namespace["cached"] is cached and namespace["acc"] is not guard.saved["acc"]
    namespace["acc"].total += 11  # what the planned cell does
    guard.restore()
    assert namespace["acc"].total == 0


def test_user_modules_a_module_imports_in_turn_are_inputs(tmp_path: Path) -> None:
    (tmp_path / "mypkg").mkdir()
    (tmp_path / "mypkg" / "__init__.py").write_text("from .core import compute\n")
    (tmp_path / "mypkg" / "core.py").write_text("from utils import g\ndef compute(x):\n"
                                                "    return g(x) * 2\n")  # fmt: skip
    (tmp_path / "utils.py").write_text("def g(x):\n    return x + 1\n")
    cell = "%%durable deep\nimport mypkg\ny = mypkg.compute(inc(2))\n"
    assert run(tmp_path, DEFS, cell, "print(y)")[-1] == "8\n"
    assert "deep: skipped" in run(tmp_path, DEFS, cell, "print(y)")[2]
    (tmp_path / "mypkg" / "core.py").write_text("from utils import g\ndef compute(x):\n"
                                                "    return g(x) * 1000\n")  # fmt: skip
    out = run(tmp_path, DEFS, cell, "print(y)")
    assert ": skipped" not in out[2] and out[-1] == "4000\n"
    assert "deep: skipped" in run(tmp_path, DEFS, cell, "print(y)")[2]
    (tmp_path / "utils.py").write_text("def g(x):\n    return x + 2\n")  # two imports down
    out = run(tmp_path, DEFS, cell, "print(y)")
    assert ": skipped" not in out[2] and out[-1] == "5000\n"
