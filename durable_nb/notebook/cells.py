"""A durable cell without IPython: rewriting its code, and what it reads.

A ``%%durable`` cell is rewritten (by ``rewrite``) into ordinary Python that the shell runs
like any cell, so top-level ``await`` and tracebacks behave as usual::

    with __durable_nb_cell__(ARGS, TEXT_DIGEST, QUIET, reads=(...)) as __durable_nb__:
        if __durable_nb__.execute:
            <the cell's statements, on their own line numbers>
            __durable_nb__.show(<last expression>)

(``async with`` when the cell awaits at top level.) ``reads`` is the cell's ``CellReads``:
what it reads, found by the analysis a step's code gets (``codeinfo.module_info``) taken in
the cell's order, and the digest of its code. What the cell changes is found by comparing
the namespace before and after (``cellstate``), not from the code.
"""

from __future__ import annotations

import ast
import re
import symtable
from collections.abc import Iterable
from typing import NamedTuple

from ..replay.codeinfo import module_info, parse

__all__ = ["MARKER", "RUNNER", "CellReads", "cell_reads", "rewrite"]

MARKER = "__durable_nb_cell__"
"""The name the rewritten cell calls to enter the durable cell."""
RUNNER = "__durable_nb__"
"""The name bound to the running cell inside the rewritten code."""

_SCOPES = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda)
_NAMESPACE_CALLS = frozenset({"globals", "locals", "vars", "dir"})


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
    """What a cell's code reads from the namespace, found as for a step's code (the same
    bytecode analysis: ``codeinfo.module_info``) and in the cell's own order: a name the cell
    binds before it reads it, on every path, is not an input."""

    names: tuple[str, ...]  # names whose value before the run is an input
    attrs: tuple[str, ...]  # attribute names it uses, and names in strings (getattr)
    unknown: str | None  # why its reads cannot be known (exec of built code, globals())
    imports: tuple[tuple[str, int, tuple[str, ...]], ...] = ()  # (module, level, names taken
    # with ``from module import ...``, "*" for all): what they load is an input
    bare: tuple[str, ...] = ()  # names used other than as ``NAME.attr`` (a module passed on
    # whole: every attribute of it counts)
    reloads: tuple[str, ...] = ()  # names given to importlib.reload(): imports too
    starred: tuple[tuple[str, tuple[str, ...]], ...] = ()  # (module, names read after
    # ``from module import *``): inputs unless the module binds them (told when it runs)
    digest: str = ""  # of its code, comments and formatting left out


def _constant(node: ast.expr | None) -> str | None:
    return node.value if isinstance(node, ast.Constant) and isinstance(node.value, str) else None


def _parsed(source: str) -> ast.Module | None:
    try:
        return parse(source)
    except SyntaxError:
        return None


_NESTED = (*_SCOPES, ast.ListComp, ast.SetComp, ast.DictComp, ast.GeneratorExp)


def _names_loaded(node: ast.AST) -> set[str]:
    """The namespace names ``node`` loads. Inside functions, lambdas, classes and
    comprehensions it contains, only the names the compiler resolves to the namespace (their
    parameters and locals are theirs): read off Python's own symbol table."""
    if not any(isinstance(n, _NESTED) for n in ast.walk(node)):
        return _named(node, ast.Load)
    tree = node if isinstance(node, ast.stmt) else ast.Expr(node)  # type: ignore[arg-type]
    try:
        table = symtable.symtable(ast.unparse(tree), "<cell>", "exec")
    except SyntaxError:  # (the cell fails the same way when it runs): every name loaded
        return {n.id for n in ast.walk(node) if isinstance(n, ast.Name)}
    found: set[str] = set()
    tables = [table]
    while tables:
        scope = tables.pop()
        top = scope is table
        for symbol in scope.get_symbols():
            if symbol.is_referenced() and (top or symbol.is_global()):
                found.add(symbol.get_name())
        tables.extend(scope.get_children())
    return found


