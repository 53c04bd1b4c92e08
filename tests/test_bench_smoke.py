"""The ingest benchmark runs end to end on a small size and proves exactly-once; no timing is asserted."""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"
ROW_KEYS = {
    "format", "events", "file_mb", "raw_s", "raw_events_per_s", "raw_peak_rss_mb", "ingest_s", "ingest_events_per_s",
    "ingest_peak_rss_mb", "ratio", "reingest_s", "reingest_read", "reingest_stored", "generated", "stored",
    "rows_in_store", "distinct_event_ids", "exactly_once", "priced_by",
}


@pytest.fixture(scope="module")
def ingest_results(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "ingest.json"
    done = subprocess.run([sys.executable, str(BENCH / "ingest.py"), "--sizes", "2000", "--repeat", "1",
                           "--out", str(out)],
                          capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr
    return json.loads(out.read_text()), done.stdout


@pytest.mark.slow
def test_ingest_benchmark_writes_every_figure_for_every_format(ingest_results):
    results, _ = ingest_results
    assert results["benchmark"] == "ingest"
    assert {"python", "cpus", "duckdb", "genai_prices", "rows", "targets"} <= results.keys()
    assert [(r["format"], r["events"]) for r in results["rows"]] == [
        ("jsonl", 2000), ("csv", 2000), ("journal", 2000), ("jsonl-bad", 2000)]
    for row in results["rows"]:
        assert ROW_KEYS <= row.keys()
        assert row["raw_s"] > 0 and row["ingest_s"] > 0 and row["ingest_peak_rss_mb"] > 0
    assert {t["target"].split(" (")[0] for t in results["targets"]} == {
        "ingest within 2x of raw DuckDB", "ingest within 1.5x of raw DuckDB", "ingest within 3x of raw DuckDB",
        "re-ingest of the unchanged file near zero, < 0.5 s",
        "every event stored exactly once",
        "ingest into a store already holding 8,000 events within 1.25x of into an empty one",
    }
    grown = [r for r in results["rows"] if "grown_ingest_s" in r]
    assert [(r["format"], r["grown_existing"]) for r in grown] == [("jsonl", 8000)]
    assert grown[0]["grown_ingest_s"] > 0 and grown[0]["grown_vs_fresh"] > 0


def test_ingest_benchmark_stores_every_generated_event_exactly_once(ingest_results):
    results, stdout = ingest_results
    for row in results["rows"]:
        bad = 20 if row["format"] == "jsonl-bad" else 0  # 1% of the lines, each kept in failed_logs
        assert row["bad_lines"] == bad and row["generated"] == 2000
        assert row["stored"] == row["rows_in_store"] == row["distinct_event_ids"] == 2000 - bad
        assert (row["reingest_read"], row["reingest_stored"]) == (0, 0)
        assert row["failed"] == bad and row["exactly_once"] is True
        if row["format"] == "journal":  # an attempt line before each event, and the tracker's own cost kept
            assert row["raw_rows"] == 4000 and row["attempts_in_store"] == 2000
            assert row["priced_by"] == {"price-table": 2000}
        elif row["format"] == "jsonl-bad":  # raw DuckDB skips the lines it cannot read
            assert row["raw_rows"] <= 2000 and row["attempts_in_store"] == 0
        else:
            assert row["raw_rows"] == 2000 and row["attempts_in_store"] == 0
            # the unknown self-hosted model is priced at the default rate, the rest from the price table
            assert set(row["priced_by"]) == {"price-table", "default-rate"}
            assert sum(row["priced_by"].values()) == 2000
    assert "stored 2,000 of 2,000 generated" in stdout


def test_run_all_renders_the_benchmarks_page_from_results(ingest_results, tmp_path):
    results, _ = ingest_results
    results_dir = tmp_path / "results"
    results_dir.mkdir()
    (results_dir / "ingest.json").write_text(json.dumps(results))
    (results_dir / "tracker_overhead.json").write_text(json.dumps({"benchmark": "tracker_overhead", "rows": [
        {"fsync": False, "calls": 100, "untracked_p50_ms": 0.004, "tracked_p50_ms": 0.34, "overhead_p50_ms": 0.336,
         "overhead_p99_ms": 1.4, "overhead_mean_ms": 0.4},
        {"fsync": True, "calls": 100, "untracked_p50_ms": 0.004, "tracked_p50_ms": 1.6, "overhead_p50_ms": 1.596,
         "overhead_p99_ms": 13.0, "overhead_mean_ms": 2.8},
    ]}))
    page_path = tmp_path / "benchmarks.md"
    done = subprocess.run([sys.executable, str(BENCH / "run_all.py"), "--docs-only", "--results", str(results_dir),
                           "--docs", str(page_path)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    page = page_path.read_text()
    for heading in ("## Machine", "## Targets", "## Tracker overhead per call", "## Ingest"):
        assert heading in page
    assert "| tracker overhead p50 < 1 ms (sqlite, fsync off) | 0.336 ms | ✅ met |" in page
    assert "| tracker overhead p50 < 1 ms (sqlite, fsync on) | 1.596 ms | ❌ not met |" in page
    assert "| every event stored exactly once (jsonl 2,000) | 2,000 of 2,000 | ✅ met |" in page
    assert "dashboard process < 1 GB at 10M events | not run | — |" in page
    assert "## Dashboard queries" not in page
    assert "Into a store that already held 8,000 other events, the jsonl file of 2,000 events took" in page


@pytest.mark.slow
def test_ingest_floor_benchmark_reads_every_record_of_both_formats(tmp_path):
    out = tmp_path / "ingest_floor.json"
    done = subprocess.run([sys.executable, str(BENCH / "ingest_floor.py"), "--sizes", "2000", "--repeat", "1",
                           "--out", str(out)], capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr
    rows = json.loads(out.read_text())["rows"]
    assert [(r["format"], r["events"], r["rows_read"]) for r in rows] == [("jsonl", 2000, 2000), ("csv", 2000, 2000)]
    for r in rows:
        assert r["raw_s"] > 0 and r["read_exactly_s"] > 0 and r["write_s"] > 0
        assert r["floor_ratio"] == pytest.approx((r["read_exactly_s"] + r["write_s"]) / r["raw_s"])
    assert "floor" in done.stdout


@pytest.mark.slow
@pytest.mark.browser
def test_dashboard_load_benchmark_renders_every_page_against_a_bare_one(tmp_path):
    if not Path("/usr/bin/chromium").is_file():
        pytest.skip("Chromium is not installed (apt-get install chromium)")
    pytest.importorskip("playwright.sync_api", reason="Playwright's Python package is missing")
    out = tmp_path / "dashboard_load.json"
    done = subprocess.run([sys.executable, str(BENCH / "dashboard_load.py"), "--runs", "1", "--days", "3",
                           "--out", str(out)], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    results = json.loads(out.read_text())
    pages = [row["page"] for row in results["rows"]]
    # Plotly is no dependency any more; where it is still installed the bench shows what it cost.
    plotly_reference = ["bare page + one Plotly chart (reference)"] * (importlib.util.find_spec("plotly") is not None)
    assert pages == ["bare Streamlit page (baseline)", "Overview, first load on a fresh server", "Overview",
                     "Use cases", "Users and tenants", "Failed logs", "Integrity", "Budgets and alerts",
                     "bare page + one Vega-Lite chart (reference)", *plotly_reference, "bare page + one table (reference)"]
    for row in results["rows"]:
        assert 0 < row["heading_median_s"] <= row["median_s"] and row["best_s"] <= row["median_s"]
    base = results["rows"][0]["median_s"]
    assert results["rows"][3]["ratio"] == pytest.approx(results["rows"][3]["median_s"] / base)
    assert len(results["targets"]) == 7 and all(isinstance(t["met"], bool) for t in results["targets"])
    charts = {row["page"]: row.get("charts") for row in results["rows"]}
    assert charts["bare Streamlit page (baseline)"] == 0 and charts["bare page + one Vega-Lite chart (reference)"] == 1
    assert all(charts[name] == 1 for name in plotly_reference)
    assert charts["Overview"] >= 2  # the daily spend and spend by model
    assert "vs bare" in done.stdout


@pytest.mark.slow
@pytest.mark.browser
def test_dashboard_first_load_benchmark_alternates_fresh_servers(tmp_path):
    if not Path("/usr/bin/chromium").is_file():
        pytest.skip("Chromium is not installed (apt-get install chromium)")
    pytest.importorskip("playwright.sync_api", reason="Playwright's Python package is missing")
    out = tmp_path / "first_load.json"
    done = subprocess.run([sys.executable, str(BENCH / "dashboard_load.py"), "--first-only", "--repeats", "2",
                           "--days", "3", "--out", str(out)], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    results = json.loads(out.read_text())
    assert results["launch"] == "llmcost" and len(results["loads"]["bare"]) == len(results["loads"]["overview"]) == 2
    for load in results["loads"]["bare"] + results["loads"]["overview"]:
        assert 0 < load["heading_s"] <= load["rendered_s"] and load["server_start_s"] > 0
    assert results["loads"]["overview"][0]["charts"] >= 2 and results["loads"]["bare"][0]["charts"] == 0
    assert len(results["ratios"]) == 2 and isinstance(results["met"], bool)
    assert "Overview / bare page" in done.stdout


@pytest.mark.slow
def test_ingest_variants_benchmark_runs_every_variant_on_every_record(tmp_path):
    out = tmp_path / "ingest_variants.json"
    done = subprocess.run([sys.executable, str(BENCH / "ingest_variants.py"), "--events", "2000", "--repeat", "1",
                           "--grown", "0", "--data", str(tmp_path / "data"), "--out", str(out)],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    result = json.loads(out.read_text())
    spec = importlib.util.spec_from_file_location("ingest_variants", BENCH / "ingest_variants.py")
    variants = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(BENCH))
    try:
        spec.loader.exec_module(variants)
    finally:
        sys.path.remove(str(BENCH))
    ran = [(r["format"], r["variant"]) for r in result["rows"]]
    assert ran == [(fmt, v) for fmt in ("jsonl", "csv") for v in variants.VARIANTS[fmt]]
    # Every generated record is clean: each exact variant (and each bound) takes all of them, none fewer.
    assert {(r["format"], r["variant"]): r["rows"] for r in result["rows"]} == dict.fromkeys(ran, 2000)
    for r in result["rows"]:
        assert r["wall"] > 0 and r["wall_ratio"] == pytest.approx(r["wall"] / next(
            x["wall"] for x in result["rows"] if x["format"] == r["format"] and x["variant"] == "raw"))
    assert set(result["floors"]) == {"jsonl", "csv"} and all("x raw DuckDB" in f for f in result["floors"].values())
    results_dir = tmp_path / "results"
    results_dir.mkdir()
    (results_dir / "ingest_variants.json").write_text(out.read_text())
    page_path = tmp_path / "benchmarks.md"
    rendered = subprocess.run([sys.executable, str(BENCH / "run_all.py"), "--docs-only", "--results", str(results_dir),
                               "--docs", str(page_path)], capture_output=True, text=True, timeout=60)
    assert rendered.returncode == 0, rendered.stderr
    page = page_path.read_text()
    assert "## Ingest variants: issue 17's ideas measured against raw DuckDB in one run" in page
    assert "| insert as today (dedup by id hash) |" in page and result["floors"]["jsonl"] in page
