"""Threshold evaluation on a real seeded store: each level crossed and not crossed."""

from __future__ import annotations

import dataclasses
import datetime as dt
from decimal import Decimal

import pytest

from llmcost import money
from llmcost.events import UNATTRIBUTED
from llmcost.monitor import alerts
from tests.monitoring_seed import event, failed_log, insert

DAY = dt.date(2025, 3, 10)
NOON = dt.datetime(2025, 3, 10, 12, 0)


def system_alerts(found):
    return [a for a in found if a.scope == "system"]


@pytest.mark.parametrize(
    ("spend", "level"),
    [
        ("9.999999999999", None),
        ("10.00", "warning"),
        ("10.01", "warning"),
        ("49.99", "warning"),
        ("50.00", "critical"),
        ("199.99", "critical"),
        ("200.00", "shutdown"),
        ("250.00", "shutdown"),
    ],
)
def test_system_levels(settings, spend, level):
    # The spend is split over users and tenants; the other day's big spend must not count.
    insert(settings.db_path, "usage_events", [
        event(NOON, "1", user_id="a", account_type="super_admin"),
        event(NOON, Decimal(spend) - 1, user_id="b", tenant_id="tenant-b", account_type="super_admin"),
        event(NOON + dt.timedelta(days=1), "500", user_id="c", account_type="super_admin"),
    ])
    found = system_alerts(alerts.evaluate(settings, DAY))
    if level is None:
        assert found == []
        return
    assert len(found) == 1
    alert = found[0]
    assert (alert.level, alert.scope_id, alert.metric, alert.day) == (level, "all", "cost_usd", DAY)
    assert alert.figure == Decimal(spend)
    expected_threshold = {"warning": 10, "critical": 50, "shutdown": 200}[level]
    assert alert.threshold == Decimal(expected_threshold)


def test_system_message_reads_at_a_glance(settings):
    insert(settings.db_path, "usage_events", [event(NOON, "52.10", account_type="super_admin")])
    (alert,) = system_alerts(alerts.evaluate(settings, DAY))
    assert alert.message == "System-wide spend on 2025-03-10 is $52.10, above the critical level of $50.00."
    today = alerts.evaluate(settings, now=dt.datetime(2025, 3, 10, 18, tzinfo=dt.timezone.utc))
    assert system_alerts(today)[0].message.startswith("System-wide spend today is $52.10")


def test_shutdown_message_says_what_happens(settings):
    insert(settings.db_path, "usage_events", [event(NOON, "200", account_type="super_admin")])
    (alert,) = system_alerts(alerts.evaluate(settings, DAY))
    assert "at the emergency shutdown level of $200.00" in alert.message
    assert "refuses every call" in alert.message


def test_configured_system_levels_are_used(settings):
    custom = dataclasses.replace(settings, system=dataclasses.replace(settings.system, warning_usd=Decimal("1")))
    insert(settings.db_path, "usage_events", [event(NOON, "1.5", account_type="super_admin")])
    assert system_alerts(alerts.evaluate(settings, DAY)) == []
    assert system_alerts(alerts.evaluate(custom, DAY))[0].level == "warning"


def user_alert(found, user_id):
    matches = [a for a in found if a.scope == "user" and a.scope_id == user_id]
    assert len(matches) <= 1
    return matches[0] if matches else None


def test_student_soft_limit_on_tokens(settings):
    insert(settings.db_path, "usage_events", [
        # 6,000 + 4,001 tokens over two calls: over the 10,000 soft limit only when summed.
        event(NOON, "0.01", user_id="over", input_tokens=5000, output_tokens=1000),
        event(NOON, "0.01", user_id="over", input_tokens=4000, output_tokens=1),
        event(NOON, "0.01", user_id="exactly", input_tokens=9000, output_tokens=1000),
    ])
    found = alerts.evaluate(settings, DAY)
    alert = user_alert(found, "over")
    assert (alert.level, alert.metric, alert.figure, alert.threshold) == ("warning", "tokens", 10_001, 10_000)
    assert alert.message == ("User over (student) used 10,001 tokens on 2025-03-10, over the soft limit of "
                             "10,000 tokens; calls are still allowed.")
    assert user_alert(found, "exactly") is None


