"""Signed values (issue 28): nothing written without the user's key is ever unpickled; the
user's own older log is adopted on upgrade; ``trust`` adopts a foreign one."""

from __future__ import annotations

import os
import pickle
import sqlite3
from pathlib import Path

import pytest

import durable_nb
from durable_nb import DurableWarning, Store, step, workflow
from durable_nb.log.signing import key_path

from .conftest import old_log, python
from .kernels import Kernel, kernel_env

calls: list[int] = []


@step
def value(i: int) -> object:
    calls.append(i)
    return {"i": i} if i < 100 else bytes([i % 256]) * 2_000_000  # 100+: a blob file


class Payload:
    """What an attacker stores: unpickling it runs code (it creates the file ``marker``)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, ...]:
        return (open, (str(self.marker), "w"))


def test_the_key_is_created_user_only_on_first_use(log_path: Path) -> None:
    with workflow("k"):
        value(1)
    path = key_path()
    assert path.exists() and path.stat().st_mode & 0o777 == 0o600
    assert path.parent.stat().st_mode & 0o777 == 0o700
    assert len(bytes.fromhex(path.read_text().strip())) == 32


def test_processes_starting_at_once_make_one_key_and_none_signs_with_an_empty_one(
    tmp_path: Path,
) -> None:
    """Twelve processes sign their first value at the same moment in a folder with no key:
    they all use one key (the file appears whole); an empty key file (left by an older
    durable_nb killed while writing it) is one line saying what to do, never a key."""
    child = (
        "import os, sys, time\nfrom durable_nb.log import signing\n"
        "while not os.path.exists(sys.argv[1]):\n    time.sleep(0.001)\n"
        "print(signing._key().hex())\n"
    )
    config = {"XDG_CONFIG_HOME": str(tmp_path)}
    procs = [python(child, str(tmp_path / "go"), cwd=tmp_path, env_extra=config)
             for _ in range(12)]  # fmt: skip
    for p in procs:  # each has imported durable_nb and waits
        assert p.poll() is None
    (tmp_path / "go").touch()
    keys = {p.communicate(timeout=60)[0].strip() for p in procs}
    assert len(keys) == 1 and len(next(iter(keys))) == 64
    (tmp_path / "durable_nb" / "key").write_text("")
    empty = python(child, str(tmp_path / "go"), cwd=tmp_path, env_extra=config)
    _, err = empty.communicate(timeout=60)
    assert "the signing key file" in err and "is empty: delete it" in err


def test_a_tampered_pickle_in_a_row_is_never_executed(log_path: Path, tmp_path: Path) -> None:
    calls.clear()
    with workflow("t"):
        value(1)
    marker = tmp_path / "pwned"
    conn = sqlite3.connect(log_path)
    conn.execute("UPDATE steps SET result = ?", (pickle.dumps(Payload(marker)),))
    conn.commit()
    conn.close()
    with pytest.raises(durable_nb.LogFileError, match="not signed with your key"):
        durable_nb.result("t", "value")  # loading it explicitly is refused too
    with pytest.warns(DurableWarning, match="not signed with your key"), workflow("t"):
        assert value(1) == {"i": 1}  # ran again instead
    assert calls == [1, 1] and not marker.exists()
    reason = durable_nb.steps()["reason"].iloc[-1]
    assert "not signed with your key" in reason


def test_a_tampered_blob_is_never_executed(log_path: Path, tmp_path: Path) -> None:
    calls.clear()
    with workflow("b"):
        value(101)
    marker = tmp_path / "pwned"
    store = durable_nb.get_store()
    evil = store.blobs.write([pickle.dumps(Payload(marker), protocol=5)])  # a valid blob file
    conn = sqlite3.connect(log_path)
    conn.execute("UPDATE steps SET result_blob = ?, result_format = 'pickle-oob'", (evil,))
    conn.commit()
    conn.close()
    with pytest.warns(DurableWarning, match="not signed"), workflow("b"):
        assert value(101) == bytes([101]) * 2_000_000
    assert calls == [101, 101] and not marker.exists()


def test_the_users_own_older_log_is_adopted_once_on_upgrade(tmp_path: Path) -> None:
    with Store(tmp_path / "now.db") as now:
        with workflow("w", store=now):
            value(3)  # the record an older durable_nb would have written, digests and all
        row = now.conn.execute("SELECT scope, args_digest, code_digest FROM steps").fetchone()
    path = old_log(tmp_path / "old.db", 9, step="value", result={"i": 3})
    conn = sqlite3.connect(path)
    conn.execute("UPDATE steps SET scope = ?, args_digest = ?, code_digest = ?", row)
    conn.execute("UPDATE runs SET first_step = 1")  # where its rows start, as a run records
    conn.commit()
    conn.close()
    with pytest.warns(DurableWarning, match="the 1 values of .* are signed with your key"):
        store = Store(path)
    calls.clear()
    with store, workflow("w", store=store):
        assert value(3) == {"i": 3}  # replayed: the history does not run again
    assert calls == []


FOREIGN = r"""
import sys, durable_nb
from tests.test_signing import value  # the same step, run by someone with another key

with durable_nb.workflow("w", store=durable_nb.Store(sys.argv[1])):
    value(3)
"""


def test_a_log_signed_with_another_key_runs_again_until_trusted(tmp_path: Path) -> None:
    path = tmp_path / "theirs.db"
    proc = python(FOREIGN, str(path), cwd=tmp_path, env_extra={"DURABLE_NB_KEY": "theirs"})
    assert proc.wait(timeout=60) == 0, proc.stderr.read() if proc.stderr else ""
    calls.clear()
    with Store(path) as store:
        with pytest.warns(DurableWarning, match="not signed"), workflow("w", store=store):
            assert value(3) == {"i": 3}  # theirs is not unpickled: ours runs
        assert calls == [3]
        assert durable_nb.trust(path) == 2  # their record and ours
        with workflow("w", store=store):
            value(3)
    assert calls == [3]  # replayed once trusted


def test_a_tampered_saved_cell_is_never_unpickled(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    kernel = Kernel(tmp_path, kernel_env(tmp_path / "nb.ipynb"))
    cell = "%%durable c\nx = [1, 2, 3]\n"
    try:
        assert kernel.execute("%load_ext durable_nb").status == "ok"
        assert kernel.execute(cell).status == "ok"
        conn = sqlite3.connect(tmp_path / ".durable" / "nb.db")
        conn.execute("UPDATE cells SET variables = ?", (pickle.dumps(Payload(marker)),))
        conn.commit()
        conn.close()
        out = kernel.execute(cell).stdout
        assert "not skipped: the saved cell is not signed with your key" in out, out
        assert not marker.exists()
        trusted = kernel.execute(f"%durable trust {tmp_path / '.durable' / 'nb.db'}").stdout
        assert "signed with your key" in trusted
    finally:
        kernel.close()
    assert os.environ["XDG_CONFIG_HOME"] in str(key_path())
