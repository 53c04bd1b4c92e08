"""What every dashboard query stands on: the sidebar's filters as SQL, fetching frames, running a page's queries.

Filters become SQL with bound parameters only; the text of each clause is fixed here. A page's queries run
over one short read-only connection (`run`), and None comes back when the store does not exist yet.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb
import pandas as pd

from llmcost.store.connection import reading


@dataclass(frozen=True)
class Filters:
    """The sidebar's choices: an inclusive range of days (configured time zone) and optional lists.

    `scope` is a tenant-scoped viewer's tenants (None: every tenant), set from their access, never from a
    widget: every dashboard query keeps to it, whatever `tenants` asks for.
    """

    start: dt.date
    end: dt.date
    tenants: tuple[str, ...] = ()
    providers: tuple[str, ...] = ()
    models: tuple[str, ...] = ()
    scope: tuple[str, ...] | None = None

    def over(self, start: dt.date, end: dt.date) -> Filters:
        """The same tenant, provider and model choices over other days."""
        return dataclasses.replace(self, start=start, end=end)


def filter_clause(filters: Filters, *, days: bool = True) -> tuple[str, dict[str, Any]]:
    """A WHERE clause for usage_events and its bound parameters (always within the tenant scope)."""
    clauses, params = ["true"], {}
    if filters.scope is not None:
        clauses.append("list_contains($scope, tenant_id)")
        params["scope"] = list(filters.scope)
    if days:
        clauses.append("day BETWEEN $start AND $end")
        params.update(start=filters.start, end=filters.end)
    for column, values in (("tenant_id", filters.tenants), ("provider", filters.providers),
                           ("model", filters.models)):
        if values:
            clauses.append(f"list_contains(${column}_list, {column})")
            params[f"{column}_list"] = list(values)
    return " AND ".join(clauses), params


def fetch_frame(db: duckdb.DuckDBPyConnection, sql: str, params: dict[str, Any] | None = None) -> pd.DataFrame:
    # Through Arrow so DECIMAL arrives as exact Decimal, not float.
    return db.sql(sql, params=params or None).to_arrow_table().to_pandas()


def fetch_rows(db: duckdb.DuckDBPyConnection, sql: str, params: dict[str, Any] | None = None) -> list[tuple]:
    return db.execute(sql, params or {}).fetchall()


def store_version(db_path: Path) -> tuple[int, int, int, int] | None:
    """Changes whenever the store file or its WAL changes, so cached figures follow every ingest."""
    db_path = Path(db_path)
    if not db_path.is_file():
        return None
    versions = []
    for path in (db_path, db_path.with_name(db_path.name + ".wal")):
        try:
            stat = path.stat()
            versions += [stat.st_mtime_ns, stat.st_size]
        except FileNotFoundError:
            versions += [0, 0]
    return tuple(versions)  # type: ignore[return-value]


def run(db_path: Path, query, *args: Any) -> Any:
    """Run `query(db, *args)` over a short read-only connection; None when the store does not exist yet."""
    with reading(Path(db_path)) as db:
        if db is None:
            return None
        return query(db, *args)
