import csv
import subprocess
import sys
import textwrap

from click.testing import CliRunner

from llmcost.cli import cli
from llmcost.lines import encode_line
from llmcost.store import connection as store


def run(*args):
    result = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    return result


def rows(settings, sql):
    with store.reading(settings.db_path) as db:
        return db.execute(sql).fetchall()


HOSTILE = ["=HYPERLINK(\"http://evil\",\"x\")", "+1+2", "-2+3", "@SUM(A1)", "plain"]


def test_export_neutralises_formula_cells_and_matches_the_store(settings, tmp_path):
    source = tmp_path / "events.jsonl"
    source.write_bytes(b"".join(encode_line({
        "event_id": f"e{n}", "ts": f"2026-11-{10 + n}T10:00:00Z", "user_id": text, "tenant_id": "t",
        "use_case": "chat_tutor", "input_tokens": 100, "output_tokens": 10, "model": "gpt-4o", "provider": "openai",
    }) for n, text in enumerate(HOSTILE)))
    assert run("ingest", str(source)).exit_code == 0
    out = tmp_path / "out.csv"
    result = run("export", "--out", str(out), "--from", "2026-11-11", "--to", "2026-11-13")
    assert "Wrote 3 rows" in result.output
    with out.open(newline="") as f:
        exported = list(csv.DictReader(f))
    assert [r["user_id"] for r in exported] == ["'+1+2", "'-2+3", "'@SUM(A1)"]
    assert all(not cell.startswith(("=", "+", "-", "@")) for r in exported for cell in r.values())
    stored = dict(rows(settings, "SELECT event_id, cost_usd FROM usage_events"))
    assert {r["event_id"]: r["cost_usd"] for r in exported} == {k: str(v) for k, v in stored.items()
                                                                  if k in ("e1", "e2", "e3")}


def test_export_of_failed_logs_keeps_the_raw_text_neutralised(settings, tmp_path):
    source = tmp_path / "bad.jsonl"
    # A valid record first: a file with no record among its first lines is refused whole (tests/test_ingest_edges.py).
    source.write_text('{"ts": "2026-11-20T10:00:00Z", "user_id": "u", "tenant_id": "t", "use_case": "c"}\n'
                      "=cmd|' /C calc'!A0\n")
    run("ingest", str(source))
    out = tmp_path / "failed.csv"
    run("export", "--out", str(out), "--table", "failed_logs")
    with out.open(newline="") as f:
        exported = list(csv.DictReader(f))
    assert exported[0]["raw"] == "'=cmd|' /C calc'!A0" and "not valid JSON" in exported[0]["error"]


def test_ingest_reports_failures_and_a_missing_path_cleanly(settings, tmp_path):
    result = run("ingest", str(tmp_path / "missing.jsonl"))
    assert result.exit_code == 2 and "does not exist" in result.output
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"ts": "2026-11-20T10:00:00Z"}\n')
    result = run("ingest", str(bad))
    assert "failed 1" in result.output and "user_id" in result.output


def test_demo_loads_once_and_status_describes_the_store(settings):
    first = run("demo", "--days", "7", "--seed", "3")
    assert "stored" in first.output
    events = rows(settings, "SELECT count(*) FROM usage_events")[0][0]
    assert events > 500
    assert "already has events" in run("demo", "--if-empty").output
    status = run("status").output
    assert f"events:        {events:,}" in status
    assert "2 not recovered" in status
    use_cases = {r[0] for r in rows(settings, "SELECT DISTINCT use_case FROM usage_events")}
    assert use_cases == {"content_analyzer", "auto_populate", "chat_tutor", "scaffolder"}
    providers = {r[0] for r in rows(settings, "SELECT DISTINCT provider FROM usage_events")}
    assert {"openai", "anthropic", "x-ai", "google"} <= providers
    account_types = {r[0] for r in rows(settings, "SELECT DISTINCT account_type FROM usage_events")}
    assert account_types == {"student", "lesson_builder", "admin", "super_admin"}
    spike = rows(settings, "SELECT max(s) FROM (SELECT sum(cost_usd) s FROM usage_events GROUP BY day)")[0][0]
    assert spike > 10
    recovered = dict(rows(settings, "SELECT recovered, count(*) FROM failed_logs WHERE kind = 'fallback' GROUP BY 1"))
    assert recovered[True] > 0 and recovered[False] == 2


def test_rebuild_recreates_a_corrupt_store_from_the_files(settings, tmp_path):
    run("demo", "--days", "3")
    before = rows(settings, "SELECT count(*), sum(cost_usd) FROM usage_events")[0]
    settings.db_path.write_bytes(b"\x00garbage" * 5000)
    status = run("status")
    assert status.exit_code == 1 and "llmcost rebuild" in status.output
    result = run("rebuild", "--yes")
    assert "Rebuilt" in result.output
    assert rows(settings, "SELECT count(*), sum(cost_usd) FROM usage_events")[0] == before


def test_python_m_llmcost_works_like_llmcost(settings):
    result = subprocess.run([sys.executable, "-m", "llmcost", "--help"], capture_output=True, text=True)
    assert result.returncode == 0 and "ingest" in result.stdout and "check" in result.stdout


AUTO_INGEST_SCRIPT = textwrap.dedent("""
    from llmcost.sdk.tracker import Tracker
    tracker = Tracker(auto_ingest=True, auto_ingest_interval=60)
    for n in range(25):
        with tracker.call(use_case="chat_tutor", user_id="u", tenant_id="t", account_type="admin") as call:
            call.record(input_tokens=10, output_tokens=2)
""")


def test_auto_ingest_flushes_the_journal_into_the_store_at_exit(settings):
    subprocess.run([sys.executable, "-c", AUTO_INGEST_SCRIPT], check=True, timeout=120)
    assert rows(settings, "SELECT count(*) FROM usage_events")[0][0] == 25
    assert rows(settings, "SELECT count(*) FROM call_attempts")[0][0] == 25
    journal_lines = sum(len(p.read_bytes().splitlines()) for p in settings.journal_dir.glob("*.jsonl"))
    assert journal_lines == 50
