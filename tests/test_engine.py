"""The replay engine on real log files: counters prove what ran and what replayed."""

from __future__ import annotations

import asyncio
import warnings
from pathlib import Path

import pytest

import durable_nb
from durable_nb import DurableWarning, step, workflow
from durable_nb.replay.capture import REPLAY_MARK
from durable_nb.replay.engine import decide

from .conftest import current_log, log_sql


def test_completed_steps_replay_without_running(any_log: Path | str) -> None:
    calls: list[int] = []

    @step
    def square(x: int) -> int:
        calls.append(x)
        return x * x

    with workflow("sq") as run1:
        first = [square(i) for i in range(5)]
    with workflow("sq") as run2:
        second = [square(i) for i in range(7)]
    assert first == [0, 1, 4, 9, 16]
    assert second == [0, 1, 4, 9, 16, 25, 36]
    assert calls == [0, 1, 2, 3, 4, 5, 6]
    assert (run1.steps_run, run1.steps_replayed) == (5, 0)
    assert (run2.steps_run, run2.steps_replayed) == (2, 5)


def test_repeated_calls_are_distinct_occurrences(any_log: Path | str) -> None:
    import random

    @step
    def draw(seed: int) -> float:
        return random.random()

    with workflow("draws"):
        a = [draw(1), draw(1), draw(1)]
    with workflow("draws"):
        b = [draw(1), draw(1), draw(1), draw(1)]
    assert b[:3] == a
    assert len(set(a)) == 3


def test_keyword_order_and_set_order_do_not_change_the_key_but_dict_order_does(
    any_log: Path | str,
) -> None:
    calls: list[object] = []

    @step
    def f(a: object, b: object = None) -> list[object]:
        calls.append(a)
        return list(b)  # type: ignore[call-overload]

    with workflow("kw"):
        assert f(a={"x", "y", "z"}, b={"k": 1, "j": 2}) == ["k", "j"]
    with workflow("kw"):
        assert f(b={"k": 1, "j": 2}, a={"z", "y", "x"}) == ["k", "j"]
    assert len(calls) == 1  # replayed
    with workflow("kw"):  # equal, but iterated in another order: it runs
        assert f(a={"x", "y", "z"}, b={"j": 2, "k": 1}) == ["j", "k"]
    assert len(calls) == 2


def test_failed_step_is_recorded_and_runs_again(any_log: Path | str) -> None:
    calls: list[int] = []

    @step
    def flaky(x: int) -> int:
        calls.append(x)
        if len(calls) == 1:
            raise ValueError("boom")
        return x

    with pytest.raises(ValueError), workflow("flaky"):
        flaky(3)
    with workflow("flaky"):
        assert flaky(3) == 3
    assert calls == [3, 3]
    conn = log_sql(any_log)
    rows = conn.execute(
        "SELECT status, error_type, error_message, error_traceback LIKE '%boom%' FROM steps "
        "ORDER BY id"
    ).fetchall()
    assert rows == [("failed", "ValueError", "boom", 1), ("completed", None, None, None)]
    statuses = [r[0] for r in conn.execute("SELECT status FROM runs ORDER BY id")]
    assert statuses == ["failed", "completed"]


def test_retries_log_every_attempt(any_log: Path | str) -> None:
    attempts: list[int] = []

    @step(retries=3, retry_delay=0.0)
    def shaky() -> str:
        attempts.append(1)
        if len(attempts) < 3:
            raise ConnectionError("try again")
        return "ok"

    with workflow("retry"):
        assert shaky() == "ok"
    conn = log_sql(any_log)
    rows = conn.execute("SELECT attempt, status FROM steps ORDER BY id").fetchall()
    assert rows == [(1, "failed"), (2, "failed"), (3, "completed")]


def test_retries_give_up_after_the_last_attempt(any_log: Path | str) -> None:
    @step(retries=1, retry_delay=0.0)
    def always() -> None:
        raise RuntimeError("no")

    with pytest.raises(RuntimeError), workflow("giveup"):
        always()
    conn = log_sql(any_log)
    assert conn.execute("SELECT count(*) FROM steps WHERE status = 'failed'").fetchone() == (2,)


def test_keyboard_interrupt_marks_step_and_run_interrupted(any_log: Path | str) -> None:
    @step
    def stop() -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt), workflow("ctrl-c"):
        stop()
    conn = log_sql(any_log)
    assert conn.execute("SELECT status FROM steps").fetchone() == ("interrupted",)
    assert conn.execute("SELECT status FROM runs").fetchone() == ("interrupted",)


