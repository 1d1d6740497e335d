"""PostgreSQL for bench_steps.py --store postgresql: the server, baseline and DBOS's side.

- The server: the one at --url (its user needs CREATEDB: each run gets a database of its own,
  dropped afterwards), or a throw-away one (tests/postgres.py) with PostgreSQL's default
  durability (fsync on, synchronous_commit on), so that a commit waits for the disk.
- The baseline: psycopg 3 in autocommit mode, ``INSERT INTO t (k, v) VALUES (%s, %s)`` of a
  small row into a table with a bigint identity id (like the log's steps), one commit per
  row, plain and with ``RETURNING id`` (what the log's insert does). ``interleave`` times it
  in blocks of ``BLOCK`` rows between blocks of as many steps (the order rotating), so that
  both sides see the same machine: on a shared one, the load between two back-to-back loops
  of seconds each moved their ratio from 0.6 to 2.3.
- DBOS: the same small step in a DBOS workflow whose system database is a fresh database on
  the same server; its step overhead (N steps in a workflow minus the same plain calls, per
  step) against the raw INSERT interleaved as above; replay per step of a workflow recovered
  after the process that ran it died (os._exit before the workflow returned); the return of
  a completed workflow started again under its id. This file is that side when run by an
  interpreter that has dbos (its top level imports only the standard library and psycopg)::

      /path/to/venv-with-dbos/bin/python benchmarks/bench_postgres.py dbos URL -n 3000

  bench_steps.py runs it so with --dbos-python (DBOS is not a dependency of the project: a
  separate virtual environment, ``pip install dbos 'psycopg[binary]'``).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg
from psycopg import sql

ROOT = Path(__file__).resolve().parent.parent
PAYLOAD = b"\x80\x05K*." * 4  # the row bench_steps' raw sqlite3 commit writes
CRASH = "DNB_BENCH_DBOS_CRASH"  # set in the child that dies with its workflow pending
CRASHED_EXECUTOR = "bench-crashed"  # the executor id of that child (recovered by id)
BLOCK = 100  # steps, then raw rows, timed in turn


def settle() -> None:
    """As bench_steps: no garbage to collect, no dirty pages being written."""
    gc.collect()
    os.sync()


def small(i: int) -> dict[str, float]:
    """bench_steps' step with a small result (DBOS's side runs without bench_steps)."""
    return {"i": i, "loss": i * 0.5}


# -- the server and its databases ----------------------------------------------------------


@contextmanager
def server(url: str | None) -> Iterator[str]:
    """The URL of an existing database on the server to use: ``url``, or database
    ``postgres`` of a throw-away server (default durability) stopped afterwards."""
    if url:
        yield url
        return
    sys.path.insert(0, str(ROOT))  # tests/postgres.py
    from tests.postgres import PostgresServer

    with PostgresServer(fast=False) as pg:
        yield pg.url()


def with_dbname(url: str, name: str) -> str:
    """``url`` naming database ``name`` instead."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{name}"))


