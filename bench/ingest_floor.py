"""The floor under ingest: what reading every record exactly and writing the store cost, before any check.

The ingest target is "within 2x of raw DuckDB". This script measures, on the same files and in the
same run, the two steps no exact ingest can skip, against raw DuckDB (`read_json` / `read_csv` into a
plain table, connect to close, as in bench/ingest.py):
- read exactly: each JSON line's keys counted and the JSON text of every known field taken out, as
  llmcost.ingestion.bulk reads them (`json_keys`, `json_extract`: a line with an unknown key, a key given twice
  or a number where a name belongs must not pass for clean), in batches of 128 MB, into a temp table;
  for CSV, every cell read as text, as llmcost.ingestion.csv does. No check, no pricing.
- write: the raw table's rows written into usage_events of a fresh store (typed, with the columns the
  store adds), and the store closed. No de-duplication.
Each step is timed in a fresh process, fastest of --repeat runs. "floor" is their sum over raw DuckDB:
what is left of 2x after it is all the room there is for validating, pricing and de-duplicating.

    python bench/ingest_floor.py [--sizes 1000000] [--formats jsonl,csv] [--repeat 3] [--out FILE.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from importlib.metadata import version
from pathlib import Path

import ingest as ingest_bench
from memory import peak_rss_mb

FORMATS = ("jsonl", "csv")
CHUNK_BYTES = 128 * 1024 * 1024
STORE_COLUMNS = """
    event_id, ts::TIMESTAMP AS ts, ts::DATE AS day, user_id, tenant_id, use_case, account_type, provider, model,
    input_tokens, output_tokens, cache_read_tokens, reasoning_tokens, input_tokens + output_tokens AS total_tokens,
    estimated_tokens, usage_estimated, latency_ms, status, error, 0::DECIMAL(18, 12) AS cost_usd,
    'price-table' AS price_source, attempt_id, source, nullif(metadata::VARCHAR, '{}') AS metadata,
    now()::TIMESTAMP AS ingested_at, hash(event_id) AS event_key
"""


def child_read(file: Path, fmt: str) -> dict:
    """Every record read as exactly as the ingest reads it, chunk by chunk, into a temp table."""
    import duckdb

    from llmcost.ingestion import bulk
    from llmcost.ingestion import csv as csv_rows

    start = time.perf_counter()
    db = duckdb.connect()
    db.execute("SET preserve_insertion_order = false")  # as llmcost.ingestion.bulk stages: the scan runs on every core
    rows = 0
    with file.open("rb") as f:
        header = f.readline() if fmt == "csv" else b""
        while chunk := f.read(CHUNK_BYTES):
            chunk += f.readline()  # to the end of the line
            if fmt == "jsonl":
                lines = bulk.lines_table(chunk, 0)
                relation, paths = bulk._json_relation(bulk.FIELDS)
                db.register("chunk_lines", lines.select(["idx", "off", "line"]))
                db.execute(f"CREATE OR REPLACE TEMP TABLE fields AS {relation}", {"paths": paths})
                db.unregister("chunk_lines")
                rows += db.execute("SELECT count(*) FROM fields").fetchall()[0][0]
            else:
                with tempfile.NamedTemporaryFile(suffix=".csv") as chunk_file:
                    chunk_file.write(header + chunk)
                    chunk_file.flush()
                    names = header.decode().strip().split(",")
                    cells, _ = csv_rows._read_csv_cells(db, chunk_file.name, names, keep_rejects=False)
                rows += cells.num_rows
    db.close()
    return {"seconds": time.perf_counter() - start, "peak_rss_mb": peak_rss_mb(), "rows": rows}


def child_write(file: Path, fmt: str, db_path: Path) -> dict:
    """The store's write alone: rows DuckDB read from the file (untimed) into usage_events, then close."""
    from llmcost.store import connection as store

    db = store.connect(db_path)
    db.execute(f"CREATE TEMP TABLE t AS SELECT * FROM {ingest_bench.RAW_READERS[fmt]}(?)", [str(file)])
    start = time.perf_counter()
    db.execute(f"INSERT INTO usage_events BY NAME SELECT {STORE_COLUMNS} FROM t")
    db.execute("DROP TABLE t")
    db.close()
    return {"seconds": time.perf_counter() - start, "peak_rss_mb": peak_rss_mb()}


