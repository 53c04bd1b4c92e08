import dataclasses
import datetime as dt
from decimal import Decimal

import pytest

from llmcost.config import AccountLimit, load_settings
from llmcost.control.policy import BudgetDecision, check_before_call, release_after_refusal, settle_after_call
from llmcost.control.state import ControlState
from llmcost.errors import BudgetExceededError, SpendingHaltedError, UseCaseDisabledError

DAY = dt.date(2025, 3, 14)

CONFIG = """
[system]
warning_usd = 1
critical_usd = 2
shutdown_usd = 5

[limits.student]
tokens = 10000
cost_usd = 0.05
action = "soft"

[limits.lesson_builder]
tokens = 100000
cost_usd = 0.50
action = "hard"
"""


@pytest.fixture
def settings(tmp_path, monkeypatch):
    monkeypatch.setenv("LLMCOST_HOME", str(tmp_path))
    config = tmp_path / "llmcost.toml"
    config.write_text(CONFIG)
    return load_settings(config=config)


@pytest.fixture
def control(settings):
    with ControlState(settings.control_db) as state:
        yield state


def check(control, settings, *, tokens=100, cost="0.001", user="u1", account_type="student", use_case="chat_tutor",
          day=DAY):
    return check_before_call(
        control, settings, day=day, user_id=user, tenant_id="t1", use_case=use_case,
        account_type=account_type, estimated_tokens=tokens, estimated_cost=Decimal(cost),
    )


def call(control, settings, *, tokens, cost, **kw):
    decision = check(control, settings, tokens=tokens, cost=cost, **kw)
    assert settle_after_call(control, decision, tokens, Decimal(cost))
    return decision


def test_a_call_within_limits_is_allowed_and_reserved(control, settings):
    decision = check(control, settings, tokens=500, cost="0.002")
    assert isinstance(decision, BudgetDecision)
    assert (decision.allowed, decision.action, decision.reason, decision.alert) == (True, "soft", None, False)
    assert control.user_spend(DAY, "u1") == (500, Decimal("0.002"))
    assert settle_after_call(control, decision, 450, Decimal("0.0018")) is True
    assert settle_after_call(control, decision, 450, Decimal("0.0018")) is False
    assert control.user_spend(DAY, "u1") == (450, Decimal("0.0018"))
    assert control.in_flight() == 0


def test_disabled_use_case_is_refused_with_the_fix(control, settings):
    control.disable("chat_tutor", "cost spike under investigation")
    with pytest.raises(UseCaseDisabledError) as refused:
        check(control, settings)
    assert str(refused.value) == ("use case 'chat_tutor' is disabled: cost spike under investigation "
                                  "(run `llmcost enable chat_tutor` to turn it back on)")
    assert control.in_flight() == 0
    assert check(control, settings, use_case="scaffolder").allowed


def test_kill_switch_is_checked_before_the_halt(control, settings):
    control.disable("chat_tutor", "off")
    control.halt(DAY, "outage")
    with pytest.raises(UseCaseDisabledError):
        check(control, settings)
    with pytest.raises(SpendingHaltedError, match="outage"):
        check(control, settings, use_case="scaffolder")


def test_spending_halts_at_the_shutdown_level_until_resume(control, settings):
    call(control, settings, tokens=0, cost="4.999999999999", account_type="super_admin", user="big")
    assert check(control, settings).allowed  # a picodollar below $5; this call's reservation takes it past
    with pytest.raises(SpendingHaltedError) as refused:
        check(control, settings, user="someone-else", account_type="super_admin")
    message = str(refused.value)
    assert "2025-03-14" in message and "$5.00" in message and "llmcost resume" in message
    assert check(control, settings, day=DAY + dt.timedelta(days=1)).allowed
    control.resume(DAY)
    assert check(control, settings).allowed


def test_hard_limit_blocks_with_the_user_type_limit_and_fix(control, settings):
    call(control, settings, tokens=1000, cost="0.49", account_type="lesson_builder")
    with pytest.raises(BudgetExceededError) as refused:
        check(control, settings, tokens=1000, cost="0.02", account_type="lesson_builder")
    message = str(refused.value)
    for part in ("'u1'", "'lesson_builder'", "$0.50 limit", "$0.49 spent", "[limits.lesson_builder]", "tomorrow"):
        assert part in message
    assert control.user_spend(DAY, "u1") == (1000, Decimal("0.49"))
    decision = check(control, settings, tokens=1000, cost="0.01", account_type="lesson_builder")
    assert (decision.action, decision.reason) == ("hard", None)


def test_soft_limit_allows_with_a_warning(control, settings):
    call(control, settings, tokens=9_000, cost="0.01")
    decision = check(control, settings, tokens=3_000, cost="0.01")
    assert decision.allowed and not decision.alert
    assert decision.reason == "soft limit exceeded: 12,000 of 10,000 tokens"
    both = check(control, settings, tokens=1, cost="0.04")
    assert both.reason == "soft limit exceeded: 12,001 of 10,000 tokens, $0.06 of $0.05"


def test_alert_limit_allows_and_raises_an_alert(control, settings):
    call(control, settings, tokens=0, cost="2.40", account_type="admin")
    assert check(control, settings, tokens=0, cost="0.10", account_type="admin").reason is None
    decision = check(control, settings, tokens=0, cost="0.01", account_type="admin")
    assert (decision.allowed, decision.action, decision.alert) == (True, "alert", True)
    assert decision.reason == "alert limit exceeded: $2.51 of $2.50"


def test_unlimited_account_alerts_only_above_its_threshold(control, settings):
    call(control, settings, tokens=10**8, cost="4", account_type="super_admin")  # default alert above $50
    decision = check(control, settings, tokens=10**8, cost="0.5", account_type="super_admin")
    assert (decision.action, decision.reason, decision.alert) == ("unlimited", None, False)
    low_threshold = dataclasses.replace(settings, limits={
        **settings.limits, "super_admin": AccountLimit("super_admin", None, None, "unlimited", Decimal("4"))})
    decision = check(control, low_threshold, tokens=1, cost="0.25", account_type="super_admin")
    assert decision.alert and decision.reason == "alert threshold exceeded: $4.75 of $4.00"


def test_unknown_account_type_gets_the_default_limit(control, settings):
    call(control, settings, tokens=10_000, cost="0")
    decision = check(control, settings, tokens=1, cost="0", account_type="visitor")
    assert decision.action == "soft" and decision.reason == "soft limit exceeded: 10,001 of 10,000 tokens"
    assert control.user_spend(DAY, "u1")[0] == 10_001


def test_release_after_refusal_drops_the_estimate(control, settings):
    decision = check(control, settings, tokens=700, cost="0.003")
    assert release_after_refusal(control, decision) is True
    assert control.user_spend(DAY, "u1") == (0, Decimal("0"))
    assert settle_after_call(control, decision, 700, Decimal("0.003")) is False