class _Reads:
    """The reads of one expression or simple statement: the names it loads, and what code
    given as strings (``exec('...')``, a line magic's line) and the namespace calls
    (``globals()['x']``) read."""

    def __init__(self, tree: ast.AST) -> None:
        self.names = _names_loaded(tree)
        self.code: list[ast.Module] = []  # code given as strings, parsed
        self.unknown: str | None = None
        self.reloaded: set[str] = set()
        self.imported: set[str] = set()  # import_module('m') / __import__('m')
        namespace_calls = {  # id of a globals()/locals()/vars() call -> its name
            id(node): node.func.id  # type: ignore[attr-defined]
            for node in ast.walk(tree)
            if _namespace_call(node)
        }
        understood: set[int] = set()  # such calls used in a way whose reads are known
        for node in ast.walk(tree):
            if isinstance(node, ast.Subscript) and id(node.value) in namespace_calls:
                key = _constant(node.slice)  # globals()["x"]: reads (or writes) x
                if key is not None:
                    understood.add(id(node.value))
                    if isinstance(node.ctx, ast.Load):
                        self.names.add(key)
            if isinstance(node, ast.Call):
                self._call(node, namespace_calls, understood)
        for call, name in namespace_calls.items():
            if call not in understood:
                self.unknown = self.unknown or f"it reads {name}() as a whole"
        for node in ast.walk(tree):  # get_ipython().user_ns: the namespace, from the shell
            if isinstance(node, ast.Attribute) and node.attr in ("user_ns", "user_global_ns"):
                self.unknown = self.unknown or f"it reads the shell's {node.attr}"

    def _call(self, node: ast.Call, namespace_calls: dict[int, str], understood: set[int]) -> None:
        func = node.func
        called = _call_name(func)
        if isinstance(func, ast.Attribute) and id(func.value) in namespace_calls:
            understood.add(id(func.value))  # globals().update(...), .get("x"), .setdefault
            key = _constant(node.args[0]) if node.args else None
            if func.attr in ("get", "setdefault", "pop", "__getitem__") and key is not None:
                self.names.add(key)
            elif func.attr not in ("update", "__setitem__", "__delitem__"):
                self.unknown = f"it reads {namespace_calls[id(func.value)]}() as a whole"
        elif called in ("exec", "eval") and _builtin(func):
            code = _constant(node.args[0]) if node.args else None
            parsed = _parsed(code) if code is not None else None
            if parsed is None:
                self.unknown = f"it calls {called}() on code it builds"
            else:
                self.code.append(parsed)
        elif called in ("query", "eval") and node.args:  # pandas: df.query('a > @THR')
            expression = _constant(node.args[0])
            if expression is not None:  # names, and @names, read from the namespace
                parsed = _parsed(re.sub(r"@(?=[A-Za-z_])", "", expression))
                self.names |= set(re.findall(r"@([A-Za-z_]\w*)", expression))
                if parsed is not None:
                    self.code.append(parsed)
        elif isinstance(func, ast.Attribute) and func.attr in ("run_line_magic", "run_cell_magic"):
            # %time model = train(1) arrives as get_ipython().run_line_magic('time', '...')
            for arg in node.args[1:3]:
                code = _constant(arg)
                parsed = _parsed(code) if code is not None else None
                if parsed is not None:
                    self.code.append(parsed)
        elif called in _IMPORTS_BY_NAME:
            target = _constant(node.args[0]) if node.args else None
            if target is not None and not target.startswith("."):
                self.imported.add(target)
            else:
                self.unknown = f"it imports a module named at run time ({called}())"
        elif called == "reload":  # importlib.reload(cfg): what cfg's file holds now
            arg = node.args[0] if node.args else None
            if isinstance(arg, ast.Name):
                self.reloaded.add(arg.id)
            else:
                self.unknown = "it reloads a module it names at run time"


