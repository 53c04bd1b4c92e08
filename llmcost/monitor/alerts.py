"""Thresholds: which of the day's figures crossed a configured level, as alerts a person reads at a glance.

System-wide spend is compared with `settings.system` (warning, critical, shutdown; a level counts as
crossed once spend reaches it, the same rule the tracker's shutdown uses). Each user's tokens and spend are
compared with the limit of their account type (`settings.limit_for`); a limit counts as exceeded when the
figure goes over it. Levels for users:

- `soft` and `alert` (alert-only) limits -> `warning`: the calls were allowed, someone should look;
- `hard` limits -> `critical`: the tracker refuses calls at the limit, so spend above it means calls got
  through anyway (in flight when the limit was reached, or made outside the tracker);
- `alert_above_usd` (super_admin's $50 by default) -> `warning`.

Failed logs not yet recovered raise one `logging` alert per kind (fallback, invalid, unattributed), at
`warning`, so they reach Slack with the default settings.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import asdict, dataclass
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

import pandas as pd

from llmcost.config import Settings
from llmcost.events import UNATTRIBUTED
from llmcost.money import money
from llmcost.store.connection import reading
from llmcost.store.failed_logs import OPEN_FAILED

LEVELS = ("info", "warning", "critical", "shutdown")
LEVEL_RANK = {level: rank for rank, level in enumerate(LEVELS)}
SCOPES = ("system", "tenant", "user", "use_case", "logging")
ACTION_LEVEL = {"soft": "warning", "alert": "warning", "hard": "critical", "unlimited": "warning"}
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


def format_usd(amount: Decimal) -> str:
    """Dollars as the dashboard shows them (`llmcost.money.money`): cents, fractions of a cent when small."""
    return money(amount)


def format_usd_against(figure: Decimal, threshold: Decimal) -> str:
    """`figure` in dollars, with enough decimals that it does not read as equal to a different `threshold`."""
    shown = format_usd(figure)
    if figure == threshold or shown != format_usd(threshold):
        return shown
    for places in (4, 6, 9, 12):
        precise = figure.quantize(Decimal(1).scaleb(-places), ROUND_HALF_UP)
        if precise != threshold:
            return f"${precise:,f}"
    return f"${figure:,f}"


def format_count(value: int) -> str:
    return f"{int(value):,}"


def today_in(settings: Settings, now: dt.datetime | None = None) -> dt.date:
    """The calendar day in the configured time zone."""
    moment = now or dt.datetime.now(dt.timezone.utc)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.timezone.utc)
    return moment.astimezone(settings.tz).date()


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
    today = today_in(settings, now)
    day = day or today
    control_alerts = [_control_file_alert(settings, day, entry) for entry in _control_files_set_aside(settings, day)]
    with reading(settings.db_path) as db:
        if db is None:
            return control_alerts
        users = _users_over_limits(db, settings, day)
        groups = {scope: _spend_by(db, column, day) for scope, column in GROUP_COLUMNS.items()
                  if _group_thresholds(settings, scope)}
        failed = db.execute(
            f"SELECT kind, COUNT(*) FROM failed_logs WHERE {OPEN_FAILED} GROUP BY kind ORDER BY kind"
        ).fetchall()
    from llmcost.control.rebuild import (
        day_spend,  # the figure the tracker's emergency shutdown compares, not only the store's
    )

    alerts = _system_alert(settings, day, today, day_spend(settings, day))
    alerts += [_user_alert(settings, day, today, row) for row in users]
    alerts += [_group_alert(settings, scope, day, today, name, spend)
               for scope, rows in groups.items() for name, spend in rows]
    alerts += [_failed_log_alert(day, kind, count) for kind, count in failed]
    alerts += control_alerts
    alerts = [a for a in alerts if a is not None]
    return sorted(alerts, key=lambda a: (-a.rank, a.scope, a.scope_id))


GROUP_COLUMNS = {"tenant": "tenant_id", "use_case": "use_case"}  # constants, never user input


def _group_thresholds(settings: Settings, scope: str) -> dict[str, Decimal]:
    return settings.tenant_daily_usd if scope == "tenant" else settings.use_case_daily_usd


def _spend_by(db, column: str, day: dt.date) -> list[tuple[str, Decimal]]:
    return [(name, Decimal(spend)) for name, spend in db.execute(
        f"SELECT {column}, SUM(cost_usd) FROM usage_events WHERE day = ? GROUP BY 1 ORDER BY 1", [day]
    ).fetchall()]


def _group_alert(settings: Settings, scope: str, day: dt.date, today: dt.date, name: str,
                 spend: Decimal) -> Alert | None:
    thresholds = _group_thresholds(settings, scope)
    threshold = thresholds.get(name, thresholds.get("*"))
    if threshold is None or spend <= threshold:
        return None
    label = "Tenant" if scope == "tenant" else "Use case"
    message = (f"{label} {name} spent {format_usd_against(spend, threshold)} {_when(day, today)}, above its daily "
               f"threshold of {format_usd(threshold)}")
    return Alert(day, "warning", scope, name, "cost_usd", spend, threshold, message + ".")


def system_level(settings: Settings, spend: Decimal) -> tuple[str, Decimal] | None:
    """The highest system-wide level a day's spend has reached, with its threshold; None below the warning level."""
    levels = settings.system
    for name, threshold in (("shutdown", levels.shutdown_usd), ("critical", levels.critical_usd),
                            ("warning", levels.warning_usd)):
        if spend >= threshold:
            return name, threshold
    return None


