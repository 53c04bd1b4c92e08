"""Notifiers against real servers: an aiosmtpd SMTP server and a local HTTP server standing in for Slack."""

from __future__ import annotations

import dataclasses
import datetime as dt
import email
import email.policy
import html
import http.server
import json
import socket
import threading
from decimal import Decimal

import pytest
from aiosmtpd.controller import Controller

from llmcost.config import EmailSettings, SlackSettings
from llmcost.monitor import notify
from llmcost.monitor.alerts import Alert
from llmcost.store.connection import reading

DAY = dt.date(2025, 3, 10)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Inbox:
    def __init__(self):
        self.messages = []

    async def handle_DATA(self, server, session, envelope):
        message = email.message_from_bytes(envelope.content, policy=email.policy.default)
        self.messages.append((envelope.rcpt_tos, message))
        return "250 Message accepted for delivery"


@pytest.fixture
def smtp_server():
    inbox = Inbox()
    controller = Controller(inbox, hostname="127.0.0.1", port=free_port())
    controller.start()
    yield controller, inbox
    controller.stop()


class SlackHook:
    """A local webhook endpoint that records each JSON body and answers with `status`."""

    def __init__(self, status: int = 200):
        self.status = status
        self.bodies = []
        hook = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                length = int(self.headers["Content-Length"])
                hook.bodies.append((self.headers["Content-Type"], json.loads(self.rfile.read(length))))
                self.send_response(hook.status)
                self.end_headers()
                self.wfile.write(b"ok" if hook.status == 200 else b"server_error")

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/services/T000/B000/XXX"
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.02},
                                       daemon=True)
        self.thread.start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def slack_hook():
    hook = SlackHook()
    yield hook
    hook.close()


def with_notifiers(settings, smtp_port=None, slack_url=None, retries=2, slack_min_level="warning"):
    mail = EmailSettings(host="127.0.0.1", port=smtp_port, security="none", sender="llmcost@test.example",
                         recipients=("ops@test.example", "cfo@test.example")) if smtp_port else EmailSettings()
    return dataclasses.replace(settings, email=mail, notifier_retries=retries,
                               slack=SlackSettings(webhook_url=slack_url, min_level=slack_min_level))


def alert(level="critical", scope="system", scope_id="all", message=None, day=DAY):
    text = message or f"System-wide spend on {day} is $52.10, above the critical level of $50.00."
    return Alert(day, level, scope, scope_id, "cost_usd", Decimal("52.10"), Decimal("50"), text)


def stored_alerts(settings):
    with reading(settings.db_path) as db:
        if db is None:
            return []
        result = db.execute("SELECT day, level, scope, scope_id, notifier, delivered, attempts, last_error, figure, "
                            "threshold, message FROM alerts ORDER BY notifier, level")
        names = [d[0] for d in result.description]
        return [dict(zip(names, row)) for row in result.fetchall()]


def test_email_and_slack_receive_alerts_by_level(settings, smtp_server, slack_hook):
    controller, inbox = smtp_server
    s = with_notifiers(settings, controller.port, slack_hook.url)
    critical = alert()
    warning = alert("warning", "user", "student-7", "User student-7 (student) used $0.06 today, over the soft limit.")

    deliveries = notify.send_alerts(s, [warning, critical], backoff=0)

    assert {d.notifier: (d.delivered, len(d.alerts)) for d in deliveries} == {
        "log": (True, 2), "email": (True, 1), "slack": (True, 2)}
    # E-mail from the critical level up: one message, to every recipient, with a plain and an HTML part.
    assert len(inbox.messages) == 1
    recipients, message = inbox.messages[0]
    assert sorted(recipients) == ["cfo@test.example", "ops@test.example"]
    assert message["Subject"] == f"[llmcost] CRITICAL: {critical.message}"
    assert critical.message in message.get_body(("plain",)).get_content()
    assert "student-7" not in message.get_body(("plain",)).get_content()
    assert html.escape(critical.message) in message.get_body(("html",)).get_content()
    # Slack for every warning: one JSON post carrying both.
    assert len(slack_hook.bodies) == 1
    content_type, body = slack_hook.bodies[0]
    assert content_type == "application/json"
    assert critical.message in body["text"] and warning.message in body["text"]
    assert body["text"].index(critical.message) < body["text"].index(warning.message)
    # Recorded: one row per alert per notifier.
    rows = stored_alerts(s)
    assert sorted((r["notifier"], r["level"]) for r in rows) == [
        ("email", "critical"), ("log", "critical"), ("log", "warning"), ("slack", "critical"), ("slack", "warning")]
    assert all(r["delivered"] and r["attempts"] == 1 and r["last_error"] is None for r in rows)
    assert {r["figure"] for r in rows} == {Decimal("52.10")}


def test_same_alert_is_not_sent_twice(settings, smtp_server, slack_hook):
    controller, inbox = smtp_server
    s = with_notifiers(settings, controller.port, slack_hook.url)
    notify.send_alerts(s, [alert()], backoff=0)
    again = notify.send_alerts(s, [alert(message="System-wide spend today is $58.00, above the critical level.")],
                               backoff=0)
    assert again == []
    assert len(inbox.messages) == 1 and len(slack_hook.bodies) == 1
    assert len(stored_alerts(s)) == 3
    # A higher level, another scope or another day is a new alert.
    escalated = notify.send_alerts(s, [alert("shutdown"), alert(day=DAY + dt.timedelta(days=1)),
                                       alert(scope="user", scope_id="u1")], backoff=0)
    assert {d.notifier: len(d.alerts) for d in escalated} == {"log": 3, "email": 3, "slack": 3}
    assert len(inbox.messages) == 2 and len(slack_hook.bodies) == 2


