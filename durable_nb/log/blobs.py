"""Content-addressed files for large values, in a folder beside the log.

A blob is written to a temporary file in the same folder and renamed to its digest, so a
name never points to partial content; the row that refers to a blob is committed only after
the rename. Every read checks the digest, so a damaged file is reported, not unpickled.

File layout: ``DNBBLOB2``, segment count (u32), segment lengths (u64 each), then each
segment at the next offset that is a multiple of 64 (zero padding between), so that the
numpy arrays built on a memory-mapped blob are aligned. Files of layout ``DNBBLOB1`` (no
padding), written by earlier versions, are still read.
"""

from __future__ import annotations

import mmap
import os
import struct
import tempfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import xxhash

from ..errors import BlobError

__all__ = ["BlobStore", "blob_folder", "pack", "set_mirror", "unpack"]

_MAGIC = b"DNBBLOB2"  # (``DNBBLOB1``: the same without padding)
_ALIGN = 64


def _padding(offset: int) -> int:
    return -offset % _ALIGN


def pack(segments: Iterable[bytes | memoryview]) -> tuple[str, list[bytes | memoryview]]:
    """A blob's digest and its bytes in order (header, then each segment, aligned)."""
    parts = [memoryview(s).cast("B") for s in segments]
    header = _MAGIC + struct.pack(f"<I{len(parts)}Q", len(parts), *(p.nbytes for p in parts))
    chunks: list[bytes | memoryview] = [header]
    offset = len(header)
    for p in parts:
        pad = _padding(offset)
        chunks += [bytes(pad), p]
        offset += pad + p.nbytes
    hasher = xxhash.xxh3_128()
    for chunk in chunks:
        hasher.update(chunk)
    return hasher.hexdigest(), chunks


def unpack(data: Any, digest: str, where: str) -> list[memoryview]:
    """The segments of a blob's bytes, after checking its digest (``BlobError`` naming
    ``where`` if they do not match)."""
    if xxhash.xxh3_128_hexdigest(data) != digest:
        raise BlobError(
            f"blob {where} is damaged (digest mismatch); the step will run again "
            "(restore the blob folder from your replica to keep its value)",
            digest=digest,
        )
    view = memoryview(data)
    aligned = view[: len(_MAGIC)] == _MAGIC
    (count,) = struct.unpack_from("<I", view, len(_MAGIC))
    lengths = struct.unpack_from(f"<{count}Q", view, len(_MAGIC) + 4)
    pos = len(_MAGIC) + 4 + 8 * count
    segments = []
    for n in lengths:
        if aligned:
            pos += _padding(pos)
        segments.append(view[pos : pos + n])
        pos += n
    return segments


def blob_folder(log: Path) -> Path:
    """The blob folder of a log: ``<stem>.blobs/`` beside ``<stem>.db``."""
    return log.with_name(log.stem + ".blobs")


Mirror = Callable[[str, Path], None]
_mirrors: dict[Path, Mirror] = {}


def set_mirror(folder: Path, mirror: Mirror | None) -> None:
    """Call ``mirror(digest, path)`` after each new blob in ``folder`` is written, before
    ``write`` returns (so before the row pointing to it commits); None removes it."""
    if mirror is None:
        _mirrors.pop(folder, None)
    else:
        _mirrors[folder] = mirror


class BlobStore:
    """The blob folder of one log: ``<log>.blobs/`` with files named by xxh3-128 digest."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def path(self, digest: str) -> Path:
        """Where the blob with this digest lives."""
        return self.folder / digest[:2] / digest

    def write(self, segments: Iterable[bytes | memoryview]) -> str:
        """Store ``segments`` atomically and return their digest (existing blobs are reused)."""
        digest, chunks = pack(segments)
        target = self.path(digest)
        mirror = _mirrors.get(self.folder)
        if target.exists():
            # fresh mtime: collect_blobs() spares young files until the row pointing here commits
            os.utime(target)
            if mirror is not None:
                mirror(digest, target)
            return digest
        self.folder.mkdir(mode=0o700, exist_ok=True)  # user-only, like the log beside it
        target.parent.mkdir(mode=0o700, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".tmp-")  # created 0600
        try:
            with os.fdopen(fd, "wb") as f:
                for chunk in chunks:
                    f.write(chunk)
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        if mirror is not None:
            mirror(digest, target)
        return digest

    def files(self) -> Iterator[Path]:
        """Every file in the folder: blobs, and temporary files of writes under way or killed."""
        if not self.folder.is_dir():
            return
        for sub in self.folder.iterdir():
            if sub.is_dir():
                yield from (f for f in sub.iterdir() if f.is_file())

    def read(self, digest: str) -> list[memoryview]:
        """The segments of a blob, after checking its digest; ``BlobError`` if missing or bad."""
        path = self.path(digest)
        try:
            with open(path, "rb") as f:
                # A private copy-on-write mapping: no copy into a buffer, and the arrays built
                # on it are writable without touching the file.
                data = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)
        except FileNotFoundError:
            raise BlobError(
                f"blob {digest} is missing from {self.folder}; the step will run again "
                "(restore the blob folder from your replica to keep its value)",
                digest=digest,
            ) from None
        return unpack(data, digest, str(path))
