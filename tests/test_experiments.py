"""Experiments as data (issue 13): one row per call, a column per parameter and result field,
read from JSON written at checkpoint time, never from a pickle."""

from __future__ import annotations

import pickle
import sqlite3
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import durable_nb
from durable_nb import step, workflow

from .conftest import ROOT, python
from .kernels import Kernel, kernel_env

LRS = [0.001, 0.003, 0.01, 0.03, 0.1, 0.3]


def make_train(scale: float) -> object:
    @step(name="train")
    def train(lr: float, epochs: int = 3) -> dict[str, float]:
        return {"loss": lr * scale + epochs, "acc": 1 - lr}

    return train


def test_a_sweep_is_a_table_of_parameters_and_results(log_path: Path) -> None:
    train = make_train(2.0)
    with workflow("sweep"):
        for lr in LRS:
            train(lr)  # type: ignore[operator]
    df = durable_nb.experiments("sweep", "train")
    assert len(df) == 6
    assert list(df.columns) == ["workflow", "run", "step", "lr", "epochs", "loss", "acc",
                                "duration", "started"]  # fmt: skip
    for column in ("lr", "epochs", "loss", "acc"):
        assert pd.api.types.is_numeric_dtype(df[column]), column
    assert df["lr"].tolist() == LRS and df["epochs"].tolist() == [3] * 6
    assert str(df["duration"].dtype).startswith("timedelta64")

    train = make_train(5.0)  # the code changed: the sweep runs again
    with workflow("sweep"):
        for lr in LRS:
            train(lr)  # type: ignore[operator]
    latest = durable_nb.experiments("sweep", "train")
    assert latest["loss"].tolist() == [lr * 5.0 + 3 for lr in LRS]  # the new values only
    every = durable_nb.experiments("sweep", "train", latest=False)
    assert len(every) == 12 and set(every["status"]) == {"completed"}


def test_failed_calls_with_latest_false_and_clashing_names(log_path: Path) -> None:
    @step
    def fit(lr: float) -> dict[str, object]:
        if lr > 0.5:
            raise ValueError("diverged")
        return {"lr": lr * 10, "ok": True, "nested": {"a": 1, "b": {"c": 2}}}

    with workflow("fits"):
        fit(0.1)
        with pytest.raises(ValueError):
            fit(0.9)
    df = durable_nb.experiments("fits")
    assert len(df) == 1 and df["result.lr"].tolist() == [1.0] and df["lr"].tolist() == [0.1]
    assert df["ok"].dtype == "boolean" and df["nested.b.c"].tolist() == [2]
    every = durable_nb.experiments("fits", latest=False)
    assert every["status"].tolist() == ["completed", "failed"]
    assert every["error"].tolist()[1] == "ValueError: diverged"


def test_odd_arguments_become_short_reprs(log_path: Path) -> None:
    @step
    def use(data: object, frame: object, n: object = np.int64(3)) -> float:
        return 1.5

    with workflow("odd"):
        use(np.arange(1000.0), pd.DataFrame({"a": [1, 2]}))
        use(object(), {"k": [1, 2]}, n=float("nan"))
    df = durable_nb.experiments("odd")
    assert df["n"].tolist()[0] == 3 and np.isnan(df["n"].tolist()[1])
    assert df["data"].tolist()[0].startswith("array([")
    assert df["result"].tolist() == [1.5, 1.5]


WRITER = """
import dataclasses, sys, typing
sys.path.insert(0, sys.argv[2])
import durable_nb, gone_module
from durable_nb import step, workflow
durable_nb.open_log(sys.argv[1])

@step
def measure(x):
    return gone_module.Result(loss=x / 2, acc=1 - x), gone_module.Pair(x, -x)

@step
def first(x):
    return measure(x)[0]

@step
def second(x):
    return measure(x)[1]

with workflow("gone"):
    first(0.5), second(0.5)
"""


ODD_VALUES = [
    1.5, -0.0, 1e300, float("nan"), float("inf"), 2**70, "x" * 100, 'é"\'\\\n', True, None,
    (1, 2), [1, 2], b"by", {}, {"k": 1}, {1: 2}, {"a" * 90: 1}, {"x": float("inf")},
    {"a": 1, "b": 2.5, "c": "s", "d": None, "e": True, "f": 0, "g": 7}, np.float64(2.5),
    np.int64(3), 10**5000, {"x": 10**5000},
]  # fmt: skip


