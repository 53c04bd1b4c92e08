"""Turning raw lines (JSON Lines or CSV) into validated, priced rows ready for the store.

Plain records are validated in bulk by `llmcost.ingestion.bulk` (CSV cells split by `llmcost.ingestion.csv`); the
rest go through pydantic one by one (`llmcost.ingestion.exact`). Both kinds are priced here and staged as one
batch for `llmcost.ingestion.run` to store.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from decimal import Decimal
from typing import TYPE_CHECKING

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute  # noqa: F401 - pa.compute

from llmcost.events import (
    TOKEN_FIELDS,
    AttemptRecord,
    UsageEvent,
)
from llmcost.ingestion import bulk, sources
from llmcost.ingestion import csv as csv_rows
from llmcost.ingestion.exact import FAILED_COLUMNS, MAX_RAW_CHARS, RecordParser, decode_line, raw_text
from llmcost.pricing.rates import GROUP_COLUMNS
from llmcost.pricing.vector import price_columns_pico, price_frame_pico, price_groups_pico

if TYPE_CHECKING:
    from llmcost.config import Settings
    from llmcost.ingestion.content_ids import LineIds
    from llmcost.ingestion.sources import Source
    from llmcost.pricing.rates import Pricer


# The staged batch's columns: the record models' fields (one schema: llmcost.events), the local day, and the
# cost as whole picodollars until it is stored.
EVENT_COLUMNS = ["day", *("cost_pico" if name == "cost_usd" else name for name in UsageEvent.model_fields)]
ATTEMPT_COLUMNS = ["day", *(name for name in AttemptRecord.model_fields if name != "record")]


@dataclass
class Batch:
    """One chunk's records: events and call attempts wait in the connection's temp views named by
    `events_view` and `attempts_view`."""

    lines: int = 0
    events: int = 0            # rows in batch_events, before de-duplication
    attempts: int = 0          # rows in batch_attempts, before de-duplication
    failed: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=FAILED_COLUMNS))
    consumed: int = 0          # bytes of the chunk read (less than all when a CSV record waits for its end)
    invalid: int = 0           # records that could not be stored at all
    from_fallback: int = 0     # fallback-log records (events, call attempts) that were valid
    cut_at_row_group: bool = False  # the batch stopped after whole row groups, before the chunk's end
    bulk_events: int = 0       # events that took the bulk path
    events_view: str = "batch_events"
    attempts_view: str = "batch_attempts"


def overlong_line(source: Source, ids: LineIds, offset: int, head: bytes) -> Batch | None:
    """A line longer than a whole batch: kept in failed_logs with its start, or None while it has no end yet."""
    length = len(head)
    with open(source.data, "rb") as f:
        f.seek(offset + length)
        while block := f.read(1 << 20):
            end = block.find(b"\n")
            if end >= 0:
                length += end + 1
                break
            length += len(block)
        else:
            return None
    parser = RecordParser(source, ids, None)
    parser.fail(offset, "invalid", f"a line of {length:,} bytes is longer than a record may be "
                f"({len(head):,} bytes)", raw_text(head[:MAX_RAW_CHARS]))
    return Batch(lines=1, invalid=1, consumed=length,
                 failed=pd.DataFrame(parser.failed, columns=FAILED_COLUMNS))


def parse_lines(db: duckdb.DuckDBPyConnection, chunk: bytes | memoryview, *, start_offset: int, ids: LineIds,
                source: Source, csv_header: list[str] | None, settings: Settings, pricer: Pricer,
                at_end: bool = True) -> Batch:
    """Validate and price one chunk of whole lines; its events wait in the temp view `batch_events`."""
    parser = RecordParser(source, ids, settings)
    lines = bulk.lines_table(chunk, start_offset)
    options = dict(source_label=parser.source_label, timezone=settings.timezone)
    consumed = len(chunk)
    cut = None
    clean_idx = None
    attempt_idx = np.zeros(0, dtype=np.int64)
    if csv_header is None:
        if source.kind == "fallback":  # every line is a fallback entry: pydantic's path reads them
            other_idx = np.arange(lines.num_rows)
        else:
            clean_idx, cut = _whole_row_groups(db, bulk.stage_json(db, lines, **options), lines.num_rows, at_end)
            if cut is not None:
                consumed = lines.column("off")[cut].as_py() - start_offset
                lines = lines.slice(0, cut)
            other_idx = _all_but(lines.num_rows, clean_idx)
            if len(other_idx):  # lines left over: some may be call attempts
                attempt_idx = bulk.stage_attempts(db, lines, other_idx, source_label=parser.source_label,
                                                  timezone=settings.timezone)
                other_idx = _all_but(lines.num_rows, np.concatenate([clean_idx, attempt_idx]))
        offsets, raws = bulk.pick(lines.column("off"), other_idx), bulk.pick(lines.column("raw"), other_idx)
        slow = [(offset, None if not raw.strip() else decode_line(raw), raw) for offset, raw in zip(offsets, raws)]
    else:
        cells, slow_idx = csv_rows.cells(db, chunk, lines, csv_header, sources.header_line(source.data))
        if cells is not None and cells.num_rows:
            clean_idx, cut = _whole_row_groups(db, bulk.stage_csv(db, cells, **options), lines.num_rows, at_end)
            cell_idx = cells.column("idx").to_numpy()
            staged = np.zeros(lines.num_rows, dtype=bool)
            staged[clean_idx] = True
            slow_idx |= set(cell_idx[~staged[cell_idx]].tolist())
            if cut is not None:
                slow_idx = {i for i in slow_idx if i < cut}
                consumed = lines.column("off")[cut].as_py() - start_offset
                lines = lines.slice(0, cut)
        ordered = sorted(slow_idx)
        slow, used = csv_rows.records(bulk.pick(lines.column("raw"), ordered), bulk.pick(lines.column("off"), ordered),
                                      csv_header, whole_chunk=cells is None, at_end=at_end)
        if used < len(ordered):  # only when every line is on this path, so `used` counts lines of the chunk
            consumed = lines.column("off")[used].as_py() - start_offset
            lines = lines.slice(0, used)

    if clean_idx is not None and len(clean_idx):
        _give_generated_ids(db, lines, ids)
    blank = 0
    for offset, obj, raw in slow:
        if obj is None:
            blank += 1
            continue
        if isinstance(obj, Exception):
            parser.invalid += 1
            parser.fail(offset, "invalid", str(obj), raw_text(raw))
        else:
            parser.handle(offset, obj, raw_text(raw))

    clean_prices = _price_clean_rows(db, lines, parser, pricer) if clean_idx is not None and len(clean_idx) else None
    slow_events = _priced_slow_rows(parser, settings, pricer) if parser.events else None
    records = (len(clean_idx) if clean_idx is not None else 0) + len(attempt_idx) + len(slow) - blank
    batch = Batch(lines=records, invalid=parser.invalid, from_fallback=parser.from_fallback, consumed=consumed,
                  cut_at_row_group=cut is not None, bulk_events=len(clean_idx) if clean_idx is not None else 0)
    batch.events = _load_batch_events(db, clean_prices, slow_events)
    batch.attempts = _load_batch_attempts(db, parser, settings, staged=len(attempt_idx))
    if parser.failed:
        batch.failed = pd.DataFrame(parser.failed, columns=FAILED_COLUMNS).drop_duplicates("failed_id")
    return batch


def _give_generated_ids(db: duckdb.DuckDBPyConnection, lines: pa.Table, ids: LineIds) -> None:
    """Ids from content for the staged clean rows that came without an event_id, in file order."""
    idx = db.sql(f"SELECT idx FROM {bulk.CLEAN_ROWS} WHERE event_id IS NULL ORDER BY off").to_arrow_table()
    if not idx.num_rows:
        return
    wanted = idx.column("idx").to_numpy()
    generated = [ids.event_id(raw_text(raw)) for raw in bulk.pick(lines.column("raw"), wanted)]
    db.register("generated_ids", pa.table({"idx": pa.array(wanted, pa.int64()), "gen_id": generated}))
    try:
        db.execute(f"UPDATE {bulk.CLEAN_ROWS} SET event_id = g.gen_id FROM generated_ids g "
                   f"WHERE {bulk.CLEAN_ROWS}.idx = g.idx")
    finally:
        db.unregister("generated_ids")


def _whole_row_groups(db: duckdb.DuckDBPyConnection, clean_idx: np.ndarray, line_count: int,
                      at_end: bool) -> tuple[np.ndarray, int | None]:
    """Keep a whole number of DuckDB row groups of clean rows; the lines after the last kept row wait
    for the next batch. Returns (the kept idx, the first line left over, or None when all are kept).

    A batch that ends in a part-filled row group costs a rewrite of that group at the next checkpoint;
    cutting the batch there leaves only the file's last batch part-filled.
    """
    if at_end or len(clean_idx) < bulk.ROW_GROUP_ROWS:
        return clean_idx, None
    ordered = np.sort(clean_idx)
    keep = len(ordered) - len(ordered) % bulk.ROW_GROUP_ROWS
    cut = int(ordered[keep - 1]) + 1
    if cut >= line_count:
        return clean_idx, None
    db.execute(f"DELETE FROM {bulk.CLEAN_ROWS} WHERE idx >= ?", [cut])
    return ordered[:keep], cut


def _all_but(count: int, taken: np.ndarray) -> np.ndarray:
    rest = np.ones(count, dtype=bool)
    rest[taken] = False
    return np.flatnonzero(rest)


def _too_costly(pico: np.ndarray) -> np.ndarray:
    return np.asarray([abs(int(v)) >= bulk.MAX_COST_PICO for v in pico], dtype=bool) if pico.dtype == object \
        else np.abs(pico) >= bulk.MAX_COST_PICO


def _cost_reason(pico: int) -> str:
    return (f"cost_usd: ${Decimal(int(pico)).scaleb(-12):,.2f} for one call is beyond what the store holds "
            "($999,999.99); check the token counts")


# The key of the rows one price serves: a hash of what prices them (a group whose key another shares is
# priced by its names instead).
_GROUP_KEY = f"hash({', '.join(GROUP_COLUMNS)}, CAST(ts AS DATE))"


def _price_clean_rows(db: duckdb.DuckDBPyConnection, lines: pa.Table, parser: RecordParser, pricer: Pricer) -> pa.Table:
    """(idx, cost_pico, price_source) for the staged clean rows: the cost a record gives, or its price.

    A priced row costing more than the store holds is kept as failed instead.
    """
    # DuckDB finds the few groups of rows that one price serves (models times UTC days), and gives each
    # row its group's 64-bit key, so that only numbers cross into Python, no names and no join.
    groups = db.execute(f"SELECT {_GROUP_KEY} AS group_key, * FROM (SELECT DISTINCT {', '.join(GROUP_COLUMNS)}, "
                        f"CAST(ts AS DATE) AS ts FROM {bulk.CLEAN_ROWS} WHERE reported_pico IS NULL)").fetchall()
    keys = np.array([group[0] for group in groups], dtype=np.uint64)
    by_key = np.argsort(keys)
    keys, groups = keys[by_key], [groups[i][1:1 + len(GROUP_COLUMNS)] for i in by_key.tolist()]
    keys_distinct = bool(len(keys) == len(np.unique(keys)))
    token_columns = (*TOKEN_FIELDS, "total_tokens")
    names = "" if keys_distinct else f", {', '.join(GROUP_COLUMNS)}"
    table = db.sql(
        f"SELECT idx, reported_pico, reported_source, {_GROUP_KEY} AS group_key, ts{names}, "
        f"{', '.join(f'coalesce({name}, 0) AS {name}' for name in token_columns)} FROM {bulk.CLEAN_ROWS}"
    ).to_arrow_table()
    rows = table.num_rows
    reported = table.column("reported_pico")
    # Through Arrow, not pandas: a column of int64 with nulls would become float64 there and lose digits.
    pico = pa.compute.fill_null(reported, 0).to_numpy()
    sources = table.column("reported_source")
    unpriced = np.flatnonzero(reported.is_null().to_numpy(zero_copy_only=False))
    too_costly = np.zeros(rows, dtype=bool)
    if len(unpriced):
        part = table if len(unpriced) == rows else table.take(unpriced)
        ts, tokens = part.column("ts").to_numpy(), {name: part.column(name).to_numpy() for name in token_columns}
        if keys_distinct:
            row_keys = part.column("group_key").to_numpy()
            group_of_row = np.minimum(np.searchsorted(keys, row_keys), len(keys) - 1)
            if not np.array_equal(keys[group_of_row], row_keys):  # a bug, never a record's fault: no price guessed
                raise RuntimeError("a staged row's price group key is not among its batch's groups")
            computed, source_codes, source_names = price_groups_pico(pricer, groups, group_of_row, ts, tokens)
            computed_sources = pa.array(source_names, pa.string()).take(pa.array(source_codes))
        else:  # two groups share a key (about one batch in 1e16): grouped by their names instead
            computed, named_sources = price_columns_pico(
                pricer, part.column("provider"), part.column("model"), ts, tokens,
                response_model=part.column("response_model"), service_tier=part.column("service_tier"))
            computed_sources = pa.array(named_sources, pa.string())
        pico = pico.astype(computed.dtype)  # a writable copy, of Python ints when a cost is beyond int64
        pico[unpriced] = computed
        too_costly[unpriced] = _too_costly(computed)
        if len(unpriced) < rows:  # the other rows gave their own cost, and keep its source
            merged = np.array(sources.to_pylist(), dtype=object)
            merged[unpriced] = computed_sources.to_pylist()
            computed_sources = pa.array(merged, type=pa.string())
        sources = computed_sources
    idx = table.column("idx").to_numpy()
    for position in np.flatnonzero(too_costly).tolist():
        parser.invalid += 1
        parser.fail(int(lines.column("off")[int(idx[position])].as_py()), "invalid", _cost_reason(pico[position]),
                    raw_text(lines.column("raw")[int(idx[position])].as_py()))
    if too_costly.any():
        keep = ~too_costly
        idx, pico, sources = idx[keep], pico[keep], sources.filter(pa.array(keep))
    return pa.table({"idx": pa.array(idx, type=pa.int64()),
                     "cost_pico": pa.array(pico.astype(np.int64), type=pa.int64()),
                     "price_source": sources})


def _priced_slow_rows(parser: RecordParser, settings: Settings, pricer: Pricer) -> pa.Table:
    rows = [event.model_dump() for event, _, _ in parser.events]
    frame = pd.DataFrame(rows)
    frame["off"] = [offset for _, offset, _ in parser.events]
    frame["metadata"] = [json.dumps(r["metadata"], ensure_ascii=False, default=str, separators=(",", ":"))
                         if r["metadata"] else None for r in rows]
    pico = np.zeros(len(frame), dtype=object)
    sources = frame["price_source"].tolist()
    reported = frame["cost_usd"].notna().to_numpy()
    for position in np.flatnonzero(reported).tolist():
        pico[position] = int(frame["cost_usd"].iat[position].scaleb(12))
    if (~reported).any():
        computed, computed_sources = price_frame_pico(pricer, frame.loc[~reported])
        for position, value, price_source in zip(np.flatnonzero(~reported).tolist(), computed.tolist(),
                                                 computed_sources):
            pico[position] = value
            sources[position] = price_source
    too_costly = _too_costly(pico)
    for position in np.flatnonzero(too_costly).tolist():
        _, offset, raw = parser.events[position]
        parser.invalid += 1
        parser.fail(offset, "invalid", _cost_reason(pico[position]), raw)
    frame["cost_pico"] = pico.astype(object)
    frame["price_source"] = sources
    frame = frame.loc[~too_costly]
    frame["cost_pico"] = frame["cost_pico"].astype("int64")
    frame["day"] = _days(frame["ts"], settings)
    frame["ts"] = _naive_utc(frame["ts"])
    return pa.Table.from_pandas(frame[["off", *EVENT_COLUMNS]], preserve_index=False)


_EVENTS_VIEW = Batch.events_view
_ATTEMPTS_VIEW = Batch.attempts_view
_BATCH_TABLES = ("clean_prices", "slow_events", "slow_attempts", bulk.CLEAN_ROWS, bulk.CLEAN_ATTEMPTS)


def _load_batch_events(db: duckdb.DuckDBPyConnection, clean_prices: pa.Table | None,
                       slow_events: pa.Table | None) -> int:
    """Make the view batch_events over the priced clean rows and the pydantic path's rows; returns its size."""
    columns = ", ".join(["off", *EVENT_COLUMNS])
    parts = []
    if slow_events is not None or clean_prices is None:  # 7 statements a batch: made only when there are rows for it
        db.execute("CREATE OR REPLACE TEMP TABLE slow_events AS SELECT * FROM usage_events LIMIT 0")
        db.execute("ALTER TABLE slow_events DROP COLUMN ingested_at")
        db.execute("ALTER TABLE slow_events DROP COLUMN event_key")
        db.execute("ALTER TABLE slow_events DROP COLUMN content_key")
        db.execute("ALTER TABLE slow_events DROP COLUMN cost_usd")
        db.execute("ALTER TABLE slow_events ADD COLUMN cost_pico BIGINT")
        db.execute("ALTER TABLE slow_events ADD COLUMN off BIGINT")
        parts.append(f"SELECT {columns} FROM slow_events")
    if slow_events is not None:
        db.register("slow_part", slow_events)
        db.execute(f"INSERT INTO slow_events ({columns}) SELECT {columns} FROM slow_part")
        db.unregister("slow_part")
    if clean_prices is not None:
        db.register("clean_prices_part", clean_prices)
        db.execute("CREATE OR REPLACE TEMP TABLE clean_prices AS SELECT * FROM clean_prices_part")
        db.unregister("clean_prices_part")
        parts.append(f"SELECT {columns} FROM {bulk.CLEAN_ROWS} JOIN clean_prices USING (idx)")
    db.execute(f"CREATE OR REPLACE TEMP VIEW {_EVENTS_VIEW} AS " + " UNION ALL ".join(parts))
    return (slow_events.num_rows if slow_events is not None else 0) + \
        (clean_prices.num_rows if clean_prices is not None else 0)


