"""Crash matrix: a 200-step workflow SIGKILLed at N random moments, rerun until done.

Results mix small values (in the log) and 1.1 MiB values (blob files), so kills land inside
commits and inside blob writes. Counted over all kills:

- kills, and how many landed inside a blob write (a temporary blob file was left)
- cycles: workflows driven to completion through the kills
- resumed: restarts that skipped every step committed before the kill (must be 100 %)
- double executions: completed steps executed again (must be 0)
- integrity failures: ``PRAGMA integrity_check`` not ok after a kill (must be 0)
- mismatches: final results differing from an uninterrupted run (must be 0)
- orphan blobs: blob files no row points to (written, then killed before the row committed)
  and how many ``Store.collect_blobs`` removes once the process is gone (left: must be 0)
- lost commits: steps committed before a kill and missing after it (must be 0)

With ``--s3`` every attempt replicates its log to moto's S3 server on 127.0.0.1, which goes
down and comes back (for 0.5-3 s) at random moments in most attempts, kills included. After
each cycle the replica is restored into a fresh folder and the workflow run there:

- replica lost commits: completed steps of the local log the restored copy lacks (must be 0)
- replica reruns: steps the restored copy ran again instead of replaying (must be 0)

Usage: python benchmarks/crash_matrix.py [-n 100] [--seed 1] [--s3] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import durable_nb
from durable_nb.log.sql import referenced_blobs

ROOT = Path(__file__).resolve().parent.parent
STEPS = 200
RESTORED = 1_000_000  # the attempt number of the run on a restored replica

WORKER = r"""
import hashlib, os, sys
import durable_nb
from durable_nb import step, workflow

folder = sys.argv[1]
os.environ["ATTEMPT"] = sys.argv[2]
replica = sys.argv[3] if len(sys.argv) > 3 else None
log = durable_nb.open_log(f"{folder}/.durable/matrix.db")
if replica:
    durable_nb.replicate(replica)  # checks the replica: the endpoint is up at the start
    open(f"{folder}/replicating", "w").close()

@step
def work(i):
    # The attempt number comes from the environment, which replay does not see: a global
    # that changes with every attempt would be a dependency of the step.
    with open(f"{folder}/executions.txt", "a") as counter:
        counter.write(f"{os.environ['ATTEMPT']} {i}\n")
    total = sum(range(20_000 + i))
    if i % 10 == 9:
        return bytes([i % 256]) * (1_100_000 + i)   # a blob file
    return {"i": i, "total": total}

with workflow("matrix") as run:
    results = [work(i) for i in range(STEPS)]
if replica:
    durable_nb.stop_replication()  # returns once the replica holds everything
print("replayed", run.steps_replayed)
print("digest", hashlib.sha256(repr(results).encode()).hexdigest())
""".replace("STEPS", str(STEPS))


class Endpoint:
    """moto's S3 server on 127.0.0.1 that can go down and come back on the same port (it
    keeps its buckets in this process meanwhile)."""

    def __init__(self) -> None:
        import logging

        from moto.server import ThreadedMotoServer

        logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one line per request otherwise

        self._server_class = ThreadedMotoServer
        self.server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        self.server.start()
        host, self.port = self.server.get_host_and_port()
        self.url = f"http://{host}:{self.port}"
        self.up = True
        self.outages = 0
        self.env = {"AWS_ACCESS_KEY_ID": "matrix", "AWS_SECRET_ACCESS_KEY": "matrix",
                    "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true",
                    "AWS_ENDPOINT_URL_S3": self.url}  # fmt: skip
        os.environ.update(self.env)  # for the restores of this process
        os.environ.pop("AWS_CA_BUNDLE", None)
        import boto3

        boto3.client("s3", endpoint_url=self.url, region_name="us-east-1",
                     aws_access_key_id="matrix", aws_secret_access_key="matrix",
                     ).create_bucket(Bucket="matrix")  # fmt: skip

    def down(self) -> None:
        if self.up:
            self.server.stop()
            self.up, self.outages = False, self.outages + 1

    def back(self) -> None:
        if not self.up:
            self.server = self._server_class(ip_address="127.0.0.1", port=self.port,
                                             verbose=False)  # fmt: skip
            self.server.start()
            self.up = True

    def close(self) -> None:
        if self.up:
            self.server.stop()


def start(
    folder: Path, attempt: int, replica: str | None = None, endpoint: Endpoint | None = None
) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), **(endpoint.env if endpoint else {})}
    env.pop("AWS_CA_BUNDLE", None)
    # stderr goes to a file: a pipe nobody reads during an outage's warnings would fill up
    with open(folder / "stderr.txt", "a") as errors:
        return subprocess.Popen(
            [sys.executable, "-c", WORKER, str(folder), str(attempt),
             *([replica] if replica else [])],
            env=env, stdout=subprocess.PIPE, stderr=errors, text=True,
        )  # fmt: skip


def failure(folder: Path) -> str:
    """The end of what the workers of a folder wrote to stderr."""
    path = folder / "stderr.txt"
    return path.read_text(errors="replace")[-3000:] if path.exists() else ""


def committed(log: Path) -> set[int]:
    if not log.exists():
        return set()
    conn = sqlite3.connect(log)
    try:
        rows = conn.execute(
            "SELECT args_repr FROM steps WHERE workflow = 'matrix' AND status = 'completed'"
        ).fetchall()
    except sqlite3.OperationalError as exc:  # killed before its schema was created
        if "no such table" not in str(exc):
            raise
        rows = []
    finally:
        conn.close()
    return {int(r[0]) for r in rows}


def integrity(log: Path) -> str:
    if not log.exists():
        return "ok"
    conn = sqlite3.connect(log)
    try:
        return conn.execute("PRAGMA integrity_check").fetchone()[0]
    finally:
        conn.close()


def executions(folder: Path) -> list[tuple[int, int]]:
    path = folder / "executions.txt"
    if not path.exists():
        return []
    return [tuple(map(int, line.split())) for line in path.read_text().splitlines() if line]  # type: ignore[misc]


def orphans(folder: Path) -> int:
    log = folder / ".durable" / "matrix.db"
    blobs = folder / ".durable" / "matrix.blobs"
    if not blobs.exists():
        return 0
    conn = sqlite3.connect(log)
    try:
        referenced = referenced_blobs(conn)
    finally:
        conn.close()
    files = [p for p in blobs.glob("??/*")]
    return sum(1 for p in files if p.name.startswith(".tmp-") or p.name not in referenced)


def partial_blobs(folder: Path) -> set[str]:
    """The temporary files of blob writes in the folder (one is left by a kill mid-write)."""
    return {p.name for p in (folder / ".durable" / "matrix.blobs").glob("??/.tmp-*")}


def collect(folder: Path) -> int:
    """Blob files removed by ``collect_blobs`` once the cycle's process is gone."""
    with durable_nb.Store(folder / ".durable" / "matrix.db") as store:
        return store.collect_blobs(grace=0).files


