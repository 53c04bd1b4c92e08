"""Validating usage events and call attempts in bulk inside DuckDB.

Most records are plain: the right keys, each once, the right JSON types, values in range. A conservative
"clean" test written in SQL picks those out, and DuckDB types them for the whole batch at once; pricing
then runs once per batch. Every other record (odd types, coercions, missing identity, fallback entries,
anything the SQL test is unsure of) goes through the exact pydantic path in `llmcost.ingestion.parse`, which
stores it or says why not. The clean test only accepts records that `UsageEvent` (or `AttemptRecord`)
accepts unchanged, so both paths store the same values.

A JSON line is read once into the JSON text of each known key (`json_extract`: a string keeps its
quotes, so its type shows) and once for its number of keys: when that number equals the known keys
found, the line has no other key and none twice.
"""

from __future__ import annotations

import datetime as dt
import types
import typing
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute  # noqa: F401 - pa.compute
from annotated_types import MaxLen, MinLen
from pydantic import BaseModel, StringConstraints

from llmcost.events import (
    EARLIEST_TS,
    MAX_CLOCK_SKEW,
    MAX_TOKENS_PER_CALL,
    PRICE_SOURCES,
    TOKEN_FIELDS,
    AttemptRecord,
    UsageEvent,
)
from llmcost.providers import PROVIDER_ALIASES, known_providers

SCAN_BATCH_ROWS = 8192
NEWLINE_SCAN_BYTES = 4 * 1024 * 1024
ROW_GROUP_ROWS = 122_880  # DuckDB's default row group size
# A cost above this does not fit DECIMAL(18, 12); no single LLM call costs a million dollars.
MAX_COST_PICO = 10**18


@dataclass(frozen=True)
class Field:
    name: str
    kind: str  # str | int | float | bool | ts | status | cost | price_source | object
    required: bool = False
    nullable: bool = False
    min_length: int = 0
    max_length: int = 0
    stripped: bool = True  # pydantic strips whitespace from names; free text is kept as given
    ascii_only: bool = False  # lower-cased in SQL, where only ASCII letters lower exactly as Python's do


def fields_of(model: type[BaseModel], *, ascii_only: tuple[str, ...] = (), skip: tuple[str, ...] = (),
              min_length: dict[str, int] | None = None) -> tuple[Field, ...]:
    """The bulk checks of a pydantic record model, read from its own field declarations, so the event
    schema is written once (`llmcost.events.UsageEvent`) and the SQL test can never drift from it."""
    fields = []
    for name, info in model.model_fields.items():
        if name in skip:
            continue
        annotation, constraints = info.annotation, list(info.metadata)
        if typing.get_origin(annotation) in (typing.Union, types.UnionType):  # Optional[X]
            annotation = next(arg for arg in typing.get_args(annotation) if arg is not type(None))
        if typing.get_origin(annotation) is typing.Annotated:
            annotation, *extra = typing.get_args(annotation)
            constraints += extra
        kind = _kind(name, annotation)
        declared_min = next((c.min_length for c in constraints if isinstance(c, MinLen)), 0)
        fields.append(Field(
            name, kind, required=info.is_required(), nullable=info.default is None,
            min_length=max(declared_min, (min_length or {}).get(name, 0)),
            max_length=next((c.max_length for c in constraints if isinstance(c, MaxLen)), 0),
            stripped=kind != "str" or any(isinstance(c, StringConstraints) and c.strip_whitespace for c in constraints),
            ascii_only=name in ascii_only,
        ))
    return tuple(fields)


def _kind(name: str, annotation: Any) -> str:
    if typing.get_origin(annotation) is typing.Literal:
        values = typing.get_args(annotation)
        if values == ("ok", "error"):
            return "status"
        if values == PRICE_SOURCES:
            return "price_source"
        raise TypeError(f"{name}: no bulk check for the choices {values}")
    if typing.get_origin(annotation) is dict:
        return "object"
    kinds = {str: "str", int: "int", float: "float", bool: "bool", dt.datetime: "ts", Decimal: "cost"}
    if annotation not in kinds:
        raise TypeError(f"{name}: no bulk check for {annotation!r}; add one to llmcost.ingestion.bulk")
    return kinds[annotation]


