"""Monitoring commands: `report`, `check`, `reconcile` and `scheduler`, thin over the library.

Each takes `--db` and `--config`; without them, the `db` and `config` a parent group put in `ctx.obj`
(a dict or an object) are used, then the usual resolution of `llmcost.config.load_settings`.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Sequence
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from llmcost import store
from llmcost.config import Settings, load_settings
from llmcost.errors import LLMCostError

if TYPE_CHECKING:  # the commands import what they run when they run it, so `llmcost --help` stays light
    from llmcost.monitor import notify, reports

CHECK_FAILED_EXIT_CODE = 3  # 0-2 are the levels found
RECONCILE_FAILED_EXIT_CODE = 2  # 1 means "they differ"
READER_FAILED_EXIT_CODE = 2  # a command that reads the store could not run (no store at the path given)


class CommandFailed(click.ClickException):
    """An error with its own exit code, so cron can tell "could not run" from "found a problem"."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code


def db_option(command: Callable) -> Callable:
    """--db and --config, as on every llmcost command."""
    command = click.option(
        "--config", type=click.Path(dir_okay=False, path_type=Path), default=None,
        help="Config file (default: LLMCOST_CONFIG, else ./llmcost.toml).",
    )(command)
    return click.option(
        "--db", type=click.Path(dir_okay=False, path_type=Path), default=None,
        help="The store's path (default: LLMCOST_DB, else llmcost.duckdb in LLMCOST_HOME).",
    )(command)


def _inherited(name: str) -> Any:
    obj = click.get_current_context().obj
    if isinstance(obj, dict):
        return obj.get(name)
    return getattr(obj, name, None)


def _settings(db: Path | None, config: Path | None, failed_exit_code: int = 1) -> Settings:
    try:
        return load_settings(db=db or _inherited("db"), config=config or _inherited("config"))
    except LLMCostError as e:
        raise CommandFailed(str(e), failed_exit_code) from None


def reader_settings(db: Path | None, config: Path | None,
                    failed_exit_code: int = READER_FAILED_EXIT_CODE) -> Settings:
    """Settings of a command that reads the store; no store at the path is an error, never an empty result."""
    settings = _settings(db, config, failed_exit_code)
    try:
        store.require_store(settings.db_path)
    except LLMCostError as e:
        raise CommandFailed(str(e), failed_exit_code) from None
    return settings


def _report_deliveries(deliveries: Sequence[notify.Delivery]) -> None:
    sent = [d for d in deliveries if d.notifier != "log"]
    if not sent:
        click.echo("No e-mail or Slack notifier is configured (set [email] or [slack] in llmcost.toml, or "
                   "LLMCOST_SMTP_HOST / LLMCOST_SLACK_WEBHOOK).", err=True)
    for d in sent:
        if d.delivered:
            click.echo(f"Sent by {d.notifier}.", err=True)
        else:
            click.echo(f"Not sent by {d.notifier} after {d.attempts} attempts: {d.error}", err=True)


@click.group("report")
def report() -> None:
    """Daily and weekly usage reports, as text, JSON or HTML for e-mail."""


def _report_options(command: Callable) -> Callable:
    for option in reversed([
        click.option("--date", "day", type=click.DateTime(["%Y-%m-%d"]), default=None,
                     help="The day (daily) or the week's last day (weekly); default: yesterday."),
        click.option("--format", "fmt", type=click.Choice(["text", "json", "html"]), default="text",
                     show_default=True),
        click.option("--notify", "send", is_flag=True, help="Also send it through the configured e-mail and Slack."),
        db_option,
    ]):
        command = option(command)
    return command


def _emit_report(built: reports.Report, fmt: str, send: bool, settings: Settings) -> None:
    from llmcost.monitor import notify

    rendered = {"text": built.to_text, "json": built.to_json, "html": built.to_html}[fmt]()
    click.echo(rendered.rstrip("\n"))
    if send:
        _report_deliveries(notify.send_report(settings, built.message()))


@report.command("daily")
@_report_options
def daily(day: dt.datetime | None, fmt: str, send: bool, db: Path | None, config: Path | None) -> None:
    """One day's calls, tokens and cost by use case, model, user and tenant."""
    from llmcost.monitor import reports

    settings = reader_settings(db, config)
    try:
        built = reports.daily(settings, day.date() if day else None)
    except LLMCostError as e:
        raise click.ClickException(str(e)) from None
    _emit_report(built, fmt, send, settings)


