"""A text stream that writes through to the real one and keeps a copy."""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import Any

__all__ = ["Tee"]


class Tee(io.TextIOBase):
    """Writes to ``target`` (so output stays live) and keeps what was written."""

    def __init__(self, target: Any, on_write: Callable[[str], None] | None = None) -> None:
        self.target = target
        self.parts: list[str] = []
        self._on_write = on_write or self.parts.append

    def write(self, text: str) -> int:
        self._on_write(text)
        return self.target.write(text)

    def flush(self) -> None:
        self.target.flush()

    def isatty(self) -> bool:
        return False

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return getattr(self.target, "encoding", "utf-8")
