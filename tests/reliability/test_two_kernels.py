"""Two kernels on one log: readers and other workflows never see "database is locked"; the
same workflow is refused with the holder's pid; a dead holder's lease is taken over."""

from __future__ import annotations

import time
from pathlib import Path

from ..kernels import Kernel, kernel_env

SETUP = """\
import time, durable_nb
from durable_nb import step
@step
def slow(i):
    time.sleep(0.05)
    return i
"""


def test_two_kernels_share_one_log(tmp_path: Path) -> None:
    env = kernel_env(tmp_path / "shared.ipynb")
    a, b = Kernel(tmp_path, env), Kernel(tmp_path, env)
    try:
        for k in (a, b):
            assert k.execute("%load_ext durable_nb\n" + SETUP).status == "ok"
        pid_a = int(a.execute("import os; print(os.getpid())").stdout)
        a.send("%%durable long\nout = [slow(i) for i in range(200)]")
        time.sleep(1.0)
        # b reads the log and runs another workflow while a writes, many times over
        for round_ in range(5):
            reply = b.execute(
                "n = len(durable_nb.steps()); r = durable_nb.runs(); e = durable_nb.events()"
            )
            assert reply.status == "ok", reply.error
            other = b.execute(f"%%durable other-{round_}\nvals = [slow(i) for i in range(10)]")
            assert other.status == "ok", other.error
            assert "locked" not in other.stdout + other.stderr
        busy = b.execute("%%durable long\nout = [slow(i) for i in range(200)]")
        assert busy.status == "error" and busy.error is not None
        assert busy.error["traceback"] == [
            f"WorkflowBusyError: workflow 'long' is already running in process {pid_a}; "
            "wait for it to finish or stop that kernel, then run again"
        ]
        done_by_a = int(
            b.execute(
                "print((durable_nb.steps(workflow='long')['status'] == 'completed').sum())"
            ).stdout
        )
        assert done_by_a > 0
        a.kill()
        taken = b.execute("%%durable long\nout = [slow(i) for i in range(200)]")
        assert taken.status == "ok", taken.error
        assert f"long: {done_by_a}" in taken.stdout or "steps replayed" in taken.stdout
        replayed = int(taken.stdout.split("long: ")[1].split(" steps replayed")[0])
        assert replayed >= done_by_a
        statuses = b.execute("print(list(durable_nb.runs()['status'].astype(str)))")
        assert "crashed" in statuses.stdout
    finally:
        b.close()
