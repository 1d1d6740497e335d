"""Replica URLs and the object stores behind them: parsing, checks, blob copies.

A replica is ``file:///abs/dir`` or ``s3://bucket/prefix``. S3 settings (endpoint, region,
credentials) come from the ordinary AWS environment and config, or ``?endpoint=`` /
``?region=`` in the URL; credentials written into a URL are refused. Every error from
botocore is translated here, in one place, into a one-line ``ReplicationError``.

Layout: Litestream writes ``<replica>/ltx/<level>/<min>-<max>.ltx`` (file) or
``<replica>/<level as 4 hex>/<min>-<max>.ltx`` (S3); durable_nb copies blob files to
``<replica>/blobs/<xx>/<digest>``. Under a shared root (a URL ending in ``/``), a log's
replica is at ``<root>/<host>/<folder>-<hash>/<stem>`` (``layout_name``), and ``Replica.listing()``
finds every replica below a root in one paginated listing.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import re
import shutil
import socket
import tempfile
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

from ..errors import ReplicationError

__all__ = [
    "Listed",
    "LtxFile",
    "Replica",
    "child_environment",
    "is_root",
    "layout_name",
    "parse_url",
    "private_dirs",
]


def private_dirs(path: Path) -> None:
    """Create ``path`` and its missing parents, each user-only (mkdir's mode skips parents)."""
    missing = []
    while not path.exists():
        missing.append(path)
        path = path.parent
    for folder in reversed(missing):
        folder.mkdir(mode=0o700, exist_ok=True)


_CHECK_TIMEOUT = 3  # seconds: litestream itself hangs ~2 minutes on a dead endpoint


def redact(url: str) -> str:
    """A URL with any user:password part hidden, for messages."""
    parts = urlsplit(url)
    if parts.username or parts.password:
        host = parts.hostname or ""
        return parts._replace(netloc=f"***@{host}").geturl()
    return url


def _segment(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._@=+-]", "_", text).strip(".") or "_"


def layout_name(log_path: Path) -> str:
    """Where a log's replica goes under a shared root: ``<host>/<folder>-<hash>/<stem>``:
    the machine, the notebook's folder (the one holding ``.durable/``, with 6 hex digits of
    its full path, so two folders of one name on one machine do not clash), the log's stem.

    ``DURABLE_NB_REPLICA_NAME`` replaces it (``agent-17``, ``team/alice/sweep``): the way
    for agents in containers, whose host names mean nothing, to pick theirs.
    """
    chosen = os.environ.get("DURABLE_NB_REPLICA_NAME", "").strip("/")
    if chosen:
        return "/".join(_segment(part) for part in chosen.split("/") if part)
    log_path = log_path.absolute()
    folder = log_path.parent.parent if log_path.parent.name == ".durable" else log_path.parent
    where = hashlib.sha256(str(folder).encode()).hexdigest()[:6]  # two folders of one name
    return "/".join(
        _segment(part)
        for part in (socket.gethostname(), f"{folder.name or 'root'}-{where}", log_path.stem)
    )


def is_root(url: str) -> bool:
    """Whether a replica URL names a shared root (its path ends in ``/``), not one replica."""
    parts = urlsplit(url)
    return parts.scheme in ("s3", "file") and (parts.path.endswith("/") or not parts.path)


@dataclass(frozen=True)
class LtxFile:
    """One LTX file of a replica: its level, transaction range and key below the root."""

    level: int
    min_txid: int
    max_txid: int
    key: str


@dataclass(frozen=True)
class Listed:
    """One replica found below a root: its name (the path below the root) and, from the
    listing alone, its newest transaction, when that was written, its bytes, its files."""

    name: str
    txid: int
    replicated_at: datetime
    size: int
    files: tuple[LtxFile, ...] = ()

    def files_for(self, txid: int) -> list[LtxFile]:
        """The files a restore to ``txid`` can need: the newest snapshot (level 9) at or
        before it and every file of the other levels after that snapshot, up to ``txid``
        (litestream picks among them)."""
        snapshots = [f for f in self.files if f.level == 9 and f.max_txid <= txid]
        base = max(snapshots, key=lambda f: f.max_txid) if snapshots else None
        floor = base.max_txid if base else 0
        later = [f for f in self.files if f.level != 9 and floor < f.max_txid <= txid]
        return ([base] if base else []) + later


_LTX_S3 = re.compile(r"^(.+)/([0-9a-f]{4})/([0-9a-f]{16})-([0-9a-f]{16})\.ltx$")
_LTX_FILE = re.compile(r"^(.+)/ltx/(\d+)/([0-9a-f]{16})-([0-9a-f]{16})\.ltx$")
_BLOB = re.compile(r"^(.+)/blobs/[0-9a-f]{2}/[0-9a-f]+$")


def _safe_name(name: str) -> bool:
    return all(part not in ("", ".", "..") for part in name.split("/"))


def _gather(entries: list[tuple[str, int, float]], ltx: re.Pattern[str], base: int) -> list[Listed]:
    """Replicas from (relative key, size, mtime) entries: a folder with LTX files is one.
    ``base``: how the level folder is numbered (16 on S3, 10 in a file replica)."""
    found: dict[str, list[Any]] = {}  # name -> [txid, newest mtime, bytes, files]
    blob_bytes: dict[str, int] = {}
    for key, size, mtime in entries:
        match = ltx.match(key)
        if match and not _safe_name(match[1]):
            continue  # "..", "." or empty segments: never a path outside the cache
        if match:
            entry = found.setdefault(match[1], [0, 0.0, 0, []])
            high = int(match[4], 16)
            entry[0] = max(entry[0], high)
            entry[1] = max(entry[1], mtime)
            entry[2] += size
            entry[3].append(LtxFile(int(match[2], base), int(match[3], 16), high, key))
        elif (blob := _BLOB.match(key)) is not None:
            blob_bytes[blob[1]] = blob_bytes.get(blob[1], 0) + size
    return [
        Listed(
            name,
            txid,
            datetime.fromtimestamp(mtime, timezone.utc),
            size + blob_bytes.get(name, 0),
            tuple(files),
        )
        for name, (txid, mtime, size, files) in sorted(found.items())
    ]


@dataclass(frozen=True)
class Replica:
    """Where a log is replicated, and how to reach it."""

    scheme: str  # "file" or "s3"
    path: str  # folder for file://, key prefix for s3:// (no leading or trailing /)
    bucket: str = ""
    endpoint: str | None = None
    region: str | None = None

    @property
    def url(self) -> str:
        """The URL as the user knows it (no credentials are ever in it)."""
        if self.scheme == "file":
            return f"file://{self.path}"
        query = {k: v for k, v in (("endpoint", self.endpoint), ("region", self.region)) if v}
        return f"s3://{self.bucket}/{self.path}" + (f"?{urlencode(query)}" if query else "")

    def litestream_url(self) -> str:
        """The URL for ``litestream restore`` / ``ltx`` (endpoint and region spelled out)."""
        if self.scheme == "file":
            return self.url
        query = {"region": self.region or "us-east-1"}
        if self.endpoint:
            query |= {"endpoint": self.endpoint, "force-path-style": "true"}
        return f"s3://{self.bucket}/{self.path}?{urlencode(query)}"

    def litestream_config(self) -> dict[str, Any]:
        """The ``replica:`` section of a Litestream config for this replica."""
        if self.scheme == "file":
            return {"type": "file", "path": self.path}
        config: dict[str, Any] = {
            "type": "s3", "bucket": self.bucket, "path": self.path,
            "region": self.region or "us-east-1",
        }  # fmt: skip
        if self.endpoint:
            config |= {"endpoint": self.endpoint, "force-path-style": True}
        return config

    def child(self, name: str) -> Replica:
        """The replica called ``name`` below this one (a root)."""
        base = self.path.rstrip("/")
        return dataclasses.replace(self, path=f"{base}/{name}" if base else name)

    # -- the object store ------------------------------------------------------------

    def _client(self) -> Any:
        import boto3
        from botocore.config import Config

        config = Config(
            connect_timeout=_CHECK_TIMEOUT,
            read_timeout=30,
            retries={"max_attempts": 1},
        )
        return boto3.client(
            "s3", endpoint_url=self.endpoint, region_name=self.region or "us-east-1", config=config
        )

    def check(self, *, create: bool = True) -> None:
        """Fail fast, in one line, if the replica cannot be used (before litestream hangs);
        ``create=False`` (to read it): a file replica's missing folder is left uncreated."""
        if self.scheme == "file":
            if not create:
                return
            try:
                private_dirs(Path(self.path))
            except OSError as exc:
                raise ReplicationError(
                    f"cannot create the replica folder {self.path} ({exc.strerror}); "
                    "pick another URL"
                ) from None
            if not Path(self.path).is_dir():
                raise ReplicationError(
                    f"the replica folder {self.path} is a file, not a folder; pick another URL"
                )
            return
        with self._translate("reach"):
            self._client().head_bucket(Bucket=self.bucket)

    def _blob_key(self, digest: str) -> str:
        return f"{self.path}/blobs/{digest[:2]}/{digest}".lstrip("/")

    def put_blob(self, digest: str, source: Path) -> None:
        """Copy one blob file to the replica (atomically for file://)."""
        if self.scheme == "file":
            target = Path(self.path) / "blobs" / digest[:2] / digest
            if target.exists():
                return
            private_dirs(target.parent)
            fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".tmp-")
            os.close(fd)
            shutil.copyfile(source, tmp)
            os.replace(tmp, target)
            return
        with self._translate("upload a blob to"):
            self._client().upload_file(str(source), self.bucket, self._blob_key(digest))

    def blob_exists(self, digest: str) -> bool:
        """Whether the replica has this blob."""
        if self.scheme == "file":
            return (Path(self.path) / "blobs" / digest[:2] / digest).exists()
        import botocore.exceptions

        try:
            with self._translate("look up a blob in"):
                self._client().head_object(Bucket=self.bucket, Key=self._blob_key(digest))
        except ReplicationError as exc:
            if isinstance(exc.__cause__, botocore.exceptions.ClientError):
                return False
            raise
        return True

    def get_blob(self, digest: str, target: Path) -> None:
        """Fetch one blob file from the replica into ``target`` (atomically)."""
        private_dirs(target.parent)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".tmp-")
        os.close(fd)
        try:
            if self.scheme == "file":
                source = Path(self.path) / "blobs" / digest[:2] / digest
                if not source.exists():
                    raise ReplicationError(
                        f"the replica {self.url} lacks blob {digest}; its step will run again"
                    )
                shutil.copyfile(source, tmp)
            else:
                with self._translate("download a blob from"):
                    self._client().download_file(self.bucket, self._blob_key(digest), tmp)
            os.replace(tmp, target)
        finally:
            Path(tmp).unlink(missing_ok=True)

    def ltx_headers(self, names: list[tuple[int, str]]) -> dict[tuple[int, str], bytes]:
        """The first 40 bytes of LTX files (their exact millisecond timestamps)."""
        out: dict[tuple[int, str], bytes] = {}
        if self.scheme == "file":
            for level, name in names:
                path = Path(self.path) / "ltx" / str(level) / name
                try:
                    with open(path, "rb") as f:
                        out[(level, name)] = f.read(40)
                except OSError:
                    continue
            return out
        client = self._client()
        with self._translate("read restore points from"):
            keys: dict[tuple[int, str], str] = {}
            paginator = client.get_paginator("list_objects_v2")
            # S3 layout: <prefix>/<level as 4 hex digits>/<min>-<max>.ltx
            for page in paginator.paginate(Bucket=self.bucket, Prefix=f"{self.path}/".lstrip("/")):
                for obj in page.get("Contents", []):
                    *_, level_dir, name = obj["Key"].rsplit("/", 2)
                    if len(level_dir) == 4 and name.endswith(".ltx"):
                        keys[(int(level_dir, 16), name)] = obj["Key"]
            for ident in names:
                if ident in keys:
                    body = client.get_object(
                        Bucket=self.bucket, Key=keys[ident], Range="bytes=0-39"
                    )
                    out[ident] = body["Body"].read()
        return out

    def listing(self) -> list[Listed]:
        """Every replica below this root, from one (paginated) listing; nothing is read."""
        if self.scheme == "file":
            root = Path(self.path)
            entries: list[tuple[str, int, float]] = []
            for folder, dirs, files in os.walk(root):
                dirs[:] = [d for d in dirs if not d.startswith(".")]
                rel = os.path.relpath(folder, root)
                for name in files:
                    if name.endswith(".ltx") or "/blobs/" in f"/{rel}/":
                        try:
                            st = os.stat(os.path.join(folder, name))
                        except OSError:
                            continue  # removed while listing (compaction)
                        entries.append((f"{rel}/{name}", st.st_size, st.st_mtime))
            return _gather(entries, _LTX_FILE, 10)
        client = self._client()
        prefix = f"{self.path}/".lstrip("/")
        entries = []
        with self._translate("list"):
            for page in client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=prefix
            ):
                for obj in page.get("Contents", []):
                    entries.append(
                        (obj["Key"][len(prefix) :], obj["Size"], obj["LastModified"].timestamp())
                    )
        return _gather(entries, _LTX_S3, 16)

    def mirror(self, files: list[LtxFile], folder: Path, client: Any = None) -> Replica:
        """Download LTX files (keys below this root) into ``folder`` laid out as a file
        replica, and return that replica: a restore from it reads no more from the store.
        One GET per file; ``client``: a boto3 client to share between threads."""
        client = client or self._client()
        prefix = f"{self.path}/".lstrip("/")
        with self._translate("download from"):
            for f in files:
                target = folder / "ltx" / str(f.level) / f.key.rsplit("/", 1)[1]
                private_dirs(target.parent)
                body = client.get_object(Bucket=self.bucket, Key=prefix + f.key)["Body"]
                with open(target, "wb") as out:
                    shutil.copyfileobj(body, out)
        return Replica("file", str(folder))

    def _translate(self, doing: str) -> Any:
        return _BotoErrors(self, doing)


