"""One behaviour suite for both control-state backends: the SQLite file and a real redis-server."""

from __future__ import annotations

import dataclasses
import datetime as dt
import time
from decimal import Decimal

import pytest

from llmcost.config import Budget
from llmcost.control.interface import Counter, open_control
from llmcost.control.policy import check_before_call, release_after_refusal, settle_after_call
from llmcost.errors import BudgetExceededError, SpendingHaltedError, UseCaseDisabledError
from llmcost.money import to_picodollars

DAY = dt.date(2026, 3, 14)


@pytest.fixture(params=["sqlite", "redis"])
def backend_settings(request, settings):
    if request.param == "redis":
        server = request.getfixturevalue("redis_server")
        return dataclasses.replace(settings, control_backend="redis", redis_url=server.url)
    return settings


@pytest.fixture
def control(backend_settings):
    state = open_control(backend_settings)
    yield state
    state.close()


def check(control, settings, *, tokens=100, cost="0.01", user="u1", tenant="t1", use_case="chat_tutor",
          account_type="lesson_builder", day=DAY, **kw):
    return check_before_call(control, settings, day=day, user_id=user, tenant_id=tenant, use_case=use_case,
                             account_type=account_type, estimated_tokens=tokens, estimated_cost=Decimal(cost), **kw)


def test_reserve_settle_release(control, backend_settings):
    decision = check(control, backend_settings, tokens=1_000, cost="0.10")
    assert control.user_spend(DAY, "u1") == (1_000, Decimal("0.1"))  # in flight counts
    assert settle_after_call(control, decision, 800, Decimal("0.08"))
    assert not settle_after_call(control, decision, 800, Decimal("0.08"))  # exactly once
    assert control.user_spend(DAY, "u1") == (800, Decimal("0.08"))
    assert control.system_spend(DAY) == Decimal("0.08")
    held = check(control, backend_settings, tokens=500, cost="0.05")
    assert control.user_spend(DAY, "u1") == (1_300, Decimal("0.13"))
    assert release_after_refusal(control, held)
    assert not release_after_refusal(control, held)
    assert control.user_spend(DAY, "u1") == (800, Decimal("0.08"))
    assert control.in_flight() == 0


def test_kill_switch_refuses_until_enabled(control, backend_settings):
    control.disable("chat_tutor", "runaway loop", by="ops")
    assert control.disabled()["chat_tutor"]["reason"] == "runaway loop"
    with pytest.raises(UseCaseDisabledError, match="runaway loop.*llmcost enable chat_tutor"):
        check(control, backend_settings)
    check(control, backend_settings, use_case="auto_populate")  # other use cases go on
    assert control.enable("chat_tutor")
    assert not control.enable("chat_tutor")
    check(control, backend_settings)


def test_halt_and_shutdown_level_refuse_until_resumed(control, backend_settings):
    control.halt(DAY, "provider outage")
    with pytest.raises(SpendingHaltedError, match="provider outage.*llmcost resume"):
        check(control, backend_settings)
    control.resume(DAY)
    spend = check(control, backend_settings, account_type="super_admin", cost="0")
    settle_after_call(control, spend, 10, backend_settings.system.shutdown_usd)  # reaches the shutdown level
    control.halt(DAY, "again")
    control.resume(DAY)
    assert control.halt_reason(DAY, backend_settings.system.shutdown_usd) is None  # resumed: lifted for the day
    other_day = DAY + dt.timedelta(days=1)
    spend = check(control, backend_settings, account_type="super_admin", cost="0", day=other_day)
    settle_after_call(control, spend, 10, backend_settings.system.shutdown_usd)
    with pytest.raises(SpendingHaltedError, match="emergency shutdown level of \\$200.00"):
        check(control, backend_settings, day=other_day)


def test_hard_user_limit_refuses_and_records_nothing(control, backend_settings):
    check(control, backend_settings, tokens=60_000)
    with pytest.raises(BudgetExceededError, match="user 'u1' \\(account type 'lesson_builder'\\).*100,000 tokens limit, "
                                                  "60,000 used today"):
        check(control, backend_settings, tokens=60_000)
    assert control.user_spend(DAY, "u1")[0] == 60_000
    check(control, backend_settings, tokens=60_000, user="u2")  # another user has a day of their own


