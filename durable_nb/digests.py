"""Digests that decide replay: of a step's code, of its arguments, of a cell's inputs.

The code digest ignores comments, whitespace, docstrings and decorators (it hashes the
function's AST) but not the body. The argument digest is canonical: dicts, keyword arguments
and sets are sorted so that equal arguments give equal digests in every process, whatever
``PYTHONHASHSEED`` is. An argument that cannot be pickled (a client, a connection) counts by
its type only.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import inspect
import pickle
import textwrap
import types
from typing import Any

from xxhash import xxh3_128_hexdigest

__all__ = ["args_digest", "code_digest", "source_digest", "value_digest"]

_PRIMITIVES = frozenset({type(None), bool, int, float, complex, str, bytes})


def _hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:32]


class _StripDocs(ast.NodeTransformer):
    """Remove docstrings and decorators, which do not change what a function computes."""

    def _strip(self, node: Any) -> Any:
        self.generic_visit(node)
        body = node.body
        if (
            body
            and isinstance(body[0], ast.Expr)
            and isinstance(body[0].value, ast.Constant)
            and isinstance(body[0].value.value, str)
        ):
            node.body = body[1:] or [ast.Pass()]
        if hasattr(node, "decorator_list"):
            node.decorator_list = []
        return node

    visit_FunctionDef = visit_AsyncFunctionDef = visit_ClassDef = _strip


def _bytecode_digest(code: types.CodeType) -> bytes:
    parts = [code.co_code, repr(code.co_names).encode()]
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            parts.append(_bytecode_digest(const))
        else:
            parts.append(repr(const).encode())
    return hashlib.sha256(b"\0".join(parts)).digest()


def code_digest(fn: Any) -> str:
    """Digest of what a callable computes: its AST, or its bytecode when no source exists."""
    while isinstance(fn, functools.partial):
        fn = fn.func
    fn = inspect.unwrap(fn)
    try:
        source = textwrap.dedent(inspect.getsource(fn))
        tree = _StripDocs().visit(ast.parse(source))
        return _hex(ast.dump(tree, annotate_fields=False, include_attributes=False).encode())
    except (OSError, TypeError, SyntaxError, IndentationError):
        pass
    code = getattr(fn, "__code__", None)
    if isinstance(code, types.CodeType):
        return _hex(_bytecode_digest(code))
    name = getattr(fn, "__qualname__", type(fn).__qualname__)
    return _hex(f"{getattr(fn, '__module__', '')}.{name}".encode())


def _canon(value: Any) -> Any:
    """A structure of primitives equal for equal values, with type tags where it matters."""
    t = type(value)
    if t in _PRIMITIVES:
        return value
    if t is tuple or t is list:
        return (t.__name__, *map(_canon, value))
    if t is dict:
        items = [(_canon(k), _canon(v)) for k, v in value.items()]
        try:
            items.sort()
        except TypeError:
            items.sort(key=repr)
        return ("dict", *items)
    if t is set or t is frozenset:
        members = [_canon(v) for v in value]
        try:
            members.sort()
        except TypeError:
            members.sort(key=repr)
        return (t.__name__, *members)
    if t.__module__ == "numpy" and t.__name__ == "ndarray" and value.dtype.hasobject is False:
        return ("ndarray", value.dtype.str, value.shape, _hex(value.tobytes()))
    if isinstance(value, (types.FunctionType, types.BuiltinFunctionType, type)):
        return ("callable", getattr(value, "__module__", ""), value.__qualname__)
    try:
        return ("pickle", t.__module__, t.__qualname__, _hex(pickle.dumps(value, protocol=5)))
    except Exception:
        return ("type", t.__module__, t.__qualname__)


def args_digest(args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
    """Canonical digest of a call's arguments (keyword order does not matter).

    xxh3-128, not a cryptographic hash: it runs on every step call, and a key only has to
    tell apart the calls of one workflow, not resist an adversary.
    """
    if not kwargs:
        for a in args:
            if type(a) not in _PRIMITIVES:
                break
        else:  # only primitives: their pickle is already canonical
            return xxh3_128_hexdigest(pickle.dumps(args, protocol=5))
    canon = (
        tuple(_canon(a) for a in args),
        tuple(sorted((k, _canon(v)) for k, v in kwargs.items())),
    )
    return xxh3_128_hexdigest(pickle.dumps(canon, protocol=5))


def value_digest(value: Any) -> str:
    """Canonical digest of one value (used for the variables a cell reads)."""
    return _hex(pickle.dumps(_canon(value), protocol=5))


def source_digest(source: str) -> str:
    """Digest of a cell's source text, ignoring trailing whitespace."""
    lines = [line.rstrip() for line in source.strip().splitlines()]
    return _hex("\n".join(lines).encode())
