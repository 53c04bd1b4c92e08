"""The scheduler's jobs and triggers, and its jobs run for real against a seeded store and an SMTP server."""

from __future__ import annotations

import dataclasses
import datetime as dt
import threading
from zoneinfo import ZoneInfo

from aiosmtpd.controller import Controller
from apscheduler.events import EVENT_JOB_ERROR, EVENT_JOB_EXECUTED
from apscheduler.schedulers.background import BackgroundScheduler

from llmcost.config import EmailSettings
from llmcost.monitor import scheduler
from llmcost.store.connection import reading
from tests.monitoring_seed import event, insert
from tests.test_notify import Inbox, free_port

BERLIN = ZoneInfo("Europe/Berlin")


def test_jobs_and_their_times_in_the_configured_zone(settings):
    berlin = dataclasses.replace(settings, timezone="Europe/Berlin")
    jobs = {job.id: job for job in scheduler.build_scheduler(berlin, BackgroundScheduler(timezone=BERLIN)).get_jobs()}
    assert set(jobs) == {"check", "daily_report", "weekly_report"}
    assert jobs["check"].trigger.interval == dt.timedelta(minutes=5)
    wednesday = dt.datetime(2025, 3, 12, 10, 0, tzinfo=BERLIN)
    assert jobs["daily_report"].trigger.get_next_fire_time(None, wednesday) == \
        dt.datetime(2025, 3, 13, 9, 0, tzinfo=BERLIN)
    assert jobs["weekly_report"].trigger.get_next_fire_time(None, wednesday) == \
        dt.datetime(2025, 3, 17, 9, 0, tzinfo=BERLIN)
    # 09:00 in Berlin is 08:00 UTC in winter and 07:00 UTC after the clocks change.
    summer = jobs["daily_report"].trigger.get_next_fire_time(None, dt.datetime(2025, 4, 1, 10, 0, tzinfo=BERLIN))
    assert summer.astimezone(dt.timezone.utc).hour == 7
    assert all(job.coalesce and job.max_instances == 1 for job in jobs.values())


def test_check_job_runs_at_start_and_records_alerts(settings):
    now = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)
    insert(settings.db_path, "usage_events", [event(now, "60", account_type="super_admin", user_id="boss")])
    background = scheduler.build_scheduler(settings, BackgroundScheduler(timezone=settings.tz))
    ran = threading.Event()
    outcome = {}

    def finished(job_event):
        if job_event.job_id == "check":
            outcome["code"], outcome["error"] = job_event.retval, job_event.exception
            ran.set()

    background.add_listener(finished, EVENT_JOB_EXECUTED | EVENT_JOB_ERROR)
    background.start()
    try:
        assert ran.wait(timeout=20), "the check job did not run at start"
    finally:
        background.shutdown(wait=True)
    assert outcome == {"code": 2, "error": None}
    with reading(settings.db_path) as db:
        levels = db.execute("SELECT level, scope FROM alerts WHERE notifier = 'log' ORDER BY level").fetchall()
    assert ("critical", "system") in levels


def test_report_jobs_send_email(settings):
    yesterday = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None) - dt.timedelta(days=1)
    insert(settings.db_path, "usage_events", [event(yesterday, "1.25")])
    inbox = Inbox()
    controller = Controller(inbox, hostname="127.0.0.1", port=free_port())
    controller.start()
    try:
        s = dataclasses.replace(settings, email=EmailSettings(host="127.0.0.1", port=controller.port,
                                                              security="none", recipients=("ops@test.example",)))
        scheduler.daily_report_job(s)
        scheduler.weekly_report_job(s)
    finally:
        controller.stop()
    subjects = [message["Subject"] for _, message in inbox.messages]
    assert subjects[0] == f"[llmcost] LLM usage report for {yesterday.date().isoformat()}: $1.25, 1 call"
    assert subjects[1].startswith("[llmcost] LLM usage report for the week ")
    assert "$1.25" in subjects[1]
