"""JSON Lines on disk: one record a line, appended whole with one `os.write`, a torn last line never glued onto.

The ground every writer of records stands on: the SDK's journal and fallback log, the control state's audit
trail, the collector, the forwarder and the demo data. It imports nothing of llmcost, so any layer may use it.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import json
import os
from decimal import Decimal
from pathlib import Path
from typing import Any


def _json_default(value: Any) -> Any:
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, (dt.datetime, dt.date)):
        return value.isoformat()
    raise TypeError(f"cannot write {type(value).__name__} to a journal")


def encode_line(record: dict[str, Any]) -> bytes:
    """One record as one JSON line (no embedded newlines: json escapes them)."""
    return (json.dumps(record, default=_json_default, ensure_ascii=False, separators=(",", ":")) + "\n").encode()


def ends_torn(fd: int) -> bool:
    """True when the file's last line has no newline (a writer died or the disk filled mid-line)."""
    size = os.fstat(fd).st_size
    return size > 0 and os.pread(fd, 1, size - 1) != b"\n"


def write_whole_line(fd: int, line: bytes) -> None:
    """One write of a whole line; a short write (disk full mid-line) is undone, so no torn line is left
    for the next record to be glued onto. Raises OSError when the line could not be written.

    The caller is the file's only appender while it writes (its own file, or a lock), so the size before a
    short write is the size after it less what it wrote: no stat before every write."""
    written = os.write(fd, line)
    if written != len(line):
        try:
            os.ftruncate(fd, os.fstat(fd).st_size - written)
        finally:
            raise OSError(28, f"No space left on device (short write: {written} of {len(line)} bytes)")


def append_line(path: Path, line: bytes, *, fsync: bool, lock: bool = False) -> None:
    """Append one encoded line with a single write; raise OSError when the file cannot take it."""
    fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        if lock:
            fcntl.flock(fd, fcntl.LOCK_EX)
        if ends_torn(fd):  # a writer was killed mid-line: start a line of our own
            line = b"\n" + line
        write_whole_line(fd, line)
        if fsync:
            os.fsync(fd)
    finally:
        os.close(fd)  # closing releases the flock too