def test_lesson_builder_hard_limit_is_critical(settings):
    insert(settings.db_path, "usage_events", [
        event(NOON, "0.51", user_id="lb-over", account_type="lesson_builder"),
        event(NOON, "0.50", user_id="lb-at", account_type="lesson_builder"),
    ])
    found = alerts.evaluate(settings, DAY)
    alert = user_alert(found, "lb-over")
    assert (alert.level, alert.metric, alert.figure, alert.threshold) == ("critical", "cost_usd", Decimal("0.51"),
                                                                          Decimal("0.50"))
    assert "over the hard limit of $0.50; further calls are refused" in alert.message
    assert user_alert(found, "lb-at") is None


def test_admin_alert_only_and_super_admin_alert_level(settings):
    insert(settings.db_path, "usage_events", [
        event(NOON, "2.51", user_id="admin-over", account_type="admin"),
        event(NOON, "2.49", user_id="admin-under", account_type="admin"),
        event(NOON, "50.01", user_id="super-over", account_type="super_admin"),
        event(NOON, "49.99", user_id="super-under", account_type="super_admin"),
    ])
    found = alerts.evaluate(settings, DAY)
    admin = user_alert(found, "admin-over")
    assert (admin.level, admin.metric) == ("warning", "cost_usd")
    assert "alert-only limit of $2.50" in admin.message
    assert user_alert(found, "admin-under") is None
    boss = user_alert(found, "super-over")
    assert (boss.level, boss.figure, boss.threshold) == ("warning", Decimal("50.01"), Decimal("50"))
    assert boss.message == "User super-over (super_admin) spent $50.01 on 2025-03-10, above the alert level of $50.00."
    assert user_alert(found, "super-under") is None


def test_tokens_and_cost_both_over_give_one_alert_naming_both(settings):
    insert(settings.db_path, "usage_events", [event(NOON, "0.07", user_id="s", input_tokens=12_000, output_tokens=0)])
    alert = user_alert(alerts.evaluate(settings, DAY), "s")
    assert alert.metric == "cost_usd"
    assert "12,000 tokens and $0.07" in alert.message
    assert "soft limits of 10,000 tokens and $0.05" in alert.message


def test_unknown_or_missing_account_type_uses_the_default_limits(settings):
    insert(settings.db_path, "usage_events", [
        event(NOON, "0.06", user_id="mystery", account_type="intern"),
        event(NOON, "0.06", user_id="anonymous-type", account_type=None),
    ])
    found = alerts.evaluate(settings, DAY)
    assert user_alert(found, "mystery").threshold == Decimal("0.05")
    missing = user_alert(found, "anonymous-type")
    assert missing.threshold == Decimal("0.05")
    assert "no account type, treated as student" in missing.message


def test_latest_account_type_of_the_day_decides(settings):
    # Promoted to lesson_builder during the day: the hard $0.50 limit applies, not the student's $0.05.
    insert(settings.db_path, "usage_events", [
        event(NOON, "0.04", user_id="promoted", account_type="student"),
        event(NOON + dt.timedelta(hours=1), "0.04", user_id="promoted", account_type="lesson_builder"),
    ])
    assert user_alert(alerts.evaluate(settings, DAY), "promoted") is None


def test_unattributed_spend_is_not_a_user(settings):
    insert(settings.db_path, "usage_events", [event(NOON, "5", user_id=UNATTRIBUTED, account_type=None)])
    assert [a for a in alerts.evaluate(settings, DAY) if a.scope == "user"] == []


def test_unrecovered_failed_logs_raise_logging_alerts_by_kind(settings):
    logged = dt.datetime(2025, 3, 9, 8)
    insert(settings.db_path, "failed_logs", [
        failed_log(logged, kind="fallback"),
        failed_log(logged, kind="fallback"),
        failed_log(logged, kind="fallback", recovered=True, recovered_at=logged),
        failed_log(logged, kind="invalid", error="line 3: not JSON"),
    ])
    found = [a for a in alerts.evaluate(settings, DAY) if a.scope == "logging"]
    by_kind = {a.scope_id: a for a in found}
    assert set(by_kind) == {"fallback", "invalid"}
    assert by_kind["fallback"].figure == 2
    assert by_kind["fallback"].level == "warning"
    assert by_kind["fallback"].message.startswith("2 LLM calls failed to log (fallback, not recovered)")
    assert by_kind["invalid"].figure == 1


