"""What a piece of code is, and whose: code digests and the names a function reads.

``code_info`` analyses one code object once per process: the digest of its AST (comments,
whitespace, docstrings and decorators do not count; the bytecode when there is no source,
or when the file on disk is not what was imported), the global names it reads, which of
its closure variables it reads, and the names it only mutates through statements such as
``log.append(x)`` (outputs, not inputs). ``is_user_module`` tells the user's own modules
(the notebook, files outside site-packages and the standard library) from installed ones,
whose versions ``package_version`` gives.
"""

from __future__ import annotations

import ast
import copy
import dis
import functools
import hashlib
import importlib.machinery
import importlib.util
import inspect
import os
import sys
import sysconfig
import textwrap
import threading
import types
from collections.abc import Callable, Iterable
from typing import Any, NamedTuple, TypeVar

from xxhash import xxh3_128, xxh3_128_hexdigest

__all__ = [
    "CodeInfo",
    "code_digest",
    "code_info",
    "display_name",
    "installed_package",
    "is_user_file",
    "is_user_module",
    "module_digest",
    "module_info",
    "module_source",
    "named_in_strings",
    "package_version",
    "parse",
    "star_names",
    "tree_digest",
]

# Statement calls that only change the object they are called on (or log): `x.append(v)`.
_MUTATORS = frozenset(
    {
        "append", "appendleft", "add", "clear", "discard", "extend", "extendleft", "insert",
        "put", "put_nowait", "remove", "update", "write", "writelines", "debug", "info",
        "warning", "error", "exception", "critical",
    }
)  # fmt: skip


# Builtins that read globals by a name known only when the code runs: what such code depends
# on cannot be known beforehand.
_DYNAMIC = frozenset({"eval", "exec", "globals"})


# -- code: per code object, cached for the process ---------------------------------------


class CodeInfo(NamedTuple):
    """What one code object is, and which names it reads."""

    digest: str  # of its AST (or bytecode when the source is unknown or stale)
    globals: tuple[str, ...]  # global names it reads (write-only ones left out)
    freevars: tuple[bool, ...]  # per closure variable: whether it is read
    attrs: frozenset[str]  # every name it uses, attribute names and names in strings included
    imports: tuple[tuple[str, int, tuple[str, ...]], ...] = ()  # in its body: (name, level,
    # the names of `from name import ...`)
    dynamic: tuple[str, ...] = ()  # builtins it calls that read globals by a run-time name
    outputs: tuple[str, ...] = ()  # global names only used as ``NAME.mutator(...)``
    stored: frozenset[str] = frozenset()  # attribute names it assigns (``w.calls += 1``)
    bare: frozenset[str] = frozenset()  # global names used other than as ``NAME.attr``
    # (``get_rate(cfg)``: a module passed on, whose attributes another function reads)


class _StripDocs(ast.NodeTransformer):
    """Remove docstrings, and the function's own decorators (its wrapper is walked instead),
    which do not change what it computes. Decorators of functions and classes defined in
    it stay: ``@times(3)`` on an inner function is code."""

    def __init__(self, depth: int = 0) -> None:
        self.depth = depth

    def _strip(self, node: Any) -> Any:
        self.depth += 1
        try:
            self.generic_visit(node)
        finally:
            self.depth -= 1
        body = node.body
        if (
            body
            and isinstance(body[0], ast.Expr)
            and isinstance(body[0].value, ast.Constant)
            and isinstance(body[0].value.value, str)
        ):
            node.body = body[1:] or [ast.Pass()]
        if hasattr(node, "decorator_list") and self.depth == 0:
            node.decorator_list = []
        return node

    visit_FunctionDef = visit_AsyncFunctionDef = visit_ClassDef = _strip


def _hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:32]


