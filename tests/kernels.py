"""Real IPython kernels for tests: started with jupyter_client, killed for real."""

from __future__ import annotations

import os
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nbformat
from jupyter_client.manager import KernelManager
from nbclient import NotebookClient

from .conftest import ROOT


def kernel_env(notebook: Path | None = None, **extra: str) -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), **extra}
    env.pop("DURABLE_NB_DB", None)
    if notebook is not None:
        env["DURABLE_NB_NOTEBOOK"] = str(notebook)
    return env


@dataclass
class Reply:
    """What one execute request produced."""

    status: str
    stdout: str = ""
    stderr: str = ""
    results: list[dict[str, Any]] = field(default_factory=list)
    error: dict[str, Any] | None = None


class Kernel:
    """One real ipykernel process in ``cwd``."""

    def __init__(self, cwd: Path, env: dict[str, str]) -> None:
        self.km = KernelManager(kernel_name="python3")
        self.km.start_kernel(cwd=str(cwd), env=env)
        self.kc = self.km.client()
        self.kc.start_channels()
        self.kc.wait_for_ready(timeout=60)

    @property
    def pid(self) -> int:
        return self.km.provisioner.process.pid  # type: ignore[union-attr]

    def execute(self, code: str, timeout: float = 60) -> Reply:
        reply = Reply("")

        def hook(msg: dict[str, Any]) -> None:
            kind, content = msg["msg_type"], msg["content"]
            if kind == "stream":
                if content["name"] == "stdout":
                    reply.stdout += content["text"]
                else:
                    reply.stderr += content["text"]
            elif kind in ("execute_result", "display_data"):
                reply.results.append(content["data"])
            elif kind == "error":
                reply.error = content

        msg = self.kc.execute_interactive(code, timeout=timeout, output_hook=hook)
        if msg["content"]["status"] == "aborted":  # sent while the kernel was still aborting
            time.sleep(0.5)  # the requests queued behind an error (ipykernel): not run at all
            msg = self.kc.execute_interactive(code, timeout=timeout, output_hook=hook)
        reply.status = msg["content"]["status"]
        return reply

    def send(self, code: str) -> str:
        """Start executing ``code`` without waiting; returns the request id."""
        return self.kc.execute(code)

    def wait(self, msg_id: str, timeout: float = 60) -> dict[str, Any]:
        while True:
            msg = self.kc.get_shell_msg(timeout=timeout)
            if msg["parent_header"].get("msg_id") == msg_id:
                return msg

    def kill(self) -> None:
        os.kill(self.pid, signal.SIGKILL)
        self.km.provisioner.process.wait(timeout=30)  # type: ignore[union-attr]
        self.close()

    def close(self) -> None:
        self.kc.stop_channels()
        if self.km.is_alive():
            self.km.shutdown_kernel(now=True)
        else:
            self.km.cleanup_resources()


def notebook(*sources: str, tags: dict[int, list[str]] | None = None) -> Any:
    """A notebook whose code cells are ``sources``."""
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(src) for src in sources]
    for index, cell_tags in (tags or {}).items():
        nb.cells[index].metadata["tags"] = cell_tags
    nb.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3",
        "language": "python",
    }
    return nb


def run_all(nb: Any, cwd: Path, env: dict[str, str], timeout: float = 120) -> Any:
    """Run All in a fresh kernel (nbclient), like a user after a restart."""
    client = NotebookClient(
        nb,
        timeout=timeout,
        kernel_name="python3",
        resources={"metadata": {"path": str(cwd)}},
    )
    client.execute(env=env)
    return nb


def cell_text(cell: Any) -> str:
    out = []
    for o in cell.outputs:
        if o.output_type == "stream":
            out.append(o.text)
        elif o.output_type in ("execute_result", "display_data"):
            out.append(o.data.get("text/plain", "") + "\n")
    return "".join(out)
