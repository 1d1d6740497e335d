"""Large values of a PostgreSQL log, in its table ``blobs``: a blob's bytes (``blobs.pack``'s
layout) in chunks of ``CHUNK`` bytes, one row each, so that a backup of the database is the
whole log.

``write`` keeps a blob in memory until the store's next write or transaction inserts it in
the same transaction as the row that points to it; a transaction that fails keeps them for
the next one. Each chunk row says when it was written (``created``, refreshed when an
existing blob is written again), so that ``gc`` spares blobs younger than its grace period:
a row may point to one in a transaction that has not committed yet.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from ..errors import BlobError
from .blobs import pack, unpack

if TYPE_CHECKING:
    from .store_postgres import PostgresStore

__all__ = ["DatabaseBlobs"]

_INSERT = (
    "INSERT INTO blobs (digest, seq, data) VALUES (%s, %s, %s) ON CONFLICT (digest, seq) "
    "DO UPDATE SET created = excluded.created"  # (locks the row against a gc meanwhile)
)


class DatabaseBlobs:
    """The blobs of one PostgreSQL log."""

    CHUNK = 32 << 20  # bytes per row (a bytea holds up to 1 GB)

    def __init__(self, store: PostgresStore) -> None:
        self._store = store
        self._pending: dict[str, bytes] = {}
        self.folder = f"{store.name} (table blobs)"

    def write(self, segments: Iterable[bytes | memoryview]) -> str:
        """Keep ``segments`` (copied: the value may change once the step returns) for the
        next commit; their digest."""
        digest, chunks = pack(segments)
        if digest not in self._pending:
            self._pending[digest] = b"".join(chunks)
        return digest

    @property
    def pending(self) -> bool:
        """Whether blobs wait for the next commit."""
        return bool(self._pending)

    def waiting(self) -> set[str]:
        """The digests of the blobs that wait for the next commit."""
        return set(self._pending)

    def flush(self, taken: dict[str, bytes]) -> None:
        """Insert the kept blobs (in the store's transaction), noting each in ``taken``
        before it is sent, so that a transaction that fails gives them back (``keep``)."""
        for digest in list(self._pending):
            data = self._pending.pop(digest, None)
            if data is None:
                continue
            taken[digest] = data
            view = memoryview(data)
            with self._store.conn.binary() as cursor:  # one chunk in flight, no escaping
                for seq, start in enumerate(range(0, max(len(data), 1), self.CHUNK)):
                    cursor.execute(_INSERT, (digest, seq, view[start : start + self.CHUNK]))

    def keep(self, taken: dict[str, bytes]) -> None:
        """Blobs taken by a transaction that failed: kept for the next one."""
        for digest, data in taken.items():
            self._pending.setdefault(digest, data)

    def read(self, digest: str) -> list[memoryview]:
        """The segments of a blob (read a chunk at a time into one buffer); ``BlobError``
        if missing or damaged."""
        data: Any = self._pending.get(digest)
        if data is None:
            sizes = self._store.conn.execute(
                "SELECT seq, length(data) FROM blobs WHERE digest = ? ORDER BY seq", (digest,)
            ).fetchall()
            if not sizes:
                raise BlobError(
                    f"blob {digest} is missing from {self._store.name}; the step will run again",
                    digest=digest,
                )
            data = bytearray(sum(size for _, size in sizes))
            at = 0
            with self._store.conn.binary() as cursor:
                for seq, size in sizes:
                    cursor.execute(
                        "SELECT data FROM blobs WHERE digest = %s AND seq = %s", (digest, seq)
                    )
                    data[at : at + size] = cursor.fetchone()[0]
                    at += size
        else:
            data = bytearray(data)  # (writable arrays, as from a blob file)
        return unpack(data, digest, f"{digest} in {self._store.name}")
