"""Ingestion: journals, the fallback log and dropped-in files into the store, exactly once.

Each source file is read from the byte offset recorded in `ingest_sources` up to its last complete
line (a torn last line waits for the writer to finish it). Every batch of lines is inserted in one
transaction that also advances the file's offset, so a run killed at any point leaves either the
whole batch or none of it, and the next run carries on. Events are also de-duplicated by
`event_id`, so the same record arriving by two routes (journal and fallback log) is stored once.
Nothing is dropped: a line that cannot be stored goes to `failed_logs` with its raw text and reason.
"""

from __future__ import annotations

import csv
import datetime as dt
import hashlib
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
import duckdb

from . import bulk, store
from .config import Settings
from .migrations import KEYED_TABLES
from .records import BATCH_ATTEMPTS, BATCH_EVENTS, Batch, drop_batch_tables, overlong_line, parse_lines

# A batch should hold a few of DuckDB's row groups (122,880 rows), so that the store's insert writes
# them on every core: about 270k JSON lines, or 300k CSV rows (which are shorter). Once a batch has
# been cut at whole row groups, the next reads about ROW_GROUPS_PER_BATCH groups' worth of bytes.
BATCH_BYTES = 128 * 1024 * 1024
CSV_BATCH_BYTES = BATCH_BYTES // 2
MAX_BATCH_BYTES = 2 * BATCH_BYTES
MIN_BATCH_BYTES = 1024 * 1024
ROW_GROUPS_PER_BATCH = 2
HOLD_SECONDS = 3.0
FIRST_LINE_LIMIT = 64 * 1024
MAX_REASONS = 5

ProgressCallback = Callable[[str, int, int], None]


@dataclass
class IngestResult:
    """What one ingest run did; `failed_reasons` keeps the first few reasons."""

    files: int = 0
    read: int = 0
    stored: int = 0
    duplicates: int = 0
    failed: int = 0
    attempts: int = 0
    recovered: int = 0
    failed_reasons: list[str] = field(default_factory=list)

    def add(self, other: IngestResult) -> None:
        for name in ("files", "read", "stored", "duplicates", "failed", "attempts", "recovered"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        room = MAX_REASONS - len(self.failed_reasons)
        self.failed_reasons.extend(other.failed_reasons[:room])

    def summary(self) -> str:
        text = (
            f"read {self.read:,} records from {self.files:,} file(s): stored {self.stored:,}, "
            f"duplicates {self.duplicates:,}, failed {self.failed:,}"
        )
        if self.attempts:
            text += f", call attempts {self.attempts:,}"
        if self.recovered:
            text += f", recovered from the fallback log {self.recovered:,}"
        return text


@dataclass(frozen=True)
class Source:
    path: Path
    kind: str  # journal | fallback | inbox | file

    @property
    def is_csv(self) -> bool:
        return self.path.suffix.lower() == ".csv"


def configured_sources(settings: Settings) -> list[Source]:
    """The journal folder, the fallback log and the inbox folder, in that order."""
    # Regular files only: a device in the journal folder (say a link to /dev/full) never ends.
    sources = [Source(p, "journal") for p in sorted(settings.journal_dir.glob("*.jsonl")) if p.is_file()]
    if settings.fallback_log.is_file():
        sources.append(Source(settings.fallback_log, "fallback"))
    if settings.inbox_dir.is_dir():
        sources.extend(
            Source(p, "inbox")
            for p in sorted(settings.inbox_dir.iterdir())
            if p.is_file() and p.suffix.lower() in (".jsonl", ".json", ".ndjson", ".csv")
        )
    return sources


def sources_for_paths(settings: Settings, paths: Iterable[str | Path]) -> list[Source]:
    """Explicit paths: files, or folders whose .jsonl/.csv files are read. Missing paths raise FileNotFoundError."""
    fallback = settings.fallback_log.resolve()
    sources = []
    for raw in paths:
        path = Path(raw).resolve()
        if path.is_dir():
            files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in (".jsonl", ".ndjson", ".json", ".csv"))
        elif path.is_file():
            files = [path]
        else:
            raise FileNotFoundError(f"no such file or folder: {raw}")
        for file in files:
            kind = "fallback" if file == fallback else "journal" if file.parent == settings.journal_dir.resolve() else "file"
            sources.append(Source(file, kind))
    return sources


