"""Source files: which to read, and knowing a file by its content rather than by its name.

A source's progress is a byte offset plus a fingerprint of the bytes before it. A file rewritten
under the same name (a daily re-export whose first line is always the header) no longer matches the
fingerprint, so it is read again from its start; a renamed or copied file is read in full too, and its
records map to the ids they had (content-derived, see `llmcost.ingestion.content_ids`), so nothing is counted twice.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import json
import os
import shutil
import tempfile
import time
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

from llmcost.config import Settings
from llmcost.store import connection as store

FINGERPRINT_BYTES = 64 * 1024
FINGERPRINT_VERSION = "v2:"
LEGACY_FIRST_LINE_LIMIT = 64 * 1024
USAGE_SUFFIXES = (".jsonl", ".json", ".ndjson", ".csv")
UTF8_BOM = b"\xef\xbb\xbf"
UTF16_BOMS = (b"\xff\xfe", b"\xfe\xff")
SNIFF_LINES = 20
SNIFF_BYTES = 1024 * 1024


class Unreadable(Exception):
    """Nothing of a file can be read: the reason goes to failed_logs as one entry."""


@dataclass(frozen=True)
class Source:
    path: Path                      # the file as known to the store (its real path)
    kind: str                       # journal | fallback | inbox | file
    read_from: Path | None = None   # what is read instead: a gzip file's decompressed copy
    refusal: str | None = None      # why nothing of it is read (a link out of the data folder)

    @property
    def data(self) -> Path:
        return self.read_from or self.path

    @property
    def is_gzip(self) -> bool:
        return self.path.name.lower().endswith(".gz")

    @property
    def is_csv(self) -> bool:
        return self.path.name.lower().removesuffix(".gz").endswith(".csv")

    @property
    def finished(self) -> bool:
        """Dropped in whole (inbox, explicit path): no writer appends to it, so its last line counts once settled."""
        return self.kind in ("inbox", "file")


def is_usage_file(path: Path) -> bool:
    name = path.name.lower().removesuffix(".gz")
    return any(name.endswith(suffix) for suffix in USAGE_SUFFIXES)


def fingerprint(path: Path, offset: int) -> str:
    """What the bytes before `offset` look like: the first and the last 64 KB of them, and their length."""
    digest = hashlib.sha1(str(offset).encode())
    with path.open("rb") as f:
        digest.update(f.read(min(offset, FINGERPRINT_BYTES)))
        if offset > FINGERPRINT_BYTES:
            f.seek(max(FINGERPRINT_BYTES, offset - FINGERPRINT_BYTES))
            digest.update(f.read(offset - f.tell()))
    return FINGERPRINT_VERSION + digest.hexdigest()


def _legacy_key(stored_path: str, data: Path) -> str | None:
    """The fingerprint versions before 0.x stored: the path and the first line (kept to resume old stores)."""
    with data.open("rb") as f:
        head = f.read(LEGACY_FIRST_LINE_LIMIT)
    end = head.find(b"\n")
    if end < 0:
        return None
    return hashlib.sha1(stored_path.encode() + b"\n" + head[: end + 1]).hexdigest()


def same_content(stored_key: str, stored_path: str, data: Path, offset: int, size: int) -> bool:
    """Whether the file still holds, before `offset`, the bytes that were read from it."""
    if offset > size:
        return False
    if stored_key.startswith(FINGERPRINT_VERSION):
        return fingerprint(data, offset) == stored_key
    return _legacy_key(stored_path, data) == stored_key


def content_start(data: Path) -> int:
    """Where the records start: after a UTF-8 byte order mark (Excel's "CSV UTF-8" writes one)."""
    with data.open("rb") as f:
        return len(UTF8_BOM) if f.read(len(UTF8_BOM)) == UTF8_BOM else 0


def header_line(data: Path) -> bytes:
    """A CSV file's header line, as bytes, after any byte order mark."""
    with data.open("rb") as f:
        f.seek(content_start(data))
        return f.readline()


def settled(data: Path, settle_seconds: float) -> bool:
    """Whether a dropped-in file has stopped changing, so a last line without a newline is whole."""
    return time.time() - data.stat().st_mtime >= settle_seconds


def encoding_problem(data: Path) -> str | None:
    """Why the file's text cannot be read as UTF-8 at all, or None."""
    with data.open("rb") as f:
        head = f.read(256)
    if head.startswith(UTF16_BOMS) or (len(head) >= 2 and b"\x00" in head[:2] and head.count(b"\x00") * 3 > len(head)):
        return "UTF-16: convert to UTF-8 (for example `iconv -f UTF-16 -t UTF-8`, or save as \"CSV UTF-8\")"
    return None


def head_text(data: Path, start: int, limit: int = 1_000_000) -> str:
    """The first `limit` bytes of a file from `start`, as text (undecodable bytes replaced), for a refusal."""
    with data.open("rb") as f:
        f.seek(start)
        return f.read(limit).decode("utf-8", errors="replace").replace("\x00", "\ufffd")


def not_usage_reason(data: Path, start: int, csv_header: list[str] | None, known_fields: set[str]) -> str | None:
    """Why the file is no usage file at all (its first lines are none of them records), or None."""
    if csv_header is not None:
        if known_fields & {name.strip() for name in csv_header}:
            return None
        return (f"not a usage file: its CSV header ({', '.join(csv_header)[:200]}) names none of the usage "
                "fields (ts, user_id, tenant_id, use_case, input_tokens, ...); nothing was read")
    with data.open("rb") as f:
        f.seek(start)
        head = f.read(SNIFF_BYTES)
    lines = [line for line in head.split(b"\n")[:-1] if line.strip()][:SNIFF_LINES]
    # Fewer lines than the rule names, with more of the file to come (a long line after them): too few to
    # judge the file by, so it is read line by line, each line kept or failed with its own reason.
    if not lines or (len(lines) < SNIFF_LINES and len(head) == SNIFF_BYTES):
        return None
    for line in lines:
        # A line that opens an object is a record, broken or not: it is kept with its own reason, and the
        # file is no stray document.
        if line.lstrip().startswith(b"{"):
            return None
        try:
            if isinstance(json.loads(line), dict):
                return None
        except (ValueError, RecursionError):
            continue
    return (f"not a usage file: none of its first {len(lines)} lines is a JSON object (a usage record); "
            "nothing was read")


def outside(path: Path, roots: tuple[Path, ...]) -> bool:
    real = path.resolve()
    return not any(real == root or real.is_relative_to(root) for root in roots)


@contextlib.contextmanager
def readable(source: Source) -> Iterator[Source]:
    """The source with a file to read: a gzip file is decompressed into a temporary copy first.

    Raises Unreadable when a gzip file cannot be decompressed.
    """
    if not source.is_gzip:
        yield source
        return
    handle, name = tempfile.mkstemp(prefix="llmcost-", suffix=".unzipped")
    try:
        try:
            with os.fdopen(handle, "wb") as out, gzip.open(source.path, "rb") as compressed:
                shutil.copyfileobj(compressed, out, 1 << 20)
        except (OSError, EOFError, zlib.error) as error:
            raise Unreadable(f"not a readable gzip file ({error}); nothing was read") from None
        yield replace(source, read_from=Path(name))
    finally:
        Path(name).unlink(missing_ok=True)


def configured_sources(settings: Settings) -> list[Source]:
    """The journal folder, the fallback log and the inbox folder, in that order, each file once by its real path.

    An inbox entry that links to a file outside the data folder is refused, not read.
    """
    # Regular files only: a device in the journal folder (say a link to /dev/full) never ends.
    sources = [Source(p.resolve(), "journal") for p in sorted(settings.journal_dir.glob("*.jsonl")) if p.is_file()]
    if settings.fallback_log.is_file():
        sources.append(Source(settings.fallback_log.resolve(), "fallback"))
    if settings.inbox_dir.is_dir():
        roots = tuple({settings.home.resolve(), settings.inbox_dir.resolve(), settings.journal_dir.resolve()})
        for entry in sorted(settings.inbox_dir.iterdir()):
            if not (entry.is_file() and is_usage_file(entry)):
                continue
            if entry.is_symlink() and outside(entry, roots):
                sources.append(Source(entry.absolute(), "inbox", refusal=(
                    f"a link to {entry.resolve()}, outside the data folder {settings.home}: not read "
                    "(copy the file into the inbox, or ingest it by its path)")))
            else:
                sources.append(Source(entry.resolve(), "inbox"))
    return _once_each(sources)


def _once_each(sources: list[Source]) -> list[Source]:
    seen: set[Path] = set()
    unique = []
    for source in sources:
        if source.path not in seen:
            seen.add(source.path)
            unique.append(source)
    return unique


def sources_for_paths(settings: Settings, paths: Iterable[str | Path]) -> list[Source]:
    """Explicit paths: files, or folders whose usage files are read. Missing paths raise FileNotFoundError."""
    fallback = settings.fallback_log.resolve()
    sources = []
    for raw in paths:
        path = Path(raw).resolve()
        if path.is_dir():
            files = sorted(p.resolve() for p in path.iterdir() if p.is_file() and is_usage_file(p))
        elif path.is_file():
            files = [path]
        else:
            raise FileNotFoundError(f"no such file or folder: {raw}")
        for file in files:
            kind = "fallback" if file == fallback else "journal" if file.parent == settings.journal_dir.resolve() else "file"
            sources.append(Source(file, kind))
    return _once_each(sources)


def saved_offset(source: Source, known: tuple[str, int] | None, size: int) -> int | None:
    """Where reading carries on: the saved offset of `known` (fingerprint, offset) while the file still holds
    the bytes read before it; None for a new, rewritten or truncated file, which is read from its start."""
    if known is None or not same_content(known[0], str(source.path), source.data, known[1], size):
        return None
    return known[1]


def whole_lines(data: Path, offset: int, limit: int, whole: bool) -> tuple[memoryview, bool]:
    """(the whole lines among the next `limit` bytes from `offset`, whether the file's end was reached);
    the view's `.obj` is all the bytes read.

    A last line without a newline is left for later (its writer may not have finished it) unless `whole`
    says the file is finished. No whole line within `limit` bytes: an empty view, with the end not reached
    when the line is longer than `limit` (the caller decides what to do with it).
    """
    with data.open("rb") as f:
        f.seek(offset)
        chunk = f.read(limit)
    at_end = len(chunk) < limit
    if at_end and whole and chunk and not chunk.endswith(b"\n"):
        chunk += b"\n"
    return memoryview(chunk)[: chunk.rfind(b"\n") + 1], at_end


def pending(settings: Settings) -> dict[str, int]:
    """Records waiting in the journal folder, the fallback log and the inbox folder, not ingested yet."""
    counts = {"journal": 0, "fallback": 0, "inbox": 0}
    offsets: dict[str, tuple[str, int]] = {}
    with store.reading(settings.db_path) as db:
        if db is not None:
            for path, key, consumed in db.execute(
                "SELECT path, file_key, bytes_consumed FROM ingest_sources").fetchall():
                offsets[path] = (key, consumed)
    for source in configured_sources(settings):
        if source.refusal or source.is_gzip:
            continue
        try:
            counts[source.kind] += _waiting_records(source, offsets.get(str(source.path)))
        except OSError:
            continue
    return counts


def waiting_records(source: Source, known: tuple[str, int] | None) -> int:
    """Lines of a source after its saved (fingerprint, offset): what has not been read yet."""
    return _waiting_records(source, known)


def _waiting_records(source: Source, known: tuple[str, int] | None) -> int:
    size = source.data.stat().st_size
    consumed = content_start(source.data)
    if known is not None and same_content(known[0], str(source.path), source.data, known[1], size):
        consumed = max(consumed, known[1])
    elif source.is_csv:
        consumed += len(header_line(source.data))
    waiting, last = 0, b"\n"
    with source.data.open("rb") as f:
        f.seek(consumed)
        for block in iter(lambda: f.read(1 << 20), b""):
            waiting += block.count(b"\n")
            last = block[-1:]
    # A dropped-in file's last line without a newline is a record too, stored once the file settles.
    return waiting + (1 if source.finished and last != b"\n" else 0)
