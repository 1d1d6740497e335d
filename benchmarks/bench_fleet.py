"""The fleet observer on a local S3 server (moto on 127.0.0.1), with the real litestream.

100 logs of 1,000 steps each, replicated by one litestream process under one root, then:

1. First pull into an empty cache + ``Fleet.runs()`` (target <= 10 s on a 2-core machine).
   Baseline, in the same run: restoring the 100 one after another with the litestream CLI.
2. A second pull with nothing changed (target <= 1 s): one listing, nothing downloaded.
3. ``Fleet.runs()`` reading the replicas in place (Litestream's VFS, nothing pulled): cold, in
   a fresh process (loading the VFS included; target <= 2 s), and warm, the same fleet asked
   again (target <= 0.3 s); side by side with 1 (pull + runs) and 2 (second pull + runs).

Medians of several runs. Usage: python benchmarks/bench_fleet.py [--logs 100] [--steps 1000]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import boto3

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_replication import start_moto, use_moto

import durable_nb
from durable_nb import step, workflow
from durable_nb.backup.inplace import unavailable
from durable_nb.backup.litestream import litestream_binary
from durable_nb.backup.replica import child_environment, parse_url
from durable_nb.log.current_log import close_log, open_log


@step
def observe(agent: int, i: int) -> dict[str, int]:
    return {"agent": agent, "i": i, "score": (agent * 7919 + i) % 1000}


@workflow
def agent_run(agent: int, steps: int) -> int:
    return sum(observe(agent, i)["score"] for i in range(steps))


def make_logs(folder: Path, logs: int, steps: int) -> list[Path]:
    paths = []
    for a in range(logs):
        path = folder / f"agent{a:03d}" / ".durable" / "a.db"
        open_log(path)
        agent_run(a, steps)
        close_log()
        paths.append(path)
    return paths


def replicate_all(paths: list[Path], root: str, folder: Path) -> None:
    """One litestream process for every log; stopped (flushing) once all are replicated."""
    base = parse_url(root)
    dbs = [
        {
            "path": str(p),
            "replica": base.child(f"agents/{p.parent.parent.name}").litestream_config(),
        }
        for p in paths
    ]
    config = folder / "litestream.yml"
    config.write_text(json.dumps({"dbs": dbs}))
    proc = subprocess.Popen(
        [litestream_binary(), "replicate", "-no-expand-env", "-config", str(config)],
        env=child_environment(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    fleet = durable_nb.fleet(root, cache=folder / "unused")
    deadline = time.monotonic() + 300
    while len(fleet.logs()) < len(paths) and time.monotonic() < deadline:
        time.sleep(0.5)
    time.sleep(1.5)  # one more sync interval
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=60)


def sequential_cli(root: str, names: list[str], folder: Path) -> float:
    start = time.perf_counter()
    for n in names:
        out = folder / f"{n.replace('/', '_')}.db"
        url = parse_url(root).child(n).litestream_url()
        subprocess.run(
            [litestream_binary(), "restore", "-o", str(out), url],
            env=child_environment(), check=True, capture_output=True,
        )  # fmt: skip
    return time.perf_counter() - start


COLD = """
import json, sys, time
import pandas, durable_nb
from durable_nb.backup.inplace import unavailable
start = time.perf_counter()
unavailable()
load = time.perf_counter() - start
fleet = durable_nb.fleet(sys.argv[1])
runs = fleet.runs()
cold = time.perf_counter() - start
assert len(runs) == int(sys.argv[2]), runs
warm = []
for _ in range(5):
    start = time.perf_counter()
    assert len(fleet.runs()) == int(sys.argv[2])
    warm.append(time.perf_counter() - start)
print(json.dumps({"load": load, "cold": cold, "warm": warm}))
"""


def in_place_cold(root: str, xdg: Path, logs: int) -> dict[str, Any]:
    """Cold and warm ``runs()`` in place, in a fresh process (its cache folder unused)."""
    out = subprocess.run(
        [sys.executable, "-c", COLD, root, str(logs)],
        env={**os.environ, "XDG_CACHE_HOME": str(xdg)}, check=True, capture_output=True, text=True,
    )  # fmt: skip
    return json.loads(out.stdout.splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--logs", type=int, default=100)
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()

    moto, endpoint = start_moto()
    use_moto(endpoint)
    boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").create_bucket(Bucket="bench")
    root = "s3://bench/fleet/"
    try:
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp)
            start = time.perf_counter()
            paths = make_logs(folder / "logs", args.logs, args.steps)
            made = time.perf_counter() - start
            replicate_all(paths, root, folder)
            names = sorted(durable_nb.fleet(root, cache=folder / "c").logs()["log"])
            print(f"{len(names)} logs of {args.steps} steps made in {made:.1f} s and replicated")

            baseline, first, again = [], [], []
            cold_in_place: list[dict[str, list[float]]] = []
            warm_in_place: list[float] = []
            if unavailable() is not None:
                sys.exit(f"cannot read replicas in place here: {unavailable()}")
            for r in range(args.runs):
                out = folder / f"cli{r}"
                out.mkdir()
                baseline.append(sequential_cli(root, names, out))
                fleet = durable_nb.fleet(root, cache=folder / f"cache{r}", in_place=False)
                start = time.perf_counter()
                pulled = fleet.pull(progress=False)
                runs = fleet.runs()
                first.append(time.perf_counter() - start)
                assert (pulled["action"] == "pulled").sum() == len(names), pulled
                assert len(runs) == len(names) and (runs["steps_run"] == args.steps).all()
                for _ in range(3):
                    start = time.perf_counter()
                    second = fleet.pull(progress=False)
                    assert len(fleet.runs()) == len(names)
                    again.append(time.perf_counter() - start)
                    assert (second["action"] == "unchanged").all()
                cold_in_place.append(in_place_cold(root, folder / f"xdg{r}", len(names)))
                warm_in_place.extend(cold_in_place[-1].pop("warm"))
                assert not (folder / f"xdg{r}").exists()  # in place: nothing written
            b, f, a = (statistics.median(x) for x in (baseline, first, again))
            print(f"baseline: {len(names)} litestream restores one after another: {b:.2f} s")
            print(f"first pull + runs(): {f:.2f} s (target <= 10 s), {f / b:.2f}x the baseline")
            print(f"second pull, nothing changed, + runs(): {a:.3f} s (target <= 1 s)")
            cold = statistics.median(c["cold"] for c in cold_in_place)
            load = statistics.median(c["load"] for c in cold_in_place)
            warm = statistics.median(warm_in_place)
            print(f"runs() in place, cold (fresh process, VFS load {load:.2f} s included): "
                  f"{cold:.2f} s (target <= 2 s), {cold / f:.2f}x first pull + runs()")  # fmt: skip
            print(f"runs() in place, warm: {warm:.3f} s (target <= 0.3 s), "
                  f"{warm / a:.2f}x second pull + runs()")  # fmt: skip
            print(f"  runs: baseline {baseline}, first {first}, again {again}")
            print(f"  in place: cold {cold_in_place}, warm {warm_in_place}")
    finally:
        moto.send_signal(signal.SIGTERM)
        moto.wait()


if __name__ == "__main__":
    main()