# The provider is lower-cased in SQL to find its one name, and only ASCII letters lower alike there.
# An empty source takes the exact path, which stores the file's label in its place.
FIELDS = fields_of(UsageEvent, ascii_only=("provider",), min_length={"source": 1})
# The tracker's write-ahead record of a call, {"record": "attempt", ...}.
ATTEMPT_FIELDS = fields_of(AttemptRecord, skip=("record",))
# Hours 00-23 and offsets up to ±14:00 only: DuckDB reads 24:00 and +99:00 where pydantic refuses them.
ISO_TS = (r"\d{4}-(0[1-9]|1[0-2])-(0[1-9]|[12]\d|3[01])[T ]([01]\d|2[0-3]):[0-5]\d:[0-5]\d(\.\d{1,6})?"
          r"(Z|[+-](0\d|1[0-4]):[0-5]\d)?")



def lines_table(chunk: bytes, start_offset: int) -> pa.Table:
    """Each line of a chunk that ends with a newline, with its byte offset in the file, without a copy per line."""
    data = np.frombuffer(chunk, dtype=np.uint8)
    # Slice by slice, so the comparison reuses a small buffer instead of touching a chunk-sized one.
    positions = np.concatenate([np.flatnonzero(data[at:at + NEWLINE_SCAN_BYTES] == 10) + at
                                for at in range(0, len(data), NEWLINE_SCAN_BYTES)] or [np.zeros(0, np.int64)])
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


def pick(column: pa.ChunkedArray, idx) -> list:
    """The values at `idx`, a filter chunk by chunk where `idx` ascends: `take` on a chunked column would
    first join its chunks (a chunk's 128 MB of lines) into one buffer."""
    idx = np.asarray(idx, dtype=np.int64)
    if len(idx) and not np.all(idx[1:] > idx[:-1]):
        return column.take(pa.array(idx)).to_pylist()
    return column.filter(pa.array(_chosen(len(column), idx))).to_pylist()


def _chosen(count: int, idx: np.ndarray) -> np.ndarray:
    chosen = np.zeros(count, dtype=bool)
    chosen[idx] = True
    return chosen


def _value_test(f: Field, v: str, from_json: bool) -> str:
    """SQL that is true when `v`, the text of field `f`'s value, is what pydantic keeps unchanged.

    Numbers and the time are judged on their text, and read once as n_<field> and t_ts (`_read_once`).
    """
    if f.kind == "str":
        # JSON text holds a NUL only as the escape \u0000, and stage_json leaves such lines to pydantic.
        test = f"strlen({v}) BETWEEN {f.min_length} AND {f.max_length}"
        if not from_json:
            test += f" AND strpos({v}, chr(0)) = 0"
        if f.ascii_only:
            test += f" AND strlen({v}) = length({v})"
        if f.stripped:  # printable ASCII at both ends: pydantic's whitespace stripping would change nothing
            test += f" AND ({v} = '' OR (unicode({v}) BETWEEN 33 AND 126 AND unicode({v}[-1]) BETWEEN 33 AND 126))"
        return test
    return {
        "ts": f"regexp_full_match({v}, '{ISO_TS}') AND t_ts BETWEEN $lo AND $hi",
        "status": f"{v} IN ('ok', 'error')",
        # A cost as text with at most 12 decimals and 6 whole digits is a Decimal that fits DECIMAL(18, 12).
        "cost": f"regexp_full_match({v}, '[0-9]{{1,6}}(\\.[0-9]{{1,12}})?')",
        "price_source": f"{v} IN ({', '.join(repr(s) for s in PRICE_SOURCES)})",
        "int": f"regexp_full_match({v}, '[0-9]{{1,10}}') AND n_{f.name} <= {MAX_TOKENS_PER_CALL}",
        "float": f"regexp_full_match({v}, '[0-9]{{1,12}}(\\.[0-9]{{1,9}})?') AND isfinite(n_{f.name})",
        "bool": f"{v} IN ('true', 'false')",
        "object": f"CASE WHEN json_valid({v}) THEN json_type({v}) = 'OBJECT' END",
    }[f.kind]


