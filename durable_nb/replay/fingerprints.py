"""Whether a value changed in place since it was digested, told cheaply at the next call:
a fast digest of its pickle, or, for a big numpy array, a sample of its elements."""

from __future__ import annotations

import functools
import pickle
from typing import Any

from xxhash import xxh3_64_intdigest, xxh3_128_hexdigest

from .digests import digest_value

__all__ = ["fingerprint_of"]


def fingerprint_of(obj: Any, *, big: bool = False) -> Any:
    """What tells, cheaply, at the next call in this process whether a value changed in
    place: its pickle's digest (no canonical form needed within one process); for a big
    numpy array, its shape, dtype and a sample of about 512 of its elements (``_sample``: a
    change of only a few elements can be missed; for other big values, see the module doc)."""
    t = type(obj)
    if t.__module__ == "numpy" and t.__name__ == "ndarray" and not obj.dtype.hasobject:
        sample = _sample(obj) if big else obj.tobytes()
        return (obj.shape, obj.dtype, xxh3_64_intdigest(sample))
    if big:
        return "big"  # once per run (documented): hashing it at each call would cost its size
    try:
        return xxh3_128_hexdigest(pickle.dumps(obj, protocol=5))
    except Exception:
        return digest_value(obj).digest


def _sample(arr: Any) -> bytes:
    """About 512 elements of a big array, evenly spread in memory order, at a stride that
    is no multiple of a page (samples a whole number of pages apart share cache sets: twice
    as slow to read). No copy of the array: a strided one is gathered at the same places
    (a copy of 10 MB at every call would cost milliseconds)."""
    if arr.ndim == 1:
        flat = arr
    elif arr.flags.c_contiguous:
        flat = arr.reshape(-1)
    elif arr.flags.f_contiguous:
        flat = arr.T.reshape(-1)
    else:  # strided in several dimensions
        return arr.flat[_sample_places(arr.size)].tobytes()
    return flat[:: _stride(flat.size)].tobytes()


def _stride(size: int) -> int:
    stride = size // 512
    return stride + 9 if stride >= 64 else max(1, stride)


@functools.lru_cache(maxsize=64)
def _sample_places(size: int) -> Any:
    """The flat indices ``_sample`` reads in a strided array of ``size`` elements."""
    import numpy as np

    return np.arange(0, size, _stride(size))