def _bytecode(code: types.CodeType) -> bytes:
    parts = [code.co_code, repr(code.co_names).encode(), repr(code.co_varnames).encode()]
    for const in code.co_consts:
        parts.append(
            _bytecode(const) if isinstance(const, types.CodeType) else repr(const).encode()
        )
    return hashlib.sha256(b"\0".join(parts)).digest()


def _codes(code: types.CodeType) -> Iterable[types.CodeType]:
    yield code
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            yield from _codes(const)


T = TypeVar("T")

_compiled: dict[str, tuple[tuple[float, int], dict[tuple[str, int], bytes]]] = {}


def _per_version(cache: dict[str, tuple[tuple[float, int], T]], path: str,
                 compute: Callable[[bytes], T]) -> T:  # fmt: skip
    """``compute`` of a file's bytes, once per version of the file (mtime and size)."""
    stat = os.stat(path)
    version = (stat.st_mtime, stat.st_size)
    cached = cache.get(path)
    if cached is not None and cached[0] == version:
        return cached[1]
    with open(path, "rb") as f:
        value = compute(f.read())
    cache[path] = (version, value)
    return value


def _file_codes(path: str) -> dict[tuple[str, int], bytes]:
    """Every code object of a file as it is on disk now, by (name, first line): its
    bytecode digest. Compiled once per version of the file."""

    def codes(source: bytes) -> dict[tuple[str, int], bytes]:
        compiled = compile(source, path, "exec", dont_inherit=True)
        return {(c.co_name, c.co_firstlineno): _bytecode(c) for c in _codes(compiled)}

    return _per_version(_compiled, path, codes)


def _compiled_matches(code: types.CodeType) -> bool:
    """Whether the file on disk still compiles to ``code`` (false when it was edited since
    it was imported): the whole file, so methods using ``super()`` and closures match."""
    try:
        theirs = _file_codes(code.co_filename).get((code.co_name, code.co_firstlineno))
    except (OSError, SyntaxError, ValueError):
        return False
    return theirs == _bytecode(code)


def _written_only(tree: ast.AST) -> set[str]:
    """Names used only as ``NAME.mutator(...)`` statements (appended to, logged to)."""
    mutated: set[int] = set()
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Expr)
            and isinstance(node.value, ast.Call)
            and isinstance(node.value.func, ast.Attribute)
            and node.value.func.attr in _MUTATORS
            and isinstance(node.value.func.value, ast.Name)
        ):
            mutated.add(id(node.value.func.value))
    used: dict[str, bool] = {}  # name -> only mutated so far
    for node in ast.walk(tree):
        if isinstance(node, ast.Name):
            used[node.id] = used.get(node.id, True) and id(node) in mutated
    return {name for name, only in used.items() if only}


def self_state(code: types.CodeType) -> frozenset[str]:
    """Attributes a method keeps on its object through its first parameter (``self``)."""
    hit = _self_states.get(id(code))
    if hit is not None and hit[0] is code:
        return hit[1]
    try:
        tree = parse(textwrap.dedent(inspect.getsource(code)))
        found = frozenset(_own_state(tree, code.co_varnames[0]))
    except (OSError, TypeError, SyntaxError, IndentationError, ValueError, IndexError):
        found = frozenset()
    _self_states[id(code)] = (code, found)
    return found


_self_states: dict[int, tuple[types.CodeType, frozenset[str]]] = {}