def _system_alert(settings: Settings, day: dt.date, today: dt.date, spend: Decimal) -> list[Alert]:
    crossed = system_level(settings, spend)
    if crossed is None:
        return []
    level, threshold = crossed
    relation = "above" if spend > threshold else "at"
    name = "emergency shutdown" if level == "shutdown" else level
    message = (f"System-wide spend {_when(day, today)} is {format_usd_against(spend, threshold)}, {relation} the "
               f"{name} level of {format_usd(threshold)}")
    if level == "shutdown":
        message += "; the tracker refuses every call until the next day or `llmcost resume`"
    return [Alert(day, level, "system", "all", "cost_usd", spend, threshold, message + ".")]


_USERS_OVER_LIMITS = """
WITH per_user AS (
    SELECT user_id,
           arg_max(account_type, ts) FILTER (WHERE account_type IS NOT NULL) AS account_type,
           SUM(total_tokens) AS tokens,
           SUM(cost_usd) AS cost
    FROM usage_events
    WHERE day = ? AND user_id <> ?
    GROUP BY user_id
), typed AS (
    SELECT p.*, COALESCE(known.account_type, ?) AS limit_type
    FROM per_user p LEFT JOIN account_limits known ON known.account_type = p.account_type
)
SELECT t.user_id, t.account_type, t.limit_type, t.tokens, t.cost
FROM typed t JOIN account_limits l ON l.account_type = t.limit_type
WHERE (l.tokens IS NOT NULL AND t.tokens > l.tokens)
   OR (l.cost_usd IS NOT NULL AND t.cost > CAST(l.cost_usd AS DECIMAL(24, 12)))
   OR (l.alert_above_usd IS NOT NULL AND t.cost > CAST(l.alert_above_usd AS DECIMAL(24, 12)))
ORDER BY t.cost DESC, t.user_id
"""


def _users_over_limits(db, settings: Settings, day: dt.date) -> list[tuple]:
    # The limits table is tiny; joining it in SQL keeps the per-user scan and filter inside DuckDB.
    limits = pd.DataFrame(
        [
            {
                "account_type": limit.account_type,
                "tokens": limit.tokens,
                "cost_usd": None if limit.cost_usd is None else str(limit.cost_usd),
                "alert_above_usd": None if limit.alert_above_usd is None else str(limit.alert_above_usd),
            }
            for limit in settings.limits.values()
        ]
    ).astype({"tokens": "Int64", "cost_usd": object, "alert_above_usd": object})
    db.register("account_limits", limits)
    try:
        return db.execute(_USERS_OVER_LIMITS, [day, UNATTRIBUTED, settings.default_account_type]).fetchall()
    finally:
        db.unregister("account_limits")


def _user_alert(settings: Settings, day: dt.date, today: dt.date, row: tuple) -> Alert | None:
    user_id, account_type, limit_type, tokens, cost = row
    limit = settings.limits[limit_type]
    tokens, cost = int(tokens), Decimal(cost)
    who = f"User {user_id} ({account_type or f'no account type, treated as {limit_type}'})"
    when = _when(day, today)
    if limit.action in ACTION_WORDS:
        over_cost = limit.cost_usd is not None and cost > limit.cost_usd
        over_tokens = limit.tokens is not None and tokens > limit.tokens
        if over_cost or over_tokens:
            name, consequence = ACTION_WORDS[limit.action]
            used, limits = [], []
            if over_tokens:
                used.append(f"{format_count(tokens)} tokens")
                limits.append(f"{format_count(limit.tokens)} tokens")
            if over_cost:
                used.append(format_usd_against(cost, limit.cost_usd))
                limits.append(format_usd(limit.cost_usd))
            plural = "s" if len(limits) > 1 else ""
            message = (f"{who} used {' and '.join(used)} {when}, over the {name}{plural} of "
                       f"{' and '.join(limits)}; {consequence}.")
            metric, figure, threshold = (("cost_usd", cost, limit.cost_usd) if over_cost
                                         else ("tokens", Decimal(tokens), Decimal(limit.tokens)))
            return Alert(day, ACTION_LEVEL[limit.action], "user", user_id, metric, figure, threshold, message)
    if limit.alert_above_usd is not None and cost > limit.alert_above_usd:
        message = (f"{who} spent {format_usd_against(cost, limit.alert_above_usd)} {when}, above the alert level of "
                   f"{format_usd(limit.alert_above_usd)}.")
        return Alert(day, "warning", "user", user_id, "cost_usd", cost, limit.alert_above_usd, message)
    return None


def _failed_log_alert(day: dt.date, kind: str, count: int) -> Alert:
    hint = FAILED_LOG_HINTS.get(kind, "see the failed_logs table")
    calls = "LLM call" if count == 1 else "LLM calls"
    message = (f"{format_count(count)} {calls} failed to log ({kind}, not recovered); "
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
            when = dt.datetime.fromisoformat(entry["at"]).astimezone(settings.tz).date()
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