def _builtin(func: ast.expr) -> bool:
    """``exec``, or ``builtins.exec``: the builtin itself."""
    return isinstance(func, ast.Name) or (
        isinstance(func, ast.Attribute)
        and isinstance(func.value, ast.Name)
        and func.value.id in ("builtins", "__builtins__")
    )


def _namespace_call(node: ast.AST) -> bool:
    """``globals()``, ``locals()`` or ``vars()``: the namespace as a mapping."""
    return (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Name)
        and node.func.id in _NAMESPACE_CALLS
        and not node.args
    )


def _stored(target: ast.AST) -> set[str]:
    """The names an assignment target binds (``a, (b, *c) = ...``)."""
    return _named(target, ast.Store)


def _named(node: ast.AST, ctx: type[ast.expr_context]) -> set[str]:
    """The names ``node`` loads (``ast.Load``) or binds (``ast.Store``), scopes aside."""
    return {n.id for n in ast.walk(node) if isinstance(n, ast.Name) and isinstance(n.ctx, ctx)}


class _Flow:
    """The cell's statements in order, as they run: a name is an input if some path can
    load it before the cell binds it (``x = f(x)``, a loop's variable read after a loop
    that may not run); a name bound first on every path (``results = []``, ``for v in``)
    is the cell's own."""

    def __init__(self) -> None:
        self.reads: set[str] = set()
        self.starred: dict[str, set[str]] = {}  # module -> names read after ``from it import *``
        self.code: list[ast.Module] = []
        self.unknown: str | None = None
        self.reloaded: set[str] = set()
        self.imported: set[str] = set()

    def read(self, node: ast.AST | None, bound: set[str]) -> None:
        if node is None:
            return
        found = _Reads(node)
        unbound = found.names - bound
        stars = [name[1:] for name in bound if name.startswith("*")]
        if stars:  # a star import ran before: these may be its names (told at run time)
            for module in stars:
                self.starred.setdefault(module, set()).update(unbound)
        else:
            self.reads |= unbound
        self.unknown = self.unknown or found.unknown
        self.reloaded |= found.reloaded
        self.imported |= found.imported
        for code in found.code:  # code in strings runs here, in the namespace
            self.code.append(code)
            self.block(code.body, set(bound))

    def block(self, body: list[ast.stmt], bound: set[str]) -> set[str]:
        for stmt in body:
            bound = self.stmt(stmt, bound)
        return bound

    def stmt(self, s: ast.stmt, bound: set[str]) -> set[str]:
        if isinstance(s, ast.Assign):
            self.read(s.value, bound)
            for target in s.targets:
                self._target(target, bound)
            return bound | set().union(*map(_stored, s.targets))
        if isinstance(s, ast.AugAssign):
            self.read(s.value, bound)
            self.read(ast.Name(s.target.id, ast.Load()) if isinstance(s.target, ast.Name)
                      else s.target, bound)  # fmt: skip
            return bound
        if isinstance(s, ast.AnnAssign):
            self.read(s.annotation, bound)
            self.read(s.value, bound)
            self._target(s.target, bound)
            return bound | _stored(s.target) if s.value is not None else bound
        if isinstance(s, ast.Import):
            return bound | {(a.asname or a.name).split(".")[0] for a in s.names}
        if isinstance(s, ast.ImportFrom):  # ("*M" stands for what M's star import binds)
            star = {f"*{s.module}" for a in s.names if a.name == "*" and s.module and not s.level}
            return bound | star | {a.asname or a.name for a in s.names if a.name != "*"}
        if isinstance(s, _SCOPES):  # decorators, defaults, and what its body reads
            self.read(s, bound)
            return bound | {s.name}  # type: ignore[union-attr]
        if isinstance(s, (ast.For, ast.AsyncFor)):
            self.read(s.iter, bound)
            self._target(s.target, bound)
            self.block(s.body, bound | _stored(s.target))
            self.block(s.orelse, bound)  # (the loop may not have run)
            return bound
        if isinstance(s, ast.While):
            self.read(s.test, bound)
            self.block(s.body, bound)
            self.block(s.orelse, bound)
            return bound
        if isinstance(s, ast.If):
            self.read(s.test, bound)
            return self.block(s.body, bound) & self.block(s.orelse, bound)
        if isinstance(s, (ast.With, ast.AsyncWith)):
            inner = set(bound)
            for item in s.items:
                self.read(item.context_expr, inner)
                if item.optional_vars is not None:
                    self._target(item.optional_vars, inner)
                    inner |= _stored(item.optional_vars)
            return self.block(s.body, inner)
        if isinstance(s, (ast.Try, getattr(ast, "TryStar", ast.Try))):
            after = self.block(s.body, bound)
            for handler in s.handlers:
                self.read(handler.type, bound)
                self.block(handler.body, bound | ({handler.name} if handler.name else set()))
            self.block(s.orelse, after)
            self.block(s.finalbody, bound)
            return bound  # (any of it may have been cut short)
        if isinstance(s, ast.Delete):
            for target in s.targets:
                if not isinstance(target, ast.Name):
                    self.read(target, bound)
            return bound - {t.id for t in s.targets if isinstance(t, ast.Name)}
        if isinstance(s, (ast.Global, ast.Nonlocal, ast.Pass, ast.Break, ast.Continue)):
            return bound
        self.read(s, bound)  # an expression, assert, raise, match: everything it loads
        return bound

    def _target(self, target: ast.AST, bound: set[str]) -> None:
        """What an assignment target loads: ``cfg.RATE = ...`` and ``d[k] = ...`` read the
        object they change (and ``k``)."""
        for node in ast.walk(target):
            if isinstance(node, (ast.Attribute, ast.Subscript)):
                if not _namespace_call(node.value):  # globals()["z"] = ...: binds z
                    self.read(node.value, bound)
                if isinstance(node, ast.Subscript):
                    self.read(node.slice, bound)


