"""What a step depends on, and its digest: the part of the replay rule that sees code changes.

A step's *dependency digest* decides, with its key, whether a stored result may be replayed
(PRODUCT §3). It covers, transitively, starting from the step's function:

- the code of the function and of every function, class (its methods and class attributes),
  ``functools.partial``, bound method and nested ``@step`` it references that is the user's
  own: defined in the notebook (``__main__``) or in a module outside site-packages and the
  standard library, reached through a global name, a closure cell, a default value, an
  attribute of a user module (``helpers.f``) or an argument (a callback, an instance of a
  notebook class);
- the values of the module-level globals and closure variables those functions read, by the
  canonical value digest (``digests.value_digest``);
- not installed packages: their modules, functions and classes are *recorded* (name and
  version, for the run's environment) and count only with ``track_versions=True``.

A name the code only mutates through a statement such as ``log.append(x)`` or
``logger.info(...)`` (and never reads otherwise) is an output of the step, not an input, and
is left out; unless it names code (``helpers.update(d)``: the module's function counts) or an
object of the user's class (``aug.add(d)``: its method may read its state), which count as
any name read. Values that cannot be digested count by their type and are listed as such.

When values are read: at each call (a value that may change in place is checked at each
call by a fast digest of its pickle). A value whose digest is costly (more than ~256 KiB of
data: a big array, a DataFrame, a model, a table of 10,000 entries) is hashed once per run
per object; binding the name
to another object is seen at the next call; a big numpy array changed in place is seen at
the next call when a sample of 512 of its elements changed (``arr += 1``, ``arr[:] = ...``;
a change of a few elements may be missed until the next run); other big objects changed in
place during a run are seen from the next run on.

Modules a function imports in its body count as module globals do (the attributes it uses;
a user module not imported yet is imported when the call is digested; names given to
``getattr`` or ``vars(m)[...]`` as strings count as attributes). Code that calls
``eval``, ``exec`` or ``globals()`` reads names known only when it runs: it cannot be judged,
and runs every time. A decorator of the user's own under ``@step`` is the step's code (its
closure counts); installed wrappers are looked through.

Code digests ignore comments, whitespace, docstrings and decorator lines (they hash the
AST). A function from a file that was edited on disk but not re-imported is digested by its
bytecode, so the digest always describes the code that runs.

The walk itself is ``walk.Walk``; why a call runs again is said by ``reasons.explain``.
"""

from __future__ import annotations

import functools
import os
import sys
import types
import warnings
from collections.abc import Callable, Iterable
from typing import Any

from xxhash import xxh3_128_hexdigest

from ..errors import DurableWarning, user_stacklevel
from .codeinfo import code_digest, is_user_file, is_user_module, package_version
from .digests import PRIMITIVES
from .walk import Digest, Entry, RunDependencies, RunTimeNames, Walk, public_names

__all__ = ["StepDependencies", "cell_inputs", "module_state"]


_warned: set[tuple[str, str]] = set()  # (step, label) said once per process


def _user_code(fn: types.FunctionType) -> bool:
    """Whether a function's code is in a file of the user's (functools.wraps copies
    ``__module__`` from the function it wraps, so the module name cannot tell)."""
    filename = fn.__code__.co_filename
    if filename.startswith("<"):  # the notebook's cells, exec'd code
        return is_user_module(fn.__module__)
    return is_user_file(filename)


def _where(obj: Any) -> list[str]:
    """[module, qualname] of a function or class ("" for what cannot be found again)."""
    qualname = getattr(obj, "__qualname__", "")
    if not isinstance(qualname, str) or "<locals>" in qualname or isinstance(obj, types.MethodType):
        return ["", ""]  # a local, or a method bound to an object: not found again by name
    return [getattr(obj, "__module__", "") or "", qualname]


def _resolve(module: str, qualname: str) -> Any:
    """The object ``_where`` described, as it is now, or None."""
    obj: Any = sys.modules.get(module) if module else None
    for part in qualname.split(".") if obj is not None else ():
        obj = getattr(obj, part, None)
    return obj


