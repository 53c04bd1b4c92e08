"""Seed a real store for the dashboard tests: whole rows built here, inserted in bulk as DataFrames."""

from __future__ import annotations

import datetime as dt
import itertools
from decimal import Decimal
from pathlib import Path
from typing import Any

import pandas as pd

from llmcost.store import connection as store

_ids = itertools.count(1)


def event(day: dt.date, cost: str | Decimal, **fields: Any) -> dict[str, Any]:
    """One usage_events row at noon UTC of `day` (a UTC-configured store), with sensible defaults."""
    ts = fields.pop("ts", dt.datetime.combine(day, dt.time(12)))
    row = {
        "event_id": f"evt-{next(_ids)}",
        "ts": ts,
        "day": day,
        "user_id": "user-1",
        "tenant_id": "tenant-a",
        "use_case": "chat_tutor",
        "account_type": "student",
        "provider": "openai",
        "model": "gpt-4o",
        "input_tokens": 100,
        "output_tokens": 50,
        "total_tokens": 150,
        "estimated_tokens": None,
        "usage_estimated": False,
        "status": "ok",
        "cost_usd": str(cost),
        "price_source": "price-table",
        "attempt_id": None,
        "source": "test",
        "ingested_at": ts,
    }
    row.update(fields)
    return row


def failed_log(logged_at: dt.datetime, recovered: bool = False, **fields: Any) -> dict[str, Any]:
    row = {
        "failed_id": f"failed-{next(_ids)}",
        "kind": "fallback",
        "logged_at": logged_at,
        "use_case": "chat_tutor",
        "estimated_tokens": 1200,
        "error": "OSError: [Errno 28] No space left on device",
        "user_id": "user-1",
        "tenant_id": "tenant-a",
        "source": "emergency-token-usage.jsonl",
        "raw": "{}",
        "event_id": None,
        "recovered": recovered,
        "recovered_at": logged_at if recovered else None,
    }
    row.update(fields)
    return row


def attempt(ts: dt.datetime, attempt_id: str, **fields: Any) -> dict[str, Any]:
    row = {
        "attempt_id": attempt_id, "ts": ts, "day": ts.date(), "user_id": "user-1", "tenant_id": "tenant-a",
        "use_case": "chat_tutor", "account_type": "student", "provider": "openai", "model": "gpt-4o",
        "estimated_tokens": 150, "source": "test", "ingested_at": ts,
    }
    row.update(fields)
    return row


def insert(db_path: Path, table: str, rows: list[dict[str, Any]]) -> None:
    """Insert rows in one statement (the table name comes from the test, never from data)."""
    frame = pd.DataFrame(rows)  # noqa: F841 - read by DuckDB's replacement scan below
    with store.writing(db_path) as db:
        db.execute(f"INSERT INTO {table} BY NAME SELECT * FROM frame")


def empty_store(db_path: Path) -> None:
    """A migrated store with no rows."""
    with store.writing(db_path):
        pass
