"""nbval set-up: tell each notebook's kernel which notebook it runs, so its log is its own."""

from __future__ import annotations

import os

import pytest


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    # nbval starts the kernel when the notebook's first cell is set up, after this hook.
    path = getattr(item.parent, "path", None)
    if path is not None and str(path).endswith(".ipynb"):
        os.environ["DURABLE_NB_NOTEBOOK"] = str(path)
