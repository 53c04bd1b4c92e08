"""Append-only JSON Lines files: the durable record every writer produces before anything else.

Each record is one whole line written with a single `os.write` on an O_APPEND descriptor, so a crash
leaves at most a torn last line (which ingestion leaves for later) and concurrent appenders never
interleave within a line. The journal is one file per writing process and day, so appenders in
different processes never share a file; the fallback log is shared and also takes an advisory lock.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import json
import os
import socket
import threading
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


def append_line(path: Path, line: bytes, *, fsync: bool, lock: bool = False) -> None:
    """Append one encoded line with a single write; raise OSError when the file cannot take it."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        if lock:
            fcntl.flock(fd, fcntl.LOCK_EX)
        written = os.write(fd, line)
        if written != len(line):
            # A short write on a regular file means the disk filled mid-record: the line is torn.
            raise OSError(28, f"short write ({written} of {len(line)} bytes)")
        if fsync:
            os.fsync(fd)
    finally:
        os.close(fd)  # closing releases the flock too


class Journal:
    """This process's journal: `journal_dir/<day>-<host>-<pid>.jsonl`, opened per day, thread-safe."""

    def __init__(self, journal_dir: Path, *, fsync: bool = True):
        self.journal_dir = Path(journal_dir)
        self.fsync = fsync
        self._lock = threading.Lock()
        self._fd: int | None = None
        self._fd_key: tuple[str, int] | None = None

    def path_for(self, day: dt.date) -> Path:
        host = socket.gethostname().replace("/", "_")[:60] or "host"
        return self.journal_dir / f"{day.isoformat()}-{host}-{os.getpid()}.jsonl"

    def append(self, record: dict[str, Any]) -> Path:
        """Append one record; return the file it went to. Raises OSError when the journal cannot take it."""
        line = encode_line(record)
        today = dt.datetime.now(dt.timezone.utc).date()
        with self._lock:
            fd = self._descriptor(today)
            written = os.write(fd, line)
            if written != len(line):
                raise OSError(28, f"short write to journal ({written} of {len(line)} bytes)")
            if self.fsync:
                os.fsync(fd)
            return self.path_for(today)

    def _descriptor(self, today: dt.date) -> int:
        key = (today.isoformat(), os.getpid())  # a forked child must not share its parent's file
        if self._fd is None or self._fd_key != key:
            self.close_locked()
            self.journal_dir.mkdir(parents=True, exist_ok=True)
            self._fd = os.open(self.path_for(today), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            self._fd_key = key
        return self._fd

    def close_locked(self) -> None:
        if self._fd is not None:
            try:
                os.close(self._fd)
            finally:
                self._fd = None
                self._fd_key = None

    def close(self) -> None:
        with self._lock:
            self.close_locked()
