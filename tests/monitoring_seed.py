"""Seed a real store for the monitoring tests: rows built here, inserted in bulk as DataFrames."""

from __future__ import annotations

import datetime as dt
import itertools
from decimal import Decimal
from pathlib import Path
from typing import Any

import pandas as pd

from llmcost.store.connection import writing

_ids = itertools.count(1)
NULLABLE_INTS = ("estimated_tokens", "attempts")


def event(ts: dt.datetime, cost: str | Decimal = "0.001", **fields: Any) -> dict[str, Any]:
    """One usage_events row; `day` is the UTC date of `ts` unless given."""
    row = {
        "event_id": f"evt-{next(_ids)}", "ts": ts, "day": ts.date(), "user_id": "user-1", "tenant_id": "tenant-a",
        "use_case": "chat_tutor", "account_type": "student", "provider": "openai", "model": "gpt-4o-mini",
        "input_tokens": 100, "output_tokens": 50, "cache_read_tokens": 0, "cache_write_tokens": 0,
        "reasoning_tokens": 0, "total_tokens": None, "estimated_tokens": None, "usage_estimated": False,
        "latency_ms": 120.0, "status": "ok", "error": None, "cost_usd": str(cost), "price_source": "price-table",
        "attempt_id": None, "source": "test", "metadata": "{}", "ingested_at": ts,
    }
    row.update(fields)
    if row["total_tokens"] is None:
        row["total_tokens"] = row["input_tokens"] + row["output_tokens"]
    row["cost_usd"] = str(row["cost_usd"])
    return row


def attempt(ts: dt.datetime, **fields: Any) -> dict[str, Any]:
    row = {
        "attempt_id": f"att-{next(_ids)}", "ts": ts, "day": ts.date(), "user_id": "user-1", "tenant_id": "tenant-a",
        "use_case": "chat_tutor", "account_type": "student", "provider": "openai", "model": "gpt-4o-mini",
        "estimated_tokens": 150, "source": "test", "ingested_at": ts,
    }
    row.update(fields)
    return row


def failed_log(logged_at: dt.datetime, **fields: Any) -> dict[str, Any]:
    row = {
        "failed_id": f"failed-{next(_ids)}", "kind": "fallback", "logged_at": logged_at, "use_case": "chat_tutor",
        "estimated_tokens": 1000, "error": "OSError: [Errno 28] No space left on device", "user_id": "user-1",
        "tenant_id": "tenant-a", "source": "emergency-token-usage.jsonl", "raw": "{}", "event_id": None,
        "recovered": False, "recovered_at": None,
    }
    row.update(fields)
    return row


def insert(db_path: Path, table: str, rows: list[dict[str, Any]]) -> None:
    """Insert rows by column name in one statement (the store is created and migrated if needed)."""
    frame = pd.DataFrame(rows)
    for column in NULLABLE_INTS:
        if column in frame:
            frame[column] = frame[column].astype("Int64")
    for column in frame.columns:
        if frame[column].isna().all():
            frame[column] = frame[column].astype(object)
    with writing(db_path) as db:
        db.register("seed_rows", frame)
        db.execute(f"INSERT INTO {table} BY NAME SELECT * FROM seed_rows")


def count(db_path: Path, table: str) -> int:
    with writing(db_path) as db:
        return db.execute(f"SELECT COUNT(*) FROM {table}").fetchall()[0][0]
