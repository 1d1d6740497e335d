"""Run a notebook headless in a real kernel (nbclient), with its own log beside it."""

from __future__ import annotations

import ast
import os
import shutil
import signal
import sys
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from ..log.location import locate_log

__all__ = ["NotebookRun", "run_notebook"]


@dataclass(frozen=True)
class NotebookRun:
    """How a headless run ended."""

    notebook: Path
    log: Path | None  # the log the kernel used last (None: no durable cell ran)
    cells_run: int
    error: str | None  # the failing cell's error, one line, or None
    interrupted: bool = False  # stopped by Ctrl-C / SIGTERM


def _text_output(msg_type: str, content: Any) -> str:
    """What a terminal shows of one output message of a cell."""
    if msg_type == "stream":
        return str(content.get("text", ""))
    if msg_type == "error":
        return f"{content.get('ename')}: {content.get('evalue')}\n"
    if msg_type in ("execute_result", "display_data"):
        text = content.get("data", {}).get("text/plain")
        return f"{text}\n" if text else ""
    return ""


# Asked of the kernel once the notebook has run: the log its durable cells used, if any.
_LOG_USED = (
    "str(__import__('durable_nb.log.current_log', fromlist=['_']).current_store_path() or '')"
    " if 'durable_nb' in __import__('sys').modules else ''"
)


def _client_class(echo: TextIO | None) -> type:
    """A ``NotebookClient`` that echoes each output as it comes (papermill's
    ``--log-output``: a killed cell has shown what its finished steps printed), asks the
    kernel at the end which log it used, and tells the kernel each cell's id, as JupyterLab
    does (in the execute request's metadata, ``cellId``), so an unnamed ``%%durable`` cell
    keeps its name, and its history, when its code is edited between runs."""
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError

    class DurableClient(NotebookClient):  # type: ignore[misc]
        cell_id: str | None = None
        log_used: str | None = None  # "" when the kernel used no log; None when unknown

        def process_message(self, msg: Any, cell: Any, cell_index: int) -> Any:
            if echo is not None:
                text = _text_output(msg["msg_type"], msg.get("content", {}))
                tags = cell.get("metadata", {}).get("tags", [])
                if msg["msg_type"] == "error" and "raises-exception" in tags:
                    text = f"{text.rstrip()} (expected: the cell is tagged raises-exception)\n"
                if text:
                    echo.write(text)
                    echo.flush()
            return super().process_message(msg, cell, cell_index)

        async def async_execute(self, *args: Any, **kwargs: Any) -> Any:
            try:
                done = await super().async_execute(*args, **kwargs)
            except CellExecutionError:
                self.log_used = await self._ask_log()
                raise
            self.log_used = await self._ask_log()
            return done

        async def _ask_log(self) -> str | None:
            import asyncio

            try:
                if self.kc is None or not await self.km.is_alive():
                    return None
                reply = await asyncio.wait_for(
                    self.kc.execute_interactive(
                        "", silent=True, store_history=False,
                        user_expressions={"log": _LOG_USED},
                    ),
                    timeout=15,
                )  # fmt: skip
                found = reply["content"]["user_expressions"]["log"]
                return str(ast.literal_eval(found["data"]["text/plain"]))
            except Exception:  # a kernel that cannot say: the location rule decides
                return None

        async def async_execute_cell(self, cell: Any, *args: Any, **kwargs: Any) -> Any:
            self.cell_id = cell.get("id")
            return await super().async_execute_cell(cell, *args, **kwargs)

        async def async_start_new_kernel_client(self) -> Any:
            kc = await super().async_start_new_kernel_client()
            message = kc.session.msg

            def msg(msg_type: str, content: Any = None, *args: Any, **kw: Any) -> Any:
                built = message(msg_type, content, *args, **kw)
                if msg_type == "execute_request" and self.cell_id:
                    built["metadata"]["cellId"] = self.cell_id
                return built

            kc.session.msg = msg
            return kc

    return DurableClient