_IMPORTS_BY_NAME = frozenset({"import_module", "__import__"})


def _call_name(func: ast.expr) -> str | None:
    if isinstance(func, ast.Name):
        return func.id
    return func.attr if isinstance(func, ast.Attribute) else None


def cell_reads(body: list[ast.stmt], filename: str = "<cell>") -> CellReads:
    """What a cell reads (``CellReads``): its statements analysed as a step's code is
    (``codeinfo.module_info``), code it gives as strings too, with the names it binds before
    reading them left out."""
    flow = _Flow()
    flow.block(body, set())
    try:
        infos = [module_info(ast.Module(body, []), filename)]
        infos += [module_info(code, filename) for code in flow.code]
    except SyntaxError as exc:  # the cell will fail the same way when it runs
        return CellReads((), (), f"its code does not compile ({exc.msg})")
    attrs = set().union(*(info.attrs for info in infos))
    imports = dict.fromkeys(i for info in infos for i in info.imports)
    imports.update(dict.fromkeys((m, 0, ()) for m in sorted(flow.imported)))
    bare = set().union(*(info.bare for info in infos))
    unknown = flow.unknown
    if any(module == "__main__" for module, _, _ in imports):
        unknown = unknown or "it reads the notebook's namespace through __main__"
    reads = sorted(n for n in flow.reads if not n.startswith("__durable_nb"))
    starred = tuple((m, tuple(sorted(names))) for m, names in sorted(flow.starred.items()))
    return CellReads(
        tuple(reads), tuple(sorted(attrs)), unknown, tuple(imports), tuple(sorted(bare)),
        tuple(sorted(flow.reloaded)), starred, infos[0].digest,
    )  # fmt: skip


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
    marker.keywords = [ast.keyword("reads", ast.Constant(tuple(cell_reads(statements))))]
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
