"""The fleet observer, end to end: 20 agents in processes of their own, each replicating its
log under one root with the real litestream (a file root, and moto's S3 on 127.0.0.1), then
one observer that lists, pulls incrementally, reports a corrupt replica, and replays one
agent's workflow here."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

import boto3
import pandas as pd
import pytest

import durable_nb
from durable_nb import DurableWarning, ReplicationError
from durable_nb.backup.replica import layout_name, parse_url
from durable_nb.log.current_log import close_log, current_store_path

from .conftest import ROOT
from .kernels import Kernel, kernel_env
from .test_replication import aws, make_bucket, moto_endpoint  # noqa: F401 - fixtures

AGENT = str(Path(__file__).with_name("fleet_agent.py"))
AGENTS = 20
FAILING = {0, 5, 10, 15}  # these agents raise at step 5 of 10


def start_agent(root: str, folder: Path, i: int, **env: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, AGENT, "run", root, str(folder / f"agent{i:02d}" / ".durable" / "a.db")],
        env={**os.environ, "PYTHONPATH": str(ROOT), "COUNTER": str(folder / f"ran{i:02d}.txt"),
             **({"FAIL_AT": "5"} if i in FAILING else {}), **env},
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip


def run_agents(root: str, folder: Path, which: list[int], **env: str) -> None:
    procs = [start_agent(root, folder, i, **env) for i in which]
    for i, proc in zip(which, procs, strict=True):
        out, _ = proc.communicate(timeout=240)
        assert proc.returncode == 0 and "synced" in out, f"agent {i}: {out}"


def name(i: int, agents: Path) -> str:
    """Where agent ``i``'s log (``agents/agentNN/.durable/a.db``) lands under the root."""
    return layout_name(agents / f"agent{i:02d}" / ".durable" / "a.db")