@pytest.mark.parametrize("value", ODD_VALUES, ids=lambda v: type(v).__name__)
def test_the_one_pass_texts_match_repr_and_json(value: object) -> None:
    from durable_nb.digests import Arguments
    from durable_nb.experiments import metrics_document, params_document, result_documents
    from durable_nb.serialization import args_repr, describe

    assert result_documents(value) == (*describe(value), metrics_document(value))

    def two(a: object, b: object = "s") -> None: ...

    arguments = Arguments(two)
    for args in ((value, "y" * 90), (value, value)):
        expected = (args_repr(args, {}), params_document(arguments.named(args, {})))
        assert arguments.documents(args, {}) == expected


def test_a_result_too_long_to_print_is_kept_and_replayed(log_path: Path) -> None:
    @step
    def power(n: int) -> int:
        return 10**n  # more digits than Python turns into text

    for _ in range(2):
        with workflow("huge") as run:
            assert power(5000) == 10**5000
    assert run.steps_replayed == 1
    row = sqlite3.connect(log_path).execute("SELECT result_repr, metrics FROM steps").fetchone()
    assert row == ("<int of 16610 bits>", '{"result":"<int of 16610 bits>"}')
    from durable_nb.experiments import metrics_document

    assert metrics_document(10**4250) == '{"result":1' + "0" * 4250 + "}"  # Python prints it


def test_results_of_a_module_gone_are_still_read_and_pickles_never_run(tmp_path: Path) -> None:
    module = tmp_path / "gone_module.py"
    module.write_text(
        "import dataclasses, typing\n"
        "@dataclasses.dataclass\nclass Result:\n    loss: float\n    acc: float\n"
        "class Pair(typing.NamedTuple):\n    left: float\n    right: float\n"
    )
    log = tmp_path / "g.db"
    proc = python(WRITER, str(log), str(tmp_path), cwd=tmp_path)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    module.unlink()  # the class is gone when the log is read

    class Boom:
        def __reduce__(self) -> tuple[object, ...]:
            return (open, (str(tmp_path / "pwned"), "w"))

    conn = sqlite3.connect(log)
    with conn:
        conn.execute("UPDATE steps SET result = ?", (pickle.dumps(Boom()),))
    reader = (
        "import sys, durable_nb\n"
        "df = durable_nb.experiments('gone', log=sys.argv[1])\n"
        "print(df[['step', 'loss', 'acc', 'left', 'right']].to_csv(index=False))\n"
        "durable_nb.steps(log=sys.argv[1]); durable_nb.runs(log=sys.argv[1])\n"
        "durable_nb.events(log=sys.argv[1]); durable_nb.compare('gone', 1, 1, log=sys.argv[1])\n"
    )
    proc = python(reader, str(log), cwd=tmp_path)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert "first,0.25,0.5,," in out and "second,,,0.5,-0.5" in out
    assert not (tmp_path / "pwned").exists()


def test_compare_says_what_a_change_did(log_path: Path) -> None:
    train = make_train(2.0)
    with workflow("cmp") as a:
        for lr in LRS[:3]:
            train(lr)  # type: ignore[operator]
    train = make_train(4.0)
    with workflow("cmp") as b:
        for lr in LRS[1:4]:
            train(lr)  # type: ignore[operator]
    df = durable_nb.compare("cmp", a.id, b.id)
    by_args = dict(zip(df["args"], df["difference"], strict=True))
    assert by_args["0.001"] == f"only in run {a.id}" and by_args["0.03"] == f"only in run {b.id}"
    assert by_args["0.003"] == "loss: 3.006 -> 3.012"
    assert set(df[f"run {b.id}"].dropna()) == {"ran"}


def test_experiments_in_a_kernel_and_a_terminal(tmp_path: Path) -> None:
    kernel = Kernel(tmp_path, kernel_env(tmp_path / "exp.ipynb"))
    try:
        kernel.execute("%load_ext durable_nb")
        kernel.execute(
            "from durable_nb import step\n@step\ndef train(lr):\n"
            "    return {'loss': abs(lr - 0.01), 'acc': lr}\n"
        )
        kernel.execute("%%durable sweep\nvals = [train(lr) for lr in [0.1, 0.01, 0.001]]")
        reply = kernel.execute("%durable experiments sweep train")
        assert reply.status == "ok", reply.error
        html = reply.results[0]["text/html"]
        assert html.index("0.010000") < html.index("0.100000")  # sorted by loss, best first
        assert "font-weight: bold" in html
    finally:
        kernel.close()
    out = subprocess.run(
        [sys.executable, "-m", "durable_nb.cli", "experiments", str(tmp_path / "exp.ipynb"),
         "--step", "train", "--format", "csv"],
        capture_output=True, text=True, timeout=60, env={"PYTHONPATH": str(ROOT), "PATH": ""},
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines()[0] == "workflow,run,step,lr,loss,acc,duration,started"
    assert len(out.stdout.splitlines()) == 4