def _own_state(tree: ast.AST, own: str) -> set[str]:
    """Attributes a function keeps on itself: assigned (``w.calls += 1``), filled
    (``w.cache[x] = v``) or mutated (``w.seen.add(x)``) through its own name ``own``."""

    def own_attr(node: ast.AST) -> str | None:
        if (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name)
            and node.value.id == own
        ):
            return node.attr
        return None

    found: set[str] = set()
    for node in ast.walk(tree):
        targets: list[ast.AST] = []
        if isinstance(node, (ast.Assign, ast.AugAssign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr in _MUTATORS
        ):
            targets = [node.func.value]
        for target in targets:
            if isinstance(target, ast.Subscript):
                target = target.value
            name = own_attr(target)
            if name is not None:
                found.add(name)
    return found


_BY_NAME = frozenset({"getattr", "hasattr", "setattr", "delattr"})


def named_in_strings(tree: ast.AST) -> set[str]:
    """Attribute names given as strings: ``getattr(cfg, "RATE")``, ``vars(cfg)["RATE"]``,
    ``cfg.__dict__["RATE"]`` (other strings, such as dict keys, are not names)."""
    found: set[str] = set()
    for node in ast.walk(tree):
        text = None
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id in _BY_NAME
            and len(node.args) >= 2
            and isinstance(node.args[1], ast.Constant)
        ):
            text = node.args[1].value
        elif isinstance(node, ast.Subscript) and isinstance(node.slice, ast.Constant):
            of = node.value
            by_vars = (
                isinstance(of, ast.Call) and isinstance(of.func, ast.Name) and of.func.id == "vars"
            )
            by_dict = isinstance(of, ast.Attribute) and of.attr == "__dict__"
            text = node.slice.value if by_vars or by_dict else None
        if isinstance(text, str) and text.isidentifier():
            found.add(text)
    return found


_infos: dict[int, tuple[types.CodeType, CodeInfo]] = {}


def code_info(code: types.CodeType) -> CodeInfo:
    """What ``code`` is and reads (computed once per code object)."""
    hit = _infos.get(id(code))
    if hit is not None and hit[0] is code:
        return hit[1]
    info = _analyse(code)
    _infos[id(code)] = (code, info)
    return info


def _analyse(code: types.CodeType) -> CodeInfo:
    tree: ast.AST | None = None
    digest = None
    try:
        source = textwrap.dedent(inspect.getsource(code))
        tree = parse(source)
        if not os.path.isfile(code.co_filename) or _compiled_matches(code):
            digest = tree_digest(parse(source))
    except (OSError, TypeError, SyntaxError, IndentationError, ValueError):
        tree = None
    if digest is None:  # no source, or the file on disk is not what runs
        digest = "b" + _hex(_bytecode(code))[1:]
    return _reads(code, tree, digest, code.co_name)


_AST_LOCK = threading.Lock()


def parse(source: str | bytes, filename: str = "<unknown>") -> ast.Module:
    """``ast.parse``, one thread at a time: before 3.12, CPython keeps the AST converter's
    recursion depth per interpreter, so steps first digested in several threads at once could
    fail with ``SystemError: AST constructor recursion depth mismatch`` (and run again)."""
    with _AST_LOCK:
        return ast.parse(source, filename)


def tree_digest(tree: ast.AST, *, decorators: bool = False) -> str:
    """Digest of code by its AST: comments, whitespace and docstrings do not count, nor the
    decorators of a function at the top of ``tree`` (its wrapper is walked instead) unless
    ``decorators`` (a cell's own functions keep theirs). ``tree`` is changed."""
    stripped = _StripDocs(depth=1 if decorators else 0).visit(tree)
    return _hex(ast.dump(stripped, annotate_fields=False).encode())


def module_info(tree: ast.Module, filename: str) -> CodeInfo:
    """What the module-level code ``tree`` (a notebook cell's statements) reads, by the
    analysis a step's function gets: compiled, its bytecode read for the names it loads,
    the attributes it uses, the modules it imports, the names passed on whole; its digest
    ignores comments and formatting. Raises SyntaxError as ``compile`` does."""
    with _AST_LOCK:
        code = compile(tree, filename, "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT,
                       dont_inherit=True)  # fmt: skip
    return _reads(code, tree, tree_digest(copy.deepcopy(tree), decorators=True), None)


