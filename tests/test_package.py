"""Package hygiene: public names, import weight, lint."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import durable_nb

from .conftest import ROOT


def test_all_is_sorted_and_complete() -> None:
    assert list(durable_nb.__all__) == sorted(durable_nb.__all__)
    for name in durable_nb.__all__:
        assert getattr(durable_nb, name).__doc__, f"{name} needs a docstring"


def test_import_is_light() -> None:
    code = (
        "import sys, durable_nb\n"
        "heavy = {'IPython', 'pandas', 'ipywidgets', 'boto3', 'matplotlib', 'nbclient'}\n"
        "print(sorted(heavy & set(sys.modules)))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_ruff_is_clean() -> None:
    ruff = shutil.which("ruff", path=str(Path(sys.executable).parent)) or shutil.which("ruff")
    assert ruff, "ruff is in the test extra"
    for args in (["check"], ["format", "--check"]):
        result = subprocess.run(
            [ruff, *args, "durable_nb", "tests", "benchmarks"],
            cwd=ROOT, capture_output=True, text=True,
        )  # fmt: skip
        assert result.returncode == 0, result.stdout + result.stderr


WINGS = ["notebook", "backup", "views", "replay", "log"]  # imports point down this list


def _imports() -> dict[str, set[str]]:
    """Each module of the package -> the modules of the package it imports (module level and
    inside functions, not under ``if TYPE_CHECKING:``), read with ast."""
    import ast

    pkg = ROOT / "durable_nb"
    modules = {".".join(p.relative_to(pkg).with_suffix("").parts): p for p in pkg.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        tree = ast.parse(path.read_text())
        typing_only = {
            id(n)
            for node in ast.walk(tree)
            if isinstance(node, ast.If) and getattr(node.test, "id", None) == "TYPE_CHECKING"
            for n in ast.walk(node)
        }
        here = name.split(".")[:-1]
        found = set()
        for node in ast.walk(tree):
            if not isinstance(node, ast.ImportFrom) or id(node) in typing_only:
                continue
            if node.level:
                base = here[: len(here) - node.level + 1]
            elif (node.module or "").startswith("durable_nb"):
                base, node.module = [], (node.module or "").removeprefix("durable_nb").lstrip(".")
            else:
                continue
            target = [*base, *(node.module.split(".") if node.module else [])]
            for alias in node.names:
                whole = ".".join([*target, alias.name])
                found.add(whole if whole in modules else ".".join(target) or "__init__")
        graph[name] = {m for m in found if m != name and not m.endswith("__init__")}
    return graph


def test_wings_import_downwards_only() -> None:
    for module, targets in _imports().items():
        wing = module.split(".")[0] if "." in module else None
        if wing is None:  # __init__, cli, errors: the top may import any wing
            continue
        for target in targets:
            other = target.split(".")[0] if "." in target else target
            assert other in WINGS or other == "errors", f"{module} imports the top: {target}"
            if other in WINGS:
                assert WINGS.index(other) >= WINGS.index(wing), f"{module} imports up: {target}"


def test_no_import_circle_and_no_long_module() -> None:
    graph = _imports()
    for start in graph:  # a path from a module back to itself is a circle
        stack, seen = list(graph[start]), set()
        while stack:
            module = stack.pop()
            assert module != start, f"{start} is in an import circle"
            if module not in seen and module in graph:
                seen.add(module)
                stack.extend(graph[module])
    for path in (ROOT / "durable_nb").rglob("*.py"):
        lines = len(path.read_text().splitlines())
        assert lines <= 700, f"{path.relative_to(ROOT)}: {lines} lines, one module doing two jobs"
