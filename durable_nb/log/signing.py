"""Signatures of stored values: nothing written without the user's key is ever unpickled.

Each stored value (a step's result, a cell's saved state) is signed when it is written: a
keyed BLAKE2b of its serialization format and its bytes (for a blob file, of its content
digest, which every read checks). Replay, ``result()`` and a cell's restore check the
signature before unpickling; a value without a valid one is treated as not stored (the step
or cell runs again, saying why). A replica in a shared bucket, a log sent by someone else or
edited by hand is someone else's input: ``trust`` adopts it on the user's word.

The key: ``DURABLE_NB_KEY`` (any text; a fleet shares it through the environment), else a
file created user-only on first use, ``$XDG_CONFIG_HOME/durable_nb/key`` (by default
``~/.config/durable_nb/key``).
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import os
import secrets
import tempfile
import time
from pathlib import Path
from typing import Any

from ..errors import DurableError

__all__ = ["CELL", "KEY_ENV", "NotSigned", "forget_key", "key_path", "sign", "sign_blob", "valid"]

KEY_ENV = "DURABLE_NB_KEY"
CELL = "cell"  # the format a saved cell state is signed as
_SIZE = 16  # bytes of signature: 128 bits


class NotSigned(Exception):
    """A stored value without the user's signature: it is not unpickled."""

    def __str__(self) -> str:
        return (
            "its stored value is not signed with your key (a log from elsewhere, or edited), "
            "so it is not unpickled: it runs again; durable_nb.trust(PATH) adopts a log you "
            "trust"
        )


def key_path() -> Path:
    """Where the user's key file is (created on first use when ``DURABLE_NB_KEY`` is unset)."""
    config = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return Path(config) / "durable_nb" / "key"


def _key() -> bytes:
    text = os.environ.get(KEY_ENV)
    if text:
        return hashlib.blake2b(text.encode(), digest_size=32, person=b"durable_nb key").digest()
    path = key_path()
    try:
        return _read_key(path)
    except FileNotFoundError:
        pass
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    # Written whole in a file of its own (user-only from the start), then linked into place:
    # a process that starts meanwhile reads no key or the whole key, never an empty one;
    # two processes at once: the second link fails and that one reads the first's key.
    fd, temp = tempfile.mkstemp(dir=path.parent, prefix=".key-")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(32) + "\n")
        with contextlib.suppress(FileExistsError):
            os.link(temp, path)
    finally:
        os.unlink(temp)
    return _read_key(path)


def _read_key(path: Path) -> bytes:
    """The key in ``path``; an empty file is one an older durable_nb is writing (it created
    the file, then wrote it): read again for a second before saying so."""
    for _ in range(20):
        text = path.read_text().strip()
        if text:
            return bytes.fromhex(text)
        time.sleep(0.05)
    raise DurableError(
        f"the signing key file {path} is empty: delete it (a new key is made) or set DURABLE_NB_KEY"
    )


_prefixed: dict[str, Any] = {}  # format -> a keyed hasher that has read it: copied per value


def _hasher(fmt: str) -> Any:
    """A keyed hasher that has read ``fmt``, to copy (the key is read once per process:
    ``DURABLE_NB_KEY`` looked up at each value would cost more than the signature)."""
    hasher = _prefixed.get(fmt)
    if hasher is None:
        hasher = hashlib.blake2b(key=_key(), digest_size=_SIZE)
        hasher.update(fmt.encode() + b"\0")
        _prefixed[fmt] = hasher
    return hasher


def sign(fmt: str, data: bytes | bytearray | memoryview) -> bytes:
    """The signature of a value serialized as ``fmt`` into ``data``."""
    h = _hasher(fmt).copy()
    h.update(data)
    return h.digest()


def forget_key() -> None:
    """Read the key again at the next signature (after ``DURABLE_NB_KEY`` changed)."""
    _prefixed.clear()


def sign_blob(fmt: str, digest: str) -> bytes:
    """The signature of a value kept in the blob file with content digest ``digest``."""
    return sign("blob:" + fmt, digest.encode())


def valid(signature: bytes | None, fmt: str, data: bytes | memoryview | None = None,
          blob: str | None = None) -> bool:  # fmt: skip
    """Whether ``signature`` is the user's for this value (inline ``data``, or ``blob``)."""
    if not signature:
        return False
    expected = sign_blob(fmt, blob) if blob is not None else sign(fmt, data or b"")
    return hmac.compare_digest(signature, expected)
