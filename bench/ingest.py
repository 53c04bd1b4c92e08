"""Ingest speed: events per second from files into the store, against raw DuckDB on the same files.

For each size the script generates realistic usage events (providers and models the price table knows
plus a self-hosted one it does not, 500 users in 12 tenants, 30 days of timestamps) and writes them as
JSON Lines, as CSV, and as the tracker's journal (a write-ahead call attempt before each event, and the
event's own cost). For each file it times, each in a fresh process:
- raw DuckDB: connect, `CREATE TABLE t AS SELECT * FROM read_json(file)` / `read_csv(file)` into a fresh file,
  close (the baseline; timed from connect to close, as the ingest is);
- `llmcost.ingestion.run.ingest(settings, [file])` into a fresh store (validates, prices, de-duplicates every record);
- the same ingest again on the unchanged file (should cost next to nothing);
- the largest JSON Lines file again, into a store already holding --grown times as many other events
  (written by SQL, untimed), against the first ingest into an empty store.
It checks that the store holds every generated event exactly once, and reports each process's peak RSS.

    python bench/ingest.py [--sizes 100000,1000000] [--formats jsonl,csv,journal] [--repeat 3] [--grown 4]
                           [--out FILE.json]
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import importlib
import json
import logging
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from importlib.metadata import version
from pathlib import Path

import numpy as np
import pandas as pd
from memory import peak_rss_mb

SEED = 20261129
TENANTS = tuple(f"district-{n:02d}" for n in range(1, 13))
USE_CASES = ("content_analyzer", "auto_populate", "chat_tutor", "scaffolder", "interaction_generator")
ACCOUNT_TYPES = (("student", 0.80), ("lesson_builder", 0.14), ("admin", 0.05), ("super_admin", 0.01))
# (provider, model, share of calls): models genai-prices knows, and one self-hosted model it does not
# (priced at the default rate), so the benchmark exercises both pricing paths.
MODELS = (
    ("openai", "gpt-4o-mini", 0.30),
    ("openai", "gpt-4o", 0.08),
    ("anthropic", "claude-3-5-haiku-latest", 0.12),
    ("anthropic", "claude-sonnet-4-5", 0.06),
    ("x-ai", "grok-2", 0.10),
    ("x-ai", "grok-3-mini", 0.10),
    ("google", "gemini-2.0-flash", 0.20),
    ("self-hosted", "tutor-ft-llama-70b", 0.04),
)
USERS = 500
DAYS = 30
ERROR_SHARE = 0.015
ERRORS = ("APITimeoutError: Request timed out.", "RateLimitError: 429 Too Many Requests")
FORMATS = ("jsonl", "csv", "journal", "jsonl-bad")
# The file with bad lines is read raw skipping what DuckDB cannot read (a torn line, a number for a name).
RAW_READERS = {"jsonl": "read_json", "csv": "read_csv", "journal": "read_json",
               "jsonl-bad": "read_json_auto(?, ignore_errors = true)"}
SUFFIXES = {"jsonl": "jsonl", "csv": "csv", "journal": "journal.jsonl", "jsonl-bad": "bad.jsonl"}
REINGEST_TARGET_S = 0.5
# Within this many times raw DuckDB's time (issue 17): a file with bad lines scattered may take longer.
RATIO_TARGETS = {"jsonl": 2.0, "journal": 2.0, "csv": 1.5, "jsonl-bad": 3.0}
GROWN_TARGET = 1.25  # ours: a store that holds more must not make each new file much slower to ingest


def _uuids(rng: np.random.Generator, count: int) -> list[str]:
    hexed = rng.bytes(16 * count).hex()
    return [
        f"{hexed[i:i + 8]}-{hexed[i + 8:i + 12]}-{hexed[i + 12:i + 16]}-{hexed[i + 16:i + 20]}-{hexed[i + 20:i + 32]}"
        for i in range(0, 32 * count, 32)
    ]


def generate_events(count: int, seed: int = SEED) -> pd.DataFrame:
    """`count` usage events as the tracker writes them, spread over the 30 days before today (UTC)."""
    rng = np.random.default_rng(seed)
    user_ids = np.array([f"user-{n:04d}" for n in range(USERS)])
    user_tenants = rng.choice(np.array(TENANTS), USERS)
    user_accounts = rng.choice(np.array([a for a, _ in ACCOUNT_TYPES]), USERS, p=[p for _, p in ACCOUNT_TYPES])
    users = rng.integers(0, USERS, count)
    model_index = rng.choice(len(MODELS), count, p=[share for *_, share in MODELS])
    providers = np.array([p for p, _, _ in MODELS])[model_index]
    models = np.array([m for _, m, _ in MODELS])[model_index]

    end = np.datetime64(dt.datetime.now(dt.timezone.utc).date().isoformat(), "ms")
    start = end - np.timedelta64(DAYS, "D")
    offsets = np.sort(rng.integers(0, int((end - start) / np.timedelta64(1, "ms")), count))
    timestamps = np.char.add(np.datetime_as_string(start + offsets.astype("timedelta64[ms]"), unit="ms"), "Z")

    input_tokens = rng.lognormal(6.8, 0.9, count).astype(np.int64) + 1
    output_tokens = rng.lognormal(5.6, 0.7, count).astype(np.int64) + 1
    caches = np.isin(providers, ("openai", "anthropic"))
    cache_read = (input_tokens * rng.choice([0.0, 0.0, 0.3, 0.6], count) * caches).astype(np.int64)
    reasoning = np.where(models == "grok-3-mini", (output_tokens * 0.4).astype(np.int64), 0)
    failed = rng.random(count) < ERROR_SHARE
    lessons = rng.integers(1, 400, count)
    with_metadata = rng.random(count) < 0.2

    return pd.DataFrame({
        "event_id": _uuids(rng, count),
        "ts": timestamps,
        "user_id": user_ids[users],
        "tenant_id": user_tenants[users],
        "use_case": rng.choice(np.array(USE_CASES), count),
        "account_type": user_accounts[users],
        "provider": providers,
        "model": models,
        "input_tokens": input_tokens,
        "output_tokens": output_tokens,
        "cache_read_tokens": cache_read,
        "reasoning_tokens": reasoning,
        "estimated_tokens": ((input_tokens + output_tokens) * rng.uniform(0.85, 1.3, count)).astype(np.int64),
        "usage_estimated": failed,
        "latency_ms": np.round(rng.uniform(300, 9000, count), 1),
        "status": np.where(failed, "error", "ok"),
        "error": np.where(failed, rng.choice(np.array(ERRORS), count), None),
        "attempt_id": _uuids(rng, count),
        "source": "bench",
        "metadata": [{"lesson_id": int(n)} if keep else {} for n, keep in zip(lessons, with_metadata)],
    })


WRITE_ROWS = 100_000  # written in slices so the generator's own memory stays small


def write_jsonl(frame: pd.DataFrame, path: Path) -> None:
    with path.open("w", encoding="utf-8") as f:
        for start in range(0, len(frame), WRITE_ROWS):
            lines = frame.iloc[start:start + WRITE_ROWS].to_json(orient="records", lines=True, force_ascii=False)
            f.write(lines if lines.endswith("\n") else lines + "\n")


def write_csv(frame: pd.DataFrame, path: Path) -> None:
    with path.open("w", encoding="utf-8", newline="") as f:
        for start in range(0, len(frame), WRITE_ROWS):
            cells = frame.iloc[start:start + WRITE_ROWS].copy()
            cells["usage_estimated"] = np.where(cells["usage_estimated"], "true", "false")
            cells["metadata"] = [json.dumps(m, separators=(",", ":")) if m else "" for m in cells["metadata"]]
            cells.to_csv(f, index=False, header=start == 0)


ATTEMPT_KEYS = ("attempt_id", "ts", "user_id", "tenant_id", "use_case", "account_type", "provider", "model",
                "estimated_tokens", "source")


def write_journal(frame: pd.DataFrame, path: Path) -> None:
    """The file the tracker writes: per call a write-ahead attempt, then the event with its cost
    (12-decimal text, as the tracker prices it) and price source, absent fields left out."""
    with path.open("w", encoding="utf-8") as f:
        for start in range(0, len(frame), WRITE_ROWS):
            part = frame.iloc[start:start + WRITE_ROWS]
            attempts = part[list(ATTEMPT_KEYS)].assign(record="attempt")[["record", *ATTEMPT_KEYS]]
            pico = part["input_tokens"].to_numpy() * 2_500_000 + part["output_tokens"].to_numpy() * 10_000_000
            events = part.assign(cost_usd=[f"{p // 10**12}.{p % 10**12:012d}" for p in pico.tolist()],
                                 price_source="price-table")
            attempt_lines = attempts.to_json(orient="records", lines=True, force_ascii=False).splitlines()
            event_lines = [line.replace(',"error":null', "") for line in
                           events.to_json(orient="records", lines=True, force_ascii=False).splitlines()]
            f.write("".join(a + "\n" + e + "\n" for a, e in zip(attempt_lines, event_lines)))


BAD_SHARE = 0.01
# Bad lines as they turn up, each refused by the exact path: a number for a name, a fraction for a count, an
# unknown key, a torn line, a negative count, a time in the future.
BAD_LINES = (
    (re.compile(r'"user_id":"user-0*(\d+)"'), r'"user_id":1\1'),  # 1...: a user_id of 0 reads as none
    (re.compile(r'"input_tokens":(\d+)'), r'"input_tokens":\1.5'),
    (re.compile(r'^\{'), '{"surprise":1,'),
    (re.compile(r',"model".*$'), ''),
    (re.compile(r'"input_tokens":(\d+)'), r'"input_tokens":-\1'),
    (re.compile(r'"ts":"[^"]*"'), '"ts":"2099-01-01T00:00:00Z"'),
)


def bad_positions(count: int) -> set[int]:
    return set(np.random.default_rng(SEED + 1).choice(count, int(count * BAD_SHARE), replace=False).tolist())


def write_jsonl_bad(frame: pd.DataFrame, path: Path) -> None:
    """JSON Lines with BAD_SHARE of the lines, scattered, made bad in one of the BAD_LINES ways."""
    bad = bad_positions(len(frame))
    with path.open("w", encoding="utf-8") as f:
        for start in range(0, len(frame), WRITE_ROWS):
            lines = frame.iloc[start:start + WRITE_ROWS].to_json(orient="records", lines=True,
                                                                 force_ascii=False).splitlines()
            for n in sorted(bad.intersection(range(start, start + len(lines)))):
                pattern, replacement = BAD_LINES[n % len(BAD_LINES)]
                lines[n - start] = pattern.sub(replacement, lines[n - start], count=1)
            f.write("".join(line + "\n" for line in lines))


WRITERS = {"jsonl": write_jsonl, "csv": write_csv, "journal": write_journal, "jsonl-bad": write_jsonl_bad}


def child_ingest(file: Path) -> dict:
    """Runs in a fresh process whose LLMCOST_HOME is the store under test."""
    from llmcost.config import load_settings
    from llmcost.ingestion.run import ingest
    from llmcost.store import connection as store

    settings = load_settings()
    settings.ensure_dirs()
    start = time.perf_counter()
    result = ingest(settings, [file])
    seconds = time.perf_counter() - start
    rss = peak_rss_mb()
    with store.reading(settings.db_path) as db:
        stored, distinct = db.execute("SELECT count(*), count(DISTINCT event_id) FROM usage_events").fetchall()[0]
        priced_by = dict(db.execute("SELECT price_source, count(*) FROM usage_events GROUP BY ALL").fetchall())
        attempts = db.execute("SELECT count(DISTINCT attempt_id) FROM call_attempts").fetchall()[0][0]
    return {
        "seconds": seconds, "peak_rss_mb": rss, "read": result.read, "stored": result.stored,
        "duplicates": result.duplicates, "failed": result.failed, "failed_reasons": result.failed_reasons,
        "rows_in_store": stored, "distinct_event_ids": distinct, "priced_by": priced_by, "attempts_in_store": attempts,
    }


def grow_store(db_path: Path, existing: int) -> None:
    """Write `existing` other events into the store by SQL (untimed): a store that is not empty."""
    from llmcost.store import connection as store

    with store.writing(db_path) as db:
        db.execute(
            """
            INSERT INTO usage_events BY NAME
            SELECT *, hash(event_id) AS event_key FROM (
                SELECT uuid()::VARCHAR AS event_id, ts, ts::DATE AS day, 'user-' || (i % 500) AS user_id,
                       'district-01' AS tenant_id, 'chat_tutor' AS use_case, 'openai' AS provider,
                       'gpt-4o-mini' AS model, 1000 AS input_tokens, 100 AS output_tokens, 1100 AS total_tokens,
                       0.00021 AS cost_usd, 'price-table' AS price_source, 'earlier' AS source, ts AS ingested_at
                FROM (SELECT i, TIMESTAMP '2026-01-01' + to_seconds(i % 2592000) AS ts FROM range(?) r(i)))
            """,
            [existing],
        )


def child_grown(file: Path, existing: int) -> dict:
    """Ingest into a store that already holds `existing` other events (written by SQL, untimed)."""
    from llmcost.config import load_settings
    from llmcost.ingestion.run import ingest
    from llmcost.store import connection as store

    settings = load_settings()
    settings.ensure_dirs()
    grow_store(settings.db_path, existing)
    start = time.perf_counter()
    result = ingest(settings, [file])
    seconds = time.perf_counter() - start
    with store.reading(settings.db_path) as db:
        stored = db.execute("SELECT count(*) FROM usage_events WHERE source <> 'earlier'").fetchall()[0][0]
    return {"seconds": seconds, "stored": result.stored, "rows_in_store": stored}


def child_raw(file: Path, fmt: str, db_path: Path) -> dict:
    """The baseline: DuckDB reading the file straight into a plain table, no validation."""
    import duckdb

    # Timed like llmcost's ingest, which opens the store, loads and closes it (its checkpoint included).
    start = time.perf_counter()
    db = duckdb.connect(str(db_path))
    reader = RAW_READERS[fmt] if "(" in RAW_READERS[fmt] else RAW_READERS[fmt] + "(?)"
    db.execute(f"CREATE TABLE t AS SELECT * FROM {reader}", [str(file)])
    db.close()
    seconds = time.perf_counter() - start
    rss = peak_rss_mb()
    db = duckdb.connect(str(db_path), read_only=True)
    rows = db.execute("SELECT count(*) FROM t").fetchall()[0][0]
    db.close()
    return {"seconds": seconds, "peak_rss_mb": rss, "rows_in_store": rows}


def run_child(args: list[str], env: dict[str, str], cwd: Path) -> dict:
    done = subprocess.run([sys.executable, __file__, "--child", *args], env=env, cwd=cwd,
                          capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"benchmark step {' '.join(args)} failed (exit {done.returncode}):\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def child_env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LLMCOST_")}
    env["LLMCOST_HOME"] = str(home)
    return env


def measure(fmt: str, file: Path, generated: int, workdir: Path, repeat: int, grown: int = 0) -> dict:
    """Time the baseline, the first ingest and the re-ingest of one file, each in its own process.

    With repeat > 1 the baseline and the first ingest keep their fastest run (each into a fresh store),
    which steadies the figures on a shared machine.
    """
    home, raw_db = workdir / f"home-{fmt}", workdir / f"raw-{fmt}.duckdb"
    env = child_env(home)
    raws, firsts = [], []
    for _ in range(repeat):
        shutil.rmtree(home, ignore_errors=True)
        raw_db.unlink(missing_ok=True)
        raws.append(run_child(["raw", str(file), fmt, str(raw_db)], env, workdir))
        firsts.append(run_child(["ours", str(file)], env, workdir))
    again = run_child(["ours", str(file)], env, workdir)
    grown_runs = []
    if grown:
        grown_env = child_env(workdir / f"home-{fmt}-grown")
        for _ in range(repeat):
            shutil.rmtree(workdir / f"home-{fmt}-grown", ignore_errors=True)
            grown_runs.append(run_child(["grown", str(file), str(grown)], grown_env, workdir))
        shutil.rmtree(workdir / f"home-{fmt}-grown")
    raw = min(raws, key=lambda r: r["seconds"])
    first = min(firsts, key=lambda r: r["seconds"])
    row = {
        "format": fmt,
        "events": generated,
        "repeat": repeat,
        "file_mb": file.stat().st_size / 2**20,
        "raw_s": raw["seconds"],
        "raw_events_per_s": generated / raw["seconds"],
        "raw_peak_rss_mb": raw["peak_rss_mb"],
        "ingest_s": first["seconds"],
        "ingest_events_per_s": generated / first["seconds"],
        "ingest_peak_rss_mb": first["peak_rss_mb"],
        "ratio": first["seconds"] / raw["seconds"],
        "reingest_s": again["seconds"],
        "reingest_read": again["read"],
        "reingest_stored": again["stored"],
        "reingest_peak_rss_mb": again["peak_rss_mb"],
        "generated": generated,
        "stored": first["stored"],
        "failed": first["failed"],
        "failed_reasons": first["failed_reasons"],
        "rows_in_store": again["rows_in_store"],
        "distinct_event_ids": again["distinct_event_ids"],
        "raw_rows": raw["rows_in_store"],
        "priced_by": again["priced_by"],
        "attempts_in_store": again["attempts_in_store"],
    }
    if grown_runs:
        fastest = min(grown_runs, key=lambda r: r["seconds"])
        row.update(grown_existing=grown, grown_ingest_s=fastest["seconds"],
                   grown_vs_fresh=fastest["seconds"] / first["seconds"])
    bad = len(bad_positions(generated)) if fmt == "jsonl-bad" else 0
    row["bad_lines"] = bad
    good = generated - bad
    row["exactly_once"] = (
        all(f["stored"] == f["rows_in_store"] == f["distinct_event_ids"] == good and f["failed"] == bad
            for f in firsts)
        and row["rows_in_store"] == row["distinct_event_ids"] == good
        and row["reingest_stored"] == 0
        and row["attempts_in_store"] == (generated if fmt == "journal" else 0)
        and all(g["stored"] == g["rows_in_store"] == generated for g in grown_runs)
    )
    shutil.rmtree(home)
    raw_db.unlink()
    file.unlink()
    return row


def code_version() -> dict[str, str]:
    """Which ingestion code produced the figures: the commit and a hash of every llmcost module ingest loads."""
    import llmcost

    importlib.import_module("llmcost.ingestion.run")  # the package exports a function by that name; load the module
    files = sorted({Path(m.__file__) for name, m in sys.modules.items()
                    if name.startswith("llmcost") and getattr(m, "__file__", None)})
    digest = hashlib.sha1(b"".join(path.read_bytes() for path in files))
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=Path(llmcost.__file__).parent,
                            capture_output=True, text=True)
    return {"commit": commit.stdout.strip() or "unknown", "ingest_modules_sha1": digest.hexdigest()[:12]}


def targets(rows: list[dict]) -> list[dict]:
    checks = []
    for r in rows:
        label = f"{r['format']} {r['events']:,}"
        target = RATIO_TARGETS[r["format"]]
        checks.append({"target": f"ingest within {target:g}x of raw DuckDB ({label})",
                       "figure": f"{r['ratio']:.1f}x", "met": r["ratio"] <= target})
        checks.append({"target": f"re-ingest of the unchanged file near zero, < {REINGEST_TARGET_S} s ({label})",
                       "figure": f"{r['reingest_s']:.3f} s", "met": r["reingest_s"] < REINGEST_TARGET_S})
        if "grown_ingest_s" in r:
            checks.append({"target": f"ingest into a store already holding {r['grown_existing']:,} events within "
                                     f"{GROWN_TARGET:g}x of into an empty one ({label})",
                           "figure": f"{r['grown_vs_fresh']:.2f}x", "met": r["grown_vs_fresh"] <= GROWN_TARGET})
        checks.append({"target": f"every event stored exactly once ({label})",
                       "figure": f"{r['rows_in_store']:,} of {r['generated'] - r['bad_lines']:,}"
                                 + (f" ({r['bad_lines']:,} bad lines kept as failed)" if r["bad_lines"] else ""),
                       "met": r["exactly_once"]})
    return checks


def print_table(rows: list[dict]) -> None:
    print(f"{'format':<6} {'events':>9} {'file':>8} {'raw DuckDB':>17} {'llmcost ingest':>17} {'ratio':>6} "
          f"{'re-ingest':>10} {'stored':>9} {'peak RSS':>9}")
    for r in rows:
        print(f"{r['format']:<6} {r['events']:>9,} {r['file_mb']:>5.0f} MB "
              f"{r['raw_events_per_s']:>11,.0f} ev/s {r['ingest_events_per_s']:>11,.0f} ev/s {r['ratio']:>5.1f}x "
              f"{r['reingest_s']:>8.3f} s {r['rows_in_store']:>9,} {r['ingest_peak_rss_mb']:>6.0f} MB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="100000,1000000", help="comma-separated event counts")
    parser.add_argument("--formats", default=",".join(FORMATS), help="any of jsonl, csv, journal (the tracker's)")
    parser.add_argument("--repeat", type=int, default=3,
                        help="keep the fastest of N runs of each timing (the machines are shared and noisy)")
    parser.add_argument("--grown", type=int, default=4,
                        help="also ingest the largest JSON Lines file into a store already holding N times its "
                             "events (0: skip)")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "ingest.json")
    args = parser.parse_args()
    sizes = [int(s.replace("_", "")) for s in args.sizes.split(",") if s.strip()]
    formats = [f.strip() for f in args.formats.split(",") if f.strip()]
    unknown = sorted(set(formats) - set(FORMATS))
    if unknown:
        parser.error(f"--formats: unknown {', '.join(unknown)} (use {', '.join(FORMATS)})")

    code = code_version()
    rows = []
    with tempfile.TemporaryDirectory(prefix="llmcost-bench-ingest-") as tmp:
        workdir = Path(tmp)
        for size in sizes:
            started = time.perf_counter()
            frame = generate_events(size)
            files = {fmt: workdir / f"events-{size}.{SUFFIXES[fmt]}" for fmt in formats}
            for fmt, file in files.items():
                WRITERS[fmt](frame, file)
            del frame
            print(f"generated {size:,} events in {time.perf_counter() - started:.1f} s", flush=True)
            for fmt, file in files.items():
                grown = args.grown * size if fmt == "jsonl" and size == max(sizes) else 0
                row = measure(fmt, file, size, workdir, max(1, args.repeat), grown)
                print(f"  {fmt}: stored {row['rows_in_store']:,} of {row['generated']:,} generated "
                      f"(exactly once: {row['exactly_once']}), ingest {row['ingest_s']:.2f} s, "
                      f"raw DuckDB {row['raw_s']:.2f} s, re-ingest {row['reingest_s']:.3f} s", flush=True)
                if grown:
                    print(f"  {fmt} into a store of {grown:,} events: {row['grown_ingest_s']:.2f} s "
                          f"({row['grown_vs_fresh']:.2f}x of into an empty store)", flush=True)
                rows.append(row)
    code["changed_during_run"] = code_version() != code
    print()
    print_table(rows)
    if code["changed_during_run"]:
        print("WARNING: llmcost's ingestion modules changed during the run; the figures mix two versions")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({
        "benchmark": "ingest", "python": sys.version.split()[0], "machine": platform.machine(),
        "cpus": os.cpu_count(), "duckdb": version("duckdb"), "genai_prices": version("genai-prices"),
        "code": code, "rows": rows, "targets": targets(rows),
    }, indent=2))
    print(f"wrote {args.out}")
    if not all(r["exactly_once"] for r in rows):
        sys.exit("FAILED: the store does not hold every generated event exactly once")


def child_main(argv: list[str]) -> None:
    logging.disable(logging.WARNING)
    kind, file, *rest = argv
    if kind == "ours":
        outcome = child_ingest(Path(file))
    elif kind == "grown":
        outcome = child_grown(Path(file), int(rest[0]))
    else:
        fmt, db_path = rest
        outcome = child_raw(Path(file), fmt, Path(db_path))
    print(json.dumps(outcome))


if __name__ == "__main__":
    if sys.argv[1:2] == ["--child"]:
        child_main(sys.argv[2:])
    else:
        main()
