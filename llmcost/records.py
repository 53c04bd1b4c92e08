"""Turning raw lines (JSON Lines or CSV) into validated, priced rows ready for the store.

Three kinds of record arrive: usage events, the tracker's write-ahead call attempts
(`{"record": "attempt", ...}`) and fallback-log entries (`{"timestamp", "error", "event"}`).
Whatever cannot be stored normally becomes a `failed_logs` row with its raw text and reason.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import tempfile
from dataclasses import dataclass, field
from decimal import Decimal
from typing import TYPE_CHECKING, Any

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute  # noqa: F401 - pa.compute
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from . import bulk
from .events import TOKEN_FIELDS, UNATTRIBUTED, UsageEvent, describe_validation_error

if TYPE_CHECKING:
    from .config import Settings
    from .ingest import Source
    from .pricing import Pricer

MAX_RAW_CHARS = 1_000_000
IDENTITY_FIELDS = ("user_id", "tenant_id", "use_case")

EVENT_COLUMNS = [
    "event_id", "ts", "day", "user_id", "tenant_id", "use_case", "account_type", "provider", "model",
    "input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens", "reasoning_tokens",
    "total_tokens", "estimated_tokens", "usage_estimated", "latency_ms", "status", "error", "cost_pico",
    "price_source", "attempt_id", "source", "metadata",
]
ATTEMPT_COLUMNS = [
    "attempt_id", "ts", "day", "user_id", "tenant_id", "use_case", "account_type", "provider", "model",
    "estimated_tokens", "source",
]
FAILED_COLUMNS = [
    "failed_id", "kind", "logged_at", "use_case", "estimated_tokens", "error", "user_id", "tenant_id", "source",
    "raw", "event_id",
]


class AttemptRecord(BaseModel):
    """The tracker's write-ahead record of a call about to be made."""

    model_config = ConfigDict(extra="ignore", str_strip_whitespace=True)

    record: str
    attempt_id: str = Field(min_length=1, max_length=200)
    ts: dt.datetime
    user_id: str | None = None
    tenant_id: str | None = None
    use_case: str | None = None
    account_type: str | None = None
    provider: str | None = None
    model: str | None = None
    estimated_tokens: int | None = Field(default=None, ge=0)
    source: str | None = None


@dataclass
class Batch:
    """One chunk's records: events wait in the connection's temp table `batch_events`."""

    lines: int = 0
    events: int = 0            # rows in batch_events, before de-duplication
    attempts: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=ATTEMPT_COLUMNS))
    failed: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=FAILED_COLUMNS))
    invalid: int = 0           # records that could not be stored at all
    from_fallback: int = 0     # fallback-log events that were valid (stored or already there)


def stable_id(file_key: str, offset: int | str, kind: str = "event") -> str:
    """An id for a record that came without one: its file's fingerprint and byte offset, so reading the
    file again never duplicates it. `llmcost.bulk` builds the same ids in SQL."""
    prefix = "" if kind == "event" else f"{kind}:"
    return f"{prefix}{file_key[:16]}:{offset}"


def _raw_text(line: bytes) -> str:
    text = line.decode("utf-8", errors="backslashreplace").rstrip("\r\n").replace("\x00", "\\x00")
    if len(text) > MAX_RAW_CHARS:
        return text[:MAX_RAW_CHARS] + f"... [truncated: {len(text):,} characters in all]"
    return text


def _clip(value: Any, limit: int = 500) -> str | None:
    if value is None:
        return None
    text = str(value).replace("\x00", "\\x00")
    return text[:limit] if text.strip() else None


def _int_or_none(value: Any) -> int | None:
    try:
        number = int(value)
    except (TypeError, ValueError, OverflowError):
        return None
    return number if 0 <= number < 2**62 else None


def _has_usage(obj: dict[str, Any]) -> bool:
    return any(_int_or_none(obj.get(name)) for name in (*TOKEN_FIELDS, "total_tokens", "estimated_tokens")) or bool(
        obj.get("cost_usd") not in (None, "", 0, "0")
    )


def _usage_hint(obj: dict[str, Any]) -> int | None:
    total = _int_or_none(obj.get("total_tokens"))
    if total:
        return total
    parts = (_int_or_none(obj.get("input_tokens")) or 0) + (_int_or_none(obj.get("output_tokens")) or 0)
    return parts or _int_or_none(obj.get("estimated_tokens"))


