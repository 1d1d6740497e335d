"""The terminal and headless paths as a newcomer meets them (issue 32, items 3-9): live
output, the right log named, no stray files or folders, one-line errors, honest exit codes.
Real kernels, the real CLI in a subprocess."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import pytest

from .conftest import ROOT
from .kernels import Kernel, kernel_env, notebook

CLI = [sys.executable, "-m", "durable_nb.cli"]


def cli(
    *args: str, cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, *args], cwd=cwd, env=env or kernel_env(), capture_output=True, text=True,
        timeout=180,
    )  # fmt: skip


def start_run(path: Path, cwd: Path) -> subprocess.Popen[str]:
    """``durable-nb run PATH`` in the background, its output in pipes."""
    return subprocess.Popen(
        [*CLI, "run", str(path)], cwd=cwd, env=kernel_env(), stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def test_run_streams_what_steps_print_as_they_print_it(tmp_path: Path) -> None:
    """Item 3: four steps printing once a second show up one by one, not all at the end;
    a kernel that dies mid-cell has shown what its finished steps printed."""
    path = tmp_path / "live.ipynb"
    sweep = (
        "%%durable live\nimport os, time\nfrom durable_nb import step\n@step\ndef tick(i):\n"
        "    print('tick', i, flush=True)\n    time.sleep(1)\n    return i\n"
        "for i in range(4):\n    tick(i)\nif not os.path.exists('ok'):\n    os._exit(1)\n"
    )
    nbformat.write(notebook("%load_ext durable_nb", sweep), str(path))
    proc = start_run(path, tmp_path)
    assert proc.stdout is not None
    seen: dict[str, float] = {}
    for line in proc.stdout:
        seen.setdefault(line.strip(), time.monotonic())
    proc.wait(timeout=60)
    ticks = [seen[f"tick {i}"] for i in range(4)]
    assert ticks[3] - ticks[0] > 2, "the outputs arrived all at once"
    assert proc.returncode == 1  # the kernel died after the four steps
    assert "the kernel died while running cell 2" in (proc.stderr.read() if proc.stderr else "")


def test_run_names_the_log_the_notebook_used_or_none(tmp_path: Path) -> None:
    """Item 4: after ``%durable open`` the last line names that log; after a bad magic that
    stopped the notebook before any durable cell, no log (none was created)."""
    other = tmp_path / "elsewhere.db"
    opened = tmp_path / "opened.ipynb"
    nbformat.write(
        notebook("%load_ext durable_nb", f"%durable open {other}", "%%durable w\nx = 1\n"),
        str(opened),
    )
    done = cli("run", str(opened), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1] == f"log: {other}"

    bad = tmp_path / "bad.ipynb"
    nbformat.write(notebook("%load_ext durable_nb", "%durable nonsense", "print(1)"), str(bad))
    failed = cli("run", str(bad), cwd=tmp_path)
    assert failed.returncode == 1
    assert failed.stderr.splitlines()[-1] == "log: none (no durable cell ran)"
    assert not (tmp_path / ".durable" / "bad.db").exists()


@pytest.mark.parametrize(
    ("target", "said"),
    [
        ("{tmp}/no/such/dir/x.db", "the folder {tmp}/no does not exist"),
        ("{tmp}/a-file/x.db", "{tmp}/a-file is a file, not a folder"),
        ("{tmp}/a-file/.durable/x.db", "{tmp}/a-file is a file, not a folder"),
    ],
)
def test_open_in_a_missing_folder_is_one_line_and_creates_nothing(
    tmp_path: Path, target: str, said: str
) -> None:
    """Items 5 and 6: a typo in a path is not a new history, and a file in the way is one
    line, not a traceback."""
    (tmp_path / "a-file").write_text("not a folder")
    kernel = Kernel(tmp_path, kernel_env(tmp_path / "nb.ipynb"))
    try:
        assert kernel.execute("%load_ext durable_nb").status == "ok"
        reply = kernel.execute(f"%durable open {target.format(tmp=tmp_path)}")
    finally:
        kernel.close()
    shown = reply.stdout + reply.stderr + str(reply.error or "")
    assert said.format(tmp=tmp_path) in shown
    assert "Traceback" not in shown and len(shown.strip().splitlines()) == 1, shown
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file"]


def test_open_creates_durable_beside_a_notebook(tmp_path: Path) -> None:
    """Item 5's other half: ``.durable/`` itself is still created where its folder exists."""
    kernel = Kernel(tmp_path, kernel_env(tmp_path / "nb.ipynb"))
    try:
        assert kernel.execute("%load_ext durable_nb").status == "ok"
        reply = kernel.execute(f"%durable open {tmp_path / '.durable' / 'mine.db'}")
    finally:
        kernel.close()
    assert reply.status == "ok" and (tmp_path / ".durable" / "mine.db").exists()
    assert oct((tmp_path / ".durable").stat().st_mode & 0o777) == "0o700"


