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

from llmcost.config import Settings
from llmcost.errors import LLMCostError
from llmcost.events import AttemptRecord, UsageEvent
from llmcost.ingestion import bulk, sources
from llmcost.ingestion.content_ids import LineIds
from llmcost.ingestion.exact import raw_text
from llmcost.ingestion.parse import (
    Batch,
    drop_batch_tables,
    overlong_line,
    parse_lines,
)
from llmcost.ingestion.sources import Source, configured_sources, pending, sources_for_paths  # noqa: F401 - pending: the API
from llmcost.store import connection as store
from llmcost.store import queries, transaction
from llmcost.store.migrations import KEYED_TABLES, event_content_hash

# A batch should hold a few of DuckDB's row groups (122,880 rows), so that the store's insert writes
# them on every core: about 270k JSON lines, or 300k CSV rows (which are shorter). Once a batch has
# been cut at whole row groups, the next reads about ROW_GROUPS_PER_BATCH groups' worth of bytes.
BATCH_BYTES = 128 * 1024 * 1024
CSV_BATCH_BYTES = BATCH_BYTES // 2
MAX_BATCH_BYTES = 2 * BATCH_BYTES
MIN_BATCH_BYTES = 1024 * 1024
ROW_GROUPS_PER_BATCH = 2
HOLD_SECONDS = 3.0
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


def _read_offset(db: duckdb.DuckDBPyConnection, path: Path) -> tuple[str | None, int, int]:
    row = db.execute(
        "SELECT file_key, bytes_consumed, records_read FROM ingest_sources WHERE path = ?", [str(path)]
    ).fetchall()
    return (row[0][0], row[0][1], row[0][2]) if row else (None, 0, 0)


def _csv_header(line: bytes) -> list[str] | None:
    if not line.endswith(b"\n"):
        return None
    return next(csv.reader([line.decode("utf-8", errors="replace")]))


def ingest(
    settings: Settings,
    paths: Iterable[str | Path] | None = None,
    *,
    progress: ProgressCallback | None = None,
    lock_timeout: float = store.DEFAULT_LOCK_TIMEOUT,
) -> IngestResult:
    """Ingest the given paths, or every configured source when none are given."""
    from llmcost.pricing.rates import Pricer

    sources = sources_for_paths(settings, paths) if paths else configured_sources(settings)
    pricer = Pricer.from_settings(settings)
    total = IngestResult()
    for source in sources:
        total.add(_ingest_file(settings, source, pricer, progress, lock_timeout))
    from llmcost.control.rebuild import after_ingest

    after_ingest(settings)  # stored records count towards today's spend at once (`watch` runs this every round)
    return total


def _ingest_file(settings, source: Source, pricer, progress, lock_timeout) -> IngestResult:
    result = IngestResult(files=1)
    if source.is_gzip and _read_since_settled(settings, source, lock_timeout):
        return result
    try:
        if source.refusal:
            raise sources.Unreadable(source.refusal)
        with sources.readable(source) as readable:
            _ingest_readable(settings, readable, pricer, progress, lock_timeout, result)
    except sources.Unreadable as refusal:
        with store.writing(settings.db_path, timeout=lock_timeout) as db:
            _refuse(db, source, str(refusal), result)
    return result


def _read_since_settled(settings, source: Source, lock_timeout) -> bool:
    """Whether a file was last read after it had stopped changing (a gzip file, which is decompressed
    to be read, is then not decompressed again on every round)."""
    with store.reading(settings.db_path, timeout=lock_timeout) as db:
        row = db.execute("SELECT last_synced_at FROM ingest_sources WHERE path = ?",
                         [str(source.path)]).fetchall() if db is not None else []
    changed = dt.datetime.fromtimestamp(source.path.stat().st_mtime, dt.timezone.utc).replace(tzinfo=None)
    return bool(row) and changed + dt.timedelta(seconds=settings.inbox_settle_seconds + 1) < row[0][0]


