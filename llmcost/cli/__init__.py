"""The `llmcost` command: a thin layer over the library."""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import sys
import time
import traceback
from pathlib import Path

import click

from llmcost import store
from llmcost.cli import control as cli_control
from llmcost.cli import monitor as cli_monitor
from llmcost.config import load_settings
from llmcost.errors import LLMCostError, StoreMissingError
from llmcost.money import money, today_in


def settings_options(fn):
    """--db and --config on every command; both optional (see llmcost.config for the resolution order)."""

    @click.option("--db", "db", type=click.Path(dir_okay=False, path_type=Path), default=None,
                  help="Path of the DuckDB store (overrides LLMCOST_DB and the config file).")
    @click.option("--config", "config", type=click.Path(dir_okay=False, path_type=Path), default=None,
                  help="Config file (default: LLMCOST_CONFIG, else ./llmcost.toml).")
    @functools.wraps(fn)
    def wrapper(*args, db, config, **kwargs):
        try:
            settings = load_settings(db=db, config=config)
            return fn(settings, *args, **kwargs)
        except StoreMissingError as error:
            raise cli_monitor.CommandFailed(str(error), cli_monitor.READER_FAILED_EXIT_CODE) from error
        except LLMCostError as error:
            raise click.ClickException(str(error)) from error

    return wrapper


@contextlib.contextmanager
def announcing_a_new_store(settings):
    """Say so when the block created the store: only ingest, watch, demo and rebuild may, and never silently."""
    existed = store.store_exists(settings.db_path)
    yield
    if not existed and store.store_exists(settings.db_path):
        click.echo(f"Created a new store at {settings.db_path}")


@click.group()
@click.version_option(package_name="llmcost")
def cli():
    """Account for every LLM API call: tokens, exact cost, who and which feature."""


def _progress_printer():
    """A one-line progress display on a terminal, silent otherwise."""
    if not sys.stderr.isatty():
        return None
    state = {"last": 0.0}

    def show(path: str, done: int, total: int) -> None:
        now = time.monotonic()
        if now - state["last"] < 0.2 and done < total:
            return
        state["last"] = now
        percent = 100 * done / total if total else 100
        click.echo(f"\r{Path(path).name}: {percent:5.1f}% of {total / 1e6:,.1f} MB", err=True, nl=done >= total)

    return show


@cli.command()
@click.argument("paths", nargs=-1, type=click.Path(exists=True, path_type=Path))
@settings_options
def ingest(settings, paths):
    """Ingest usage-event files (JSON Lines or CSV) into the store, exactly once.

    With no PATHS, ingests the journal folder, the fallback log and the inbox folder.
    """
    from llmcost.ingestion.run import ingest as run_ingest

    settings.ensure_dirs()
    try:
        with announcing_a_new_store(settings):
            result = run_ingest(settings, list(paths) or None, progress=_progress_printer())
    except FileNotFoundError as error:
        raise click.ClickException(str(error)) from error
    click.echo(result.summary())
    for reason in result.failed_reasons:
        click.echo(f"  failed: {reason[:300]}")
    if result.failed:
        click.echo("Failed records are kept in the failed_logs table with their raw text.")


@cli.command()
@click.option("--interval", default=5.0, show_default=True, help="Seconds between ingests.")
@click.option("--once", is_flag=True, help="Ingest once and exit (for tests and cron).")
@settings_options
def watch(settings, interval, once):
    """Keep ingesting the configured sources every few seconds (Ctrl-C to stop).

    On an app host with `forward_to` set, forwards the journals to that collector instead.
    """
    from llmcost.ingestion.run import ingest as run_ingest

    settings.ensure_dirs()
    if settings.forward_to:
        click.echo(f"forward_to is set: forwarding to {settings.forward_to} instead of ingesting", err=True)
        _run_forwarder(settings, None, None, interval, once)
        return
    try:
        while True:
            try:
                with announcing_a_new_store(settings):
                    result = run_ingest(settings)
                if result.read:
                    click.echo(f"{dt.datetime.now():%H:%M:%S} {result.summary()}")
            except LLMCostError as error:  # a lock held too long: report and try again next round
                click.echo(f"{dt.datetime.now():%H:%M:%S} ingest skipped: {error}", err=True)
            except Exception:  # a bug must not stop the watcher: the files keep every record for the next round
                click.echo(f"{dt.datetime.now():%H:%M:%S} ingest failed:\n{traceback.format_exc()}", err=True)
            if once:
                return
            time.sleep(interval)
    except KeyboardInterrupt:
        click.echo("stopped")


