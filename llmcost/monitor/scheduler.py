"""`llmcost scheduler`: the cron schedule in one long-running process, for hosts without cron.

Checks (with notifications) every 5 minutes, the daily report at 09:00 and the weekly report on Mondays
at 09:00, in the configured time zone. APScheduler runs the jobs; a job that fails is logged and the
schedule goes on; a run missed while the host slept is done once, late, rather than several times.
"""

from __future__ import annotations

import datetime as dt
import logging

from apscheduler.schedulers.base import BaseScheduler
from apscheduler.schedulers.blocking import BlockingScheduler
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger

from llmcost.config import Settings
from llmcost.monitor import integrity, notify, reports

log = logging.getLogger("llmcost")

CHECK_EVERY_MINUTES = 5
REPORT_HOUR = 9


def check_job(settings: Settings) -> int:
    """Run every check and notify new alerts; return the check's exit code."""
    report = integrity.run_checks(settings)
    notify.send_alerts(settings, report.alerts)
    log.info("check: %s (%d alerts)", report.level, len(report.alerts))
    return report.exit_code


def daily_report_job(settings: Settings) -> None:
    report = reports.daily(settings)
    notify.send_report(settings, report.message())


def weekly_report_job(settings: Settings) -> None:
    report = reports.weekly(settings)
    notify.send_report(settings, report.message())


def build_scheduler(settings: Settings, scheduler: BaseScheduler | None = None) -> BaseScheduler:
    """A scheduler (blocking unless one is given) holding the three jobs, not yet started."""
    scheduler = scheduler or BlockingScheduler(timezone=settings.tz)
    defaults = {"coalesce": True, "max_instances": 1, "misfire_grace_time": 3600, "args": [settings]}
    # The first check runs at start, so a restarted scheduler does not wait five minutes to look.
    scheduler.add_job(check_job, IntervalTrigger(minutes=CHECK_EVERY_MINUTES, timezone=settings.tz),
                      id="check", name=f"checks every {CHECK_EVERY_MINUTES} minutes",
                      next_run_time=dt.datetime.now(settings.tz), **defaults)
    scheduler.add_job(daily_report_job, CronTrigger(hour=REPORT_HOUR, minute=0, timezone=settings.tz),
                      id="daily_report", name=f"daily report at {REPORT_HOUR:02d}:00", **defaults)
    scheduler.add_job(weekly_report_job,
                      CronTrigger(day_of_week="mon", hour=REPORT_HOUR, minute=0, timezone=settings.tz),
                      id="weekly_report", name=f"weekly report on Mondays at {REPORT_HOUR:02d}:00", **defaults)
    return scheduler


def run(settings: Settings) -> None:
    """Run the schedule until interrupted (Ctrl-C or SIGTERM)."""
    scheduler = build_scheduler(settings)
    log.info("llmcost scheduler started (time zone %s)", settings.timezone)
    try:
        scheduler.start()
    except (KeyboardInterrupt, SystemExit):
        log.info("llmcost scheduler stopped")
