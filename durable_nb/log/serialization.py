"""Serialization of step results: pure functions from a value to (format, segments) and back.

``pickle`` (protocol 5, in-band bytes) is the format of small values, stored inline in the
log. A value whose pickle exceeds ``INLINE_LIMIT`` is encoded ``pickle-oob``: the pickle
stream plus its out-of-band buffers (numpy arrays, bytes-like data) as separate segments, so
that large arrays are written and read without an extra copy; those go to a blob file.
"""

from __future__ import annotations

import io
import pickle
import reprlib
from typing import Any, NamedTuple

__all__ = [
    "INLINE_LIMIT",
    "Encoded",
    "NotSerializable",
    "args_repr",
    "decode",
    "describe",
    "encode",
    "short_repr",
]

INLINE_LIMIT = 1 << 20
PICKLE = "pickle"
PICKLE_OOB = "pickle-oob"

_repr = reprlib.Repr()
_repr.maxstring = 60
_repr.maxother = 60
_repr.maxlist = _repr.maxtuple = _repr.maxdict = _repr.maxset = 6


class NotSerializable(Exception):
    """A value cannot be pickled; ``reason`` says why."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Encoded(NamedTuple):
    """A serialized value: its format name and the byte segments to store, in order."""

    format: str
    segments: tuple[bytes | memoryview, ...]
    size: int

    @property
    def inline(self) -> bool:
        """Whether the value is small enough to live in the log row itself."""
        return self.format == PICKLE


_PLAIN = frozenset({type(None), bool, int, float, str, dict, list, tuple, set})


def encode(value: object, *, seen: set[int] | None = None, large: bool = False) -> Encoded:
    """Serialize ``value``; raise ``NotSerializable`` when pickle refuses it. ``seen``
    receives the ids of the objects the pickle holds (its memo: every container and
    object in it), to tell which objects a value shares with others. ``large``: the value
    is likely big (a training state), so arrays in a plain container are not first copied
    into one in-band pickle."""
    if type(value) in _PLAIN and seen is None and not large:  # plain: one pickle if small
        try:
            head = pickle.dumps(value, protocol=5)
        except Exception as exc:
            raise NotSerializable(f"{type(exc).__name__}: {exc}") from None
        if len(head) <= INLINE_LIMIT:
            return Encoded(PICKLE, (head,), len(head))
        # big: arrays inside go out of band, so replay maps them (aligned) instead of copying
    buffers: list[pickle.PickleBuffer] = []
    try:
        if seen is None:
            head = pickle.dumps(value, protocol=5, buffer_callback=buffers.append)
        else:
            out = io.BytesIO()
            pickler = pickle.Pickler(out, protocol=5, buffer_callback=buffers.append)
            pickler.dump(value)
            seen.update(pickler.memo.copy())
            head = out.getvalue()
    except Exception as exc:  # pickle raises many types: PicklingError, TypeError, ...
        raise NotSerializable(f"{type(exc).__name__}: {exc}") from None
    if not buffers:
        return Encoded(PICKLE if len(head) <= INLINE_LIMIT else PICKLE_OOB, (head,), len(head))
    raws = [b.raw() for b in buffers]
    size = len(head) + sum(r.nbytes for r in raws)
    if size > INLINE_LIMIT:
        return Encoded(PICKLE_OOB, (head, *raws), size)
    if raws:  # small value with buffers: keep it as one in-band pickle
        head = pickle.dumps(value, protocol=5)
    return Encoded(PICKLE, (head,), len(head))


def decode(fmt: str, segments: list[bytes | memoryview] | tuple[bytes | memoryview, ...]) -> object:
    """Rebuild a value from the segments ``encode`` produced for format ``fmt``."""
    if fmt == PICKLE:
        return pickle.loads(segments[0])
    if fmt == PICKLE_OOB:
        return pickle.loads(segments[0], buffers=segments[1:])
    raise ValueError(f"unknown serialization format {fmt!r}")


_SCALARS = frozenset({type(None), bool, int, float, str, bytes})


def _flat(value: Any) -> bool:
    """Whether a dict's values, or a list's or tuple's items, are all scalars."""
    for v in value.values() if type(value) is dict else value:  # noqa: SIM110 - faster than all()
        if type(v) not in _SCALARS:
            return False
    return True


def short_repr(value: object) -> str:
    """A repr of at most 80 characters that stays cheap for huge values."""
    cls = type(value)
    try:
        if cls in _SCALARS:
            text = repr(value) if cls is not str or len(value) <= 80 else repr(value[:80])  # type: ignore[index]
        elif (cls is dict or cls is list or cls is tuple) and len(value) <= 6 and _flat(value):  # type: ignore[arg-type]
            text = repr(value)
        else:
            text = _repr.repr(value)
    except Exception:  # a failing __repr__, an int of more digits than Python turns into text
        text = f"<int of {value.bit_length()} bits>" if cls is int else f"<{cls.__qualname__}>"  # type: ignore[attr-defined]
    return text if len(text) <= 80 else text[:77] + "..."


def args_repr(args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
    """The arguments of a call as shown in the log, at most 200 characters."""
    if len(args) == 1 and not kwargs:
        return short_repr(args[0])
    parts = [short_repr(a) for a in args]
    parts += [f"{k}={short_repr(v)}" for k, v in kwargs.items()]
    text = ", ".join(parts)
    return text if len(text) <= 200 else text[:197] + "..."


_type_names: dict[type, str] = {}


def describe(value: object) -> tuple[str, str]:
    """A value's type name and a short repr, for views that must not unpickle."""
    cls = type(value)
    name = _type_names.get(cls)
    if name is None:
        name = (
            cls.__qualname__
            if cls.__module__ == "builtins"
            else f"{cls.__module__}.{cls.__qualname__}"
        )
        _type_names[cls] = name
    return name, short_repr(value)
