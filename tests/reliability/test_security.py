"""Security: user-only files, and AWS secrets that never reach the log, errors or outputs."""

from __future__ import annotations

import stat
from pathlib import Path

import nbformat
import pytest

from ..kernels import kernel_env, notebook, run_all
from ..test_replication import aws, make_bucket, moto_endpoint  # noqa: F401 - fixtures

SECRET = "s3cr3t-value-that-must-never-leak"


def modes(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): stat.S_IMODE(p.stat().st_mode) for p in folder.rglob("*")}


def test_files_are_user_only_and_secrets_never_leak(
    tmp_path: Path,
    aws: str,  # noqa: F811 - the fixture imported above
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    make_bucket(aws, "secure")
    nb = notebook(
        "%load_ext durable_nb",
        "from durable_nb import step\n@step\ndef big(i):\n    return bytes(2_000_000)\n"
        "@step\ndef small(i):\n    return i",
        "%%durable secure\nxs = [small(i) for i in range(3)] + [len(big(0))]\nxs",
        "%durable replicate s3://secure/nb",
        "import durable_nb, time\ntime.sleep(1.5)\nprint(durable_nb.replication_status())",
        "%durable replicate s3://AKIAEXAMPLE:" + SECRET + "@secure/nb",
    )
    nb.cells[-1].metadata["tags"] = ["raises-exception"]
    env = kernel_env(tmp_path / "secure.ipynb", AWS_SECRET_ACCESS_KEY=SECRET)
    run_all(nb, tmp_path, env)
    nbformat.write(nb, str(tmp_path / "secure.ipynb"))

    durable = tmp_path / ".durable"
    for name, mode in modes(durable).items():
        path = durable / name
        if path.is_dir():
            assert mode == 0o700, f"{name} is {oct(mode)}"
        elif not name.startswith("replica/"):
            assert mode == 0o600, f"{name} is {oct(mode)}"
    assert any(name.startswith("secure.blobs/") for name in modes(durable))
    assert durable.stat().st_mode & 0o777 == 0o700

    # the secret is nowhere: not in the log, its blobs, litestream's log, or any output (the
    # notebook's own source holds it: the last cell typed it into a URL, which was refused)
    for path in tmp_path.rglob("*"):
        if path.is_file() and path.suffix != ".ipynb":
            assert SECRET.encode() not in path.read_bytes(), f"the secret leaked into {path}"
    outputs = str([cell.get("outputs") for cell in nb.cells])
    assert "refused" in outputs and SECRET not in outputs
