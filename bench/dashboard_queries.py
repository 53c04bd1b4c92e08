"""Dashboard query speed: every query the overview and use-case pages run, on stores of 1M and 10M events.

For each size the script writes a store with DuckDB itself (90 days of events in time order, as ingestion
appends them; 5,000 users in 12 tenants, 5 use cases, 8 models), then, in fresh processes:
- the dashboard: each query on its own short read-only connection (opening included), the whole overview
  (`dashboard_queries.overview`, one connection, as the page runs it), the sidebar and the use-case page,
  best and median of several runs; the process imports Streamlit and Plotly and builds the chart, so its
  peak memory stands for the dashboard process;
- the baseline: the same overview figures computed in pandas from the raw rows (only the columns needed,
  cost as float), as a dashboard without SQL aggregation would.
The two results are compared figure by figure (cost within a millionth of a dollar).

    python bench/dashboard_queries.py [--sizes 1000000,10000000] [--runs 5] [--out bench/results/dashboard_queries.json]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from importlib.metadata import version
from pathlib import Path

from memory import peak_rss_mb

DAYS = 90
RANGE_DAYS = 30  # the sidebar's default range
USERS = 5_000
TENANTS = 12
TARGET_OVERVIEW_S = 0.5
TARGET_RSS_MB = 1024
# (provider, model, share in percent, dollars per million tokens): plausible blended prices.
MODELS = (
    ("openai", "gpt-4o-mini", 30, "0.30"), ("openai", "gpt-4o", 8, "5.00"),
    ("anthropic", "claude-3-5-haiku-latest", 12, "1.60"), ("anthropic", "claude-sonnet-4-5", 6, "6.00"),
    ("x-ai", "grok-2", 10, "4.00"), ("x-ai", "grok-3-mini", 10, "0.40"),
    ("google", "gemini-2.0-flash", 20, "0.20"), ("self-hosted", "tutor-ft-llama-70b", 4, "5.00"),
)
USE_CASES = ("content_analyzer", "auto_populate", "chat_tutor", "scaffolder", "interaction_generator")


def generate_store(db_path: Path, events: int, last_day: dt.date) -> float:
    """Write `events` usage events over DAYS days ending on `last_day`, in time order; return the seconds."""
    from llmcost.store import connection as store

    started = time.perf_counter()
    first = dt.datetime.combine(last_day - dt.timedelta(days=DAYS - 1), dt.time())
    span_seconds = DAYS * 86_400
    models = " UNION ALL ".join(
        f"SELECT {i} AS idx, '{p}' AS provider, '{m}' AS model, {share} AS share, {price} AS per_mtok"
        for i, (p, m, share, price) in enumerate(MODELS)
    )  # constants of this script, not user input
    use_cases = "[" + ", ".join(f"'{u}'" for u in USE_CASES) + "]"
    with store.writing(db_path) as db:
        db.execute("SET preserve_insertion_order = true")
        db.execute(
            f"""
            INSERT INTO usage_events BY NAME
            WITH models AS ({models}),
            buckets AS (
                SELECT idx, provider, model, per_mtok,
                       sum(share) OVER (ORDER BY idx) - share AS low, sum(share) OVER (ORDER BY idx) AS high
                FROM models
            ),
            raw AS (
                SELECT i,
                       $first + to_seconds(CAST(i * $span / $events AS BIGINT)) AS ts,
                       hash(i, 'user') % $users AS user_no,
                       hash(i, 'model') % 100 AS model_pick,
                       200 + hash(i, 'in') % 3000 AS input_tokens,
                       20 + hash(i, 'out') % 800 AS output_tokens
                FROM range($events) AS r(i)
            )
            SELECT *, hash(event_id) AS event_key FROM (  -- the key ingest gives each event (llmcost.store.migrations)
            SELECT uuid()::VARCHAR AS event_id, ts, CAST(ts AS DATE) AS day,
                   'user-' || user_no AS user_id, 'tenant-' || (user_no % $tenants) AS tenant_id,
                   {use_cases}[CAST(1 + hash(i, 'uc') % {len(USE_CASES)} AS BIGINT)] AS use_case,
                   CASE WHEN user_no % 100 < 80 THEN 'student' WHEN user_no % 100 < 94 THEN 'lesson_builder'
                        WHEN user_no % 100 < 99 THEN 'admin' ELSE 'super_admin' END AS account_type,
                   b.provider, b.model, input_tokens, output_tokens, input_tokens + output_tokens AS total_tokens,
                   CAST((input_tokens + output_tokens) * b.per_mtok / 1000000 AS DECIMAL(18, 12)) AS cost_usd,
                   CASE WHEN b.provider = 'self-hosted' THEN 'default-rate' ELSE 'price-table' END AS price_source,
                   'bench' AS source, ts AS ingested_at
            FROM raw JOIN buckets b ON model_pick >= b.low AND model_pick < b.high
            ORDER BY i)
            """,
            {"first": first, "span": span_seconds, "events": events, "users": USERS, "tenants": TENANTS},
        )
    return time.perf_counter() - started


def timed(function, runs: int) -> tuple[dict, object]:
    times, result = [], None
    for _ in range(runs):
        started = time.perf_counter()
        result = function()
        times.append(time.perf_counter() - started)
    return {"best_s": min(times), "median_s": statistics.median(times)}, result


def child_dashboard(db_path: Path, today: dt.date, runs: int) -> dict:
    """The dashboard's side: every query on its own connection, then each page bundle."""
    import altair  # noqa: F401 - loaded as the dashboard process loads it
    import streamlit  # noqa: F401

    from llmcost.config import SystemLevels
    from llmcost.dashboard import charts
    from llmcost.dashboard import queries as dq
    from llmcost.store import queries as store_queries
    from llmcost.store.connection import reading

    filters = dq.Filters(today - dt.timedelta(days=RANGE_DAYS - 1), today)

    def alone(query, *args):
        def run():
            with reading(db_path) as db:
                return query(db, *args)
        return run

    queries = {
        "daily_cost_by_use_case": alone(dq.daily_cost_by_use_case, filters),
        "stored_spend_on": alone(store_queries.stored_spend_on, today),
        "open_failed_count": alone(store_queries.open_failed_count),
        "last_synced": alone(store_queries.last_synced),
        "data_span": alone(dq.data_span),
        "filter_options": alone(dq.filter_options),
        "use_cases_from (range and month to date)": alone(dq.use_cases_from, today, filters),
        "cost_by_model": alone(dq.cost_by_model, filters, None),
    }
    timings = {name: timed(query, runs)[0] for name, query in queries.items()}
    bundles = {
        "overview page (one connection)": lambda: dq.overview(db_path, today, filters),
        "sidebar (one connection)": lambda: dq.sidebar(db_path),
        "use-case page (one connection)": lambda: (dq.use_cases(db_path, today, filters),
                                                   dq.models(db_path, filters, None)),
    }
    for name, bundle in bundles.items():
        timings[name], result = timed(bundle, runs)
        if name.startswith("overview"):
            overview = result
    levels = {"warning": SystemLevels().warning_usd, "critical": SystemLevels().critical_usd,
              "shutdown": SystemLevels().shutdown_usd}
    timings["overview chart (Vega-Lite spec)"], _ = timed(lambda: charts.daily_spend(overview.daily, levels).to_dict(),
                                                         runs)
    figures = {
        "periods": {name: [t.calls, t.tokens, str(t.cost_usd)] for name, t in overview.periods.items()},
        "daily_rows": len(overview.daily),
        "daily_cost": str(sum(overview.daily["cost_usd"])),
        "system_cost_today": str(alone(store_queries.stored_spend_on, today)()),
    }
    return {"timings": timings, "figures": figures, "peak_rss_mb": peak_rss_mb()}