def _ingest_readable(settings, source: Source, pricer, progress, lock_timeout, result: IngestResult) -> None:
    size = source.data.stat().st_size
    start = sources.content_start(source.data)
    if size <= start:
        return  # empty
    # A dropped-in file that stopped changing is finished: its last line is whole even without a newline.
    whole = source.finished and sources.settled(source.data, settings.inbox_settle_seconds)
    header_line = sources.header_line(source.data) if source.is_csv else None
    if header_line is not None and whole and not header_line.endswith(b"\n"):
        header_line += b"\n"
    header = _csv_header(header_line) if header_line is not None else None
    if source.is_csv and header is None:
        return  # the header is still being written
    limit = CSV_BATCH_BYTES if source.is_csv else BATCH_BYTES
    reading = _Reading(source, header, header_line, start, size, whole)
    finished = False
    while not finished:
        # Hold the write connection for a few seconds of batches at most, so readers in other
        # processes get in between, without paying a checkpoint after every batch.
        with store.writing(settings.db_path, timeout=lock_timeout) as db:
            held_until = time.monotonic() + HOLD_SECONDS
            while not finished and time.monotonic() < held_until:
                offset, finished, limit = _next_batch(db, settings, reading, pricer, result, limit)
                if progress:
                    progress(str(source.path), offset, size)
        if not finished:
            store.let_readers_in(settings.db_path)


@dataclass(frozen=True)
class _Reading:
    source: Source
    header: list[str] | None
    header_line: bytes | None
    start: int        # after a byte order mark
    size: int
    whole: bool       # the last line counts without a newline


def _resume_point(db, reading: _Reading) -> tuple[int, int, bool]:
    """(offset, records read, whether the file is read from its start): where the file's content was left."""
    source = reading.source
    known_key, offset, records = _read_offset(db, source.path)
    begin = reading.start + len(reading.header_line or b"")
    saved = sources.saved_offset(source, (known_key, offset) if known_key is not None else None, reading.size)
    if saved is None:
        return begin, 0, True  # new, rewritten or truncated: its records get ids from their content
    return max(saved, begin), records, saved < begin


def _next_batch(db, settings, reading: _Reading, pricer, result: IngestResult, limit: int):
    """Ingest the next batch of at most `limit` bytes of a file in one transaction.

    Returns (offset reached, whether the file is done, how many bytes the next batch should read).
    """
    source, size = reading.source, reading.size
    offset, records, fresh = _resume_point(db, reading)
    if fresh:
        problem = sources.encoding_problem(source.data) or (source.finished and sources.not_usage_reason(
            source.data, reading.start, reading.header, {f.name for f in bulk.FIELDS}))
        if problem:
            _refuse(db, source, problem, result, size=size, raw=sources.head_text(source.data, reading.start))
            return size, True, limit
    ids = LineIds(db, str(source.path), reading.header_line, fresh)
    lines, at_end = sources.whole_lines(source.data, offset, limit, reading.whole)
    if lines:
        batch = parse_lines(db, lines, start_offset=offset, ids=ids, source=source,
                            csv_header=reading.header, settings=settings, pricer=pricer, at_end=at_end)
    elif at_end:
        ids.save()
        _touch_source(db, source, offset, records)
        return offset, True, limit  # the last line is still being written
    else:
        batch = overlong_line(source, ids, offset, lines.obj)
        if batch is None:
            return offset, True, limit  # no end to that line yet
    new_offset = min(offset + batch.consumed, size)
    result.add(_store_batch(db, batch, source, ids, new_offset, records + batch.lines))
    if batch.cut_at_row_group:
        # A little more than the bytes that make the row groups wanted, so that little is read twice.
        wanted = batch.consumed / batch.bulk_events * ROW_GROUPS_PER_BATCH * bulk.ROW_GROUP_ROWS * 1.03
        limit = int(min(max(wanted, MIN_BATCH_BYTES), MAX_BATCH_BYTES))
    return new_offset, new_offset >= size or at_end, limit


def _touch_source(db, source: Source, offset: int, records: int) -> None:
    db.execute(
        """
        INSERT INTO ingest_sources VALUES (?, ?, ?, ?, ?, ?)
        ON CONFLICT (path) DO UPDATE SET file_key = excluded.file_key, bytes_consumed = excluded.bytes_consumed,
            records_read = excluded.records_read, last_synced_at = excluded.last_synced_at
        """,
        [str(source.path), source.kind, sources.fingerprint(source.data, offset), offset, records, _utcnow()],
    )