def _reads(code: types.CodeType, tree: ast.AST | None, digest: str, own: str | None) -> CodeInfo:
    """The names ``code`` (and the code nested in it) reads, with ``tree``, its source's AST
    when known (for what the bytecode cannot tell: names in strings, names only written to,
    attributes kept on ``own``, the function's own name)."""
    written = _written_only(tree) if tree is not None else set()
    names: set[str] = set()
    attrs: set[str] = set()
    imports: dict[tuple[str, int, tuple[str, ...]], None] = {}
    bare: set[str] = set()
    stored = _own_state(tree, own) if tree is not None and own else set()
    attrs.update(named_in_strings(tree) if tree is not None else ())
    for c in _codes(code):
        attrs.update(c.co_names)
        if tree is None:  # no source to tell getattr(cfg, "RATE") from a dict key: any name
            attrs.update(k for k in c.co_consts if isinstance(k, str) and k.isidentifier())
        consts: list[Any] = [None, None]
        pending = None  # a global just loaded: bare unless an attribute of it is read next
        for ins in dis.get_instructions(c):
            if pending is not None:
                if ins.opname not in ("LOAD_ATTR", "LOAD_METHOD"):
                    bare.add(pending)
                pending = None
            if ins.opname in ("LOAD_GLOBAL", "LOAD_NAME"):
                names.add(ins.argval)
                pending = ins.argval
            elif ins.opname in ("LOAD_CONST", "LOAD_SMALL_INT"):
                consts = [consts[1], ins.argval]
            elif ins.opname == "IMPORT_NAME":  # after the level and the fromlist constants
                level = consts[0] if isinstance(consts[0], int) else 0
                fromlist = tuple(consts[1]) if isinstance(consts[1], tuple) else ()
                imports[(ins.argval, level, fromlist)] = None
    freevars = tuple(name not in written for name in code.co_freevars)
    return CodeInfo(
        digest, tuple(sorted(names - written)), freevars, frozenset(attrs), tuple(imports),
        tuple(sorted(names & _DYNAMIC)), tuple(sorted(names & written)), frozenset(stored),
        frozenset(bare),
    )  # fmt: skip


def code_digest(fn: Any) -> str:
    """Digest of a callable's own code (AST, or bytecode when there is no source)."""
    while isinstance(fn, functools.partial):
        fn = fn.func
    fn = inspect.unwrap(fn)
    code = getattr(fn, "__code__", None)
    if isinstance(code, types.CodeType):
        return code_info(code).digest
    name = getattr(fn, "__qualname__", type(fn).__qualname__)
    return _hex(f"{getattr(fn, '__module__', '')}.{name}".encode())


# -- whose code it is -------------------------------------------------------------------


def _installed_roots() -> tuple[str, ...]:
    paths = sysconfig.get_paths()
    roots = {paths[k] for k in ("stdlib", "platstdlib", "purelib", "platlib") if k in paths}
    roots.add(os.path.dirname(os.__file__))
    return tuple(os.path.realpath(r) + os.sep for r in roots)


_ROOTS: tuple[str, ...] | None = None
_user_modules: dict[str, bool] = {}


def is_user_module(name: str | None) -> bool:
    """Whether module ``name`` is the user's own: the notebook, or a file outside
    site-packages and the standard library (durable_nb itself is not)."""
    if name is None:
        return False
    known = _user_modules.get(name)
    if known is not None:
        return known
    top = name.partition(".")[0]
    mine = name == "__main__"
    if not mine and top != "durable_nb":  # (a user's statistics.py is not the stdlib's:
        module = sys.modules.get(name)  # its file tells)
        if module is None:  # not imported (yet): not cached
            return False
        file = getattr(module, "__file__", None)
        mine = bool(file) and is_user_file(file)
    _user_modules[name] = mine
    return mine


def is_user_file(file: str) -> bool:
    """Whether a source file is the user's own: outside site-packages and the stdlib."""
    global _ROOTS
    if _ROOTS is None:
        _ROOTS = _installed_roots()
    path = os.path.realpath(file)
    return not path.startswith(_ROOTS) and (
        os.sep + "site-packages" + os.sep not in path
        and os.sep + "dist-packages" + os.sep not in path
    )