def _first_line_key(path: Path) -> str | None:
    """A fingerprint of the file: its path and first complete line. A file replaced under the same name
    gets a new one; two files never share one (ids of records without an event_id derive from it)."""
    with path.open("rb") as f:
        head = f.read(FIRST_LINE_LIMIT)
    end = head.find(b"\n")
    if end < 0 and len(head) < FIRST_LINE_LIMIT:
        return None
    first = head if end < 0 else head[: end + 1]
    return hashlib.sha1(str(path).encode() + b"\n" + first).hexdigest()


def _read_offset(db: duckdb.DuckDBPyConnection, path: Path) -> tuple[str | None, int, int]:
    row = db.execute(
        "SELECT file_key, bytes_consumed, records_read FROM ingest_sources WHERE path = ?", [str(path)]
    ).fetchall()
    return (row[0][0], row[0][1], row[0][2]) if row else (None, 0, 0)


def _csv_header(path: Path) -> list[str] | None:
    with path.open("r", encoding="utf-8", errors="replace", newline="") as f:
        first = f.readline()
    if not first.endswith("\n"):
        return None
    return next(csv.reader([first]))


def ingest(
    settings: Settings,
    paths: Iterable[str | Path] | None = None,
    *,
    progress: ProgressCallback | None = None,
    lock_timeout: float = store.DEFAULT_LOCK_TIMEOUT,
) -> IngestResult:
    """Ingest the given paths, or every configured source when none are given."""
    from .pricing import Pricer

    sources = sources_for_paths(settings, paths) if paths else configured_sources(settings)
    pricer = Pricer.from_settings(settings)
    total = IngestResult()
    for source in sources:
        total.add(_ingest_file(settings, source, pricer, progress, lock_timeout))
    return total


def _ingest_file(settings, source: Source, pricer, progress, lock_timeout) -> IngestResult:
    result = IngestResult(files=1)
    key = _first_line_key(source.path)
    if key is None:
        return result  # empty, or a first line still being written
    header = _csv_header(source.path) if source.is_csv else None
    size = source.path.stat().st_size
    limit = CSV_BATCH_BYTES if source.is_csv else BATCH_BYTES
    finished = False
    while not finished:
        # Hold the write connection for a few seconds of batches at most, so readers in other
        # processes get in between, without paying a checkpoint after every batch.
        with store.writing(settings.db_path, timeout=lock_timeout) as db:
            held_until = time.monotonic() + HOLD_SECONDS
            while not finished and time.monotonic() < held_until:
                offset, finished, limit = _next_batch(db, settings, source, key, header, size, pricer, result, limit)
                if progress:
                    progress(str(source.path), offset, size)
    return result