def _field_test(f: Field, from_json: bool) -> str:
    """SQL that is true when field `f` is clean: absent (or null), or present with the right type and value.

    A CSV cell is text, as pydantic reads it. A JSON value comes as its JSON text `j_<field>` (strings
    quoted, numbers as numbers) with its string value in `v_<field>`: a name must be a JSON string,
    and a count digits, so a string of digits for a count (which pydantic would coerce) goes to pydantic.
    """
    v = f"v_{f.name}"
    if from_json and f.kind in TEXT_KINDS:
        j = f"j_{f.name}"
        absent, present = f"({j} IS NULL OR {j} = 'null')", f"prefix({j}, '\"') AND {_value_test(f, v, True)}"
    else:
        absent, present = f"{v} IS NULL", _value_test(f, v, from_json)
    return f"(NOT {absent} AND {present})" if f.required else f"({absent} OR ({present}))"




def _clean_test(fields: tuple[Field, ...], from_json: bool, token_totals: bool = False) -> str:
    """Every field clean; with `token_totals`, a usage event's token counts add up as UsageEvent checks."""
    tests = [_field_test(f, from_json) for f in fields]
    if token_totals:
        tokens = {n: f"coalesce(n_{n}, 0)" for n in TOKEN_FIELDS}
        parts = f"({tokens['input_tokens']} + {tokens['output_tokens']})"
        tests += [
            f"({tokens['input_tokens']} = 0 OR {tokens['cache_read_tokens']} + {tokens['cache_write_tokens']} "
            f"<= {tokens['input_tokens']})",
            f"({tokens['output_tokens']} = 0 OR {tokens['reasoning_tokens']} <= {tokens['output_tokens']})",
            f"{tokens['cache_write_1h_tokens']} <= {tokens['cache_write_tokens']}",
            f"(n_total_tokens IS NULL OR {parts} = 0 OR n_total_tokens >= {parts})",
        ]
    return " AND ".join(tests)


def _read_once(fields: tuple[Field, ...], stored_provider: bool = False) -> str:
    """The time and the numbers (and with `stored_provider`, the provider's stored name, s_provider),
    read from their text once for both the clean test and the typed columns."""
    columns = ["TRY_CAST(v_ts AS TIMESTAMPTZ) AS t_ts"]
    if stored_provider:
        columns.append(f"{_stored_provider_sql('v_provider')} AS s_provider")
    columns += [f"TRY_CAST(v_{f.name} AS BIGINT) AS n_{f.name}" for f in fields if f.kind == "int"]
    columns += [f"TRY_CAST(v_{f.name} AS DOUBLE) AS n_{f.name}" for f in fields if f.kind == "float"]
    return ", ".join(columns)


def _stored_provider_sql(v: str) -> str:
    """`llmcost.providers.stored_provider` in SQL, for an ASCII name without surrounding spaces."""
    # The names are our own constants and genai-prices' provider ids (lower-case letters, digits, '-',
    # '_', '.'), never user text; most rows name a provider as stored and take the first branch.
    known = sorted(known_providers())
    if not all(name.replace("-", "").replace("_", "").replace(".", "").isalnum() for name in (*known, *PROVIDER_ALIASES)):
        raise ValueError("a provider name is not plain text; cannot write it into SQL")
    renamed = {**{name: name for name in known}, **PROVIDER_ALIASES}
    cases = " ".join(f"WHEN '{alias}' THEN '{name}'" for alias, name in renamed.items())
    listed = ", ".join(f"'{name}'" for name in known)
    return f"CASE WHEN {v} IN ({listed}) THEN {v} ELSE (CASE lower({v}) {cases} ELSE {v} END) END"


def _typed_columns() -> str:
    """The usage_events columns (but cost) from a clean row's field texts."""
    columns = [
        "v_event_id AS event_id",  # NULL: llmcost.ingestion.content_ids gives one from the line
        "(t_ts AT TIME ZONE 'UTC') AS ts",
        "(t_ts AT TIME ZONE $tz)::DATE AS day",
        "v_user_id AS user_id", "v_tenant_id AS tenant_id", "v_use_case AS use_case",
        "v_account_type AS account_type", "s_provider AS provider", "v_model AS model",
        "v_response_model AS response_model", "v_service_tier AS service_tier",
        *(f"coalesce(n_{n}, 0) AS {n}" for n in TOKEN_FIELDS),
        "coalesce(n_total_tokens, coalesce(n_input_tokens, 0) + coalesce(n_output_tokens, 0)) AS total_tokens",
        "n_estimated_tokens AS estimated_tokens",
        "coalesce(v_usage_estimated = 'true', false) AS usage_estimated",
        "n_latency_ms AS latency_ms",
        "coalesce(v_status, 'ok') AS status",
        "v_error AS error",
        "v_attempt_id AS attempt_id",
        "coalesce(v_source, $source_label) AS source",
        # A provider stored under another name keeps the name given, as UsageEvent does.
        "CASE WHEN v_provider IS DISTINCT FROM s_provider "
        "THEN json_merge_patch(coalesce(v_metadata, '{}'), json_object('provider_original', v_provider))::VARCHAR "
        "WHEN v_metadata <> '{}' THEN json(v_metadata)::VARCHAR END AS metadata",
        # A cost the record gives (the tracker's own, or the provider's) is kept as given.
        "CAST(CAST(v_cost_usd AS DECIMAL(18, 12)) * 1000000000000 AS BIGINT) AS reported_pico",
        "CASE WHEN v_cost_usd IS NOT NULL THEN coalesce(v_price_source, 'provider') END AS reported_source",
    ]
    return ",\n".join(columns)


