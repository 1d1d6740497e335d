"""A durable cell without IPython: rewriting its code, its inputs, and what it leaves behind.

A ``%%durable`` cell is rewritten (by ``rewrite``) into ordinary Python that the shell runs
like any cell, so top-level ``await`` and tracebacks behave as usual::

    with __durable_nb_cell__(ARGS, SOURCE_DIGEST, reads=(...), writes=(...)) as __durable_nb__:
        if __durable_nb__.execute:
            <the cell's statements, on their own line numbers>
            __durable_nb__.show(<last expression>)

(``async with`` when the cell awaits at top level.) The names a cell *reads* from the
namespace give the inputs digest; the names it *writes* are saved when it completes, so a
later identical run can be skipped and its variables restored.
"""

from __future__ import annotations

import ast
import builtins
import copy
import inspect
import json
import pickle
import types
from collections.abc import Iterable, Mapping, MutableMapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from . import serialization
from .dependencies import code_digest
from .digests import value_digest
from .records import CellRecord, RunRecord
from .store import Store

if TYPE_CHECKING:
    from .engine import Run

__all__ = [
    "MARKER",
    "RUNNER",
    "CellVariables",
    "NamespaceGuard",
    "inputs_digest",
    "load_outputs",
    "pack_variables",
    "rewrite",
    "save_cell",
    "skippable",
    "unpack_variables",
]

MARKER = "__durable_nb_cell__"
"""The name the rewritten cell calls to enter the durable cell."""
RUNNER = "__durable_nb__"
"""The name bound to the running cell inside the rewritten code."""

_SCOPES = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda)
_IGNORED = frozenset({"In", "Out", "get_ipython", "exit", "quit", "_", "__", "___", MARKER, RUNNER})


def _top_level(nodes: Iterable[ast.AST]) -> Iterable[ast.AST]:
    """Every node of the cell's own scope (not inside functions, classes or lambdas)."""
    stack = list(nodes)
    while stack:
        node = stack.pop()
        yield node
        for child in ast.iter_child_nodes(node):
            if isinstance(child, _SCOPES):
                yield child  # its name binds here; its body is another scope
                stack.extend(getattr(child, "decorator_list", []))
            elif isinstance(child, (ast.ListComp, ast.SetComp, ast.DictComp, ast.GeneratorExp)):
                stack.extend(g.iter for g in child.generators[:1])  # only this evaluates here
            else:
                stack.append(child)


def _writes(body: list[ast.stmt]) -> list[str]:
    names: set[str] = set()
    for node in _top_level(body):
        if isinstance(node, ast.Name) and isinstance(node.ctx, (ast.Store, ast.Del)):
            names.add(node.id)
        elif isinstance(node, (*_SCOPES[:3],)):
            names.add(node.name)  # type: ignore[attr-defined]
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            for alias in node.names:
                names.add((alias.asname or alias.name).split(".")[0])
        elif isinstance(node, ast.ExceptHandler) and node.name:
            names.add(node.name)
    return sorted(n for n in names if not n.startswith("__durable_nb"))


def _reads(body: list[ast.stmt], writes: list[str]) -> list[str]:
    loaded = {
        node.id
        for stmt in body
        for node in ast.walk(stmt)
        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load)
    }
    return sorted(loaded - set(writes) - _IGNORED - set(dir(builtins)))


def _awaits(body: list[ast.stmt]) -> bool:
    return any(
        isinstance(node, (ast.Await, ast.AsyncFor, ast.AsyncWith))
        or (isinstance(node, ast.comprehension) and node.is_async)
        for node in _top_level(body)
    )


def rewrite(module: ast.Module) -> ast.Module:
    """Wrap a cell whose first statement is the marker call; other cells are returned as is."""
    body = module.body
    if not body or not _is_marker(body[0]):
        return module
    marker: ast.Call = body[0].value  # type: ignore[attr-defined]
    statements = body[1:]
    writes = _writes(statements)
    marker.keywords = [
        ast.keyword("reads", ast.Constant(tuple(_reads(statements, writes)))),
        ast.keyword("writes", ast.Constant(tuple(writes))),
    ]
    quiet = any(isinstance(k, ast.Constant) and k.value is True for k in marker.args[2:3])
    if statements and isinstance(statements[-1], ast.Expr) and not quiet:
        last = statements[-1]
        show = ast.Attribute(ast.Name(RUNNER, ast.Load()), "show", ast.Load())
        last.value = ast.Call(show, [last.value], [])
    runner = ast.Name(RUNNER, ast.Store())
    gate = ast.If(
        ast.Attribute(ast.Name(RUNNER, ast.Load()), "execute", ast.Load()),
        statements or [ast.Pass()],
        [],
    )
    item = ast.withitem(marker, runner)
    wrapper: ast.stmt = (
        ast.AsyncWith([item], [gate]) if _awaits(statements) else ast.With([item], [gate])
    )
    ast.copy_location(wrapper, body[0])
    ast.copy_location(gate, body[0])
    module.body = [ast.fix_missing_locations(wrapper)]
    return module


def _is_marker(node: ast.stmt) -> bool:
    return (
        isinstance(node, ast.Expr)
        and isinstance(node.value, ast.Call)
        and isinstance(node.value.func, ast.Name)
        and node.value.func.id == MARKER
    )


