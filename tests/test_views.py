"""DataFrame views, the timeline and the terminal view of a log."""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

import durable_nb
from durable_nb import LogFileError, Store, step, workflow
from durable_nb.log.stores import open_store
from durable_nb.views import columnar
from durable_nb.views import frames as frame_views

from .conftest import ROOT, python


@pytest.fixture
def log(tmp_path: Path, log_target: Path | str) -> Path | str:
    """A log with completed, failed, retried, replayed and not-durable steps (a SQLite
    file, then a PostgreSQL database)."""
    path = log_target if isinstance(log_target, str) else tmp_path / ".durable" / "views.db"

    @step
    def train(lr: float) -> dict[str, float]:
        print(f"training {lr}")
        return {"lr": lr, "loss": 1 - lr}

    @step(retries=1, retry_delay=0.0)
    def flaky(n: int) -> int:
        flaky.calls = getattr(flaky, "calls", 0) + 1  # type: ignore[attr-defined]
        if flaky.calls == 1:  # type: ignore[attr-defined]
            raise ConnectionError("first attempt fails")
        return n

    @step
    def broken() -> None:
        raise ValueError("bad row 7")

    with open_store(path) as store:
        with workflow("sweep", store=store):
            train(0.1), train(0.2), flaky(3)
        with workflow("sweep", store=store):
            train(0.1), train(0.2), train(0.3)
        with pytest.raises(ValueError), workflow("other", store=store):
            broken()
    return path


def test_runs_dtypes_and_columns(log: Path) -> None:
    df = durable_nb.runs(log=log)
    assert list(df["workflow"]) == ["sweep", "sweep", "other"]
    assert list(df["status"]) == ["completed", "completed", "failed"]
    assert isinstance(df["status"].dtype, pd.CategoricalDtype)
    assert "crashed" in df["status"].cat.categories
    assert isinstance(df["started"].dtype, pd.DatetimeTZDtype) and str(df["started"].dt.tz) == "UTC"
    assert pd.api.types.is_timedelta64_dtype(df["duration"])
    assert list(df["steps_run"]) == [3, 1, 0] and list(df["steps_replayed"]) == [0, 2, 0]
    assert df["error"].iloc[2] == "ValueError: bad row 7"


def test_steps_columns_filters_and_replay_counts(log: Path) -> None:
    df = durable_nb.steps(log=log)
    for column in ("run", "workflow", "step", "args", "attempt", "status", "started", "ended",
                   "duration", "result_type", "result_size", "result_repr", "error_type",
                   "error_message", "replayed"):  # fmt: skip
        assert column in df.columns
    assert isinstance(df["status"].dtype, pd.CategoricalDtype)
    assert isinstance(df["started"].dtype, pd.DatetimeTZDtype)
    assert pd.api.types.is_timedelta64_dtype(df["duration"])
    flaky = df[df["step"] == "flaky"]
    assert list(flaky["attempt"]) == [1, 2] and list(flaky["status"]) == ["failed", "completed"]
    assert flaky["error_type"].iloc[0] == "ConnectionError"
    train = df[(df["step"] == "train") & (df["run"] == 1)]
    assert list(train["replayed"]) == [1, 1]  # run 2 replayed both
    assert train["result_repr"].iloc[0] == "{'lr': 0.1, 'loss': 0.9}"
    assert train["result_type"].iloc[0] == "dict"
    assert (train["result_size"] > 0).all()
    assert len(durable_nb.steps(workflow="other", log=log)) == 1
    assert set(durable_nb.steps(run=2, log=log)["args"]) == {"0.3"}
    assert durable_nb.steps(workflow="nope", log=log).empty


