"""The restore panel in a real JupyterLab, in headless Chromium (Debian's, driven by
playwright; no browser download). Server and browser stay on 127.0.0.1."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nbformat
import pytest

import durable_nb
from durable_nb import step, workflow
from durable_nb.log.current_log import close_log

from .conftest import ROOT
from .test_replication import free_port, wait_port

CHROMIUM = "/usr/bin/chromium"
SCREENSHOT = ROOT / "test-output" / "restore-panel.png"


@step
def item(i: int) -> int:
    return i + 100


def require_chromium() -> None:
    """Debian's chromium drives the test. Without it the test is skipped, saying how to get
    it; under CI (``CI=true``, as ``.ci/run`` sets) a missing browser is a failure."""
    if shutil.which("chromium") or Path(CHROMIUM).exists():
        return
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail("Debian's chromium is missing under CI: .ci/run installs it (apt-get)")
    pytest.skip("Debian's chromium is not installed: apt-get install chromium runs this test")


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A JupyterLab server on 127.0.0.1 with a token, serving ``tmp_path``; its log goes to
    ``tmp_path / "jupyter.log"``."""
    require_chromium()
    port, token = free_port(), secrets.token_hex(16)
    settings = tmp_path / ".jlab-settings" / "@jupyterlab" / "apputils-extension"
    settings.mkdir(parents=True)
    # no "get Jupyter news?" toast: it would take the keyboard focus (and asks the internet)
    (settings / "notification.jupyterlab-settings").write_text('{"fetchNews": "false"}')
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "JUPYTER_CONFIG_DIR": str(tmp_path / ".jcfg"),
        "JUPYTERLAB_SETTINGS_DIR": str(tmp_path / ".jlab-settings"),
    }
    env.pop("DURABLE_NB_DB", None)
    env.pop("DURABLE_NB_NOTEBOOK", None)
    log = (tmp_path / "jupyter.log").open("wb")
    server = subprocess.Popen(
        [
            sys.executable, "-m", "jupyterlab", "--no-browser", "--ServerApp.ip=127.0.0.1",
            f"--ServerApp.port={port}", f"--IdentityProvider.token={token}",
            f"--ServerApp.root_dir={tmp_path}", "--LabApp.news_url=None",
            "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
            "--LabApp.extension_manager=readonly", "--allow-root",
        ],
        cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        wait_port(port, timeout=60)
        yield f"http://127.0.0.1:{port}", token
    finally:
        server.terminate()
        server.wait(timeout=30)
        log.close()


def wait_for_idle_kernel(url: str, token: str, timeout: float = 90) -> None:
    """Until the notebook's kernel has started and is idle (keys sent before are lost)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{url}/api/kernels?token={token}", timeout=5) as reply:
                kernels = json.load(reply)
        except urllib.error.HTTPError as e:
            # jupyter_server answers 500 to a listing that lands while a kernel is being
            # registered (its model has no last_activity yet): ask again
            if e.code < 500:
                raise
            time.sleep(0.25)
            continue
        if kernels and all(k["execution_state"] == "idle" for k in kernels):
            time.sleep(1)
            return
        time.sleep(0.25)
    raise AssertionError("the notebook's kernel never became idle")


def launch(playwright: Any) -> Any:
    """Debian's Chromium, headless, quiet (no sandbox: tests run as root)."""
    return playwright.chromium.launch(
        executable_path=CHROMIUM,
        args=["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
              "--disable-background-networking", "--disable-component-update",
              "--disable-sync"],
    )  # fmt: skip


def run_first_cell(page: Any, address: str, url: str, token: str) -> None:
    """Open the notebook and run its first cell; a page that lost its kernel connection
    while starting (seen now and then) is loaded again."""
    from playwright.sync_api import expect

    for _ in range(3):
        page.goto(address)
        page.wait_for_selector(".jp-Notebook", timeout=60_000)
        wait_for_idle_kernel(url, token)
        for _ in range(4):
            page.locator(".jp-Cell").first.click()
            page.keyboard.press("Escape")  # command mode
            page.keyboard.press("Shift+Enter")
            try:
                expect(page.locator(".jp-Cell .jp-InputPrompt").first).to_contain_text(
                    "[1]", timeout=5_000
                )
                return
            except AssertionError:
                continue
    raise AssertionError("JupyterLab never ran the first cell")


def test_restore_panel_in_jupyterlab(tmp_path: Path, lab: tuple[str, str]) -> None:
    from playwright.sync_api import expect, sync_playwright

    # a notebook with a replicated history, then the panel
    log = tmp_path / ".durable" / "panel.db"
    durable_nb.open_log(log)
    replicator = durable_nb.replicate(sync_interval="100ms", monitor_interval="100ms")
    with workflow("sweep"):
        item(1)
    assert replicator.wait_synced(15)
    durable_nb.stop_replication()
    close_log()
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("%load_ext durable_nb\n%durable info"),
                nbformat.v4.new_code_cell("%durable restore")]  # fmt: skip
    nb.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3",
        "language": "python",
    }
    nbformat.write(nb, str(tmp_path / "panel.ipynb"))

    url, token = lab
    with sync_playwright() as p:
        browser = launch(p)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            for attempt in range(3):  # JupyterLab now and then drops a starting page's run
                run_first_cell(page, f"{url}/lab/tree/panel.ipynb?token={token}", url, token)
                page.keyboard.press("Shift+Enter")  # the panel's cell
                try:
                    # the kernel found the notebook through JupyterLab's session name
                    found = page.get_by_text("found by: notebook from Jupyter")
                    expect(found).to_be_visible(timeout=30_000)
                    break
                except AssertionError:
                    if attempt == 2:
                        raise
            refresh = page.locator(".widget-button", has_text="Refresh")
            expect(refresh).to_be_visible(timeout=60_000)
            refresh.click()
            select = page.locator(".widget-select select")
            expect(select.locator("option").first).to_be_attached(timeout=60_000)
            select.select_option(index=0)
            expect(page.locator("table.durable-preview")).to_be_visible(timeout=60_000)
            expect(page.locator("table.durable-preview")).to_contain_text("sweep")
            page.locator(".widget-button", has_text="Restore to copy").click()
            expect(page.get_by_text("restored a copy to")).to_be_visible(timeout=60_000)
            SCREENSHOT.parent.mkdir(exist_ok=True)
            page.locator(".widget-vbox").first.screenshot(path=str(SCREENSHOT))
        except Exception:
            SCREENSHOT.parent.mkdir(exist_ok=True)
            page.screenshot(path=str(SCREENSHOT.with_name("restore-panel-failure.png")))
            raise
        finally:
            browser.close()
    copies = list((tmp_path / ".durable").glob("panel.restored-*.db"))
    assert len(copies) == 1
    assert durable_nb.runs(log=copies[0])["workflow"].tolist() == ["sweep"]
    assert SCREENSHOT.read_bytes()[:4] == b"\x89PNG"


