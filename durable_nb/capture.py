"""A text stream that writes through to the real one and keeps a copy."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

__all__ = ["Tee"]


class Tee:
    """Writes to ``target`` (so output stays live) and keeps what was written.

    A plain class, not an ``io.TextIOBase``: one is made per step call, and the io base
    costs more than the rest of the capture. Other attributes come from ``target``.
    """

    __slots__ = ("_on_write", "parts", "target")

    def __init__(self, target: Any, on_write: Callable[[str], None] | None = None) -> None:
        self.target = target
        self.parts: list[str] = []
        self._on_write = on_write or self.parts.append

    def __getattr__(self, name: str) -> Any:
        return getattr(self.target, name)

    def write(self, text: str) -> int:
        self._on_write(text)
        return self.target.write(text)

    def flush(self) -> None:
        self.target.flush()

    def isatty(self) -> bool:
        return False

    def writable(self) -> bool:
        return True
