"""Validating usage events in bulk inside DuckDB.

Most records are plain: the right keys, the right JSON types, values in range. A conservative
"clean" test written in SQL picks those out, and DuckDB types them for the whole batch at once;
pricing then runs once per batch. Every other record (odd types, coercions, missing identity,
fallback entries, attempts, anything the SQL test is unsure of) goes through the exact pydantic
path in `llmcost.records`, which stores it or says why not. The clean test only accepts records
that `UsageEvent` accepts unchanged, so both paths store the same values.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute  # noqa: F401 - pa.compute

from .events import EARLIEST_TS, MAX_CLOCK_SKEW, MAX_TOKENS_PER_CALL

SCAN_BATCH_ROWS = 8192
# A cost above this does not fit DECIMAL(18, 12); no single LLM call costs a million dollars.
MAX_COST_PICO = 10**18


@dataclass(frozen=True)
class Field:
    name: str
    kind: str  # str | int | float | bool | ts | status | object
    required: bool = False
    nullable: bool = False
    min_length: int = 0
    max_length: int = 0


FIELDS = (
    Field("event_id", "str", min_length=1, max_length=200),
    Field("ts", "ts", required=True),
    Field("user_id", "str", required=True, min_length=1, max_length=500),
    Field("tenant_id", "str", required=True, min_length=1, max_length=500),
    Field("use_case", "str", required=True, min_length=1, max_length=500),
    Field("account_type", "str", nullable=True, max_length=200),
    Field("provider", "str", nullable=True, max_length=200),
    Field("model", "str", nullable=True, max_length=500),
    Field("input_tokens", "int"),
    Field("output_tokens", "int"),
    Field("cache_read_tokens", "int"),
    Field("cache_write_tokens", "int"),
    Field("reasoning_tokens", "int"),
    Field("total_tokens", "int", nullable=True),
    Field("estimated_tokens", "int", nullable=True),
    Field("usage_estimated", "bool"),
    Field("latency_ms", "float", nullable=True),
    Field("status", "status"),
    Field("error", "str", nullable=True, max_length=10_000),
    Field("attempt_id", "str", nullable=True, max_length=200),
    Field("source", "str", nullable=True, min_length=1, max_length=1000),
    Field("metadata", "object"),
)
CLEAN_KEYS = [f.name for f in FIELDS]
# Keys a usage event may have that the clean path leaves to pydantic (provider-reported cost).
PYDANTIC_ONLY_KEYS = ("cost_usd", "price_source")
# Hours 00-23 and offsets up to ±14:00 only: DuckDB reads 24:00 and +99:00 where pydantic refuses them.
ISO_TS = (r"\d{4}-(0[1-9]|1[0-2])-(0[1-9]|[12]\d|3[01])[T ]([01]\d|2[0-3]):[0-5]\d:[0-5]\d(\.\d{1,6})?"
          r"(Z|[+-](0\d|1[0-4]):[0-5]\d)?")


def lines_table(chunk: bytes, start_offset: int) -> pa.Table:
    """Each line of a chunk that ends with a newline, with its byte offset in the file, without a copy per line."""
    positions = np.flatnonzero(np.frombuffer(chunk, dtype=np.uint8) == 10)
    starts = np.concatenate(([0], positions[:-1] + 1)).astype(np.int64)
    bounds = np.concatenate((starts, [len(chunk)])).astype(np.int64)
    lines = pa.LargeBinaryArray.from_buffers(pa.large_binary(), len(starts),
                                             [None, pa.py_buffer(bounds.tobytes()), pa.py_buffer(chunk)])
    try:
        text = lines.cast(pa.large_string())
    except pa.ArrowInvalid:  # some line is not UTF-8: those lines get no text, and pydantic's path says why
        decoded = []
        for raw in lines.to_pylist():
            try:
                decoded.append(raw.decode("utf-8"))
            except UnicodeDecodeError:
                decoded.append(None)
        text = pa.array(decoded, type=pa.large_string())
    table = pa.table({"idx": np.arange(len(starts), dtype=np.int64), "off": starts + start_offset, "raw": lines,
                      "line": text})
    # Several record batches, so DuckDB scans them on every core.
    return pa.Table.from_batches(table.to_batches(max_chunksize=SCAN_BATCH_ROWS))


def _field_test(f: Field, v: str, t: str | None) -> str:
    """SQL that is true when field `f` (value text `v`, JSON type `t`, or None for CSV cells) is clean."""
    absent = f"{v} IS NULL" if t is None else f"{t} IS NULL"
    is_null = "false" if t is None else f"{t} = 'NULL'"
    typed = {
        "str": "true" if t is None else f"{t} = 'VARCHAR'",
        "ts": "true" if t is None else f"{t} = 'VARCHAR'",
        "status": "true" if t is None else f"{t} = 'VARCHAR'",
        "int": f"regexp_full_match({v}, '[0-9]{{1,10}}')" if t is None else
               f"{t} IN ('UBIGINT', 'BIGINT') AND strlen({v}) <= 10",
        "float": f"regexp_full_match({v}, '[0-9]{{1,12}}(\\.[0-9]{{1,9}})?')" if t is None else
                 f"{t} IN ('UBIGINT', 'BIGINT', 'DOUBLE')",
        "bool": f"{v} IN ('true', 'false')" if t is None else f"{t} = 'BOOLEAN'",
        "object": f"json_valid({v}) AND json_type({v}) = 'OBJECT'" if t is None else f"{t} = 'OBJECT'",
    }[f.kind]
    value = {
        # Printable ASCII at both ends: pydantic's whitespace stripping would change nothing.
        "str": f"strlen({v}) BETWEEN {f.min_length} AND {f.max_length} AND ({v} = '' OR "
               f"(unicode({v}) BETWEEN 33 AND 126 AND unicode(right({v}, 1)) BETWEEN 33 AND 126)) "
               f"AND strpos({v}, chr(0)) = 0",
        "ts": f"regexp_full_match({v}, '{ISO_TS}') AND TRY_CAST({v} AS TIMESTAMPTZ) BETWEEN $lo AND $hi",
        "status": f"{v} IN ('ok', 'error')",
        "int": f"TRY_CAST({v} AS BIGINT) BETWEEN 0 AND {MAX_TOKENS_PER_CALL}",
        "float": f"TRY_CAST({v} AS DOUBLE) >= 0 AND isfinite(TRY_CAST({v} AS DOUBLE))",
        "bool": "true",
        "object": "true",
    }[f.kind]
    present = f"(({typed}) AND ({value}))"
    if f.required:
        return present
    if f.nullable:
        return f"({absent} OR {is_null} OR {present})"
    return f"({absent} OR {present})"


def _clean_test(typed: bool) -> str:
    tests = [_field_test(f, f"v_{f.name}", f"t_{f.name}" if typed else None) for f in FIELDS]
    tokens = {n: f"coalesce(TRY_CAST(v_{n} AS BIGINT), 0)" for n in
              ("input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens", "reasoning_tokens")}
    parts = f"({tokens['input_tokens']} + {tokens['output_tokens']})"
    tests += [
        f"({tokens['input_tokens']} = 0 OR {tokens['cache_read_tokens']} + {tokens['cache_write_tokens']} "
        f"<= {tokens['input_tokens']})",
        f"({tokens['output_tokens']} = 0 OR {tokens['reasoning_tokens']} <= {tokens['output_tokens']})",
        f"(TRY_CAST(v_total_tokens AS BIGINT) IS NULL OR {parts} = 0 OR TRY_CAST(v_total_tokens AS BIGINT) >= {parts})",
    ]
    return " AND ".join(tests)


def _typed_columns(metadata_sql: str) -> str:
    """The usage_events columns (but cost) from a clean row's field texts."""
    ts = "TRY_CAST(v_ts AS TIMESTAMPTZ)"
    ints = ("input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens", "reasoning_tokens")
    columns = [
        "coalesce(v_event_id, $id_prefix || off::VARCHAR) AS event_id",
        f"({ts} AT TIME ZONE 'UTC') AS ts",
        f"({ts} AT TIME ZONE $tz)::DATE AS day",
        "v_user_id AS user_id", "v_tenant_id AS tenant_id", "v_use_case AS use_case",
        "v_account_type AS account_type", "v_provider AS provider", "v_model AS model",
        *(f"coalesce(TRY_CAST(v_{n} AS BIGINT), 0) AS {n}" for n in ints),
        "coalesce(TRY_CAST(v_total_tokens AS BIGINT), "
        "coalesce(TRY_CAST(v_input_tokens AS BIGINT), 0) + coalesce(TRY_CAST(v_output_tokens AS BIGINT), 0)) "
        "AS total_tokens",
        "TRY_CAST(v_estimated_tokens AS BIGINT) AS estimated_tokens",
        "coalesce(v_usage_estimated = 'true', false) AS usage_estimated",
        "TRY_CAST(v_latency_ms AS DOUBLE) AS latency_ms",
        "coalesce(v_status, 'ok') AS status",
        "v_error AS error",
        "v_attempt_id AS attempt_id",
        "coalesce(v_source, $source_label) AS source",
        f"{metadata_sql} AS metadata",
    ]
    return ",\n".join(columns)


