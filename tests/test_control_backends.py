"""One behaviour suite for both control-state backends: the SQLite file and a real redis-server."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import time
from decimal import Decimal

import pytest

from llmcost.config import Budget
from llmcost.control.backend import open_control
from llmcost.control.interface import Counter, Spend
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
    from llmcost.ingestion.run import ingest
    from llmcost.sdk.tracker import Tracker
    from llmcost.store.connection import reading

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
    journaled = [json.loads(line) for path in backend_settings.journal_dir.glob("*.jsonl")
                 for line in path.read_text().splitlines() if '"record":"attempt"' not in line.replace(" ", "")]
    assert {line["event_id"] for line in journaled} == {event.event_id}  # each journaled it under one id
    assert first.tracker.control.user_spend(racing[0].started_at.date(), "u1")[0] == 80
    for admission in (first, second):
        admission.tracker.close()
    ingest(backend_settings)
    with reading(backend_settings.db_path) as db:
        assert db.execute("SELECT count(*), sum(total_tokens) FROM usage_events").fetchone() == (1, 80)
    with pytest.raises(Refusal) as refused:  # a later retry hears it was settled
        second.settle({"reservation_id": reserved["reservation_id"], "input_tokens": 70, "output_tokens": 10})
    assert (refused.value.status, refused.value.reason) == (409, "already_settled")


@pytest.mark.parametrize("text, message", [
    ('[tenant_budgets.acme]\ncost_usd = "300"\nperiod = "week"',
     "tenant_budgets.acme.period = 'week': expected one of day, month"),
    ('[tenant_budgets.acme]\ncost_usd = "300"\naction = "unlimited"',
     "tenant_budgets.acme.action: 'unlimited' is not one of soft, hard, alert"),
    ('[use_case_budgets.chat_tutor]\nperiod = "day"', "use_case_budgets.chat_tutor: give cost_usd and/or tokens"),
    ('[key_budgets.my-secret-key]\ntokens = 5', "name a service key by its hash 'sha256:<hex>'"),
    ('[tenant_budgets.acme]\ncost_usd = "300"\nperoid = "month"', "did you mean 'period'"),
    ('control_backend = "redis"', "needs redis_url"),
    ('[limits.student]\nmonthly_tokns = 5', "unknown key 'limits.student.monthly_tokns' (did you mean 'monthly_tokens'"),
    ('[limits.student]\nmonthly_cost_usd = "-1"', "limits.student.monthly_cost_usd: '-1' must be a finite number >= 0"),
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
                      'period = "month"\naction = "hard"\n[limits.lesson_builder]\nmonthly_cost_usd = "9.50"\n')
    settings = load_settings(config=config)
    assert (settings.limits["lesson_builder"].monthly_cost_usd, settings.limits["lesson_builder"].cost_usd,
            settings.limits["student"].monthly_cost_usd) == (Decimal("9.50"), Decimal("0.50"), None)
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


# -- per-user monthly limits of an account type ---------------------------------------------------

def with_monthly(settings, account_type, **monthly):
    limits = dict(settings.limits)
    limits[account_type] = dataclasses.replace(limits[account_type], **monthly)
    return dataclasses.replace(settings, limits=limits)


def spend(control, settings, day, cost, tokens=100, **kw):
    settle_after_call(control, check(control, settings, tokens=tokens, cost=cost, day=day, **kw), tokens, Decimal(cost))


def test_user_over_the_monthly_hard_limit_is_refused_while_under_the_daily_one(control, backend_settings):
    settings = with_monthly(backend_settings, "lesson_builder", monthly_cost_usd=Decimal("1.00"))
    spend(control, settings, DAY - dt.timedelta(days=2), "0.45")
    spend(control, settings, DAY - dt.timedelta(days=1), "0.45")
    with pytest.raises(BudgetExceededError) as refused:
        check(control, settings, cost="0.20")  # $0.20 of today's $0.50, but $1.10 of the month's $1.00
    assert str(refused.value) == (
        "monthly budget exceeded for user 'u1' (account type 'lesson_builder') in 2026-03: $1.00 limit, $0.90 spent "
        "this month, this call needs ~$0.20 (raise monthly_cost_usd under [limits.lesson_builder] in llmcost.toml or "
        "wait until next month)")
    assert control.counter_spend(Counter("2026-03", "user", "u1")) == Spend(200, to_picodollars(Decimal("0.90")))
    assert control.user_spend(DAY, "u1") == (0, Decimal(0))  # the refused call reserved nothing
    check(control, settings, cost="0.10")  # up to the limit is fine
    check(control, settings, cost="0.20", user="u2")  # another user has a month of their own
    check(control, settings, cost="0.20", day=dt.date(2026, 4, 1))  # and a new month starts afresh


def test_user_over_the_monthly_soft_limit_is_warned(control, backend_settings):
    settings = with_monthly(backend_settings, "student", monthly_tokens=15_000)
    spend(control, settings, DAY - dt.timedelta(days=1), "0", tokens=9_000, account_type="student")
    decision = check(control, settings, tokens=7_000, cost="0", account_type="student")
    assert decision.allowed and decision.action == "soft"
    assert decision.reason == ("soft budget exceeded for user 'u1' (month 2026-03): 15,000 tokens limit, 9,000 used "
                               "this month, this call needs ~7,000")
    assert control.counter_spend(Counter("2026-03", "user", "u1")).tokens == 16_000  # reserved: it goes ahead


def journal_calls(settings, *calls):
    """Journal lines as a tracker writes them (tracker calls, with an attempt_id), not ingested yet."""
    import uuid

    from llmcost.events import UsageEvent

    with (settings.journal_dir / "host.jsonl").open("a") as f:
        for ts, tokens, cost in calls:
            event = UsageEvent(ts=ts, user_id="u1", tenant_id="t1", use_case="chat_tutor",
                               account_type="lesson_builder", provider="openai", model="gpt-4o-mini",
                               input_tokens=tokens, output_tokens=0, total_tokens=tokens, cost_usd=Decimal(cost),
                               price_source="price-table", attempt_id=str(uuid.uuid4()))
            f.write(event.model_dump_json(exclude_none=True) + "\n")


def test_rebuild_restores_a_users_month_from_journals_and_store(control, backend_settings):
    from llmcost.control.rebuild import rebuild_day
    from llmcost.ingestion.run import ingest

    settings = with_monthly(backend_settings, "lesson_builder", monthly_tokens=150_000)
    utc = dt.timezone.utc
    journal_calls(settings, (dt.datetime(2026, 3, 2, 12, tzinfo=utc), 80_000, "0.30"),
                  (dt.datetime(2026, 3, 13, 12, tzinfo=utc), 60_000, "0.10"),
                  (dt.datetime(2026, 2, 27, 12, tzinfo=utc), 90_000, "0.10"))  # another month
    month = Counter("2026-03", "user", "u1")
    assert control.counter_spend(month).tokens == 0  # a new control state knows nothing of them
    assert rebuild_day(control, settings, DAY, force=True)
    assert control.counter_spend(month) == Spend(140_000, to_picodollars(Decimal("0.40")))
    with pytest.raises(BudgetExceededError, match="monthly budget exceeded.*150,000 tokens limit, 140,000 used this "
                                                  "month, this call needs ~20,000"):
        check(control, settings, tokens=20_000, cost="0.01")
    ingest(settings)  # now in the store too: still counted once
    assert rebuild_day(control, settings, DAY, force=True)
    assert control.counter_spend(month) == Spend(140_000, to_picodollars(Decimal("0.40")))
    assert control.counter_spend(Counter("2026-02", "user", "u1")).tokens == 0  # not rebuilt: not this day's month


def test_users_month_rolls_at_the_boundary_in_the_configured_time_zone(control, backend_settings):
    from llmcost.control.rebuild import rebuild_day
    from llmcost.money import local_day

    settings = dataclasses.replace(with_monthly(backend_settings, "lesson_builder", tokens=500_000,
                                                monthly_tokens=100_000), timezone="America/New_York")
    last_march = dt.datetime(2026, 4, 1, 3, 30, tzinfo=dt.timezone.utc)  # 23:30 on March 31st in New York
    first_april = dt.datetime(2026, 4, 1, 4, 30, tzinfo=dt.timezone.utc)  # 00:30 on April 1st there
    journal_calls(settings, (last_march, 90_000, "0.10"))
    assert rebuild_day(control, settings, local_day(last_march, settings.tz), force=True)
    assert control.counter_spend(Counter("2026-03", "user", "u1")).tokens == 90_000
    with pytest.raises(BudgetExceededError, match="in 2026-03: 100,000 tokens limit, 90,000 used"):
        check(control, settings, tokens=20_000, day=local_day(last_march + dt.timedelta(minutes=20), settings.tz))
    check(control, settings, tokens=20_000, day=local_day(first_april, settings.tz))
    assert control.counter_spend(Counter("2026-04", "user", "u1")).tokens == 20_000


def test_users_month_in_budgets_check_and_the_dashboard_agree(backend_settings):
    from click.testing import CliRunner

    from llmcost.cli import cli
    from llmcost.control.budgets import budget_status
    from llmcost.dashboard.limits import budgets_table
    from llmcost.money import today_in
    from llmcost.monitor.alerts import evaluate
    from llmcost.sdk.tracker import Tracker

    settings = with_monthly(backend_settings, "lesson_builder", monthly_tokens=1_000)
    tracker = Tracker(settings)
    with tracker.call(use_case="chat_tutor", user_id="u1", tenant_id="t1", account_type="lesson_builder",
                      estimated_tokens=900) as call:  # within the month's limit when admitted
        call.record(input_tokens=1_100, output_tokens=100)
    tracker.close()
    today = today_in(settings.tz)
    month = f"{today:%Y-%m}"
    (row,) = budget_status(settings, today)
    assert (row.budget.scope, row.budget.name, row.period, row.tokens, row.remaining_tokens, row.over) == (
        "user", "u1", month, 1_200, 0, True)
    assert budgets_table(settings, today)[["scope", "name", "spent_tokens", "over"]].to_dict("records") == [
        {"scope": "user", "name": "u1", "spent_tokens": 1_200, "over": True}]
    assert budgets_table(settings, today, ("t1",)).empty  # a tenant-scoped viewer sees no user's month
    alert = next(a for a in evaluate(settings) if a.scope == "user_budget")
    assert (alert.level, alert.scope_id, alert.figure, alert.threshold) == (
        "critical", f"u1 {month}", Decimal(1_200), Decimal(1_000))
    assert alert.message == (f"User u1 spent 1,200 of 1,000 tokens in {month}: over its hard budget (calls in flight or "
                             "untracked got past the refusal).")
    with open(settings.home / "llmcost.toml", "w") as config:
        config.write(f'control_backend = "{settings.control_backend}"\nredis_url = "{settings.redis_url or ""}"\n'
                     "[limits.lesson_builder]\nmonthly_tokens = 1000\n")
    shown = CliRunner().invoke(cli, ["budgets", "--config", str(settings.home / "llmcost.toml")],
                               env={"LLMCOST_HOME": str(settings.home)})
    assert shown.exit_code == 0, shown.output
    line = next(line for line in shown.output.splitlines() if line.startswith("user"))
    assert line.split() == ["user", "u1", month, "hard", "1,000", "tok", "$0.0060", "/", "1,200", "tok", "0", "tok", "OVER"]


def test_money_above_2_to_the_53_picodollars_is_judged_exactly_at_the_limit(control, backend_settings):
    from llmcost.config import SystemLevels

    limit = Decimal("10000.000000000001")  # 10^16 + 1 picodollars: past 2^53, a double cannot hold it
    settings = dataclasses.replace(
        backend_settings, system=SystemLevels(Decimal("50000"), Decimal("50000"), Decimal("50000")),
        tenant_budgets={"acme": Budget("tenant", "acme", cost_usd=limit, period="month", action="hard")})
    big = check(control, settings, tenant="acme", account_type="super_admin", cost="0")
    settle_after_call(control, big, 10, Decimal("10000"))
    one_pico, two_pico = "0.000000000001", "0.000000000002"
    with pytest.raises(BudgetExceededError, match="tenant 'acme'"):
        check(control, settings, tenant="acme", account_type="super_admin", cost=two_pico)  # 1 picodollar over
    check(control, settings, tenant="acme", account_type="super_admin", cost=one_pico)  # exactly at the limit
    with pytest.raises(BudgetExceededError, match="tenant 'acme'"):
        check(control, settings, tenant="acme", account_type="super_admin", cost=one_pico)  # in flight: now 1 over
    assert control.counter_spend(Counter("2026-03", "tenant", "acme")).cost_pico == 10**16 + 1
    assert control.system_spend(DAY) == limit
