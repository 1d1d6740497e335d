"""Experiments as data (issue 13): one row per call, a column per parameter and result field,
read from JSON written at checkpoint time, never from a pickle."""

from __future__ import annotations

import dataclasses
import json
import pickle
import sqlite3
import subprocess
import sys
import typing
from collections.abc import Iterator, Mapping
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import durable_nb
from durable_nb import step, workflow
from durable_nb.errors import DurableError
from durable_nb.log.documents import MAX_FIELDS

from .conftest import ROOT, log_sql, python
from .kernels import Kernel, kernel_env

LRS = [0.001, 0.003, 0.01, 0.03, 0.1, 0.3]


def make_train(scale: float) -> object:
    @step(name="train")
    def train(lr: float, epochs: int = 3) -> dict[str, float]:
        return {"loss": lr * scale + epochs, "acc": 1 - lr}

    return train


def test_a_sweep_is_a_table_of_parameters_and_results(any_log: Path | str) -> None:
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


def test_failed_calls_with_latest_false_and_clashing_names(any_log: Path | str) -> None:
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


def test_parameters_named_like_the_fixed_columns_keep_both(any_log: Path | str) -> None:
    @step
    def sched(step: int, run: int, duration: float) -> dict[str, object]:
        return {"step": step * 2, "workflow": "w", "loss": 0.5}

    with workflow("sched") as first:
        sched(10, 7, 0.5)
        sched(20, 8, 1.5)
    df = durable_nb.experiments("sched")
    assert df["step"].tolist() == ["sched", "sched"] and df["run"].tolist() == [first.id] * 2
    assert df["param.step"].tolist() == [10, 20] and df["param.run"].tolist() == [7, 8]
    assert df["param.duration"].tolist() == [0.5, 1.5]
    assert str(df["duration"].dtype).startswith("timedelta64")
    assert df["result.step"].tolist() == [20, 40] and df["result.workflow"].tolist() == ["w"] * 2


def test_text_with_the_word_nan_stays_text_and_non_finite_numbers_are_numbers(
    any_log: Path | str,
) -> None:
    @step
    def opt(name: str, score: float) -> float:
        return score

    with workflow("words"):
        for name, score in (("adam", 1.0), ("nan", float("nan")), ("sgd", float("inf"))):
            opt(name, score)
    df = durable_nb.experiments("words")
    assert df["name"].tolist() == ["adam", "nan", "sgd"]
    assert pd.api.types.is_float_dtype(df["score"]) and pd.api.types.is_float_dtype(df["result"])
    assert df["score"].tolist()[0] == 1.0 and np.isnan(df["score"].tolist()[1])
    assert df["result"].tolist()[2] == float("inf")


class Scores(typing.NamedTuple):
    loss: float
    acc: float


@dataclasses.dataclass
class Fit:
    loss: float
    detail: dict[str, object]


class Frozen(Mapping[str, float]):
    """A read-only Mapping that is not a dict."""

    def __init__(self, items: dict[str, float]) -> None:
        self._items = items

    def __getitem__(self, key: str) -> float:
        return self._items[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)


def test_every_kind_of_result_gives_its_fields(any_log: Path | str) -> None:
    kinds = {
        "series": pd.Series({"loss": 0.25, "acc": 0.5}),
        "namedtuple": Scores(0.25, 0.5),
        "dataclass": Fit(0.25, {"acc": 0.5, "inner": {"k": 1}}),
        "mapping": Frozen({"loss": 0.25, "acc": 0.5}),
        "wide": {f"f{i:03d}": i for i in range(500)},
        "array": np.zeros(3),
    }

    @step
    def result_of(kind: str) -> object:
        return kinds[kind]

    with workflow("kinds"):
        for kind in kinds:
            result_of(kind)
    df = durable_nb.experiments("kinds").set_index("kind")
    for kind in ("series", "namedtuple", "mapping"):
        assert (df.loc[kind, "loss"], df.loc[kind, "acc"]) == (0.25, 0.5), kind
    assert (df.loc["dataclass", "loss"], df.loc["dataclass", "detail.acc"]) == (0.25, 0.5)
    assert df.loc["dataclass", "detail.inner.k"] == 1
    wide = [c for c in df.columns if c.startswith("f") and pd.notna(df.loc["wide", c])]
    assert 0 < len(wide) <= MAX_FIELDS  # bounded, never the whole dict
    fields = [c for c in df.columns if c not in ("workflow", "run", "step", "duration", "started")]
    assert df.loc["array", fields].isna().all()  # an array has no fields: nothing, not an error


@dataclasses.dataclass
class Inner:
    w: int


@dataclasses.dataclass
class Outer:
    inner: Inner
    v: float


@dataclasses.dataclass
class Unset:
    w: int
    later: int = dataclasses.field(init=False)


def test_nested_fields_are_flattened_and_none_is_lost(any_log: Path | str) -> None:
    @step
    def shaped(kind: str) -> object:
        if kind == "nested":
            return Outer(Inner(3), 0.5)
        if kind == "unset":  # a field never set: the row is still written
            return {"part": Unset(1), "v": 2}
        return {"a.b": 1, "a": {"b": 2}, "param.loss": 0.25}

    with workflow("shapes"):
        shaped("nested")
        shaped("clash")
        shaped("unset")
    df = durable_nb.experiments("shapes").set_index("kind")
    assert (df.loc["nested", "inner.w"], df.loc["nested", "v"]) == (3, 0.5)
    assert (df.loc["clash", "a.b"], df.loc["clash", "a.b~2"]) == (1, 2)
    assert df.loc["clash", "result.param.loss"] == 0.25  # not read as a renamed parameter
    assert df.loc["unset", "v"] == 2 and "Unset" in df.loc["unset", "part"]


