"""The policy applied before each tracked call: kill switch, then emergency shutdown, then the user's budget.

Every call that passes holds its estimate as a reservation in the control state and settles it with the
actual figures afterwards (`settle_after_call`), so system and per-user spend include calls in flight.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from decimal import Decimal

from llmcost.config import Settings
from llmcost.control.state import ControlState, Reservation, format_usd
from llmcost.errors import SpendingHaltedError, UseCaseDisabledError


@dataclass(frozen=True)
class BudgetDecision:
    """The outcome of `check_before_call` for a call that may proceed.

    `reason` says which limit or threshold the call goes past (a soft limit only warns); `alert` is set
    when that should be recorded as an alert (action 'alert', or 'unlimited' above `alert_above_usd`).
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
    tokens_after = reservation.spent_tokens_before + reservation.tokens
    cost_after = reservation.spent_cost_before + reservation.cost

    if not limited:
        above = limit.alert_above_usd is not None and cost_after > limit.alert_above_usd
        reason = (f"alert threshold exceeded: {format_usd(cost_after)} of {format_usd(limit.alert_above_usd)}"
                  if above else None)
        return BudgetDecision(True, limit.action, reason, reservation, alert=above)

    over = []
    if limit.tokens is not None and tokens_after > limit.tokens:
        over.append(f"{tokens_after:,} of {limit.tokens:,} tokens")
    if limit.cost_usd is not None and cost_after > limit.cost_usd:
        over.append(f"{format_usd(cost_after)} of {format_usd(limit.cost_usd)}")
    reason = f"{limit.action} limit exceeded: {', '.join(over)}" if over else None
    return BudgetDecision(True, limit.action, reason, reservation, alert=bool(over) and limit.action == "alert")


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
