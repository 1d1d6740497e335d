"""The log in PostgreSQL, driven as users drive it: real kernels and real processes on one
database (``pg_url``), ownership by advisory lock, a ``kill -9`` taken over at once."""

from __future__ import annotations

import time
from pathlib import Path

import psycopg
import pytest

import durable_nb

from .conftest import executions, python
from .kernels import Kernel, kernel_env

SETUP = "%load_ext durable_nb"
# A step that appends its number to counter.txt before working (how many times it really
# ran), may create a file (``touch``) and may wait for one to appear (``wait_for``).
STEPS = """\
import os, time
from durable_nb import step

@step
def work(i, touch=None, wait_for=None):
    with open("counter.txt", "a") as f:
        f.write(f"{i}\\n")
    print(f"step {i}")
    if touch:
        open(touch, "w").close()
    deadline = time.monotonic() + 60
    while wait_for and not os.path.exists(wait_for):
        assert time.monotonic() < deadline, f"{wait_for} never appeared"
        time.sleep(0.02)
    return i * i
"""
SHARED = """\
%%durable shared
ys = [work(i, wait_for="release" if i == 4 else None) for i in range(1, 7)]
print("ys", ys)
"""


def wait_for_step(folder: Path, i: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while executions(folder).get(i, 0) < 1:
        assert time.monotonic() < deadline, f"step {i} never started"
        time.sleep(0.02)


def run_statuses(url: str) -> list[tuple[str, str, int]]:
    """(workflow, status, pid) of every run, oldest first, read by this test process."""
    df = durable_nb.runs(log=url)
    return list(zip(df["workflow"], df["status"].astype(str), df["pid"].astype(int), strict=True))


def test_two_kernels_share_a_postgres_log_and_a_killed_owner_is_taken_over(
    tmp_path: Path, pg_url: str
) -> None:
    env_a = kernel_env(tmp_path / "a.ipynb")
    env_a["DURABLE_NB_DB"] = pg_url  # kernel A: the environment names the log
    a = Kernel(tmp_path, env_a)
    b: Kernel | None = None
    try:
        b = Kernel(tmp_path, kernel_env(tmp_path / "b.ipynb"))
        assert a.execute(SETUP).status == "ok"
        assert b.execute(SETUP).status == "ok"
        opened = b.execute(f"%durable open {pg_url}")  # kernel B: the magic names it
        assert opened.status == "ok", opened.stderr
        assert opened.stdout == f"log: {pg_url} (0 workflows)\n"
        assert a.execute(STEPS).status == "ok" and b.execute(STEPS).status == "ok"
        pid_a = a.pid
        assert a.execute("print(os.getpid())").stdout == f"{pid_a}\n"

        # Different workflows at the same time: each waits for a file the other's first step
        # creates, so neither finishes unless both run together.
        alpha = a.send(
            "%%durable alpha\n"
            "xs = [work(101, touch='alpha-in', wait_for='beta-in'), work(102)]\nprint(xs)"
        )
        beta = b.execute(
            "%%durable beta\n"
            "xs = [work(201, touch='beta-in', wait_for='alpha-in'), work(202)]\nprint(xs)"
        )
        assert beta.status == "ok", beta.error
        assert "[40401, 40804]" in beta.stdout and "beta: 0 steps replayed, 2 run" in beta.stdout
        assert a.wait(alpha)["content"]["status"] == "ok"
        assert a.execute("print(xs)").stdout == "[10201, 10404]\n"

        # The same workflow, while A runs it (blocked in step 4): refused in B, naming A's pid.
        a.send(SHARED)
        wait_for_step(tmp_path, 4)
        busy = b.execute(SHARED, timeout=20)  # (a wrong run of it would wait for release)
        assert busy.status == "error" and busy.error is not None
        assert busy.error["traceback"] == [
            f"WorkflowBusyError: workflow 'shared' is already running in process {pid_a}; "
            "wait for it to finish or stop that kernel, then run again"
        ]
        assert "step 1" not in busy.stdout
        before = {i: 1 for i in (101, 102, 201, 202, 1, 2, 3, 4)}
        assert executions(tmp_path) == before  # B ran nothing

        # kill -9 of A: B's retry takes the workflow over at once and replays A's steps 1-3.
        a.kill()
        (tmp_path / "release").touch()
        started = time.monotonic()
        taken = b.execute(SHARED)
        elapsed = time.monotonic() - started
        assert taken.status == "ok", taken.error
        assert "shared: 3 steps replayed, 3 run" in taken.stdout
        assert "[replayed] step 3\n" in taken.stdout and "[replayed] step 4" not in taken.stdout
        assert "ys [1, 4, 9, 16, 25, 36]" in taken.stdout
        assert elapsed < 10, f"the takeover took {elapsed:.1f} s"
        assert executions(tmp_path) == {**before, 4: 2, 5: 1, 6: 1}
        pid_b = int(b.execute("print(os.getpid())").stdout)
    finally:
        if a.km.is_alive():
            a.close()
        if b is not None:
            b.close()

    assert sorted(run_statuses(pg_url), key=lambda run: run[0]) == [  # (stable: by id)
        ("alpha", "completed", pid_a),
        ("beta", "completed", pid_b),
        ("shared", "crashed", pid_a),
        ("shared", "completed", pid_b),
    ]
    crashed = durable_nb.runs(log=pg_url, status="crashed").iloc[0]
    assert crashed["steps_run"] == 3 and crashed["error"] == "the process running it died"


WORKER = r"""
import os, sys, time
import durable_nb
from durable_nb.log.current_log import close_log
from durable_nb import step, workflow

url, name, steps = sys.argv[1], sys.argv[2], int(sys.argv[3])
durable_nb.open_log(url)
open(f"ready-{name}", "w").close()

@step
def work(i):
    return {"i": i, "square": i * i}

deadline = time.monotonic() + 60
while not os.path.exists("go"):  # all processes start their workflow together
    assert time.monotonic() < deadline, "no go"
    time.sleep(0.005)
with workflow(name) as run:
    total = sum(work(i)["square"] for i in range(steps))
print("done", run.steps_run, run.steps_replayed, total, flush=True)
"""


def test_sixteen_processes_write_one_postgres_log(tmp_path: Path, pg_url: str) -> None:
    n, steps = 16, 500
    total = sum(i * i for i in range(steps))
    procs = [python(WORKER, pg_url, f"w{k:02}", str(steps), cwd=tmp_path) for k in range(n)]
    try:
        # every process has opened the log (created or found its schema) before "go"
        deadline = time.monotonic() + 60
        while len(list(tmp_path.glob("ready-*"))) < n:
            assert all(p.poll() is None for p in procs), "a worker exited early"
            assert time.monotonic() < deadline, "the workers did not open the log"
            time.sleep(0.02)
        started = time.monotonic()
        (tmp_path / "go").touch()
        outs = [p.communicate(timeout=120) for p in procs]
        elapsed = time.monotonic() - started
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    for p, (out, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, err
        assert out == f"done {steps} 0 {total}\n"
        assert err == ""
    print(f"\n{n} processes x {steps} steps on one PostgreSQL log: {elapsed:.1f} s")
    assert elapsed < 90

    df = durable_nb.steps(log=pg_url)
    assert len(df) == n * steps
    assert (df["status"].astype(str) == "completed").all()
    per_workflow = df.groupby("workflow")["args"].nunique()
    assert per_workflow.to_dict() == {f"w{k:02}": steps for k in range(n)}
    runs = durable_nb.runs(log=pg_url)
    assert sorted(runs["workflow"]) == [f"w{k:02}" for k in range(n)]
    assert (runs["status"].astype(str) == "completed").all()
    assert (runs["steps_run"] == steps).all()
    with psycopg.connect(pg_url) as conn:
        rows = conn.execute(
            "SELECT count(*), count(DISTINCT (workflow, args_digest)), count(DISTINCT run_id) "
            "FROM durable_nb.steps WHERE status = 'completed' AND result IS NOT NULL"
        ).fetchone()
    assert rows == (n * steps, n * steps, n)

    # and they are usable: a workflow run again replays all its steps, runs none
    (tmp_path / "go").touch()
    again = python(WORKER, pg_url, "w07", str(steps), cwd=tmp_path)
    out, err = again.communicate(timeout=60)
    assert again.returncode == 0, err
    assert out == f"done 0 {steps} {total}\n"


def test_a_notebook_on_postgres_replays_skips_and_refuses_what_does_not_apply(
    tmp_path: Path, pg_url: str
) -> None:
    with_password = pg_url.replace("postgresql://durable@", "postgresql://durable:secret@")
    assert with_password != pg_url
    cell = "%%durable squares\nsquares = [work(i) for i in range(1, 4)]\nprint('sum', sum(squares))"
    kernel = Kernel(tmp_path, kernel_env(tmp_path / "pg.ipynb"))
    replies = []
    try:
        assert kernel.execute(SETUP).status == "ok"
        refused = kernel.execute(f"%durable open {with_password}")
        replies.append(refused)
        assert refused.status == "error"
        lines = refused.stderr.strip().splitlines()
        assert len(lines) == 1 and "holds a password" in lines[0], refused.stderr
        assert "Traceback" not in refused.stderr

        opened = kernel.execute(f"%durable open {pg_url}")
        replies.append(opened)
        assert opened.stdout == f"log: {pg_url} (0 workflows)\n"
        assert kernel.execute(STEPS).status == "ok"

        first = kernel.execute(cell)
        replies.append(first)
        assert first.status == "ok", first.error
        assert "step 1\n" in first.stdout and "sum 14\n" in first.stdout
        assert "squares: 0 steps replayed, 3 run" in first.stdout
        assert f"log {pg_url}" in first.stdout

        skipped = kernel.execute(cell)
        replies.append(skipped)
        assert "squares: skipped, unchanged since run 1; 1 variable restored" in skipped.stdout
        assert "[replayed] sum 14\n" in skipped.stdout

        forced = kernel.execute(cell.replace("squares\n", "squares --force\n", 1))
        replies.append(forced)
        assert "[replayed] step 2\n" in forced.stdout and "sum 14\n" in forced.stdout
        assert "squares: 3 steps replayed, 0 run" in forced.stdout
        assert executions(tmp_path) == {1: 1, 2: 1, 3: 1}

        info = kernel.execute("%durable info")
        replies.append(info)
        assert info.status == "ok" and f"log: {pg_url}\n" in info.stdout
        assert "found by: %durable open" in info.stdout
        assert "workflow squares: 2 runs, last completed" in info.stdout

        replicate = kernel.execute("%durable replicate")
        replies.append(replicate)
        assert replicate.status == "error"
        lines = replicate.stderr.strip().splitlines()
        assert len(lines) == 1 and "is a PostgreSQL log" in lines[0], replicate.stderr
        assert "the database's own replication and backups apply" in lines[0]
        from_python = kernel.execute("import durable_nb\ndurable_nb.replicate()")
        replies.append(from_python)
        assert from_python.error is not None
        assert len(from_python.error["traceback"]) == 1
        assert from_python.error["traceback"][0].startswith(
            f"ReplicationError: {pg_url} is a PostgreSQL log"
        )
    finally:
        kernel.close()
    shown = "".join(r.stdout + r.stderr + str(r.error) + str(r.results) for r in replies)
    assert "secret" not in shown
    assert not (tmp_path / ".durable").exists()  # nothing written beside the notebook


def test_a_session_the_server_closed_is_opened_again_and_keeps_its_runs(pg_log: str) -> None:
    """The server (a restart, an idle timeout of a proxy) ends the kernel's session in the
    middle of a run: the next step opens a new one, the run's lock is taken again (another
    opener still finds it held) and the run completes."""
    from durable_nb.log.stores import open_store

    @durable_nb.step
    def double(i: int) -> int:
        return 2 * i

    pg_url, store = pg_log, durable_nb.get_store()
    admin = psycopg.connect(pg_url, autocommit=True)
    try:
        with durable_nb.workflow("lost") as run:
            double(1)
            admin.execute("SELECT pg_terminate_backend(%s)", (store.conn.pg.info.backend_pid,))
            assert double(2) == 4  # on a new session
            with open_store(pg_url) as other:
                held = other.conn.execute("SELECT id, owner FROM runs").fetchone()
                assert other._held(*held)  # (not taken for a dead kernel's)
        assert run.steps_run == 2
        assert durable_nb.runs()["status"].tolist() == ["completed"]
    finally:
        admin.close()


def test_gc_spares_a_large_value_whose_row_is_not_committed_yet(pg_log: str) -> None:
    """A blob is written in the transaction of the row that points to it: until that row
    commits, ``gc`` (here from another thread, as the panel's or a second cell's) must not
    take it; and text PostgreSQL cannot hold (a NUL) is logged, not an error."""
    import threading

    import numpy as np

    store = durable_nb.get_store()
    written = threading.Event()
    go_on = threading.Event()
    write = store.blobs.write

    def paused(segments: object) -> str:  # the same write, then a pause before the row
        digest = write(segments)  # type: ignore[arg-type]
        written.set()
        go_on.wait(30)
        return digest

    @durable_nb.step
    def big(i: int) -> object:
        print("a NUL \0 in what a step shows")
        return np.arange(400_000) * i

    def work() -> None:
        with durable_nb.workflow("big"):
            big(3)

    try:
        store.blobs.write = paused  # type: ignore[method-assign]
        worker = threading.Thread(target=work)
        worker.start()
        assert written.wait(30)
        assert store.collect_blobs(grace=0).files == 0
        go_on.set()
        worker.join(30)
        store.blobs.write = write  # type: ignore[method-assign]
        assert (durable_nb.result("big", "big") == np.arange(400_000) * 3).all()
        assert durable_nb.steps()["status"].tolist() == ["completed"]
        store.forget("big")
        assert store.collect_blobs(grace=0).files == 1  # now nothing points to it
    finally:
        go_on.set()


@pytest.mark.parametrize(
    "name",
    [
        "postgresql+psycopg://durable:hunter2@127.0.0.1/x",
        "host=127.0.0.1 user=durable password=hunter2",
        "postgresql://durable:hunter2@127.0.0.1/x",
        "postgresql://durable:hunter2%zz@127.0.0.1/x",
        " POSTGRESQL://durable:hunter2@127.0.0.1/x",
    ],
)
def test_what_is_not_a_log_url_is_one_line_that_never_repeats_it(
    name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(durable_nb.LogFileError) as info:
        durable_nb.open_log(name)
    assert "hunter2" not in str(info.value) and "\n" not in str(info.value)
    assert list(tmp_path.iterdir()) == []  # no file made under that name


def test_a_session_a_ctrl_c_left_in_the_middle_of_a_command_is_replaced(pg_log: str) -> None:
    """A Ctrl-C between a command and its answer leaves the session mid-command (every later
    command failed: "another command is already in progress"): it is replaced, the run's
    lock taken again, and the run goes on; a transaction it was in is rolled back."""

    @durable_nb.step
    def double(i: int) -> int:
        return 2 * i

    store = durable_nb.get_store()
    with durable_nb.workflow("stuck") as run:
        double(1)
        store.conn.pg.pgconn.send_query(b"SELECT 1")  # (sent, its answer never read)
        assert double(2) == 4
        with pytest.raises(KeyboardInterrupt), store.transaction() as conn:
            conn.execute("INSERT INTO notes (ts, kind, detail) VALUES (0, 'x', 'lost')")
            store.conn.pg.pgconn.send_query(b"SELECT 1")
            raise KeyboardInterrupt
        assert double(3) == 6
    assert run.steps_run == 3
    assert durable_nb.runs()["status"].tolist() == ["completed"]
    assert store.conn.execute("SELECT count(*) FROM notes WHERE detail = 'lost'").fetchone() == (0,)