@contextmanager
def fresh_database(admin_url: str, prefix: str) -> Iterator[str]:
    """The URL of a new, empty database on ``admin_url``'s server, dropped afterwards."""
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(admin_url, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield with_dbname(admin_url, name)
    finally:
        with psycopg.connect(admin_url, autocommit=True) as admin:
            admin.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


def describe(url: str) -> str:
    """The server's version and the settings a commit's cost depends on."""
    with psycopg.connect(url, autocommit=True) as pg:
        show = {
            name: pg.execute(sql.SQL("SHOW {}").format(sql.Identifier(name))).fetchone()[0]
            for name in ("server_version", "fsync", "synchronous_commit", "wal_sync_method")
        }
    host = urlsplit(url).hostname or "localhost"
    return (
        f"PostgreSQL {show['server_version'].split()[0]} on {host} (fsync={show['fsync']}, "
        f"synchronous_commit={show['synchronous_commit']}, "
        f"wal_sync_method={show['wal_sync_method']}), psycopg {psycopg.__version__} "
        f"({psycopg.pq.__impl__})"
    )


# -- the baseline ------------------------------------------------------------------------


class RawInsert:
    """Autocommit INSERTs (one commit each) of a small row into a table of its own with a
    bigint identity id; with ``returning``, ``RETURNING id`` fetched as the log does."""

    def __init__(self, url: str) -> None:
        self.pg = psycopg.connect(url, autocommit=True)
        self.table = sql.Identifier(f"raw_{uuid.uuid4().hex[:12]}")
        self.pg.execute(
            sql.SQL(
                "CREATE TABLE {} (id bigint GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY, "
                "k text NOT NULL, v bytea)"
            ).format(self.table)
        )
        insert = sql.SQL("INSERT INTO {} (k, v) VALUES (%s, %s)").format(self.table)
        self.plain = insert.as_string(self.pg)
        self.returning = (insert + sql.SQL(" RETURNING id")).as_string(self.pg)

    def seconds(self, start: int, count: int, *, returning: bool) -> float:
        """The time of rows ``start`` .. ``start + count - 1``, one commit each."""
        pg = self.pg
        if returning:
            query = self.returning
            t0 = time.perf_counter()
            for i in range(start, start + count):
                pg.execute(query, (f"k{i}", PAYLOAD)).fetchone()
        else:
            query = self.plain
            t0 = time.perf_counter()
            for i in range(start, start + count):
                pg.execute(query, (f"k{i}", PAYLOAD))
        return time.perf_counter() - t0

    def close(self) -> None:
        self.pg.execute(sql.SQL("DROP TABLE {}").format(self.table))
        self.pg.close()


def interleave(
    n: int, steps: Callable[[int, int], float], raw: RawInsert
) -> tuple[float, float, float]:
    """(us per step, per raw INSERT, per raw INSERT ... RETURNING id) of n each, timed in
    turns of ``BLOCK``: ``steps(start, count)`` runs steps start .. start + count - 1 and
    returns their seconds. Each turn starts with the next of the three."""
    totals = [0.0, 0.0, 0.0]
    for turn, start in enumerate(range(0, n, BLOCK)):
        count = min(BLOCK, n - start)
        for k in (turn % 3, (turn + 1) % 3, (turn + 2) % 3):
            if k == 0:
                totals[k] += steps(start, count)
            else:
                totals[k] += raw.seconds(start, count, returning=k == 2)
    step_us, raw_us, returning_us = (t / n * 1e6 for t in totals)
    return step_us, raw_us, returning_us


# -- DBOS, from the benchmark's side ---------------------------------------------------------


def run_dbos(python: str | None, admin_url: str, n: int, repeat: int) -> dict[str, Any] | str:
    """DBOS's figures (``dbos_main``'s) measured by ``python`` in a fresh database of the
    server, or the one line that says why there are none."""
    python = python or sys.executable
    probe = subprocess.run(
        [python, "-c", "import importlib.metadata as m, dbos; print(m.version('dbos'))"],
        capture_output=True,
        text=True,
    )
    if probe.returncode != 0:
        return (
            f"DBOS: not installed for {python} (pass --dbos-python, the interpreter of a "
            "virtual environment with `pip install dbos 'psycopg[binary]'`)"
        )
    with fresh_database(admin_url, "bench_dbos") as url:
        done = subprocess.run(
            [python, __file__, "dbos", url, "-n", str(n), "--repeat", str(repeat)],
            capture_output=True,
            text=True,
        )
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        tail = (done.stderr.strip().splitlines() or [f"exit {done.returncode}"])[-1]
        return f"DBOS {probe.stdout.strip()}: cannot run here: {tail}"
    return json.loads(lines[-1])


def print_dbos(result: dict[str, Any] | str, ours: float, ratio: float, replay: float) -> None:
    """DBOS's figures beside durable_nb's (``ours``: us per step, ``ratio``: its ratio to the
    raw INSERT, ``replay``: us per replayed step; medians)."""
    print()
    if isinstance(result, str):
        print(result)
        return
    med = statistics.median
    runs = result["runs"]
    step = med(r["step"] - r["plain"] for r in runs)
    ratios = sorted((r["step"] - r["plain"]) / r["raw"] for r in runs)
    ratio_ret = med((r["step"] - r["plain"]) / r["raw_returning"] for r in runs)
    dbos_replay = med(r["replay"] for r in runs)
    print(f"DBOS {result['dbos']} on the same server (a system database of its own), "
          f"median of {len(runs)} runs of {result['n']} steps")  # fmt: skip
    print(f"   raw psycopg INSERT in its process: {med(r['raw'] for r in runs):8.1f} us; with "
          f"RETURNING id: {med(r['raw_returning'] for r in runs):.1f} us")  # fmt: skip
    print(f"   step overhead: {step:8.1f} us, ratio to the raw INSERT {med(ratios):.2f} (the "
          f"runs' {ratios[0]:.2f} to {ratios[-1]:.2f}), to the INSERT ... RETURNING id "
          f"{ratio_ret:.2f}")  # fmt: skip
    print(f"   replay per step of a recovered workflow (its process died): {dbos_replay:.1f} us;"
          f" its recovery, start to end: {med(r['recovery'] for r in runs):.2f} s")  # fmt: skip
    print(f"   a completed workflow started again (its recorded result): "
          f"{med(r['rerun'] for r in runs):.2f} ms")  # fmt: skip
    print("   side by side (each process timed its steps in turns with its raw INSERTs, at "
          "its own time: compare the ratios)")  # fmt: skip
    print(f"   checkpoint ratio to the raw INSERT: durable_nb {ratio:.2f}, DBOS "
          f"{med(ratios):.2f}; us per step: durable_nb {ours:.1f}, DBOS {step:.1f}")  # fmt: skip
    print(f"   replay us per step: durable_nb {replay:.2f}, DBOS {dbos_replay:.1f} "
          f"({dbos_replay / replay:.0f}x)")  # fmt: skip


# -- DBOS, in an interpreter that has it ------------------------------------------------------


def dbos_app(url: str, executor: str) -> tuple[Any, Any, Any, dict[str, Any]]:
    """(DBOS, SetWorkflowID, the workflow of n small steps, what it measured) with ``url`` as
    the system database, launched. The workflow times its steps (without its own start and
    end): all n at once, or, given a ``RawInsert`` in ``measured["raw"]``, interleaved with
    it; in the process named by ``CRASH`` it dies before returning."""
    from dbos import DBOS, SetWorkflowID

    DBOS(
        config={
            "name": "bench-steps",
            "system_database_url": url,
            "application_version": "bench",  # the same in the child that dies and here
            "executor_id": executor,
            "log_level": "WARNING",
        }
    )
    measured: dict[str, Any] = {}

    @DBOS.step()
    def dbos_small(i: int) -> dict[str, float]:
        return small(i)

    def block(start: int, count: int) -> float:
        t0 = time.perf_counter()
        for i in range(start, start + count):
            dbos_small(i)
        return time.perf_counter() - t0

    @DBOS.workflow()
    def steps(n: int) -> int:
        raw = measured.pop("raw", None)
        if raw is None:
            measured["step"] = block(0, n) / n * 1e6
        else:  # (a first run only: the raw INSERTs are no steps)
            measured["step"], measured["raw"], measured["raw_returning"] = interleave(n, block, raw)
        if os.environ.get(CRASH):
            os._exit(0)  # the workflow stays PENDING, its n steps recorded
        return n

    DBOS.launch()
    return DBOS, SetWorkflowID, steps, measured


def dbos_main(url: str, n: int, repeat: int) -> None:
    """Print DBOS's figures as one JSON line: per run, the raw INSERT (plain and RETURNING
    id), us per step and per plain call, us per replayed step, recovery seconds, rerun ms."""
    import importlib.metadata

    dbos, set_id, steps, measured = dbos_app(url, "local")
    runs = []
    for r in range(repeat):
        run: dict[str, float] = {}
        raw = RawInsert(url)
        settle()
        t0 = time.perf_counter()
        for i in range(n):
            small(i)
        run["plain"] = (time.perf_counter() - t0) / n * 1e6
        measured.clear()
        measured["raw"] = raw
        with set_id(f"overhead-{r}"):
            steps(n)
        raw.close()
        run.update(measured)
        # A process runs a workflow of n steps and dies before it returns; this one recovers
        # it (what DBOS's launch does for its own executor id: re-enqueue, then run it again,
        # each recorded step returning its recorded output).
        subprocess.run(
            [sys.executable, __file__, "dbos-crash", url, "-n", str(n), "--id", f"replay-{r}"],
            check=True,
            env={**os.environ, CRASH: "1"},
        )
        measured.clear()
        t0 = time.perf_counter()
        handles = dbos._recover_pending_workflows([CRASHED_EXECUTOR])
        assert len(handles) == 1 and handles[0].get_result() == n
        run["recovery"] = time.perf_counter() - t0
        run["replay"] = measured["step"]
        t0 = time.perf_counter()
        with set_id(f"overhead-{r}"):
            assert steps(n) == n
        run["rerun"] = (time.perf_counter() - t0) * 1e3
        runs.append(run)
    dbos.destroy()
    print(json.dumps({"dbos": importlib.metadata.version("dbos"), "n": n, "runs": runs}))


def dbos_crash(url: str, n: int, workflow_id: str) -> None:
    """Run workflow ``workflow_id`` of n steps in a process that dies before it returns."""
    _, set_id, steps, _ = dbos_app(url, CRASHED_EXECUTOR)
    with set_id(workflow_id):
        steps(n)
    raise SystemExit(f"workflow {workflow_id} returned: {CRASH} is not set")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    side = sub.add_parser("dbos", help="DBOS's figures, as one JSON line")
    crash = sub.add_parser("dbos-crash", help="(internal) a workflow whose process dies")
    crash.add_argument("--id", required=True)
    for p in (side, crash):
        p.add_argument("url", help="the system database (PostgreSQL URL)")
        p.add_argument("-n", type=int, default=3000, help="steps per workflow")
    side.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    if args.command == "dbos":
        dbos_main(args.url, args.n, args.repeat)
    else:
        dbos_crash(args.url, args.n, args.id)


if __name__ == "__main__":
    main()
