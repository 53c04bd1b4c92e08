"""CSV files: finding where each record ends, and letting DuckDB split the cells of plain rows.

`cells` gives the rows DuckDB's reader takes (every cell as text) for the bulk path; `records` reads
the others one by one, joining lines inside a quoted cell, for pydantic's path.
"""

from __future__ import annotations

import csv
import io
import tempfile
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute  # noqa: F401 - pa.compute

from llmcost.ingestion import bulk

MAX_QUOTED_LINES = 1_000  # a quoted CSV cell spanning more lines than this is taken as a broken line
csv.field_size_limit(64 * 1024 * 1024)  # the default 128 KB would abort on one large cell


class _OpenQuote(Exception):
    """A quoted CSV cell is still open at the end of the text given."""


def _row(text: str, csv_header: list[str]) -> dict[str, str]:
    """One CSV record as a dict; raises _OpenQuote, or ValueError saying what is wrong."""
    try:
        rows = list(csv.reader(io.StringIO(text), strict=True))
    except csv.Error as error:
        if "unexpected end of data" in str(error):
            raise _OpenQuote from None
        raise ValueError(f"not valid CSV: {error}") from None
    values = rows[0] if rows else []
    if len(rows) > 1 or len(values) > len(csv_header):
        raise ValueError(f"CSV row has {sum(len(r) for r in rows)} cells, the header {len(csv_header)}")
    return {k: v for k, v in zip(csv_header, values) if v != ""}


def records(raws: list[bytes], offsets: list[int], csv_header: list[str], *, whole_chunk: bool,
            at_end: bool) -> tuple[list[tuple[int, Any, bytes]], int]:
    """(offset, record or ValueError, raw bytes) for CSV lines, joining lines inside a quoted cell.

    Returns the records and how many of the lines they used: a record whose quote is still open at the
    end of the text waits for the rest of it (when `at_end`), unless it already spans MAX_QUOTED_LINES
    lines, which is read as a broken line instead.
    """
    records, i = [], 0
    while i < len(raws):
        if not raws[i].strip():
            records.append((offsets[i], None, raws[i]))
            i += 1
            continue
        end = i + 1
        while True:
            raw = b"".join(raws[i:end])
            try:
                raw.decode("utf-8")
                not_utf8 = None
            except UnicodeDecodeError as error:
                not_utf8 = ValueError(f"line is not valid UTF-8 (byte {error.start})")
            try:
                # Bytes that are not UTF-8 still take part in finding where the record ends.
                record: Any = _row(raw.decode("utf-8", "replace"), csv_header)
            except ValueError as error:
                record = error
            except _OpenQuote:
                if whole_chunk and end < len(raws) and end - i < MAX_QUOTED_LINES:
                    end += 1
                    continue
                if whole_chunk and end - i < MAX_QUOTED_LINES and (at_end or i > 0):
                    return records, i  # the rest of this record is still to be written, or in the next chunk
                raw = raws[i]
                end = i + 1
                record = ValueError("not valid CSV: a quoted cell is never closed")
            record = not_utf8 or record
            break
        records.append((offsets[i], record, raw))
        i = end
    return records, len(raws)