class _Parser:
    def __init__(self, source: Source, file_key: str, settings: Settings):
        self.source = source
        self.file_key = file_key
        self.settings = settings
        self.source_label = f"{source.kind}:{source.path.name}"
        self.now = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)
        self.events: list[tuple[UsageEvent, int, str]] = []
        self.attempts: list[dict[str, Any]] = []
        self.failed: list[dict[str, Any]] = []
        self.invalid = 0
        self.from_fallback = 0

    def fail(self, offset: int, kind: str, error: str, raw: str, obj: dict | None = None,
             event_id: str | None = None, logged_at: dt.datetime | None = None) -> None:
        obj = obj or {}
        self.failed.append({
            "failed_id": stable_id(self.file_key, offset, "failed"),
            "kind": kind,
            "logged_at": logged_at or self.now,
            "use_case": _clip(obj.get("use_case")),
            "estimated_tokens": _usage_hint(obj),
            "error": error,
            "user_id": _clip(obj.get("user_id")),
            "tenant_id": _clip(obj.get("tenant_id")),
            "source": str(self.source.path),
            "raw": raw,
            "event_id": event_id,
        })

    def event(self, offset: int, obj: dict[str, Any], raw: str) -> tuple[UsageEvent | None, str | None]:
        """Validate one usage event; returns (event, None) or (None, reason)."""
        obj = dict(obj)
        if obj.get("event_id") is None:
            obj["event_id"] = stable_id(self.file_key, offset)
        if not obj.get("source"):
            obj["source"] = self.source_label
        missing = [name for name in IDENTITY_FIELDS if not str(obj.get(name) or "").strip()]
        if missing and _has_usage(obj):
            for name in missing:
                obj[name] = UNATTRIBUTED
        if isinstance(obj.get("metadata"), str):
            try:
                obj["metadata"] = json.loads(obj["metadata"]) if obj["metadata"].strip() else {}
            except ValueError:
                return None, "metadata: not valid JSON"
        try:
            event = UsageEvent.model_validate(obj)
        except ValidationError as error:
            return None, describe_validation_error(error)
        except (ValueError, TypeError, OverflowError, RecursionError) as error:
            return None, f"record: {error}"
        if missing and _has_usage(obj):
            self.fail(offset, "unattributed",
                      f"missing {', '.join(missing)}: usage stored under {UNATTRIBUTED}", raw, obj,
                      event_id=event.event_id)
        return event, None

    def handle(self, offset: int, obj: Any, raw: str) -> None:
        if not isinstance(obj, dict):
            self.invalid += 1
            self.fail(offset, "invalid", f"a record must be a JSON object, not {type(obj).__name__}", raw)
            return
        if self.source.kind == "fallback" or ("event" in obj and "error" in obj and isinstance(obj["event"], dict)):
            self.handle_fallback(offset, obj, raw)
        elif obj.get("record") == "attempt":
            self.handle_attempt(offset, obj, raw)
        else:
            event, reason = self.event(offset, obj, raw)
            if event is None:
                self.invalid += 1
                self.fail(offset, "invalid", reason, raw, obj)
            else:
                self.events.append((event, offset, raw))

    def handle_fallback(self, offset: int, obj: dict[str, Any], raw: str) -> None:
        inner = obj.get("event")
        original_error = str(obj.get("error") or "unknown error")[:10_000]
        try:
            logged_at = dt.datetime.fromisoformat(str(obj.get("timestamp")))
            logged_at = logged_at.astimezone(dt.timezone.utc).replace(tzinfo=None) if logged_at.tzinfo else logged_at
        except ValueError:
            logged_at = None
        if not isinstance(inner, dict):
            self.invalid += 1
            self.fail(offset, "fallback", f"{original_error}; the entry has no event object", raw, logged_at=logged_at)
            return
        if inner.get("record") == "attempt":
            self.handle_attempt(offset, inner, raw)
            self.fail(offset, "fallback", original_error, raw, inner, event_id=None, logged_at=logged_at)
            self.failed[-1]["event_id"] = None
            return
        event, reason = self.event(offset, inner, raw)
        if event is None:
            self.invalid += 1
            self.fail(offset, "fallback", f"{original_error}; cannot be stored: {reason}", raw, inner, logged_at=logged_at)
            return
        self.events.append((event, offset, raw))
        self.from_fallback += 1
        self.fail(offset, "fallback", original_error, raw, inner, event_id=event.event_id, logged_at=logged_at)

    def handle_attempt(self, offset: int, obj: dict[str, Any], raw: str) -> None:
        try:
            attempt = AttemptRecord.model_validate(obj)
        except ValidationError as error:
            self.invalid += 1
            self.fail(offset, "invalid", f"call attempt: {describe_validation_error(error)}", raw, obj)
            return
        row = attempt.model_dump(exclude={"record"})
        ts = attempt.ts if attempt.ts.tzinfo else attempt.ts.replace(tzinfo=dt.timezone.utc)
        row["ts"] = ts
        row["source"] = row["source"] or self.source_label
        self.attempts.append(row)


