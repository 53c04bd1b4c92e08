"""What the forwarder has had acknowledged: a small SQLite file next to the journals, and the rejected records.

A source's row is the byte offset up to which the collector acknowledged its records, with the fingerprint
of the bytes before it (`llmcost.ingestion.sources.fingerprint`), so a rewritten or truncated file is read
again from its start, exactly as ingestion does. Records the collector rejected are appended (fsynced) to
`forward-rejected.jsonl` with the reason before the offset moves past them, so none is ever lost.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import json
import os
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from llmcost.config import Settings
from llmcost.lines import append_line, encode_line

STATE_FILE = "forward-state.sqlite"
REJECTED_FILE = "forward-rejected.jsonl"
LOCK_FILE = "forward.lock"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS forwarded (
    path TEXT PRIMARY KEY, kind TEXT NOT NULL, file_key TEXT NOT NULL, bytes_acknowledged INTEGER NOT NULL,
    records INTEGER NOT NULL, updated_at TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS forward_meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


def state_path(settings: Settings) -> Path:
    return settings.home / STATE_FILE


def rejected_path(settings: Settings) -> Path:
    return settings.home / REJECTED_FILE


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


@dataclass(frozen=True)
class Rejected:
    """A record the collector will not take (or no request can carry), kept on this host with the reason."""

    source: Path
    offset: int
    reason: str
    line: bytes


class ForwardState:
    """The forwarder's progress per source file, and when it last succeeded or failed."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.path = state_path(settings)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(self.path, isolation_level=None, timeout=30)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")  # an advanced offset survives power loss
        self.db.executescript(_SCHEMA)

    def close(self) -> None:
        self.db.close()

    def known(self, path: Path) -> tuple[str, int] | None:
        """(fingerprint, acknowledged offset) of a source, or None when nothing of it was forwarded."""
        row = self.db.execute("SELECT file_key, bytes_acknowledged FROM forwarded WHERE path = ?",
                              [str(path)]).fetchone()
        return (row[0], row[1]) if row else None

    def records(self, path: Path) -> int:
        row = self.db.execute("SELECT records FROM forwarded WHERE path = ?", [str(path)]).fetchone()
        return row[0] if row else 0

    def acknowledge(self, path: Path, kind: str, file_key: str, offset: int, records: int) -> None:
        """Move a source's offset past records the collector acknowledged (or this host kept as rejected)."""
        with self.db:
            self.db.execute(
                """INSERT INTO forwarded VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (path) DO UPDATE SET
                   kind = excluded.kind, file_key = excluded.file_key,
                   bytes_acknowledged = excluded.bytes_acknowledged, records = excluded.records,
                   updated_at = excluded.updated_at""",
                [str(path), kind, file_key, offset, records, _now()])

    def forget(self, path: Path) -> None:
        with self.db:
            self.db.execute("DELETE FROM forwarded WHERE path = ?", [str(path)])

    def note(self, outcome: str, detail: str = "") -> None:
        """Remember the last success ('success') or failure ('error', with its reason)."""
        with self.db:
            self.db.execute("INSERT OR REPLACE INTO forward_meta VALUES (?, ?)", [f"last_{outcome}", _now()])
            if outcome == "error":
                self.db.execute("INSERT OR REPLACE INTO forward_meta VALUES ('last_error_reason', ?)", [detail])

    def meta(self) -> dict[str, str]:
        return dict(self.db.execute("SELECT name, value FROM forward_meta").fetchall())


def keep_rejected(settings: Settings, rejected: list[Rejected]) -> None:
    """Append rejected records with their reasons (fsynced): they are kept before their offset is passed."""
    if not rejected:
        return
    now = _now()
    entries = [{"rejected_at": now, "source": str(r.source), "offset": r.offset, "reason": r.reason,
                "line": r.line.decode("utf-8", errors="backslashreplace")} for r in rejected]
    # Kept already when a crash came between keeping them and saving the offset past them: not twice.
    kept = {(e.get("source"), e.get("offset"), e.get("line")) for e in read_rejected(settings)}
    lines = b"".join(encode_line(e) for e in entries if (e["source"], e["offset"], e["line"]) not in kept)
    if lines:
        append_line(rejected_path(settings), lines, fsync=True, lock=True)


def rejected_count(settings: Settings) -> int:
    path = rejected_path(settings)
    if not path.is_file():
        return 0
    with path.open("rb") as f:
        return sum(block.count(b"\n") for block in iter(lambda: f.read(1 << 20), b""))


def read_rejected(settings: Settings) -> list[dict]:
    path = rejected_path(settings)
    if not path.is_file():
        return []
    entries = []
    with path.open("rb") as f:
        for line in f:
            try:
                entries.append(json.loads(line))
            except ValueError:
                continue  # a line torn by a crash: its record is sent again, then kept whole
    return entries


@contextlib.contextmanager
def exclusive(settings: Settings) -> Iterator[None]:
    """One forwarder at a time per data folder (a second waits), so two never send the same batch."""
    path = settings.home / LOCK_FILE
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)
