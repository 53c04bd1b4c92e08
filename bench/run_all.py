"""Run every benchmark under bench/ and regenerate docs/benchmarks.md from their JSON results.

Each benchmark script takes `--out PATH` for its JSON; the results may carry a `targets` list
(`{"target", "figure", "met"}`) that goes into the targets table as it is. With `--quick`, each script
gets small sizes (a smoke run under a minute), results go to a temporary folder and the page is
printed instead of replacing docs/benchmarks.md.

    python bench/run_all.py [--quick] [--only ingest,...] [--docs-only]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
SCRIPTS = ("import_time", "tracker_overhead", "ingest", "ingest_floor", "ingest_variants", "dashboard_queries",
           "dashboard_load", "collector")
QUICK_ARGS = {
    "import_time": ["--repeat", "2"],
    "collector": ["--seconds", "1"],
    "tracker_overhead": ["--calls", "300"],
    "ingest": ["--sizes", "5000", "--repeat", "1"],
    "ingest_floor": ["--sizes", "5000", "--repeat", "1"],
    "ingest_variants": ["--events", "5000", "--repeat", "1", "--grown", "0"],
    "dashboard_queries": ["--sizes", "20000", "--runs", "2"],
    "dashboard_load": ["--runs", "1", "--days", "3"],
}
TITLES = {
    "import_time": "Import time of the SDK and the CLI against a bare interpreter",
    "collector": "Collector: events accepted per second (fsync on) against a bare Starlette endpoint",
    "tracker_overhead": "Tracker overhead per call",
    "ingest": "Ingest: files into the store against raw DuckDB",
    "ingest_floor": "Ingest floor: reading every record exactly and writing the store, before any check",
    "ingest_variants": "Ingest variants: issue 17's ideas measured against raw DuckDB in one run",
    "dashboard_queries": "Dashboard queries",
    "dashboard_load": "Dashboard pages in Chromium: time to fully rendered against a bare Streamlit page",
}
TRACKER_P50_TARGET_MS = 1.0
DASHBOARD_TARGETS = (
    "all overview queries together < 0.5 s at 10M events (connection opening included)",
    "dashboard process < 1 GB at 10M events",
)


def run_script(name: str, out: Path, quick: bool) -> bool:
    """Run one benchmark in its own process, its table streamed to the terminal; False when it failed."""
    script = BENCH / f"{name}.py"
    extra = QUICK_ARGS.get(name, []) if quick else []
    accepted = subprocess.run([sys.executable, str(script), "--help"], capture_output=True, text=True).stdout
    missing = [flag for flag in ("--out", *extra[::2]) if flag not in accepted]
    if missing:
        print(f"skipping {script.name}: it does not take {', '.join(missing)}", flush=True)
        return False
    command = [sys.executable, str(script), "--out", str(out), *extra]
    print(f"\n== {script.name} {' '.join(extra)}", flush=True)
    started = time.perf_counter()
    done = subprocess.run(command, cwd=ROOT)
    print(f"== {script.name}: exit {done.returncode} after {time.perf_counter() - started:.0f} s", flush=True)
    return done.returncode == 0


def machine() -> dict[str, str]:
    cpu = platform.processor() or platform.machine()
    memory = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                memory = f"{int(line.split()[1]) / 2**20:.1f} GiB"
                break
    except OSError:
        pass  # not Linux: keep what platform knows

    def package(name: str) -> str:
        try:
            return version(name)
        except PackageNotFoundError:
            return "not installed"

    return {
        "CPU": cpu, "cores": str(os.cpu_count()), "RAM": memory, "OS": f"{platform.system()} {platform.release()}",
        "Python": platform.python_version(), "duckdb": package("duckdb"), "genai-prices": package("genai-prices"),
        "pandas": package("pandas"),
    }


def table(header: list[str], rows: list[list[str]]) -> list[str]:
    clean = [[str(cell).replace("|", "\\|") for cell in row] for row in rows]
    return [
        "| " + " | ".join(header) + " |",
        "|" + "|".join("---" for _ in header) + "|",
        *("| " + " | ".join(row) + " |" for row in clean),
    ]


def verdict(met: bool | None) -> str:
    return "—" if met is None else "✅ met" if met else "❌ not met"


def tracker_targets(result: dict) -> list[dict]:
    return [
        {
            "target": f"tracker overhead p50 < {TRACKER_P50_TARGET_MS:g} ms ({r.get('backend', 'sqlite')}, "
                      f"fsync {'on' if r['fsync'] else 'off'})",
            "figure": f"{r['overhead_p50_ms']:.3f} ms",
            "met": r["overhead_p50_ms"] < TRACKER_P50_TARGET_MS,
        }
        for r in result.get("rows", [])
    ]


def tracker_section(result: dict) -> list[str]:
    rows = [
        [
            r.get("backend", "sqlite"), "on" if r["fsync"] else "off", f"{r['calls']:,}", f"{r['untracked_p50_ms']:.3f} ms",
            f"{r['tracked_p50_ms']:.3f} ms", f"{r['overhead_p50_ms']:.3f} ms", f"{r['overhead_p99_ms']:.3f} ms",
            f"{r['overhead_mean_ms']:.3f} ms",
        ]
        for r in result["rows"]
    ]
    return table(["backend", "fsync", "calls", "untracked p50", "tracked p50", "overhead p50", "overhead p99",
                  "overhead mean"], rows)


def ingest_section(result: dict) -> list[str]:
    rows = [
        [
            r["format"], f"{r['events']:,}", f"{r['file_mb']:.0f} MB",
            f"{r['raw_events_per_s']:,.0f}/s ({r['raw_s']:.2f} s)",
            f"{r['ingest_events_per_s']:,.0f}/s ({r['ingest_s']:.2f} s)", f"{r['ratio']:.1f}x",
            f"{r['reingest_s']:.3f} s", f"{r['rows_in_store']:,} / {r['generated'] - r.get('bad_lines', 0):,}"
            + (f" ({r['bad_lines']:,} bad lines kept as failed)" if r.get("bad_lines") else ""),
            f"{r['ingest_peak_rss_mb']:.0f} MB", f"{r['raw_peak_rss_mb']:.0f} MB",
        ]
        for r in result["rows"]
    ]
    notes = [
        "",
        "Raw DuckDB is connect, `CREATE TABLE t AS SELECT * FROM read_json(file)` (or `read_csv`) into a fresh "
        "database file, close: no validation, no pricing, no de-duplication. llmcost ingest opens the store, "
        "validates every record, prices it, de-duplicates by `event_id`, records the file offset in the same "
        "transaction and closes the store; both are timed from opening to closing. Each figure is the fastest "
        "of `repeat` runs, each in a fresh process; peak RSS is that whole process (Python, imports and all). "
        "`journal` is the file the tracker writes: a write-ahead call attempt before each event, and the "
        "event's cost as the tracker priced it; raw DuckDB reads both kinds of line into one table. "
        "`jsonl-bad` is the JSON Lines file with 1% of its lines, scattered, made bad (a number for a name, a "
        "fraction for a count, an unknown key, a torn line, a negative count, a time in the future); raw "
        "DuckDB reads it with `ignore_errors`.",
    ]
    for r in result["rows"]:
        if "grown_ingest_s" in r:
            notes += ["", f"Into a store that already held {r['grown_existing']:,} other events, the {r['format']} "
                      f"file of {r['events']:,} events took {r['grown_ingest_s']:.2f} s: {r['grown_vs_fresh']:.2f}x "
                      "its first ingest into an empty store (finding duplicates reads one 64-bit key per stored "
                      "event, and compares ids only where keys match)."]
    code = result.get("code")
    if code:
        changed = " (**the code changed during the run**)" if code.get("changed_during_run") else ""
        notes += ["", f"Code: commit `{code['commit']}`, ingestion modules `{code['ingest_modules_sha1']}`{changed}."]
    return table(["format", "events", "file", "raw DuckDB", "llmcost ingest", "ratio", "re-ingest unchanged",
                  "stored / generated", "peak RSS ingest", "peak RSS raw"], rows) + notes


def floor_section(result: dict) -> list[str]:
    rows = [
        [r["format"], f"{r['events']:,}", f"{r['raw_s']:.2f} s", f"{r['read_exactly_s']:.2f} s ({r['read_ratio']:.2f}x)",
         f"{r['write_s']:.2f} s ({r['write_ratio']:.2f}x)", f"**{r['floor_ratio']:.2f}x**",
         f"{max(0.0, 2 - r['floor_ratio']) * r['raw_s']:.2f} s"]
        for r in result["rows"]
    ]
    notes = [
        "",
        "Read exactly: each JSON line's keys counted and every known field's JSON text taken out, as the ingest "
        "reads them (so that an unknown key, a key given twice or a number where a name belongs cannot pass), "
        "or every CSV cell read as text. Write: the rows written into `usage_events` of a fresh store and the "
        "store closed. The last column is what 2x of raw DuckDB leaves for everything else: splitting lines, "
        "validating, pricing, de-duplicating and recording offsets.",
    ]
    return table(["format", "events", "raw DuckDB", "read exactly", "write the store", "floor",
                  "left within 2x"], rows) + notes


def variants_section(result: dict) -> list[str]:
    """One table per format: each variant's wall and CPU time as ratios to raw DuckDB in the same run."""
    lines = []
    for fmt in dict.fromkeys(r["format"] for r in result["rows"]):
        rows = [
            [r["label"], f"{r['wall']:.2f} s", f"{r['wall_ratio']:.2f}x",
             f"{r['cpu']:.2f} s" if r["cpu"] is not None else "", f"{r['cpu_ratio']:.2f}x" if r["cpu"] is not None else "",
             f"{r['rows']:,}"]
            for r in result["rows"] if r["format"] == fmt
        ]
        lines += [f"{fmt}, {result['events']:,} events, fastest of {result['repeat']}:", ""]
        lines += table(["variant", "wall", "wall / raw", "CPU", "CPU / raw", "rows"], rows) + [""]
    for fmt, floor in result.get("floors", {}).items():
        lines += [f"{fmt}: {floor}", ""]
    if result.get("load_average"):
        lines += [f"Load average (1 min) at the start and end of the run: "
                  f"{', '.join(f'{x:.1f}' for x in result['load_average'])} on {result['cpus']} cores; above the "
                  "core count, other processes sway wall times, and the CPU columns are the steadier guide.", ""]
    return lines + [
        "Each variant runs in a fresh process, timed from connect to close; CPU is every thread's. Stage variants "
        "write a temp table of an in-memory database; insert variants write the same 1M typed, priced rows (built "
        "untimed) into usage_events in batches of two row groups. Variants marked NOT exact or described as "
        "bounds skip checks the ingest needs; they show what a part costs, not a way to ingest. The pyarrow strict "
        "reader is the issue's optimistic exactness: pyarrow's JSON reader with the record's schema refuses a chunk "
        "for one value of another JSON type, a key given twice or a torn line; its row is that read alone, before "
        "the checks on values (ranges, times, names) that would still follow in SQL, and the 64-line pieces show "
        "what each call costs when a chunk is bisected down to its bad lines.",
    ]


