"""A durable cell without IPython: rewriting its code, and what it reads.

A ``%%durable`` cell is rewritten (by ``rewrite``) into ordinary Python that the shell runs
like any cell, so top-level ``await`` and tracebacks behave as usual::

    with __durable_nb_cell__(ARGS, SOURCE_DIGEST, reads=(...), attrs=(...),
                             unknown=None) as __durable_nb__:
        if __durable_nb__.execute:
            <the cell's statements, on their own line numbers>
            __durable_nb__.show(<last expression>)

(``async with`` when the cell awaits at top level.) ``reads`` are the names whose values
before the run are the cell's inputs (``reads``); ``unknown`` says why what the cell reads
cannot be known, if it cannot (then it is never skipped). What the cell changes is found by
comparing the namespace before and after (``cellstate``), not from the code.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable
from typing import NamedTuple

from ..replay.codeinfo import named_in_strings

__all__ = ["MARKER", "RUNNER", "CellReads", "cell_reads", "rewrite"]

MARKER = "__durable_nb_cell__"
"""The name the rewritten cell calls to enter the durable cell."""
RUNNER = "__durable_nb__"
"""The name bound to the running cell inside the rewritten code."""

_SCOPES = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda)
_NAMESPACE_CALLS = frozenset({"globals", "locals", "vars"})


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


class CellReads(NamedTuple):
    """What a cell's code reads from the namespace."""

    names: tuple[str, ...]  # names whose value before the run is an input
    attrs: tuple[str, ...]  # attribute names it uses (to follow the user's modules)
    unknown: str | None  # why its reads cannot be known (exec of built code, globals())
    imports: tuple[str, ...] = ()  # modules it imports (what they load is an input)


def _constant(node: ast.expr | None) -> str | None:
    return node.value if isinstance(node, ast.Constant) and isinstance(node.value, str) else None


def _code_reads(source: str) -> tuple[set[str], set[str], str | None] | None:
    """The reads of code given as a string (to exec or to a magic); None if not Python."""
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return None
    return _loads(tree)


def _loads(tree: ast.AST) -> tuple[set[str], set[str], str | None]:
    """(names loaded, attribute names, why reads are unknown) anywhere in ``tree``."""
    names: set[str] = set()
    attrs: set[str] = set()
    unknown: str | None = None
    namespace_calls = {  # id of a globals()/locals()/vars() call -> its name
        id(node): node.func.id
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Name)
        and node.func.id in _NAMESPACE_CALLS
        and not node.args
    }
    understood: set[int] = set()  # such calls used in a way whose reads are known
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load):
            names.add(node.id)
        elif isinstance(node, ast.AugAssign) and isinstance(node.target, ast.Name):
            names.add(node.target.id)  # x += 1 reads x
        elif isinstance(node, ast.Attribute):
            attrs.add(node.attr)
        if not isinstance(node, ast.Call):
            if isinstance(node, ast.Subscript) and id(node.value) in namespace_calls:
                key = _constant(node.slice)  # globals()["x"]: reads (or writes) x
                if key is not None:
                    understood.add(id(node.value))
                    if isinstance(node.ctx, ast.Load):
                        names.add(key)
            continue
        func = node.func
        if isinstance(func, ast.Attribute) and id(func.value) in namespace_calls:
            understood.add(id(func.value))  # globals().update(...), .get("x"), .setdefault
            key = _constant(node.args[0]) if node.args else None
            if func.attr in ("get", "setdefault", "pop", "__getitem__") and key is not None:
                names.add(key)
            elif func.attr not in ("update", "__setitem__", "__delitem__"):
                unknown = f"it reads {namespace_calls[id(func.value)]}() as a whole"
        elif isinstance(func, ast.Name) and func.id in ("exec", "eval"):
            code = _constant(node.args[0]) if node.args else None
            inner = _code_reads(code) if code is not None else None
            if inner is None:
                unknown = f"it calls {func.id}() on code it builds"
            else:
                names |= inner[0]
                attrs |= inner[1]
                unknown = unknown or inner[2]
        elif isinstance(func, ast.Attribute) and func.attr in ("run_line_magic", "run_cell_magic"):
            # %time model = train(1) arrives as get_ipython().run_line_magic('time', '...')
            for arg in node.args[1:3]:
                code = _constant(arg)
                inner = _code_reads(code) if code is not None else None
                if inner is not None:
                    names |= inner[0]
                    attrs |= inner[1]
                    unknown = unknown or inner[2]
    for call, name in namespace_calls.items():
        if call not in understood:
            unknown = unknown or f"it reads {name}() as a whole"
    return names, attrs, unknown


def _bound_first(stmt: ast.stmt) -> set[str]:
    """Names a top-level statement binds unconditionally (their old values are dead)."""
    if isinstance(stmt, ast.Assign):
        return {t.id for t in stmt.targets if isinstance(t, ast.Name)}
    if isinstance(stmt, ast.AnnAssign) and stmt.value is not None:
        return {stmt.target.id} if isinstance(stmt.target, ast.Name) else set()
    if isinstance(stmt, (ast.Import, ast.ImportFrom)):
        return {(a.asname or a.name).split(".")[0] for a in stmt.names if a.name != "*"}
    if isinstance(stmt, _SCOPES[:3]):
        return {stmt.name}  # type: ignore[union-attr]
    return set()


_IMPORTS_BY_NAME = frozenset({"import_module", "__import__"})


def _call_name(func: ast.expr) -> str | None:
    if isinstance(func, ast.Name):
        return func.id
    return func.attr if isinstance(func, ast.Attribute) else None


def cell_reads(body: list[ast.stmt]) -> CellReads:
    """What a cell reads: every name it loads (including names it also assigns, as in
    ``x = f(x)``), except names whose first use is an unconditional top-level binding
    (``results = []``), whose old values the cell never sees."""
    seen: set[str] = set()
    dead: set[str] = set()
    attrs: set[str] = set()
    unknown: str | None = None
    imports: set[str] = set()
    for stmt in body:
        names, more, why = _loads(stmt)
        attrs |= more
        unknown = unknown or why
        dead |= {n for n in _bound_first(stmt) if n not in seen and n not in names}
        seen |= names
        for node in ast.walk(stmt):
            if isinstance(node, ast.Import):
                imports.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                imports.add(node.module)
                attrs.update(alias.name for alias in node.names)  # what it takes of it
            elif isinstance(node, ast.Call) and _call_name(node.func) in _IMPORTS_BY_NAME:
                target = _constant(node.args[0]) if node.args else None
                if isinstance(target, str) and not target.startswith("."):  # an import
                    imports.add(target)
                else:
                    called = _call_name(node.func)
                    unknown = unknown or f"it imports a module named at run time ({called}())"

        attrs |= named_in_strings(stmt)  # getattr(cfg, "RATE")
    reads = sorted(n for n in seen - dead if not n.startswith("__durable_nb"))
    return CellReads(tuple(reads), tuple(sorted(attrs)), unknown, tuple(sorted(imports)))


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
    reads = cell_reads(statements)
    marker.keywords = [
        ast.keyword("reads", ast.Constant(reads.names)),
        ast.keyword("attrs", ast.Constant(reads.attrs)),
        ast.keyword("unknown", ast.Constant(reads.unknown)),
        ast.keyword("imports", ast.Constant(reads.imports)),
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
