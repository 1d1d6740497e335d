"""The fleet observer: every log replicated under one root, read where it is and seen as one.

Many notebooks and agents each write their own log, and Litestream replicates each under a
shared root (``replicate("s3://bucket/team/")`` or ``DURABLE_NB_REPLICA_ROOT`` puts a log at
``<root>/<host>/<folder>-<hash>/<stem>``). ``fleet(root)`` is the third part of that architecture:

- ``Fleet.logs()``: the replicas, from one paginated listing (nothing is downloaded);
- ``Fleet.runs()`` / ``steps()`` / ``events()`` / ``experiments()`` / ``checkpoints()`` /
  ``overview()`` / ``timeline(log)``: the one-log views over every log, concatenated, with a
  ``log`` column (filters run in SQL), read from the replicas in place (``inplace``: the
  pages a query needs, nothing restored), or ``as_of`` a moment;
- ``Fleet.pull()``: offline copies: restores, with the real ``litestream restore`` and in
  parallel, each replica whose newest transaction differs from the one pulled last, into a
  local cache (the views read those with ``in_place=False``, or where the VFS cannot load);
- ``Fleet.open(name)``: that log with its blobs, made the current log, so rerunning its
  workflow here replays what finished there and runs only the rest.

A replica that cannot be read (corrupt, unreadable) is reported by name with its error and
the others are still served; views never unpickle a stored value.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import re
import sqlite3
import tempfile
import threading
import time
import warnings
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import DurableError, DurableWarning, ReplicationError, user_stacklevel
from ..log import current_log, queries
from ..log.records import RUN_STATUSES
from ..log.store import Store
from . import inplace, restore
from .replica import Listed, Replica, parse_url, private_dirs

if TYPE_CHECKING:
    import pandas as pd
    from matplotlib.figure import Figure

__all__ = ["Fleet", "fleet"]

_STATE = "pulled.json"
LISTING_REUSE = 1.0
"""Seconds a view may reuse the root's last listing (one panel refresh makes several)."""


def _cache_home() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")


def _cache_for(root: Replica) -> Path:
    """A cache folder per root: readable, and unique by a digest of the root's URL."""
    label = re.sub(r"[^A-Za-z0-9]+", "-", f"{root.bucket} {root.path}").strip("-") or "root"
    digest = hashlib.sha256(root.url.encode()).hexdigest()[:10]
    return _cache_home() / "durable_nb" / "fleet" / f"{label[-40:]}-{digest}"