def cell_inputs(
    namespace: dict[str, Any], names: Iterable[str], attrs: frozenset[str],
    bare: frozenset[str], imports: Iterable[tuple[str, int, tuple[str, ...]]],
    run: RunDependencies,
) -> tuple[Digest, Walk, str | None]:  # fmt: skip
    """(digest, walk, why it cannot be judged) of what a notebook cell reads, by the walk a
    step's function gets, the cell's body standing for the function's: the values of the
    names it reads (code with what it depends on, a module by the attributes used, or whole
    when passed on), and each module it imports by what importing it would load (nothing
    is imported here). The walk watches what it read: ``Walk.changed`` tells afterwards
    what the cell changed in place."""
    walk = Walk(run, watch=True)
    unreadable = None
    for name in names:
        try:
            walk.names(namespace, (name,), attrs, bare)
        except (Exception, RecursionError) as exc:  # cannot be read: cannot be judged
            why = str(exc) if isinstance(exc, RunTimeNames) else type(exc).__name__
            unreadable = unreadable or f"what {name} depends on cannot be read ({why})"
            walk.entries.append(Entry(f"global {name}", f"unjudged:{os.urandom(8).hex()}"))
    for module, level, fromlist in imports:
        walk.imported(module, level, fromlist, namespace, attrs, load=False)
    held: dict[int, list[str]] = {}  # which names hold one object counts too (b = a, then
    for name in names:  # a.append(1) changes b)
        value = namespace.get(name)
        if value is not None and type(value) not in PRIMITIVES:
            held.setdefault(id(value), []).append(name)
    for group in sorted(g for g in held.values() if len(g) > 1):
        walk.entries.append(Entry(f"identity {' is '.join(group)}", "same"))
    value = _combine(walk.entries)
    return Digest(value, value, walk.entries, walk.packages, walk.opaque), walk, unreadable


def module_state(module: types.ModuleType, run: RunDependencies) -> dict[str, str]:
    """What a module of the user's holds now, by label (``global cfg.RATE``): all its
    attributes, with what they depend on; compared to tell whether a module is as a cell
    left it."""
    walk = Walk(run)
    walk.reference(module.__name__, module, public_names(module))
    return {entry.label: entry.digest for entry in walk.entries}


def _combine(entries: Iterable[Entry]) -> str:
    return xxh3_128_hexdigest("\0".join(f"{e.label}\1{e.digest}" for e in entries).encode())


