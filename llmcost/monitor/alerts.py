"""Thresholds: which of the day's figures crossed a configured level, as alerts a person reads at a glance.

System-wide spend is compared with `settings.system` by `llmcost.control.policy.system_level`, and each
user's tokens and spend with the limit of their account type by `llmcost.control.policy.judge_user`: the
rules the tracker's admission and the dashboard apply too. Levels for users:

- `soft` and `alert` (alert-only) limits -> `warning`: the calls were allowed, someone should look;
- `hard` limits -> `critical`: the tracker refuses calls at the limit, so spend above it means calls got
  through anyway (in flight when the limit was reached, or made outside the tracker);
- `alert_above_usd` (super_admin's $50 by default, on any account type that sets it) -> `warning`.

Failed logs not yet recovered raise one `logging` alert per kind (fallback, invalid, unattributed), at
`warning`, so they reach Slack with the default settings.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import asdict, dataclass
from decimal import Decimal
from typing import Any

from llmcost.config import Settings
from llmcost.control.policy import ACTION_LEVEL, ACTION_TAKEN, UserJudgement, judge_user, system_level, user_months_limited
from llmcost.money import local_day, money, money_against, number, today_in
from llmcost.store import queries
from llmcost.store.connection import reading

LEVELS = ("info", "warning", "critical", "shutdown")
LEVEL_RANK = {level: rank for rank, level in enumerate(LEVELS)}
SCOPES = ("system", "tenant", "user", "use_case", "logging")
ACTION_WORDS = {
    "soft": ("soft limit", "calls are still allowed"),
    "alert": ("alert-only limit", "calls are still allowed"),
    "hard": ("hard limit", "further calls are refused"),
}
FAILED_LOG_HINTS = {
    # An unrecovered fallback entry was already read by ingest and could not be stored: ingesting again cannot help.
    "fallback": ("they cannot be stored as they are; `llmcost export --table failed_logs --out failed.csv` "
                 "lists each reason and raw record"),
    "invalid": "the failed_logs table gives each reason",
    "unattributed": "they lack user_id or tenant_id, so their cost is counted under (unattributed)",
}


@dataclass(frozen=True)
class Alert:
    """One crossed threshold on one day.

    `key` (day, scope, scope_id, level) identifies an alert for de-duplication: the same key is sent
    at most once per notifier.
    """

    day: dt.date
    level: str
    scope: str
    scope_id: str
    metric: str
    figure: Decimal
    threshold: Decimal
    message: str

    @property
    def key(self) -> tuple[dt.date, str, str, str]:
        return (self.day, self.scope, self.scope_id, self.level)

    @property
    def rank(self) -> int:
        return LEVEL_RANK[self.level]

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["day"] = self.day.isoformat()
        data["figure"] = str(self.figure)
        data["threshold"] = str(self.threshold)
        return data


def highest_level(alerts: list[Alert]) -> str | None:
    return max((a.level for a in alerts), key=LEVEL_RANK.__getitem__, default=None)


def _when(day: dt.date, today: dt.date) -> str:
    return "today" if day == today else f"on {day.isoformat()}"


def evaluate(settings: Settings, day: dt.date | None = None, *, now: dt.datetime | None = None) -> list[Alert]:
    """Every threshold crossed on `day` (default: today in the configured time zone), highest level first.

    System-wide spend, per-user limits by account type, tenants' and use cases' daily spend where
    thresholds are configured (`tenant_daily_usd`, `use_case_daily_usd`), and unrecovered failed logs.
    An empty or missing store gives no alerts.
    """
    today = today_in(settings.tz, now)
    day = day or today
    control_alerts = [_control_file_alert(settings, day, entry) for entry in _control_files_set_aside(settings, day)]
    control_alerts += _budget_alerts(settings, day) if day == today else []
    with reading(settings.db_path) as db:
        if db is None:
            return control_alerts
        users = queries.usage_by_user_on(db, day)
        groups = {scope: queries.spend_by(db, scope, day) for scope in GROUP_SCOPES
                  if _group_thresholds(settings, scope)}
        failed = queries.open_failed_by_kind(db)
    from llmcost.control.rebuild import (
        day_spend,  # the figure the tracker's emergency shutdown compares, not only the store's
    )

    alerts = _system_alert(settings, day, today, day_spend(settings, day))
    alerts += [_user_alert(day, today, user, judge_user(settings.limit_for(user.account_type), user.tokens, user.cost))
               for user in users]
    alerts += [_group_alert(settings, scope, day, today, name, spend)
               for scope, rows in groups.items() for name, spend in rows]
    alerts += [_failed_log_alert(day, kind, count) for kind, count in failed]
    alerts += control_alerts
    alerts = [a for a in alerts if a is not None]
    return sorted(alerts, key=lambda a: (-a.rank, a.scope, a.scope_id))


GROUP_SCOPES = ("tenant", "use_case")


def _group_thresholds(settings: Settings, scope: str) -> dict[str, Decimal]:
    return settings.tenant_daily_usd if scope == "tenant" else settings.use_case_daily_usd


def _group_alert(settings: Settings, scope: str, day: dt.date, today: dt.date, name: str,
                 spend: Decimal) -> Alert | None:
    thresholds = _group_thresholds(settings, scope)
    threshold = thresholds.get(name, thresholds.get("*"))
    if threshold is None or spend <= threshold:
        return None
    label = "Tenant" if scope == "tenant" else "Use case"
    message = (f"{label} {name} spent {money_against(spend, threshold)} {_when(day, today)}, above its daily "
               f"threshold of {money(threshold)}")
    return Alert(day, "warning", scope, name, "cost_usd", spend, threshold, message + ".")


def _budget_alerts(settings: Settings, day: dt.date) -> list[Alert]:
    """Tenant, use case and key budgets, and users' months, over their limit in the current day or month
    (`control.budgets`)."""
    if not settings.budgets() and not user_months_limited(settings):
        return []
    from llmcost.control.budgets import budget_status

    alerts = []
    for row in budget_status(settings, day):
        if not row.over:
            continue
        b = row.budget
        on_cost = b.cost_usd is not None and row.cost > b.cost_usd
        figure, threshold = (row.cost, b.cost_usd) if on_cost else (Decimal(row.tokens), Decimal(b.tokens))
        shown = (f"{money_against(row.cost, b.cost_usd)} of {money(b.cost_usd)}" if on_cost
                 else f"{row.tokens:,} of {b.tokens:,} tokens")
        period = "today" if b.period == "day" else f"in {row.period}"
        message = f"{b.scope.replace('_', ' ').capitalize()} {b.name} spent {shown} {period}: over its {b.action} budget"
        if b.action == "hard":
            message += " (calls in flight or untracked got past the refusal)"
        alerts.append(Alert(day, ACTION_LEVEL[ACTION_TAKEN[b.action]], f"{b.scope}_budget", f"{b.name} {row.period}",
                            "cost_usd" if on_cost else "tokens", figure, threshold, message + "."))
    return alerts


def _system_alert(settings: Settings, day: dt.date, today: dt.date, spend: Decimal) -> list[Alert]:
    crossed = system_level(settings, spend)
    if crossed is None:
        return []
    level, threshold = crossed
    relation = "above" if spend > threshold else "at"
    name = "emergency shutdown" if level == "shutdown" else level
    message = (f"System-wide spend {_when(day, today)} is {money_against(spend, threshold)}, {relation} the "
               f"{name} level of {money(threshold)}")
    if level == "shutdown":
        message += "; the tracker refuses every call until the next day or `llmcost resume`"
    return [Alert(day, level, "system", "all", "cost_usd", spend, threshold, message + ".")]


def _user_alert(day: dt.date, today: dt.date, user: queries.UserDay, judgement: UserJudgement) -> Alert | None:
    if not judgement.over_limit:
        return None
    limit = judgement.limit
    who = f"User {user.user_id} ({user.account_type or f'no account type, treated as {limit.account_type}'})"
    when = _when(day, today)
    metric, figure, threshold = judgement.measure
    if judgement.over == ("alert_above_usd",):
        message = (f"{who} spent {money_against(judgement.cost, threshold)} {when}, above the alert level of "
                   f"{money(threshold)}.")
    else:
        name, consequence = ACTION_WORDS[limit.action]
        used, limits = [], []
        if "tokens" in judgement.over:
            used.append(f"{number(judgement.tokens)} tokens")
            limits.append(f"{number(limit.tokens)} tokens")
        if "cost_usd" in judgement.over:
            used.append(money_against(judgement.cost, limit.cost_usd))
            limits.append(money(limit.cost_usd))
        plural = "s" if len(limits) > 1 else ""
        message = (f"{who} used {' and '.join(used)} {when}, over the {name}{plural} of "
                   f"{' and '.join(limits)}; {consequence}.")
    return Alert(day, judgement.level, "user", user.user_id, metric, figure, threshold, message)


def _failed_log_alert(day: dt.date, kind: str, count: int) -> Alert:
    hint = FAILED_LOG_HINTS.get(kind, "see the failed_logs table")
    calls = "LLM call" if count == 1 else "LLM calls"
    message = (f"{number(count)} {calls} failed to log ({kind}, not recovered); "
               f"cost data may be incomplete: {hint}.")
    return Alert(day, "warning", "logging", kind, "failed_logs", Decimal(count), Decimal(0), message)


def _control_files_set_aside(settings: Settings, day: dt.date) -> list[dict]:
    """Audit entries of control files found corrupt and moved aside on `day`."""
    from llmcost.control.audit import audit_path_for, entries

    found = []
    for entry in entries(audit_path_for(settings.control_db)):
        if entry["action"] != "control_file_set_aside":
            continue
        try:
            when = local_day(dt.datetime.fromisoformat(entry["at"]), settings.tz)
        except (KeyError, TypeError, ValueError):
            continue
        if when == day:
            found.append(entry)
    return found[-1:]  # one alert a day says it; the audit log lists each


def _control_file_alert(settings: Settings, day: dt.date, entry: dict) -> Alert:
    message = (f"The control file {settings.control_db} was corrupt and was moved to {entry.get('moved_to')} at "
               f"{entry.get('at')} ({entry.get('reason')}); a new one was started with the kill switches and halts "
               "of the audit log: check `llmcost status` and the dashboard's kill switches.")
    return Alert(day, "critical", "logging", "control_file", "control_file", Decimal(1), Decimal(0), message)
