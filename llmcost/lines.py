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


class LineTemplate:
    """`encode_line` for records whose keys come in one order and some of whose values repeat from line to line
    (a call site's identity): the JSON text of each run of repeating values is kept per distinct set of values,
    so a line encodes only what changes. Its lines are `encode_line`'s, byte for byte; any record of another
    shape, or a value it cannot write, goes through `encode_line` itself (which names the problem)."""

    _CACHED_RUNS = 4096

    def __init__(self, keys: tuple[str, ...], repeating: frozenset[str]):
        self.keys = keys
        runs: list[tuple[bool, tuple[str, ...]]] = []
        for key in keys:
            if runs and runs[-1][0] == (key in repeating):
                runs[-1] = (runs[-1][0], (*runs[-1][1], key))
            else:
                runs.append((key in repeating, (key,)))
        self._runs = tuple(runs)
        self._cache: dict[tuple, tuple[tuple[type, ...], str]] = {}

    def encode(self, record: dict[str, Any]) -> bytes:
        if tuple(record) != self.keys:
            return encode_line(record)
        try:
            parts = []
            for repeating, keys in self._runs:
                if repeating:
                    parts.append(self._repeating(record, keys))
                else:
                    parts.extend(f'"{key}":{_json_value(record[key])}' for key in keys)
            return ("{" + ",".join(parts) + "}\n").encode()
        except Exception:  # a value json cannot write or utf-8 cannot encode: encode_line raises its error
            return encode_line(record)

    def _repeating(self, record: dict[str, Any], keys: tuple[str, ...]) -> str:
        values = tuple(record[key] for key in keys)
        types = tuple(map(type, values))  # 1, 1.0 and True are equal keys but different JSON
        try:
            cached = self._cache.get(values)
        except TypeError:  # an unhashable value: encoded every time
            return _json_members({key: record[key] for key in keys})
        if cached is not None and cached[0] == types:
            return cached[1]
        text = _json_members({key: record[key] for key in keys})
        if len(self._cache) >= self._CACHED_RUNS:
            self._cache.clear()
        self._cache[values] = (types, text)
        return text


def _json_members(record: dict[str, Any]) -> str:
    """The members of a JSON object as `encode_line` writes them, without the braces."""
    return json.dumps(record, default=_json_default, ensure_ascii=False, separators=(",", ":"))[1:-1]


def _json_value(value: Any) -> str:
    """One value's JSON text as `encode_line` writes it; plain ASCII text and whole numbers without json."""
    kind = type(value)
    if kind is str and value.isascii() and value.isprintable() and '"' not in value and "\\" not in value:
        return f'"{value}"'
    if kind is int:
        return int.__repr__(value)
    return json.dumps(value, default=_json_default, ensure_ascii=False, separators=(",", ":"))