def corrupt(root: str, log: str) -> None:
    """Overwrite every LTX file of one replica with junk of the same size."""
    replica = parse_url(root).child(log)
    if replica.scheme == "file":
        for path in Path(replica.path).rglob("*.ltx"):
            path.write_bytes(b"\xde\xad" * (path.stat().st_size // 2))
        return
    client = boto3.client("s3", endpoint_url=replica.endpoint, region_name="us-east-1")
    for obj in client.list_objects_v2(Bucket=replica.bucket, Prefix=replica.path)["Contents"]:
        if obj["Key"].endswith(".ltx"):
            client.put_object(Bucket=replica.bucket, Key=obj["Key"], Body=b"\xde\xad" * 64)


@pytest.fixture(params=["file", "s3"])
def root(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "file":
        yield f"file://{tmp_path / 'fleet'}/"
        return
    endpoint = request.getfixturevalue("aws")
    make_bucket(endpoint, "fleet")
    yield "s3://fleet/team/"


def test_twenty_agents_read_in_place_pulled_incrementally_one_corrupt_and_one_replayed_here(
    root: str, tmp_path: Path
) -> None:
    agents = tmp_path / "agents"
    run_agents(root, agents, list(range(AGENTS)))
    fleet = durable_nb.fleet(root, cache=tmp_path / "cache")

    listed = fleet.logs()
    assert sorted(listed["log"]) == [name(i, agents) for i in range(AGENTS)]
    assert (listed["txid"] > 0).all() and (listed["size"] > 0).all()
    assert listed["pulled_txid"].isna().all()  # the listing alone: nothing pulled

    # read in place: nothing pulled, nothing written; the corrupt replica named, once
    corrupt(root, name(19, agents))
    unread = rf"1 of 20 logs .* could not be read .*{name(19, agents)}: .*invalid LTX file"
    with pytest.warns(DurableWarning, match=unread) as said:
        runs = fleet.runs()
    assert len(said) == 1
    assert not (tmp_path / "cache").exists()
    assert sorted(runs["log"].unique()) == [name(i, agents) for i in range(AGENTS - 1)]
    status = dict(zip(runs["log"], runs["status"].astype(str), strict=True))
    assert status == {name(i, agents): "failed" if i in FAILING else "completed" for i in range(19)}
    assert "invalid LTX file" in fleet.logs().set_index("log").loc[name(19, agents), "error"]
    failing = [name(i, agents) for i in sorted(FAILING)]
    with pytest.warns(DurableWarning, match=name(19, agents)):
        assert list(fleet.runs(status="failed")["log"].astype(str)) == failing
        failed_steps = fleet.steps(status="failed")
        assert fleet.runs(since="2100-01-01").empty
    assert sorted(failed_steps["log"].astype(str)) == failing
    assert (failed_steps["error_message"] == "agent failed at step 5").all()
    assert not (tmp_path / "cache").exists()

    unpulled = rf"1 of 20 logs .* could not be pulled .*{name(19, agents)}: "
    with pytest.warns(DurableWarning, match=unpulled):
        first = fleet.pull(progress=False)
    assert (first["action"] == "pulled").sum() == AGENTS - 1
    assert first.set_index("log").loc[name(19, agents), "action"] == "failed"
    # the views in place give what the views of the pulled copies give
    pulled = durable_nb.fleet(root, cache=tmp_path / "cache", in_place=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DurableWarning)  # (agent 19, said above)
        for view in ("runs", "steps", "events", "experiments", "checkpoints"):
            in_place, copies = getattr(fleet, view)(), getattr(pulled, view)()
            pd.testing.assert_frame_equal(in_place, copies, obj=view)
    between = pd.Timestamp.now(tz="UTC")
    time.sleep(1.1)

    # two agents run again (two more steps each): seen in place at once, then exactly those
    # two are downloaded again; as_of shows the fleet as it was before
    run_agents(root, agents, [1, 2], STEPS="12")
    with pytest.warns(DurableWarning, match=name(19, agents)):
        runs = fleet.runs()
        before = fleet.runs(as_of=between)
    assert len(runs[runs["log"] == name(1, agents)]) == 2 and len(runs) == AGENTS - 1 + 2
    assert len(before[before["log"] == name(1, agents)]) == 1 and len(before) == AGENTS - 1
    with pytest.warns(DurableWarning, match=name(19, agents)):  # still corrupt: tried, reported
        second = fleet.pull(progress=False)
    actions = second.set_index("log")["action"]
    assert sorted(actions[actions == "pulled"].index) == [name(1, agents), name(2, agents)]
    assert (actions == "unchanged").sum() == AGENTS - 3
    fleet.close()

    # the observer pulls agent 0 (failed at step 5) and finishes its workflow here
    observer = subprocess.run(
        [sys.executable, AGENT, "observe", root, name(0, agents), str(tmp_path / "cache")],
        env={**os.environ, "PYTHONPATH": str(ROOT), "COUNTER": str(tmp_path / "here.txt")},
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert observer.returncode == 0, observer.stdout + observer.stderr
    assert "result 285" in observer.stdout  # sum of squares 0..9, as an uninterrupted run
    assert (tmp_path / "here.txt").read_text().split() == ["5", "6", "7", "8", "9"]
    assert (agents / "ran00.txt").read_text().split() == ["0", "1", "2", "3", "4", "5"]


def test_open_makes_the_log_current_and_keeps_a_backup_of_the_working_copy(
    tmp_path: Path,
) -> None:
    root, agents = f"file://{tmp_path / 'fleet'}/", tmp_path / "agents"
    run_agents(root, agents, [3])
    fleet = durable_nb.fleet(root, cache=tmp_path / "cache")
    try:
        path = fleet.open(name(3, agents))
        assert current_store_path() == path
        assert durable_nb.runs()["status"].astype(str).tolist() == ["completed"]
        close_log()
        again = fleet.open(name(3, agents), current=False)
        assert again == path and list(path.parent.glob("a.db.*.bak"))
        assert current_store_path() != path
        with pytest.raises(ReplicationError, match=r"no replica 'nobody' under .*logs\(\)"):
            fleet.open("nobody")
    finally:
        close_log()


def test_the_terminal_and_the_notebook_show_the_fleet(tmp_path: Path) -> None:
    root, agents = f"file://{tmp_path / 'fleet'}/", tmp_path / "agents"
    run_agents(root, agents, [4, 5])  # 5 fails at step 5
    cli = subprocess.run(
        [sys.executable, "-m", "durable_nb.cli", "fleet", root, "--pull", "--status", "failed",
         "--format", "csv", "--cache", str(tmp_path / "cache")],
        env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert cli.returncode == 0, cli.stderr
    lines = cli.stdout.splitlines()
    assert lines[0].startswith("log,run,workflow,status") and len(lines) == 2
    assert lines[1].startswith(f"{name(5, agents)},1,agent,failed,")
    assert "2 logs: 2 pulled, 0 unchanged, 0 failed" in cli.stderr

    kernel = Kernel(tmp_path, kernel_env(XDG_CACHE_HOME=str(tmp_path / "xdg")))
    try:
        assert kernel.execute("%load_ext durable_nb").status == "ok"
        reply = kernel.execute(f"%durable fleet {root}")
        assert reply.status == "ok", reply.error
        views = [r for r in reply.results if "application/vnd.jupyter.widget-view+json" in r]
        assert len(views) == 1  # the panel; test_browser clicks it
        model = views[0]["application/vnd.jupyter.widget-view+json"]["model_id"]
        reply = kernel.execute(
            "import time\nfrom ipywidgets.widgets.widget import _instances\n"
            f"panel = _instances[{model!r}]\n"
            "while 'refreshed' not in panel.summary.value: time.sleep(0.1)\n"
            "print(panel.summary.value, panel.table.value)\n"
            "panel.close()\nprint('thread alive:', panel._thread.is_alive())"
        )
        assert reply.status == "ok", reply.error
        assert "2 logs, 0 runs running, 1 failed" in reply.stdout  # read in place: no pull
        assert name(5, agents) in reply.stdout and "agent failed at step 5" in reply.stdout
        assert "thread alive: False" in reply.stdout
        reply = kernel.execute("%durable fleet")
        assert reply.status == "error" and "usage: %durable fleet ROOT" in reply.stderr
    finally:
        kernel.close()


def test_an_empty_root_a_missing_folder_and_a_dead_endpoint_are_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    empty = durable_nb.fleet(f"file://{tmp_path / 'none'}/", cache=tmp_path / "c1")
    with pytest.warns(DurableWarning, match="no replicas under .*the folder does not exist"):
        assert empty.logs().empty and empty.runs().empty
        assert list(empty.runs().columns[:3]) == ["log", "run", "workflow"]
        assert empty.pull(progress=False).empty
    with pytest.raises(ValueError, match="status='exploded' is not one of completed, failed"):
        empty.steps(status="exploded")
    with pytest.raises(ValueError, match="since='yesterday' is not a time"):
        empty.runs(since="yesterday")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens there
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "k")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s")
    dead = durable_nb.fleet(f"s3://b/p/?endpoint=http://127.0.0.1:{port}", cache=tmp_path / "c2")
    with pytest.raises(ReplicationError, match="cannot reach the S3 endpoint") as info:
        dead.logs()
    assert "\n" not in str(info.value)


def test_wrong_credentials_are_one_line_without_the_secret(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from .test_replication import start_moto

    proc, endpoint = start_moto(INITIAL_NO_AUTH_ACTION_COUNT="1")
    try:
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIANOTAREALKEY00001")
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
        monkeypatch.setenv("AWS_ENDPOINT_URL_S3", endpoint)
        monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
        make_bucket(endpoint, "guarded")  # the one action moto allows before checking keys
        observer = durable_nb.fleet("s3://guarded/team/", cache=tmp_path / "cache")
        with pytest.raises(ReplicationError, match="access denied") as info:
            observer.pull(progress=False)
        message = str(info.value)
        assert "\n" not in message and "not-the-secret" not in message
    finally:
        proc.terminate()
        proc.wait()


def test_a_log_of_an_older_schema_is_read_in_place_and_migrated_in_its_pulled_copy(
    tmp_path: Path,
) -> None:
    from .conftest import old_log

    root = f"file://{tmp_path / 'fleet'}/"
    (tmp_path / "old" / ".durable").mkdir(parents=True)
    log = old_log(tmp_path / "old" / ".durable" / "v3.db", 3)
    durable_nb.replicate(root, log=log)
    fleet = durable_nb.fleet(root, cache=tmp_path / "cache")
    try:
        deadline = time.monotonic() + 30
        while fleet.logs().empty and time.monotonic() < deadline:
            time.sleep(0.2)
    finally:
        durable_nb.stop_replication(log=log)
    runs = fleet.runs()  # in place: read through a migrated copy in memory
    assert runs[["workflow", "status"]].astype(str).values.tolist() == [["w", "completed"]]
    assert fleet.steps()["step"].tolist() == ["train"]
    assert not (tmp_path / "cache").exists()
    pulled = durable_nb.fleet(root, cache=tmp_path / "cache", in_place=False)
    assert pulled.pull(progress=False)["action"].tolist() == ["pulled"]
    pd.testing.assert_frame_equal(pulled.runs(), runs)
    assert pulled.steps()["step"].tolist() == ["train"]


def test_a_root_url_places_each_log_at_host_folder_stem(tmp_path: Path) -> None:
    log = tmp_path / "sweeps" / ".durable" / "lr.db"
    host, folder, stem = layout_name(log).split("/")
    assert (host, stem) == (socket.gethostname(), "lr") and folder.startswith("sweeps-")
    other = tmp_path / "elsewhere" / "sweeps" / ".durable" / "lr.db"  # same names, other path
    assert layout_name(other) != layout_name(log)
    from durable_nb.backup.litestream import replica_url_for

    assert replica_url_for(f"file://{tmp_path}/r/", log) == (
        f"file://{tmp_path}/r/{layout_name(log)}"
    )
    assert replica_url_for(f"file://{tmp_path}/one", log) == f"file://{tmp_path}/one"
    os.environ["DURABLE_NB_REPLICA_ROOT"] = "s3://team/fleet"
    os.environ["DURABLE_NB_REPLICA_NAME"] = "agent 17/run"
    try:
        assert replica_url_for(None, log).startswith("s3://team/fleet/agent_17/run")
    finally:
        del os.environ["DURABLE_NB_REPLICA_ROOT"], os.environ["DURABLE_NB_REPLICA_NAME"]


def test_a_replica_name_with_dot_dot_or_empty_segments_is_never_listed() -> None:
    from durable_nb.backup.replica import _LTX_S3, _gather

    ltx = f"/0000/{'0' * 15}1-{'0' * 15}1.ltx"
    names = [i.name for i in _gather([(k + ltx, 9, 0.0) for k in
             ("ok/a", "../evil", "a/../../b", "/abs/path", "a//b")], _LTX_S3, 16)]  # fmt: skip
    assert names == ["ok/a"]