def test_no_store_no_alerts(settings):
    assert not settings.db_path.exists()
    assert alerts.evaluate(settings, DAY) == []


def test_alerts_sorted_highest_level_first(settings):
    insert(settings.db_path, "usage_events", [
        event(NOON, "0.06", user_id="student"),
        event(NOON, "60", user_id="boss", account_type="super_admin"),
    ])
    levels = [a.level for a in alerts.evaluate(settings, DAY)]
    assert levels == sorted(levels, key=lambda level: -alerts.LEVEL_RANK[level])
    assert levels[0] == "critical"


def test_today_follows_the_configured_time_zone(settings):
    berlin = dataclasses.replace(settings, timezone="Europe/Berlin")
    late_evening_utc = dt.datetime(2025, 3, 10, 23, 30, tzinfo=dt.timezone.utc)
    assert money.today_in(settings.tz, late_evening_utc) == dt.date(2025, 3, 10)
    assert money.today_in(berlin.tz, late_evening_utc) == dt.date(2025, 3, 11)


@pytest.mark.parametrize(
    ("amount", "shown"),
    [("0", "$0.00"), ("52.1", "$52.10"), ("1234567.891", "$1,234,567.89"), ("0.0042", "$0.0042"),
     ("0.000000001", "<$0.00000001"), ("-3.5", "-$3.50"), ("0.005", "$0.0050")],
)
def test_money_in_messages(amount, shown):
    assert money.money(Decimal(amount)) == shown


@pytest.mark.parametrize(
    ("figure", "threshold", "shown"),
    [("0.054", "0.05", "$0.0540"), ("50.00", "50", "$50.00"), ("50.0000001", "50", "$50.000000100"),
     ("52.1", "50", "$52.10")],
)
def test_amounts_beside_a_threshold_never_read_as_equal(figure, threshold, shown):
    assert money.money_against(Decimal(figure), Decimal(threshold)) == shown


def test_tenant_and_use_case_thresholds_from_the_config_file(tmp_path):
    from llmcost.config import load_settings

    config = tmp_path / "llmcost.toml"
    config.write_text('[tenant_daily_usd]\n"tenant-a" = "5"\n"*" = "20"\n[use_case_daily_usd]\nchat_tutor = "3.50"\n')
    settings = load_settings(config=config)
    insert(settings.db_path, "usage_events", [
        event(NOON, "4", tenant_id="tenant-a", use_case="scaffolder", account_type="super_admin"),
        event(NOON, "1.01", tenant_id="tenant-a", use_case="scaffolder", account_type="super_admin", user_id="b"),
        event(NOON, "19", tenant_id="tenant-b", use_case="chat_tutor", account_type="super_admin", user_id="c"),
        event(NOON, "3.50", tenant_id="tenant-c", use_case="auto_populate", account_type="super_admin", user_id="d"),
    ])
    found = {(a.scope, a.scope_id): a for a in alerts.evaluate(settings, DAY) if a.scope in ("tenant", "use_case")}
    # tenant-a: $5.01 > its own $5; tenant-b: $19 under the "*" $20; chat_tutor: $19 > $3.50; scaffolder: none set
    assert set(found) == {("tenant", "tenant-a"), ("use_case", "chat_tutor")}
    assert found[("tenant", "tenant-a")].figure == Decimal("5.01")
    assert found[("tenant", "tenant-a")].message == (
        "Tenant tenant-a spent $5.01 on 2025-03-10, above its daily threshold of $5.00.")
    assert found[("use_case", "chat_tutor")].threshold == Decimal("3.50")


def test_no_tenant_or_use_case_alert_without_thresholds(settings):
    insert(settings.db_path, "usage_events", [event(NOON, "150", account_type="super_admin")])
    assert [a for a in alerts.evaluate(settings, DAY) if a.scope in ("tenant", "use_case")] == []
