"""One rule, every surface: the tracker, `llmcost check`, the daily report and the dashboard agree on the same data.

One real store and one real control file are seeded with today's calls of users on every kind of limit
(including an admin over `alert_above_usd` but within the admin limit); each surface is then asked for
its judgement of each user, for the system-wide level and for today's spend as money.
"""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
from decimal import Decimal

import pytest

from llmcost import money
from llmcost.config import AccountLimit, load_settings
from llmcost.control.policy import judge_user
from llmcost.dashboard import limits
from llmcost.dashboard import queries as dq
from llmcost.errors import BudgetExceededError
from llmcost.monitor import reports
from llmcost.sdk.tracker import Tracker
from tests.monitoring_seed import event, insert

CONFIG = """
[system]
warning_usd = 1
critical_usd = 2
shutdown_usd = 100

[limits.student]
tokens = 10000
cost_usd = 0.05
action = "soft"

[limits.lesson_builder]
tokens = 100000
cost_usd = 0.50
action = "hard"

[limits.admin]
tokens = 500000
cost_usd = 2.50
action = "alert"
alert_above_usd = 0.10

[limits.super_admin]
action = "unlimited"
alert_above_usd = 0.20
"""

# user -> (account type, tokens today, cost today, the one judgement every surface must give)
USERS = {
    "stu-over": ("student", 12_000, "0.01", "warned"),
    "stu-fine": ("student", 500, "0.01", "none"),
    "builder": ("lesson_builder", 2_000, "0.60", "blocked"),
    "admin-above": ("admin", 1_000, "0.50", "alerted"),  # within the admin limit, over its alert_above_usd
    "admin-fine": ("admin", 1_000, "0.05", "none"),
    "boss": ("super_admin", 9_000_000, "0.30", "alerted"),
}
SPEND = sum(Decimal(cost) for _, _, cost, _ in USERS.values())  # $1.47: the warning level, not critical
LEVEL_OF = {"warned": "warning", "alerted": "warning", "blocked": "critical", "none": None}


@pytest.fixture
def seeded(tmp_path):
    (tmp_path / "llmcost.toml").write_text(CONFIG)
    settings = load_settings()
    settings.ensure_dirs()
    now = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)
    today = money.today_in(settings.tz)
    insert(settings.db_path, "usage_events", [
        event(now, cost, day=today, user_id=user, account_type=account_type, input_tokens=tokens, output_tokens=0)
        for user, (account_type, tokens, cost, _) in USERS.items()
    ])
    return settings, today


def cli(*args):
    return subprocess.run([sys.executable, "-m", "llmcost", *args], capture_output=True, text=True, timeout=120)


def test_every_surface_gives_the_same_judgement_level_and_money(seeded):
    settings, today = seeded
    expected = {user: judgement for user, (_, _, _, judgement) in USERS.items()}
    assert SPEND == Decimal("1.47")
    shown = money.money(SPEND)
    assert shown == "$1.47"

    # `llmcost check`: one alert per judged user, at the judgement's level; the system at warning.
    check = cli("check", "--format", "json")
    assert check.returncode in (1, 2), check.stderr
    alerts = json.loads(check.stdout)["alerts"]
    user_levels = {a["scope_id"]: a["level"] for a in alerts if a["scope"] == "user"}
    assert user_levels == {user: LEVEL_OF[j] for user, j in expected.items() if j != "none"}
    (system,) = [a for a in alerts if a["scope"] == "system" and a["scope_id"] == "all"]
    assert system["level"] == "warning" and shown in system["message"]

    # The daily report: each top user's daily limit, the day's level, and the same money.
    report = reports.daily(settings, today)
    assert {row["user_id"]: row["daily_limit"] for row in report.top_users} == expected
    assert report.days[0]["level"] == "warning"
    assert f"Cost: {shown}" in report.to_text()

    # The dashboard's Users and Budgets figures.
    data = dq.users(settings.db_path, today, dq.Filters(today, today))
    judged = limits.limit_usage(data.today, settings)
    assert {row.user_id: (row.action or "none") for row in judged.itertuples()} == expected
    assert dict(zip(judged["user_id"], judged["over_limit"])) == {u: j != "none" for u, j in expected.items()}
    system_today = limits.system_spend_today(settings, today)
    assert (system_today.level, money.money(system_today.spend)) == ("warning", shown)

    # The tracker's admission of one more (tiny) call from each user.
    tracker = Tracker(settings)
    try:
        for user, (account_type, _, _, judgement) in USERS.items():
            if judgement == "blocked":
                with pytest.raises(BudgetExceededError):
                    with tracker.call(use_case="chat_tutor", user_id=user, tenant_id="tenant-a",
                                      account_type=account_type, estimated_tokens=1):
                        pass
                continue
            with tracker.call(use_case="chat_tutor", user_id=user, tenant_id="tenant-a", account_type=account_type,
                              estimated_tokens=1) as call:
                decision = call.decision
            seen = ("none" if decision.reason is None else "alerted" if decision.alert
                    else "warned" if decision.action == "soft" else decision.action)
            assert seen == judgement, (user, decision)
            if user == "admin-above":
                assert decision.reason == "alert threshold exceeded: $0.50 of $0.10"
    finally:
        tracker.close()


@pytest.mark.parametrize(("limit", "tokens", "cost", "over", "action"), [
    (AccountLimit("admin", 100, Decimal("2.50"), "alert", Decimal("0.10")), 100, "2.50", ("alert_above_usd",),
     "alerted"),  # reaching the limit is not over it; the alert level still applies within it
    (AccountLimit("student", 100, Decimal("0.05"), "soft", Decimal("0.01")), 101, "0.06", ("tokens", "cost_usd"),
     "warned"),  # over the limit: the limit's action decides, not the alert level
    (AccountLimit("lesson_builder", None, Decimal("0.50"), "hard"), 10**9, "0.50", (), "none"),
    (AccountLimit("super_admin", None, None, "unlimited", Decimal("50")), 10**9, "50.01", ("alert_above_usd",),
     "alerted"),
    (AccountLimit("super_admin", None, None, "unlimited"), 10**9, "1000", (), "none"),
])
def test_judge_user_precedence(limit, tokens, cost, over, action):
    judgement = judge_user(limit, tokens, Decimal(cost))
    assert (judgement.over, judgement.action, judgement.over_limit) == (over, action, action != "none")
    assert judge_user(limit, tokens - 1, Decimal(cost), call_tokens=1) == judgement