def dashboard_section(result: dict) -> list[str]:
    """One column per store size: each query's median, the pandas baseline, and peak memory."""
    rows = result["rows"]
    header = ["median of runs"] + [f"{r['events']:,} events" for r in rows]
    names = list(dict.fromkeys(name for r in rows for name in r["dashboard"]["timings"]))

    def ms(seconds: float | None) -> str:
        return "—" if seconds is None else f"{seconds * 1000:,.1f} ms"

    body = [[name] + [ms(r["dashboard"]["timings"].get(name, {}).get("median_s")) for r in rows] for name in names]
    body += [
        ["**overview, all queries**"] + [f"**{ms(r['overview_s'])}**" for r in rows],
        ["overview figures in pandas from raw rows"] + [ms(r["pandas_overview_s"]) for r in rows],
        ["speed-up of SQL aggregation"] + [f"{r['speedup']:.1f}x" for r in rows],
        ["peak RSS, dashboard process"] + [f"{r['dashboard']['peak_rss_mb']:,.0f} MB" for r in rows],
        ["peak RSS, pandas baseline"] + [f"{r['pandas']['peak_rss_mb']:,.0f} MB" for r in rows],
        ["same figures as pandas"] + [str(r["figures_agree"]) for r in rows],
    ]
    return table(header, body)