def test_fleet_panel_in_jupyterlab(tmp_path: Path, lab: tuple[str, str]) -> None:
    from playwright.sync_api import expect, sync_playwright

    from .test_fleet import name, run_agents

    root, agents = f"file://{tmp_path / 'fleet'}/", tmp_path / "agents"
    run_agents(root, agents, [4, 5])  # agent 5 fails at step 5
    failing = name(5, agents)
    nb = nbformat.v4.new_notebook()
    nb.cells = [
        nbformat.v4.new_code_cell(
            f"import os\nos.environ['XDG_CACHE_HOME'] = {str(tmp_path / 'xdg')!r}\n"
            "import durable_nb\n%load_ext durable_nb"
        ),
        nbformat.v4.new_code_cell(f"%durable fleet {root}"),
        nbformat.v4.new_code_cell(
            "print('current:', durable_nb.get_store().path)\n"
            "print(durable_nb.runs()[['workflow', 'status']].to_string())\n"
            "%durable info"
        ),
    ]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                 "language": "python"}  # fmt: skip
    nbformat.write(nb, str(tmp_path / "fleet.ipynb"))
    shot = SCREENSHOT.with_name("fleet-panel.png")

    url, token = lab
    with sync_playwright() as p:
        browser = launch(p)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            table = page.locator("table.durable-fleet")
            for attempt in range(3):  # JupyterLab now and then drops a starting page's run
                run_first_cell(page, f"{url}/lab/tree/fleet.ipynb?token={token}", url, token)
                page.keyboard.press("Shift+Enter")  # the panel's cell
                try:
                    expect(table).to_contain_text(failing, timeout=30_000)
                    break
                except AssertionError:
                    if attempt == 2:
                        raise
            # one row per log, the failed one with its error
            expect(table).to_contain_text(name(4, agents))
            expect(table).to_contain_text("RuntimeError: agent failed at step 5")
            page.locator(".widget-select select").select_option(label=failing)
            expect(page.locator("table.durable-fleet-runs")).to_contain_text("failed")
            page.locator(".widget-dropdown select").select_option(label="run 1 · agent · failed")
            error = page.locator("pre.durable-fleet-error")
            expect(error).to_contain_text("step work(5) failed", timeout=30_000)
            expect(error).to_contain_text("RuntimeError: agent failed at step 5")
            expect(page.locator("img.widget-image")).to_be_visible()  # the run's timeline
            page.locator(".widget-button", has_text="Open here").click()
            expect(page.get_by_text("is the current log now")).to_be_visible(timeout=30_000)
            shot.parent.mkdir(exist_ok=True)
            page.locator(".widget-vbox").first.screenshot(path=str(shot))
            # the next cell runs in the log the panel opened: agent 5's, failed at step 5
            page.locator(".jp-Cell").nth(2).click()
            page.keyboard.press("Escape")
            page.keyboard.press("Shift+Enter")
            output = page.locator(".jp-Cell").nth(2).locator(".jp-OutputArea")
            expect(output).to_contain_text(f"/open/{failing}.db", timeout=30_000)
            expect(output).to_contain_text("agent  failed")
            expect(output).to_contain_text("found by: opened from Python")
        except Exception:
            shot.parent.mkdir(exist_ok=True)
            page.screenshot(path=str(shot.with_name("fleet-panel-failure.png")))
            raise
        finally:
            browser.close()
    assert shot.read_bytes()[:4] == b"\x89PNG"
