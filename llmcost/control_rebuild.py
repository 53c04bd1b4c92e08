"""Rebuilding a day's live spend (the control state) from the store and the journals not yet ingested."""

from __future__ import annotations

import datetime as dt
import json
import logging
from decimal import Decimal, InvalidOperation

from . import store
from .config import Settings
from .errors import LLMCostError

log = logging.getLogger("llmcost")


def _stored_rows(settings: Settings, day: dt.date) -> tuple[list[tuple[str, int, Decimal]], dict[str, int]]:
    with store.reading(settings.db_path, timeout=5) as db:
        if db is None:
            return [], {}
        rows = db.execute(
            "SELECT user_id, sum(total_tokens)::BIGINT, sum(cost_usd) FROM usage_events WHERE day = ? GROUP BY user_id",
            [day],
        ).fetchall()
        offsets = dict(db.execute("SELECT path, bytes_consumed FROM ingest_sources").fetchall())
    return [(user, int(tokens), Decimal(cost)) for user, tokens, cost in rows], offsets


def _pending_rows(settings: Settings, day: dt.date, offsets: dict[str, int]) -> list[tuple[str, int, Decimal]]:
    rows = []
    paths = sorted(settings.journal_dir.glob("*.jsonl"))
    if settings.fallback_log.is_file():
        paths.append(settings.fallback_log)
    # By real path, once each: a journal folder reached through a link is the folder ingestion records.
    real_paths = dict.fromkeys(path.resolve() for path in paths if path.is_file())
    for path in real_paths:  # (not a device or a folder where a journal should be: nothing to read there)
        try:
            rows.extend(_rows_of_day(path, offsets.get(str(path), 0), settings, day))
        except OSError:
            continue
    return rows


def _rows_of_day(path, offset: int, settings: Settings, day: dt.date):
    """(user_id, tokens, cost) of the usage records of `day` in a file after `offset`, read line by line."""
    with path.open("rb") as f:
        f.seek(offset)
        for line in f:
            try:
                record = json.loads(line)
                if isinstance(record.get("event"), dict):
                    record = record["event"]
                if record.get("record") == "attempt" or not record.get("user_id"):
                    continue
                ts = dt.datetime.fromisoformat(record["ts"])
                ts = ts if ts.tzinfo else ts.replace(tzinfo=dt.timezone.utc)
                if ts.astimezone(settings.tz).date() != day:
                    continue
                tokens = int(record.get("total_tokens") or 0) or int(record.get("input_tokens") or 0) + int(
                    record.get("output_tokens") or 0)
                yield record["user_id"], tokens, Decimal(str(record.get("cost_usd") or 0))
            except (ValueError, TypeError, KeyError, AttributeError, InvalidOperation, OverflowError):
                continue  # ingestion keeps bad lines in failed_logs; they carry no reliable spend


def spend_rows(settings: Settings, day: dt.date) -> list[tuple[str, int, Decimal]]:
    """(user_id, tokens, cost) rows of the day: stored events plus journal lines not ingested yet."""
    try:
        stored, offsets = _stored_rows(settings, day)
    except LLMCostError as error:
        log.warning("llmcost: rebuilding live spend without the store (%s); journals only", error)
        stored, offsets = [], {}
    return stored + _pending_rows(settings, day, offsets)
