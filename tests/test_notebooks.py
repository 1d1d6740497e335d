"""The example notebooks under nbval, twice: computing on an empty log, then replaying."""

from __future__ import annotations

import os
import re
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import ROOT

NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))


def nbval(folder: Path, notebook: str) -> subprocess.CompletedProcess[str]:
    cmd = [
        sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "--nbval", notebook,
        "--nbval-current-env",
    ]  # fmt: skip  # the notebook path and the sanitizer come from durable_nb's plugin
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("DURABLE_NB_DB", None)
    return subprocess.run(cmd, cwd=folder, env=env, capture_output=True, text=True, timeout=600)


@pytest.mark.parametrize("notebook", [p.name for p in NOTEBOOKS])
def test_notebook_computes_then_replays(tmp_path: Path, notebook: str) -> None:
    folder = tmp_path / "notebooks"
    shutil.copytree(ROOT / "notebooks", folder, ignore=shutil.ignore_patterns(".durable"))
    computing = nbval(folder, notebook)
    assert computing.returncode == 0, computing.stdout[-3000:]
    completed = completed_steps(folder)
    assert completed, "the notebook computed nothing durable"
    replaying = nbval(folder, notebook)
    assert replaying.returncode == 0, replaying.stdout[-3000:]
    assert re.search(r"\d+ passed", replaying.stdout)
    # the second pass ran on the first pass's logs: every step replayed, none was computed
    assert completed_steps(folder) == completed


def completed_steps(folder: Path) -> dict[str, int]:
    """Completed step records per log the notebooks wrote (restored copies aside)."""
    counts = {}
    for log in sorted(folder.rglob(".durable/*.db")):
        if "copy" in log.name or "restored" in log.name:
            continue
        conn = sqlite3.connect(log)
        try:
            query = "SELECT count(*) FROM steps WHERE status = 'completed'"
            counts[str(log.relative_to(folder))] = conn.execute(query).fetchone()[0]
        finally:
            conn.close()
    return counts


def test_readme_first_command_runs_the_quickstart(tmp_path: Path) -> None:
    """The README's first command, verbatim, on a fresh clone with a new virtualenv."""
    readme = (ROOT / "README.md").read_text()
    block = readme.split("```bash", 1)[1].split("```", 1)[0]
    first = block.strip().splitlines()[0]
    assert "durable-nb run" in first
    if not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True)
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "DURABLE_NB_DB")}
    result = subprocess.run(
        first, shell=True, cwd=clone, env=env, capture_output=True, text=True, timeout=900
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    log = clone / "notebooks" / ".durable" / "01_quickstart.db"
    assert f"log: {log}" in result.stdout
    assert log.exists()


def test_a_users_own_notebook_passes_nbval_twice(tmp_path: Path) -> None:
    """No conftest, no sanitizer file: durable_nb's pytest plugin names the notebook for its
    kernel and brings the sanitizer, so computing and replaying give the same outputs."""
    import nbformat

    from .kernels import notebook

    nb = notebook(
        "%load_ext durable_nb",
        "from durable_nb import step\n@step\ndef square(x):\n    print('squaring', x)\n"
        "    return x * x\n",
        "%%durable mine\nvalues = [square(i) for i in range(3)]\nvalues",
    )
    nbformat.write(nb, str(tmp_path / "mine.ipynb"))
    for _ in range(2):
        result = nbval(tmp_path, "mine.ipynb")
        assert result.returncode == 0, result.stdout[-3000:]
    assert (tmp_path / ".durable" / "mine.db").exists()  # its own log, beside it
    assert not (tmp_path / ".durable" / "default.db").exists()