def find_module(name: str) -> Any:
    """The spec of module ``name`` without importing anything (not even its parents, whose
    folders are searched instead), or None."""
    parts = name.split(".")
    spec = None
    for i in range(len(parts)):
        prefix = ".".join(parts[: i + 1])
        loaded = sys.modules.get(prefix)
        if loaded is not None:
            spec = getattr(loaded, "__spec__", None)
        elif i == 0:
            spec = importlib.util.find_spec(prefix)  # a top-level name imports nothing
        else:
            places = spec.submodule_search_locations if spec is not None else None
            spec = importlib.machinery.PathFinder.find_spec(prefix, places) if places else None
        if spec is None:
            return None
    return spec


def module_source(name: str) -> tuple[str, str | None]:
    """Where ``import name`` would load from, importing nothing: ("user", its file) for the
    user's own, ("installed", file), ("builtin", None) or ("missing", None)."""
    try:
        spec = find_module(name)
    except (ImportError, ValueError):
        return "missing", None
    if spec is None:
        return "missing", None
    origin = spec.origin
    if not origin or not os.path.isfile(origin):
        return "builtin", None
    return ("user" if is_user_file(origin) else "installed"), origin


def module_digest(name: str) -> str:
    """What ``import name`` would load, importing nothing: the user's own file by its
    contents, with the user's modules it imports in turn (found in its source, and so on);
    an installed module by its package's version."""
    kind, origin = module_source(name)
    if kind == "user":
        files = _user_files(name, origin)  # type: ignore[arg-type]
        if len(files) == 1:  # the form older logs stored
            with open(origin, "rb") as f:  # type: ignore[arg-type]
                return "file " + xxh3_128_hexdigest(f.read())
        hasher = xxh3_128()
        for module, path in files:
            with open(path, "rb") as f:
                hasher.update(module.encode() + b"\0" + f.read() + b"\0")
        return "file " + hasher.hexdigest()
    if kind == "installed":
        return f"installed {package_version(name.partition('.')[0])}"
    return kind


def _user_files(name: str, origin: str) -> list[tuple[str, str]]:
    """The user's modules that importing ``name`` (from ``origin``) loads, itself first: the
    ones its source imports (anywhere in it), and theirs, and the packages around them."""
    found = {name: origin}
    queue = [(name, origin)]
    while queue:
        module, path = queue.pop()
        package = module if os.path.basename(path) == "__init__.py" else module.rpartition(".")[0]
        for target, level, fromlist in _file_imports(path):
            try:
                base = importlib.util.resolve_name("." * level + target, package or None)
            except (ImportError, ValueError):
                continue
            names = [base, *(f"{base}.{n}" for n in fromlist if n != "*")]
            parts = base.split(".")
            names += [".".join(parts[:i]) for i in range(1, len(parts))]  # its packages
            for candidate in names:
                if candidate in found:
                    continue
                kind, where = module_source(candidate)
                if kind == "user" and where is not None:
                    found[candidate] = where
                    queue.append((candidate, where))
    first = [(name, origin)]
    return first + sorted((m, p) for m, p in found.items() if m != name)


_imports_of: dict[str, tuple[tuple[float, int], list[tuple[str, int, tuple[str, ...]]]]] = {}