def run_child(args: list[str], cwd: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LLMCOST_")}
    env["LLMCOST_HOME"] = str(cwd / "home")
    done = subprocess.run([sys.executable, __file__, "--child", *args], env=env, cwd=cwd, capture_output=True,
                          text=True)
    if done.returncode != 0:
        raise RuntimeError(f"step {' '.join(args)} failed (exit {done.returncode}):\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def measure(fmt: str, file: Path, events: int, workdir: Path, repeat: int) -> dict:
    db_path = workdir / f"floor-{fmt}.duckdb"
    fastest: dict[str, dict] = {}
    for _ in range(repeat):
        for step, args in (("raw", ["raw", str(file), fmt, str(db_path)]), ("read", ["read", str(file), fmt]),
                           ("write", ["write", str(file), fmt, str(db_path)])):
            db_path.unlink(missing_ok=True)
            outcome = run_child(args, workdir)
            if step not in fastest or outcome["seconds"] < fastest[step]["seconds"]:
                fastest[step] = outcome
    db_path.unlink(missing_ok=True)
    raw, read, write = (fastest[step]["seconds"] for step in ("raw", "read", "write"))
    return {"format": fmt, "events": events, "repeat": repeat, "raw_s": raw, "read_exactly_s": read,
            "write_s": write, "read_ratio": read / raw, "write_ratio": write / raw,
            "floor_ratio": (read + write) / raw, "rows_read": fastest["read"]["rows"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000000", help="comma-separated event counts")
    parser.add_argument("--formats", default=",".join(FORMATS), help="jsonl and/or csv")
    parser.add_argument("--repeat", type=int, default=3, help="keep the fastest of N runs of each step")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "ingest_floor.json")
    args = parser.parse_args()
    formats = [f.strip() for f in args.formats.split(",") if f.strip()]
    if set(formats) - set(FORMATS):
        parser.error(f"--formats: use {', '.join(FORMATS)}")
    rows = []
    with tempfile.TemporaryDirectory(prefix="llmcost-bench-floor-") as tmp:
        workdir = Path(tmp)
        for size in (int(s.replace("_", "")) for s in args.sizes.split(",") if s.strip()):
            frame = ingest_bench.generate_events(size)
            for fmt in formats:
                file = workdir / f"events-{size}.{fmt}"
                ingest_bench.WRITERS[fmt](frame, file)
                row = measure(fmt, file, size, workdir, max(1, args.repeat))
                file.unlink()
                if row["rows_read"] != size:
                    sys.exit(f"FAILED: read {row['rows_read']:,} records of {size:,} from the {fmt} file")
                rows.append(row)
                print(f"  {fmt} {size:,}: raw {row['raw_s']:.2f} s, read exactly {row['read_exactly_s']:.2f} s, "
                      f"write {row['write_s']:.2f} s: floor {row['floor_ratio']:.2f}x", flush=True)
    print(f"\n{'format':<6} {'events':>9} {'raw DuckDB':>11} {'read exactly':>13} {'write':>8} {'floor':>7}")
    for r in rows:
        print(f"{r['format']:<6} {r['events']:>9,} {r['raw_s']:>9.2f} s {r['read_exactly_s']:>11.2f} s "
              f"{r['write_s']:>6.2f} s {r['floor_ratio']:>6.2f}x")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({
        "benchmark": "ingest_floor", "python": sys.version.split()[0], "machine": platform.machine(),
        "cpus": os.cpu_count(), "duckdb": version("duckdb"), "rows": rows,
    }, indent=2))
    print(f"wrote {args.out}")


def child_main(argv: list[str]) -> None:
    kind, file, fmt, *rest = argv
    if kind == "raw":  # the ingest benchmark's baseline, as it is
        outcome = ingest_bench.child_raw(Path(file), fmt, Path(rest[0]))
    elif kind == "read":
        outcome = child_read(Path(file), fmt)
    else:
        outcome = child_write(Path(file), fmt, Path(rest[0]))
    print(json.dumps(outcome))


if __name__ == "__main__":
    if sys.argv[1:2] == ["--child"]:
        child_main(sys.argv[2:])
    else:
        main()