@cli.command()
@click.option("--to", "url", default=None, help="The collector's URL (default: forward_to, LLMCOST_FORWARD_TO).")
@click.option("--key", default=None, help="The collector's service key (default: forward_key, LLMCOST_FORWARD_KEY).")
@click.option("--interval", default=5.0, show_default=True, help="Seconds between rounds.")
@click.option("--once", is_flag=True, help="Forward what waits now and exit (exit code 1 if not acknowledged).")
@settings_options
def forward(settings, url, key, interval, once):
    """Ship this host's journals and fallback log to a collector (`llmcost serve`), exactly once.

    The saved position moves only after the collector's 202; records it rejects are kept in
    forward-rejected.jsonl with the reason.
    """
    settings.ensure_dirs()
    _run_forwarder(settings, url, key, interval, once)


def _run_forwarder(settings, url, key, interval, once) -> None:
    from llmcost.forward import Forwarder

    def report(text: str) -> None:
        click.echo(f"{dt.datetime.now():%H:%M:%S} {text}", err=True)

    forwarder = Forwarder(settings, url, key)
    try:
        forwarder.run(interval, once=once, report=report)
    except KeyboardInterrupt:
        click.echo("stopped")
    finally:
        forwarder.close()


@cli.command()
@click.option("--days", default=30, show_default=True, type=click.IntRange(1, 3650))
@click.option("--seed", default=7, show_default=True, type=int)
@click.option("--if-empty", is_flag=True, help="Only load the demo when the store has no events.")
@settings_options
def demo(settings, days, seed, if_empty):
    """Load a realistic demo store (tenants, users of every account type, several providers)."""
    from llmcost.ingestion.demo import event_count, load_demo, store_is_empty

    if if_empty and not store_is_empty(settings):
        click.echo(f"The store {settings.db_path} already has events; demo not loaded.")
        return
    with announcing_a_new_store(settings):
        result = load_demo(settings, days=days, seed=seed)
    if not result.read:  # the demo files of this seed and length were ingested before
        events = event_count(settings)
        click.echo(f"The demo (seed {seed}, {days} days) is already loaded in {settings.db_path} "
                   f"({events:,} events); nothing added. `llmcost demo --seed N` loads another.")
        return
    click.echo(f"Demo data: {result.summary()}")


@cli.command()
@click.option("--out", required=True, type=click.Path(dir_okay=False, path_type=Path), help="CSV file to write.")
@click.option("--from", "date_from", type=click.DateTime(["%Y-%m-%d"]), default=None, help="First day (inclusive).")
@click.option("--to", "date_to", type=click.DateTime(["%Y-%m-%d"]), default=None, help="Last day (inclusive).")
@click.option("--table", type=click.Choice(["usage_events", "failed_logs"]), default="usage_events", show_default=True)
@settings_options
def export(settings, out, date_from, date_to, table):
    """Export a table as CSV (cells starting with =, +, -, @ are neutralised for spreadsheets)."""
    from llmcost.store.export import export_table

    if date_from and date_to and date_from > date_to:
        raise click.BadParameter(f"--from {date_from:%Y-%m-%d} is after --to {date_to:%Y-%m-%d}: no day is in "
                                 "between (swap them)", param_hint="--from/--to")
    store.require_store(settings.db_path)
    count = export_table(settings, out, table=table,
                         date_from=date_from.date() if date_from else None,
                         date_to=date_to.date() if date_to else None)
    click.echo(f"Wrote {count:,} rows to {out}")