def tally_orphans(figures: dict[str, float], folder: Path) -> None:
    figures["orphan_blobs"] += orphans(folder)
    figures["gc_removed"] += collect(folder)
    figures["orphans_after_gc"] += orphans(folder)


FIGURES = ("kills", "in_blob_write", "cycles", "restarts", "resumed", "double_executions",
           "integrity_failures", "mismatches", "orphan_blobs", "gc_removed", "orphans_after_gc",
           "lost_commits", "outages", "kills_during_outage", "replica_lost_commits",
           "replica_lacking_blobs", "replica_reruns", "replica_mismatches")  # fmt: skip


def run_matrix(n: int, seed: int, s3: bool = False) -> dict[str, float]:
    rng = random.Random(seed)
    base = Path(tempfile.mkdtemp(prefix="dnb-matrix-"))
    endpoint = Endpoint() if s3 else None
    try:
        reference = base / "reference"
        (reference / ".durable").mkdir(parents=True)
        t0 = time.perf_counter()
        url = "s3://matrix/reference" if endpoint else None
        out, _ = start(reference, 0, url, endpoint).communicate(timeout=300)
        duration = time.perf_counter() - t0
        if not out:
            raise RuntimeError(f"the uninterrupted run failed:\n{failure(reference)}")
        expected = out.strip().splitlines()[-1]

        figures: dict[str, float] = dict.fromkeys(FIGURES, 0)
        cycle, attempt = 0, 0
        folder = base / f"cycle{cycle}"
        (folder / ".durable").mkdir(parents=True)
        snapshot: dict[int, set[int]] = {}  # attempt -> steps committed before it started
        finishing = False
        while True:
            finishing = figures["kills"] >= n  # the last attempt of the last cycle: no kill
            attempt += 1
            log = folder / ".durable" / "matrix.db"
            snapshot[attempt] = committed(log)
            partial_before = partial_blobs(folder)
            replica = f"s3://matrix/cycle{cycle}" if endpoint else None
            proc = start(folder, attempt, replica, endpoint)
            killed = False
            began = time.perf_counter()
            # (with a replica, a stop waits for it to hold everything: a longer window lets
            # some attempts finish, so that there are cycles whose replica is checked)
            window = 1.3 * duration if endpoint else duration
            kill_at = None if finishing else began + rng.uniform(0.05, window)
            # most attempts see the endpoint go and come back once replication has started
            outage = (rng.uniform(0.0, duration / 2), rng.uniform(0.5, 3.0))
            if endpoint is None or rng.random() >= 0.7:
                outage = None
            down_at = None
            while proc.poll() is None:
                now = time.perf_counter()
                if outage and down_at is None and (folder / "replicating").exists():
                    down_at = now + outage[0]
                if endpoint and down_at is not None and now >= down_at:
                    if now < down_at + outage[1]:  # type: ignore[index]
                        endpoint.down()
                    else:
                        endpoint.back()
                if kill_at is not None and now >= kill_at:
                    proc.send_signal(signal.SIGKILL)
                    proc.wait()
                    killed = True
                    figures["kills"] += 1
                    figures["kills_during_outage"] += bool(endpoint and not endpoint.up)
                    figures["in_blob_write"] += bool(partial_blobs(folder) - partial_before)
                    if integrity(log) != "ok":
                        figures["integrity_failures"] += 1
                    figures["lost_commits"] += len(snapshot[attempt] - committed(log))
                    break
                time.sleep(0.01)
            (folder / "replicating").unlink(missing_ok=True)
            if endpoint:
                endpoint.back()
            if killed:
                continue
            out, _ = proc.communicate(timeout=300)
            if proc.returncode != 0:
                raise RuntimeError(f"attempt {attempt} of the workflow failed:\n{failure(folder)}")
            figures["lost_commits"] += len(snapshot[attempt] - committed(log))
            figures["mismatches"] += out.strip().splitlines()[-1] != expected if out else 1
            tally_orphans(figures, folder)
            figures = _score(figures, folder, snapshot)
            if replica:
                _score_replica(figures, folder, replica, expected)
            figures["cycles"] += 1
            if finishing:
                break
            cycle += 1
            folder = base / f"cycle{cycle}"
            (folder / ".durable").mkdir(parents=True)
            snapshot = {}
        figures["seconds_uninterrupted"] = round(duration, 2)
        if endpoint:
            figures["outages"] = endpoint.outages
        return figures
    finally:
        if endpoint:
            endpoint.close()
        shutil.rmtree(base, ignore_errors=True)