def _load_batch_attempts(db: duckdb.DuckDBPyConnection, parser: RecordParser, settings: Settings, staged: int) -> int:
    """Make the view batch_attempts over the staged call attempts and the pydantic path's; returns its size."""
    columns = ", ".join(["off", *ATTEMPT_COLUMNS])
    parts = []
    if parser.attempts:
        attempts = pd.DataFrame(parser.attempts)
        attempts["day"] = _days(attempts["ts"], settings)
        attempts["ts"] = _naive_utc(attempts["ts"])
        db.register("slow_attempts_part", attempts[["off", *ATTEMPT_COLUMNS]])
        db.execute("CREATE OR REPLACE TEMP TABLE slow_attempts AS SELECT * FROM slow_attempts_part")
        db.unregister("slow_attempts_part")
        parts.append(f"SELECT {columns} FROM slow_attempts")
    if staged:
        parts.append(f"SELECT {columns} FROM {bulk.CLEAN_ATTEMPTS}")
    if parts:
        db.execute(f"CREATE OR REPLACE TEMP VIEW {_ATTEMPTS_VIEW} AS " + " UNION ALL ".join(parts))
    return len(parser.attempts) + staged


def drop_batch_tables(db: duckdb.DuckDBPyConnection) -> None:
    """Drop what parse_lines left in the connection for one batch."""
    for view in (_EVENTS_VIEW, _ATTEMPTS_VIEW):
        db.execute(f"DROP VIEW IF EXISTS {view}")
    for table in _BATCH_TABLES:
        db.execute(f"DROP TABLE IF EXISTS {table}")


def _naive_utc(series: pd.Series) -> pd.Series:
    return pd.to_datetime(series, utc=True).dt.tz_localize(None)


def _days(series: pd.Series, settings: Settings) -> pd.Series:
    return pd.to_datetime(series, utc=True).dt.tz_convert(settings.timezone).dt.date