def test_nested_steps_replay_with_their_parent(any_log: Path | str) -> None:
    calls: list[str] = []

    @step
    def inner(x: int) -> int:
        calls.append(f"inner{x}")
        return x + 1

    @step
    def outer(x: int) -> int:
        calls.append(f"outer{x}")
        return inner(x) + inner(x)

    with workflow("nest"):
        assert outer(1) == 4
        assert inner(1) == 2  # same name and args at the top level: its own key
    assert calls == ["outer1", "inner1", "inner1", "inner1"]
    calls.clear()
    with workflow("nest"):
        assert outer(1) == 4
        assert inner(1) == 2
    assert calls == []
    scopes = log_sql(any_log).execute("SELECT DISTINCT scope FROM steps").fetchall()
    assert len(scopes) == 2  # top level and inside outer(1)


def test_nested_steps_of_a_failed_parent_replay(any_log: Path | str) -> None:
    calls: list[str] = []
    parents: list[int] = []

    @step
    def child(i: int) -> int:
        calls.append(f"child{i}")
        return i

    @step
    def parent() -> int:
        parents.append(1)
        total = child(1) + child(2)
        if len(parents) == 1:
            raise RuntimeError("parent fails after its children")
        return total

    with pytest.raises(RuntimeError), workflow("parent"):
        parent()
    with workflow("parent"):
        assert parent() == 3
    assert calls == ["child1", "child2"]
    assert parents == [1, 1]


def test_stdout_is_captured_and_reemitted_marked(
    any_log: Path | str, capsys: pytest.CaptureFixture[str]
) -> None:
    @step
    def chatty(x: int) -> int:
        print(f"working on {x}")
        print("done")
        return x

    with workflow("out"):
        chatty(1)
    assert capsys.readouterr().out == "working on 1\ndone\n"
    with workflow("out"):
        chatty(1)
    assert capsys.readouterr().out == f"{REPLAY_MARK}working on 1\n{REPLAY_MARK}done\n"


def test_unpicklable_result_returns_warns_once_and_runs_again(any_log: Path | str) -> None:
    calls: list[int] = []

    @step
    def make_lock(i: int) -> object:
        import threading

        calls.append(i)
        return threading.Lock()

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with workflow("lock"):
            lock1 = make_lock(1)
            make_lock(2)
    assert hasattr(lock1, "acquire")
    ours = [w for w in caught if issubclass(w.category, DurableWarning)]
    assert len(ours) == 1
    assert "cannot be pickled" in str(ours[0].message)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with workflow("lock"):
            make_lock(1)
    assert calls == [1, 2, 1]
    conn = log_sql(any_log)
    rows = conn.execute("SELECT DISTINCT status, reason LIKE '%pickle%' FROM steps").fetchall()
    assert rows == [("not_durable", 1)]


def test_large_result_lives_in_a_blob_file(log_path: Path) -> None:
    calls: list[int] = []
    data = bytes(range(256)) * (5 * 4096)  # 5 MiB

    @step
    def big() -> bytes:
        calls.append(1)
        return data

    with workflow("big"):
        big()
    blobs = list((log_path.parent / "test.blobs").rglob("*"))
    files = [b for b in blobs if b.is_file()]
    assert len(files) == 1 and files[0].stat().st_mode & 0o777 == 0o600
    with workflow("big"):
        assert big() == data
    assert calls == [1]


def test_damaged_blob_is_detected_and_the_step_runs_again(log_path: Path) -> None:
    calls: list[int] = []

    @step
    def big() -> bytes:
        calls.append(1)
        return b"x" * (2 << 20)

    with workflow("dmg"):
        big()
    (blob,) = [b for b in (log_path.parent / "test.blobs").rglob("*") if b.is_file()]
    raw = bytearray(blob.read_bytes())
    raw[-1] ^= 0xFF
    blob.write_bytes(bytes(raw))
    with pytest.warns(DurableWarning, match="damaged"), workflow("dmg"):
        assert big() == b"x" * (2 << 20)
    assert calls == [1, 1]


def test_large_result_lives_in_the_database_and_damage_is_detected(pg_url: str) -> None:
    """On PostgreSQL a large value is rows of table ``blobs`` (a backup of the database is
    the whole log), committed with its step; a damaged one is said and the step runs again."""
    calls: list[int] = []
    data = bytes(range(256)) * (5 * 4096)  # 5 MiB

    @step
    def big() -> bytes:
        calls.append(1)
        return data

    with current_log(pg_url):  # type: ignore[arg-type]
        with workflow("big"):
            big()
        conn = log_sql(pg_url)
        ((digest, size),) = conn.execute("SELECT result_blob, result_size FROM steps").fetchall()
        assert conn.execute("SELECT sum(length(data)) FROM blobs").fetchone()[0] > size > 5e6
        with workflow("big"):
            assert big() == data
        assert calls == [1]
        conn.execute(f"UPDATE blobs SET data = 'x' || data WHERE digest = '{digest}'")
        with pytest.warns(DurableWarning, match="damaged"), workflow("big"):
            assert big() == data
        assert calls == [1, 1]