def child_pandas(db_path: Path, today: dt.date, runs: int) -> dict:
    """The baseline: load the raw rows the overview needs and compute its figures in pandas."""
    import duckdb
    import pandas as pd

    from llmcost.dashboard.queries import Periods

    periods = Periods(today)
    ranges = periods.ranges()
    range_start = today - dt.timedelta(days=RANGE_DAYS - 1)
    earliest = min(min(start for start, _ in ranges.values()), range_start)

    def overview():
        db = duckdb.connect(str(db_path), read_only=True)
        try:
            rows = db.execute(
                "SELECT day, use_case, total_tokens, CAST(cost_usd AS DOUBLE) AS cost_usd FROM usage_events "
                "WHERE day BETWEEN ? AND ?", [earliest, today]).df()
        finally:
            db.close()
        day = rows["day"]  # datetime64: compared with Timestamps, never turned into Python objects
        totals = {}
        for name, (start, end) in ranges.items():
            inside = rows[(day >= pd.Timestamp(start)) & (day <= pd.Timestamp(end))]
            totals[name] = [len(inside), int(inside["total_tokens"].sum()), float(inside["cost_usd"].sum())]
        in_range = rows[day >= pd.Timestamp(range_start)]
        daily = in_range.groupby(["day", "use_case"], as_index=False).agg(
            calls=("cost_usd", "size"), tokens=("total_tokens", "sum"), cost_usd=("cost_usd", "sum"))
        system_today = float(rows.loc[day == pd.Timestamp(today), "cost_usd"].sum())
        return totals, daily, system_today, len(rows)

    timing, (totals, daily, system_today, loaded) = timed(overview, runs)
    return {
        "timings": {"overview figures in pandas from raw rows": timing},
        "figures": {"periods": totals, "daily_rows": len(daily), "daily_cost": float(daily["cost_usd"].sum()),
                    "system_cost_today": system_today},
        "rows_loaded": loaded,
        "peak_rss_mb": peak_rss_mb(),
    }


