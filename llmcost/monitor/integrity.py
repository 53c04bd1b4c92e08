"""Integrity checks: is every call accounted for, and can the figures be trusted?

`run_checks` evaluates today's thresholds (`llmcost.monitor.alerts.evaluate`) and eight checks over the last
`CHECK_WINDOW_DAYS` days; `CheckReport.exit_code` is the highest level found: 0 all clear (or only
`info`), 1 warning, 2 critical or shutdown, so cron and CI can act on it.

1. coverage: per day, calls attempted (tracker attempt records) against calls logged, and their tokens;
   an attempt older than `stale_attempt_seconds` with no usage event of the same attempt_id was
   attempted but never logged (warning).
2. stale_attempts: those attempts one by one, "potential unlogged LLM call", with use case and age (warning).
3. failed_logs: unrecovered failed logs by kind and error (warning).
4. estimate_mismatch: calls whose actual tokens differ from the estimate by more than
   `estimate_mismatch_ratio` (info: it says how good estimates are, not that money is lost).
5. use_cases: each configured use case with its last call; one silent for more than
   `silent_use_case_days` days is reported (warning).
6. default_rate: calls priced at the default rate because their model has no price (warning).
7. reconciliation: a provider's usage export against the store, when an export is given (warning when
   they differ); otherwise skipped (`llmcost reconcile EXPORT.csv` runs it on its own).
8. service_tier: calls served at a service tier (flex, priority, batch) whose price the table does not
   carry for their model, so they were priced at the standard rate (warning).
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from llmcost.config import Settings
from llmcost.money import money, number, today_in
from llmcost.monitor.alerts import LEVEL_RANK, Alert, evaluate
from llmcost.monitor.reconcile import reconcile
from llmcost.monitor.reports import json_default, text_table
from llmcost.pricing.rates import STANDARD_SERVICE_TIERS, Pricer
from llmcost.store import queries
from llmcost.store.connection import reading

CHECK_WINDOW_DAYS = 7
MAX_ROWS = 100
EXIT_CODES = {"ok": 0, "skipped": 0, "info": 0, "warning": 1, "critical": 2, "shutdown": 2}
CHECK_LEVEL_RANK = {"ok": -1, "skipped": -1, **LEVEL_RANK}


@dataclass
class CheckResult:
    """One check: its level (ok, skipped, info, warning), how many problems, a one-line summary and rows."""

    name: str
    title: str
    level: str
    count: int
    summary: str
    rows: pd.DataFrame = field(default_factory=pd.DataFrame)

    def to_dict(self) -> dict[str, Any]:
        rows = self.rows.astype(object).where(self.rows.notna(), None).to_dict("records")
        return {"name": self.name, "title": self.title, "level": self.level, "count": self.count,
                "summary": self.summary, "rows": rows}


@dataclass
class CheckReport:
    """Every check and today's threshold alerts; `alerts` also holds one alert per check that found a problem."""

    today: dt.date
    checked_at: dt.datetime
    checks: list[CheckResult]
    alerts: list[Alert]

    @property
    def level(self) -> str:
        levels = [c.level for c in self.checks] + [a.level for a in self.alerts]
        return max(levels, key=CHECK_LEVEL_RANK.__getitem__, default="ok")

    @property
    def exit_code(self) -> int:
        return EXIT_CODES[self.level]

    def check(self, name: str) -> CheckResult:
        return next(c for c in self.checks if c.name == name)

    def to_dict(self) -> dict[str, Any]:
        return {"today": self.today, "checked_at": self.checked_at, "level": self.level,
                "exit_code": self.exit_code, "alerts": [a.to_dict() for a in self.alerts],
                "checks": [c.to_dict() for c in self.checks]}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, default=json_default)

    def to_text(self, max_rows: int = 10) -> str:
        lines = [f"llmcost check for {self.today.isoformat()}: {self.level.upper()} (exit code {self.exit_code})",
                 "Times in UTC.", ""]
        lines.append("Alerts:" if self.alerts else "Alerts: none")
        lines += [f"  {a.level.upper():<8} {a.message}" for a in self.alerts]
        for position, check in enumerate(self.checks, start=1):
            lines += ["", f"{position}. {check.title} [{check.level.upper()}]", f"   {check.summary}"]
            if check.count and not check.rows.empty:
                shown = check.rows.head(max_rows)
                table = [[_cell(column, v) for column, v in zip(shown.columns, row)]
                         for row in shown.itertuples(index=False)]
                lines.append(text_table([str(c) for c in shown.columns], table))
                if len(check.rows) > max_rows:
                    lines.append(f"  ... {len(check.rows) - max_rows} more (use --format json for all)")
        return "\n".join(lines) + "\n"


