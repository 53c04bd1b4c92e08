"""Daily and weekly reports: what was spent, on what, by whom, and whether a threshold was crossed.

`daily(settings, day)` covers one calendar day in the configured time zone (default: yesterday);
`weekly(settings, end)` the seven days ending on `end` (default: yesterday), day by day, with the week's
totals against the previous seven days. Each renders as text (terminal, log), JSON (money as exact
decimal strings) or HTML for e-mail (inline styles, no external assets, every value escaped).
"""

from __future__ import annotations

import datetime as dt
import html
import json
import re
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from llmcost.config import Settings
from llmcost.control.policy import judge_user, system_level
from llmcost.control.rebuild import day_spend
from llmcost.events import UNATTRIBUTED
from llmcost.money import day_bounds_utc, money, number, today_in
from llmcost.monitor.alerts import LEVEL_RANK
from llmcost.monitor.notify import Message
from llmcost.store.connection import reading
from llmcost.store.failed_logs import OPEN_FAILED
from llmcost.store.queries import USER_ACCOUNT_TYPE

TOP_N = 10
ZERO = Decimal(0)


@dataclass(frozen=True)
class Totals:
    calls: int = 0
    error_calls: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cached_tokens: int = 0
    total_tokens: int = 0
    cost_usd: Decimal = ZERO
    cache_write_tokens: int = 0
    cache_write_1h_tokens: int = 0  # inside cache_write_tokens

    @property
    def token_line(self) -> str:
        """Tokens: total (input, output, cached, and the cache writes when there are any)."""
        writes = (f", cache writes {number(self.cache_write_tokens)} "
                  f"({number(self.cache_write_1h_tokens)} kept 1 hour)") if self.cache_write_tokens else ""
        return (f"{number(self.total_tokens)} (input {number(self.input_tokens)}, "
                f"output {number(self.output_tokens)}, cached {number(self.cached_tokens)}{writes})")

    def to_dict(self) -> dict[str, Any]:
        return {**self.__dict__, "cost_usd": str(self.cost_usd)}


