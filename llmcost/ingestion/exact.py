"""The exact path: records that the bulk checks were unsure of, judged one at a time by pydantic.

Three kinds of record arrive: usage events, the tracker's write-ahead call attempts (`{"record": "attempt", ...}`)
and fallback-log entries (`{"timestamp", "error", "event"}`). Each is stored or becomes a `failed_logs` row with its
raw text and the reason; nothing is dropped.
"""

from __future__ import annotations

import datetime as dt
import json
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from llmcost.events import (
    IDENTITY_FIELDS,
    UNATTRIBUTED,
    AttemptRecord,
    UsageEvent,
    describe_validation_error,
    has_usage,
    whole_number_or_none,
)

if TYPE_CHECKING:
    from llmcost.config import Settings
    from llmcost.ingestion.content_ids import LineIds
    from llmcost.ingestion.sources import Source


FAILED_COLUMNS = [
    "failed_id", "kind", "logged_at", "use_case", "estimated_tokens", "error", "user_id", "tenant_id", "source",
    "raw", "event_id", "attempt_id",  # attempt_id: a call attempt rescued from the fallback log
]


MAX_RAW_CHARS = 1_000_000


def raw_text(line: bytes) -> str:
    text = line.decode("utf-8", errors="backslashreplace").rstrip("\r\n").replace("\x00", "\\x00")
    if len(text) > MAX_RAW_CHARS:
        return text[:MAX_RAW_CHARS] + f"... [truncated: {len(text):,} characters in all]"
    return text


def _printable(text: str) -> str:
    """Text that can be stored: NUL and lone UTF-16 surrogates written as escapes."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8").replace("\x00", "\\x00")


def _clip(value: Any, limit: int = 500) -> str | None:
    if value is None:
        return None
    text = _printable(str(value))
    return text[:limit] if text.strip() else None


def _usage_hint(obj: dict[str, Any]) -> int | None:
    total = whole_number_or_none(obj.get("total_tokens"))
    if total:
        return total
    parts = (whole_number_or_none(obj.get("input_tokens")) or 0) + (whole_number_or_none(obj.get("output_tokens")) or 0)
    return parts or whole_number_or_none(obj.get("estimated_tokens"))


class RecordParser:
    def __init__(self, source: Source, ids: LineIds, settings: Settings):
        self.source = source
        self.ids = ids
        self.settings = settings
        self.source_label = f"{source.kind}:{source.path.name}"
        self.now = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)
        self.events: list[tuple[UsageEvent, int, str]] = []
        self.attempts: list[dict[str, Any]] = []
        self.failed: list[dict[str, Any]] = []
        self.invalid = 0
        self.from_fallback = 0

    def fail(self, offset: int, kind: str, error: str, raw: str, obj: dict | None = None,
             event_id: str | None = None, logged_at: dt.datetime | None = None, attempt_id: str | None = None) -> None:
        obj = obj or {}
        self.failed.append({
            "failed_id": self.ids.failed_id(offset, raw),
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
            "attempt_id": attempt_id,
        })

    def event(self, offset: int, obj: dict[str, Any], raw: str) -> tuple[UsageEvent | None, str | None]:
        """Validate one usage event; returns (event, None) or (None, reason)."""
        obj = dict(obj)
        if obj.get("event_id") is None:
            obj["event_id"] = self.ids.event_id(raw)
        if not obj.get("source"):
            obj["source"] = self.source_label
        missing = [name for name in IDENTITY_FIELDS if not str(obj.get(name) or "").strip()]
        if missing and has_usage(obj):
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
        if missing and has_usage(obj):
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
        original_error = _printable(str(obj.get("error") or "unknown error"))[:10_000]
        try:
            logged_at = dt.datetime.fromisoformat(str(obj.get("timestamp")))
            logged_at = logged_at.astimezone(dt.timezone.utc).replace(tzinfo=None) if logged_at.tzinfo else logged_at
        except (ValueError, OverflowError):  # no usable time: the entry is dated when it is read
            logged_at = None
        if not isinstance(inner, dict):
            self.invalid += 1
            self.fail(offset, "fallback", f"{original_error}; the entry has no event object", raw, logged_at=logged_at)
            return
        if inner.get("record") == "attempt":
            attempt_id, reason = self.attempt(offset, inner)
            if attempt_id is None:
                self.invalid += 1
                self.fail(offset, "fallback", f"{original_error}; cannot be stored: {reason}", raw, inner,
                          logged_at=logged_at)
            else:
                self.from_fallback += 1
                self.fail(offset, "fallback", original_error, raw, inner, logged_at=logged_at, attempt_id=attempt_id)
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
        attempt_id, reason = self.attempt(offset, obj)
        if attempt_id is None:
            self.invalid += 1
            self.fail(offset, "invalid", reason, raw, obj)

    def attempt(self, offset: int, obj: dict[str, Any]) -> tuple[str | None, str | None]:
        """Validate and keep a call attempt; returns (attempt_id, None) or (None, reason)."""
        try:
            attempt = AttemptRecord.model_validate(obj)
        except ValidationError as error:
            return None, f"call attempt: {describe_validation_error(error)}"
        row = attempt.model_dump(exclude={"record"})
        row["source"] = row["source"] or self.source_label
        row["off"] = offset
        self.attempts.append(row)
        return attempt.attempt_id, None


def decode_line(raw: bytes) -> Any:
    """The record on one JSON line (a dict, or any JSON value), or a ValueError saying why it is unreadable."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        return ValueError(f"line is not valid UTF-8 (byte {error.start})")
    try:
        record = json.loads(text)
    except RecursionError:
        return ValueError("not valid JSON: nested too deeply")
    except ValueError as error:
        return ValueError(f"not valid JSON: {error}")
    if "\\u" in text:  # an escape may have made a lone UTF-16 surrogate, which no UTF-8 text can hold
        try:
            json.dumps(record, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:
            return ValueError("not valid JSON text: contains a lone UTF-16 surrogate escape (such as \\ud800)")
        except RecursionError:
            return ValueError("not valid JSON: nested too deeply")
    return record
