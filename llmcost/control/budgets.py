"""Each tenant, use case and service key budget, and each user's month by their account type, against its spend in
the current period: what `llmcost budgets`, `llmcost check` and the dashboard's Budgets page show (spend by
`rebuild.period_spends`, the rule admission uses)."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from decimal import Decimal

from llmcost.config import Budget, Settings
from llmcost.control.interface import Counter, ScopeLimit, Spend, period_key
from llmcost.control.policy import over_limit, user_month_budget, user_months_limited
from llmcost.control.rebuild import month_users, period_spends
from llmcost.money import to_picodollars


@dataclass(frozen=True)
class BudgetStatus:
    budget: Budget
    period: str  # 2026-12-03 or 2026-12
    tokens: int
    cost: Decimal
    remaining_tokens: int | None
    remaining_usd: Decimal | None
    over: bool


def user_month_budgets(settings: Settings, today: dt.date) -> list[Budget]:
    """The month budget of every user with spend this month whose account type has a monthly limit."""
    if not user_months_limited(settings):
        return []
    users = month_users(settings, period_key("month", today))
    found = (user_month_budget(settings.limit_for(account_type), user) for user, account_type in sorted(users.items()))
    return [budget for budget in found if budget is not None]


def budget_status(settings: Settings, today: dt.date) -> list[BudgetStatus]:
    """Every configured budget (then each user's month) with its spend and what remains of it in the period that
    holds `today`."""
    counters = {budget: Counter(period_key(budget.period, today), budget.scope, budget.name)
                for budget in [*settings.budgets(), *user_month_budgets(settings, today)]}
    spends = period_spends(settings, list(counters.values())) if counters else {}
    rows = []
    for budget, counter in counters.items():
        tokens, cost = spends[counter]
        limit = ScopeLimit(counter, budget.tokens,
                           to_picodollars(budget.cost_usd) if budget.cost_usd is not None else None, budget.action)
        over = bool(over_limit(limit, Spend(tokens, to_picodollars(cost)), 0, 0))
        rows.append(BudgetStatus(
            budget, counter.period, tokens, cost,
            max(budget.tokens - tokens, 0) if budget.tokens is not None else None,
            max(budget.cost_usd - cost, Decimal(0)) if budget.cost_usd is not None else None, over))
    return rows
