"""The policy: the one judgement of a user's daily limit, the one system-wide level, and the check before a call.

`judge_user` and `system_level` are pure (no I/O): the tracker's admission, `llmcost check`'s alerts, the
reports and the dashboard all call them, so they agree on the same figures. Before each tracked call,
`check_before_call` applies the kill switch, then emergency shutdown, then the user's limit and the tenant's,
use case's and service key's budgets (by day or calendar month): `admission_request` states them in whole
tokens and picodollars, and the control state's backend (SQLite or Redis) applies them and reserves the
call's estimate in one atomic step; this module words the refusal or the warning. Every call that passes
settles its reservation with the actual figures afterwards (`settle_after_call`), so every figure includes
calls in flight.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from llmcost.config import BUDGET_SCOPES, AccountLimit, Budget, Settings
from llmcost.control.interface import AdmissionRequest, Admitted, Counter, Reservation, ScopeLimit, Spend, is_day, period_key
from llmcost.errors import BudgetExceededError, SpendingHaltedError, UseCaseDisabledError
from llmcost.money import from_picodollars, money, money_against, number, to_picodollars

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
    `local` is set instead of `reservation` for a call admitted on a lease (`llmcost.control.lease.Share`):
    settled and released through it.
    """

    allowed: bool
    action: str
    reason: str | None
    reservation: Reservation | None
    alert: bool
    local: Any = None


def user_month_budget(limit: AccountLimit, user_id: str) -> Budget | None:
    """A user's calendar-month limit by their account type (`monthly_tokens`, `monthly_cost_usd`), with the
    type's action; None when the type sets neither or is unlimited."""
    if limit.action not in ACTION_TAKEN or (limit.monthly_tokens is None and limit.monthly_cost_usd is None):
        return None
    return Budget("user", user_id, limit.monthly_tokens, limit.monthly_cost_usd, "month", limit.action)


def user_months_limited(settings: Settings) -> bool:
    """Whether any account type has a monthly limit (so users' month counters are kept, shown and alerted)."""
    return any(user_month_budget(limit, "") is not None for limit in settings.limits.values())


def applicable_budgets(settings: Settings, *, tenant_id: str, use_case: str, service_key: str | None,
                       user_id: str | None = None, account_type: str | None = None) -> list[Budget]:
    """The budgets beyond the user's day configured for a call's identity: the user's month (when
    `user_id` is given and their account type has one), then the tenant's, use case's and service key's."""
    found = [user_month_budget(settings.limit_for(account_type), user_id) if user_id is not None else None,
             settings.tenant_budgets.get(tenant_id), settings.use_case_budgets.get(use_case)]
    if service_key:
        found.append(settings.key_budgets.get(service_key))
    return [budget for budget in found if budget is not None]


def budget_label(budget: Budget, day: dt.date) -> str:
    key = period_key(budget.period, day)
    return f"{budget.scope.replace('_', ' ')} {budget.name!r} ({'today' if budget.period == 'day' else f'month {key}'})"


def admission_request(settings: Settings, *, day: dt.date, user_id: str, tenant_id: str, use_case: str,
                      account_type: str | None, estimated_tokens: int, estimated_cost: Decimal,
                      service_key: str | None = None, details: dict | None = None,
                      reservation_id: str | None = None) -> AdmissionRequest:
    """Every limit that applies to a call, in whole tokens and picodollars: the user's day first (even when its
    account type is unlimited, so its spend comes back for `alert_above_usd`), then the user's month and the
    scopes' budgets."""
    limit = settings.limit_for(account_type)
    limited = limit.action != "unlimited"
    user = Counter(day.isoformat(), "user", user_id)
    limits = [ScopeLimit(user, limit.tokens if limited else None,
                         to_picodollars(limit.cost_usd) if limited and limit.cost_usd is not None else None,
                         limit.action, f"user {user_id!r} (account type {limit.account_type!r})")]
    for budget in applicable_budgets(settings, tenant_id=tenant_id, use_case=use_case, service_key=service_key,
                                     user_id=user_id, account_type=account_type):
        limits.append(ScopeLimit(
            Counter(period_key(budget.period, day), budget.scope, budget.name), budget.tokens,
            to_picodollars(budget.cost_usd) if budget.cost_usd is not None else None, budget.action,
            budget_label(budget, day)))
    shutdown = settings.system.shutdown_usd
    return AdmissionRequest(
        day=day, user_id=user_id, tenant_id=tenant_id, use_case=use_case, account_type=limit.account_type,
        tokens=_whole(estimated_tokens), cost_pico=to_picodollars(estimated_cost),
        shutdown_pico=to_picodollars(shutdown) if shutdown is not None else None, limits=tuple(limits),
        counters=(user, Counter(day.isoformat(), "system", ""), *(item.counter for item in limits[1:])),
        ttl_seconds=settings.reservation_ttl_seconds, details=dict(details or {}), reservation_id=reservation_id)