@cli.command()
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@settings_options
def rebuild(settings, yes):
    """Recreate the store from the journals, the fallback log, the inbox and every other file the old store
    had read that still exists (the old file is kept aside)."""
    from llmcost.ingestion.run import known_sources, replay

    known = known_sources(settings)
    if not yes:
        click.confirm(f"Move {settings.db_path} aside and rebuild it from the files?", abort=True)
    if settings.db_path.exists():
        aside = settings.db_path.with_name(f"{settings.db_path.name}.{dt.datetime.now():%Y%m%d-%H%M%S}.old")
        settings.db_path.rename(aside)
        wal = settings.db_path.with_name(settings.db_path.name + ".wal")
        if wal.exists():
            wal.rename(aside.with_name(aside.name + ".wal"))
        click.echo(f"Moved the old store to {aside}")
    with announcing_a_new_store(settings):
        result, gone = replay(settings, known)
    click.echo(f"Rebuilt: {result.summary()}")
    for path in gone:
        click.echo(f"  gone: {path} (the old store had read it; its records are not in the new store)")


@cli.command()
@click.argument("use_case")
@click.option("--reason", required=True, help="Why the use case is switched off (shown to callers).")
@click.option("--by", default=None, help="Who switched it off.")
@settings_options
def disable(settings, use_case, reason, by):
    """Switch a use case off: every tracked call for it is refused until `llmcost enable`."""
    from llmcost.control.backend import open_control

    settings.ensure_dirs()
    open_control(settings).disable(use_case, reason, by=by)
    click.echo(f"Disabled {use_case}: {reason}")


@cli.command()
@click.argument("use_case")
@settings_options
def enable(settings, use_case):
    """Switch a use case back on."""
    from llmcost.control.backend import open_control

    settings.ensure_dirs()
    control = open_control(settings)
    if control.enable(use_case):
        click.echo(f"Enabled {use_case}")
    else:
        disabled = ", ".join(control.disabled()) or "none"
        click.echo(f"{use_case} was not disabled; nothing changed (disabled now: {disabled})")


@cli.command()
@click.option("--date", "day", type=click.DateTime(["%Y-%m-%d"]), default=None, help="Day to resume (default today).")
@settings_options
def resume(settings, day):
    """Lift today's emergency shutdown (spending halt)."""
    from llmcost.control.backend import open_control

    settings.ensure_dirs()
    day = day.date() if day else today_in(settings.tz)
    control = open_control(settings)
    if control.halt_reason(day, settings.system.shutdown_usd) is None:
        # Resuming now would also lift the automatic shutdown for the rest of the day before it ever fired.
        click.echo(f"Spending is not halted for {day}; nothing to resume.")
        return
    control.resume(day)
    click.echo(f"Spending resumed for {day}")


@cli.command()
@settings_options
def status(settings):
    """Where the data lives, what the store holds and what waits to be ingested."""
    from llmcost.ingestion.run import last_synced, pending
    from llmcost.store import queries
    from llmcost.store.connection import reading

    click.echo(f"data folder:   {settings.home}")
    click.echo(f"store:         {settings.db_path}")
    click.echo(f"journal:       {settings.journal_dir}")
    click.echo(f"fallback log:  {settings.fallback_log}")
    _forward_status_lines(settings)
    with reading(settings.db_path) as db:
        if db is None:
            if settings.forward_to:
                click.echo(f"No store on this host: its records are forwarded to {settings.forward_to}.")
            else:
                click.echo("The store does not exist yet: run `llmcost demo` or `llmcost ingest`.")
            return
        events, cost = queries.store_totals(db)
        unrecovered = queries.open_failed_count(db)
    click.echo(f"events:        {events:,} ({money(cost)})")
    click.echo(f"failed logs:   {unrecovered:,} not recovered")
    waiting = pending(settings)
    click.echo(f"waiting:       {waiting['journal']:,} journal, {waiting['fallback']:,} fallback-log and "
               f"{waiting['inbox']:,} inbox records")
    click.echo(f"last synced:   {last_synced(settings) or 'never'} UTC")


