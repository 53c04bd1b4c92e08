"""Reports on a seeded store: every figure equals the one computed here from the raw rows."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import random
import re
from collections import defaultdict
from decimal import Decimal
from zoneinfo import ZoneInfo

import pytest
from click.testing import CliRunner

from llmcost.cli import monitor as cli_monitor
from llmcost.money import money
from llmcost.monitor import reports
from tests.monitoring_seed import event, failed_log, insert

ZONE = "America/New_York"
TZ = ZoneInfo(ZONE)
TZ_TOKYO = ZoneInfo("Asia/Tokyo")
DAY = dt.date(2025, 3, 20)
USE_CASES = ["content_analyzer", "auto_populate", "chat_tutor", "scaffolder", "<script>alert(1)</script>"]
MODELS = [("openai", "gpt-4o-mini"), ("anthropic", "claude-3-5-sonnet-20241022"), ("x-ai", "grok-2"), (None, None)]
ACCOUNT_TYPES = ["student", "lesson_builder", "admin", "super_admin"]


@pytest.fixture
def seeded(settings):
    """About 700 random calls over the 21 days ending on DAY, in New York time, plus failed logs and alerts."""
    s = dataclasses.replace(settings, timezone=ZONE)
    rng = random.Random(20250320)
    rows = []
    start = dt.datetime.combine(DAY - dt.timedelta(days=20), dt.time(), tzinfo=TZ)
    for _ in range(700):
        local = start + dt.timedelta(seconds=rng.randrange(21 * 86400))
        ts = local.astimezone(dt.timezone.utc).replace(tzinfo=None)
        provider, model = rng.choice(MODELS)
        input_tokens = rng.randrange(10, 5000)
        user = rng.randrange(30)
        rows.append(event(
            ts, Decimal(rng.randrange(1, 10**10)) / Decimal(10**12) * rng.choice([1, 10]),
            day=local.date(), user_id=f"user-{user}", tenant_id=f"tenant-{user % 6}",
            use_case=rng.choice(USE_CASES), account_type=ACCOUNT_TYPES[user % 4], provider=provider, model=model,
            input_tokens=input_tokens, output_tokens=rng.randrange(0, 2000),
            cache_read_tokens=rng.randrange(0, input_tokens), status=rng.choice(["ok"] * 9 + ["error"]),
        ))
    # One big day in the week so a threshold is crossed.
    big_day = DAY - dt.timedelta(days=2)
    big_ts = dt.datetime.combine(big_day, dt.time(15), tzinfo=TZ).astimezone(dt.timezone.utc).replace(tzinfo=None)
    rows.append(event(big_ts, "55.5", day=big_day, user_id="user-3", account_type="super_admin"))
    insert(s.db_path, "usage_events", rows)

    def utc(local_day, hour):
        return dt.datetime.combine(local_day, dt.time(hour), tzinfo=TZ).astimezone(dt.timezone.utc).replace(tzinfo=None)
    failed = [
        failed_log(utc(DAY, 0)),                                   # first hour of the local day
        failed_log(utc(DAY, 23), recovered=True, recovered_at=utc(DAY, 23)),
        failed_log(utc(DAY, 21), kind="invalid"),                  # 01:00 UTC the next day, still DAY in New York
        failed_log(utc(DAY + dt.timedelta(days=1), 0)),            # the next local day
        failed_log(utc(DAY - dt.timedelta(days=1), 23)),           # the local day before
    ]
    insert(s.db_path, "failed_logs", failed)
    alerts = [
        {"alert_id": f"a{i}", "raised_at": utc(day, 10), "day": day, "level": level, "scope": "system",
         "scope_id": "all", "metric": "cost_usd", "figure": "55.5", "threshold": "50", "message": message,
         "notifier": notifier, "delivered": True, "attempts": 1, "last_error": None}
        for i, (day, level, message, notifier) in enumerate([
            (big_day, "critical", "System-wide spend is $55.50, above the critical level.", "log"),
            (big_day, "critical", "System-wide spend is $55.50, above the critical level.", "slack"),
            (DAY, "warning", "User user-9 over the soft limit.", "log"),
        ])
    ]
    insert(s.db_path, "alerts", alerts)
    return s, rows, failed


def expected_totals(rows):
    return reports.Totals(
        calls=len(rows), error_calls=sum(r["status"] == "error" for r in rows),
        input_tokens=sum(r["input_tokens"] for r in rows), output_tokens=sum(r["output_tokens"] for r in rows),
        cached_tokens=sum(r["cache_read_tokens"] for r in rows), total_tokens=sum(r["total_tokens"] for r in rows),
        cost_usd=sum((Decimal(r["cost_usd"]) for r in rows), Decimal(0)),
    )


def grouped(rows, key):
    groups = defaultdict(lambda: {"calls": 0, "total_tokens": 0, "cost_usd": Decimal(0)})
    for r in rows:
        g = groups[key(r)]
        g["calls"] += 1
        g["total_tokens"] += r["total_tokens"]
        g["cost_usd"] += Decimal(r["cost_usd"])
    return dict(groups)


def in_period(rows, start, end):
    return [r for r in rows if start <= r["day"] <= end]


def test_daily_figures_match_the_raw_rows(seeded):
    s, rows, _ = seeded
    day_rows = in_period(rows, DAY, DAY)
    report = reports.daily(s, DAY)

    assert (report.kind, report.start, report.end, report.timezone) == ("daily", DAY, DAY, ZONE)
    assert report.totals == expected_totals(day_rows)
    assert report.totals.calls > 20

    by_use_case = grouped(day_rows, lambda r: r["use_case"])
    assert {r["use_case"]: {k: r[k] for k in ("calls", "total_tokens", "cost_usd")} for r in report.by_use_case} \
        == by_use_case
    costs = [r["cost_usd"] for r in report.by_use_case]
    assert costs == sorted(costs, reverse=True)

    by_model = grouped(day_rows, lambda r: (r["provider"], r["model"]))
    assert {(r["provider"], r["model"]): {k: r[k] for k in ("calls", "total_tokens", "cost_usd")}
            for r in report.by_model} == by_model

    users = grouped(day_rows, lambda r: r["user_id"])
    top = sorted(users.items(), key=lambda kv: (-kv[1]["cost_usd"], kv[0]))[:reports.TOP_N]
    assert [(r["user_id"], r["cost_usd"], r["calls"]) for r in report.top_users] == \
        [(u, g["cost_usd"], g["calls"]) for u, g in top]

    tenants = grouped(day_rows, lambda r: r["tenant_id"])
    users_per_tenant = defaultdict(set)
    for r in day_rows:
        users_per_tenant[r["tenant_id"]].add(r["user_id"])
    assert {r["tenant_id"]: (r["cost_usd"], r["users"]) for r in report.top_tenants} == {
        t: (g["cost_usd"], len(users_per_tenant[t])) for t, g in tenants.items()}

    # Failed logs by the local (New York) day of logged_at: the first three fixtures.
    assert (report.failed_logs, report.unrecovered_failed_logs) == (3, 2)
    assert [(a["level"], a["message"]) for a in report.alerts] == [("warning", "User user-9 over the soft limit.")]


def test_daily_threshold_line(seeded):
    s, rows, _ = seeded
    quiet = reports.daily(s, DAY)
    cost = expected_totals(in_period(rows, DAY, DAY)).cost_usd
    assert cost < 10
    assert quiet.threshold_line == (f"Threshold: spend of {money(cost)} stayed below the warning level "
                                    "of $10.00.")
    big_day = DAY - dt.timedelta(days=2)
    loud = reports.daily(s, big_day)
    assert loud.threshold_line.startswith("Threshold: spend of $")
    assert loud.threshold_line.endswith("crossed the critical level of $50.00.")
    assert len(loud.alerts) == 1  # the same alert through two notifiers is listed once


def test_weekly_per_day_totals_and_change(seeded):
    s, rows, _ = seeded
    start = DAY - dt.timedelta(days=6)
    report = reports.weekly(s, DAY)
    assert (report.kind, report.start, report.end) == ("weekly", start, DAY)

    week = in_period(rows, start, DAY)
    before = in_period(rows, start - dt.timedelta(days=7), DAY - dt.timedelta(days=7))
    assert report.totals == expected_totals(week)
    assert report.previous == expected_totals(before)

    per_day = grouped(week, lambda r: r["day"])
    assert [d["day"] for d in report.days] == [start + dt.timedelta(days=i) for i in range(7)]
    for d in report.days:
        assert (d["calls"], d["total_tokens"], d["cost_usd"]) == (
            per_day[d["day"]]["calls"], per_day[d["day"]]["total_tokens"], per_day[d["day"]]["cost_usd"])
        assert d["level"] == ("critical" if d["day"] == DAY - dt.timedelta(days=2) else None)

    this, last = expected_totals(week), expected_totals(before)
    expected_change = ((this.cost_usd - last.cost_usd) * 100 / last.cost_usd).quantize(Decimal("0.1"))
    assert report.changes["cost_usd"] == expected_change
    assert report.changes["calls"] == (Decimal(this.calls - last.calls) * 100 / last.calls).quantize(Decimal("0.1"))
    assert report.threshold_line.startswith("Threshold: 1 of 7 days crossed a level (highest: critical): 2025-03-18")


def test_empty_week_has_no_change_and_zero_figures(settings):
    report = reports.weekly(settings, DAY)
    assert report.totals == reports.Totals()
    assert report.changes == {"calls": None, "total_tokens": None, "cost_usd": None}
    assert "n/a (nothing the week before)" in report.to_text()
    assert [d["calls"] for d in report.days] == [0] * 7


def test_default_days_are_yesterday_in_the_configured_zone(settings):
    tokyo = dataclasses.replace(settings, timezone="Asia/Tokyo")
    before = dt.datetime.now(TZ_TOKYO).date() - dt.timedelta(days=1)
    daily, weekly = reports.daily(tokyo), reports.weekly(tokyo)
    after = dt.datetime.now(TZ_TOKYO).date() - dt.timedelta(days=1)
    assert daily.start in {before, after}  # both equal unless midnight passed in between
    assert (weekly.start, weekly.end) == (daily.start - dt.timedelta(days=6), daily.start)


def test_json_keeps_money_exact(seeded):
    s, rows, _ = seeded
    data = json.loads(reports.daily(s, DAY).to_json())
    assert Decimal(data["totals"]["cost_usd"]) == expected_totals(in_period(rows, DAY, DAY)).cost_usd
    assert data["start"] == DAY.isoformat()
    assert sum(Decimal(r["cost_usd"]) for r in data["by_use_case"]) == Decimal(data["totals"]["cost_usd"])


def test_text_report_lists_totals_and_tables(seeded):
    s, rows, _ = seeded
    text = reports.daily(s, DAY).to_text()
    totals = expected_totals(in_period(rows, DAY, DAY))
    assert f"Calls: {totals.calls:,} ({totals.error_calls:,} failed)" in text
    assert f"cached {totals.cached_tokens:,}" in text
    for heading in ("By use case", "By provider and model", "Top 10 users", "Top 10 tenants", "Alerts raised"):
        assert heading in text


def test_html_is_self_contained_and_escaped(seeded):
    s, _, _ = seeded
    page = reports.weekly(s, DAY).to_html()
    assert "<script>" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert not re.search(r"\b(src|href)=|<link|<style|<img|@import", page)
    assert 'style="' in page and "<table" in page
    message = reports.weekly(s, DAY).message()
    assert message.subject.startswith("[llmcost] LLM usage report for the week 2025-03-14 to 2025-03-20: $")
    assert message.html == page


def test_cli_report_daily_json(seeded):
    s, rows, _ = seeded
    result = CliRunner().invoke(cli_monitor.report, ["daily", "--date", DAY.isoformat(), "--format", "json",
                                                     "--db", str(s.db_path)], env={"LLMCOST_TIMEZONE": ZONE})
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["totals"]["calls"] == len(in_period(rows, DAY, DAY))
    assert data["timezone"] == ZONE


def test_cli_report_weekly_html_and_notify_without_notifiers(seeded):
    s, _, _ = seeded
    result = CliRunner().invoke(cli_monitor.report, ["weekly", "--date", DAY.isoformat(), "--format", "html",
                                                     "--notify"], obj={"db": str(s.db_path)})
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("<html>")
    assert "No e-mail or Slack notifier is configured" in result.stderr


def test_cli_rejects_a_bad_date(settings):
    result = CliRunner().invoke(cli_monitor.report, ["daily", "--date", "20/03/2025"])
    assert result.exit_code == 2
    assert "20/03/2025" in result.output