def test_log_into_a_closed_pipe_ends_quietly(tmp_path: Path) -> None:
    """Item 7: ``durable-nb log nb.ipynb | head -5`` ends without a traceback."""
    script = (
        "import durable_nb, sys\nfrom durable_nb import step, workflow\n"
        "durable_nb.open_log(sys.argv[1])\n@step\ndef f(i):\n    return i\n"
        "with workflow('many'):\n    [f(i) for i in range(3000)]\n"
    )
    log = tmp_path / ".durable" / "nb.db"
    (tmp_path / ".durable").mkdir()
    subprocess.run([sys.executable, "-c", script, str(log)], env=kernel_env(), check=True)
    shell = f"{' '.join(CLI)} log {tmp_path / 'nb.ipynb'} | head -5"
    done = subprocess.run(
        ["bash", "-o", "pipefail", "-c", shell], cwd=tmp_path, env=kernel_env(),
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert len(done.stdout.splitlines()) == 5
    assert "Traceback" not in done.stderr and "BrokenPipe" not in done.stderr, done.stderr
    assert done.returncode == 141  # as a command stopped by SIGPIPE


def test_reading_a_replica_leaves_no_files_behind(tmp_path: Path) -> None:
    """Item 8: listing or failing to restore creates no ``.durable/default.db`` and no
    replica folder in the working directory."""
    env = kernel_env()
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_PROFILE"):
        env.pop(name, None)
    env.update(AWS_EC2_METADATA_DISABLED="true", AWS_SHARED_CREDENTIALS_FILE=os.devnull,
               AWS_CONFIG_FILE=os.devnull)  # fmt: skip
    gone = f"file://{tmp_path / 'gone'}"
    runs = [
        cli("restore-points", gone, cwd=tmp_path, env=env),
        cli("restore", gone, "-o", str(tmp_path / "out" / "x.db"), cwd=tmp_path, env=env),
        cli("restore", "s3://bucket/x", "-o", "copy.db", cwd=tmp_path, env=env),
    ]
    for done in runs:
        assert done.returncode == 2, done.stderr
        assert len(done.stderr.strip().splitlines()) <= 2 and "Traceback" not in done.stderr
    assert "no AWS credentials" in runs[2].stderr
    assert list(tmp_path.iterdir()) == []


def test_restore_points_of_a_missing_replica_is_an_error(tmp_path: Path) -> None:
    """Item 9: no replica there is an error (exit 2) saying so, not an empty table."""
    done = cli("restore-points", f"file://{tmp_path / 'typo'}", cwd=tmp_path)
    assert done.returncode == 2
    assert "no restore points" in done.stderr and "check the URL" in done.stderr
    assert done.stdout == ""


def test_exit_status_two_for_any_path_that_is_not_a_notebook(tmp_path: Path) -> None:
    """Item 10: 1 means a cell failed; a wrong path is 2, whatever its suffix."""
    for name in ("missing.txt", "missing.ipynb"):
        done = cli("run", name, cwd=tmp_path)
        assert done.returncode == 2, (name, done.stderr)
        assert len(done.stderr.strip().splitlines()) == 1


def test_cli_tables_are_for_people(tmp_path: Path) -> None:
    """Item 10: no NaN, no nanoseconds, durations in s / ms, and a count named as one."""
    script = (
        "import durable_nb, sys\nfrom durable_nb import step, workflow\n"
        "durable_nb.open_log(sys.argv[1])\n@step\ndef f(i):\n    return i\n"
        "for _ in range(2):\n    with workflow('w'):\n        f(1)\n"
    )
    log = tmp_path / "x.db"
    subprocess.run([sys.executable, "-c", script, str(log)], env=kernel_env(), check=True)
    for command in ("log", "runs", "experiments"):
        table = cli(command, str(log), cwd=ROOT).stdout
        assert "NaN" not in table and "None" not in table and "days" not in table, table
        assert " ms" in table or " s" in table
        assert not any(len(part) > 20 for part in table.split()), table  # no ns timestamps
    assert "times_replayed" in cli("log", str(log), cwd=ROOT).stdout


def test_the_second_round_of_bad_inputs_is_one_line_each(tmp_path: Path) -> None:
    """What the newcomer trial after the fixes found: each is one line, exit 2, no files."""
    blocker = tmp_path / "no-pytest"
    blocker.mkdir()
    (blocker / "pytest.py").write_text("raise ImportError('pytest is not installed')\n")
    env = {**kernel_env(), "PYTHONPATH": f"{blocker}{os.pathsep}{ROOT}"}
    sanitizer = cli("nbval-sanitizer", cwd=tmp_path, env=env)
    assert sanitizer.returncode == 0 and sanitizer.stdout.strip().endswith("nbval_sanitize.cfg")

    script = (
        "import durable_nb, sys\nfrom durable_nb import step, workflow\n"
        "durable_nb.open_log(sys.argv[1])\n"
        "durable_nb.replicate(sys.argv[2], sync_interval='100ms')\n@step\ndef f(i):\n"
        "    return i\nwith workflow('w'):\n    f(1)\ndurable_nb.stop_replication()\n"
    )
    replica = f"file://{tmp_path / 'replica'}"
    work = tmp_path / "work"
    work.mkdir()
    subprocess.run([sys.executable, "-c", script, str(work / "x.db"), replica],
                   env=kernel_env(), check=True, timeout=120)  # fmt: skip
    (tmp_path / "a-file").write_text("")
    cases = {
        "not a time": (["restore", replica, "--timestamp", "yesterday", "-o", "y.db"],
                       "is not a time"),
        "no such txid": (["restore", replica, "--txid", "99", "-o", "y.db"],
                         "no restore point with txid 99"),
        "replica is a file": (["replicate", str(work / "x.db"), f"file://{tmp_path / 'a-file'}"],
                              "is a file, not a folder"),
        "no fleet there": (["fleet", f"file://{tmp_path / 'nothing'}/", "--cache", "c"],
                           "no replicated logs under"),
        "negative grace": (["gc", str(work / "x.db"), "--grace", "-5"], "0 or more"),
        "no -o": (["restore", f"file://{tmp_path / 'replica'}"], "give -o OUT"),
    }  # fmt: skip
    for name, (args, said) in cases.items():
        done = cli(*args, cwd=work, env=kernel_env())
        assert done.returncode == 2, (name, done.stderr)
        lines = done.stderr.strip().splitlines()  # (argparse's own errors: usage, then it)
        assert said in lines[-1] and len(lines) <= 2 and "Traceback" not in done.stderr, name
    left = {p.name for p in work.iterdir()}
    assert not left & {"y.db", "c", ".durable", "replica"}, left  # nothing from the failures

    csv = cli("log", str(work / "x.db"), "--format", "csv", cwd=work).stdout.splitlines()
    header = csv[0].split(",")
    assert "duration_seconds" in header and "times_replayed" in header
    row = dict(zip(header, csv[1].split(","), strict=False))
    assert float(row["duration_seconds"]) >= 0 and row["started"].endswith("Z")


def test_run_names_the_cell_that_failed(tmp_path: Path) -> None:
    path = tmp_path / "bad.ipynb"
    nbformat.write(notebook("x = 1", "1 / 0"), str(path))
    failed = cli("run", str(path), cwd=tmp_path)
    assert failed.returncode == 1
    assert "cell 2 (1 / 0) failed: ZeroDivisionError: division by zero" in failed.stderr
    assert "-o OUT.ipynb keeps" in failed.stderr


def test_ctrl_c_stops_run_with_status_130_and_the_next_run_resumes(tmp_path: Path) -> None:
    path = tmp_path / "slow.ipynb"
    sweep = (
        "%%durable slow\nimport time\nfrom durable_nb import step\n@step\ndef tick(i):\n"
        "    print('tick', i, flush=True)\n    time.sleep(0.5)\n    return i\n"
        "ticks = [tick(i) for i in range(6)]\n"
    )
    nbformat.write(notebook("%load_ext durable_nb", sweep), str(path))
    proc = start_run(path, tmp_path)
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.startswith("tick 2"):
            break
    proc.send_signal(signal.SIGINT)  # Ctrl-C in the terminal reaches durable-nb only
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "durable-nb run: interrupted while running cell 2 (%%durable slow)" in err
    again = cli("run", str(path), cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert "[replayed] tick 0" in again.stdout and "[replayed] tick 1" in again.stdout