def _forward_status_lines(settings) -> None:
    from llmcost.forward import forward_status
    from llmcost.forward.state import rejected_path, state_path

    if not (settings.forward_to or state_path(settings).exists()):
        return
    status = forward_status(settings)
    waiting = status["waiting"]
    click.echo(f"forward to:    {status['to'] or '(forward_to not set)'}")
    click.echo(f"to forward:    {waiting['journal']:,} journal and {waiting['fallback']:,} fallback-log records")
    click.echo(f"last forward:  {status['last_success'] or 'never'}")
    if status["last_error"] and (status["last_success"] or "") < status["last_error"]:
        click.echo(f"forward error: {status['last_error']}: {status['last_error_reason']}")
    if status["rejected"]:
        click.echo(f"rejected:      {status['rejected']:,} records kept in {rejected_path(settings)}")


@cli.group()
def failed():
    """Failed logs: records that could not be stored normally."""


@failed.command("dismiss")
@click.argument("failed_ids", nargs=-1)
@click.option("--source", default=None, help="Dismiss every open failed log read from this file (its path).")
@click.option("--reason", required=True, help="Why they need nothing more (kept with them).")
@click.option("--by", default=None, help="Who dismisses them (kept with them).")
@settings_options
def dismiss(settings, failed_ids, source, reason, by):
    """Dismiss failed logs by id (or --source): they stay in the table, marked, and leave the warnings."""
    from llmcost.store.failed_logs import dismiss as dismiss_failed

    if source:
        source = str(Path(source).resolve())
    count = dismiss_failed(settings, failed_ids, source=source, reason=reason, by=by)
    click.echo(f"Dismissed {count:,} failed log(s)" + ("" if count else " (none open matched)"))


@cli.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=8787, show_default=True, type=int)
@click.option("--workers", default=1, show_default=True, type=click.IntRange(min=1), help="Worker processes.")
@click.option("--keys-file", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Service key hashes, one 'sha256:<hex>[@tenant]' a line (also LLMCOST_COLLECTOR_KEYS).")
@click.option("--allow-unauthenticated", is_flag=True, help="Listen beyond loopback without service keys.")
@click.option("--max-body-bytes", default=10 * 1024 * 1024, show_default=True, type=click.IntRange(min=1024))
@click.option("--hash-key", is_flag=True, help="Print the hash of a service key read on stdin, and exit.")
@settings_options
def serve(settings, host, port, workers, keys_file, allow_unauthenticated, max_body_bytes, hash_key):
    """Collect usage over HTTP from any host or language: events, OTLP traces, LiteLLM, reserve/settle."""
    from llmcost.collector.auth import hash_key as hashed
    from llmcost.collector.server import serve as run_collector

    if hash_key:
        click.echo(hashed(sys.stdin.readline()))
        return
    click.echo(f"llmcost collector on http://{host}:{port} (journal folder {settings.journal_dir})", err=True)
    run_collector(settings, host=host, port=port, workers=workers, keys_file=keys_file,
                  allow_unauthenticated=allow_unauthenticated, max_body_bytes=max_body_bytes)


@cli.command(context_settings={"ignore_unknown_options": True})
@click.argument("streamlit_options", nargs=-1, type=click.UNPROCESSED)
def dashboard(streamlit_options):
    """Serve the dashboard, its first page ready before the first visitor (what `make run` runs).

    Options go to `streamlit run app.py`, e.g. `llmcost dashboard --server.port 8502`.
    """
    from llmcost.dashboard.server import serve as serve_dashboard

    try:
        serve_dashboard(streamlit_options)
    except LLMCostError as error:
        raise click.ClickException(str(error)) from error


for _command in (*cli_monitor.COMMANDS, *cli_control.COMMANDS):
    cli.add_command(_command)


if __name__ == "__main__":
    cli()
