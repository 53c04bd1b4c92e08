"""Figures over time for the dashboard: trends per use case, day-over-day movers, limit breaches per day.

Queries aggregate in DuckDB with bound parameters (through `dashboard.fetch`); the judgements come from
`control.policy.judge_user` through `dashboard.limits`, the rule the tracker and `llmcost check` apply.
"""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from pathlib import Path
from typing import Any

import duckdb
import pandas as pd

from llmcost.dashboard.fetch import Filters, fetch_frame, run
from llmcost.dashboard.queries import daily_cost_by_use_case
from llmcost.events import UNATTRIBUTED
from llmcost.store.queries import USER_ACCOUNT_TYPE

ZERO = Decimal(0)
NO_FLOOR = 2**62


def limit_floors(settings: Any) -> tuple[int, Decimal]:
    """The lowest token and cost figures any account type's limit or alert level can be passed at.

    A user-day under both cannot be over any limit, so the query leaves it out before judging.
    """
    tokens, costs = [], []
    for limit in settings.limits.values():
        if limit.action != "unlimited" and limit.tokens is not None:
            tokens.append(limit.tokens)
        if limit.action != "unlimited" and limit.cost_usd is not None:
            costs.append(limit.cost_usd)
        if limit.alert_above_usd is not None:
            costs.append(limit.alert_above_usd)
    return min(tokens, default=NO_FLOOR), min(costs, default=Decimal(NO_FLOOR))


def user_days_over(db: duckdb.DuckDBPyConnection, filters: Filters, floor_tokens: int,
                   floor_cost: Decimal) -> pd.DataFrame:
    """Each user's tokens and cost per day in the range, where either passes its floor (all their calls)."""
    return fetch_frame(
        db,
        f"""
        SELECT day, user_id, {USER_ACCOUNT_TYPE} AS account_type, count(*) AS calls,
               coalesce(sum(total_tokens), 0)::BIGINT AS tokens_today, coalesce(sum(cost_usd), 0) AS cost_today
        FROM usage_events WHERE day BETWEEN $start AND $end AND user_id <> $unattributed
        GROUP BY day, user_id
        HAVING sum(total_tokens) > $floor_tokens OR sum(cost_usd) > $floor_cost
        ORDER BY day DESC, cost_today DESC, user_id
        """,
        {"start": filters.start, "end": filters.end, "unattributed": UNATTRIBUTED,
         "floor_tokens": floor_tokens, "floor_cost": floor_cost},
    )


def breaches(db_path: Path, filters: Filters, floor_tokens: int, floor_cost: Decimal) -> pd.DataFrame | None:
    return run(db_path, user_days_over, filters, floor_tokens, floor_cost)


def daily_by_use_case(db_path: Path, filters: Filters) -> pd.DataFrame | None:
    """Calls, tokens and cost per day and use case over the range (the per-use-case trend)."""
    return run(db_path, daily_cost_by_use_case, filters)


def with_configured(frame: pd.DataFrame, configured: tuple[str, ...]) -> pd.DataFrame:
    """A per-use-case frame with a zero row for every configured use case that made no call in it."""
    silent = [name for name in configured if name not in set(frame["use_case"])]
    if not silent:
        return frame
    zeros = {c: (ZERO if c == "cost_usd" else 0) for c in frame.columns if c != "use_case"}
    extra = pd.DataFrame([{"use_case": name, **zeros} for name in silent], columns=frame.columns)
    return pd.concat([frame, extra.astype(frame.dtypes.to_dict())], ignore_index=True)


def movers(daily: pd.DataFrame, day: dt.date, label: str = "use_case", top: int = 10) -> pd.DataFrame:
    """The largest changes in cost from the day before `day` to `day`, per label, biggest first."""
    columns = [label, "cost_day_before", "cost_usd", "change_usd", "change"]
    if daily.empty:
        return pd.DataFrame(columns=columns)
    before = day - dt.timedelta(days=1)
    costs: dict[Any, list[Decimal]] = {}
    for name, on, cost in zip(daily[label], daily["day"], daily["cost_usd"]):
        if on in (before, day):
            costs.setdefault(name, [ZERO, ZERO])[on == day] += cost
    rows = [{label: name, "cost_day_before": was, "cost_usd": now, "change_usd": now - was,
             "change": float((now - was) / was) if was else None}
            for name, (was, now) in costs.items() if now != was]
    rows.sort(key=lambda r: (-abs(r["change_usd"]), str(r[label])))
    return pd.DataFrame(rows[:top], columns=columns)