def _refuse(db, source: Source, reason: str, result: IngestResult, size: int | None = None,
            raw: str | None = None) -> None:
    """Keep one failed_logs row saying why nothing of a file is read, with the text of its head where it may
    be read (so no record in it is lost); with `size`, the file counts as read until its content changes."""
    failed_id = "refused:" + hashlib.sha1(f"{source.path}\n{reason}\n{raw or ''}".encode()).hexdigest()[:24]
    with transaction(db):
        before = db.execute("SELECT count(*) FROM failed_logs").fetchall()[0][0]
        db.execute(
            """
            INSERT INTO failed_logs (failed_id, kind, logged_at, error, source, raw)
            SELECT ?, 'refused', ?, ?, ?, ? WHERE NOT EXISTS (SELECT 1 FROM failed_logs WHERE failed_id = ?)
            """,
            [failed_id, _utcnow(), reason, str(source.path), raw, failed_id],
        )
        if db.execute("SELECT count(*) FROM failed_logs").fetchall()[0][0] > before:
            result.failed += 1
            result.failed_reasons.append(f"{source.path}: {reason}")
        if size is not None:
            _touch_source(db, source, size, 0)


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)


def _store_batch(db, batch: Batch, source: Source, ids: LineIds, new_offset: int, records: int) -> IngestResult:
    result = IngestResult(read=batch.lines)
    now = _utcnow()
    with transaction(db):
        if batch.events:
            result.stored = _insert_new(db, "usage_events", batch.events_view, _EVENT_VALUES, now, _EVENT_TARGETS)
            conflicts = _conflicts(db, batch.events_view) if result.stored < batch.events else []
            result.duplicates = batch.events - result.stored - len(conflicts)
            _keep_conflicts(db, source, conflicts, now, result)
        if batch.attempts:
            result.attempts = _insert_new(db, "call_attempts", batch.attempts_view, _ATTEMPT_VALUES, now, _ATTEMPT_VALUES)
        if len(batch.failed):
            failed = batch.failed  # noqa: F841
            db.execute(
                """
                INSERT INTO failed_logs BY NAME
                SELECT f.failed_id, f.kind, f.logged_at, f.use_case, f.estimated_tokens, f.error, f.user_id,
                       f.tenant_id, f.source, f.raw, f.event_id, r.stored AS recovered,
                       CASE WHEN r.stored THEN ?::TIMESTAMP END AS recovered_at
                FROM failed f, LATERAL (SELECT
                    (f.event_id IS NOT NULL AND EXISTS (SELECT 1 FROM usage_events u WHERE u.event_id = f.event_id))
                    OR (f.attempt_id IS NOT NULL
                        AND EXISTS (SELECT 1 FROM call_attempts c WHERE c.attempt_id = f.attempt_id)) AS stored) r
                WHERE NOT EXISTS (SELECT 1 FROM failed_logs x WHERE x.failed_id = f.failed_id)
                """,
                [now],
            )
            unstored = batch.failed[batch.failed["event_id"].isna() & batch.failed["attempt_id"].isna()]
            result.failed_reasons += [str(r) for r in unstored["error"].head(MAX_REASONS)]
        drop_batch_tables(db)
        result.failed += batch.invalid
        result.recovered = batch.from_fallback
        ids.save()
        _touch_source(db, source, new_offset, records)
    return result


def _conflicts(db, events_view: str) -> list[tuple[str, int]]:
    """(event_id, offset) of the batch's events whose id is stored with other content."""
    return db.execute(
        f"""
        SELECT b.event_id, b.off FROM (SELECT event_id, off, {_BATCH_CONTENT_HASH} AS content_key
                                       FROM {events_view}) b
        JOIN (SELECT event_id, content_key FROM usage_events
              WHERE event_key IN (SELECT hash(event_id) FROM {events_view})) s USING (event_id)
        WHERE b.content_key <> s.content_key
        ORDER BY b.off
        """
    ).fetchall()


def _keep_conflicts(db, source: Source, conflicts: list[tuple[str, int]], now: dt.datetime,
                    result: IngestResult) -> None:
    """A record repeating a stored event_id with other content is no duplicate: it goes to failed_logs."""
    for event_id, offset in conflicts:
        with source.data.open("rb") as f:
            f.seek(offset)
            raw = raw_text(f.readline())
        reason = (f"conflict: event_id {event_id} is stored already with other content (tokens, cost or "
                  "identity); this record was not stored. The stored row is usage_events where event_id is "
                  "this one, this record's text is in raw")
        failed_id = f"conflict:{event_id}:{hashlib.sha1(raw.encode('utf-8', 'backslashreplace')).hexdigest()[:16]}"
        inserted = db.execute(
            """
            INSERT INTO failed_logs (failed_id, kind, logged_at, error, source, raw, event_id)
            SELECT ?, 'conflict', ?, ?, ?, ?, ? WHERE NOT EXISTS (SELECT 1 FROM failed_logs WHERE failed_id = ?)
            RETURNING failed_id
            """,
            [failed_id, now, reason, str(source.path), raw, event_id, failed_id],
        ).fetchall()
        result.failed += 1
        if inserted:
            result.failed_reasons.append(reason)