def run_checks(
    settings: Settings,
    today: dt.date | None = None,
    *,
    now: dt.datetime | None = None,
    export: str | Path | None = None,
) -> CheckReport:
    """Run today's threshold evaluation and every check (see the module docstring). Reads the store only
    (today's spend is also brought up to date in the control state, `llmcost.control.rebuild.day_spend`)."""
    now = (now or dt.datetime.now(dt.timezone.utc)).astimezone(dt.timezone.utc)
    today = today or today_in(settings.tz, now)
    start = today - dt.timedelta(days=CHECK_WINDOW_DAYS - 1)
    naive_now = now.replace(tzinfo=None)
    stale_before = naive_now - dt.timedelta(seconds=settings.stale_attempt_seconds)
    with reading(settings.db_path) as db:
        checks = [
            coverage(db, start, today, stale_before),
            stale_attempts(db, settings, start, today, stale_before, naive_now),
            failed_logs(db),
            estimate_mismatch(db, settings, start, today),
            use_cases(db, settings, start, today, naive_now),
            default_rate(db, settings, start, today),
        ]
        tiers = service_tier(db, settings, start, today)
    checks += [reconciliation(settings, export), tiers]
    alerts = evaluate(settings, today, now=now) + _check_alerts(settings, today, checks)
    alerts.sort(key=lambda a: (-a.rank, a.scope, a.scope_id))
    return CheckReport(today, now, checks, alerts)


def _frame(db, sql: str, params: list) -> pd.DataFrame:
    # fetchall keeps DECIMAL as Decimal; fetchdf would turn money into floats.
    result = db.execute(sql, params)
    names = [d[0] for d in result.description]
    return pd.DataFrame(result.fetchall(), columns=names)


def _scalar(db, sql: str, params: list) -> Any:
    return db.execute(sql, params).fetchall()[0][0]


_COVERAGE_ATTEMPTS = """
SELECT a.day, COUNT(*) AS attempted, COALESCE(SUM(a.estimated_tokens), 0) AS attempted_estimated_tokens,
       COUNT(*) FILTER (WHERE e.attempt_id IS NULL AND a.ts <= ?) AS never_logged,
       COUNT(*) FILTER (WHERE e.attempt_id IS NULL AND a.ts > ?) AS in_flight
FROM call_attempts a
LEFT JOIN (SELECT DISTINCT attempt_id FROM usage_events WHERE attempt_id IS NOT NULL AND day >= ?) e USING (attempt_id)
WHERE a.day BETWEEN ? AND ?
GROUP BY a.day
"""
_COVERAGE_EVENTS = """
SELECT day, COUNT(*) AS logged, COUNT(attempt_id) AS logged_with_attempt, SUM(total_tokens) AS logged_tokens
FROM usage_events WHERE day BETWEEN ? AND ? GROUP BY day
"""
COVERAGE_COLUMNS = ["day", "attempted", "logged", "logged_with_attempt", "never_logged", "in_flight",
                    "attempted_estimated_tokens", "logged_tokens"]


def coverage(db, start: dt.date, end: dt.date, stale_before: dt.datetime) -> CheckResult:
    """Check 1: calls attempted against calls logged, per day."""
    title = f"Coverage: attempted vs logged calls, last {CHECK_WINDOW_DAYS} days"
    days = pd.DataFrame({"day": [start + dt.timedelta(days=i) for i in range((end - start).days + 1)]})
    if db is not None:
        attempts = _frame(db, _COVERAGE_ATTEMPTS,
                          [stale_before, stale_before, start - dt.timedelta(days=1), start, end])
        events = _frame(db, _COVERAGE_EVENTS, [start, end])
        days = days.merge(attempts, on="day", how="left").merge(events, on="day", how="left")
    for column in COVERAGE_COLUMNS[1:]:
        days[column] = days[column].fillna(0).astype("int64") if column in days else 0
    days = days[COVERAGE_COLUMNS]
    never = int(days["never_logged"].sum())
    if never:
        summary = (f"{number(never)} calls attempted but never logged (older than the stale threshold, "
                   "no usage event with their attempt_id): see stale attempts below")
    else:
        summary = (f"0 attempted-but-never-logged calls; {number(int(days['attempted'].sum()))} attempted, "
                   f"{number(int(days['logged'].sum()))} logged")
    return CheckResult("coverage", title, "warning" if never else "ok", never, summary, days)