def test_integers_past_64_bits_are_kept_exact(any_log: Path | str) -> None:
    @step
    def big(n: int) -> dict[str, int]:
        return {"v": n + 1}

    with workflow("ints"):
        big(2**70)
        big(5)
    df = durable_nb.experiments("ints", "big")
    assert df["n"].tolist() == [2**70, 5] and df["v"].tolist() == [2**70 + 1, 6]
    out = subprocess.run(
        [sys.executable, "-m", "durable_nb.cli", "experiments", str(any_log), "--format", "csv"],
        capture_output=True, text=True, timeout=60, env={"PYTHONPATH": str(ROOT), "PATH": ""},
    )  # fmt: skip
    assert out.returncode == 0 and str(2**70 + 1) in out.stdout, out.stderr


def test_odd_arguments_become_short_reprs(any_log: Path | str) -> None:
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

for _ in range(2):  # the second run replays: a run to compare with
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
    from durable_nb.log.documents import metrics_document, params_document, result_documents
    from durable_nb.log.serialization import args_repr, describe
    from durable_nb.replay.digests import Arguments

    assert result_documents(value) == (*describe(value), metrics_document(value))

    def two(a: object, b: object = "s") -> None: ...

    arguments = Arguments(two)
    for args in ((value, "y" * 90), (value, value)):
        expected = (args_repr(args, {}), params_document(arguments.named(args, {})))
        assert arguments.documents(args, {}) == expected


def test_a_result_too_long_to_print_is_kept_and_replayed(any_log: Path | str) -> None:
    @step
    def power(n: int) -> int:
        return 10**n  # more digits than Python turns into text

    for _ in range(2):
        with workflow("huge") as run:
            assert power(5000) == 10**5000
    assert run.steps_replayed == 1
    row = log_sql(any_log).execute("SELECT result_repr, metrics FROM steps").fetchone()
    assert row == ("<int of 16610 bits>", '{"result":"<int of 16610 bits>"}')
    from durable_nb.log.documents import metrics_document

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
        "durable_nb.events(log=sys.argv[1])\n"
        "print(durable_nb.compare('gone', 1, 2, log=sys.argv[1])['run 2'].tolist())\n"
    )
    proc = python(reader, str(log), cwd=tmp_path)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert "first,0.25,0.5,," in out and "second,,,0.5,-0.5" in out
    assert out.splitlines()[-1].count("'replayed'") == 2  # first and second, from run 1
    assert not (tmp_path / "pwned").exists()


def test_compare_says_what_a_change_did(any_log: Path | str) -> None:
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
    with workflow("cmp") as c:  # the same code: every call replays, nothing differs
        for lr in LRS[1:4]:
            train(lr)  # type: ignore[operator]
    same = durable_nb.compare("cmp", b.id, c.id)
    assert same[f"run {c.id}"].tolist() == ["replayed"] * 3
    assert same["difference"].tolist() == [""] * 3
    with workflow("other") as other:
        pass
    with pytest.raises(DurableError, match=f"'cmp' has no run {other.id}; its runs are "):
        durable_nb.compare("cmp", a.id, other.id)


def test_an_older_log_is_read_without_being_changed(tmp_path: Path) -> None:
    from .conftest import old_log

    old = old_log(tmp_path / "old.db", 6, result={"loss": 0.5})
    with sqlite3.connect(old) as conn:  # a second run that made the same call again
        conn.execute(
            "INSERT INTO runs (workflow, status, started_at, ended_at, owner, pid) "
            "VALUES ('w', 'completed', 3, 4, 'gone:host:1:1', 1)"
        )
        conn.execute(
            "INSERT INTO steps (run_id, workflow, scope, name, args_digest, occurrence, "
            "code_digest, attempt, status, started_at, ended_at, result_format, args_repr, "
            "result) SELECT 2, workflow, scope, name, args_digest, occurrence, 'c2', 1, status, "
            "3, 4, result_format, args_repr, result FROM steps"
        )
    before = old.read_bytes()
    table = durable_nb.experiments(log=old)  # no parameters or fields: not written then
    assert table[["workflow", "run", "step"]].values.tolist() == [["w", 2, "train"]]
    assert durable_nb.compare("w", 1, 2, log=old)[
        ["run 1", "run 2", "difference"]
    ].values.tolist() == [["ran", "ran", ""]]
    assert durable_nb.steps(log=old)["step"].tolist() == ["train", "train"]
    out = subprocess.run(
        [sys.executable, "-m", "durable_nb.cli", "experiments", str(old), "--format", "json"],
        capture_output=True, text=True, timeout=60, env={"PYTHONPATH": str(ROOT), "PATH": ""},
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert [row["run"] for row in json.loads(out.stdout)] == [2]  # the newest record of it
    assert old.read_bytes() == before  # read, not migrated: the file is as it was


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
    assert out.stdout.splitlines()[0] == "workflow,run,step,lr,loss,acc,duration_seconds,started"
    assert len(out.stdout.splitlines()) == 4
    for name, rows in (("sweep", 3), ("other", 0)):
        out = subprocess.run(
            [sys.executable, "-m", "durable_nb.cli", "experiments", str(tmp_path / "exp.ipynb"),
             "--workflow", name],
            capture_output=True, text=True, timeout=60, env={"PYTHONPATH": str(ROOT), "PATH": ""},
        )  # fmt: skip
        assert out.returncode == 0, out.stderr
        lines = out.stdout.splitlines()
        if rows:  # a table a person reads: a header and one line per call
            assert lines[0].split() == ["workflow", "run", "step", "lr", "loss", "acc", "duration"]
            assert len(lines) == 1 + rows and lines[1].split()[:3] == ["sweep", "1", "train"]
        else:
            assert lines == ["(empty)"]
