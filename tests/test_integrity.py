"""Integrity checks: every check finds nothing on clean data and exactly the seeded problems otherwise."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
from decimal import Decimal

import pytest
from click.testing import CliRunner

from llmcost.cli import monitor as cli_monitor
from llmcost.monitor import integrity
from llmcost.store.connection import reading
from tests.monitoring_seed import attempt, event, failed_log, insert

NOW = dt.datetime(2025, 3, 10, 12, 0, tzinfo=dt.timezone.utc)
TODAY = NOW.date()
CHECKS = ["coverage", "stale_attempts", "failed_logs", "estimate_mismatch", "use_cases", "default_rate",
          "reconciliation", "service_tier"]


def naive(moment: dt.datetime) -> dt.datetime:
    return moment.astimezone(dt.timezone.utc).replace(tzinfo=None)


def seed_clean(settings, now=NOW):
    """Each configured use case called an hour ago through the tracker: attempt, then its usage event."""
    attempts, events = [], []
    for i, use_case in enumerate(settings.use_cases):
        when = naive(now) - dt.timedelta(hours=1, minutes=i)
        a = attempt(when, use_case=use_case, estimated_tokens=1000, user_id=f"clean-{i}")
        attempts.append(a)
        events.append(event(when, "0.01", use_case=use_case, attempt_id=a["attempt_id"], estimated_tokens=1000,
                            input_tokens=900, output_tokens=250, user_id=f"clean-{i}"))  # 15% over the estimate
    # A call in flight right now (10 s old) is not a problem; nor is a recovered failed log.
    attempts.append(attempt(naive(now) - dt.timedelta(seconds=10)))
    insert(settings.db_path, "call_attempts", attempts)
    insert(settings.db_path, "usage_events", events)
    insert(settings.db_path, "failed_logs", [failed_log(naive(now), recovered=True, recovered_at=naive(now))])
    return attempts, events


def test_every_check_is_clear_on_clean_data(settings):
    seed_clean(settings)
    report = integrity.run_checks(settings, now=NOW)
    assert [c.name for c in report.checks] == CHECKS
    for check in report.checks:
        assert check.count == 0, (check.name, check.summary)
        assert check.level in ("ok", "skipped"), check.name
    assert report.alerts == []
    assert (report.level, report.exit_code) == ("ok", 0)
    coverage = report.check("coverage").rows
    today = coverage[coverage["day"] == TODAY].iloc[0]
    assert (today["attempted"], today["logged"], today["never_logged"], today["in_flight"]) == (6, 5, 0, 1)
    assert len(coverage) == integrity.CHECK_WINDOW_DAYS


def test_unlogged_attempts_are_counted_per_day_and_listed_as_stale(settings):
    seed_clean(settings)
    two_days_ago = naive(NOW) - dt.timedelta(days=2)
    lost_today = attempt(naive(NOW) - dt.timedelta(minutes=5), use_case="scaffolder", estimated_tokens=800)
    lost_earlier = attempt(two_days_ago, use_case="auto_populate")
    too_old = attempt(naive(NOW) - dt.timedelta(days=10))
    just_stale = attempt(naive(NOW) - dt.timedelta(seconds=61), use_case="chat_tutor")
    insert(settings.db_path, "call_attempts", [lost_today, lost_earlier, too_old, just_stale])

    report = integrity.run_checks(settings, now=NOW)
    coverage = report.check("coverage")
    assert (coverage.level, coverage.count) == ("warning", 3)
    per_day = coverage.rows.set_index("day")
    assert per_day.loc[TODAY, "never_logged"] == 2
    assert per_day.loc[two_days_ago.date(), "never_logged"] == 1
    assert per_day.loc[TODAY, "attempted_estimated_tokens"] == 5 * 1000 + 150 + 800 + 150

    stale = report.check("stale_attempts")
    assert (stale.level, stale.count) == ("warning", 3)
    listed = stale.rows.set_index("attempt_id")
    assert set(listed.index) == {lost_today["attempt_id"], lost_earlier["attempt_id"], just_stale["attempt_id"]}
    assert listed.loc[lost_today["attempt_id"], "age_seconds"] == 300
    assert listed.loc[lost_today["attempt_id"], "use_case"] == "scaffolder"
    assert listed.loc[just_stale["attempt_id"], "age_seconds"] == 61
    assert "3 potential unlogged LLM calls" in stale.summary

    unlogged = [a for a in report.alerts if a.scope_id == "unlogged_calls"]
    assert len(unlogged) == 1 and unlogged[0].figure == 3
    assert report.exit_code == 1


def test_the_stale_threshold_is_configurable(settings):
    seed_clean(settings)
    insert(settings.db_path, "call_attempts", [attempt(naive(NOW) - dt.timedelta(seconds=90))])
    assert integrity.run_checks(settings, now=NOW).check("stale_attempts").count == 1
    patient = dataclasses.replace(settings, stale_attempt_seconds=120)
    assert integrity.run_checks(patient, now=NOW).check("stale_attempts").count == 0


def test_unrecovered_failed_logs_grouped_by_error(settings):
    seed_clean(settings)
    disk_full = "OSError: [Errno 28] No space left on device"
    insert(settings.db_path, "failed_logs", [
        failed_log(naive(NOW), error=disk_full, estimated_tokens=100),
        failed_log(naive(NOW) - dt.timedelta(hours=2), error=disk_full, estimated_tokens=200),
        failed_log(naive(NOW), kind="invalid", error="line 7: input_tokens: Input should be >= 0",
                   estimated_tokens=None),
    ])
    report = integrity.run_checks(settings, now=NOW)
    check = report.check("failed_logs")
    assert (check.level, check.count) == ("warning", 3)
    rows = check.rows.set_index("error")
    assert rows.loc[disk_full, "records"] == 2
    assert rows.loc[disk_full, "estimated_tokens"] == 300
    assert rows.loc[disk_full, "first_logged_at"] == naive(NOW) - dt.timedelta(hours=2)
    assert rows.loc["line 7: input_tokens: Input should be >= 0", "kind"] == "invalid"
    assert {a.scope_id for a in report.alerts if a.scope == "logging"} == {"fallback", "invalid"}


def test_estimate_mismatches_over_the_ratio(settings):
    seed_clean(settings)
    when = naive(NOW) - dt.timedelta(hours=3)
    over = event(when, estimated_tokens=1000, input_tokens=1000, output_tokens=301, user_id="a")   # +30.1%
    under = event(when, estimated_tokens=1000, input_tokens=700, output_tokens=99, user_id="b")    # -20.1%
    edge = event(when, estimated_tokens=1000, input_tokens=1000, output_tokens=200, user_id="c")   # exactly +20%
    guessed = event(when, estimated_tokens=1000, input_tokens=5000, usage_estimated=True, user_id="d")
    insert(settings.db_path, "usage_events", [over, under, edge, guessed])

    report = integrity.run_checks(settings, now=NOW)
    check = report.check("estimate_mismatch")
    assert (check.level, check.count) == ("info", 2)
    assert report.exit_code == 0  # mismatches inform; they alone do not fail the check
    ratios = dict(zip(check.rows["event_id"], check.rows["ratio"]))
    assert ratios == {over["event_id"]: pytest.approx(0.301), under["event_id"]: pytest.approx(-0.201)}
    assert "2 of 8 calls with an estimate" in check.summary
    # The estimated-usage call is never compared; a stricter ratio also flags the clean calls (15% over).
    strict = dataclasses.replace(settings, estimate_mismatch_ratio=Decimal("0.10"))
    assert integrity.run_checks(strict, now=NOW).check("estimate_mismatch").count == 3 + 5


def test_silent_use_cases(settings):
    s = dataclasses.replace(settings, use_cases=("chat_tutor", "scaffolder", "quiz_maker", "auto_populate"))
    insert(s.db_path, "usage_events", [
        event(naive(NOW) - dt.timedelta(days=1), use_case="chat_tutor"),
        event(naive(NOW) - dt.timedelta(days=3), use_case="scaffolder"),
        event(naive(NOW) - dt.timedelta(days=2, minutes=-1), use_case="auto_populate"),  # just inside 2 days
        event(naive(NOW) - dt.timedelta(hours=1), use_case="legacy_grader"),
    ])
    report = integrity.run_checks(s, now=NOW)
    check = report.check("use_cases")
    assert (check.level, check.count) == ("warning", 2)
    rows = check.rows.set_index("use_case")
    assert list(rows.index) == ["chat_tutor", "scaffolder", "quiz_maker", "auto_populate", "legacy_grader"]
    assert rows.loc["scaffolder", "silent"] and rows.loc["quiz_maker", "silent"]
    assert not rows.loc["chat_tutor", "silent"] and not rows.loc["auto_populate", "silent"]
    assert rows.loc["scaffolder", "days_since_last_call"] == 3.0
    assert rows.loc["scaffolder", "last_call_at"] == naive(NOW) - dt.timedelta(days=3)
    assert not rows.loc["legacy_grader", "configured"] and not rows.loc["legacy_grader", "silent"]
    messages = {a.scope_id: a.message for a in report.alerts if a.scope == "use_case"}
    assert messages == {
        "scaffolder": "Use case scaffolder has not logged a call for 3 days (reported after 2 days).",
        "quiz_maker": "Use case quiz_maker has never logged a call (reported after 2 days).",
    }


def test_default_rate_events_with_their_models(settings):
    seed_clean(settings)
    when = naive(NOW) - dt.timedelta(hours=2)
    insert(settings.db_path, "usage_events", [
        event(when, "0.005", provider="acme", model="acme-large-v9", price_source="default-rate"),
        event(when, "0.010", provider="acme", model="acme-large-v9", price_source="default-rate"),
        event(when, "0.002", provider="local", model="llama-finetune", price_source="default-rate"),
        event(naive(NOW) - dt.timedelta(days=30), model="ancient", price_source="default-rate"),
    ])
    report = integrity.run_checks(settings, now=NOW)
    check = report.check("default_rate")
    assert (check.level, check.count) == ("warning", 3)
    rows = check.rows.set_index("model")
    assert rows.loc["acme-large-v9", "calls"] == 2
    assert rows.loc["acme-large-v9", "cost_usd"] == Decimal("0.015")
    assert "ancient" not in rows.index
    assert "acme/acme-large-v9, local/llama-finetune" in check.summary
    assert any(a.scope_id == "default_rate_pricing" for a in report.alerts)


def test_reconciliation_runs_when_an_export_is_given(settings, tmp_path):
    seed_clean(settings)
    export = tmp_path / "usage.csv"
    export.write_text(f"date,model,requests\n{TODAY},gpt-4o-mini,4\n")
    check = integrity.run_checks(settings, now=NOW, export=export).check("reconciliation")
    assert (check.level, check.count) == ("warning", 1)
    assert list(check.rows["ours_requests"]) == [5]
    export.write_text(f"date,model,requests\n{TODAY},gpt-4o-mini,5\n")
    assert integrity.run_checks(settings, now=NOW, export=export).check("reconciliation").level == "ok"


@pytest.mark.parametrize(("spend", "code", "level"), [("9", 0, "ok"), ("10", 1, "warning"), ("60", 2, "critical"),
                                                       ("200", 2, "shutdown")])
def test_exit_code_is_the_highest_level(settings, spend, code, level):
    seed_clean(settings)
    insert(settings.db_path, "usage_events", [event(naive(NOW), spend, account_type="super_admin", user_id="boss")])
    report = integrity.run_checks(settings, now=NOW)
    assert (report.level, report.exit_code) == (level, code)


def test_empty_store_reports_silent_use_cases_only(settings):
    report = integrity.run_checks(settings, now=NOW)
    assert {c.name: c.count for c in report.checks if c.count} == {"use_cases": 5}
    assert report.exit_code == 1
    assert not settings.db_path.exists()  # checking never creates the store


def test_text_and_json_output(settings):
    seed_clean(settings)
    insert(settings.db_path, "call_attempts", [attempt(naive(NOW) - dt.timedelta(minutes=5), use_case="scaffolder")])
    report = integrity.run_checks(settings, now=NOW)
    text = report.to_text()
    assert text.startswith("llmcost check for 2025-03-10: WARNING (exit code 1)")
    assert "2. Stale in-flight attempts (older than 60 s) [WARNING]" in text
    assert "scaffolder" in text
    data = json.loads(report.to_json())
    assert data["exit_code"] == 1
    stale = next(c for c in data["checks"] if c["name"] == "stale_attempts")
    assert stale["count"] == 1 and stale["rows"][0]["use_case"] == "scaffolder"


def test_cli_check_exit_codes_and_notify_records_alerts(settings):
    now = dt.datetime.now(dt.timezone.utc)
    seed_clean(settings, now)
    runner = CliRunner()
    clean = runner.invoke(cli_monitor.check, ["--db", str(settings.db_path)])
    assert clean.exit_code == 0, clean.output

    insert(settings.db_path, "usage_events", [event(naive(now), "75", account_type="super_admin", user_id="boss")])
    loud = runner.invoke(cli_monitor.check, ["--format", "json", "--notify"], obj={"db": str(settings.db_path)})
    assert loud.exit_code == 2, loud.output
    data = json.loads(loud.stdout)
    assert data["level"] == "critical"
    with reading(settings.db_path) as db:
        rows = db.execute("SELECT level, scope, scope_id, notifier, delivered FROM alerts ORDER BY scope").fetchall()
    assert ("critical", "system", "all", "log", True) in rows
    assert ("warning", "user", "boss", "log", True) in rows


def test_cli_check_reconciles_an_export(settings, tmp_path):
    now = dt.datetime.now(dt.timezone.utc)
    seed_clean(settings, now)
    day = now.date()
    export = tmp_path / "usage.csv"
    export.write_text(f"date,model,requests\n{day - dt.timedelta(days=1)},gpt-4o-mini,0\n{day},gpt-4o-mini,3\n")
    result = CliRunner().invoke(cli_monitor.check, ["--export", str(export), "--db", str(settings.db_path)])
    # The five clean calls of the last hour never add up to 3 today and 0 the day before.
    assert "7. Reconciliation with the provider's usage export [WARNING]" in result.stdout
    assert result.exit_code == 1, result.output


def test_cli_check_that_cannot_run_exits_3(settings):
    settings.db_path.write_bytes(b"this is not a DuckDB file" * 100)
    result = CliRunner().invoke(cli_monitor.check, ["--db", str(settings.db_path)])
    assert result.exit_code == 3
    assert "llmcost rebuild" in result.output


def test_cli_check_with_a_bad_config_exits_3(settings, tmp_path):
    config = tmp_path / "llmcost.toml"
    config.write_text('timezone = "Mars/Olympus_Mons"\n')
    result = CliRunner().invoke(cli_monitor.check, ["--config", str(config)])
    assert result.exit_code == 3
    assert "unknown time zone 'Mars/Olympus_Mons'" in result.output