def _whole(tokens: int) -> int:
    if isinstance(tokens, bool) or not isinstance(tokens, int) or tokens < 0:
        raise ValueError(f"estimated tokens must be a whole number >= 0, got {tokens!r}")
    return tokens


def over_limit(item: ScopeLimit, spent: Spend, tokens: int, cost_pico: int) -> list[str]:
    """What a call's estimate would take past a limit, worded for the message (empty when within it).

    The backends apply the same comparison (spent + estimate > limit) in their atomic step."""
    period = "today" if is_day(item.counter.period) else "this month"
    over = []
    if item.tokens is not None and spent.tokens + tokens > item.tokens:
        over.append(f"{item.tokens:,} tokens limit, {spent.tokens:,} used {period}, this call needs ~{tokens:,}")
    if item.cost_pico is not None and spent.cost_pico + cost_pico > item.cost_pico:
        over.append(f"{money(from_picodollars(item.cost_pico))} limit, {money(from_picodollars(spent.cost_pico))} "
                    f"spent {period}, this call needs ~{money(from_picodollars(cost_pico))}")
    return over


def refusal(request: AdmissionRequest, admitted: Admitted) -> Exception:
    """The error that tells a refused caller why, and what lifts the refusal."""
    day = request.day.isoformat()
    if admitted.refused == "disabled":
        return UseCaseDisabledError(f"use case {request.use_case!r} is disabled: {admitted.reason} "
                                    f"(run `llmcost enable {request.use_case}` to turn it back on)")
    if admitted.refused == "halted":
        reason = admitted.reason or shutdown_reason(day, from_picodollars(admitted.system.cost_pico),
                                                    from_picodollars(request.shutdown_pico))
        return SpendingHaltedError(f"all LLM calls are halted for {day}: {reason} "
                                   "(run `llmcost resume` to allow calls again today, or wait until tomorrow)")
    item = request.limits[admitted.over]
    spent = admitted.spent[admitted.over]
    over = over_limit(item, spent, request.tokens, request.cost_pico)
    figures = {"scope": item.counter.scope, "name": item.counter.name, "period": item.counter.period,
               "limit_tokens": item.tokens, "spent_tokens": spent.tokens, "estimated_tokens": request.tokens,
               "limit_usd": None if item.cost_pico is None else str(from_picodollars(item.cost_pico)),
               "spent_usd": str(from_picodollars(spent.cost_pico)),
               "estimated_usd": str(from_picodollars(request.cost_pico))}
    if item.counter.scope == "user":
        who = f"for user {request.user_id!r} (account type {request.account_type!r})"
        if is_day(item.counter.period):
            return BudgetExceededError(
                f"daily budget exceeded {who} on {day}: {'; '.join(over)} (raise [limits.{request.account_type}] in "
                "llmcost.toml or wait until tomorrow)", figures)
        keys = " / ".join(key for key, limit in (("monthly_tokens", item.tokens), ("monthly_cost_usd", item.cost_pico))
                          if limit is not None)
        return BudgetExceededError(
            f"monthly budget exceeded {who} in {item.counter.period}: {'; '.join(over)} (raise {keys} under "
            f"[limits.{request.account_type}] in llmcost.toml or wait until next month)", figures)
    table = BUDGET_SCOPES[item.counter.scope]
    wait = "tomorrow" if is_day(item.counter.period) else "next month"
    return BudgetExceededError(f"budget exceeded for {item.label}: {'; '.join(over)} (raise "
                               f"[{table}.\"{item.counter.name}\"] in llmcost.toml or wait until {wait})", figures)


