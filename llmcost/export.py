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