def _file_imports(path: str) -> list[tuple[str, int, tuple[str, ...]]]:
    """The imports in a source file, as (module, level, names): parsed once per version."""

    def imports(source: bytes) -> list[tuple[str, int, tuple[str, ...]]]:
        found: list[tuple[str, int, tuple[str, ...]]] = []
        for node in ast.walk(parse(source, path)):
            if isinstance(node, ast.Import):
                found += [(alias.name, 0, ()) for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = tuple(alias.name for alias in node.names)
                found.append((node.module or "", node.level, names))
        return found

    try:
        return _per_version(_imports_of, path, imports)
    except (OSError, SyntaxError, ValueError):
        return []


def star_names(name: str) -> frozenset[str] | None:
    """The names ``from name import *`` binds: read off the module when it is imported,
    else off its source (a literal ``__all__``, or its top-level names), importing nothing;
    None when the source cannot tell (``__all__`` built at run time, a star import of its
    own, no source)."""
    module = sys.modules.get(name)
    if module is not None:
        names = getattr(module, "__all__", None)
        if names is None:
            return frozenset(n for n in vars(module) if not n.startswith("_"))
        return frozenset(names) if all(isinstance(n, str) for n in names) else None
    origin = module_source(name)[1]
    if origin is None or not origin.endswith(".py"):
        return None
    try:
        return _per_version(_star_names, origin, _top_names)
    except (OSError, ValueError):
        return None


def _stored_here(node: ast.AST) -> Iterable[str]:
    """Names stored by an expression or target in its own scope (not in comprehensions or
    lambdas, which have scopes of their own)."""
    stack = [node]
    while stack:
        item = stack.pop()
        if isinstance(item, ast.Name) and isinstance(item.ctx, ast.Store):
            yield item.id
        elif not isinstance(item, (ast.Lambda, ast.ListComp, ast.SetComp, ast.DictComp,
                                   ast.GeneratorExp)):  # fmt: skip
            stack.extend(ast.iter_child_nodes(item))


_star_names: dict[str, tuple[tuple[float, int], frozenset[str] | None]] = {}


def _top_names(source: bytes) -> frozenset[str] | None:
    """What a star import of this source surely binds: a literal ``__all__``, else the
    public names its top level binds unconditionally (not in ``if``/``try``/loops, and not
    deleted); None when it cannot be told (a star import of its own)."""
    try:
        tree = parse(source)
    except SyntaxError:
        return None
    deleted: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)) and any(
            alias.name == "*" for alias in node.names
        ):
            return None
        if isinstance(node, ast.Delete):
            for target in node.targets:
                deleted.update(n.id for n in ast.walk(target) if isinstance(n, ast.Name))
    names: set[str] = set()
    for node in tree.body:  # the module's own top level only: what surely runs
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names.update((a.asname or a.name).split(".")[0] for a in node.names)
        elif isinstance(node, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for target in targets:
                names.update(_stored_here(target))
            if isinstance(node, ast.Assign) and any(
                isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets
            ):
                try:
                    return frozenset(ast.literal_eval(node.value)) - deleted
                except ValueError:
                    return None
    return frozenset(n for n in names - deleted if not n.startswith("_"))


_versions: dict[str, str | None] = {}


def package_version(top: str) -> str | None:
    """The version of the installed distribution that provides top-level module ``top``."""
    if top in _versions:
        return _versions[top]
    version = getattr(sys.modules.get(top), "__version__", None)
    if not isinstance(version, str):
        version = None
        try:
            from importlib import metadata

            for dist in metadata.packages_distributions().get(top, [top]):
                try:
                    version = metadata.version(dist)
                    break
                except metadata.PackageNotFoundError:
                    continue
        except Exception:  # a broken distribution's metadata is not the user's problem
            version = None
    _versions[top] = version
    return version


def installed_package(module: str | None) -> str | None:
    """The top-level package of an installed module, or None for the stdlib and builtins."""
    if not module:
        return None
    top = module.partition(".")[0]
    if top in sys.stdlib_module_names or top == "builtins" or top.startswith("_"):
        return None
    return top


def display_name(fn: Callable[..., Any]) -> str:
    """A function's qualified name without the ``<locals>`` of enclosing functions."""
    while isinstance(fn, functools.partial):
        fn = fn.func
    qualname = getattr(fn, "__qualname__", None) or type(fn).__qualname__
    return qualname.rpartition("<locals>.")[2]