def shutdown_reason(day: str, spent: Decimal, shutdown_usd: Decimal) -> str:
    return (f"system-wide spend on {day} is {money_against(spent, shutdown_usd)}, "
            f"at or above the emergency shutdown level of {money(shutdown_usd)}")


def halt_reason(day: str, reason: str | None, resumed: bool, shutdown_usd: Decimal | None,
                system_spend: Callable[[], Decimal]) -> str | None:
    """Why a day's calls are refused: a resume lifts everything, then a manual halt, then spend at the shutdown
    level (`system_spend` is asked only then); None when calls are allowed. Both control backends call this."""
    if resumed:
        return None
    if reason is not None:
        return reason
    if shutdown_usd is None:
        return None
    spent = system_spend()
    return shutdown_reason(day, spent, shutdown_usd) if spent >= shutdown_usd else None


def check_before_call(
    control,
    settings: Settings,
    *,
    day: dt.date,
    user_id: str,
    tenant_id: str,
    use_case: str,
    account_type: str | None,
    estimated_tokens: int,
    estimated_cost: Decimal,
    service_key: str | None = None,
    details: dict | None = None,
    reservation_id: str | None = None,
) -> BudgetDecision:
    """Check kill switch, shutdown and every budget in that order, and reserve the call's estimate: one
    atomic step of the control state (`control.admit`).

    Raises UseCaseDisabledError, SpendingHaltedError, or BudgetExceededError (hard limits only).
    """
    request = admission_request(
        settings, day=day, user_id=user_id, tenant_id=tenant_id, use_case=use_case, account_type=account_type,
        estimated_tokens=estimated_tokens, estimated_cost=estimated_cost, service_key=service_key,
        details=details, reservation_id=reservation_id)
    admitted = control.admit(request)
    if admitted.refused is not None:
        raise refusal(request, admitted)
    limit = settings.limit_for(account_type)
    user = admitted.spent[0]
    judgement = judge_user(limit, user.tokens, from_picodollars(user.cost_pico),
                           call_tokens=request.tokens, call_cost=from_picodollars(request.cost_pico))
    reasons, alert, action = ([judgement.reason] if judgement.reason else []), judgement.action == "alerted", None
    for item, spent in zip(request.limits[1:], admitted.spent[1:]):
        over = over_limit(item, spent, request.tokens, request.cost_pico)
        if over:  # past a hard one the call was refused above: this one warns (soft) or alerts
            reasons.append(f"{item.action} budget exceeded for {item.label}: {'; '.join(over)}")
            alert = alert or item.action == "alert"
            action = action or item.action
    action = limit.action if judgement.reason or action is None else action
    return BudgetDecision(True, action, "; ".join(reasons) or None, admitted.reservation, alert=alert)


def settle_after_call(control, decision: BudgetDecision, actual_tokens: int, actual_cost: Decimal) -> bool:
    """Swap the call's reserved estimate for its actual figures; False when already settled."""
    if decision.local is not None:
        return decision.local.settle(actual_tokens, actual_cost)
    if decision.reservation is None:
        return False
    return control.settle(decision.reservation, actual_tokens, actual_cost)


def release_after_refusal(control, decision: BudgetDecision) -> bool:
    """Drop the reservation of a call that was refused after the check (it never reached the provider)."""
    if decision.local is not None:
        return decision.local.release()
    if decision.reservation is None:
        return False
    return control.release(decision.reservation)