def test_duplicates_within_one_batch_are_sent_once(settings, slack_hook):
    s = with_notifiers(settings, slack_url=slack_hook.url)
    notify.send_alerts(s, [alert(), alert()], backoff=0)
    assert slack_hook.bodies[0][1]["text"].count("52.10") == 1
    assert len([r for r in stored_alerts(s) if r["notifier"] == "slack"]) == 1


def test_smtp_down_is_retried_recorded_and_slack_still_runs(settings, slack_hook):
    dead_port = free_port()  # nothing listens here
    s = with_notifiers(settings, dead_port, slack_hook.url, retries=2)

    deliveries = {d.notifier: d for d in notify.send_alerts(s, [alert()], backoff=0)}

    assert deliveries["email"].delivered is False
    assert deliveries["email"].attempts == 3
    assert "ConnectionRefusedError" in deliveries["email"].error
    assert deliveries["slack"].delivered is True
    assert len(slack_hook.bodies) == 1
    email_row = next(r for r in stored_alerts(s) if r["notifier"] == "email")
    assert (email_row["delivered"], email_row["attempts"]) == (False, 3)
    assert "ConnectionRefusedError" in email_row["last_error"]

    # The next run tries the undelivered e-mail again (and only it), now that the server is up.
    inbox = Inbox()
    controller = Controller(inbox, hostname="127.0.0.1", port=dead_port)
    controller.start()
    try:
        retry = notify.send_alerts(s, [alert()], backoff=0)
    finally:
        controller.stop()
    assert [(d.notifier, d.delivered) for d in retry] == [("email", True)]
    assert len(inbox.messages) == 1 and len(slack_hook.bodies) == 1


def test_webhook_500_is_retried_recorded_and_email_still_runs(settings, smtp_server):
    controller, inbox = smtp_server
    failing = SlackHook(status=500)
    try:
        s = with_notifiers(settings, controller.port, failing.url, retries=3)
        deliveries = {d.notifier: d for d in notify.send_alerts(s, [alert()], backoff=0)}
    finally:
        failing.close()
    assert len(failing.bodies) == 4  # the first try and three retries
    assert (deliveries["slack"].delivered, deliveries["slack"].attempts) == (False, 4)
    assert "HTTP Error 500" in deliveries["slack"].error
    assert deliveries["email"].delivered is True and len(inbox.messages) == 1
    slack_row = next(r for r in stored_alerts(s) if r["notifier"] == "slack")
    assert (slack_row["delivered"], slack_row["attempts"]) == (False, 4)


def test_logging_failures_reach_slack_whatever_its_level(settings, slack_hook):
    s = with_notifiers(settings, slack_url=slack_hook.url, slack_min_level="critical")
    lost = Alert(DAY, "warning", "logging", "fallback", "failed_logs", Decimal(3), Decimal(0),
                 "3 LLM calls failed to log (fallback, not recovered).")
    minor = alert("warning", "user", "u1", "User u1 over the soft limit.")
    notify.send_alerts(s, [lost, minor], backoff=0)
    text = slack_hook.bodies[0][1]["text"]
    assert "3 LLM calls failed to log" in text
    assert "u1" not in text


def test_user_text_is_escaped_for_slack_and_html(settings, smtp_server, slack_hook):
    controller, inbox = smtp_server
    s = with_notifiers(settings, controller.port, slack_hook.url)
    hostile = alert(scope="user", scope_id="<!channel>",
                    message="User <!channel> <script>alert(1)</script> & co spent $60.00 today.")
    notify.send_alerts(s, [hostile], backoff=0)
    text = slack_hook.bodies[0][1]["text"]
    assert "<!channel>" not in text and "&lt;!channel&gt;" in text and "&amp; co" in text
    body = inbox.messages[0][1].get_body(("html",)).get_content()
    assert "<script>" not in body and "&lt;script&gt;" in body


def test_no_notifier_configured_still_logs_and_records(settings, caplog):
    with caplog.at_level("WARNING", logger="llmcost"):
        deliveries = notify.send_alerts(settings, [alert("warning")], backoff=0)
    assert [d.notifier for d in deliveries] == ["log"]
    assert "above the critical level" in caplog.text
    assert [r["notifier"] for r in stored_alerts(settings)] == ["log"]


def test_an_unwritable_store_never_raises(settings, slack_hook, caplog):
    settings.db_path.mkdir(parents=True)  # a folder where the store file should be
    s = with_notifiers(settings, slack_url=slack_hook.url)
    deliveries = notify.send_alerts(s, [alert()], backoff=0)
    assert {d.notifier for d in deliveries if d.delivered} == {"log", "slack"}
    assert "could not record" in caplog.text


def test_report_goes_out_by_email_with_html_and_by_slack(settings, smtp_server, slack_hook):
    controller, inbox = smtp_server
    s = with_notifiers(settings, controller.port, slack_hook.url)
    message = notify.Message("[llmcost] Daily report", "Calls: 3\nCost: $1.00 <b>",
                             "<html><body>Calls: 3</body></html>")
    deliveries = notify.send_report(s, message, backoff=0)
    assert all(d.delivered for d in deliveries)
    mail = inbox.messages[0][1]
    assert mail["Subject"] == "[llmcost] Daily report"
    assert mail.get_body(("html",)).get_content().strip() == "<html><body>Calls: 3</body></html>"
    slack_text = slack_hook.bodies[0][1]["text"]
    assert "Calls: 3" in slack_text and "&lt;b&gt;" in slack_text
    assert stored_alerts(s) == []  # reports are not alerts