class StepDependencies:
    """How to digest the calls of one step function."""

    __slots__ = ("fn", "name", "target", "track_versions")

    def __init__(self, fn: Callable[..., Any], name: str, *, track_versions: bool = False) -> None:
        self.fn = fn
        self.name = name
        self.track_versions = track_versions
        target = fn
        while isinstance(target, functools.partial):
            target = target.func
        # Through installed wrappers (lru_cache, torch.no_grad) to the user's code; a wrapper
        # of the user's own is that code: its closure (n in @times(n)) counts, and it leads
        # on to the function it wraps.
        seen = {id(target)}  # (a __wrapped__ cycle ends it)
        while not (isinstance(target, types.FunctionType) and _user_code(target)):
            if not isinstance(target, types.FunctionType) and is_user_module(
                getattr(type(target), "__module__", None)
            ):  # a wrapper object of the user's class: its code and state count
                break
            inner = getattr(target, "__wrapped__", None)
            if inner is None or id(inner) in seen:
                break
            seen.add(id(inner))
            target = inner
        self.target = target

    def digest(self, run: RunDependencies, code: Iterable[Any] = ()) -> Digest:
        """The dependency digest of a call, read now; ``code`` is what its arguments hold
        besides plain values (callbacks, steps, the classes of the user's objects), as
        ``digests.args_digest`` found it."""
        try:
            walk = run.walks.get(self)
            if walk is None or not walk.unchanged():
                walk = run.walks[self] = self._walk(run)
            base = walk.digest
            assert base is not None
            if not code:
                return base
            objs = list(dict.fromkeys(code))
            key = (self, *map(id, objs))
            hit = run.arguments.get(key)
            if hit is not None and hit[0] is base and hit[1].unchanged():
                return hit[2]
            digest, walk = self._with_arguments(run, base, [(obj, _where(obj)) for obj in objs])
            run.arguments[key] = (base, walk, digest, objs)  # objs: their ids stay theirs
            return digest
        except (Exception, RecursionError) as exc:  # what it reads cannot be read: run it
            self.say_once(
                "unreadable",
                f"step {self.name}: {exc}, which reads globals by a name known only when it "
                "runs, so what it depends on cannot be known: it runs every time"
                if isinstance(exc, RunTimeNames)
                else f"step {self.name}: what it depends on cannot be read "
                f"({type(exc).__name__}: {str(exc)[:80]}), so it cannot be judged: it runs "
                "every time",
            )
            unjudged = f"unjudged:{os.urandom(8).hex()}"  # matches no record: it runs
            return Digest(unjudged, unjudged, [], set(), ["dependencies"])

    def current(self, run: RunDependencies, refs: list[list[str]]) -> Digest | None:
        """The digest a call whose arguments brought ``refs`` (``Digest.refs``) would have
        now, found again by name; None when one of them cannot be found."""
        base = self.digest(run)
        found = [(_resolve(module, qualname), [module, qualname]) for _, module, qualname in refs]
        if any(obj is None for obj, _ in found):
            return None
        return self._with_arguments(run, base, found)[0] if found else base

    def still_valid(self, run: RunDependencies, value: str, refs: list[list[str]]) -> bool | None:
        """Whether a call that had digest ``value`` would have it now (None: cannot tell)."""
        now = self.current(run, refs)
        return None if now is None else now.value == value

    def _with_arguments(
        self, run: RunDependencies, base: Digest, found: list[tuple[Any, list[str]]]
    ) -> tuple[Digest, Walk]:
        extra = Walk(run)
        for i, (obj, where) in enumerate(found):
            label = f"argument {i}"
            extra.reference(label, obj, frozenset(), kind="argument")
            extra.refs.append([label, *where])
        if not extra.entries:
            return base, extra
        entries = base.entries + extra.entries
        run.packages |= extra.packages
        packages = base.packages | extra.packages
        opaque = base.opaque + extra.opaque
        digest = Digest(_combine(entries), base.base, entries, packages, opaque, extra.refs)
        return digest, extra

    def _walk(self, run: RunDependencies) -> Walk:
        walk = Walk(run)
        fn = self.target
        if isinstance(fn, types.FunctionType):
            walk.function(fn, f"step {self.name}")
        else:  # a callable object: its class's code, or an installed function's name
            walk.entries.append(Entry(f"code step {self.name}", code_digest(fn)))
            walk.reference(self.name, fn, frozenset(), kind="callable")
        if self.track_versions:
            walk.packages.add("python")
            for top in sorted(walk.packages):
                version = sys.version.split()[0] if top == "python" else package_version(top)
                walk.entries.append(Entry(f"version {top}", version or "unknown", version))
        # A step that depends on nothing but its own code keeps the digest of that code: the
        # digest older logs stored, so their records of such steps still replay.
        own = walk.entries[0]
        alone = len(walk.entries) == 1 and own.label == f"code step {self.name}"
        base = own.digest if alone else _combine(walk.entries)
        walk.digest = Digest(base, base, walk.entries, walk.packages, walk.opaque)
        run.packages |= walk.packages
        if walk.opaque:
            self._warn_opaque(walk.opaque)
        return walk

    def _warn_opaque(self, opaque: list[str]) -> None:
        for label in opaque:
            self.say_once(
                label,
                f"step {self.name}: {label.partition(' ')[2]} cannot be digested, so only its "
                "type counts for replay; a change to it is not seen (pass what the step needs "
                "of it as arguments)",
            )

    def say_once(self, key: str, message: str) -> None:
        """Warn ``message`` once per process for this step and ``key``."""
        if (self.name, key) not in _warned:
            _warned.add((self.name, key))
            warnings.warn(message, DurableWarning, stacklevel=user_stacklevel())