TRANSFORM = "{" + ", ".join(f'"{f.name}": "JSON"' for f in FIELDS) + "}"


def _split(db: duckdb.DuckDBPyConnection, relation_sql: str, typed: bool, metadata_sql: str,
           params: dict) -> tuple[pa.Table, pa.Table]:
    """Run the clean test and the typing over a relation of v_/t_ columns: (clean typed rows, other idx)."""
    table = db.sql(
        f"""
        SELECT idx, off, coalesce(known_keys AND {_clean_test(typed)}, false) AS clean, {_typed_columns(metadata_sql)}
        FROM ({relation_sql})
        """,
        params=params,
    ).to_arrow_table()
    flags = table.column("clean")
    clean = table.filter(flags).drop_columns(["clean"])
    others = table.filter(pa.compute.invert(flags)).select(["idx"]).sort_by("idx")
    return clean, others


def split_json(db: duckdb.DuckDBPyConnection, lines: pa.Table, *, id_prefix: str, source_label: str,
               timezone: str) -> tuple[pa.Table, pa.Table]:
    """(clean typed rows with idx and off, the other lines as idx/off/raw) for one chunk of JSON Lines."""
    db.register("chunk_lines", lines.select(["idx", "off", "line"]))
    fields = ", ".join(f"s.{f.name}->>'$' AS v_{f.name}, json_type(s.{f.name}) AS t_{f.name}" for f in FIELDS)
    # One pass over the lines; the JSON functions only see lines that are JSON objects. An escaped NUL
    # (pydantic refuses it) and surrogate escapes (json.loads judges them) go to pydantic. Known keys must
    # each come once: with a key given twice DuckDB reads the first value and json.loads the last.
    relation = f"""
        SELECT idx, off, known_keys, {fields}
        FROM (
            SELECT idx, off,
                   CASE WHEN parsed THEN list_has_all($keys, keys) AND len(keys) = len(list_distinct(keys)) END
                       AS known_keys,
                   CASE WHEN parsed THEN json_transform(line, $transform) END AS s
            FROM (
                SELECT idx, off, line, parsed, CASE WHEN parsed THEN json_keys(line) END AS keys
                FROM (
                    SELECT idx, off, line,
                           coalesce(left(ltrim(line), 1) = '{{' AND strpos(line, '\\u0000') = 0
                                    AND (strpos(line, '\\u') = 0 OR NOT regexp_matches(line, '\\\\u[dD][89a-fA-F]'))
                                    AND json_valid(line), false) AS parsed
                    FROM chunk_lines
                )
            )
        )
    """
    metadata = "CASE WHEN t_metadata = 'OBJECT' AND v_metadata <> '{}' THEN json(v_metadata) END"
    params = {**_params(id_prefix, source_label, timezone), "keys": CLEAN_KEYS, "transform": TRANSFORM}
    try:
        clean, other_idx = _split(db, relation, True, metadata, params)
    finally:
        db.unregister("chunk_lines")
    others = lines.select(["idx", "off", "raw"]).take(other_idx.column("idx"))
    return clean, others