def run_child(kind: str, db_path: Path, today: dt.date, runs: int) -> dict:
    done = subprocess.run([sys.executable, __file__, "--child", kind, str(db_path), today.isoformat(), str(runs)],
                          capture_output=True, text=True, check=False)
    if done.returncode != 0:
        sys.exit(f"{kind} child failed:\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def figures_agree(ours: dict, baseline: dict) -> bool:
    for name, (calls, tokens, cost) in ours["periods"].items():
        other = baseline["periods"][name]
        if (calls, tokens) != (other[0], other[1]) or abs(float(cost) - other[2]) > 1e-6:
            return False
    return (ours["daily_rows"] == baseline["daily_rows"]
            and abs(float(ours["daily_cost"]) - baseline["daily_cost"]) <= 1e-6
            and abs(float(ours["system_cost_today"]) - baseline["system_cost_today"]) <= 1e-6)


def measure(events: int, workdir: Path, runs: int) -> dict:
    today = dt.date.today()
    db_path = workdir / f"store-{events}.duckdb"
    generated_s = generate_store(db_path, events, today)
    print(f"wrote {events:,} events in {generated_s:.1f} s ({db_path.stat().st_size / 2**20:,.0f} MB)", flush=True)
    ours = run_child("dashboard", db_path, today, runs)
    baseline = run_child("pandas", db_path, today, runs)
    db_path.unlink()
    overview_s = ours["timings"]["overview page (one connection)"]["median_s"]
    sidebar_s = ours["timings"]["sidebar (one connection)"]["median_s"]
    pandas_s = baseline["timings"]["overview figures in pandas from raw rows"]["median_s"]
    return {
        "events": events, "generate_s": generated_s, "runs": runs, "dashboard": ours, "pandas": baseline,
        "overview_s": overview_s, "overview_with_sidebar_s": overview_s + sidebar_s,
        "pandas_overview_s": pandas_s, "speedup": pandas_s / overview_s,
        "memory_ratio": baseline["peak_rss_mb"] / ours["peak_rss_mb"],
        "figures_agree": figures_agree(ours["figures"], baseline["figures"]),
    }


def targets(rows: list[dict]) -> list[dict]:
    checks = []
    for r in rows:
        label = f"{r['events']:,} events"
        together = r["overview_with_sidebar_s"]
        checks.append({"target": f"overview and sidebar queries together < {TARGET_OVERVIEW_S} s, connections "
                                 f"included ({label})",
                       "figure": f"{together:.3f} s", "met": together < TARGET_OVERVIEW_S})
        checks.append({"target": f"dashboard process < {TARGET_RSS_MB} MB ({label})",
                       "figure": f"{r['dashboard']['peak_rss_mb']:.0f} MB",
                       "met": r["dashboard"]["peak_rss_mb"] < TARGET_RSS_MB})
        checks.append({"target": f"same figures as pandas from raw rows ({label})",
                       "figure": str(r["figures_agree"]), "met": r["figures_agree"]})
    return checks


def print_table(rows: list[dict]) -> None:
    names = list(rows[0]["dashboard"]["timings"])
    print(f"{'query (median of runs, ms)':<42}" + "".join(f"{r['events']:>14,}" for r in rows))
    for name in names:
        print(f"{name:<42}" + "".join(f"{r['dashboard']['timings'][name]['median_s'] * 1000:>14.1f}" for r in rows))
    print(f"{'overview page + sidebar':<42}"
          + "".join(f"{r['overview_with_sidebar_s'] * 1000:>14.1f}" for r in rows))
    print(f"{'pandas from raw rows: overview figures':<42}"
          + "".join(f"{r['pandas_overview_s'] * 1000:>14.1f}" for r in rows))
    print(f"{'  speed-up, same figures':<42}" + "".join(f"{r['speedup']:>13.1f}x" for r in rows))
    print(f"{'peak RSS, dashboard process (MB)':<42}"
          + "".join(f"{r['dashboard']['peak_rss_mb']:>14.0f}" for r in rows))
    print(f"{'peak RSS, pandas baseline (MB)':<42}" + "".join(f"{r['pandas']['peak_rss_mb']:>14.0f}" for r in rows))
    print(f"{'same figures':<42}" + "".join(f"{str(r['figures_agree']):>14}" for r in rows))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000000,10000000", help="comma-separated event counts")
    parser.add_argument("--runs", type=int, default=5, help="runs per query (best and median reported)")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "dashboard_queries.json")
    args = parser.parse_args()
    sizes = [int(s.replace("_", "")) for s in args.sizes.split(",") if s.strip()]
    rows = []
    with tempfile.TemporaryDirectory(prefix="llmcost-bench-dashboard-") as tmp:
        for size in sizes:
            rows.append(measure(size, Path(tmp), args.runs))
            row = rows[-1]
            print(f"  overview {row['overview_s'] * 1000:.0f} ms, pandas {row['pandas_overview_s'] * 1000:.0f} ms, "
                  f"figures agree: {row['figures_agree']}", flush=True)
    print()
    print_table(rows)
    checks = targets(rows)
    for check in checks:
        print(f"{'met' if check['met'] else 'MISSED':<7} {check['target']}: {check['figure']}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({
        "benchmark": "dashboard_queries", "python": sys.version.split()[0], "machine": platform.machine(),
        "cpus": os.cpu_count(), "duckdb": version("duckdb"), "pandas": version("pandas"),
        "streamlit": version("streamlit"), "rows": rows, "targets": checks,
    }, indent=2, default=str))
    print(f"wrote {args.out}")
    if not all(r["figures_agree"] for r in rows):
        sys.exit("FAILED: the dashboard's figures differ from pandas on the raw rows")


def child_main(argv: list[str]) -> None:
    kind, db_path, today, runs = argv
    run = child_dashboard if kind == "dashboard" else child_pandas
    print(json.dumps(run(Path(db_path), dt.date.fromisoformat(today), int(runs)), default=str))


if __name__ == "__main__":
    if sys.argv[1:2] == ["--child"]:
        child_main(sys.argv[2:])
    else:
        main()