def test_a_large_log_reads_through_arrow_into_the_same_frame(
    tmp_path: Path, log_target: Path | str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """From COLUMNAR_ROWS rows on, steps() of a whole log reads through ADBC/Arrow (SQLite: on
    threads of a child process; PostgreSQL: its driver's binary COPY); the frame equals the
    sqlite3 / psycopg one, also where a text column is NULL in a partition's first thousand
    rows (the SQLite driver infers a column's type there) and text further on."""
    path = log_target if isinstance(log_target, str) else tmp_path / "big.db"

    @step
    def fails(i: int) -> None:
        raise ValueError(f"bad row {i}: ünïcode, 'quotes', a\nnewline")

    @step
    def fine(i: int) -> dict[str, int]:
        return {"i": i}

    with open_store(path) as store, workflow("big", store=store):
        for i in range(1200):  # a partition's first rows: results NULL, errors set
            with pytest.raises(ValueError):
                fails(i)
        for i in range(1800):  # then results set, errors NULL
            fine(i)
    with open_store(path, readonly=True) as store:
        columns = frame_views._STEP_COLUMNS
        sql, params = store.all_steps_query(", ".join(columns))
        if isinstance(path, Path):
            frame = columnar.read_frame(store.path, sql, params, store.step_ids(), columns)
        else:
            frame = store.arrow_table(sql, [*store.step_ids(), *params]).to_pandas()
    assert frame is not None and len(frame) == 3000 and frame["id"].is_monotonic_increasing
    cut = durable_nb.steps(log=path)["started"].iloc[2000]
    frames = {}
    for threshold in (10**9, 1):  # sqlite3, then Arrow
        monkeypatch.setattr(frame_views, "COLUMNAR_ROWS", threshold)
        frames[threshold] = [
            durable_nb.steps(log=path),
            durable_nb.steps(log=path, status="failed"),
            durable_nb.steps(log=path, since=cut),
        ]
    for slow, fast in zip(frames[10**9], frames[1], strict=True):
        pd.testing.assert_frame_equal(slow, fast)
    every, failed, recent = frames[1]
    assert every["result_repr"].iloc[-1] == "{'i': 1799}"
    assert every["result_type"].isna().sum() == 1200
    assert len(failed) == 1200 and failed["error_message"].iloc[7].startswith("bad row 7: ünïcode")
    assert len(recent) == 1000


def test_a_columnar_read_keeps_this_processs_locks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The Arrow reader's own SQLite runs in a child: in this process it would drop the
    file locks of our connections when it closed the log (POSIX locks are per process), and
    another process could then write while we hold a write transaction."""
    path = tmp_path / "locked.db"
    quick = step(abs)
    monkeypatch.setattr(frame_views, "COLUMNAR_ROWS", 1)
    other = (
        "import sqlite3, sys\n"
        "c = sqlite3.connect(sys.argv[1], timeout=0.2, isolation_level=None)\n"
        "try:\n    c.execute('BEGIN IMMEDIATE')\nexcept sqlite3.OperationalError as e:\n"
        "    sys.exit(str(e))\n"
    )
    with Store(path) as store:
        with workflow("w", store=store):
            quick(-1)
        with store.transaction():
            assert len(durable_nb.steps(log=store)) == 1  # read through the child
            writer = subprocess.run([sys.executable, "-c", other, str(path)],
                                    capture_output=True, text=True)  # fmt: skip
        assert writer.returncode == 1 and "locked" in writer.stderr


def test_events_in_time_order(log: Path) -> None:
    df = durable_nb.events(log=log)
    assert isinstance(df["ts"].dtype, pd.DatetimeTZDtype)
    assert df["ts"].is_monotonic_increasing
    assert df["kind"].iloc[0] == "run started"
    assert "step failed" in set(df["kind"])


def test_result_loads_one_value_explicitly(log: Path) -> None:
    assert durable_nb.result("sweep", "train", log=log) == {"lr": 0.3, "loss": 0.7}
    assert durable_nb.result("sweep", "train", occurrence=0, log=log) in (
        {"lr": 0.1, "loss": 0.9},
        {"lr": 0.2, "loss": 0.8},
        {"lr": 0.3, "loss": 0.7},
    )
    with pytest.raises(LogFileError, match="no completed step 'nope'"):
        durable_nb.result("sweep", "nope", log=log)


def test_views_of_a_foreign_log_never_unpickle(tmp_path: Path) -> None:
    """A log written elsewhere, with a class that does not exist here and a value whose
    unpickling would run code: views work and run nothing."""
    marker = tmp_path / "unpickled.txt"
    writer = python(
        "import pathlib, sys, durable_nb\n"
        "class Secret:\n"
        "    def __reduce__(self):\n"
        "        return (pathlib.Path.touch, (pathlib.Path(sys.argv[2]),))\n"
        "class Gone:\n"
        "    pass\n"
        "store = durable_nb.Store(sys.argv[1])\n"
        "with durable_nb.workflow('w', store=store):\n"
        "    durable_nb.Step(lambda: Secret(), name='secret')()\n"
        "    durable_nb.Step(lambda: Gone(), name='gone')()\n",
        str(tmp_path / "foreign.db"),
        str(marker),
        cwd=tmp_path,
    )
    assert writer.wait(timeout=60) == 0, writer.stderr.read() if writer.stderr else ""
    df = durable_nb.steps(log=tmp_path / "foreign.db")
    assert list(df["result_type"]) == ["__main__.Secret", "__main__.Gone"]
    durable_nb.runs(log=tmp_path / "foreign.db")
    durable_nb.events(log=tmp_path / "foreign.db")
    assert not marker.exists()
    with pytest.raises(AttributeError):  # explicit load of a class that does not exist here
        durable_nb.result("w", "gone", log=tmp_path / "foreign.db")
    durable_nb.result("w", "secret", log=tmp_path / "foreign.db")
    assert marker.exists()  # only result() unpickles


@pytest.mark.parametrize("log_target", ["sqlite"], indirect=True)
def test_views_accept_a_notebook_path(log: Path) -> None:
    notebook = log.parent.parent / "views.ipynb"
    assert len(durable_nb.runs(log=notebook)) == 3
    with pytest.raises(LogFileError, match="no log at"):
        durable_nb.runs(log=log.parent.parent / "missing.ipynb")


def test_timeline_png(log: Path, tmp_path: Path) -> None:
    fig = durable_nb.timeline(log=log)
    out = tmp_path / "timeline.png"
    fig.savefig(out)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    ax = fig.axes[0]
    assert len(ax.patches) == len(durable_nb.steps(log=log))
    colours = {tuple(round(c, 3) for c in p.get_facecolor()) for p in ax.patches}
    assert len(colours) == 2  # completed and failed
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["completed", "failed"]


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "durable_nb.cli", *args],
        capture_output=True, text=True, cwd=ROOT, timeout=60,
    )  # fmt: skip


def test_cli_log_formats(log: Path) -> None:
    table = cli("log", str(log))
    assert table.returncode == 0, table.stderr
    assert "ConnectionError" not in table.stdout  # table shows the message, not the type
    assert "first attempt fails" in table.stdout and "train" in table.stdout
    csv = cli("log", str(log), "--format", "csv", "--workflow", "other")
    lines = csv.stdout.strip().splitlines()
    assert lines[0].startswith("id,run,workflow,step,args") and len(lines) == 2
    records = json.loads(cli("log", str(log), "--format", "json").stdout)
    assert len(records) == 6 and records[0]["step"] == "train"
    runs = cli("runs", str(log), "--format", "json")
    assert [r["status"] for r in json.loads(runs.stdout)] == ["completed", "completed", "failed"]


def test_cli_bad_paths_are_one_line(tmp_path: Path) -> None:
    missing = cli("log", str(tmp_path / "nothing.db"))
    assert missing.returncode == 2
    assert missing.stderr.strip().count("\n") == 0 and "no log at" in missing.stderr
    text = tmp_path / "notes.db"
    text.write_text("hello")
    bad = cli("runs", str(text))
    assert bad.returncode == 2 and "is not a SQLite file" in bad.stderr
    assert "Traceback" not in bad.stderr


def test_every_cli_command_has_help() -> None:
    from durable_nb.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    for name, command in sub.choices.items():  # type: ignore[attr-defined]
        assert command.description, f"durable-nb {name} needs a description"
    assert pathlib.Path(ROOT / "durable_nb" / "cli.py").exists()