class _BotoErrors:
    """Turns botocore exceptions into one ``ReplicationError`` line, chained ``from``."""

    def __init__(self, replica: Replica, doing: str) -> None:
        self.replica, self.doing = replica, doing

    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> bool:
        if exc is None or isinstance(exc, ReplicationError):
            return False
        import botocore.exceptions as bex

        where = f"s3://{self.replica.bucket}/{self.replica.path}"
        endpoint = self.replica.endpoint or "the default AWS endpoint"
        if isinstance(exc, bex.NoCredentialsError | bex.PartialCredentialsError):
            message = (
                f"no AWS credentials to {self.doing} {where}; set AWS_ACCESS_KEY_ID and "
                "AWS_SECRET_ACCESS_KEY (or AWS_PROFILE / ~/.aws) where it runs (the "
                "kernel's environment for a notebook, the shell's for durable-nb)"
            )
        elif isinstance(exc, bex.EndpointConnectionError | bex.ConnectTimeoutError):
            message = (
                f"cannot reach the S3 endpoint {endpoint} to {self.doing} {where}; check "
                "AWS_ENDPOINT_URL_S3 or ?endpoint= and that the service is up"
            )
        elif isinstance(exc, bex.ClientError):
            code = str(exc.response.get("Error", {}).get("Code", ""))
            if code in ("404", "NoSuchBucket"):
                message = (
                    f"the bucket {self.replica.bucket!r} does not exist at {endpoint}; "
                    "create it or fix the replica URL"
                )
            elif code in ("403", "InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied"):
                message = (
                    f"access denied to {where} ({code}): wrong or insufficient AWS "
                    "credentials; check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY"
                )
            else:
                message = f"S3 refused to {self.doing} {where}: {code or exc}"
        elif isinstance(exc, bex.BotoCoreError):
            message = f"cannot {self.doing} {where}: {exc}"
        else:
            return False
        raise ReplicationError(message, url=self.replica.url) from exc