def cells(db: duckdb.DuckDBPyConnection, chunk: bytes | memoryview, lines: pa.Table, csv_header: list[str],
               header_line: bytes) -> tuple[pa.Table | None, set[int]]:
    """CSV rows the bulk path may take, as text columns, and the idx of the lines it may not.

    DuckDB's CSV reader splits the cells. A row it rejects (the wrong number of cells, bytes that are
    not UTF-8) is left to pydantic, which says why; when the chunk is not plain CSV (a quoted cell
    spanning lines) every row is.
    """
    def everything() -> set[int]:
        return set(range(lines.num_rows))

    known = {f.name for f in bulk.FIELDS}
    if not set(csv_header) <= known or len(set(csv_header)) != len(csv_header):
        return None, everything()  # unknown or repeated columns: pydantic names them, row by row
    with tempfile.NamedTemporaryFile(suffix=".csv") as chunk_file:
        chunk_file.write(header_line)
        chunk_file.write(chunk)
        chunk_file.flush()
        try:
            cells, rejected_at = _read_csv_cells(db, chunk_file.name, csv_header, keep_rejects=False)
        except duckdb.Error:
            try:  # some row is not plain CSV: read the others, and learn where the rejected ones start
                cells, rejected_at = _read_csv_cells(db, chunk_file.name, csv_header, keep_rejects=True)
            except duckdb.Error:
                return None, everything()
    offsets = lines.column("off").to_numpy()
    starts = offsets - offsets[0] + len(header_line)  # where each line starts in the file DuckDB read
    slow = _blank_lines(chunk, lines)
    if len(rejected_at):
        # DuckDB gives where a rejected row starts, counting empty lines before it as part of the row:
        # the row is the first line from there that is not empty (a line of spaces is a row of its own).
        at_line = np.searchsorted(starts, rejected_at)
        if at_line.max() >= len(starts) or (starts[at_line] != rejected_at).any():
            return None, everything()
        lengths = np.diff(np.append(offsets, offsets[0] + len(chunk)))
        first = np.frombuffer(chunk, dtype=np.uint8)[offsets - offsets[0]]
        empty = (lengths == 1) | ((lengths == 2) & (first == 13))
        not_empty = np.flatnonzero(~empty)
        rejected = np.searchsorted(not_empty, at_line)
        if rejected.max() >= len(not_empty):
            return None, everything()
        slow[not_empty[rejected]] = True
    rows_at = lines.select(["idx", "off"]).filter(pa.array(~slow))
    if cells.num_rows != rows_at.num_rows:
        return None, everything()
    cells = pa.Table.from_arrays([rows_at.column("idx"), rows_at.column("off"), *cells.columns],
                                 names=["idx", "off", *cells.column_names])
    return cells, set(np.flatnonzero(slow).tolist())


def _read_csv_cells(db: duckdb.DuckDBPyConnection, path: str, csv_header: list[str],
                    keep_rejects: bool) -> tuple[pa.Table, np.ndarray]:
    """Every cell as text, and the byte offsets (0-based) at which the rows DuckDB rejected start."""
    options = ("delim = ',', quote = '\"', escape = '\"', strict_mode = true, header = true, auto_detect = false, "
               "columns = $columns")
    if keep_rejects:
        options += ", ignore_errors = true, store_rejects = true, rejects_table = 'csv_rejects', " \
                   "rejects_scan = 'csv_reject_scans'"
    columns = {"columns": {name: "VARCHAR" for name in csv_header}}
    cells = db.sql(f"SELECT * FROM read_csv($path, {options})", params={"path": path, **columns}).to_arrow_table()
    if not keep_rejects:
        return cells, np.zeros(0, dtype=np.int64)
    try:
        starts = db.sql("SELECT DISTINCT line_byte_position - 1 AS row_start FROM csv_rejects "
                        "ORDER BY row_start").to_arrow_table()
    finally:
        db.execute("DROP TABLE IF EXISTS csv_rejects")
        db.execute("DROP TABLE IF EXISTS csv_reject_scans")
    return cells, starts.column("row_start").to_numpy().astype(np.int64)


def _blank_lines(chunk: bytes | memoryview, lines: pa.Table) -> np.ndarray:
    """Which lines hold only whitespace (a mask); only lines starting with a space or a non-ASCII byte are read."""
    offsets = lines.column("off").to_numpy()
    first_bytes = np.frombuffer(chunk, dtype=np.uint8)[offsets - offsets[0]]
    maybe = np.flatnonzero((first_bytes <= 32) | (first_bytes >= 128))
    blank = np.zeros(lines.num_rows, dtype=bool)
    if len(maybe):
        trimmed = pa.compute.utf8_trim_whitespace(pa.array(bulk.pick(lines.column("line"), maybe), pa.large_string()))
        blank[maybe[pa.compute.fill_null(pa.compute.equal(trimmed, ""), False).to_numpy(zero_copy_only=False)]] = True
    return blank