def _attempt_columns() -> str:
    """The call_attempts columns (but ingested_at) from a clean attempt's field texts."""
    return ",\n".join([
        "v_attempt_id AS attempt_id", "(t_ts AT TIME ZONE 'UTC') AS ts", "(t_ts AT TIME ZONE $tz)::DATE AS day",
        "v_user_id AS user_id", "v_tenant_id AS tenant_id", "v_use_case AS use_case",
        "v_account_type AS account_type", "v_provider AS provider", "v_model AS model",
        "n_estimated_tokens AS estimated_tokens", "coalesce(nullif(v_source, ''), $source_label) AS source",
    ])


TEXT_KINDS = ("str", "ts", "status", "cost", "price_source")
CLEAN_ROWS = "clean_rows"
CLEAN_ATTEMPTS = "clean_attempts"


def _stage(db: duckdb.DuckDBPyConnection, table: str, columns_sql: str, relation_sql: str, test_sql: str,
           read_once_sql: str, params: dict) -> np.ndarray:
    """Keep the rows of a relation of v_ columns that pass `test_sql`, typed, in the temp table `table`;
    returns their idx."""
    # Nothing depends on the order rows are staged in (duplicates are settled by file offset), and
    # keeping it would make DuckDB read a registered Arrow table on one thread. The store's own
    # inserts keep it: unordered inserts leave part-filled row groups that each checkpoint rewrites.
    db.execute("SET preserve_insertion_order = false")
    try:
        db.execute(
            f"""
            CREATE OR REPLACE TEMP TABLE {table} AS
            SELECT idx, off, {columns_sql}
            FROM (SELECT *, {read_once_sql} FROM ({relation_sql}))
            WHERE coalesce({test_sql}, false)
            """,
            params,
        )
    finally:
        db.execute("RESET preserve_insertion_order")
    return db.sql(f"SELECT idx FROM {table}").to_arrow_table().column("idx").to_numpy()


def _json_relation(fields: tuple[Field, ...], lead: tuple[str, ...] = (), where: str = "true") -> tuple[str, list]:
    """(SQL, JSON paths) for the lines of chunk_lines as j_<key> (each known key's JSON text) and
    v_<field> (its value as text), with known_keys true when the line has no other key.

    `lead` are further keys read as JSON text only (such as an attempt's "record").
    """
    names = [*lead, *(f.name for f in fields)]
    fragments = ", ".join(f"f[{n}] AS j_{name}" for n, name in enumerate(names, start=1))
    values = ", ".join(
        (f"j_{f.name}->>'$'" if f.kind in TEXT_KINDS else f"nullif(j_{f.name}, 'null')") + f" AS v_{f.name}"
        for f in fields
    )
    # Each line has as many keys as known keys found in it only when every key is known and given
    # once (with a key given twice DuckDB reads the first value, json.loads the last).
    found = " + ".join(f"(j_{name} IS NOT NULL)::INTEGER" for name in names)
    texts = ", ".join([*(f"j_{name}" for name in lead), *(f"j_{f.name}" for f in fields if f.kind in TEXT_KINDS)])
    # The JSON functions only see lines that look like objects, and json_valid reads those that do not end
    # like one: a torn line makes them raise, and TRY then evaluates the line's whole vector of 2,048
    # lines again one by one (with 1% of lines torn, nearly every vector: 2x the cost of the read).
    # A line that ends with "}" rarely is not JSON, and reading every line twice would cost a tenth more.
    # An escaped NUL (pydantic refuses it) and surrogate escapes (json.loads judges them) go to pydantic.
    sql = f"""
        SELECT idx, off, coalesce(key_count = {found}, false) AS known_keys, {texts}, {values}
        FROM (
            SELECT idx, off, key_count, {fragments}
            FROM (
                SELECT idx, off, TRY(len(json_keys(line))) AS key_count, TRY(json_extract(line, $paths)) AS f
                FROM chunk_lines
                WHERE prefix(line, '{{')
                      AND (strpos(line, '\\u') = 0
                           OR (strpos(line, '\\u0000') = 0 AND NOT regexp_matches(line, '\\\\u[dD][89a-fA-F]')))
                      AND {where} AND (suffix(line, '}}' || chr(10)) OR json_valid(line))
            )
        )
    """
    return sql, [f"$.{name}" for name in names]