_STALE = """
SELECT a.attempt_id, a.ts, a.use_case, a.user_id, a.tenant_id, a.provider, a.model, a.estimated_tokens,
       date_diff('second', a.ts, ?) AS age_seconds
FROM call_attempts a
WHERE a.day BETWEEN ? AND ? AND a.ts <= ?
  AND NOT EXISTS (SELECT 1 FROM usage_events e WHERE e.attempt_id = a.attempt_id)
ORDER BY a.ts DESC
"""


def stale_attempts(db, settings: Settings, start: dt.date, end: dt.date, stale_before: dt.datetime,
                   now: dt.datetime) -> CheckResult:
    """Check 2: attempts older than the stale threshold with no usage logged: potential unlogged LLM calls."""
    title = f"Stale in-flight attempts (older than {settings.stale_attempt_seconds} s)"
    if db is None:
        return CheckResult("stale_attempts", title, "ok", 0, "0 potential unlogged LLM calls (the store is empty)")
    params = [now, start, end, stale_before]
    count = _scalar(db, f"SELECT COUNT(*) FROM ({_STALE})", params)
    rows = _frame(db, _STALE + " LIMIT ?", params + [MAX_ROWS])
    if not count:
        return CheckResult("stale_attempts", title, "ok", 0, "0 potential unlogged LLM calls", rows)
    by_use_case = rows["use_case"].fillna("(none)").value_counts()
    summary = (f"{number(count)} potential unlogged LLM calls (attempted, no usage logged after "
               f"{settings.stale_attempt_seconds} s), by use case: "
               + ", ".join(f"{name} {n}" for name, n in by_use_case.items()))
    return CheckResult("stale_attempts", title, "warning", count, summary, rows)




def failed_logs(db) -> CheckResult:
    """Check 3: unrecovered fallback-log entries and failed logs, by error."""
    title = "Unrecovered failed logs"
    if db is None:
        return CheckResult("failed_logs", title, "ok", 0, "0 unrecovered failed logs (the store is empty)")
    count = queries.open_failed_count(db)
    rows = _frame(db, queries.OPEN_FAILED_BY_ERROR + " LIMIT ?", [MAX_ROWS])
    if not count:
        return CheckResult("failed_logs", title, "ok", 0, "0 unrecovered failed logs", rows)
    kinds = rows.groupby("kind")["records"].sum()
    summary = (f"{number(count)} LLM calls failed to log and are not recovered: "
               + ", ".join(f"{kind} {n}" for kind, n in kinds.items()))
    return CheckResult("failed_logs", title, "warning", count, summary, rows)


_MISMATCH = """
SELECT event_id, ts, use_case, user_id, provider, model, estimated_tokens, total_tokens,
       round((total_tokens - estimated_tokens) / estimated_tokens, 3) AS ratio
FROM usage_events
WHERE day BETWEEN ? AND ? AND estimated_tokens > 0 AND NOT usage_estimated
  AND abs(total_tokens - estimated_tokens) > CAST(? AS DECIMAL(18, 6)) * estimated_tokens
"""


def estimate_mismatch(db, settings: Settings, start: dt.date, end: dt.date) -> CheckResult:
    """Check 4: calls whose actual tokens differ from the estimate by more than the configured ratio."""
    percent = f"{(settings.estimate_mismatch_ratio * 100).normalize():f}%"
    title = f"Estimate vs actual tokens off by more than {percent}"
    if db is None:
        return CheckResult("estimate_mismatch", title, "ok", 0, "0 mismatches (the store is empty)")
    params = [start, end, str(settings.estimate_mismatch_ratio)]
    count = _scalar(db, f"SELECT COUNT(*) FROM ({_MISMATCH})", params)
    checked = _scalar(db, "SELECT COUNT(*) FROM usage_events WHERE day BETWEEN ? AND ? AND estimated_tokens > 0 "
                          "AND NOT usage_estimated", [start, end])
    rows = _frame(db, _MISMATCH + " ORDER BY abs(total_tokens - estimated_tokens) / estimated_tokens DESC, ts LIMIT ?",
                  params + [MAX_ROWS])
    summary = f"{number(count)} of {number(checked)} calls with an estimate were off by more than {percent}"
    return CheckResult("estimate_mismatch", title, "info" if count else "ok", count, summary, rows)