def generic_section(result: dict) -> list[str]:
    """Any other benchmark: its rows as they are, numbers rounded."""

    def cell(value) -> str:
        if isinstance(value, float):
            return f"{value:,.3f}" if abs(value) < 100 else f"{value:,.0f}"
        if isinstance(value, int) and not isinstance(value, bool):
            return f"{value:,}"
        if isinstance(value, (dict, list)):
            return json.dumps(value)
        return str(value)

    def flat(row: dict) -> dict:
        """A row's nested figures as columns of their own ("collector: events_per_s")."""
        return {f"{key}: {sub}" if isinstance(value, dict) else key: inner
                for key, value in row.items()
                for sub, inner in (value.items() if isinstance(value, dict) else [(None, value)])}

    rows = [flat(r) for r in result.get("rows", []) if isinstance(r, dict)]
    if not rows:
        scalars = {k: v for k, v in result.items() if not isinstance(v, (dict, list))}
        return table(["figure", "value"], [[k, cell(v)] for k, v in scalars.items()])
    header = list(dict.fromkeys(key for r in rows for key in r))
    return table(header, [[cell(r.get(key, "")) for key in header] for r in rows])


SECTIONS = {"tracker_overhead": tracker_section, "ingest": ingest_section, "ingest_floor": floor_section,
            "ingest_variants": variants_section, "dashboard_queries": dashboard_section}


def not_measured(target: str, results: dict[str, dict], name: str) -> dict:
    return {"target": target, "figure": "not reported" if name in results else "not run", "met": None}


