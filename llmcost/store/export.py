"""CSV export with spreadsheet formula injection neutralised."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")


def neutralise(value: Any) -> Any:
    """Prefix a text cell that a spreadsheet would run as a formula with a quote; leave numbers alone."""
    if isinstance(value, str) and value.startswith(FORMULA_PREFIXES):
        return "'" + value
    return value


def neutralise_frame(frame: pd.DataFrame) -> pd.DataFrame:
    """A copy of `frame` whose text cells are neutralised (numbers keep their sign)."""
    out = frame.copy()
    for column in out.columns:
        if out[column].dtype == object or pd.api.types.is_string_dtype(out[column]):
            out[column] = out[column].map(neutralise)
    return out


def frame_to_csv_bytes(frame: pd.DataFrame) -> bytes:
    """The bytes a CSV download serves: header plus neutralised cells, UTF-8."""
    return neutralise_frame(frame).to_csv(index=False).encode("utf-8")


def write_rows(out: Path | io.TextIOBase, header: Sequence[str], rows: Iterable[Sequence[Any]]) -> int:
    """Stream rows to a CSV file with neutralised cells; return the number of rows written."""
    handle = open(out, "w", newline="", encoding="utf-8") if isinstance(out, (str, Path)) else out
    try:
        writer = csv.writer(handle)
        writer.writerow(header)
        count = 0
        for row in rows:
            writer.writerow([neutralise(v) for v in row])
            count += 1
        return count
    finally:
        if isinstance(out, (str, Path)):
            handle.close()


EXPORT_QUERIES = {
    # The date filter is on the day a record belongs to: `day` for events, the UTC date it was logged for failures.
    "usage_events": "SELECT * EXCLUDE (metadata), metadata FROM usage_events "
                    "WHERE (?::DATE IS NULL OR day >= ?::DATE) AND (?::DATE IS NULL OR day <= ?::DATE) "
                    "ORDER BY ts, event_id",
    "failed_logs": "SELECT * FROM failed_logs WHERE (?::DATE IS NULL OR logged_at::DATE >= ?::DATE) "
                   "AND (?::DATE IS NULL OR logged_at::DATE <= ?::DATE) ORDER BY logged_at, failed_id",
}


def export_table(settings, out: Path, *, table: str = "usage_events", date_from=None, date_to=None,
                 chunk_rows: int = 100_000) -> int:
    """Write a table (optionally a day range) to CSV, streaming in chunks; return the row count."""
    from llmcost.store import connection as store

    if table not in EXPORT_QUERIES:
        raise ValueError(f"cannot export {table!r}: choose one of {', '.join(EXPORT_QUERIES)}")
    with store.reading(settings.db_path) as db:
        if db is None:
            return write_rows(out, [], [])
        result = db.execute(EXPORT_QUERIES[table], [date_from, date_from, date_to, date_to])
        header = [d[0] for d in result.description]

        def rows():
            while batch := result.fetchmany(chunk_rows):
                yield from batch

        return write_rows(out, header, rows())
