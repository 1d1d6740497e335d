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
