"""Deliver alerts and reports: the log always, e-mail over SMTP and a Slack incoming webhook when configured.

Each notifier takes the alerts at or above its `min_level` (e-mail: critical, Slack: warning by default;
the log takes everything); Slack also takes every `logging` alert (failed logs) whatever its level.
An alert already delivered by a notifier for the same (day, scope, scope_id, level) is not sent
through it again. A notifier that fails is tried again up to `settings.notifier_retries`
more times with a growing pause, then recorded as undelivered, so the next run tries again; one notifier's
failure never stops the others, and nothing here raises. Every attempt is recorded in the store's `alerts`
table, one row per alert per notifier, which is the history the dashboard shows.
"""

from __future__ import annotations

import datetime as dt
import html
import json
import logging
import smtplib
import ssl
import time
import urllib.request
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from email.message import EmailMessage
from typing import Protocol

import pandas as pd

from llmcost.config import EmailSettings, Settings, SlackSettings
from llmcost.monitor.alerts import LEVEL_RANK, Alert, highest_level
from llmcost.store.connection import reading, writing

log = logging.getLogger("llmcost")

SEND_TIMEOUT_SECONDS = 10
LOG_LEVELS = {"info": logging.INFO, "warning": logging.WARNING, "critical": logging.ERROR, "shutdown": logging.CRITICAL}
SLACK_MARKS = {"info": ":information_source:", "warning": ":warning:", "critical": ":rotating_light:",
               "shutdown": ":octagonal_sign:"}
LEVEL_COLOURS = {"info": "#2563eb", "warning": "#b45309", "critical": "#b91c1c", "shutdown": "#7f1d1d"}


@dataclass(frozen=True)
class Message:
    subject: str
    text: str
    html: str | None = None


class Notifier(Protocol):
    name: str
    min_level: str

    def send(self, message: Message, level: str) -> None:
        """Deliver the message or raise."""


class LogNotifier:
    name = "log"
    min_level = "info"

    def send(self, message: Message, level: str) -> None:
        log.log(LOG_LEVELS.get(level, logging.INFO), "%s", message.text)


class EmailNotifier:
    name = "email"

    def __init__(self, email: EmailSettings):
        self.email = email
        self.min_level = email.min_level

    def send(self, message: Message, level: str) -> None:
        mail = EmailMessage()
        mail["Subject"] = message.subject
        mail["From"] = self.email.sender
        mail["To"] = ", ".join(self.email.recipients)
        mail.set_content(message.text)
        if message.html:
            mail.add_alternative(message.html, subtype="html")
        if self.email.security == "ssl":
            smtp = smtplib.SMTP_SSL(self.email.host, self.email.port, timeout=SEND_TIMEOUT_SECONDS,
                                    context=ssl.create_default_context())
        else:
            smtp = smtplib.SMTP(self.email.host, self.email.port, timeout=SEND_TIMEOUT_SECONDS)
        with smtp:
            if self.email.security == "starttls":
                smtp.starttls(context=ssl.create_default_context())
            if self.email.username:
                smtp.login(self.email.username, self.email.password or "")
            smtp.send_message(mail)


class SlackNotifier:
    name = "slack"

    def __init__(self, slack: SlackSettings):
        self.webhook_url = slack.webhook_url
        self.min_level = slack.min_level

    def send(self, message: Message, level: str) -> None:
        if not self.webhook_url.startswith(("https://", "http://")):
            raise ValueError(f"slack.webhook_url must be an https:// URL, not {self.webhook_url[:40]!r}")
        body = json.dumps({"text": message.text}).encode()
        request = urllib.request.Request(self.webhook_url, data=body, method="POST",
                                         headers={"Content-Type": "application/json"})
        # urlopen raises HTTPError on a 4xx/5xx answer, which the retry loop records.
        with urllib.request.urlopen(request, timeout=SEND_TIMEOUT_SECONDS) as response:
            response.read()


def configured_notifiers(settings: Settings) -> list[Notifier]:
    """The log, plus e-mail and Slack when their settings are complete."""
    notifiers: list[Notifier] = [LogNotifier()]
    if settings.email.enabled:
        notifiers.append(EmailNotifier(settings.email))
    if settings.slack.enabled:
        notifiers.append(SlackNotifier(settings.slack))
    return notifiers


@dataclass(frozen=True)
class Delivery:
    """What happened to one message through one notifier."""

    notifier: str
    alerts: tuple[Alert, ...]
    delivered: bool
    attempts: int
    error: str | None = None


def send_alerts(
    settings: Settings,
    alerts: Sequence[Alert],
    *,
    notifiers: Sequence[Notifier] | None = None,
    backoff: float = 1.0,
    now: dt.datetime | None = None,
) -> list[Delivery]:
    """Send each alert through each notifier that takes its level and has not delivered it yet; record every attempt.

    Returns one Delivery per notifier that had something new to send. Never raises.
    """
    notifiers = configured_notifiers(settings) if notifiers is None else list(notifiers)
    unique = list({a.key: a for a in alerts}.values())
    if not unique:
        return []
    already = _delivered_keys(settings, unique)
    deliveries = []
    for notifier in notifiers:
        due = [a for a in unique if _takes(notifier, a) and (*a.key, notifier.name) not in already]
        if not due:
            continue
        level = highest_level(due)
        delivered, attempts, error = _attempt(notifier, alert_message(due, notifier.name), level,
                                              settings.notifier_retries, backoff)
        deliveries.append(Delivery(notifier.name, tuple(due), delivered, attempts, error))
    _record(settings, deliveries, now or dt.datetime.now(dt.timezone.utc))
    return deliveries


