"""Dependencies in real ipykernel processes: notebook helpers, classes, closures, a module
beside the notebook, big arrays, ``--plan`` and ``accept``."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

from .kernels import Kernel, cell_text, kernel_env, notebook, run_all

SETUP = "%load_ext durable_nb"
DEFINITIONS = """\
import importlib
import numpy as np, pandas as pd
import helpers
from durable_nb import step

def mark(name):
    with open("calls.txt", "a") as f:
        f.write(name + "\\n")

FACTOR = 10
BIG = np.arange(50 * 2**20 // 8, dtype=np.float64)  # 50 MB

def double(x):
    return 2 * x

def helper(x):
    return double(x) * FACTOR

class Scaler:
    def scale(self, x):
        return x + 1

def make(k):
    def add(x):
        return x + k
    return add

adder = make(1)

@step
def by_global(x):
    mark("by_global")
    return helper(x)

@step
def by_closure(x):
    mark("by_closure")
    return adder(x)

@step
def by_method(x):
    mark("by_method")
    return Scaler().scale(x)

@step
def by_module(x):
    mark("by_module")
    return helpers.triple(x)

@step
def by_array(x):
    mark("by_array")
    return float(np.mean(BIG) + pd.Series(BIG[:4]).sum()) + x
"""
CELL = """\
%%durable deps --force
out = [by_global(1), by_closure(1), by_method(1), by_module(1), by_array(1)]
print(out)
"""


def ran(folder: Path) -> list[str]:
    """The steps executed since the last call (and forget them)."""
    path = folder / "calls.txt"
    names = path.read_text().split() if path.exists() else []
    path.unlink(missing_ok=True)
    return names


def last_reasons(log: Path, run: int | None = None) -> dict[str, str | None]:
    conn = sqlite3.connect(log)
    run = run or conn.execute("SELECT max(id) FROM runs").fetchone()[0]
    rows = conn.execute("SELECT name, reason FROM steps WHERE run_id = ?", (run,)).fetchall()
    return dict(rows)


def test_exactly_the_affected_steps_run_again_with_their_reason(tmp_path: Path) -> None:
    (tmp_path / "helpers.py").write_text("def triple(x):\n    return 3 * x\n")
    env = kernel_env(tmp_path / "deps.ipynb")
    log = tmp_path / ".durable" / "deps.db"
    kernel = Kernel(tmp_path, env)
    try:
        assert kernel.execute(SETUP).status == "ok"
        assert kernel.execute(DEFINITIONS).status == "ok"
        first = kernel.execute(CELL)
        assert first.status == "ok", first.error
        assert "0 steps replayed, 5 run" in first.stdout
        assert sorted(ran(tmp_path)) == ["by_array", "by_closure", "by_global", "by_method",
                                         "by_module"]  # fmt: skip
        same = kernel.execute(CELL)
        assert "5 steps replayed, 0 run" in same.stdout and ran(tmp_path) == []

        changes = [
            ("FACTOR = 100", "by_global", "global FACTOR changed (10 -> 100) since run 1"),
            ("def double(x):\n    return x + x + 1", "by_global", "code of double changed"),
            ("adder = make(2)", "by_closure", "closure variable add.k changed (1 -> 2)"),
            (
                "class Scaler:\n    def scale(self, x):\n        return x + 2",
                "by_method",
                "code of Scaler.scale changed",
            ),
            (
                "open('helpers.py', 'w').write('def triple(x):\\n    return 30 * x\\n')\n"
                "importlib.reload(helpers)",
                "by_module",
                "code of helpers.triple changed",
            ),
            (  # autoreload (loaded before the loop) swaps the code of the function in place
                "open('helpers.py', 'w').write('def triple(x):\\n    return 300 * x\\n')",
                "by_module",
                "code of helpers.triple changed",
            ),
            ("BIG = BIG * 2", "by_array", "global BIG changed since run"),
        ]
        assert kernel.execute("%load_ext autoreload\n%autoreload 2").status == "ok"
        for code, step, reason in changes:
            assert kernel.execute(code).status == "ok"
            reply = kernel.execute(CELL)
            assert reply.status == "ok", reply.error
            assert ran(tmp_path) == [step], code
            assert "4 steps replayed, 1 run" in reply.stdout
            got = last_reasons(log)[step]
            assert got is not None and got.startswith(reason.split(" since")[0]), (code, got)
            assert reason in got

        cosmetic = (
            'def helper(x):\n    """Now with a docstring."""\n'
            "    # and a comment\n    return double(x)  *  FACTOR\n"
        )
        assert kernel.execute(cosmetic).status == "ok"
        reply = kernel.execute(CELL)
        assert "5 steps replayed, 0 run" in reply.stdout and ran(tmp_path) == []
        values = kernel.execute("print(out)").stdout
        assert values.startswith("[300, 3, 3, 300, ")
    finally:
        kernel.close()
    env_json = sqlite3.connect(log).execute("SELECT environment FROM runs ORDER BY id DESC")
    recorded = json.loads(env_json.fetchone()[0])
    assert {"numpy", "pandas", "python"} <= set(recorded)

    # A fresh kernel (Restart + Run All) with the same definitions replays everything: the
    # digests do not depend on the process.
    final = DEFINITIONS.replace("FACTOR = 10", "FACTOR = 100").replace(
        "return 2 * x", "return x + x + 1"
    )
    final = final.replace("adder = make(1)", "adder = make(2)")
    final = final.replace("x + 1\n\ndef make", "x + 2\n\ndef make")
    final += "\nBIG = BIG * 2\n"
    nb = notebook(SETUP, final, CELL)
    run_all(nb, tmp_path, env)
    assert "deps: 5 steps replayed, 0 run" in cell_text(nb.cells[2])
    assert ran(tmp_path) == []


def test_plan_and_accept_through_a_kernel(tmp_path: Path) -> None:
    env = kernel_env(tmp_path / "plan.ipynb")
    log = tmp_path / ".durable" / "plan.db"
    defs = (
        "from durable_nb import step\nFACTOR = 2\n"
        "def helper(x):\n    return x * FACTOR\n"
        "@step\ndef s(x):\n    with open('calls.txt', 'a') as f:\n        f.write('s\\n')\n"
        "    return helper(x)\n"
        "results = []\n"
    )
    cell = "%%durable planned\nfor i in range(3):\n    results.append(s(i))\nlast = results[-1]\n"
    kernel = Kernel(tmp_path, env)
    try:
        kernel.execute(SETUP)
        kernel.execute(defs)
        assert "0 steps replayed, 3 run" in kernel.execute(cell).stdout
        ran(tmp_path)
        kernel.execute("results = ['kept']\nlast = 'kept'")
        files = [log, log.with_name("plan.db-wal")]
        before = [p.read_bytes() for p in files]
        planned = kernel.execute(cell.replace("planned\n", "planned --plan\n", 1))
        assert planned.status == "ok", planned.error
        assert planned.stdout == "plan planned: 3 steps replay; nothing would run\n"
        kernel.execute("FACTOR = 3")
        planned = kernel.execute(cell.replace("planned\n", "planned --plan\n", 1))
        assert planned.stdout == (
            "plan planned: 0 steps replay, then s(0) would run (global FACTOR changed "
            "(2 -> 3) since run 1); nothing was run\n"
        )
        assert [p.read_bytes() for p in files] == before
        assert kernel.execute("print(results, last)").stdout == "['kept'] kept\n"
        assert ran(tmp_path) == []

        accepted = kernel.execute("%durable accept planned --step s")
        assert accepted.status == "ok", accepted.error
        assert "planned: 3 records of step s accepted" in accepted.stdout
        again = kernel.execute(cell.replace("planned\n", "planned --force\n", 1))
        assert "3 steps replayed, 0 run" in again.stdout and ran(tmp_path) == []
        bad = kernel.execute("%durable accept planned --step nope")
        assert bad.status == "error" and "step 'nope' is not defined" in bad.stderr
    finally:
        kernel.close()
    notes = sqlite3.connect(log).execute("SELECT kind, step FROM notes WHERE kind = 'accept'")
    assert notes.fetchall() == [("accept", "s")]