_LAST_CALLS = """
SELECT use_case, MAX(ts) AS last_call_at, COUNT(*) FILTER (WHERE day BETWEEN ? AND ?) AS calls_in_window
FROM usage_events GROUP BY use_case
"""


def use_cases(db, settings: Settings, start: dt.date, end: dt.date, now: dt.datetime) -> CheckResult:
    """Check 5: each configured use case's last call; those silent too long are reported."""
    limit = settings.silent_use_case_days
    title = f"Use-case coverage (silent for more than {limit} days)"
    seen = _frame(db, _LAST_CALLS, [start, end]) if db is not None else pd.DataFrame(
        columns=["use_case", "last_call_at", "calls_in_window"])
    last = {r.use_case: (r.last_call_at, r.calls_in_window) for r in seen.itertuples()}
    rows = []
    for name in list(settings.use_cases) + sorted(set(last) - set(settings.use_cases)):
        last_call_at, calls = last.get(name, (None, 0))
        configured = name in settings.use_cases
        silent = configured and (last_call_at is None or now - last_call_at > dt.timedelta(days=limit))
        days_silent = None if last_call_at is None else round((now - last_call_at).total_seconds() / 86400, 1)
        rows.append({"use_case": name, "configured": configured, "last_call_at": last_call_at,
                     "days_since_last_call": days_silent, "calls_in_window": int(calls), "silent": silent})
    frame = pd.DataFrame(rows, columns=["use_case", "configured", "last_call_at", "days_since_last_call",
                                        "calls_in_window", "silent"])
    silent = frame[frame["silent"]]
    if silent.empty:
        summary = f"all {len(settings.use_cases)} configured use cases logged a call in the last {limit} days"
        return CheckResult("use_cases", title, "ok", 0, summary, frame)
    noun = "use case" if len(silent) == 1 else "use cases"
    summary = f"{len(silent)} configured {noun} silent for more than {limit} days: " + ", ".join(silent["use_case"])
    return CheckResult("use_cases", title, "warning", len(silent), summary, frame)


_DEFAULT_RATE = """
SELECT provider, model, COUNT(*) AS calls, SUM(total_tokens) AS total_tokens, SUM(cost_usd) AS cost_usd,
       MIN(ts) AS first_seen, MAX(ts) AS last_seen
FROM usage_events
WHERE day BETWEEN ? AND ? AND price_source = 'default-rate'
GROUP BY provider, model ORDER BY calls DESC, provider, model
"""


def default_rate(db, settings: Settings, start: dt.date, end: dt.date) -> CheckResult:
    """Check 6: calls priced at the default rate, by model."""
    title = f"Calls priced at the default rate (${settings.default_rate_per_mtok} per million tokens)"
    if db is None:
        return CheckResult("default_rate", title, "ok", 0, "0 calls priced at the default rate (the store is empty)")
    rows = _frame(db, _DEFAULT_RATE, [start, end])
    count = int(rows["calls"].sum()) if len(rows) else 0
    if not count:
        return CheckResult("default_rate", title, "ok", 0, "0 calls priced at the default rate", rows)
    models = ", ".join(f"{p or '?'}/{m or '?'}" for p, m in zip(rows["provider"], rows["model"]))
    summary = (f"{number(count)} calls have no known price and were charged the default rate: {models} "
               "(add their prices to the price-override file)")
    return CheckResult("default_rate", title, "warning", count, summary, rows)


_SERVICE_TIERS = """
SELECT provider, model, response_model, service_tier, day, COUNT(*) AS calls, SUM(cost_usd) AS cost_usd,
       MIN(ts) AS first_seen
FROM usage_events
WHERE day BETWEEN ? AND ? AND service_tier IS NOT NULL AND NOT list_contains(?, lower(trim(service_tier)))
      AND price_source IN ('price-table', 'override')
GROUP BY ALL ORDER BY calls DESC, provider, model, service_tier, day
"""


