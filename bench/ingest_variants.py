"""Issue 17's untried ingest ideas, measured in one run against raw DuckDB on the same 1M-event files.

Each variant runs in a fresh process, timed from connect to close (wall and CPU of every thread), fastest of
--repeat, and is printed as a ratio to raw DuckDB's read of the same file in the same run:
- raw: `CREATE TABLE t AS SELECT * FROM read_json(file)` / `read_csv(file)` into a fresh file (bench/ingest.py's baseline).
- ingest: `llmcost.ingestion.run.ingest` into a fresh store, as today (everything exactness needs).
- stage: today's bulk checks and typing alone (`bulk.stage_json` / `csv.cells` + `bulk.stage_csv`), 128 MB
  (CSV 64 MB) chunks, into a temp table of an in-memory database; no pricing, no insert.
- stage, no key count: the same without `json_keys` (NOT exact: an unknown or repeated key would pass) - what
  counting a line's keys costs.
- stage, json_transform: one `json_transform` to a struct of JSON texts in place of `json_extract`'s list (key
  count kept) - idea (a); a null comes out like a missing key, so a line with a null counts fewer keys found and
  goes to the exact path: the row count shows how many lines that sends there.
- typed reader: `read_json` / `read_csv` with an explicit typed `columns=` schema into a temp table - what a
  schema'd reader costs with none of the checks (an unknown key ignored, "5" read as 5): a bound, not a variant.
- pyarrow strict reader (the issue's "optimistic exactness"): pyarrow's JSON reader with an explicit schema of
  the record's fields (a string for a name, int64 for a count, metadata's keys inferred), which refuses a chunk
  for one value of another JSON type, a key given twice or a torn line, over the same 128 MB chunks; alone,
  without the checks on values (ranges, times, names) that would still follow in SQL. And the same reader called
  on pieces of 64 lines, as bisecting a chunk down to its bad lines would call it: what each call costs.
- insert (b), the same 1M typed, priced rows (built untimed; ids as text, as the ingest stages them) written
  into usage_events in batches of two row groups, each in a transaction, then close. Each batch is a join of the
  rows with their prices, as the ingest's is. As today (`run._insert_new`: anti-join on the id's hash, first of
  each id, content hash, in file order, which DuckDB writes from one thread), and with preserve_insertion_order
  off (written from every core); a plain INSERT with the same key columns (no de-duplication), into
  usage_events and into a copy without NOT NULL / DEFAULT; a plain INSERT without the key columns; some with
  all rows in one transaction; with checkpoint_threshold raised; CREATE TABLE AS into a plain table, with the
  ids as text and as UUID. Also as today and plain, into a store already holding --grown million events.
- pipeline (c): stage chunk N+1 while chunk N's typed rows are written to a store file on another thread,
  against the same two steps one after the other.

    python bench/ingest_variants.py [--events 1000000] [--formats jsonl,csv] [--repeat 3] [--grown 4]
                                    [--data DIR] [--out FILE.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from importlib.metadata import version
from pathlib import Path

import ingest as ingest_bench

CHUNK_BYTES = {"jsonl": 128 * 1024 * 1024, "csv": 64 * 1024 * 1024}
BATCH_ROWS = 2 * 122_880
TYPED_JSON = {
    "event_id": "VARCHAR", "ts": "TIMESTAMPTZ", "user_id": "VARCHAR", "tenant_id": "VARCHAR", "use_case": "VARCHAR",
    "account_type": "VARCHAR", "provider": "VARCHAR", "model": "VARCHAR", "input_tokens": "BIGINT",
    "output_tokens": "BIGINT", "cache_read_tokens": "BIGINT", "reasoning_tokens": "BIGINT",
    "estimated_tokens": "BIGINT", "usage_estimated": "BOOLEAN", "latency_ms": "DOUBLE", "status": "VARCHAR",
    "error": "VARCHAR", "attempt_id": "VARCHAR", "source": "VARCHAR", "metadata": "JSON",
}
VARIANTS = {
    "jsonl": ("raw", "ingest", "stage", "stage_no_key_count", "stage_json_transform", "typed_reader",
              "pyarrow_strict", "pyarrow_strict_pieces", "insert_today", "insert_plain", "insert_plain_no_keys",
              "insert_today_one_tx",
              "insert_plain_no_keys_one_tx", "insert_today_any_order", "insert_today_any_order_one_tx",
              "insert_plain_no_constraints", "insert_today_threshold", "ctas", "ctas_uuid_ids", "insert_today_grown",
              "insert_plain_grown", "sequential", "pipelined"),
    "csv": ("raw", "ingest", "stage", "cells_only", "typed_reader"),
}
LABELS = {
    "raw": "raw DuckDB (baseline)",
    "ingest": "ingest as today (exact, deduplicated, priced)",
    "stage": "bulk checks + typing as today",
    "stage_no_key_count": "  same, no key count (NOT exact)",
    "stage_json_transform": "  same, json_transform for the values",
    "cells_only": "  CSV cells as text only (no checks)",
    "typed_reader": "typed reader with columns= (no checks)",
    "pyarrow_strict": "pyarrow strict reader, whole chunks (no value checks)",
    "pyarrow_strict_pieces": "  same, pieces of 64 lines (as bisection calls it)",
    "insert_today": "insert as today (dedup by id hash)",
    "insert_plain": "plain INSERT, same key columns",
    "insert_plain_no_keys": "plain INSERT, no key columns",
    "insert_today_one_tx": "insert as today, all 1M in one transaction",
    "insert_plain_no_keys_one_tx": "plain INSERT, no key columns, one transaction",
    "insert_today_any_order": "insert as today, rows in any order (every core)",
    "insert_today_any_order_one_tx": "  same, all 1M in one transaction",
    "insert_plain_no_constraints": "plain INSERT, no NOT NULL / DEFAULT",
    "insert_today_threshold": "insert as today, checkpoint_threshold 4GB",
    "ctas": "CREATE TABLE AS (plain table)",
    "ctas_uuid_ids": "  same, ids as UUID (as read_json types them)",
    "insert_today_grown": "insert as today, store holds 4M",
    "insert_plain_grown": "plain INSERT, store holds 4M",
    "sequential": "stage then write, one after the other",
    "pipelined": "stage N+1 while N is written",
}


def _chunks(file: Path, fmt: str):
    """(chunk of whole lines, its byte offset), as the ingest cuts a file."""
    with file.open("rb") as f:
        header = f.readline() if fmt == "csv" else b""
        offset = len(header)
        while chunk := f.read(CHUNK_BYTES[fmt]):
            chunk += f.readline()
            yield header, chunk, offset
            offset += len(chunk)


def _stage_json_chunks(db, file: Path, transform: bool = False, key_count: bool = True) -> int:
    from llmcost.ingestion import bulk

    original = bulk._json_relation

    def relation(fields, lead=(), where="true"):
        sql, paths = original(fields, lead, where)
        if not key_count:
            sql = sql.replace("TRY(len(json_keys(line)))", "NULL::BIGINT").replace(
                "coalesce(key_count = ", "true OR coalesce(key_count = ")
        if transform:
            names = [*lead, *(f.name for f in fields)]
            struct = json.dumps({name: "JSON" for name in names}).replace("'", "''")
            sql = sql.replace("TRY(json_extract(line, $paths))", f"TRY(json_transform(line, '{struct}'))")
            # A null comes out as a missing key does: only where the keys found fall short of the line's
            # keys is the line read again, as today, to count its keys that hold null.
            sql = sql.replace("SELECT idx, off, TRY(len(json_keys", "SELECT idx, off, line, TRY(len(json_keys")
            sql = sql.replace("SELECT idx, off, key_count, ", "SELECT idx, off, key_count, line, ").replace(
                "coalesce(key_count = ", "coalesce(key_count = len(list_filter(TRY(json_extract(line, $paths)), "
                "lambda x: x IS NOT NULL)) OR key_count = ")
            for n, name in enumerate(names, start=1):
                sql = sql.replace(f"f[{n}] AS j_{name},", f"f.{name} AS j_{name},").replace(
                    f"f[{n}] AS j_{name}\n", f"f.{name} AS j_{name}\n")
                sql = sql.replace(f"f[{n}] AS j_{name} ", f"f.{name} AS j_{name} ")
        return sql, paths

    bulk._json_relation = relation
    rows = 0
    for _, chunk, offset in _chunks(file, "jsonl"):
        lines = bulk.lines_table(chunk, offset)
        rows += len(bulk.stage_json(db, lines, source_label="bench", timezone="UTC"))
    bulk._json_relation = original
    return rows


def _stage_csv_chunks(db, file: Path, cells_only: bool = False) -> int:
    from llmcost.ingestion import bulk
    from llmcost.ingestion import csv as csv_rows

    rows = 0
    for header, chunk, offset in _chunks(file, "csv"):
        names = header.decode().strip().split(",")
        lines = bulk.lines_table(chunk, offset)
        cells, _ = csv_rows.cells(db, chunk, lines, names, header)
        rows += len(bulk.stage_csv(db, cells, source_label="bench", timezone="UTC")) if not cells_only \
            else cells.num_rows
    return rows


def _typed_reader(db, file: Path, fmt: str) -> int:
    if fmt == "jsonl":
        columns = "{" + ", ".join(f"'{k}': '{v}'" for k, v in TYPED_JSON.items()) + "}"
        db.execute(f"CREATE TEMP TABLE t AS SELECT * FROM read_json(?, format = 'newline_delimited', "
                   f"columns = {columns})", [str(file)])
    else:
        types = {**TYPED_JSON, "metadata": "VARCHAR"}
        header = file.open().readline().strip().split(",")
        columns = "{" + ", ".join(f"'{k}': '{types[k]}'" for k in header) + "}"
        db.execute(f"CREATE TEMP TABLE t AS SELECT * FROM read_csv(?, header = true, columns = {columns})",
                   [str(file)])
    return db.execute("SELECT count(*) FROM t").fetchall()[0][0]


PIECE_LINES = 64


def _pyarrow_strict(file: Path, pieces: bool) -> int:
    """Rows pyarrow's JSON reader types from the file's chunks (or pieces of them) against the record schema."""
    import pyarrow as pa
    import pyarrow.json as pa_json

    from llmcost.ingestion import bulk

    types = {"int": pa.int64(), "float": pa.float64(), "bool": pa.bool_(), "object": pa.struct([])}
    schema = pa.schema([("record", pa.string()), *((f.name, types.get(f.kind, pa.string())) for f in bulk.FIELDS)])
    parse = pa_json.ParseOptions(explicit_schema=schema, unexpected_field_behavior="infer")
    whole = pa_json.ReadOptions(block_size=4 * 1024 * 1024)
    rows = 0
    for _, chunk, _ in _chunks(file, "jsonl"):
        if not pieces:
            rows += pa_json.read_json(pa.BufferReader(chunk), read_options=whole, parse_options=parse).num_rows
            continue
        lines = chunk.splitlines(keepends=True)
        one_block = pa_json.ReadOptions(use_threads=False, block_size=max(len(line) for line in lines) * PIECE_LINES)
        for at in range(0, len(lines), PIECE_LINES):
            piece = b"".join(lines[at:at + PIECE_LINES])
            rows += pa_json.read_json(pa.BufferReader(piece), read_options=one_block, parse_options=parse).num_rows
    return rows


def _typed_batch(db, file: Path) -> None:
    """The file's events as parse_lines stages them (off, the store's columns, cost in picodollars), untimed.

    read_json reads the ids as UUID, the ingest stages them as text: they are cast to VARCHAR, as stored, and
    also kept as UUID (event_uuid, attempt_uuid) for the variant that shows what 16-byte ids would cost.
    """
    from llmcost.ingestion.parse import EVENT_COLUMNS

    db.execute("""
        CREATE TEMP TABLE typed AS
        SELECT row_number() OVER () - 1 AS n, row_number() OVER () * 400 AS off, event_id::VARCHAR AS event_id,
               event_id AS event_uuid, attempt_id AS attempt_uuid,
               (ts AT TIME ZONE 'UTC') AS ts, ts::DATE AS day, user_id, tenant_id, use_case, account_type,
               provider, model, NULL::VARCHAR AS response_model, NULL::VARCHAR AS service_tier, input_tokens,
               output_tokens, cache_read_tokens, 0::BIGINT AS cache_write_tokens, 0::BIGINT AS cache_write_1h_tokens,
               reasoning_tokens, input_tokens + output_tokens AS total_tokens, estimated_tokens, usage_estimated,
               latency_ms, status, error, input_tokens * 2500000 + output_tokens * 10000000 AS cost_pico,
               'price-table' AS price_source, attempt_id::VARCHAR AS attempt_id, source,
               nullif(metadata::VARCHAR, '{}') AS metadata
        FROM read_json(?)
    """, [str(file)])
    missing = set(EVENT_COLUMNS) - {r[0] for r in db.execute("DESCRIBE typed").fetchall()}
    if missing:
        raise RuntimeError(f"the typed batch lacks {missing}")


def _insert(db, how: str) -> int:
    import datetime as dt

    from llmcost.ingestion import run
    from llmcost.store import transaction

    total = db.execute("SELECT count(*) FROM typed").fetchall()[0][0]
    now = dt.datetime.now()
    if how == "ctas":
        db.execute("CREATE TABLE plain_events AS SELECT * EXCLUDE (n, event_uuid, attempt_uuid) FROM typed")
        return total
    if how == "ctas_uuid_ids":
        db.execute("CREATE TABLE plain_events AS SELECT * EXCLUDE (n, event_id, attempt_id) FROM typed")
        return total
    if how == "plain_no_constraints":  # the same columns, without NOT NULL or DEFAULT
        db.execute("CREATE TABLE usage_events_bare AS SELECT * FROM usage_events LIMIT 0")
    if how == "today_threshold":  # no automatic checkpoint while the file is read
        db.execute("SET checkpoint_threshold = '4GB'")
    rows = total if how.endswith("_one_tx") else BATCH_ROWS
    how = how.removesuffix("_one_tx").removesuffix("_threshold")
    for start in range(0, total, rows):
        # Its rows with their prices, as the ingest's batch is (a join, whose output DuckDB keeps in order
        # only by writing from one thread).
        part = f"n >= {start} AND n < {start + rows}"
        db.execute(f"CREATE OR REPLACE TEMP VIEW batch_slice AS SELECT t.* EXCLUDE (cost_pico), p.cost_pico "
                   f"FROM (SELECT * FROM typed WHERE {part}) t "
                   f"JOIN (SELECT n, cost_pico FROM typed WHERE {part}) p USING (n)")
        with transaction(db):
            if how == "today":
                run._insert_new(db, "usage_events", "batch_slice", run._EVENT_VALUES, now, run._EVENT_TARGETS)
            elif how == "today_any_order":  # DuckDB may then write from every core
                db.execute("SET preserve_insertion_order = false")
                try:
                    run._insert_new(db, "usage_events", "batch_slice", run._EVENT_VALUES, now, run._EVENT_TARGETS)
                finally:
                    db.execute("RESET preserve_insertion_order")
            elif how.startswith("plain") and how != "plain_no_keys":
                target = "usage_events_bare" if how == "plain_no_constraints" else "usage_events"
                db.execute(f"INSERT INTO {target} ({run._EVENT_TARGETS}, ingested_at, event_key, content_key) "
                           f"SELECT {run._EVENT_VALUES}, ?, hash(event_id), {run._BATCH_CONTENT_HASH} "
                           "FROM batch_slice", [now])
            else:
                db.execute(f"INSERT INTO usage_events ({run._EVENT_TARGETS}, ingested_at) "
                           f"SELECT {run._EVENT_VALUES}, ? FROM batch_slice", [now])
    return total


def _stage_and_write(file: Path, db_path: Path, pipelined: bool) -> int:
    """Stage each chunk in memory and write its typed rows to a store file, with or without overlap."""
    import duckdb

    from llmcost.ingestion import bulk

    staging, store_db = duckdb.connect(), duckdb.connect(str(db_path))
    written = [0]

    def write(rows) -> None:
        store_db.register("part", rows)
        if written[0] == 0:
            store_db.execute("CREATE TABLE events AS SELECT * FROM part")
        else:
            store_db.execute("INSERT INTO events SELECT * FROM part")
        store_db.unregister("part")
        written[0] += rows.num_rows

    writer = None
    for _, chunk, offset in _chunks(file, "jsonl"):
        bulk.stage_json(staging, bulk.lines_table(chunk, offset), source_label="bench", timezone="UTC")
        rows = staging.sql(f"SELECT * FROM {bulk.CLEAN_ROWS}").to_arrow_table()
        if writer is not None:
            writer.join()
        if pipelined:
            writer = threading.Thread(target=write, args=(rows,))
            writer.start()
        else:
            write(rows)
    if writer is not None:
        writer.join()
    store_db.close()
    staging.close()
    return written[0]


def child(variant: str, file: Path, fmt: str, workdir: Path, grown: int) -> dict:
    import duckdb

    from llmcost.store import connection as store

    db_path = workdir / "variant.duckdb"
    for leftover in workdir.glob("variant.duckdb*"):
        leftover.unlink()
    if variant == "ingest":
        from llmcost.config import load_settings
        from llmcost.ingestion.run import ingest

        settings = load_settings()
        settings.ensure_dirs()
        wall, cpu = time.perf_counter(), time.process_time()
        result = ingest(settings, [file])
        return {"wall": time.perf_counter() - wall, "cpu": time.process_time() - cpu, "rows": result.stored}
    prepared = None
    if variant.startswith("insert") or variant.startswith("ctas"):
        store.connect(db_path).close()  # migrated, untimed
        if variant.endswith("grown"):
            ingest_bench.grow_store(db_path, grown * 1_000_000)
        prepared = store.connect(db_path)
        _typed_batch(prepared, file)
    wall, cpu = time.perf_counter(), time.process_time()
    if variant == "raw":
        db = duckdb.connect(str(db_path))
        db.execute(f"CREATE TABLE t AS SELECT * FROM {ingest_bench.RAW_READERS[fmt]}(?)", [str(file)])
        rows = db.execute("SELECT count(*) FROM t").fetchall()[0][0]
        db.close()
    elif variant in ("sequential", "pipelined"):
        rows = _stage_and_write(file, db_path, variant == "pipelined")
    elif prepared is not None:
        how = variant.removeprefix("insert_").removesuffix("_grown")
        rows = _insert(prepared, how)
        prepared.close()
    else:
        db = duckdb.connect()
        if variant == "typed_reader":
            rows = _typed_reader(db, file, fmt)
        elif variant.startswith("pyarrow_strict"):
            rows = _pyarrow_strict(file, pieces=variant.endswith("pieces"))
        elif fmt == "csv":
            rows = _stage_csv_chunks(db, file, cells_only=variant == "cells_only")
        else:
            rows = _stage_json_chunks(db, file, transform=variant == "stage_json_transform",
                                      key_count=variant != "stage_no_key_count")
        db.close()
    return {"wall": time.perf_counter() - wall, "cpu": time.process_time() - cpu, "rows": rows}


def _floor(fmt: str, fastest: dict[str, dict], results: list[dict]) -> str:
    """The cheapest exact parts measured, summed, as a ratio to raw DuckDB: a floor under any ingest built from them."""
    stage = [v for v in ("stage", "stage_json_transform") if v in fastest]
    inserts = [r for r in results if r["variant"] == "insert_today" and r["format"] == "jsonl"]
    if not stage or not inserts:
        return ""
    # Chosen by CPU, which another process on the machine sways less than wall time.
    best = min(stage, key=lambda v: fastest[v]["cpu"])
    raw, check, write = fastest["raw"]["wall"], fastest[best]["wall"], inserts[0]["wall"]
    cpu = (fastest[best]["cpu"] + inserts[0]["cpu"]) / fastest["raw"]["cpu"]
    return (f"exact checks + typing ({LABELS[best].strip()}) {check:.2f} s + insert as today {write:.2f} s = "
            f"{(check + write) / raw:.2f}x raw DuckDB ({raw:.2f} s; CPU {cpu:.2f}x), before pricing, ids and offsets")


def run_child(args: list[str], env: dict[str, str], cwd: Path) -> dict:
    done = subprocess.run([sys.executable, __file__, "--child", *args], env=env, cwd=cwd, capture_output=True,
                          text=True)
    if done.returncode != 0:
        raise RuntimeError(f"variant {' '.join(args)} failed (exit {done.returncode}):\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--formats", default="jsonl,csv")
    parser.add_argument("--variants", default="", help="comma-separated subset (raw is always run)")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--grown", type=int, default=4, help="millions of events already stored")
    parser.add_argument("--data", type=Path, help="a folder for the generated files, kept between runs")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "ingest_variants.json")
    args = parser.parse_args()
    wanted = {v for v in args.variants.split(",") if v}
    results, floors = [], {}
    load = [os.getloadavg()[0]]  # other processes on the machine sway wall times; CPU ratios less so
    with tempfile.TemporaryDirectory(prefix="llmcost-bench-variants-") as tmp:
        workdir = Path(tmp)
        data = args.data or workdir
        data.mkdir(parents=True, exist_ok=True)
        frame = None
        for fmt in (f for f in args.formats.split(",") if f):
            file = data / f"events-{args.events}.{ingest_bench.SUFFIXES[fmt]}"
            if not file.exists():
                frame = ingest_bench.generate_events(args.events) if frame is None else frame
                ingest_bench.WRITERS[fmt](frame, file)
            variants = [v for v in VARIANTS[fmt] if v == "raw" or not wanted or v in wanted]
            fastest: dict[str, dict] = {}
            for _ in range(args.repeat):
                for variant in variants:
                    home = workdir / "home"
                    subprocess.run(["rm", "-rf", str(home)], check=True)
                    outcome = run_child([variant, str(file), fmt, str(workdir), str(args.grown)],
                                        ingest_bench.child_env(home), workdir)
                    if variant not in fastest or outcome["wall"] < fastest[variant]["wall"]:
                        fastest[variant] = outcome
            raw = fastest["raw"]
            print(f"\n{fmt}, {args.events:,} events, fastest of {args.repeat}:")
            print(f"{'variant':<48} {'wall s':>7} {'x raw':>6} {'cpu s':>7} {'x raw':>6} {'rows':>10}")
            for variant in variants:
                o = fastest[variant]
                cpu = f"{o['cpu']:>7.2f} {o['cpu'] / raw['cpu']:>6.2f}" if o["cpu"] is not None else f"{'':>7} {'':>6}"
                print(f"{LABELS[variant]:<48} {o['wall']:>7.2f} {o['wall'] / raw['wall']:>6.2f} {cpu} {o['rows']:>10,}")
                results.append({"format": fmt, "variant": variant, "label": LABELS[variant], **o,
                                "wall_ratio": o["wall"] / raw["wall"],
                                "cpu_ratio": o["cpu"] / raw["cpu"] if o["cpu"] is not None else None})
            floors[fmt] = _floor(fmt, fastest, results)
            if floors[fmt]:
                print(f"{fmt}: {floors[fmt]}")
    load.append(os.getloadavg()[0])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({
        "benchmark": "ingest_variants", "events": args.events, "repeat": args.repeat, "grown_millions": args.grown,
        "python": sys.version.split()[0], "machine": platform.machine(), "cpus": os.cpu_count(),
        "duckdb": version("duckdb"), "rows": results, "floors": floors,
        "load_average": load,
    }, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    if sys.argv[1:2] == ["--child"]:
        import logging

        logging.disable(logging.WARNING)
        variant, file, fmt, workdir, grown = sys.argv[2:7]
        print(json.dumps(child(variant, Path(file), fmt, Path(workdir), int(grown))))
    else:
        main()