def test_step_outside_a_workflow_is_a_plain_call(any_log: Path | str) -> None:
    @step
    def plain(x: int) -> int:
        return x + 1

    assert plain(1) == 2
    assert log_sql(any_log).execute("SELECT count(*) FROM steps").fetchone() == (0,)


def test_adhoc_step_call(any_log: Path | str) -> None:
    calls: list[int] = []

    def add(a: int, b: int) -> int:
        calls.append(a)
        return a + b

    with workflow("adhoc"):
        assert step(add, 1, b=2) == 3
    with workflow("adhoc"):
        assert step(add, 1, b=2) == 3
    assert calls == [1]


def test_workflow_decorator_sync_and_async(any_log: Path | str) -> None:
    calls: list[str] = []

    @step
    def s(x: int) -> int:
        calls.append("s")
        return x

    @step
    async def a(x: int) -> int:
        calls.append("a")
        await asyncio.sleep(0)
        return x

    @workflow
    def sync_flow() -> int:
        return s(1) + s(2)

    @workflow("named-async")
    async def async_flow() -> int:
        return await a(1) + s(5)

    assert sync_flow() == 3 and sync_flow() == 3
    assert asyncio.run(async_flow()) == 6 and asyncio.run(async_flow()) == 6
    assert calls == ["s", "s", "a", "s"]
    names = durable_nb.get_store().workflows()
    assert names == ["sync_flow", "named-async"]


def test_fresh_ignores_the_log(any_log: Path | str) -> None:
    calls: list[int] = []

    @step
    def f(x: int) -> int:
        calls.append(x)
        return x

    with workflow("fresh"):
        f(1)
    with workflow("fresh", fresh=True):
        f(1)
    with workflow("fresh"):
        f(1)
    assert calls == [1, 1]


def test_same_workflow_twice_in_one_process_is_refused(any_log: Path | str) -> None:
    with (
        workflow("busy"),
        pytest.raises(durable_nb.WorkflowBusyError, match="this process"),
        workflow("busy"),
    ):
        pass


def test_decide_is_the_replay_rule() -> None:
    from durable_nb.log.records import StoredStep

    key = ("", "f", "d", 0)
    record = StoredStep(1, 7, "code-a", "pickle", b"", None, False)
    newer = StoredStep(2, 8, "code-c", "pickle", b"", None, False)
    log = {key: {"code-a": record, "code-c": newer}}
    assert decide(log, key, "code-a").record is record
    changed = decide(log, key, "code-b")
    assert not changed.replay and changed.stale is newer  # the newest, to say what changed
    assert not decide({}, key, "code-a").replay
    fresh = decide(None, key, "code-a")
    assert not fresh.replay and fresh.reason == "fresh run: the log is ignored"


def test_code_digest_ignores_comments_docstrings_and_decorators(tmp_path: Path) -> None:
    import importlib.util

    from durable_nb.replay.codeinfo import code_digest

    def load(src: str) -> str:
        path = tmp_path / f"gen_{abs(hash(src))}.py"
        path.write_text(src)
        spec = importlib.util.spec_from_file_location(path.stem, path)
        assert spec and spec.loader
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        return code_digest(mod.f)

    base = load("def f(x):\n    return x + 1\n")
    assert load('def f(x):\n    """Doc."""\n    # comment\n    return  x+1  # why\n') == base
    assert load("import functools\n@functools.lru_cache\ndef f(x):\n    return x + 1\n") == base
    assert load("def f(x):\n    return x + 2\n") != base


def test_code_changed_back_replays_the_older_record(any_log: Path | str) -> None:
    calls: list[str] = []

    def version_a(x: int) -> str:
        calls.append("a")
        return "a"

    def version_b(x: int) -> str:
        calls.append("b")
        return "b"

    for fn, expected in ((version_a, "a"), (version_b, "b"), (version_a, "a")):
        with workflow("flip"):
            assert durable_nb.Step(fn, name="f")(1) == expected
    assert calls == ["a", "b"]
    reasons = log_sql(any_log).execute("SELECT reason FROM steps ORDER BY id").fetchall()
    assert reasons == [(None,), ("code of f changed since run 1",)]