def _next_batch(db, settings, source: Source, key: str, header, size: int, pricer, result: IngestResult, limit: int):
    """Ingest the next batch of at most `limit` bytes of a file in one transaction.

    Returns (offset reached, whether the file is done, how many bytes the next batch should read).
    """
    known_key, offset, records = _read_offset(db, source.path)
    if known_key is not None and (known_key != key or offset > size):
        offset, records = 0, 0  # replaced or truncated: read again; event_id de-duplication keeps it exactly-once
    if source.is_csv and offset == 0:
        offset = len(_first_line_bytes(source.path))
    with source.path.open("rb") as f:
        f.seek(offset)
        chunk = f.read(limit)
    at_end = len(chunk) < limit
    end = chunk.rfind(b"\n")
    if end >= 0:
        batch = parse_lines(db, memoryview(chunk)[: end + 1], start_offset=offset, file_key=key, source=source,
                            csv_header=header, settings=settings, pricer=pricer, at_end=at_end)
    elif at_end:
        _touch_source(db, source, key, offset, records)
        return offset, True, limit  # the last line is still being written
    else:
        batch = overlong_line(source, key, offset, chunk)
        if batch is None:
            return offset, True, limit  # no end to that line yet
    result.add(_store_batch(db, batch, source, key, offset + batch.consumed, records + batch.lines))
    offset += batch.consumed
    if batch.cut_at_row_group:
        # A little more than the bytes that make the row groups wanted, so that little is read twice.
        wanted = batch.consumed / batch.bulk_events * ROW_GROUPS_PER_BATCH * bulk.ROW_GROUP_ROWS * 1.03
        limit = int(min(max(wanted, MIN_BATCH_BYTES), MAX_BATCH_BYTES))
    return offset, offset >= size or at_end, limit


def _first_line_bytes(path: Path) -> bytes:
    with path.open("rb") as f:
        return f.readline()


def _touch_source(db, source: Source, key: str, offset: int, records: int) -> None:
    db.execute(
        """
        INSERT INTO ingest_sources VALUES (?, ?, ?, ?, ?, ?)
        ON CONFLICT (path) DO UPDATE SET file_key = excluded.file_key, bytes_consumed = excluded.bytes_consumed,
            records_read = excluded.records_read, last_synced_at = excluded.last_synced_at
        """,
        [str(source.path), source.kind, key, offset, records, _utcnow()],
    )


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)


def _store_batch(db, batch: Batch, source: Source, key: str, new_offset: int, records: int) -> IngestResult:
    result = IngestResult(read=batch.lines)
    now = _utcnow()
    db.execute("BEGIN TRANSACTION")
    try:
        if batch.events:
            result.stored = _insert_new(db, "usage_events", BATCH_EVENTS, _EVENT_VALUES, now, _EVENT_TARGETS)
            result.duplicates = batch.events - result.stored
        if batch.attempts:
            result.attempts = _insert_new(db, "call_attempts", BATCH_ATTEMPTS, _ATTEMPT_VALUES, now)
        if len(batch.failed):
            failed = batch.failed  # noqa: F841
            db.execute(
                """
                INSERT INTO failed_logs
                SELECT f.failed_id, f.kind, f.logged_at, f.use_case, f.estimated_tokens, f.error, f.user_id,
                       f.tenant_id, f.source, f.raw, f.event_id, r.stored, CASE WHEN r.stored THEN ? END
                FROM failed f, LATERAL (SELECT
                    (f.event_id IS NOT NULL AND EXISTS (SELECT 1 FROM usage_events u WHERE u.event_id = f.event_id))
                    OR (f.attempt_id IS NOT NULL
                        AND EXISTS (SELECT 1 FROM call_attempts c WHERE c.attempt_id = f.attempt_id)) AS stored) r
                WHERE NOT EXISTS (SELECT 1 FROM failed_logs x WHERE x.failed_id = f.failed_id)
                """,
                [now],
            )
            unstored = batch.failed[batch.failed["event_id"].isna() & batch.failed["attempt_id"].isna()]
            result.failed_reasons = [str(r) for r in unstored["error"].head(MAX_REASONS)]
        drop_batch_tables(db)
        result.failed = batch.invalid
        result.recovered = batch.from_fallback
        _touch_source(db, source, key, new_offset, records)
        db.execute("COMMIT")
    except BaseException:
        db.execute("ROLLBACK")
        raise
    return result


_EVENT_VALUES = """
    event_id, ts, day, user_id, tenant_id, use_case, account_type, provider, model,
    input_tokens, output_tokens, cache_read_tokens, cache_write_tokens, reasoning_tokens,
    total_tokens, estimated_tokens, usage_estimated, latency_ms, status, error,
    CAST(CAST(cost_pico AS DECIMAL(18, 0)) * CAST('0.000000000001' AS DECIMAL(18, 12)) AS DECIMAL(18, 12)),
    price_source, attempt_id, source, metadata, cache_write_1h_tokens, response_model, service_tier"""
