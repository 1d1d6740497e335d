"""Who owns a running run: a process identity that survives pid reuse.

An owner is ``host:boot-id:pid:start-ticks``. A run whose owner is on this machine (same
host and boot) is alive while a process with that pid *and the same start time* exists, so
a recycled pid is not mistaken for the owner. An owner on another host or an earlier boot is
gone: SQLite logs are not shared live across machines (a restored log comes from a dead one).
"""

from __future__ import annotations

import os
import socket
from functools import cache

__all__ = ["current_owner", "is_alive", "owner_pid"]


def _boot_id() -> str:
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            return f.read().strip()
    except OSError:
        return "-"


def _start_ticks(pid: int) -> str | None:
    """The process start time in clock ticks since boot, or None if no such process (a
    zombie, killed but not yet reaped by its parent, counts as none: it is dead)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except FileNotFoundError:
        return None
    except OSError:
        return "-"
    # The command name (field 2) may contain spaces and parentheses: split after the last ')'.
    fields = stat[stat.rindex(b")") + 2 :].split()
    if fields[0] in (b"Z", b"X"):  # zombie, or dead
        return None
    return fields[19].decode()


def _pid_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@cache
def _machine() -> tuple[str, str]:
    return socket.gethostname(), _boot_id()


def current_owner() -> str:
    """The owner string of this process (computed per call: a fork gets its own pid)."""
    host, boot = _machine()
    pid = os.getpid()
    return f"{host}:{boot}:{pid}:{_start_ticks(pid) or '-'}"


def owner_pid(owner: str) -> int:
    """The pid part of an owner string."""
    return int(owner.rsplit(":", 2)[1])


def is_alive(owner: str) -> bool:
    """Whether the process named by ``owner`` still runs on this machine."""
    host, boot, pid_text, ticks = owner.rsplit(":", 3)
    if (host, boot) != _machine():
        return False
    pid = int(pid_text)
    if ticks == "-" or not os.path.exists("/proc/self/stat"):
        return _pid_exists(pid)
    return _start_ticks(pid) == ticks
