"""Append-only JSON Lines files: the durable record every writer produces before anything else.

Each record is one whole line written with a single `os.write` on an O_APPEND descriptor, so a crash
leaves at most a torn last line (which ingestion leaves for later) and concurrent appenders never
interleave within a line. The journal is one file per writing process and day, so appenders in
different processes never share a file; the fallback log is shared and also takes an advisory lock.
"""

from __future__ import annotations

import datetime as dt
import os
import socket
import threading
import time
from pathlib import Path
from typing import Any

from llmcost.control.processes import current_pid
from llmcost.lines import encode_line, ends_torn, write_whole_line


class Journal:
    """This process's journal: `journal_dir/<day>-<host>-<pid>.jsonl`, opened per day, thread-safe."""

    def __init__(self, journal_dir: Path, *, fsync: bool = True):
        self.journal_dir = Path(journal_dir)
        self.fsync = fsync
        self._lock = threading.Lock()
        self._fd: int | None = None
        self._fd_key: tuple[str, int] | None = None
        self._fd_path: Path | None = None
        self._fd_until = 0.0  # time.time() at which the open file's UTC day ends
        self._torn = False

    def path_for(self, day: dt.date) -> Path:
        host = socket.gethostname().replace("/", "_")[:60] or "host"
        return self.journal_dir / f"{day.isoformat()}-{host}-{os.getpid()}.jsonl"

    def append(self, record: dict[str, Any]) -> Path:
        """Append one record; return the file it went to. Raises OSError when the journal cannot take it."""
        return self.append_lines(encode_line(record))

    def append_lines(self, line: bytes) -> Path:
        """Append encoded whole lines with one write (all of them or none); return the file they went to."""
        with self._lock:
            fd = self._fd
            # the open file while its day lasts, in this process (a forked child must not share its parent's file)
            if fd is None or time.time() >= self._fd_until or self._fd_key[1] != current_pid():
                fd = self._descriptor(dt.datetime.now(dt.timezone.utc).date())
            if self._torn:
                line = b"\n" + line
            try:
                write_whole_line(fd, line)
            except OSError:
                try:
                    self._torn = ends_torn(fd)  # a short write that could not be undone
                except OSError:
                    self._torn = True
                raise
            self._torn = False
            if self.fsync:
                os.fsync(fd)
            return self._fd_path

    def _descriptor(self, today: dt.date) -> int:
        key = (today.isoformat(), current_pid())  # a forked child must not share its parent's file
        if self._fd is None or self._fd_key != key:
            self.close_locked()
            self.journal_dir.mkdir(parents=True, exist_ok=True)
            path = self.path_for(today)
            self._fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
            self._fd_key, self._fd_path = key, path
            day_end = dt.datetime.combine(today + dt.timedelta(days=1), dt.time(), tzinfo=dt.timezone.utc)
            self._fd_until = day_end.timestamp()
            self._torn = ends_torn(self._fd)
        return self._fd

    def close_locked(self) -> None:
        if self._fd is not None:
            try:
                os.close(self._fd)
            finally:
                self._fd = None
                self._fd_key = None
                self._fd_path = None

    def close(self) -> None:
        with self._lock:
            self.close_locked()