_ATTEMPT_VALUES = """
    attempt_id, ts, day, user_id, tenant_id, use_case, account_type, provider, model, estimated_tokens, source"""
# The columns _EVENT_VALUES fills, named, since columns added by later migrations come after the id key.
_EVENT_TARGETS = _EVENT_VALUES.replace(
    "CAST(CAST(cost_pico AS DECIMAL(18, 0)) * CAST('0.000000000001' AS DECIMAL(18, 12)) AS DECIMAL(18, 12))",
    "cost_usd")


def _insert_new(db, table: str, batch: str, values: str, now: dt.datetime, targets: str | None = None) -> int:
    """Insert the rows of the view `batch` whose id `table` (usage_events or call_attempts) does not
    have yet, the first of each id in file order; `values` are the table's columns but the last two
    (ingested_at and the id key). Returns how many rows went in."""
    key, id_column = KEYED_TABLES[table]
    repeats = db.execute(f"SELECT count(*) - count(DISTINCT {id_column}) FROM {batch}").fetchall()[0][0]
    # A window's output is unordered, and an unordered insert leaves part-filled row groups that every
    # checkpoint rewrites: after one the rows go in in file order. Without one the scan of the batch
    # keeps its order by itself, and sorting would cost a tenth of the insert.
    first_of_each = (f"QUALIFY row_number() OVER (PARTITION BY {id_column} ORDER BY off) = 1 ORDER BY off"
                     if repeats else "")
    before = db.execute(f"SELECT count(*) FROM {table}").fetchall()[0][0]
    # Ids already stored are found by their key first, so only the narrow key column of the whole
    # table is read; the ids themselves are compared where keys match.
    db.execute(
        f"""
        INSERT INTO {table} ({targets or values}, ingested_at, {key})
        SELECT {values}, ?, hash({id_column}) FROM {batch} b
        WHERE NOT EXISTS (
            SELECT 1 FROM (SELECT {id_column} FROM {table}
                           WHERE {key} IN (SELECT hash({id_column}) FROM {batch})) stored
            WHERE stored.{id_column} = b.{id_column})
        {first_of_each}
        """,
        [now],
    )
    return db.execute(f"SELECT count(*) FROM {table}").fetchall()[0][0] - before


def pending(settings: Settings) -> dict[str, int]:
    """Records written to the journal folder and the fallback log but not ingested yet."""
    counts = {"journal": 0, "fallback": 0}
    offsets: dict[str, tuple[str, int]] = {}
    with store.reading(settings.db_path) as db:
        if db is not None:
            for path, key, consumed in db.execute(
                "SELECT path, file_key, bytes_consumed FROM ingest_sources WHERE kind IN ('journal', 'fallback')"
            ).fetchall():
                offsets[path] = (key, consumed)
    journal_sources = [Source(p, "journal") for p in sorted(settings.journal_dir.glob("*.jsonl")) if p.is_file()]
    fallback_sources = [Source(settings.fallback_log, "fallback")] if settings.fallback_log.is_file() else []
    for source in journal_sources + fallback_sources:
        key, consumed = offsets.get(str(source.path.resolve()), offsets.get(str(source.path), (None, 0)))
        try:
            if key is not None and key != _first_line_key(source.path):
                consumed = 0
            with source.path.open("rb") as f:
                f.seek(consumed)
                counts[source.kind] += sum(block.count(b"\n") for block in iter(lambda: f.read(1 << 20), b""))
        except OSError:
            continue
    return counts


def last_synced(settings: Settings) -> dt.datetime | None:
    """When the store last ingested any source (UTC, naive), or None."""
    with store.reading(settings.db_path) as db:
        if db is None:
            return None
        return db.execute("SELECT max(last_synced_at) FROM ingest_sources").fetchall()[0][0]

