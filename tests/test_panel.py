"""The restore panel, driven through its widgets against real replicas."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

import durable_nb
from durable_nb import step, workflow
from durable_nb.notebook.panel import RestorePanel

from .conftest import current_log
from .test_replication import aws, make_bucket, moto_endpoint  # noqa: F401 - fixtures


@step
def item(i: int) -> int:
    return i * 10


@pytest.fixture
def log(tmp_path: Path) -> Iterator[Path]:
    with current_log(tmp_path / ".durable" / "panel.db") as path:
        yield path


def history(url: str | None) -> str:
    """Two replicated runs; then a local-only run the backup does not have."""
    replicator = durable_nb.replicate(url, sync_interval="100ms", monitor_interval="100ms")
    with workflow("first"):
        item(1)
    assert replicator.wait_synced(15)
    with workflow("second"):
        item(2)
    assert replicator.wait_synced(15)
    durable_nb.stop_replication()
    with workflow("local-only"):
        item(3)
    return replicator.url


def click(panel: RestorePanel, button: object) -> None:
    button.click()  # type: ignore[attr-defined]
    panel.thread.join(60)


def pick(panel: RestorePanel, txid: int) -> None:
    panel.points.value = txid
    panel.thread.join(60)


@pytest.mark.parametrize("where", ["file", "s3"])
def test_panel_preview_diff_and_both_restores(
    log: Path, where: str, request: pytest.FixtureRequest
) -> None:
    url = None
    if where == "s3":
        endpoint = request.getfixturevalue("aws")
        make_bucket(endpoint, "panel")
        url = "s3://panel/nb"
    url = history(url)
    panel = RestorePanel(url)
    assert panel.url.value == url or url is None
    click(panel, panel.refresh_button)
    assert "restore points" in panel.status.value
    txids = [value for _, value in panel.points.options]
    # one point per sync at least: the log's creation and run "first" may share one
    assert txids == sorted(txids, reverse=True) and len(txids) >= 2

    pick(panel, txids[0])  # the newest: both replicated runs
    assert "first" in panel.preview.value and "second" in panel.preview.value
    assert "only locally" in panel.preview.value and "local-only" in panel.preview.value
    assert "2 runs" in panel.status.value

    older = next(t for t in txids if ": 1 runs" in _preview(panel, t))  # before "second"
    assert "only locally" in panel.preview.value

    click(panel, panel.copy_button)
    copy = panel.restored_copy
    assert copy.name.startswith("panel.restored-") and copy.exists()
    assert "%durable open" in panel.status.value
    assert durable_nb.runs(log=copy)["workflow"].tolist() == ["first"]
    assert panel.points.value == older

    panel.restore_button.click()
    assert panel.confirm_button.layout.display == ""
    assert len(durable_nb.runs()) == 3  # nothing happens before confirming
    click(panel, panel.confirm_button)
    assert "restored panel.db" in panel.status.value
    assert durable_nb.runs()["workflow"].tolist() == ["first"]
    assert list(log.parent.glob("panel.db.*.bak"))


def _preview(panel: RestorePanel, txid: int) -> str:
    pick(panel, txid)
    return panel.status.value


def test_panel_errors_are_one_line(log: Path, tmp_path: Path) -> None:
    panel = RestorePanel(f"file://{tmp_path / 'nothing-here'}")
    click(panel, panel.refresh_button)
    assert "no restore points yet" in panel.status.value or "ReplicationError" in panel.status.value
    panel.url.value = "ftp://nope"
    click(panel, panel.refresh_button)
    assert "ReplicationError: replica URL" in panel.status.value
    assert "Traceback" not in panel.status.value and "<br" not in panel.status.value
    assert not panel.refresh_button.disabled  # buttons come back after an error