def service_tier(db, settings: Settings, start: dt.date, end: dt.date) -> CheckResult:
    """Check 8: calls whose service tier has no price of its own, priced at the standard rate."""
    title = "Calls at a service tier without its own price (priced at the standard rate)"
    rows = _frame(db, _SERVICE_TIERS, [start, end, list(STANDARD_SERVICE_TIERS)]) if db is not None else pd.DataFrame()
    if len(rows):
        pricer = Pricer.from_settings(settings)
        carried = [pricer.carries_service_tier(provider=r.provider, model=r.model, response_model=r.response_model,
                                               service_tier=r.service_tier, ts=r.first_seen)
                   for r in rows.itertuples()]
        rows = rows[~np.array(carried, dtype=bool)].reset_index(drop=True)
    count = int(rows["calls"].sum()) if len(rows) else 0
    if not count:
        return CheckResult("service_tier", title, "ok", 0, "0 calls at a service tier without its own price", rows)
    tiers = ", ".join(sorted({f"{p or '?'}/{m or '?'} at {t}"
                              for p, m, t in zip(rows["provider"], rows["model"], rows["service_tier"])}))
    summary = (f"{number(count)} calls were served at a tier the price table has no price for and were "
               f"charged the standard rate: {tiers} (the bill differs: flex and batch cost about half, priority more; "
               "compare with the provider's invoice)")
    return CheckResult("service_tier", title, "warning", count, summary, rows)


def reconciliation(settings: Settings, export: str | Path | None) -> CheckResult:
    """Check 7: the provider's export against the store, when one is given."""
    title = "Reconciliation with the provider's usage export"
    if export is None:
        return CheckResult("reconciliation", title, "skipped", 0,
                           "skipped: run `llmcost reconcile EXPORT.csv` with a provider's usage export")
    result = reconcile(settings, export)
    differing = result.differences
    if differing.empty:
        return CheckResult("reconciliation", title, "ok", 0,
                           f"{len(result.rows)} day-and-model rows match within the tolerance", result.rows)
    return CheckResult("reconciliation", title, "warning", len(differing),
                       f"{len(differing)} of {len(result.rows)} day-and-model rows differ from the export", differing)


def _check_alerts(settings: Settings, today: dt.date, checks: list[CheckResult]) -> list[Alert]:
    """Alerts for check findings worth a notification; coverage and failed logs are covered elsewhere."""
    by_name = {c.name: c for c in checks}
    alerts = []
    stale = by_name["stale_attempts"]
    if stale.count:
        alerts.append(Alert(today, "warning", "logging", "unlogged_calls", "attempts", Decimal(stale.count),
                            Decimal(0), stale.summary + "."))
    for row in by_name["use_cases"].rows.itertuples():
        if not row.silent:
            continue
        never = pd.isna(row.days_since_last_call)
        since = "has never logged a call" if never else f"has not logged a call for {row.days_since_last_call:g} days"
        alerts.append(Alert(today, "warning", "use_case", row.use_case, "days_since_last_call",
                            Decimal(0) if never else Decimal(str(row.days_since_last_call)),
                            Decimal(settings.silent_use_case_days),
                            f"Use case {row.use_case} {since} (reported after {settings.silent_use_case_days} days)."))
    rated = by_name["default_rate"]
    if rated.count:
        alerts.append(Alert(today, "warning", "system", "default_rate_pricing", "calls", Decimal(rated.count),
                            Decimal(0), rated.summary + "."))
    reconciled = by_name["reconciliation"]
    if reconciled.count:
        alerts.append(Alert(today, "warning", "system", "reconciliation", "rows", Decimal(reconciled.count),
                            Decimal(0), reconciled.summary + "."))
    return alerts


def _cell(column: str, value: Any, width: int = 80) -> str:
    """One value as a text-table cell: money in dollars, counts with separators, long text cut short."""
    if value is None or value is pd.NaT or (isinstance(value, float) and pd.isna(value)):
        return "-"
    if isinstance(value, dt.datetime):
        return value.strftime("%Y-%m-%d %H:%M:%S")
    if isinstance(value, dt.date):
        return value.isoformat()
    if column.endswith("cost_usd"):
        return money(Decimal(value))
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        return number(value)
    text = str(value)
    return text if len(text) <= width else text[: width - 1] + "…"