@report.command("weekly")
@_report_options
def weekly(day: dt.datetime | None, fmt: str, send: bool, db: Path | None, config: Path | None) -> None:
    """The seven days ending on --date, day by day, with the change against the week before."""
    from llmcost.monitor import reports

    settings = reader_settings(db, config)
    try:
        built = reports.weekly(settings, day.date() if day else None)
    except LLMCostError as e:
        raise click.ClickException(str(e)) from None
    _emit_report(built, fmt, send, settings)


@click.command("check")
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True)
@click.option("--notify", "send", is_flag=True, help="Send new alerts through the log, e-mail and Slack.")
@click.option("--export", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="A provider's usage export (CSV) to reconcile as check 7.")
@db_option
@click.pass_context
def check(ctx: click.Context, fmt: str, send: bool, export: Path | None, db: Path | None,
          config: Path | None) -> None:
    """Today's thresholds and the integrity checks.

    Exit code: 0 all clear, 1 warning, 2 critical or shutdown, 3 the checks could not run.
    """
    from llmcost.monitor import integrity, notify

    settings = reader_settings(db, config, CHECK_FAILED_EXIT_CODE)
    try:
        result = integrity.run_checks(settings, export=export)
    except LLMCostError as e:
        raise CommandFailed(str(e), CHECK_FAILED_EXIT_CODE) from None
    click.echo(result.to_json() if fmt == "json" else result.to_text().rstrip("\n"))
    if send:
        deliveries = notify.send_alerts(settings, result.alerts)
        for d in deliveries:
            if d.notifier != "log" and not d.delivered:
                click.echo(f"Alerts not sent by {d.notifier} after {d.attempts} attempts: {d.error}", err=True)
    ctx.exit(result.exit_code)


def _tolerance(_ctx: click.Context, _param: click.Parameter, value: str | None) -> Decimal | None:
    if value is None:
        return None  # the library's default
    text = value.strip()
    try:
        tolerance = Decimal(text[:-1]) / 100 if text.endswith("%") else Decimal(text)
    except InvalidOperation:
        tolerance = Decimal(-1)
    if not tolerance.is_finite() or tolerance < 0:
        raise click.BadParameter(f"{value!r} is not a fraction >= 0 (0.01, or 1%)")
    return tolerance


@click.command("reconcile")
@click.argument("export", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--tolerance", default=None, callback=_tolerance,
              help="Allowed relative difference per figure: 0.01 or 1%.  [default: 1%]")
@click.option("--provider", default=None, help="Compare only this provider's events (e.g. openai); "
                                               "then models we logged that the export lacks are reported too.")
@click.option("--timezone", "export_timezone", default="UTC", show_default=True,
              help="Time zone of the export's days (providers bill in UTC).")
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True)
@db_option
@click.pass_context
def reconcile(ctx: click.Context, export: Path, tolerance: Decimal | None, provider: str | None, export_timezone: str,
              fmt: str, db: Path | None, config: Path | None) -> None:
    """Compare a provider's usage export (CSV) with what we logged, per day and model.

    Exit code: 0 they match within the tolerance, 1 they differ, 2 the export could not be read.

    Accepted columns are listed in `llmcost.monitor.reconcile` (OpenAI's usage export is read as it is).
    """
    from llmcost.monitor import reconcile as reconciliation

    settings = reader_settings(db, config, RECONCILE_FAILED_EXIT_CODE)
    given = {} if tolerance is None else {"tolerance": tolerance}
    try:
        result = reconciliation.reconcile(settings, export, provider=provider, export_timezone=export_timezone,
                                          **given)
    except LLMCostError as e:
        raise CommandFailed(str(e), RECONCILE_FAILED_EXIT_CODE) from None
    click.echo(result.to_json() if fmt == "json" else result.to_text().rstrip("\n"))
    ctx.exit(0 if result.ok else 1)


@click.command("scheduler")
@db_option
def scheduler(db: Path | None, config: Path | None) -> None:
    """Run checks every 5 minutes and the daily (09:00) and weekly (Monday 09:00) reports, until stopped."""
    from llmcost.monitor import scheduler as schedule

    settings = _settings(db, config)
    if not store.store_exists(settings.db_path):  # it may be created by `llmcost watch` started beside it
        click.echo(f"No store at {settings.db_path} yet: checks and reports find nothing until `llmcost watch` "
                   "or `llmcost ingest` creates it (check --db if it should exist).", err=True)
    click.echo(f"Scheduler running in {settings.timezone}: checks every {schedule.CHECK_EVERY_MINUTES} minutes, "
               f"reports at {schedule.REPORT_HOUR:02d}:00 (weekly on Mondays). Ctrl-C stops it.", err=True)
    schedule.run(settings)


COMMANDS = (report, check, reconcile, scheduler)