@dataclass
class Report:
    """A summary of `start`..`end` (inclusive days). Rows are small lists of dicts, ready for a table."""

    kind: str
    start: dt.date
    end: dt.date
    timezone: str
    totals: Totals
    by_use_case: list[dict[str, Any]]
    by_model: list[dict[str, Any]]
    top_users: list[dict[str, Any]]
    top_tenants: list[dict[str, Any]]
    days: list[dict[str, Any]]
    failed_logs: int
    unrecovered_failed_logs: int
    alerts: list[dict[str, Any]]
    threshold_line: str
    previous: Totals | None = None
    generated_at: dt.datetime = field(default_factory=lambda: dt.datetime.now(dt.timezone.utc))

    @property
    def title(self) -> str:
        if self.kind == "daily":
            return f"LLM usage report for {self.start.isoformat()}"
        return f"LLM usage report for the week {self.start.isoformat()} to {self.end.isoformat()}"

    @property
    def changes(self) -> dict[str, Decimal | None]:
        """Percent change of calls, tokens and cost against the previous period (None without one, or from zero)."""
        if self.previous is None:
            return {}
        return {
            name: _percent_change(getattr(self.totals, name), getattr(self.previous, name))
            for name in ("calls", "total_tokens", "cost_usd")
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind, "start": self.start, "end": self.end, "timezone": self.timezone,
            "generated_at": self.generated_at, "totals": self.totals.to_dict(),
            "previous": self.previous.to_dict() if self.previous else None, "change_percent": self.changes,
            "threshold": self.threshold_line, "failed_logs": self.failed_logs,
            "unrecovered_failed_logs": self.unrecovered_failed_logs, "days": self.days,
            "by_use_case": self.by_use_case, "by_model": self.by_model, "top_users": self.top_users,
            "top_tenants": self.top_tenants, "alerts": self.alerts,
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, default=json_default)

    def to_text(self) -> str:
        t = self.totals
        lines = [self.title, "=" * len(self.title), f"Times in {self.timezone}.", ""]
        lines.append(f"Calls: {number(t.calls)} ({number(t.error_calls)} failed)"
                     f"   Cost: {money(t.cost_usd)}")
        lines.append(f"Tokens: {t.token_line}")
        if self.previous is not None:
            lines.append("Against the previous week: " + ", ".join(
                f"{label} {_format_change(self.changes[name])}"
                for label, name in (("calls", "calls"), ("tokens", "total_tokens"), ("cost", "cost_usd"))))
        lines += [self.threshold_line, self._failed_line(), ""]
        for heading, headers, rows in self._tables():
            lines += [heading, text_table(headers, rows) if rows else "  (none)", ""]
        return "\n".join(lines).rstrip() + "\n"

    def to_html(self) -> str:
        t = self.totals
        cell = 'style="padding:2px 12px 2px 0"'
        summary = [
            ("Calls", f"{number(t.calls)} ({number(t.error_calls)} failed)"),
            ("Cost", money(t.cost_usd)),
            ("Tokens", t.token_line),
        ]
        if self.previous is not None:
            summary.append(("Against the previous week", ", ".join(
                f"{label} {_format_change(self.changes[name])}"
                for label, name in (("calls", "calls"), ("tokens", "total_tokens"), ("cost", "cost_usd")))))
        threshold_colour = "#b91c1c" if any(d["level"] for d in self.days) else "#166534"
        parts = [
            '<html><body style="font-family:Arial,Helvetica,sans-serif;font-size:14px;color:#111;'
            'margin:0;padding:16px">',
            f'<h2 style="font-size:18px;margin:0 0 4px 0">{html.escape(self.title)}</h2>',
            f'<p style="margin:0 0 12px 0;color:#555">Times in {html.escape(self.timezone)}.</p>',
            '<table style="border-collapse:collapse;margin-bottom:12px">',
            *(f"<tr><td {cell}><b>{html.escape(k)}</b></td><td {cell}>{html.escape(v)}</td></tr>" for k, v in summary),
            "</table>",
            f'<p style="margin:0 0 4px 0;font-weight:bold;color:{threshold_colour}">'
            f"{html.escape(self.threshold_line)}</p>",
            f'<p style="margin:0 0 12px 0">{html.escape(self._failed_line())}</p>',
        ]
        for heading, headers, rows in self._tables():
            parts.append(f'<h3 style="font-size:15px;margin:12px 0 4px 0">{html.escape(heading)}</h3>')
            parts.append(_html_table(headers, rows) if rows else '<p style="margin:0;color:#555">(none)</p>')
        parts.append("</body></html>")
        return "\n".join(parts)

    def message(self) -> Message:
        """The report as a notification: subject line, text body and HTML alternative."""
        calls = "call" if self.totals.calls == 1 else "calls"
        subject = (f"[llmcost] {self.title}: {money(self.totals.cost_usd)}, "
                   f"{number(self.totals.calls)} {calls}")
        return Message(subject, self.to_text(), self.to_html())

    def _failed_line(self) -> str:
        return (f"Failed logs: {number(self.failed_logs)} recorded in the period, "
                f"{number(self.unrecovered_failed_logs)} of them not recovered.")

    def _tables(self) -> list[tuple[str, list[str], list[list[str]]]]:
        count = number
        # A day's report says what each top user's daily limit did that day (`policy.judge_user`).
        limit_header = ["Daily limit"] if self.kind == "daily" else []
        tables = []
        if self.kind == "weekly":
            tables.append(("By day", ["Day", "Calls", "Tokens", "Cost", "Level crossed"],
                           [[d["day"].isoformat(), count(d["calls"]), count(d["total_tokens"]), money(d["cost_usd"]),
                             d["level"] or "-"] for d in self.days]))
        tables += [
            ("By use case", ["Use case", "Calls", "Tokens", "Cost"],
             [[r["use_case"], count(r["calls"]), count(r["total_tokens"]), money(r["cost_usd"])]
              for r in self.by_use_case]),
            ("By provider and model", ["Provider", "Model", "Calls", "Tokens", "Cost"],
             [[r["provider"] or "-", r["model"] or "-", count(r["calls"]), count(r["total_tokens"]),
               money(r["cost_usd"])] for r in self.by_model]),
            (f"Top {TOP_N} users", ["User", "Account type", "Calls", "Tokens", "Cost"] + limit_header,
             [[r["user_id"], r["account_type"] or "-", count(r["calls"]), count(r["total_tokens"]),
               money(r["cost_usd"])] + ([r["daily_limit"]] if limit_header else []) for r in self.top_users]),
            (f"Top {TOP_N} tenants", ["Tenant", "Users", "Calls", "Tokens", "Cost"],
             [[r["tenant_id"], count(r["users"]), count(r["calls"]), count(r["total_tokens"]), money(r["cost_usd"])]
              for r in self.top_tenants]),
            ("Alerts raised", ["Day", "Level", "Scope", "Message"],
             [[a["day"].isoformat(), a["level"], f'{a["scope"]}:{a["scope_id"]}', a["message"]] for a in self.alerts]),
        ]
        return tables


def daily(settings: Settings, day: dt.date | None = None) -> Report:
    """The report for one day (default: yesterday in the configured time zone)."""
    day = day or today_in(settings.tz) - dt.timedelta(days=1)
    return _build(settings, "daily", day, day)


def weekly(settings: Settings, end: dt.date | None = None) -> Report:
    """The report for the seven days ending on `end` (default: yesterday), with the previous seven days' totals."""
    end = end or today_in(settings.tz) - dt.timedelta(days=1)
    return _build(settings, "weekly", end - dt.timedelta(days=6), end)