def parse_url(url: str) -> Replica:
    """Parse a replica URL; refuse what Litestream or we cannot use, saying what to do."""
    parts = urlsplit(url)
    if parts.username or parts.password:
        raise ReplicationError(
            f"credentials in the replica URL ({redact(url)}) are refused: they would end up "
            "in logs and notebooks; set AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY instead"
        )
    if parts.scheme == "file":
        path = parts.path
        if parts.netloc or not path.startswith("/"):
            raise ReplicationError(
                f"replica URL {url!r} is not understood: a file replica is file:///absolute/dir"
            )
        return Replica("file", path.rstrip("/") or "/")
    if parts.scheme == "s3":
        if not parts.netloc:
            raise ReplicationError(
                f"replica URL {url!r} is not understood: it needs a bucket, s3://bucket/prefix"
            )
        query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        unknown = set(query) - {"endpoint", "region"}
        if unknown:
            raise ReplicationError(
                f"replica URL {redact(url)!r} has unknown options {sorted(unknown)}; "
                "only ?endpoint= and ?region= are understood"
            )
        endpoint = (
            query.get("endpoint")
            or os.environ.get("AWS_ENDPOINT_URL_S3")
            or os.environ.get("AWS_ENDPOINT_URL")
        )
        region = (
            query.get("region")
            or os.environ.get("AWS_REGION")
            or os.environ.get("AWS_DEFAULT_REGION")
        )
        return Replica("s3", parts.path.strip("/"), parts.netloc, endpoint, region)
    raise ReplicationError(
        f"replica URL {redact(url)!r} is not understood: use file:///absolute/dir or "
        "s3://bucket/prefix"
    )


_PASSED = (
    "PATH", "HOME", "TMPDIR", "TZ", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_CONFIG_FILE",
    "AWS_SHARED_CREDENTIALS_FILE", "AWS_REGION", "AWS_DEFAULT_REGION",
    "AWS_EC2_METADATA_DISABLED", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3",
)  # fmt: skip


def child_environment() -> dict[str, str]:
    """A clean environment for litestream: AWS settings only, without AWS_CA_BUNDLE (with
    it, litestream 0.5 exits at once: "unable to add custom RootCAs")."""
    return {k: os.environ[k] for k in _PASSED if k in os.environ}