def _first_line(path) -> bytes:
    with open(path, "rb") as f:
        return f.readline()


def _decode_line(raw: bytes, csv_header: list[str] | None) -> Any:
    """The record on one line (a dict, or any JSON value), or a ValueError saying why it is unreadable."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        return ValueError(f"line is not valid UTF-8 (byte {error.start})")
    if csv_header is not None:
        values = next(csv.reader(io.StringIO(text)), [])
        if len(values) > len(csv_header):
            return ValueError(f"CSV row has {len(values)} cells, the header {len(csv_header)}")
        return {k: v for k, v in zip(csv_header, values) if v != ""}
    try:
        return json.loads(text)
    except RecursionError:
        return ValueError("not valid JSON: nested too deeply")
    except ValueError as error:
        return ValueError(f"not valid JSON: {error}")


def _csv_cells(db: duckdb.DuckDBPyConnection, chunk: bytes, lines: pa.Table, csv_header: list[str],
               header_line: bytes) -> tuple[pa.Table | None, set[int]]:
    """CSV rows the bulk path may take, as text columns, and the idx of rows it may not.

    DuckDB's CSV reader splits the cells; when the chunk is not plain CSV (a quoted cell spanning
    lines, a row with the wrong number of cells) every row goes to pydantic, which says why.
    """
    everything = set(range(lines.num_rows))
    known = {f.name for f in bulk.FIELDS}
    if not set(csv_header) <= known | set(bulk.PYDANTIC_ONLY_KEYS) or len(set(csv_header)) != len(csv_header):
        return None, everything  # unknown or repeated columns: pydantic names them, row by row
    text = lines.column("line")
    if text.null_count:
        return None, everything
    filled = pa.compute.invert(pa.compute.equal(pa.compute.utf8_trim_whitespace(text), ""))
    rows_at = lines.filter(filled).select(["idx", "off"])
    with tempfile.NamedTemporaryFile(suffix=".csv") as chunk_file:
        chunk_file.write(header_line + chunk)
        chunk_file.flush()
        try:
            cells = db.sql(
                "SELECT * FROM read_csv($path, header = true, auto_detect = false, columns = $columns, "
                "delim = ',', quote = '\"', escape = '\"', strict_mode = true, skip = 0)",
                params={"path": chunk_file.name, "columns": {name: "VARCHAR" for name in csv_header}},
            ).to_arrow_table()
        except duckdb.Error:
            return None, everything
    if cells.num_rows != rows_at.num_rows:
        return None, everything
    cells = pa.Table.from_arrays([rows_at.column("idx"), rows_at.column("off"), *cells.columns],
                                 names=["idx", "off", *cells.column_names])
    pydantic_only = [name for name in bulk.PYDANTIC_ONLY_KEYS if name in csv_header]
    if pydantic_only:
        reported = pa.compute.or_(*[pa.compute.fill_null(pa.compute.not_equal(cells.column(name), ""), False)
                                    for name in pydantic_only]) if len(pydantic_only) > 1 else \
            pa.compute.fill_null(pa.compute.not_equal(cells.column(pydantic_only[0]), ""), False)
        slow = set(cells.filter(reported).column("idx").to_pylist())
        cells = cells.filter(pa.compute.invert(reported))
    else:
        slow = set()
    blank = everything - set(rows_at.column("idx").to_pylist())
    return cells.drop_columns(pydantic_only), slow | blank


def parse_lines(db: duckdb.DuckDBPyConnection, chunk: bytes, *, start_offset: int, file_key: str, source: Source,
                csv_header: list[str] | None, settings: Settings, pricer: Pricer) -> Batch:
    """Validate and price one chunk of whole lines; its events land in the temp table `batch_events`."""
    parser = _Parser(source, file_key, settings)
    lines = bulk.lines_table(chunk, start_offset)
    options = dict(id_prefix=stable_id(file_key, ""), source_label=parser.source_label, timezone=settings.timezone)
    if csv_header is None:
        clean, others = bulk.split_json(db, lines, **options)
        slow = zip(others.column("off").to_pylist(), others.column("raw").to_pylist())
    else:
        cells, slow_idx = _csv_cells(db, chunk, lines, csv_header, _first_line(source.path))
        if cells is not None and cells.num_rows:
            clean, rejected = bulk.split_csv(db, cells, **options)
            slow_idx |= set(rejected)
        else:
            clean = None
        ordered = pa.array(sorted(slow_idx), type=pa.int64())
        slow = zip(lines.column("off").take(ordered).to_pylist(), lines.column("raw").take(ordered).to_pylist())

    blank = 0
    for offset, raw in slow:
        if not raw.strip():
            blank += 1
            continue
        obj = _decode_line(raw, csv_header)
        if isinstance(obj, Exception):
            parser.invalid += 1
            parser.fail(offset, "invalid", str(obj), _raw_text(raw))
        else:
            parser.handle(offset, obj, _raw_text(raw))

    frames = []
    if clean is not None and clean.num_rows:
        frames.append(_priced_clean_rows(clean, lines, parser, pricer))
    if parser.events:
        frames.append(_priced_slow_rows(parser, settings, pricer))
    batch = Batch(lines=lines.num_rows - blank, invalid=parser.invalid, from_fallback=parser.from_fallback)
    batch.events = _load_batch_events(db, frames)
    if parser.attempts:
        attempts = pd.DataFrame(parser.attempts)
        attempts["day"] = _days(attempts["ts"], settings)
        attempts["ts"] = _naive_utc(attempts["ts"])
        batch.attempts = attempts.drop_duplicates("attempt_id")[ATTEMPT_COLUMNS]
    if parser.failed:
        batch.failed = pd.DataFrame(parser.failed, columns=FAILED_COLUMNS).drop_duplicates("failed_id")
    return batch


def _too_costly(pico: np.ndarray) -> np.ndarray:
    return np.asarray([abs(int(v)) >= bulk.MAX_COST_PICO for v in pico], dtype=bool) if pico.dtype == object \
        else np.abs(pico) >= bulk.MAX_COST_PICO


def _cost_reason(pico: int) -> str:
    return (f"cost_usd: ${Decimal(int(pico)).scaleb(-12):,.2f} for one call is beyond what the store holds "
            "($999,999.99); check the token counts")


def _priced_clean_rows(clean: pa.Table, lines: pa.Table, parser: _Parser, pricer: Pricer) -> pa.Table:
    frame = clean.select(["provider", "model", "ts", *TOKEN_FIELDS, "total_tokens"]).to_pandas()
    pico, sources = pricer.price_frame_pico(frame)
    too_costly = _too_costly(pico)
    if too_costly.any():
        for position in np.flatnonzero(too_costly).tolist():
            idx = clean.column("idx")[position].as_py()
            parser.invalid += 1
            parser.fail(clean.column("off")[position].as_py(), "invalid", _cost_reason(pico[position]),
                        _raw_text(lines.column("raw")[idx].as_py()))
        keep = ~too_costly
        clean, pico = clean.filter(pa.array(keep)), pico[keep]
        sources = [s for s, k in zip(sources, keep) if k]
    clean = clean.append_column("cost_pico", pa.array(pico.astype(np.int64), type=pa.int64()))
    clean = clean.append_column("price_source", pa.array(sources, type=pa.string()))
    return clean.select(["off", *EVENT_COLUMNS])


def _priced_slow_rows(parser: _Parser, settings: Settings, pricer: Pricer) -> pa.Table:
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
        computed, computed_sources = pricer.price_frame_pico(frame.loc[~reported])
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


def _load_batch_events(db: duckdb.DuckDBPyConnection, frames: list[pa.Table]) -> int:
    columns = ", ".join(["off", *EVENT_COLUMNS])
    db.execute(
        "CREATE OR REPLACE TEMP TABLE batch_events AS SELECT * FROM usage_events LIMIT 0"
    )
    db.execute("ALTER TABLE batch_events DROP COLUMN ingested_at")
    db.execute("ALTER TABLE batch_events DROP COLUMN cost_usd")
    db.execute("ALTER TABLE batch_events ADD COLUMN cost_pico BIGINT")
    db.execute("ALTER TABLE batch_events ADD COLUMN off BIGINT")
    for n, frame in enumerate(frames):
        name = f"batch_part_{n}"
        db.register(name, frame)
        db.execute(f"INSERT INTO batch_events ({columns}) SELECT {columns} FROM {name}")
        db.unregister(name)
    return sum(frame.num_rows for frame in frames)


def _naive_utc(series: pd.Series) -> pd.Series:
    return pd.to_datetime(series, utc=True).dt.tz_localize(None)


def _days(series: pd.Series, settings: Settings) -> pd.Series:
    return pd.to_datetime(series, utc=True).dt.tz_convert(settings.timezone).dt.date
