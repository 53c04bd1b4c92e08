"""`llmcost budgets` and `llmcost control rebuild`: the live control state, whichever backend holds it."""

from __future__ import annotations

import time

import click

from llmcost.cli.monitor import db_option
from llmcost.config import load_settings
from llmcost.errors import LLMCostError
from llmcost.money import money, number, today_in


def _settings(db, config):
    try:
        return load_settings(db=db, config=config)
    except LLMCostError as error:
        raise click.ClickException(str(error)) from error


@click.command()
@db_option
def budgets(db, config):
    """Each tenant, use case and service key budget: its limit, spend and what remains in the current period."""
    from llmcost.control.budgets import budget_status

    settings = _settings(db, config)
    try:
        rows = budget_status(settings, today_in(settings.tz))
    except LLMCostError as error:
        raise click.ClickException(str(error)) from error
    if not rows:
        click.echo("No tenant, use case or key budgets configured: add e.g. [tenant_budgets.\"acme\"] cost_usd = "
                   "\"300\" period = \"month\" action = \"hard\" to llmcost.toml (per-user limits: [limits.*]).")
        return
    header = f"{'scope':<9} {'name':<24} {'period':<11} {'action':<6} {'limit':>22} {'spent':>22} {'remaining':>22}"
    click.echo(header)
    for row in rows:
        b = row.budget
        limit = " / ".join(x for x in (money(b.cost_usd) if b.cost_usd is not None else "",
                                       f"{number(b.tokens)} tok" if b.tokens is not None else "") if x)
        spent = f"{money(row.cost)} / {number(row.tokens)} tok"
        remaining = " / ".join(x for x in (money(row.remaining_usd) if row.remaining_usd is not None else "",
                                           f"{number(row.remaining_tokens)} tok" if row.remaining_tokens is not None
                                           else "") if x)
        flag = "  OVER" if row.over else ""
        click.echo(f"{b.scope:<9} {b.name[:24]:<24} {row.period:<11} {b.action:<6} {limit:>22} {spent:>22} "
                   f"{remaining:>22}{flag}")


@click.group()
def control():
    """The live control state (SQLite file or Redis, by control_backend)."""


@control.command("rebuild")
@db_option
def rebuild_control(db, config):
    """Rebuild today's spend counters (users, system, budgets' days and months) from the store and journals."""
    from llmcost.control.backend import open_control
    from llmcost.control.rebuild import rebuild_day

    settings = _settings(db, config)
    settings.ensure_dirs()
    today = today_in(settings.tz)
    started = time.perf_counter()
    try:
        with open_control(settings) as state:
            rebuild_day(state, settings, today, force=True)
    except LLMCostError as error:
        raise click.ClickException(str(error)) from error
    click.echo(f"Rebuilt the {settings.control_backend} control state's counters for {today} "
               f"in {time.perf_counter() - started:.2f} s")


COMMANDS = (budgets, control)