def run_notebook(
    notebook: str | os.PathLike[str],
    *,
    timeout: float | None = None,
    output: str | os.PathLike[str] | None = None,
    kernel_name: str = "python3",
    echo: TextIO | None = sys.stdout,
) -> NotebookRun:
    """Execute every cell of ``notebook`` in a new kernel; stop at the first failing cell.

    The kernel runs in the notebook's folder and is told the notebook's path
    (``DURABLE_NB_NOTEBOOK``), so the log is ``.durable/<stem>.db`` beside it and a second
    run after a crash resumes; each cell's id (nbformat 4.5) is passed as JupyterLab passes
    it, so an unnamed durable cell is named after it. Text outputs are echoed as they
    come; the executed notebook is written to ``output`` when given.
    """
    import nbformat
    from jupyter_client.manager import AsyncKernelManager
    from jupyter_core.utils import run_sync
    from nbclient.exceptions import CellExecutionError, CellTimeoutError, DeadKernelError

    path = Path(notebook).absolute()
    nb = nbformat.read(path, as_version=4)
    if echo is not None and _unnamed_without_ids(nb):
        echo.write(
            f"durable-nb run: {path.name} is nbformat {nb.nbformat}.{nb.nbformat_minor}, whose "
            "cells have no ids: an unnamed %%durable cell is named by a digest of its code, "
            "so editing it starts a new history; name it (%%durable NAME), or save the "
            "notebook with a recent Jupyter\n"
        )
    count = 0
    current = -1

    def on_cell_start(cell: Any, cell_index: int) -> None:
        nonlocal current
        current = cell_index

    def on_cell_executed(cell: Any, cell_index: int, execute_reply: Any) -> None:
        nonlocal count
        count += 1

    # Unix sockets in a private folder instead of TCP ports other local users could reach.
    # The async manager: nbclient then notices a dead kernel (the sync one blocks on iopub).
    sockets = tempfile.mkdtemp(prefix="durable-nb-")
    km = AsyncKernelManager(kernel_name=kernel_name, transport="ipc", ip=f"{sockets}/kernel")
    client = _client_class(echo)(
        nb,
        km=km,
        timeout=timeout,
        kernel_name=kernel_name,
        resources={"metadata": {"path": str(path.parent)}},
        on_cell_start=on_cell_start,
        on_cell_executed=on_cell_executed,
    )
    env = {**os.environ, "DURABLE_NB_NOTEBOOK": str(path)}
    env.pop("JPY_SESSION_NAME", None)
    error = None
    stopped = False
    main = threading.current_thread() is threading.main_thread()  # signals: main thread only
    previous = signal.signal(signal.SIGTERM, _terminate) if main else None
    try:
        run_sync(client.async_execute)(env=env)  # (``execute`` is bound to the base's)
    except CellExecutionError as exc:
        what = f"{exc.ename}: {exc.evalue}" if getattr(exc, "ename", None) else str(exc)
        error = f"cell {current + 1}{_first_line(nb, current)} failed: {what}"
    except CellTimeoutError:
        error = f"cell {current + 1}{_first_line(nb, current)} timed out after {timeout:g} s"
    except DeadKernelError:
        error = f"the kernel died while running cell {current + 1}{_first_line(nb, current)}"
    except KeyboardInterrupt:
        stopped = True
    finally:
        if main:
            signal.signal(signal.SIGTERM, previous)
        if km.has_kernel:  # nbclient leaves a kernel it did not create running
            run_sync(km.shutdown_kernel)(now=True)
        shutil.rmtree(sockets, ignore_errors=True)
        if output is not None:
            nbformat.write(nb, str(output))
    # Ctrl-C / SIGTERM while a cell ran: nbclient shuts the kernel down (its own handler)
    stopped = stopped or getattr(client, "_async_cleanup_kernel_future", None) is not None
    if stopped:
        error = f"interrupted while running cell {current + 1}{_first_line(nb, current)}"
    return NotebookRun(path, _log_used(client.log_used, env), count, error, stopped)


def _log_used(answer: str | None, env: dict[str, str]) -> Path | None:
    """The log the kernel said it used; when it could not say (it died), the one the
    location rule gives, if it exists."""
    if answer is not None:
        return Path(answer) if answer else None
    path = locate_log({}, env).path
    return path if path.exists() else None


def _unnamed_without_ids(nb: Any) -> bool:
    """Whether an unnamed ``%%durable`` cell of ``nb`` has no cell id to be named by."""
    for cell in nb.get("cells", []):
        first = cell.get("source", "").lstrip().split("\n", 1)[0].split()
        durable = cell.get("cell_type") == "code" and first[:1] == ["%%durable"]
        unnamed = len(first) == 1 or (len(first) > 1 and first[1].startswith("-"))
        if durable and unnamed and not cell.get("id"):
            return True
    return False


def _terminate(signum: int, frame: Any) -> None:
    """SIGTERM: stop like Ctrl-C, so the kernel is shut down and the notebook written."""
    raise KeyboardInterrupt


def _first_line(nb: Any, index: int) -> str:
    cells = nb.get("cells", [])
    if not 0 <= index < len(cells):
        return ""
    lines = cells[index].get("source", "").strip().splitlines()
    return f" ({lines[0][:60]})" if lines else ""
