"""Limits and levels as the dashboard shows them: pure transforms over the queries' frames.

Every judgement comes from `llmcost.control.policy` (`judge_user`, `system_level`), the rules the tracker,
`llmcost check` and the reports apply, so the pages cannot disagree with them.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import pandas as pd

from llmcost.control.policy import ACTION_TAKEN, judge_user, system_level

ZERO = Decimal(0)


def system_levels(settings: Any) -> dict[str, Decimal]:
    """The system-wide levels, mildest first, for drawing them (`policy.system_level` judges a spend)."""
    return {"warning": settings.system.warning_usd, "critical": settings.system.critical_usd,
            "shutdown": settings.system.shutdown_usd}


@dataclass(frozen=True)
class SystemSpend:
    """Today's system-wide spend as the tracker's emergency shutdown counts it, and the level it reached."""

    spend: Decimal
    level: str | None
    threshold: Decimal | None


def system_spend_today(settings, today: dt.date) -> SystemSpend:
    """The one figure every surface shows for a day's system-wide spend (`control.rebuild.day_spend`)."""
    from llmcost.control.rebuild import day_spend

    spend = day_spend(settings, today)
    crossed = system_level(settings, spend)
    return SystemSpend(spend, *(crossed or (None, None)))


def limit_usage(today: pd.DataFrame, settings: Any) -> pd.DataFrame:
    """Each user's share of their account type's daily limit, and what their day's judgement did.

    `used_share` is the larger of the token and cost shares (1.0 means the limit is reached; unlimited
    account types count against `alert_above_usd`). `over_limit` and `action` come from
    `policy.judge_user`, as the tracker and `llmcost check` judge: a user within the limit but above an
    `alert_above_usd` is over, with the action `alerted`.
    """
    rows = []
    for user in today.itertuples(index=False):
        account_type = None if pd.isna(user.account_type) else user.account_type
        judgement = judge_user(settings.limit_for(account_type), int(user.tokens_today), Decimal(user.cost_today))
        share = judgement.used_share
        rows.append({
            "user_id": user.user_id,
            "account_type": account_type or settings.default_account_type,
            "tokens_today": judgement.tokens,
            "cost_today": user.cost_today,
            "limit_tokens": judgement.limit_tokens,
            "limit_cost_usd": judgement.limit_cost_usd,
            "used_share": float(share) if share is not None else None,
            "over_limit": judgement.over_limit,
            "action": judgement.action if judgement.over_limit else "",
        })
    columns = ["user_id", "account_type", "tokens_today", "cost_today", "limit_tokens", "limit_cost_usd",
               "used_share", "over_limit", "action"]
    frame = pd.DataFrame(rows, columns=columns)
    frame["limit_tokens"] = frame["limit_tokens"].astype("Int64")
    frame["tokens_today"] = frame["tokens_today"].astype("int64")
    frame["used_share"] = frame["used_share"].astype("float64")
    frame["over_limit"] = frame["over_limit"].astype(bool)
    return frame


def users_with_limits(users: pd.DataFrame, usage_today: pd.DataFrame, settings: Any) -> pd.DataFrame:
    """Top users with today's tokens and cost (zero when they made no call today) and their limit status."""
    tokens = dict(zip(usage_today["user_id"], usage_today["tokens_today"]))
    cost = dict(zip(usage_today["user_id"], usage_today["cost_today"]))
    frame = pd.DataFrame({
        "user_id": users["user_id"],
        "account_type": users["account_type"],
        "tokens_today": [int(tokens.get(user, 0)) for user in users["user_id"]],
        "cost_today": [cost.get(user, ZERO) for user in users["user_id"]],
    })
    status = limit_usage(frame, settings).drop(columns=["user_id", "account_type"])
    return pd.concat([users.reset_index(drop=True), status], axis=1)


def limits_table(settings: Any) -> pd.DataFrame:
    """The per-user daily limits as configured."""
    return pd.DataFrame(
        [
            {
                "account_type": limit.account_type,
                "daily_tokens": limit.tokens,
                "daily_cost_usd": limit.cost_usd,
                "action": limit.action,
                "when_over": ACTION_TAKEN.get(limit.action, "alerted above"),
                "alert_above_usd": limit.alert_above_usd,
                "monthly_tokens": limit.monthly_tokens,
                "monthly_cost_usd": limit.monthly_cost_usd,
                "default": name == settings.default_account_type,
            }
            for name, limit in settings.limits.items()
        ]
    )


def budgets_table(settings, today: dt.date, scope: tuple[str, ...] | None = None) -> pd.DataFrame:
    """Each tenant, use case and key budget, and each user's month, with its spend and what remains
    (`control.budgets.budget_status`); a tenant-scoped viewer (`scope`) gets no user rows (users' months span
    tenants)."""
    from llmcost.control.budgets import budget_status

    columns = ["scope", "name", "period", "action", "limit_usd", "limit_tokens", "spent_usd", "spent_tokens",
               "remaining_usd", "remaining_tokens", "over"]
    frame = pd.DataFrame([{
        "scope": row.budget.scope, "name": row.budget.name, "period": row.period, "action": row.budget.action,
        "limit_usd": row.budget.cost_usd, "limit_tokens": row.budget.tokens, "spent_usd": row.cost,
        "spent_tokens": row.tokens, "remaining_usd": row.remaining_usd, "remaining_tokens": row.remaining_tokens,
        "over": row.over} for row in budget_status(settings, today)
        if scope is None or row.budget.scope != "user"], columns=columns)
    for name in ("limit_tokens", "spent_tokens", "remaining_tokens"):
        frame[name] = frame[name].astype("Int64")
    return frame


def account_type_state(limits_today: pd.DataFrame) -> pd.DataFrame:
    """Today per account type: active users, users over their limit, tokens and cost."""
    columns = ["account_type", "active_users", "over_limit", "tokens_today", "cost_today"]
    if limits_today.empty:
        return pd.DataFrame(columns=columns)
    grouped = limits_today.groupby("account_type", sort=True)
    return pd.DataFrame({
        "account_type": list(grouped.groups),
        "active_users": grouped["user_id"].count().to_list(),
        "over_limit": grouped["over_limit"].sum().astype(int).to_list(),
        "tokens_today": grouped["tokens_today"].sum().astype("int64").to_list(),
        "cost_today": [sum(group, ZERO) for _, group in grouped["cost_today"]],
    }, columns=columns)


def breaches(user_days: pd.DataFrame, settings: Any) -> pd.DataFrame:
    """Every user-day over its account type's limit, judged as today's are (`limit_usage`), newest first."""
    judged = limit_usage(user_days, settings)
    judged.insert(0, "day", list(user_days["day"]))
    over = judged.loc[judged["over_limit"]].drop(columns=["over_limit"]).reset_index(drop=True)
    return over.rename(columns={"tokens_today": "tokens", "cost_today": "cost_usd"})