def stage_json(db: duckdb.DuckDBPyConnection, lines: pa.Table, *, source_label: str,
               timezone: str) -> np.ndarray:
    """Type the clean usage events of a chunk of JSON Lines into the temp table clean_rows; returns their idx."""
    # A line with a "record" key is no usage event (a call attempt, say): it is not worth parsing here.
    relation, paths = _json_relation(FIELDS, where="""strpos(line, '"record":') = 0""")
    params = {**_params(source_label, timezone), "paths": paths}
    test = f"known_keys AND {_clean_test(FIELDS, True, token_totals=True)}"
    db.register("chunk_lines", lines.select(["idx", "off", "line"]))
    try:
        return _stage(db, CLEAN_ROWS, _typed_columns(), relation, test, _read_once(FIELDS, stored_provider=True),
                      params)
    finally:
        db.unregister("chunk_lines")


def stage_attempts(db: duckdb.DuckDBPyConnection, lines: pa.Table, idx: np.ndarray, *, source_label: str,
                   timezone: str) -> np.ndarray:
    """Type the clean call attempts among the lines at `idx` (those not staged as usage events) into the
    temp table clean_attempts; returns their idx."""
    relation, paths = _json_relation(ATTEMPT_FIELDS, lead=("record",), where="strpos(line, '\"record\"') > 0")
    params = {**_params(source_label, timezone), "paths": paths}
    test = f"""known_keys AND j_record = '"attempt"' AND {_clean_test(ATTEMPT_FIELDS, True)}"""
    # Only the lines left over are scanned (in a plain JSON Lines file, the few bad ones), in record
    # batches so that DuckDB reads them on every core.
    # A filter keeps them chunk by chunk; `take` would first join the chunk's 128 MB of lines into one buffer.
    left = lines.select(["idx", "off", "line"]).filter(pa.array(_chosen(lines.num_rows, idx)))
    db.register("chunk_lines", pa.Table.from_batches(left.to_batches(max_chunksize=SCAN_BATCH_ROWS)))
    try:
        return _stage(db, CLEAN_ATTEMPTS, _attempt_columns(), relation, test, _read_once(ATTEMPT_FIELDS), params)
    finally:
        db.unregister("chunk_lines")


def stage_csv(db: duckdb.DuckDBPyConnection, cells: pa.Table, *, source_label: str,
              timezone: str) -> np.ndarray:
    """Type the clean rows of CSV cells (text columns named like the fields) into clean_rows; returns their idx."""
    db.register("chunk_cells", cells)
    present = set(cells.column_names)
    values = ", ".join(
        (f"nullif(\"{f.name}\", '') AS v_{f.name}" if f.name in present else f"NULL::VARCHAR AS v_{f.name}")
        for f in FIELDS
    )
    relation = f"SELECT idx, off, {values} FROM chunk_cells"
    test = _clean_test(FIELDS, False, token_totals=True)  # a CSV header's columns are known keys, each once
    try:
        return _stage(db, CLEAN_ROWS, _typed_columns(), relation, test, _read_once(FIELDS, stored_provider=True),
                      _params(source_label, timezone))
    finally:
        db.unregister("chunk_cells")


def _params(source_label: str, timezone: str) -> dict:
    now = dt.datetime.now(dt.timezone.utc)
    return {"source_label": source_label, "tz": timezone, "lo": EARLIEST_TS, "hi": now + MAX_CLOCK_SKEW}
