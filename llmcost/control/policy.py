"""The policy: the one judgement of a user's daily limit, the one system-wide level, and the check before a call.

`judge_user` and `system_level` are pure (no I/O): the tracker's admission, `llmcost check`'s alerts, the
reports and the dashboard all call them, so they agree on the same figures. Before each tracked call,
`check_before_call` applies the kill switch, then emergency shutdown, then the user's budget; every call
that passes holds its estimate as a reservation in the control state and settles it with the actual
figures afterwards (`settle_after_call`), so system and per-user spend include calls in flight.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from decimal import Decimal

from llmcost.config import AccountLimit, Settings
from llmcost.control.state import ControlState, Reservation
from llmcost.errors import SpendingHaltedError, UseCaseDisabledError
from llmcost.money import money, money_against, number

# What happens to a user over the limit of their account type, by the limit's action.
ACTION_TAKEN = {"soft": "warned", "hard": "blocked", "alert": "alerted"}
# How loud an alert about it is: over a hard limit means calls got through the refusal (in flight, or untracked).
ACTION_LEVEL = {"warned": "warning", "alerted": "warning", "blocked": "critical"}


@dataclass(frozen=True)
class UserJudgement:
    """Where a user's day stands against the limit of their account type.

    `over` names what was exceeded: `tokens` and/or `cost_usd` (the limit), or `alert_above_usd` (the
    alert level, checked when the limit itself is not exceeded: an unlimited type's only check, and an
    extra one on any type that sets it). `action` is `none`, `warned`, `blocked` or `alerted`.
    """

    limit: AccountLimit
    tokens: int
    cost: Decimal
    over: tuple[str, ...]
    action: str
    reason: str | None

    @property
    def over_limit(self) -> bool:
        return self.action != "none"

    @property
    def level(self) -> str | None:
        """The alert level this judgement raises (`warning`, `critical`), None when within every limit."""
        return ACTION_LEVEL.get(self.action)

    @property
    def limit_tokens(self) -> int | None:
        return None if self.limit.action == "unlimited" else self.limit.tokens

    @property
    def limit_cost_usd(self) -> Decimal | None:
        """The cost the user is measured against: the limit's, or an unlimited type's alert level."""
        return self.limit.alert_above_usd if self.limit.action == "unlimited" else self.limit.cost_usd

    @property
    def used_share(self) -> Decimal | None:
        """The larger of the token and cost shares of the limit (1 means reached); None without a limit."""
        shares = []
        if self.limit_tokens:
            shares.append(Decimal(self.tokens) / Decimal(self.limit_tokens))
        if self.limit_cost_usd:
            shares.append(self.cost / self.limit_cost_usd)
        return max(shares) if shares else None

    @property
    def measure(self) -> tuple[str, Decimal, Decimal] | None:
        """The (metric, figure, threshold) an alert reports: cost when over on cost, else tokens."""
        if "cost_usd" in self.over:
            return "cost_usd", self.cost, self.limit.cost_usd
        if "tokens" in self.over:
            return "tokens", Decimal(self.tokens), Decimal(self.limit.tokens)
        if "alert_above_usd" in self.over:
            return "cost_usd", self.cost, self.limit.alert_above_usd
        return None


def judge_user(limit: AccountLimit, tokens: int, cost: Decimal, *, call_tokens: int = 0,
               call_cost: Decimal = Decimal(0)) -> UserJudgement:
    """Judge a user's tokens and cost of the day, plus a call's estimate when judging before that call.

    A figure is over when it goes past the limit (reaching it is fine). The limit (soft, hard, alert) decides
    first; only within it does `alert_above_usd` apply, on any account type that sets it.
    """
    tokens, cost = int(tokens) + int(call_tokens), Decimal(cost) + Decimal(call_cost)
    if limit.action in ACTION_TAKEN:
        over, shown = [], []
        if limit.tokens is not None and tokens > limit.tokens:
            over.append("tokens")
            shown.append(f"{number(tokens)} of {number(limit.tokens)} tokens")
        if limit.cost_usd is not None and cost > limit.cost_usd:
            over.append("cost_usd")
            shown.append(f"{money_against(cost, limit.cost_usd)} of {money(limit.cost_usd)}")
        if over:
            return UserJudgement(limit, tokens, cost, tuple(over), ACTION_TAKEN[limit.action],
                                 f"{limit.action} limit exceeded: {', '.join(shown)}")
    if limit.alert_above_usd is not None and cost > limit.alert_above_usd:
        reason = (f"alert threshold exceeded: {money_against(cost, limit.alert_above_usd)} of "
                  f"{money(limit.alert_above_usd)}")
        return UserJudgement(limit, tokens, cost, ("alert_above_usd",), "alerted", reason)
    return UserJudgement(limit, tokens, cost, (), "none", None)


def system_level(settings: Settings, spend: Decimal) -> tuple[str, Decimal] | None:
    """The highest system-wide level (warning, critical, shutdown) a day's spend has reached, with its threshold.

    Reaching a level counts, as the tracker's emergency shutdown does; None below the warning level.
    """
    levels = settings.system
    for name, threshold in (("shutdown", levels.shutdown_usd), ("critical", levels.critical_usd),
                            ("warning", levels.warning_usd)):
        if spend >= threshold:
            return name, threshold
    return None


@dataclass(frozen=True)
class BudgetDecision:
    """The outcome of `check_before_call` for a call that may proceed.

    `reason` says which limit or threshold the call goes past (`judge_user`: a soft limit only warns);
    `alert` is set when that should be recorded as an alert (the judgement's action is `alerted`).
    Refused calls never get a decision: `check_before_call` raises instead, so `allowed` is True here.
    """

    allowed: bool
    action: str
    reason: str | None
    reservation: Reservation | None
    alert: bool


def check_before_call(
    control: ControlState,
    settings: Settings,
    *,
    day: dt.date,
    user_id: str,
    tenant_id: str,
    use_case: str,
    account_type: str | None,
    estimated_tokens: int,
    estimated_cost: Decimal,
) -> BudgetDecision:
    """Check kill switch, shutdown and budget in that order, and reserve the call's estimate.

    Raises UseCaseDisabledError, SpendingHaltedError, or BudgetExceededError (hard limits only).
    """
    disabled_reason = control.disabled_reason(use_case)
    if disabled_reason is not None:
        raise UseCaseDisabledError(
            f"use case {use_case!r} is disabled: {disabled_reason} "
            f"(run `llmcost enable {use_case}` to turn it back on)"
        )
    halt_reason = control.halt_reason(day, settings.system.shutdown_usd)
    if halt_reason is not None:
        raise SpendingHaltedError(
            f"all LLM calls are halted for {day.isoformat()}: {halt_reason} "
            "(run `llmcost resume` to allow calls again today, or wait until tomorrow)"
        )

    limit = settings.limit_for(account_type)
    limited = limit.action != "unlimited"
    reservation = control.reserve(
        day, user_id, tenant_id, use_case, estimated_tokens, estimated_cost,
        limit_tokens=limit.tokens if limited else None,
        limit_cost=limit.cost_usd if limited else None,
        enforce=limit.action == "hard",
        account_type=limit.account_type,
    )
    judgement = judge_user(limit, reservation.spent_tokens_before, reservation.spent_cost_before,
                           call_tokens=reservation.tokens, call_cost=reservation.cost)
    return BudgetDecision(True, limit.action, judgement.reason, reservation, alert=judgement.action == "alerted")


def settle_after_call(control: ControlState, decision: BudgetDecision, actual_tokens: int, actual_cost: Decimal) -> bool:
    """Swap the call's reserved estimate for its actual figures; False when already settled."""
    if decision.reservation is None:
        return False
    return control.settle(decision.reservation, actual_tokens, actual_cost)


def release_after_refusal(control: ControlState, decision: BudgetDecision) -> bool:
    """Drop the reservation of a call that was refused after the check (it never reached the provider)."""
    if decision.reservation is None:
        return False
    return control.release(decision.reservation)
