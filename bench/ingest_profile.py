"""Where an ingest's time goes: wall and CPU seconds per stage of one file's ingest, against raw DuckDB.

Wraps the stages of `llmcost.ingestion.run.ingest` (reading lines, the bulk checks, the call attempts'
checks, the exact path, ids from content, pricing, staging the batch, the store's insert, the commit,
closing the store) with timers, ingests one generated file into a fresh store, and prints a table of
each stage's wall and CPU time (CPU of every thread of the process) beside raw DuckDB's read of the
same file, each in a fresh process.

    python bench/ingest_profile.py [--events 1000000] [--format jsonl] [--file PATH]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import ingest as ingest_bench

TOTALS: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0, 0])


@contextlib.contextmanager
def timed(stage: str):
    wall, cpu = time.perf_counter(), time.process_time()
    try:
        yield
    finally:
        total = TOTALS[stage]
        total[0] += time.perf_counter() - wall
        total[1] += time.process_time() - cpu
        total[2] += 1


def wrap(module, name: str, stage: str) -> None:
    original = getattr(module, name)

    def timed_call(*args, **kwargs):
        with timed(stage):
            return original(*args, **kwargs)

    setattr(module, name, timed_call)


def wrap_method(cls, name: str, stage: str) -> None:
    original = getattr(cls, name)

    def timed_call(self, *args, **kwargs):
        with timed(stage):
            return original(self, *args, **kwargs)

    setattr(cls, name, timed_call)


def child_profile(file: Path) -> dict:
    from llmcost.config import load_settings
    from llmcost.ingestion import bulk, parse, run, sources
    from llmcost.ingestion.content_ids import LineIds
    from llmcost.ingestion.exact import RecordParser
    from llmcost.store import connection as store

    wrap(sources, "whole_lines", "read lines from the file")
    wrap(bulk, "lines_table", "split lines (numpy/Arrow)")
    wrap(bulk, "stage_json", "bulk checks + typing (stage_json)")
    wrap(bulk, "stage_csv", "bulk checks + typing (stage_csv)")
    wrap(bulk, "stage_attempts", "call attempts' checks (stage_attempts)")
    wrap(parse.csv_rows, "cells", "CSV cells (csv.cells)")
    wrap(parse, "_whole_row_groups", "cut at whole row groups")
    wrap(parse, "_give_generated_ids", "content ids for rows without event_id")
    wrap_method(RecordParser, "handle", "exact path (pydantic)")
    wrap(parse, "_price_clean_rows", "pricing (bulk rows)")
    wrap(parse, "_priced_slow_rows", "pricing (exact rows)")
    wrap(parse, "_load_batch_events", "stage batch_events")
    wrap(parse, "_load_batch_attempts", "stage batch_attempts")
    wrap(run, "_insert_new", "insert new rows (dedup by id)")
    wrap(run, "_conflicts", "conflicting ids")
    wrap_method(LineIds, "save", "save line counts")
    wrap(run, "_touch_source", "save the file's offset")
    wrap(run, "drop_batch_tables", "drop batch tables")
    wrap(run, "_resume_point", "resume point")

    original_transaction = run.transaction

    @contextlib.contextmanager
    def timed_transaction(db):
        with original_transaction(db):
            yield db
            TOTALS["_commit_start"] = [time.perf_counter(), time.process_time(), 0]
        started = TOTALS.pop("_commit_start")
        total = TOTALS["commit"]
        total[0] += time.perf_counter() - started[0]
        total[1] += time.process_time() - started[1]
        total[2] += 1

    run.transaction = timed_transaction
    original_writing = store.writing

    @contextlib.contextmanager
    def timed_writing(path, timeout=store.DEFAULT_LOCK_TIMEOUT):
        with timed("open the store"):
            manager = original_writing(path, timeout)
            db = manager.__enter__()
        try:
            yield db
        finally:
            with timed("close the store (checkpoint)"):
                manager.__exit__(None, None, None)

    run.store.writing = timed_writing

    settings = load_settings()
    settings.ensure_dirs()
    wall, cpu = time.perf_counter(), time.process_time()
    result = run.ingest(settings, [file])
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    stages = {name: {"wall": w, "cpu": c, "calls": n} for name, (w, c, n) in TOTALS.items()}
    return {"wall": wall, "cpu": cpu, "stored": result.stored, "failed": result.failed, "stages": stages}


def child_raw(file: Path, fmt: str, db_path: Path) -> dict:
    wall, cpu = time.perf_counter(), time.process_time()
    outcome = ingest_bench.child_raw(file, fmt, db_path)
    return {"wall": outcome["seconds"], "cpu": time.process_time() - cpu, "rows": outcome["rows_in_store"],
            "_": wall}


def run_child(args: list[str], env: dict[str, str]) -> dict:
    done = subprocess.run([sys.executable, __file__, "--child", *args], env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"profile step {' '.join(args)} failed (exit {done.returncode}):\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--format", default="jsonl", choices=ingest_bench.FORMATS)
    parser.add_argument("--file", type=Path, help="an existing file of that format (else one is generated)")
    parser.add_argument("--repeat", type=int, default=1, help="alternate raw and ingest N times; keep the fastest")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="llmcost-bench-profile-") as tmp:
        workdir = Path(tmp)
        file = args.file
        if file is None:
            file = workdir / f"events.{ingest_bench.SUFFIXES[args.format]}"
            ingest_bench.WRITERS[args.format](ingest_bench.generate_events(args.events), file)
        raws, ours = [], []
        for _ in range(args.repeat):
            home, raw_db = workdir / "home", workdir / "raw.duckdb"
            shutil.rmtree(home, ignore_errors=True)
            raw_db.unlink(missing_ok=True)
            raws.append(run_child(["raw", str(file), args.format, str(raw_db)], ingest_bench.child_env(home)))
            ours.append(run_child(["ours", str(file)], ingest_bench.child_env(home)))
        raw, profile = min(raws, key=lambda r: r["wall"]), min(ours, key=lambda r: r["wall"])
    print(f"{args.format}, {file.name}: stored {profile['stored']:,}, failed {profile['failed']:,}")
    print(f"{'stage':<42} {'wall s':>8} {'cpu s':>8} {'calls':>6} {'x raw':>6}")
    for name, stage in sorted(profile["stages"].items(), key=lambda item: -item[1]["wall"]):
        print(f"{name:<42} {stage['wall']:>8.2f} {stage['cpu']:>8.2f} {stage['calls']:>6} "
              f"{stage['wall'] / raw['wall']:>6.2f}")
    print(f"{'ingest, all (nested stages overlap)':<42} {profile['wall']:>8.2f} {profile['cpu']:>8.2f} {'':>6} "
          f"{profile['wall'] / raw['wall']:>6.2f}")
    print(f"{'raw DuckDB ' + ingest_bench.RAW_READERS[args.format]:<42} {raw['wall']:>8.2f} {raw['cpu']:>8.2f}")


def child_main(argv: list[str]) -> None:
    import logging

    logging.disable(logging.WARNING)
    kind, file, *rest = argv
    outcome = child_profile(Path(file)) if kind == "ours" else child_raw(Path(file), rest[0], Path(rest[1]))
    print(json.dumps(outcome))


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    if sys.argv[1:2] == ["--child"]:
        child_main(sys.argv[2:])
    else:
        main()