def test_tenant_monthly_budget_spans_days_and_resets_next_month(control, backend_settings):
    settings = dataclasses.replace(backend_settings, tenant_budgets={
        "northside-high": Budget("tenant", "northside-high", cost_usd=Decimal("3"), period="month", action="hard")})
    first = check(control, settings, tenant="northside-high", account_type="super_admin", cost="2", day=DAY)
    settle_after_call(control, first, 10, Decimal("2"))
    later = DAY + dt.timedelta(days=3)
    with pytest.raises(BudgetExceededError, match="tenant 'northside-high' \\(month 2026-03\\).*\\$3.00 limit, \\$2.00 "
                                                  "spent this month.*tenant_budgets"):
        check(control, settings, tenant="northside-high", account_type="super_admin", cost="1.5", day=later)
    check(control, settings, tenant="other", account_type="super_admin", cost="1.5", day=later)
    check(control, settings, tenant="northside-high", account_type="super_admin", cost="2.5",
          day=dt.date(2026, 4, 1))
    assert control.counter_spend(Counter("2026-03", "tenant", "northside-high")).cost_pico == to_picodollars(Decimal(2))


def test_soft_use_case_budget_warns_and_key_budget_refuses(control, backend_settings):
    settings = dataclasses.replace(
        backend_settings,
        use_case_budgets={"chat_tutor": Budget("use_case", "chat_tutor", tokens=1_000, period="day", action="soft")},
        key_budgets={"sha256:ab": Budget("key", "sha256:ab", tokens=1_500, period="day", action="hard")})
    decision = check(control, settings, tokens=1_200, account_type="super_admin", service_key="sha256:ab")
    assert decision.allowed and "soft budget exceeded for use case 'chat_tutor' (today)" in decision.reason
    with pytest.raises(BudgetExceededError, match="key 'sha256:ab'.*key_budgets"):
        check(control, settings, tokens=400, account_type="super_admin", service_key="sha256:ab")
    check(control, settings, tokens=400, account_type="super_admin")  # without that key: only a warning


def test_stale_reservations_stop_counting(control, backend_settings, tracker):
    settings = dataclasses.replace(backend_settings, reservation_ttl_seconds=1)
    check(control, settings, tokens=90_000)  # its process "dies": never settled
    tracker.settings, tracker.control = settings, control
    time.sleep(2.2)
    decision = tracker.admit(day=DAY, user_id="u1", tenant_id="t1", use_case="chat_tutor",
                             account_type="lesson_builder", estimated_tokens=20_000, estimated_cost=Decimal("0.01"))
    assert decision.allowed
    assert control.user_spend(DAY, "u1")[0] == 20_000


def test_budgets_table_and_status_agree_with_admission(control, backend_settings):
    from llmcost.control.budgets import budget_status
    from llmcost.control.rebuild import rebuild_day
    from llmcost.dashboard.limits import budgets_table
    from llmcost.money import today_in

    settings = dataclasses.replace(backend_settings, tenant_budgets={
        "acme": Budget("tenant", "acme", tokens=5_000, cost_usd=Decimal("1"), period="month", action="hard")})
    today = today_in(settings.tz)
    rebuild_day(control, settings, today)  # as a tracker does before its first call of the day
    decision = check(control, settings, tenant="acme", tokens=2_000, cost="0.25", day=today)
    settle_after_call(control, decision, 1_500, Decimal("0.20"))
    table = budgets_table(settings, today)
    assert table.to_dict("records") == [{
        "scope": "tenant", "name": "acme", "period": f"{today:%Y-%m}", "action": "hard", "limit_usd": Decimal("1"),
        "limit_tokens": 5_000, "spent_usd": Decimal("0.2"), "spent_tokens": 1_500, "remaining_usd": Decimal("0.8"),
        "remaining_tokens": 3_500, "over": False}]
    assert budget_status(settings, today)[0].tokens == 1_500


def test_two_collector_instances_settling_one_reservation_record_it_once(backend_settings):
    from llmcost.collector.admission import Admission, Refusal
    from llmcost.sdk.tracker import Tracker

    first, second = Admission(Tracker(backend_settings)), Admission(Tracker(backend_settings))
    reserved = first.reserve({"user_id": "u1", "tenant_id": "t1", "account_type": None},
                             {"use_case": "chat_tutor", "model": "gpt-4o-mini", "estimated_tokens": 100})
    racing = [admission._resumed(reserved["reservation_id"]) for admission in (first, second)]  # both saw it open
    for call in racing:
        call.record(input_tokens=70, output_tokens=10)
    event = second._finish(racing[1], None)
    with pytest.raises(Refusal) as refused:
        first._finish(racing[0], None)
    assert refused.value.status == 409 and event.total_tokens == 80
    journaled = [line for path in backend_settings.journal_dir.glob("*.jsonl") for line in path.read_text().splitlines()
                 if '"record":"attempt"' not in line.replace(" ", "")]
    assert len(journaled) == 1
    assert first.tracker.control.user_spend(racing[0].started_at.date(), "u1")[0] == 80