def _input_digest(value: Any) -> str:
    if isinstance(value, types.ModuleType):
        return f"module {value.__name__}"
    if isinstance(value, (types.FunctionType, type)) or hasattr(value, "code_digest"):
        try:
            return f"code {code_digest(value)}"
        except Exception:
            return f"callable {getattr(value, '__qualname__', type(value).__qualname__)}"
    return value_digest(value)


def inputs_digest(namespace: Mapping[str, Any], reads: Iterable[str]) -> str:
    """Digest of the values a cell reads that exist in the namespace before it runs."""
    parts = [f"{name}={_input_digest(namespace[name])}" for name in reads if name in namespace]
    return value_digest(tuple(parts))


@dataclass(frozen=True)
class CellVariables:
    """A completed cell's variables, ready to store (or why they cannot be)."""

    payload: bytes
    blobs: list[str]
    unsaved: str | None  # why the cell cannot be skipped next time, if it cannot


def pack_variables(
    store: Store, namespace: Mapping[str, Any], writes: Iterable[str]
) -> CellVariables:
    """Serialize the variables a cell assigned (large ones to blobs)."""
    saved: dict[str, tuple[str, Any]] = {}
    blobs: list[str] = []
    for name in writes:
        if name not in namespace:
            continue
        value = namespace[name]
        if isinstance(value, types.ModuleType):
            saved[name] = ("module", value.__name__)
            continue
        if (inspect.isfunction(value) or inspect.isclass(value)) and value.__module__ == "__main__":
            return CellVariables(b"", [], f"{name} is defined in the notebook and cannot be stored")
        try:
            encoded = serialization.encode(value)
        except serialization.NotSerializable as exc:
            return CellVariables(b"", [], f"{name} cannot be pickled ({exc.reason})")
        if encoded.inline:
            saved[name] = (encoded.format, encoded.segments[0])
        else:
            digest = store.blobs.write(encoded.segments)
            blobs.append(digest)
            saved[name] = ("blob:" + encoded.format, digest)
    return CellVariables(pickle.dumps(saved, protocol=5), blobs, None)


def unpack_variables(
    store: Store, payload: bytes, namespace: MutableMapping[str, Any]
) -> list[str]:
    """Put a saved cell's variables back into ``namespace``; returns their names."""
    import importlib

    saved: dict[str, tuple[str, Any]] = pickle.loads(payload)
    values: dict[str, Any] = {}
    for name, (fmt, data) in saved.items():
        if fmt == "module":
            values[name] = importlib.import_module(data)
        elif fmt.startswith("blob:"):
            values[name] = serialization.decode(fmt[5:], store.blobs.read(data))
        else:
            values[name] = serialization.decode(fmt, (data,))
    namespace.update(values)  # all or nothing: a damaged blob raised before any update
    return list(values)


class NamespaceGuard:
    """Lets a cell run in ``namespace`` and then puts the namespace back (for ``--plan``).

    Names the cell binds are unbound or rebound as they were; the values it reads are
    replaced, while it runs, by deep copies, so that in-place changes (``results.append``)
    touch only the copies. Values that cannot be deep-copied, and what helpers change
    through globals the cell does not read, are not protected.
    """

    def __init__(self, namespace: MutableMapping[str, Any], reads: Iterable[str]) -> None:
        self.namespace = namespace
        self.saved = dict(namespace)
        for name in reads:
            value = namespace.get(name)
            if value is None or callable(value) or isinstance(value, types.ModuleType):
                continue
            try:
                namespace[name] = copy.deepcopy(value)
            except Exception:  # a client, a lock: left as it is
                continue

    def restore(self) -> None:
        """Put every name back as it was before the cell ran."""
        namespace, saved = self.namespace, self.saved
        for name in [n for n in namespace if n not in saved]:
            del namespace[name]
        for name, value in saved.items():
            if namespace.get(name, _UNSET) is not value:
                namespace[name] = value


_UNSET = object()


def skippable(
    store: Store, name: str, source: str, inputs: str
) -> tuple[RunRecord, CellRecord] | None:
    """The completed run a cell can be skipped for: same source digest, same inputs."""
    run = store.last_run(name)
    if (
        run is None
        or run.status != "completed"
        or run.source_digest != source
        or run.inputs_digest != inputs
    ):
        return None
    cell = store.cell(run.id)
    return (run, cell) if cell is not None else None


def save_cell(
    run: Run, namespace: Mapping[str, Any], writes: Iterable[str], outputs: list[Any]
) -> str | None:
    """Keep a completed cell's variables and outputs; returns why not, if they cannot be."""
    variables = pack_variables(run.store, namespace, writes)
    if variables.unsaved is not None:
        run.store.note("cell not saved", variables.unsaved, workflow=run.workflow, run_id=run.id)
        return variables.unsaved
    payload = json.dumps(outputs, default=str).encode()
    run.store.save_cell(run.id, variables.payload, payload, variables.blobs)
    return None


def load_outputs(payload: bytes) -> list[tuple[str, Any, Any]]:
    """The outputs ``save_cell`` stored (JSON: never unpickled)."""
    return [tuple(item) for item in json.loads(payload)]  # type: ignore[misc]
