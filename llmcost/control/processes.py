"""Whether the process that made a reservation still runs: checked only where its pid means something."""

from __future__ import annotations

import os
import socket

# This process's id, kept current in a forked child: os.getpid is a system call, and the journal and the control
# file ask on every tracked call, right after a journal fsync, where a system call costs most (issue 17).
_pid = [os.getpid()]
os.register_at_fork(after_in_child=lambda: _pid.__setitem__(0, os.getpid()))


def current_pid() -> int:
    """`os.getpid()` without the system call."""
    return _pid[0]


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def process_started(pid: int) -> str | None:
    """When the process started (clock ticks since boot, Linux), to tell a reused pid; None where unknown."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[19].decode()
    except (OSError, IndexError):
        return None


def host_and_namespace() -> str:
    """This host and pid namespace: where a reservation's pid can be checked."""
    try:
        namespace = os.readlink("/proc/self/ns/pid")
    except OSError:
        namespace = ""
    return f"{socket.gethostname()}/{namespace}"


def is_running(pid: int, started: str | None) -> bool:
    if not process_alive(pid):
        return False
    return started is None or process_started(pid) in (None, started)