_COST_USD = "CAST(CAST(cost_pico AS DECIMAL(18, 0)) * CAST('0.000000000001' AS DECIMAL(18, 12)) AS DECIMAL(18, 12))"
# The store's columns are the record models' fields plus the local `day` (one schema: llmcost.events), named,
# since columns added by later migrations come after the id key.
_EVENT_TARGETS = ", ".join(["day", *UsageEvent.model_fields])
_EVENT_VALUES = _EVENT_TARGETS.replace("cost_usd", _COST_USD)
_BATCH_CONTENT_HASH = event_content_hash(_COST_USD)
_ATTEMPT_VALUES = ", ".join(["day", *(name for name in AttemptRecord.model_fields if name != "record")])


def _insert_new(db, table: str, batch: str, values: str, now: dt.datetime, targets: str | None = None) -> int:
    """Insert the rows of the view `batch` whose id `table` (usage_events or call_attempts) does not
    have yet, the first of each id in file order; `values` are the table's columns but the last two
    (ingested_at and the id key). Returns how many rows went in."""
    key, id_column = KEYED_TABLES[table]
    content = f", {_BATCH_CONTENT_HASH}" if table == "usage_events" else ""
    content_column = ", content_key" if table == "usage_events" else ""
    # Whether ids repeat within the batch, and how many stored rows have the key of one of its ids: a
    # scan of the narrow key column alone. Reading the stored ids too (to compare them where keys match)
    # costs a scan of every stored id, 0.14 s a batch at 4M stored, so it is left out when no key matches.
    repeats, key_matches = db.execute(
        f"""
        SELECT (SELECT count(*) - count(DISTINCT {id_column}) FROM {batch}),
               (SELECT count(*) FROM {table} WHERE {key} IN (SELECT hash({id_column}) FROM {batch}))
        """
    ).fetchall()[0]
    not_stored = f"""
        WHERE NOT EXISTS (
            SELECT 1 FROM (SELECT {id_column} FROM {table}
                           WHERE {key} IN (SELECT hash({id_column}) FROM {batch})) stored
            WHERE stored.{id_column} = b.{id_column})""" if key_matches else ""
    # A window's output is unordered, and an unordered insert leaves part-filled row groups that every
    # checkpoint rewrites: after one the rows go in in file order. Without one the scan of the batch
    # keeps its order by itself, and sorting would cost a tenth of the insert.
    first_of_each = (f"QUALIFY row_number() OVER (PARTITION BY {id_column} ORDER BY off) = 1 ORDER BY off"
                     if repeats else "")
    # DuckDB's INSERT returns how many rows it wrote.
    return db.execute(
        f"""
        INSERT INTO {table} ({targets or values}, ingested_at, {key}{content_column})
        SELECT {values}, ?, hash({id_column}){content} FROM {batch} b
        {not_stored}
        {first_of_each}
        """,
        [now],
    ).fetchall()[0][0]


def known_sources(settings: Settings) -> list[Path]:
    """Every file the store has read, as it records them (for a rebuild); [] when it cannot be read."""
    try:
        with store.reading(settings.db_path) as db:
            if db is None:
                return []
            return [Path(p) for (p,) in db.execute("SELECT path FROM ingest_sources ORDER BY path").fetchall()]
    except LLMCostError:
        return []


def replay(settings: Settings, known: list[Path]) -> tuple[IngestResult, list[Path]]:
    """Ingest the configured sources, then every other file in `known` that still exists; returns the
    result and the known files that are gone."""
    result = ingest(settings)
    present = [path for path in known if path.is_file()]
    if present:
        result.add(ingest(settings, present))
    return result, [path for path in known if not path.is_file()]


def last_synced(settings: Settings) -> dt.datetime | None:
    """When the store last ingested any source (UTC, naive), or None."""
    with store.reading(settings.db_path) as db:
        return None if db is None else queries.last_synced(db)