def _build(settings: Settings, kind: str, start: dt.date, end: dt.date) -> Report:
    figures: dict[str, Any] = {
        "totals": Totals(), "by_use_case": [], "by_model": [], "top_users": [], "top_tenants": [],
        "per_day": {}, "failed": (0, 0), "alerts": [], "previous": Totals() if kind == "weekly" else None,
    }
    with reading(settings.db_path) as db:
        if db is not None:
            figures.update(_query(db, settings, start, end))
            if kind == "weekly":
                figures["previous"] = _totals(db, start - dt.timedelta(days=7), end - dt.timedelta(days=7))
    if kind == "daily":
        for user in figures["top_users"]:
            if user["user_id"] == UNATTRIBUTED:  # not a user: calls that named none have no limit
                user["daily_limit"] = "-"
                continue
            judgement = judge_user(settings.limit_for(user["account_type"]), int(user["total_tokens"] or 0),
                                   Decimal(user["cost_usd"] or 0))
            user["daily_limit"] = judgement.action
    days = []
    for offset in range((end - start).days + 1):
        day = start + dt.timedelta(days=offset)
        calls, tokens, cost = figures["per_day"].get(day, (0, 0, ZERO))
        crossed = system_level(settings, day_spend(settings, day) if day >= today_in(settings.tz) - dt.timedelta(days=1)
                                         else cost)  # the days the tracker still counts live: its figure
        days.append({"day": day, "calls": calls, "total_tokens": tokens, "cost_usd": cost,
                     "level": crossed[0] if crossed else None, "threshold_usd": crossed[1] if crossed else None})
    return Report(
        kind=kind, start=start, end=end, timezone=settings.timezone, totals=figures["totals"],
        by_use_case=figures["by_use_case"], by_model=figures["by_model"], top_users=figures["top_users"],
        top_tenants=figures["top_tenants"], days=days, failed_logs=figures["failed"][0],
        unrecovered_failed_logs=figures["failed"][1], alerts=figures["alerts"],
        threshold_line=_threshold_line(settings, kind, days), previous=figures["previous"],
    )


_TOTALS = """
SELECT COUNT(*), COUNT(*) FILTER (WHERE status = 'error'), COALESCE(SUM(input_tokens), 0),
       COALESCE(SUM(output_tokens), 0), COALESCE(SUM(cache_read_tokens), 0), COALESCE(SUM(total_tokens), 0),
       COALESCE(SUM(cost_usd), 0), COALESCE(SUM(cache_write_tokens), 0), COALESCE(SUM(cache_write_1h_tokens), 0)
FROM usage_events WHERE day BETWEEN ? AND ?
"""
_BY_USE_CASE = """
SELECT use_case, COUNT(*) AS calls, SUM(total_tokens) AS total_tokens, SUM(cost_usd) AS cost_usd
FROM usage_events WHERE day BETWEEN ? AND ?
GROUP BY use_case ORDER BY cost_usd DESC, use_case
"""
_BY_MODEL = """
SELECT provider, model, COUNT(*) AS calls, SUM(total_tokens) AS total_tokens, SUM(cost_usd) AS cost_usd
FROM usage_events WHERE day BETWEEN ? AND ?
GROUP BY provider, model ORDER BY cost_usd DESC, provider, model
"""
_TOP_USERS = """
SELECT user_id, """ + USER_ACCOUNT_TYPE + """ AS account_type,
       COUNT(*) AS calls, SUM(total_tokens) AS total_tokens, SUM(cost_usd) AS cost_usd
FROM usage_events WHERE day BETWEEN ? AND ?
GROUP BY user_id ORDER BY cost_usd DESC, user_id LIMIT ?
"""
_TOP_TENANTS = """
SELECT tenant_id, COUNT(DISTINCT user_id) AS users, COUNT(*) AS calls, SUM(total_tokens) AS total_tokens,
       SUM(cost_usd) AS cost_usd
FROM usage_events WHERE day BETWEEN ? AND ?
GROUP BY tenant_id ORDER BY cost_usd DESC, tenant_id LIMIT ?
"""
_PER_DAY = """
SELECT day, COUNT(*), SUM(total_tokens), SUM(cost_usd) FROM usage_events WHERE day BETWEEN ? AND ? GROUP BY day
"""
_FAILED = f"""
SELECT COUNT(*), COUNT(*) FILTER (WHERE {OPEN_FAILED}) FROM failed_logs WHERE logged_at >= ? AND logged_at < ?
"""
# One row per alert, whichever notifiers carried it.
_ALERTS = """
SELECT day, level, scope, scope_id, arg_min(message, raised_at) AS message
FROM alerts WHERE day BETWEEN ? AND ?
GROUP BY day, level, scope, scope_id
ORDER BY day, CASE level WHEN 'shutdown' THEN 0 WHEN 'critical' THEN 1 WHEN 'warning' THEN 2 ELSE 3 END,
         scope, scope_id
"""


