"""The Failed logs page's queries: what could not be stored normally, filtered, with the open count."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb
import pandas as pd

from llmcost.dashboard.fetch import Filters, fetch_frame, fetch_rows, run
from llmcost.money import day_bounds_utc
from llmcost.store import queries
from llmcost.store.failed_logs import OPEN_FAILED

FAILED_KINDS = ("fallback", "invalid", "unattributed", "conflict", "refused")
FAILED_STATUSES = ("unrecovered", "recovered", "dismissed", "all")


@dataclass(frozen=True)
class FailedLogQuery:
    status: str = "unrecovered"
    kinds: tuple[str, ...] = ()
    limit: int = 1000


@dataclass(frozen=True)
class FailedLogsData:
    rows: pd.DataFrame
    matching: int
    unrecovered: int
    unrecovered_by_error: pd.DataFrame


def failed_logs(db: duckdb.DuckDBPyConnection, filters: Filters, timezone: str,
                query: FailedLogQuery | None = None) -> tuple[pd.DataFrame, int]:
    """The failed logs in the date range (newest first, at most `query.limit`) and how many match."""
    query = query or FailedLogQuery()
    if query.status not in FAILED_STATUSES:
        raise ValueError(f"failed-log status {query.status!r} is not one of {', '.join(FAILED_STATUSES)}")
    since, until = day_bounds_utc(filters.start, filters.end, timezone)
    clauses = ["logged_at >= $since", "logged_at < $until"]
    params: dict[str, Any] = {"since": since, "until": until}
    clauses += {"unrecovered": [OPEN_FAILED], "recovered": ["recovered"],
                "dismissed": ["dismissed_at IS NOT NULL"], "all": []}[query.status]
    if query.kinds:
        clauses.append("list_contains($kinds, kind)")
        params["kinds"] = list(query.kinds)
    if filters.tenants:
        clauses.append("list_contains($tenants, tenant_id)")
        params["tenants"] = list(filters.tenants)
    if filters.scope is not None:
        clauses.append("list_contains($scope, tenant_id)")
        params["scope"] = list(filters.scope)
    where = " AND ".join(clauses)
    matching = fetch_rows(db, f"SELECT count(*) FROM failed_logs WHERE {where}", params)[0][0]
    rows = fetch_frame(
        db,
        f"""
        SELECT logged_at, use_case, estimated_tokens, error, user_id, tenant_id, source, kind,
               recovered, recovered_at, dismissed_at, dismissed_by, dismiss_reason, failed_id, raw
        FROM failed_logs WHERE {where}
        ORDER BY logged_at DESC, failed_id LIMIT $limit
        """,
        {**params, "limit": query.limit},
    )
    return rows, matching


def unrecovered_by_error(db: duckdb.DuckDBPyConnection, scope: tuple[str, ...] | None = None) -> pd.DataFrame:
    sql, params = queries.open_failed_by_error(scope)
    return fetch_frame(db, sql, params)


def failed_logs_from(db: duckdb.DuckDBPyConnection, filters: Filters, timezone: str,
                     query: FailedLogQuery) -> FailedLogsData:
    rows, matching = failed_logs(db, filters, timezone, query)
    return FailedLogsData(rows, matching, queries.open_failed_count(db, filters.scope),
                          unrecovered_by_error(db, filters.scope))


def failed(db_path: Path, filters: Filters, timezone: str, query: FailedLogQuery) -> FailedLogsData | None:
    return run(db_path, failed_logs_from, filters, timezone, query)
