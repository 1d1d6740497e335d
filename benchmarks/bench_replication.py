"""Litestream with a local S3 server (moto on 127.0.0.1), real binary.

1. Time from a step's commit to its presence in the S3 replica, with 100 ms sync and monitor
   intervals (target median <= 0.5 s). Baseline: the interval itself (0.1 s).
2. Restore of a ~100 MB log from the S3 replica (target <= 5 s). Baseline: downloading the
   same number of bytes from the same server with boto3.

Usage: python benchmarks/bench_replication.py [--commits 20] [--mb 100]
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import boto3

import durable_nb
from durable_nb import step, workflow


def use_moto(endpoint: str) -> None:
    """Ordinary AWS settings pointing at the local S3 server (no CA bundle: litestream)."""
    os.environ.update(
        AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench", AWS_DEFAULT_REGION="us-east-1",
        AWS_EC2_METADATA_DISABLED="true", AWS_ENDPOINT_URL_S3=endpoint,
    )  # fmt: skip
    os.environ.pop("AWS_CA_BUNDLE", None)


def start_moto() -> tuple[subprocess.Popen[bytes], str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    moto = shutil.which("moto_server", path=str(Path(sys.executable).parent)) or "moto_server"
    proc = subprocess.Popen([moto, "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    for _ in range(200):
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                break
        time.sleep(0.05)
    return proc, f"http://127.0.0.1:{port}"


@step
def record(i: int) -> dict[str, int]:
    return {"i": i}


@step
def chunk(i: int) -> bytes:
    return os.urandom(900_000)  # under the blob threshold: stays inside the log


def l0_count(s3, bucket: str, prefix: str) -> int:  # type: ignore[no-untyped-def]
    page = s3.list_objects_v2(Bucket=bucket, Prefix=f"{prefix}/0000/")
    return page.get("KeyCount", 0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--commits", type=int, default=20)
    parser.add_argument("--mb", type=int, default=100)
    args = parser.parse_args()
    proc, endpoint = start_moto()
    use_moto(endpoint)
    s3 = boto3.client("s3", endpoint_url=endpoint)
    s3.create_bucket(Bucket="bench")
    folder = Path(tempfile.mkdtemp(prefix="dnb-repl-"))
    try:
        durable_nb.open_log(folder / ".durable" / "bench.db")
        replicator = durable_nb.replicate(
            "s3://bench/lag", sync_interval="100ms", monitor_interval="100ms"
        )
        with workflow("warmup"):
            record(-1)
        replicator.wait_synced(15)
        latencies = []
        with workflow("lag"):
            for i in range(args.commits):
                before = l0_count(s3, "bench", "lag")
                t0 = time.perf_counter()
                record(i)
                while l0_count(s3, "bench", "lag") == before:
                    time.sleep(0.005)
                latencies.append(time.perf_counter() - t0)
                time.sleep(0.2)
        durable_nb.stop_replication()

        durable_nb.open_log(folder / ".durable" / "big.db")
        replicator = durable_nb.replicate("s3://bench/big")
        with workflow("big"):
            for i in range(args.mb * 1_000_000 // 900_000):
                chunk(i)
        replicator.wait_synced(120)
        durable_nb.stop_replication()
        size = (folder / ".durable" / "big.db").stat().st_size
        t0 = time.perf_counter()
        durable_nb.restore("s3://bench/big", to=folder / "restored.db")
        restore_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        total = 0
        for obj in s3.list_objects_v2(Bucket="bench", Prefix="big/")["Contents"]:
            total += len(s3.get_object(Bucket="bench", Key=obj["Key"])["Body"].read())
        download_s = time.perf_counter() - t0
    finally:
        durable_nb.stop_replication()
        proc.terminate()
        shutil.rmtree(folder, ignore_errors=True)
    med = statistics.median(latencies)
    print(
        f"1. commit -> in S3 replica (100 ms intervals), {len(latencies)} commits: median "
        f"{med:.3f} s, max {max(latencies):.3f} s (target median <= 0.5 s; interval 0.1 s)"
    )
    print(
        f"2. restore of a {size / 1e6:.0f} MB log from S3: {restore_s:.2f} s (target <= 5 s); "
        f"plain boto3 download of all {total / 1e6:.0f} MB of its objects: {download_s:.2f} s, "
        f"ratio {restore_s / download_s:.2f}"
    )


if __name__ == "__main__":
    main()