class Fleet:
    """The logs replicated under one root, and a local cache of their pulled copies."""

    def __init__(
        self, root: str, *, cache: str | os.PathLike[str] | None = None, in_place: bool = True,
        jobs: int = 16,
    ) -> None:  # fmt: skip
        self.root = parse_url(root)
        self.url = self.root.url
        self.cache = Path(cache).expanduser().absolute() if cache else _cache_for(self.root)
        self.in_place = in_place
        self.jobs = jobs
        self.last_pull: pd.DataFrame | None = None
        self._errors: dict[str, str] = {}  # log -> why its newest copy is missing
        self._readers: dict[str, inplace.ReplicaLog] = {}  # replicas kept open in place
        self._lock = threading.Lock()
        self._fell_back = False
        self._listed: list[Listed] | None = None  # the newest listing, and when it was made
        self._listed_at = 0.0

    def close(self) -> None:
        """Close the replicas kept open in place (the next view opens them again)."""
        with self._lock:
            while self._readers:
                self._readers.popitem()[1].retire()  # (closed when a read under way ends)

    def __enter__(self) -> Fleet:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<Fleet {self.url} cache={self.cache}>"

    # -- the listing -------------------------------------------------------------------

    def _listing(self, *, reuse: float = 0.0) -> list[Listed]:
        """The replicas under the root (``reuse``: the last listing, if that many seconds
        old at most: a panel's refresh and its detail ask for it several times at once)."""
        if reuse and self._listed is not None and time.monotonic() - self._listed_at < reuse:
            return self._listed
        if self.root.scheme == "file" and not Path(self.root.path).is_dir():
            found: list[Listed] = []
        else:
            if self.root.scheme == "s3":
                self.root.check()  # a short timeout: a dead endpoint is one line, not minutes
            found = self.root.listing()
        self._listed, self._listed_at = found, time.monotonic()
        if not found:
            missing = self.root.scheme == "file" and not Path(self.root.path).is_dir()
            warnings.warn(
                f"no replicas under {self.url}"
                + (" (the folder does not exist)" if missing else "")
                + "; a fleet root is the URL logs replicate under (replicate(ROOT/)), "
                "not one log's replica",
                DurableWarning,
                stacklevel=user_stacklevel(),
            )
        return found

    def logs(self) -> pd.DataFrame:
        """One row per replica, from the listing alone: ``log`` (its name), ``url``,
        ``txid`` (newest), ``replicated`` (when that was written), ``size`` (bytes), and
        ``pulled_txid`` (of its copy in the cache) and ``error`` (why it could not be read
        or pulled last time)."""
        return self._logs_frame(self._listing())

    def _logs_frame(self, listing: list[Listed]) -> pd.DataFrame:
        import pandas as pd

        state = self._state()
        rows = [
            (item.name, self.root.child(item.name).url, item.txid, item.replicated_at,
             item.size, state.get(item.name), self._errors.get(item.name))
            for item in listing
        ]  # fmt: skip
        df = pd.DataFrame.from_records(
            rows, columns=["log", "url", "txid", "replicated", "size", "pulled_txid", "error"]
        )
        df["replicated"] = pd.to_datetime(df["replicated"], utc=True)
        return df.astype({"txid": "int64", "size": "int64", "pulled_txid": "Int64"})

    # -- pulling -----------------------------------------------------------------------

    def _no_replica(self, name: str) -> ReplicationError:
        return ReplicationError(f"no replica {name!r} under {self.url}; Fleet.logs() lists them")

    def _state(self) -> dict[str, int]:
        try:
            return {k: int(v) for k, v in json.loads((self.cache / _STATE).read_text()).items()}
        except (OSError, ValueError, AttributeError):
            return {}

    def _save_state(self, state: dict[str, int]) -> None:
        private_dirs(self.cache)
        fd, tmp = tempfile.mkstemp(dir=self.cache, prefix=".tmp-")
        with os.fdopen(fd, "w") as f:
            json.dump(state, f, indent=1, sort_keys=True)
        os.replace(tmp, self.cache / _STATE)

    def path(self, name: str) -> Path:
        """The pulled copy of log ``name`` in the cache."""
        path = (self.cache / "logs" / f"{name}.db").resolve()
        if not path.is_relative_to(self.cache.resolve()):
            raise ReplicationError(f"log name {name!r} leads out of the cache; skipped")
        return path

    def pull(
        self, names: Iterable[str] | None = None, *, jobs: int = 8, progress: bool = True
    ) -> pd.DataFrame:
        """Bring the cache up to date: restore each replica (all, or ``names``) whose newest
        txid differs from the one pulled last, ``jobs`` at a time; the others are not
        downloaded again. Returns one row per log: ``log``, ``action`` (``pulled``,
        ``unchanged`` or ``failed``), ``txid``, ``seconds``, ``error``. A failed log keeps
        its previous copy, is named in one warning, and the rest are served."""
        import pandas as pd
        from tqdm.auto import tqdm

        listing = {item.name: item for item in self._listing()}
        if isinstance(names, str):
            names = [names]
        wanted = list(listing) if names is None else list(names)
        unknown = [name for name in wanted if name not in listing]
        if unknown:
            raise self._no_replica(unknown[0])
        state = self._state()
        if names is None:  # a replica gone from the root leaves the cache too
            for gone in set(state) - set(listing):
                state.pop(gone)
                self.path(gone).unlink(missing_ok=True)
        changed = [
            name
            for name in wanted
            if state.get(name) != listing[name].txid or not self.path(name).exists()
        ]
        rows = {name: (name, "unchanged", listing[name].txid, 0.0, None) for name in wanted}

        client = self.root._client() if self.root.scheme == "s3" and changed else None

        def one(name: str) -> tuple[str, float]:
            start = time.perf_counter()
            item = listing[name]
            if client is None:
                restore.pull_copy(self.root.child(name), self.path(name), txid=item.txid)
                return name, time.perf_counter() - start
            # S3: one GET per file the restore needs, then litestream restores from that copy
            with tempfile.TemporaryDirectory(prefix="durable-nb-pull-") as folder:
                try:
                    source = self.root.mirror(item.files_for(item.txid), Path(folder), client)
                except ReplicationError:  # a file compacted away since the listing
                    source = self.root.child(name)
                restore.pull_copy(source, self.path(name), txid=item.txid)
            return name, time.perf_counter() - start

        bar = tqdm(
            total=len(changed), desc="pulling logs", unit="log",
            disable=not progress or not changed, leave=False,
        )  # fmt: skip
        with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
            futures = {pool.submit(one, name): name for name in changed}
            for future in as_completed(futures):
                name = futures[future]
                try:
                    _, seconds = future.result()
                except (DurableError, sqlite3.Error, OSError) as exc:
                    rows[name] = (name, "failed", listing[name].txid, 0.0, str(exc))
                    self._errors[name] = str(exc)
                else:
                    rows[name] = (name, "pulled", listing[name].txid, seconds, None)
                    state[name] = listing[name].txid
                    self._errors.pop(name, None)
                bar.update()
        bar.close()
        self._save_state(state)
        failed = [row for row in rows.values() if row[1] == "failed"]
        if failed:
            first = failed[0]
            warnings.warn(
                f"{len(failed)} of {len(rows)} logs under {self.url} could not be pulled "
                f"(the others are served): {first[0]}: {first[4]}",
                DurableWarning,
                stacklevel=user_stacklevel(),
            )
        self.last_pull = pd.DataFrame.from_records(
            sorted(rows.values()), columns=["log", "action", "txid", "seconds", "error"]
        )
        return self.last_pull

    # -- the views ---------------------------------------------------------------------

    def _not_in_place(self) -> str | None:
        """None if views read replicas in place; else why they read pulled copies (a
        fallback is said once)."""
        if not self.in_place:
            return "this fleet reads pulled copies (in_place=False)"
        why = inplace.unavailable()
        if why is not None and not self._fell_back:
            self._fell_back = True
            warnings.warn(
                f"the fleet's views read pulled copies of its logs, not the replicas in place: "
                f"{why}",
                DurableWarning,
                stacklevel=user_stacklevel(),
            )
        return why

    def _readers_for(self, listing: dict[str, Listed], names: list[str]) -> dict[str, Any]:
        """A kept replica opened in place for each of ``names``, in use (``done()`` after
        reading it): new ones opened (in parallel), ones whose replica moved since opened
        again (and those whose process ended); those gone from the root retired. Values are
        ``ReplicaLog``s or the error that kept one from opening."""
        with self._lock:
            for gone in set(self._readers) - set(listing):
                self._readers.pop(gone).retire()
            for name in names:
                reader = self._readers.get(name)
                if reader is not None and not self._current(reader, listing[name]):
                    self._readers.pop(name).retire()
            wanted = [name for name in names if name not in self._readers]
            opened = self._open_in_place(wanted)
            # a process stopped meanwhile (an open in it hung): what it served, once more
            dead = [n for n in names if n in self._readers and not self._readers[n].alive]
            dead += [n for n, r in opened.items() if getattr(r, "kind", None) == "stopped"]
            for name in dead:
                if name in self._readers:
                    self._readers.pop(name).retire()
            opened |= self._open_in_place(dead)
            found = {name: opened.get(name, self._readers.get(name)) for name in names}
            for reader in found.values():
                if not isinstance(reader, Exception):
                    reader.use()  # (under the lock: not retired before)
            return found

    @staticmethod
    def _current(reader: inplace.ReplicaLog, listed: Listed) -> bool:
        """Whether a kept replica is still served and has what the listing shows (not: it
        moved, or began again, or its process ended)."""
        try:
            return reader.alive and reader.txid() == listed.txid
        except ReplicationError:  # its process ended just now
            return False

    def _open_in_place(self, names: list[str]) -> dict[str, Any]:
        """``names`` opened in place (in parallel), kept; a failure is its value."""
        opened = self._in_parallel(lambda name: inplace.ReplicaLog(self.root.child(name)), names)
        for name, reader in opened.items():
            if not isinstance(reader, Exception):
                self._readers[name] = reader
        return opened

    def _in_parallel(self, work: Callable[[str], Any], names: list[str]) -> dict[str, Any]:
        """``work(name)`` of each name, ``self.jobs`` at a time; a failure is its value."""
        results: dict[str, Any] = {}
        if not names:
            return results
        with ThreadPoolExecutor(max_workers=max(1, min(self.jobs, len(names)))) as pool:
            futures = {pool.submit(work, name): name for name in names}
            for future in as_completed(futures):
                try:
                    results[futures[future]] = future.result()
                except (DurableError, sqlite3.Error, OSError) as exc:
                    results[futures[future]] = exc
        return results

    def _gather(self, read: Callable[[Store], Any], log: str | None, as_of: Any) -> list[Any]:
        """``read`` of each log (or of ``log`` alone), as ``(name, value)`` pairs in name
        order: replicas read in place, or (without the VFS) pulled copies. A log that
        cannot be read is left out and named in one warning (and in ``logs()``)."""
        if as_of is not None:
            as_of = inplace.moment(as_of)  # a bad time fails first, logs or none
        if self.in_place:
            inplace.start()  # (it loads while the root is listed)
        why = self._not_in_place()
        if why is not None:
            if as_of is not None:
                raise ReplicationError(
                    f"as_of= reads replicas in place, which is not possible here: {why}; "
                    "restore(URL, timestamp=...) a log instead"
                )
            names = self._pulled()
            if log is not None:
                if log not in names:
                    raise ReplicationError(
                        f"no pulled copy of log {log!r} of {self.url}; Fleet.logs() lists them"
                    )
                names = [log]
            values = {name: self._read(name, read) for name in names}
            return [(name, values[name]) for name in names if values[name] is not None]
        listing = {item.name: item for item in self._listing(reuse=LISTING_REUSE)}
        if log is not None and log not in listing:
            raise self._no_replica(log)
        names = sorted(listing) if log is None else [log]
        if as_of is None:
            readers = self._readers_for(listing, names)

            def one(name: str) -> Any:
                reader = readers[name]
                if isinstance(reader, Exception):
                    raise reader
                try:
                    return read(reader.store)
                except ReplicationError as exc:
                    if getattr(exc, "kind", None) != "stopped":
                        raise
                finally:
                    reader.done()
                # its process was stopped meanwhile (an open in it hung): anew
                return inplace.read_once(self.root.child(name), read)
        else:

            def one(name: str) -> Any:
                try:
                    return inplace.read_once(self.root.child(name), read, as_of=as_of)
                except inplace.NothingThen:
                    return None  # the log began later: nothing of it then

        values = self._in_parallel(one, names)
        failed = [(n, v) for n, v in sorted(values.items()) if isinstance(v, Exception)]
        for name, _ in failed:
            self._errors[name] = str(values[name])
        for name in set(names) - {name for name, _ in failed}:
            self._errors.pop(name, None)
        if failed:
            warnings.warn(
                f"{len(failed)} of {len(names)} logs under {self.url} could not be read "
                f"(the others are served): {failed[0][0]}: {failed[0][1]}",
                DurableWarning,
                stacklevel=user_stacklevel(),
            )
        return [(n, values[n]) for n in names if values[n] is not None and n not in dict(failed)]

    def _pulled(self) -> list[str]:
        if self.last_pull is None and not self._state():
            self.pull()  # nothing pulled yet, here or before: pull once
        elif self.in_place:  # in place was the plan: keep the copies as fresh as replicas
            self.pull(progress=False)
        return sorted(self._state())

    def _read(self, name: str, read: Callable[[Store], Any]) -> Any:
        """``read`` of one pulled log; None (said once, and in ``logs()``) if it fails."""
        try:
            with Store(self.path(name), readonly=True) as store:
                return read(store)
        except DurableError as exc:
            self._errors[name] = str(exc)
            warnings.warn(
                f"log {name} skipped: {exc}", DurableWarning, stacklevel=user_stacklevel()
            )
            return None

    def _each(
        self, view: Callable[[Store], pd.DataFrame], log: str | None, as_of: Any
    ) -> pd.DataFrame:
        """``view`` of every log (or of ``log``), concatenated, with a ``log`` column first."""
        import pandas as pd

        frames = []
        for name, df in self._gather(view, log, as_of):
            df.insert(0, "log", name)
            frames.append(df)
        if not frames:
            with (
                tempfile.TemporaryDirectory() as empty,  # the columns of an empty log
                Store(Path(empty) / "empty.db") as store,
            ):
                df = view(store)
            df.insert(0, "log", pd.Series(dtype="object"))
            return df
        df = pd.concat(frames, ignore_index=True)
        df["log"] = df["log"].astype("category")
        return df

    def runs(
        self, *, log: str | None = None, status: str | None = None, since: Any = None,
        as_of: Any = None,
    ) -> pd.DataFrame:  # fmt: skip
        """Every log's runs (``durable_nb.runs``), with a ``log`` column; ``log``: one log's
        only; ``as_of``: as the replicas were at that time (a log begun later has none)."""
        import pandas as pd

        from ..views import frames
        from ..views.reading import check_status, since_seconds

        check_status(status, RUN_STATUSES)  # bad filters fail first, logs or none
        since = since_seconds(since)
        logs: list[str] = []
        rows: list[tuple[Any, ...]] = []
        read = functools.partial(queries.run_rows, status=status, since=since)
        for name, found in self._gather(read, log, as_of):  # rows of all logs, one frame
            logs.extend([name] * len(found))
            rows.extend(found)
        df = frames.runs_frame(rows)
        df.insert(0, "log", pd.Categorical(logs) if logs else pd.Series(dtype="object"))
        return df

    def steps(
        self, workflow: str | None = None, *, log: str | None = None, status: str | None = None,
        since: Any = None, as_of: Any = None,
    ) -> pd.DataFrame:  # fmt: skip
        """Every log's step attempts (``durable_nb.steps``), with a ``log`` column."""
        from ..views import frames

        view = functools.partial(frames.steps, workflow, status=status, since=since)
        return self._each(lambda store: view(log=store), log, as_of)

    def events(
        self, *, log: str | None = None, since: Any = None, as_of: Any = None
    ) -> pd.DataFrame:
        """Every log's events (``durable_nb.events``), with a ``log`` column."""
        from ..views import frames

        return self._each(lambda store: frames.events(store, since=since), log, as_of)

    def experiments(
        self, workflow: str | None = None, step: str | None = None, *, log: str | None = None,
        latest: bool = True, as_of: Any = None,
    ) -> pd.DataFrame:  # fmt: skip
        """Every log's calls (``durable_nb.experiments``), with a ``log`` column."""
        from ..views.experiments import experiments

        view = functools.partial(experiments, workflow, step, latest=latest)
        return self._each(lambda store: view(log=store), log, as_of)

    def checkpoints(
        self, workflow: str | None = None, step: str | None = None, *, log: str | None = None,
        as_of: Any = None,
    ) -> pd.DataFrame:  # fmt: skip
        """Every log's checkpoints (``durable_nb.checkpoints``: an agent's progress inside
        its long calls), with a ``log`` column."""
        from ..views.checkpoints import checkpoints

        return self._each(lambda store: checkpoints(workflow, step, log=store), log, as_of)

    def timeline(
        self, log: str, workflow: str | None = None, run: int | None = None, *, as_of: Any = None
    ) -> Figure:
        """The steps of log ``log`` over time (``durable_nb.timeline``)."""
        from ..views.frames import timeline

        found = self._gather(lambda store: timeline(workflow, run, log=store), log, as_of)
        if not found:
            why = self._errors.get(log, f"it holds nothing at or before {as_of}")
            raise ReplicationError(f"no timeline of log {log}: {why}")
        return found[0][1]

    def overview(self, *, as_of: Any = None) -> pd.DataFrame:
        """One row per log: ``log``, ``runs``, ``running``, ``failed``, ``activity`` (its
        newest run's start or end), ``replicated`` (the replica's newest write), ``lag``
        (how long ago that was), ``last_error`` (of its newest failed run) and ``error``
        (why it could not be read)."""
        import pandas as pd

        runs = self.runs(as_of=as_of)
        listed = self._logs_frame(self._listing(reuse=LISTING_REUSE))  # (with runs()' errors)
        grouped = runs.groupby("log", observed=True)
        failed = runs[runs["status"] == "failed"].groupby("log", observed=True)
        columns = {
            "runs": grouped.size(),
            "running": (runs["status"] == "running").groupby(runs["log"], observed=True).sum(),
            "failed": failed.size(),
            "activity": grouped[["started", "ended"]].max().max(axis=1),
            "last_error": failed["error"].last(),
        }
        df = listed[["log", "replicated", "error"]].set_index("log")
        for column, values in columns.items():
            df[column] = values.reindex(df.index)
        counts = ["runs", "running", "failed"]
        df[counts] = df[counts].fillna(0).astype("int64")
        df["activity"] = pd.to_datetime(df["activity"], utc=True)
        df["lag"] = pd.Timestamp.now(tz="UTC") - df["replicated"]
        for column in ("error", "last_error"):
            df[column] = df[column].astype(object).where(df[column].notna(), None)
        return df[["runs", "running", "failed", "activity", "replicated", "lag", "last_error",
                   "error"]].reset_index()  # fmt: skip

    # -- replay here -------------------------------------------------------------------

    def open(
        self, name: str, *, to: str | os.PathLike[str] | None = None, current: bool = True
    ) -> Path:
        """Restore log ``name`` with its blobs (to ``to``, default a working copy in the
        cache, an older one kept as a dated backup) and make it the current log (unless
        ``current=False``: then pass the returned path as ``log=``). Rerunning its
        workflow here replays its completed steps and runs the rest."""
        if name not in {item.name for item in self._listing()}:
            raise self._no_replica(name)
        target = Path(to).expanduser().absolute() if to else self.cache / "open" / f"{name}.db"
        private_dirs(target.parent)
        url = self.root.child(name).url
        if target.exists():
            restore.restore(url, log=target)  # replaces it, keeping a backup
        else:
            restore.restore(url, to=target)
        if current:
            current_log.open_log(target)
        return target


def fleet(
    root: str, *, cache: str | os.PathLike[str] | None = None, in_place: bool = True
) -> Fleet:
    """The fleet of logs replicated under ``root`` (``s3://bucket/prefix/`` or
    ``file:///dir/``). Its views read the replicas in place (``in_place=False``: the copies
    ``pull()`` keeps); pulled copies are kept in ``cache`` (default: under the user's cache
    folder, one per root)."""
    return Fleet(root, cache=cache, in_place=in_place)
