"""One behaviour suite for both control-state backends: the SQLite file and a real redis-server."""

from __future__ import annotations

import dataclasses
import datetime as dt
import time
from decimal import Decimal

import pytest

from llmcost.config import Budget
from llmcost.control.backend import open_control
from llmcost.control.interface import Counter
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


@pytest.mark.parametrize("text, message", [
    ('[tenant_budgets.acme]\ncost_usd = "300"\nperiod = "week"',
     "tenant_budgets.acme.period = 'week': expected one of day, month"),
    ('[tenant_budgets.acme]\ncost_usd = "300"\naction = "unlimited"',
     "tenant_budgets.acme.action: 'unlimited' is not one of soft, hard, alert"),
    ('[use_case_budgets.chat_tutor]\nperiod = "day"', "use_case_budgets.chat_tutor: give cost_usd and/or tokens"),
    ('[key_budgets.my-secret-key]\ntokens = 5', "name a service key by its hash 'sha256:<hex>'"),
    ('[tenant_budgets.acme]\ncost_usd = "300"\nperoid = "month"', "did you mean 'period'"),
    ('control_backend = "redis"', "needs redis_url"),
    ('control_backend = "memcached"', "control_backend = 'memcached': expected one of sqlite, redis"),
])
def test_budget_and_backend_settings_are_checked(tmp_path, text, message):
    from llmcost.config import load_settings
    from llmcost.errors import ConfigError

    config = tmp_path / "llmcost.toml"
    config.write_text(text)
    with pytest.raises(ConfigError, match=message.replace("(", "\\(").replace(")", "\\)").replace(".", "\\.")):
        load_settings(config=config)


def test_budgets_and_backend_from_file_and_environment(tmp_path, monkeypatch):
    from llmcost.config import load_settings

    config = tmp_path / "llmcost.toml"
    config.write_text('redis_url = "redis://file:6379/0"\n[tenant_budgets."northside-high"]\ncost_usd = "300"\n'
                      'period = "month"\naction = "hard"\n')
    settings = load_settings(config=config)
    assert settings.control_backend == "sqlite"
    assert settings.tenant_budgets == {"northside-high": Budget("tenant", "northside-high", None, Decimal("300"),
                                                               "month", "hard")}
    monkeypatch.setenv("LLMCOST_CONTROL_BACKEND", "redis")
    monkeypatch.setenv("LLMCOST_REDIS_URL", "redis://env:6379/1")
    settings = load_settings(config=config)
    assert (settings.control_backend, settings.redis_url) == ("redis", "redis://env:6379/1")


def test_redis_down_is_a_control_state_error_naming_the_fix(settings):
    from llmcost.errors import ControlStateError

    from .redis_server import _free_port

    down = dataclasses.replace(settings, control_backend="redis", redis_url=f"redis://127.0.0.1:{_free_port()}/0")
    with pytest.raises(ControlStateError, match="Redis at redis://127.0.0.1:.*failed.*start Redis or fix redis_url"):
        open_control(down)
    control = open_control(down, lazy=True)
    with pytest.raises(ControlStateError):
        check(control, down)


def test_a_budget_over_its_limit_is_an_alert_in_check(control, backend_settings):
    from llmcost.control.rebuild import rebuild_day
    from llmcost.money import today_in
    from llmcost.monitor.alerts import evaluate

    settings = dataclasses.replace(backend_settings, use_case_budgets={
        "chat_tutor": Budget("use_case", "chat_tutor", tokens=1_000, period="month", action="alert")})
    today = today_in(settings.tz)
    rebuild_day(control, settings, today)
    decision = check(control, settings, tokens=900, account_type="super_admin", day=today)
    settle_after_call(control, decision, 1_200, Decimal("0.01"))
    alert = next(a for a in evaluate(settings) if a.scope == "use_case_budget")
    assert (alert.level, alert.scope_id, alert.figure, alert.threshold) == (
        "warning", f"chat_tutor {today:%Y-%m}", Decimal(1_200), Decimal(1_000))
    assert alert.message == f"Use case chat_tutor spent 1,200 of 1,000 tokens in {today:%Y-%m}: over its alert budget."


def test_service_key_budget_through_the_collector_and_from_the_store(backend_settings):
    from llmcost.collector.admission import Admission, Refusal
    from llmcost.control.rebuild import rebuild_day
    from llmcost.ingestion.run import ingest
    from llmcost.money import today_in
    from llmcost.sdk.tracker import Tracker

    settings = dataclasses.replace(backend_settings, key_budgets={
        "sha256:ab": Budget("key", "sha256:ab", tokens=1_000, period="month", action="hard")})
    admission = Admission(Tracker(settings))
    identity = {"user_id": "u1", "tenant_id": "t1", "account_type": "super_admin"}
    reserved = admission.reserve(identity, {"use_case": "chat_tutor", "estimated_tokens": 600}, service_key="sha256:ab")
    admission.settle({"reservation_id": reserved["reservation_id"], "input_tokens": 500, "output_tokens": 100})
    with pytest.raises(Refusal) as refused:
        admission.reserve(identity, {"use_case": "chat_tutor", "estimated_tokens": 600}, service_key="sha256:ab")
    assert refused.value.status == 429 and "key 'sha256:ab'" in refused.value.body["error"]
    admission.reserve(identity, {"use_case": "chat_tutor", "estimated_tokens": 600})  # another key (or none)
    admission.tracker.close()
    ingest(settings)
    today = today_in(settings.tz)
    with open_control(settings) as control:
        rebuild_day(control, settings, today, force=True)
        assert control.counter_spend(Counter(f"{today:%Y-%m}", "key", "sha256:ab")).tokens == 600
