"""Replicas read in place through Litestream's VFS (run in a process of its own): one log's
views of its replica URL, as it is and as it was (``as_of``); a VFS process killed between
two views; and the fallback to pulling where the VFS cannot load. Real agents replicate with
the real litestream; the fleet over 20 replicas is in ``test_fleet``."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pandas as pd
import pytest

import durable_nb
from durable_nb import DurableWarning, ReplicationError
from durable_nb.backup import inplace

from .conftest import ROOT
from .test_fleet import name, run_agents


def test_one_replica_read_in_place_now_and_as_it_was(tmp_path: Path) -> None:
    root, agents = f"file://{tmp_path / 'fleet'}/", tmp_path / "agents"
    run_agents(root, agents, [1])
    time.sleep(1.2)
    between = pd.Timestamp.now(tz="UTC")
    time.sleep(1.2)
    run_agents(root, agents, [1], STEPS="12")  # a second run: two more steps
    url = f"{root}{name(1, agents)}"

    runs = durable_nb.runs(url)
    assert list(runs["run"]) == [1, 2] and list(runs["steps_run"]) == [10, 2]
    assert list(durable_nb.runs(url, as_of=between)["run"]) == [1]
    assert len(durable_nb.steps(log=url, as_of=between.isoformat())) == 10
    assert len(durable_nb.experiments(log=url)) == 12
    assert durable_nb.timeline(log=url, as_of=between).axes[0].get_title().startswith("all")

    # the same values as a restored copy of that replica
    copy = tmp_path / "copy.db"
    durable_nb.restore(url, to=copy)
    pd.testing.assert_frame_equal(durable_nb.steps(log=url), durable_nb.steps(log=copy))
    pd.testing.assert_frame_equal(durable_nb.events(log=url), durable_nb.events(log=copy))

    # the terminal: the runs of the fleet as they were
    cli = [sys.executable, "-m", "durable_nb.cli", "fleet", root, "--format", "csv"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    then = subprocess.run([*cli, "--as-of", between.isoformat()], env=env, capture_output=True,
                          text=True, timeout=60)  # fmt: skip
    assert then.returncode == 0, then.stderr
    assert len(then.stdout.splitlines()) == 2  # the header and run 1
    bad = subprocess.run([*cli, "--as-of", "soon"], env=env, capture_output=True, text=True)
    assert bad.returncode == 2 and bad.stderr == (
        "durable-nb fleet: --as-of 'soon' is not a time: give an ISO 8601 time, e.g. "
        "2026-12-07T10:00Z\n"
    )

    with pytest.raises(ReplicationError, match=r"holds nothing at or before 2000-01-01T00:00:00"):
        durable_nb.runs(url, as_of="2000-01-01")
    with pytest.raises(ReplicationError, match=r"^nothing is replicated at file://.*nope"):
        durable_nb.runs(f"{root}nope")
    with pytest.raises(ValueError, match="as_of= shows a replica as it was"):
        durable_nb.runs(copy, as_of=between)
    with pytest.raises(ValueError, match="as_of='yesterday-ish' is not a time"):
        durable_nb.runs(url, as_of="yesterday-ish")


def test_a_killed_vfs_process_is_started_again_and_every_log_served(tmp_path: Path) -> None:
    root, agents = f"file://{tmp_path / 'fleet'}/", tmp_path / "agents"
    run_agents(root, agents, [1, 2])
    fleet = durable_nb.fleet(root, cache=tmp_path / "cache")
    assert len(fleet.runs()) == 2
    server = inplace._servers[-1]
    os.kill(server.proc.pid, signal.SIGKILL)
    server.proc.wait()
    deadline = time.monotonic() + 10
    while server.stopped is None and time.monotonic() < deadline:
        time.sleep(0.05)
    runs = fleet.runs()  # the replicas kept open are opened again, in a new process
    assert sorted(runs["log"]) == sorted([name(1, agents), name(2, agents)])
    assert inplace._servers[-1] is not server and inplace._servers[-1].stopped is None
    assert not (tmp_path / "cache").exists()  # in place: nothing written
    fleet.close()


def test_without_the_vfs_the_views_pull_and_say_so_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root, agents = f"file://{tmp_path / 'fleet'}/", tmp_path / "agents"
    run_agents(root, agents, [3])
    # a platform without a wheel of the VFS: its module cannot be imported there
    stub = tmp_path / "no_wheel"
    stub.mkdir()
    (stub / "litestream_vfs.py").write_text("raise ImportError('no wheel for this platform')\n")
    monkeypatch.setenv("PYTHONPATH", f"{stub}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    fleet = durable_nb.fleet(root, cache=tmp_path / "cache")
    with pytest.warns(DurableWarning, match="read pulled copies .*no wheel for this platform"):
        runs = fleet.runs()
    assert list(runs["log"]) == [name(3, agents)]
    assert (tmp_path / "cache" / "pulled.json").exists()
    run_agents(root, agents, [3], STEPS="11")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert len(fleet.runs()) == 2  # pulled again (what changed), not said again
    with pytest.raises(ReplicationError, match="as_of= reads replicas in place, which is not"):
        fleet.runs(as_of="2026-01-01")


def test_a_replica_gone_after_the_listing_or_at_an_unreadable_path_is_named_not_waited_for(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root, agents = f"file://{tmp_path / 'fleet'}/", tmp_path / "agents"
    run_agents(root, agents, [1, 2])
    odd = tmp_path / "fleet" / "odd" / "sp ace" / "a"  # a path the VFS cannot open
    shutil.copytree(tmp_path / "fleet" / name(2, agents), odd)
    monkeypatch.setattr(inplace, "TIMEOUT", 3.0)
    fleet = durable_nb.fleet(root, cache=tmp_path / "cache")
    assert len(fleet.logs()) == 3
    shutil.rmtree(tmp_path / "fleet" / name(2, agents))  # gone after the listing
    start = time.monotonic()
    with pytest.warns(DurableWarning, match=r"2 of 3 logs .* could not be read") as said:
        runs = fleet.runs()  # (the listing of a moment ago is reused)
    assert time.monotonic() - start < 20
    assert list(runs["log"]) == [name(1, agents)]
    errors = fleet.logs().set_index("log")["error"]  # a new listing: agent 2 is gone
    assert "spaces, letters beyond ASCII or '?'" in errors["odd/sp ace/a"]
    assert len(said) == 1
    time.sleep(1.1)
    with pytest.warns(DurableWarning, match=r"1 of 2 logs .* odd/sp ace/a"):
        assert list(fleet.runs()["log"]) == [name(1, agents)]  # a new VFS process serves
    fleet.close()