def _rows(db, sql: str, params: list) -> list[dict[str, Any]]:
    result = db.execute(sql, params)
    names = [d[0] for d in result.description]
    return [dict(zip(names, row)) for row in result.fetchall()]


def _totals(db, start: dt.date, end: dt.date) -> Totals:
    row = db.execute(_TOTALS, [start, end]).fetchall()[0]
    return Totals(*(int(v) for v in row[:6]), Decimal(row[6]), *(int(v) for v in row[7:]))


def _query(db, settings: Settings, start: dt.date, end: dt.date) -> dict[str, Any]:
    period = [start, end]
    failed_from, failed_to = day_bounds_utc(start, end, settings.tz)
    return {
        "totals": _totals(db, start, end),
        "by_use_case": _rows(db, _BY_USE_CASE, period),
        "by_model": _rows(db, _BY_MODEL, period),
        "top_users": _rows(db, _TOP_USERS, period + [TOP_N]),
        "top_tenants": _rows(db, _TOP_TENANTS, period + [TOP_N]),
        "per_day": {day: (calls, int(tokens), Decimal(cost))
                    for day, calls, tokens, cost in db.execute(_PER_DAY, period).fetchall()},
        "failed": tuple(db.execute(_FAILED, [failed_from, failed_to]).fetchall()[0]),
        "alerts": _rows(db, _ALERTS, period),
    }


def _threshold_line(settings: Settings, kind: str, days: list[dict[str, Any]]) -> str:
    warning = money(settings.system.warning_usd)
    crossed = [d for d in days if d["level"]]
    if kind == "daily":
        day = days[0]
        if not crossed:
            return f"Threshold: spend of {money(day['cost_usd'])} stayed below the warning level of {warning}."
        return (f"Threshold: spend of {money(day['cost_usd'])} crossed the {day['level']} level "
                f"of {money(day['threshold_usd'])}.")
    if not crossed:
        return f"Threshold: no day crossed the warning level of {warning}."
    listed = ", ".join(f"{d['day'].isoformat()} ({d['level']}, {money(d['cost_usd'])})" for d in crossed)
    worst = max((d["level"] for d in crossed), key=LEVEL_RANK.__getitem__)
    return f"Threshold: {len(crossed)} of {len(days)} days crossed a level (highest: {worst}): {listed}."


def _percent_change(now: Any, before: Any) -> Decimal | None:
    if not before:
        return None
    return ((Decimal(now) - Decimal(before)) * 100 / Decimal(before)).quantize(Decimal("0.1"))


def _format_change(change: Decimal | None) -> str:
    return "n/a (nothing the week before)" if change is None else f"{change:+}%"


_NUMBER = re.compile(r"^[-+]?(\$|<\$)?[\d,.]+%?$")


def _numeric_columns(rows: list[list[str]]) -> list[bool]:
    """Columns whose every cell is a number or an amount, to be right-aligned."""
    if not rows:
        return []
    return [all(_NUMBER.match(str(row[i])) for row in rows) for i in range(len(rows[0]))]


def text_table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(c)) for c in column) for column in zip(headers, *rows)]
    right = _numeric_columns(rows) or [False] * len(headers)

    def line(cells: list[str]) -> str:
        return "  " + "  ".join(str(c).rjust(w) if r else str(c).ljust(w)
                                for c, w, r in zip(cells, widths, right)).rstrip()
    return "\n".join([line(headers), line(["-" * w for w in widths]), *(line(r) for r in rows)])


def _html_table(headers: list[str], rows: list[list[str]]) -> str:
    right = _numeric_columns(rows) or [False] * len(headers)
    align = ["right" if r else "left" for r in right]
    th = "padding:4px 10px;border-bottom:2px solid #ccc;background:#f5f5f5"
    td = "padding:3px 10px;border-bottom:1px solid #eee"
    head = "".join(f'<th style="text-align:{a};{th}">{html.escape(h)}</th>' for h, a in zip(headers, align))
    body = "".join(
        "<tr>" + "".join(f'<td style="text-align:{a};{td}">{html.escape(str(c))}</td>' for c, a in zip(row, align))
        + "</tr>"
        for row in rows
    )
    return f'<table style="border-collapse:collapse;font-size:13px"><tr>{head}</tr>{body}</table>'


def json_default(value: Any) -> Any:
    """For json.dumps: money as exact decimal strings, times as ISO-8601, numpy scalars as plain numbers."""
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, (dt.datetime, dt.date)):
        return value.isoformat()
    if hasattr(value, "item"):
        return value.item()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")