def send_report(
    settings: Settings,
    message: Message,
    *,
    notifiers: Sequence[Notifier] | None = None,
    backoff: float = 1.0,
) -> list[Delivery]:
    """Send a report through every configured notifier (the log gets its subject line). Never raises."""
    notifiers = configured_notifiers(settings) if notifiers is None else list(notifiers)
    deliveries = []
    for notifier in notifiers:
        outgoing = Message(message.subject, message.subject) if notifier.name == "log" else message
        if notifier.name == "slack":
            text = f"*{_slack_escape(message.subject)}*\n```{_slack_escape(message.text)}```"
            outgoing = Message(message.subject, text)
        delivered, attempts, error = _attempt(notifier, outgoing, "info", settings.notifier_retries, backoff)
        deliveries.append(Delivery(notifier.name, (), delivered, attempts, error))
    return deliveries


def _takes(notifier: Notifier, alert: Alert) -> bool:
    # Slack hears of every logging failure whatever its level setting: lost records need a person soon.
    if notifier.name == "slack" and alert.scope == "logging":
        return True
    return alert.rank >= LEVEL_RANK[notifier.min_level]


def alert_message(alerts: Sequence[Alert], notifier: str) -> Message:
    """The e-mail, Slack or log text for a batch of alerts, highest level first."""
    ordered = sorted(alerts, key=lambda a: -a.rank)
    top = ordered[0]
    if len(ordered) == 1:
        subject = f"[llmcost] {top.level.upper()}: {top.message}"
    else:
        subject = f"[llmcost] {len(ordered)} alerts, highest {top.level}: {top.message}"
    if notifier == "slack":
        text = "\n".join(f"{SLACK_MARKS[a.level]} *{a.level}* {_slack_escape(a.message)}" for a in ordered)
        return Message(subject, text)
    text = "\n".join(f"{a.level.upper():<8} {a.message}" for a in ordered)
    return Message(subject, text, _alerts_html(ordered) if notifier == "email" else None)


def _alerts_html(alerts: Sequence[Alert]) -> str:
    rows = "".join(
        f'<tr><td style="padding:4px 8px;font-weight:bold;color:{LEVEL_COLOURS[a.level]}">{html.escape(a.level)}</td>'
        f'<td style="padding:4px 8px">{html.escape(a.message)}</td></tr>'
        for a in alerts
    )
    return (
        '<html><body style="font-family:Arial,Helvetica,sans-serif;font-size:14px;color:#111">'
        '<p style="margin:0 0 8px 0">llmcost raised these alerts:</p>'
        f'<table style="border-collapse:collapse;border:1px solid #ddd">{rows}</table></body></html>'
    )


def _slack_escape(text: str) -> str:
    # Slack reads <...> as links and mentions (<!channel>); user-supplied ids must stay plain text.
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _attempt(
    notifier: Notifier, message: Message, level: str, retries: int, backoff: float
) -> tuple[bool, int, str | None]:
    allowed = 1 + max(0, retries)
    error = None
    for attempt in range(1, allowed + 1):
        try:
            notifier.send(message, level)
            return True, attempt, None
        except Exception as failure:  # any failure of one notifier must leave the others running
            error = f"{type(failure).__name__}: {failure}"
            log.warning("notifier %s failed (attempt %d of %d): %s", notifier.name, attempt, allowed, error)
            if attempt < allowed and backoff > 0:
                time.sleep(backoff * 2 ** (attempt - 1))
    log.error("notifier %s gave up after %d attempts: %s", notifier.name, allowed, error)
    return False, allowed, error


def _delivered_keys(settings: Settings, alerts: Sequence[Alert]) -> set[tuple]:
    days = [a.day for a in alerts]
    try:
        with reading(settings.db_path) as db:
            if db is None:
                return set()
            rows = db.execute(
                "SELECT DISTINCT day, scope, scope_id, level, notifier FROM alerts "
                "WHERE delivered AND day BETWEEN ? AND ?",
                [min(days), max(days)],
            ).fetchall()
    except Exception as failure:  # sending twice beats not sending a critical alert at all
        log.error("could not read the alert history, sending without de-duplication: %s", failure)
        return set()
    return {tuple(row) for row in rows}


def _record(settings: Settings, deliveries: Sequence[Delivery], now: dt.datetime) -> None:
    raised_at = now.astimezone(dt.timezone.utc).replace(tzinfo=None)
    rows = [
        {
            "alert_id": str(uuid.uuid4()), "raised_at": raised_at, "day": alert.day, "level": alert.level,
            "scope": alert.scope, "scope_id": alert.scope_id, "metric": alert.metric,
            "figure": str(alert.figure), "threshold": str(alert.threshold), "message": alert.message,
            "notifier": delivery.notifier, "delivered": delivery.delivered, "attempts": delivery.attempts,
            "last_error": delivery.error,
        }
        for delivery in deliveries
        for alert in delivery.alerts
    ]
    if not rows:
        return
    frame = pd.DataFrame(rows).astype({"figure": object, "threshold": object, "last_error": object})
    try:
        with writing(settings.db_path) as db:
            db.register("delivery_rows", frame)
            db.execute(
                "INSERT INTO alerts SELECT alert_id, raised_at, CAST(day AS DATE), level, scope, scope_id, metric, "
                "CAST(figure AS DECIMAL(24, 12)), CAST(threshold AS DECIMAL(24, 12)), message, notifier, "
                "delivered, attempts, last_error FROM delivery_rows"
            )
    except Exception as failure:  # the alerts went out; losing their history must not crash the run
        log.error("could not record %d alert deliveries in %s: %s", len(rows), settings.db_path, failure)