def split_csv(db: duckdb.DuckDBPyConnection, cells: pa.Table, *, id_prefix: str, source_label: str,
              timezone: str) -> tuple[pa.Table, list[int]]:
    """(clean typed rows, idx of the other rows) for CSV rows given as text columns named like the fields."""
    db.register("chunk_cells", cells)
    present = set(cells.column_names)
    values = ", ".join(
        (f"nullif(\"{f.name}\", '') AS v_{f.name}" if f.name in present else f"NULL::VARCHAR AS v_{f.name}")
        for f in FIELDS
    )
    relation = f"SELECT idx, off, true AS known_keys, {values} FROM chunk_cells"
    try:
        metadata = "CASE WHEN v_metadata IS NOT NULL AND v_metadata <> '{}' THEN json(v_metadata) END"
        clean, others = _split(db, relation, False, metadata, _params(id_prefix, source_label, timezone))
    finally:
        db.unregister("chunk_cells")
    return clean, others.column("idx").to_pylist()


def _params(id_prefix: str, source_label: str, timezone: str) -> dict:
    now = dt.datetime.now(dt.timezone.utc)
    return {"id_prefix": id_prefix, "source_label": source_label, "tz": timezone,
            "lo": EARLIEST_TS, "hi": now + MAX_CLOCK_SKEW}