def all_targets(results: dict[str, dict]) -> list[dict]:
    """Each benchmark's own `targets` when its results carry them; the tracker's computed here."""
    targets = []
    if "tracker_overhead" in results:
        targets += results["tracker_overhead"].get("targets") or tracker_targets(results["tracker_overhead"])
    else:
        target = f"tracker overhead p50 < {TRACKER_P50_TARGET_MS:g} ms"
        targets.append(not_measured(target, results, "tracker_overhead"))
    if "import_time" in results:
        for row in results["import_time"]["rows"][1:]:
            targets.append({"target": f"`{row['case']}` loads no duckdb, pandas, pyarrow, numpy, streamlit, altair",
                            "figure": f"{row['seconds'] * 1000:.0f} ms ({row['ratio']:.1f}x of python -c pass); "
                                      f"heavy: {', '.join(row['heavy_modules']) or 'none'}",
                            "met": not row["heavy_modules"]})
    targets += results.get("collector", {}).get("targets", [])
    targets += results.get("ingest", {}).get("targets") or [
        not_measured("ingest within 2x of raw DuckDB; re-ingest near zero", results, "ingest")
    ]
    targets += results.get("dashboard_queries", {}).get("targets") or [
        not_measured(target, results, "dashboard_queries") for target in DASHBOARD_TARGETS
    ]
    targets += results.get("dashboard_load", {}).get("targets") or [
        not_measured("each dashboard page fully rendered within 2x a bare Streamlit page", results, "dashboard_load")
    ]
    return targets


def load_results(results_dir: Path) -> dict[str, dict]:
    results = {}
    for name in SCRIPTS:
        path = results_dir / f"{name}.json"
        if path.is_file():
            result = json.loads(path.read_text())
            result["_measured"] = dt.datetime.fromtimestamp(path.stat().st_mtime, dt.timezone.utc)
            results[name] = result
    return results


def render(results: dict[str, dict], quick: bool) -> str:
    now = dt.datetime.now(dt.timezone.utc)
    lines = [
        "# Benchmarks",
        "",
        f"Generated by `make bench` (`python bench/run_all.py`) on {now:%Y-%m-%d %H:%M} UTC; do not edit by hand.",
    ]
    if quick:
        lines += ["", "**Quick smoke run: small sizes, not the published figures.**"]
    info = machine()
    lines += ["", "## Machine", ""] + table(list(info), [list(info.values())])
    lines += ["", "## Targets", ""] + table(
        ["target", "figure", "verdict"], [[t["target"], t["figure"], verdict(t["met"])] for t in all_targets(results)]
    )
    for name in SCRIPTS:
        if name not in results:
            continue
        result = results[name]
        measured = f"`bench/{name}.py`, measured {result['_measured']:%Y-%m-%d %H:%M} UTC."
        lines += ["", f"## {TITLES[name]}", "", measured, ""]
        try:
            lines += SECTIONS.get(name, generic_section)(result)
        except (KeyError, TypeError):  # a results file from another version of the script: show it as it is
            lines += generic_section(result)
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, a smoke run under a minute")
    parser.add_argument("--only", default="", help=f"comma-separated subset of {', '.join(SCRIPTS)}")
    parser.add_argument("--docs-only", action="store_true", help="regenerate the page from existing results")
    parser.add_argument("--results", type=Path, help="results folder (default bench/results; --quick: a temp folder)")
    parser.add_argument("--docs", type=Path, help="page to write (default docs/benchmarks.md; --quick: printed)")
    args = parser.parse_args()
    chosen = [name.strip() for name in args.only.split(",") if name.strip()] or list(SCRIPTS)
    unknown = sorted(set(chosen) - set(SCRIPTS))
    if unknown:
        parser.error(f"--only: unknown benchmark {', '.join(unknown)} (choose from {', '.join(SCRIPTS)})")

    with tempfile.TemporaryDirectory(prefix="llmcost-bench-quick-") as scratch:
        results_dir = args.results or (Path(scratch) if args.quick else BENCH / "results")
        results_dir.mkdir(parents=True, exist_ok=True)
        failed = []
        if not args.docs_only:
            for name in chosen:
                if not (BENCH / f"{name}.py").is_file():
                    print(f"skipping {name}.py: not written yet", flush=True)
                    continue
                if not run_script(name, results_dir / f"{name}.json", args.quick):
                    failed.append(name)
        page = render(load_results(results_dir), args.quick)

    docs = args.docs or (None if args.quick else ROOT / "docs" / "benchmarks.md")
    if docs is None:
        print("\n" + page)
    else:
        docs.parent.mkdir(parents=True, exist_ok=True)
        docs.write_text(page)
        print(f"\nwrote {docs}")
    if failed:
        sys.exit(f"benchmarks that failed: {', '.join(failed)}")


if __name__ == "__main__":
    main()
