"""nbval set-up for durable notebooks, loaded by pytest with durable_nb installed.

``pytest --nbval my.ipynb`` then works on a user's own notebooks as on ours:

- each notebook's kernel is told which notebook it runs (``DURABLE_NB_NOTEBOOK``), so its
  log is ``.durable/<notebook>.db`` beside it, as in JupyterLab, and a second pass replays;
- unless ``--nbval-sanitize-with`` names a file, the sanitizer shipped with durable_nb
  (``nbval_sanitize.cfg``: the status line of a durable cell and the ``[replayed]`` marks
  vary between passes) is used. ``durable-nb nbval-sanitizer`` prints its path, to copy
  its rules into a file of your own.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

__all__ = ["SANITIZER"]

SANITIZER = Path(__file__).with_name("nbval_sanitize.cfg")
"""nbval sanitizer rules for the output of durable cells."""


@pytest.hookimpl(trylast=True)  # after nbval's own (which maps an old option name)
def pytest_configure(config: Any) -> None:
    """Use durable_nb's sanitizer when nbval runs and no other was given."""
    option = config.option
    nbval = getattr(option, "nbval", False) or getattr(option, "nbval_lax", False)
    if nbval and getattr(option, "nbval_sanitize_with", "") is None:
        option.nbval_sanitize_with = str(SANITIZER)


_UNSET = object()
_before: Any = _UNSET  # DURABLE_NB_NOTEBOOK as it was before a notebook's items


@pytest.hookimpl(tryfirst=True)  # nbval starts the kernel when the first cell is set up
def pytest_runtest_setup(item: Any) -> None:
    """Before a notebook's first cell starts its kernel: name the notebook."""
    global _before
    path = getattr(item.parent, "path", None)
    if path is not None and str(path).endswith(".ipynb"):
        if _before is _UNSET:
            _before = os.environ.get("DURABLE_NB_NOTEBOOK")
        os.environ["DURABLE_NB_NOTEBOOK"] = str(path)
    elif _before is not _UNSET:  # tests after the notebooks see the environment they had
        _restore()


def pytest_sessionfinish(session: Any) -> None:
    """Put ``DURABLE_NB_NOTEBOOK`` back as it was."""
    if _before is not _UNSET:
        _restore()


def _restore() -> None:
    global _before
    if _before is None:
        os.environ.pop("DURABLE_NB_NOTEBOOK", None)
    else:
        os.environ["DURABLE_NB_NOTEBOOK"] = _before
    _before = _UNSET