def _score_replica(figures: dict[str, float], folder: Path, replica: str, expected: str) -> None:
    """Put the cycle's local log aside, restore its replica in its place and run the
    workflow there (in the same folder: the folder's name is a global the step reads)."""
    import warnings

    local = folder / ".durable-local"
    (folder / ".durable").rename(local)
    (folder / ".durable").mkdir()
    with warnings.catch_warnings(record=True) as said:  # "N blob files ... not on the replica"
        warnings.simplefilter("always")
        durable_nb.restore(replica, to=folder / ".durable" / "matrix.db")
    figures["replica_lacking_blobs"] += sum("not on the replica" in str(w.message) for w in said)
    lacking = committed(local / "matrix.db") - committed(folder / ".durable" / "matrix.db")
    figures["replica_lost_commits"] += len(lacking)
    out, _ = start(folder, RESTORED).communicate(timeout=300)
    if not out:
        raise RuntimeError(f"the workflow on the restored replica failed:\n{failure(folder)}")
    figures["replica_mismatches"] += out.strip().splitlines()[-1] != expected
    figures["replica_reruns"] += sum(1 for a, _ in executions(folder) if a == RESTORED)


def _score(
    figures: dict[str, float], folder: Path, snapshot: dict[int, set[int]]
) -> dict[str, float]:
    """Count restarts, resumed restarts and double executions of one cycle."""
    by_attempt: dict[int, set[int]] = {}
    for attempt, step in executions(folder):
        by_attempt.setdefault(attempt, set()).add(step)
    for attempt, done_before in snapshot.items():
        ran = by_attempt.get(attempt, set())
        doubles = len(ran & done_before)
        figures["double_executions"] += doubles
        if done_before:
            figures["restarts"] += 1
            figures["resumed"] += doubles == 0
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=100, help="number of SIGKILLs")
    parser.add_argument("--seed", type=int, default=1)
    outage = "replicate to moto's S3 server, which goes down and comes back"
    parser.add_argument("--s3", action="store_true", help=outage)
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args()
    figures = run_matrix(args.n, args.seed, args.s3)
    if args.json:
        print(json.dumps(figures))
        return
    restarts = figures["restarts"] or 1
    print(f"crash matrix: {STEPS}-step workflow, {figures['kills']} SIGKILLs at random moments "
          f"(uninterrupted run {figures['seconds_uninterrupted']} s)")  # fmt: skip
    print(f"  kills inside a blob write:   {figures['in_blob_write']}")
    print(f"  cycles run to completion:    {figures['cycles']}")
    print(f"  resumed restarts:            {figures['resumed']}/{figures['restarts']} "
          f"({100 * figures['resumed'] / restarts:.0f} %)")  # fmt: skip
    print(f"  completed steps run twice:   {figures['double_executions']}   (must be 0)")
    print(f"  commits lost by a kill:      {figures['lost_commits']}   (must be 0)")
    print(f"  integrity_check failures:    {figures['integrity_failures']}   (must be 0)")
    print(f"  final results mismatching:   {figures['mismatches']}   (must be 0)")
    print(f"  orphan blob files left:      {figures['orphan_blobs']}; removed by collect_blobs: "
          f"{figures['gc_removed']}, left after it: {figures['orphans_after_gc']}")  # fmt: skip
    if args.s3:
        print(f"  S3 outages (0.5-3 s):        {figures['outages']}; kills during one: "
              f"{figures['kills_during_outage']}")  # fmt: skip
        print(f"  replica: commits lost {figures['replica_lost_commits']}, restores lacking "
              f"blobs {figures['replica_lacking_blobs']}, steps rerun {figures['replica_reruns']}"
              f", results mismatching {figures['replica_mismatches']}"
              "   (all must be 0)")  # fmt: skip


if __name__ == "__main__":
    main()
