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
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .events import TOKEN_FIELDS, UNATTRIBUTED, UsageEvent, describe_validation_error

if TYPE_CHECKING:
    from .config import Settings
    from .ingest import Source
    from .pricing import Pricer

EVENT_NAMESPACE = uuid.UUID("6f1c1a3e-2b7a-4d39-9a57-2d0f5e0c9b11")
MAX_RAW_CHARS = 1_000_000
IDENTITY_FIELDS = ("user_id", "tenant_id", "use_case")

EVENT_COLUMNS = [
    "event_id", "ts", "day", "user_id", "tenant_id", "use_case", "account_type", "provider", "model",
    "input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens", "reasoning_tokens",
    "total_tokens", "estimated_tokens", "usage_estimated", "latency_ms", "status", "error", "cost_usd",
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
    lines: int = 0
    events: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=EVENT_COLUMNS))
    attempts: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=ATTEMPT_COLUMNS))
    failed: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=FAILED_COLUMNS))
    duplicates_in_batch: int = 0
    invalid: int = 0           # records that could not be stored at all
    from_fallback: int = 0     # fallback-log events that were valid (stored or already there)


def stable_id(file_key: str, offset: int, kind: str = "event") -> str:
    """A stable id for a record that came without one, so reading it again never duplicates it."""
    return str(uuid.uuid5(EVENT_NAMESPACE, f"{kind}:{file_key}:{offset}"))


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
        self.events: list[UsageEvent] = []
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
        obj.setdefault("event_id", stable_id(self.file_key, offset))
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
                self.events.append(event)

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
        self.events.append(event)
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


def _records(chunk: bytes, start_offset: int, csv_header: list[str] | None):
    """Yield (offset, parsed object or exception, raw text) for every non-blank line of a chunk."""
    offset = start_offset
    for line in chunk.splitlines(keepends=True):
        line_offset = offset
        offset += len(line)
        if not line.strip():
            continue
        raw = _raw_text(line)
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError as error:
            yield line_offset, ValueError(f"line is not valid UTF-8 (byte {error.start})"), raw
            continue
        if csv_header is not None:
            values = next(csv.reader(io.StringIO(text)), [])
            if len(values) > len(csv_header):
                yield line_offset, ValueError(f"CSV row has {len(values)} cells, the header {len(csv_header)}"), raw
                continue
            yield line_offset, {k: v for k, v in zip(csv_header, values) if v != ""}, raw
            continue
        try:
            yield line_offset, json.loads(text), raw
        except RecursionError:
            yield line_offset, ValueError("not valid JSON: nested too deeply"), raw
        except ValueError as error:
            yield line_offset, ValueError(f"not valid JSON: {error}"), raw


def parse_lines(chunk: bytes, *, start_offset: int, file_key: str, source: Source, csv_header: list[str] | None,
                settings: Settings, pricer: Pricer) -> Batch:
    """Parse, validate and price one chunk of whole lines."""
    parser = _Parser(source, file_key, settings)
    lines = 0
    for offset, obj, raw in _records(chunk, start_offset, csv_header):
        lines += 1
        if isinstance(obj, Exception):
            parser.invalid += 1
            parser.fail(offset, "invalid", str(obj), raw)
        else:
            parser.handle(offset, obj, raw)
    batch = Batch(lines=lines, invalid=parser.invalid, from_fallback=parser.from_fallback)
    if parser.events:
        events = _events_frame(parser.events, settings, pricer)
        before = len(events)
        events = events.drop_duplicates("event_id", keep="first")
        batch.duplicates_in_batch = before - len(events)
        batch.events = events
    if parser.attempts:
        attempts = pd.DataFrame(parser.attempts)
        attempts["day"] = _days(attempts["ts"], settings)
        attempts["ts"] = _naive_utc(attempts["ts"])
        batch.attempts = attempts.drop_duplicates("attempt_id")[ATTEMPT_COLUMNS]
    if parser.failed:
        batch.failed = pd.DataFrame(parser.failed, columns=FAILED_COLUMNS).drop_duplicates("failed_id")
    return batch


def _naive_utc(series: pd.Series) -> pd.Series:
    return pd.to_datetime(series, utc=True).dt.tz_localize(None)


def _days(series: pd.Series, settings: Settings) -> pd.Series:
    return pd.to_datetime(series, utc=True).dt.tz_convert(settings.timezone).dt.date


def _events_frame(events: list[UsageEvent], settings: Settings, pricer: Pricer) -> pd.DataFrame:
    rows = [e.model_dump() for e in events]
    frame = pd.DataFrame(rows)
    frame["metadata"] = [json.dumps(r["metadata"], ensure_ascii=False, default=str) if r["metadata"] else None
                         for r in rows]
    unpriced = frame["cost_usd"].isna()
    if unpriced.any():
        costs, sources = pricer.price_frame(frame.loc[unpriced])
        frame.loc[unpriced, "cost_usd"] = pd.Series(costs, index=frame.index[unpriced], dtype=object)
        frame.loc[unpriced, "price_source"] = pd.Series(sources, index=frame.index[unpriced], dtype=object)
    frame["cost_usd"] = frame["cost_usd"].map(lambda d: format(d, "f"))
    frame["day"] = _days(frame["ts"], settings)
    frame["ts"] = _naive_utc(frame["ts"])
    return frame[EVENT_COLUMNS]
