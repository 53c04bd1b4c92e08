"""Overview: today, yesterday and the month so far; daily spend against the levels; sync state."""

import datetime as dt

import streamlit as st

from llmcost import money as fmt
from llmcost.control.policy import system_level
from llmcost.dashboard import charts, limits, trends, ui
from llmcost.dashboard import queries as dq
from llmcost.errors import LLMCostError
from llmcost.ingestion.sources import pending  # not ingestion.run: that loads the whole ingestion path

REFRESH_MESSAGE = "overview_refresh_message"
LEVEL_ADVICE = {
    "warning": "keep an eye on it",
    "critical": "find the use case or user behind it on the Use cases and Users pages",
    "shutdown": "every tracked call is refused until tomorrow or `llmcost resume`",
}

context = ui.context()
settings = context.settings


def sync_section(last_synced) -> None:
    st.subheader("Sync")
    try:
        waiting = ui.live(pending, settings)
    except LLMCostError:  # the store is locked by a long ingest: the counts can wait for the next run
        waiting = None
    synced, journal, fallback, button = st.columns([5, 3, 3, 2], vertical_alignment="bottom")
    synced.metric("Last synced", fmt.local_time(last_synced, settings.timezone, seconds=False),
                  help="When ingestion last read the journals, the fallback log and the inbox: "
                       + fmt.local_time(last_synced, settings.timezone) + ".")
    journal.metric("Waiting in journals", fmt.number(waiting["journal"]) if waiting else "—")
    fallback.metric("Waiting in the fallback log", fmt.number(waiting["fallback"]) if waiting else "—")
    if context.access.can_operate:
        button.button("Refresh", key="overview_refresh", on_click=ui.ingest_now, args=(settings, REFRESH_MESSAGE),
                      help="Ingest the configured sources now and reload every figure.", type="primary")
    ui.show_message(REFRESH_MESSAGE)


def kpi_column(column, title: str, current: dq.Totals, previous: dq.Totals, compared_with: str) -> None:
    help_text = f"Change against {compared_with}."
    with column.container(border=True):
        st.subheader(title)
        st.metric("Cost", fmt.money(current.cost_usd), delta=fmt.change(current.cost_usd, previous.cost_usd),
                  delta_color="inverse", help=help_text)
        st.metric("Calls", fmt.number(current.calls), delta=fmt.change(current.calls, previous.calls),
                  delta_color="off", help=help_text)
        st.metric("Tokens", fmt.number(current.tokens), delta=fmt.change(current.tokens, previous.tokens),
                  delta_color="off", help=help_text)


st.title("Overview")
data = ui.load(dq.overview, settings, context.today, context.filters)
if data is None or (data.events == 0 and data.unrecovered_failed == 0):
    st.info(ui.NO_DATA)
    sync_section(data.last_synced if data else None)
    st.stop()

if data.unrecovered_failed:
    calls = "LLM call" if data.unrecovered_failed == 1 else "LLM calls"
    st.error(f"⚠️ {fmt.number(data.unrecovered_failed)} {calls} failed to log — cost data may be incomplete")
    if st.button("Open failed logs", key="overview_open_failed_logs"):
        st.switch_page("pages/04_failed_logs.py")

periods = data.periods
today, yesterday, month = st.columns(3)
kpi_column(today, "Today", periods["today"], periods["yesterday"], "yesterday")
kpi_column(yesterday, "Yesterday", periods["yesterday"], periods["day_before_yesterday"], "the day before")
kpi_column(month, "Month to date", periods["month_to_date"], periods["previous_month_to_date"],
           "the same days of last month")
if any((context.filters.tenants, context.filters.providers, context.filters.models)):
    st.caption("These figures follow the tenant, provider and model filters.")

levels = limits.system_levels(settings)
if context.access.sees_every_tenant:  # a tenant-scoped viewer sees their tenants' figures only
    st.subheader("System-wide spend today")
    system = ui.live(limits.system_spend_today, settings, context.today)
    spend = fmt.money(system.spend)
    if system.level is None:
        st.success(ui.dollars(f"Today's spend {spend} is below the warning level ({fmt.money(levels['warning'])})."),
                   icon=":material/check_circle:")
    else:
        text = (f"Today's spend {spend} has reached the {system.level} level ({fmt.money(system.threshold)}): "
                f"{LEVEL_ADVICE[system.level]}.")
        (st.warning if system.level == "warning" else st.error)(ui.dollars(text), icon="⚠️")

log_scale = st.toggle("Log scale", key="overview_log_scale",
                      help="Keeps ordinary days readable next to a spike day.")
ui.chart(charts.daily_spend, data.daily, levels, (context.filters.start, context.filters.end), log_scale=log_scale,
         key="overview_daily_chart")
daily_totals = data.daily.groupby("day")["cost_usd"].sum() if not data.daily.empty else []
days_over = sum(1 for total in daily_totals if system_level(settings, total) is not None)
if days_over:
    st.caption(f"{days_over} day(s) in this range reached the warning level with these filters.")
else:
    st.caption(ui.dollars(f"No day in this range reached the warning level ({fmt.money(levels['warning'])}), "
                          "so the levels are not drawn."))
with ui.section("Daily figures by use case", "overview_daily_figures") as shown:
    if shown:
        ui.table(data.daily, "overview_daily", file_name="daily-spend.csv", money=["cost_usd"],
                 counts=["calls", "tokens"])

by_model, movers = st.columns(2)
with by_model:
    models = ui.load(dq.models, settings, context.filters)
    if models is not None and not models.empty:
        models = models.assign(label=models["provider"] + " / " + models["model"])
        ui.chart(charts.cost_bars, models.head(15), "label", "Spend by model", key="overview_models_chart")
# The movers' table in a section: on show, its data grid was a fifth of the Overview's first load in the browser.
with movers, ui.section("Top movers, day over day", "overview_movers_section") as shown:
    if shown:
        last_day = context.filters.end
        st.caption(f"Use cases whose cost changed most from {last_day - dt.timedelta(days=1):%Y-%m-%d} "
                   f"to {last_day:%Y-%m-%d} (the range's last day).")
        ui.table(trends.movers(data.daily, last_day), "overview_movers", file_name="top-movers.csv",
                 money=["cost_day_before", "cost_usd", "change_usd"], percents=["change"])

sync_section(data.last_synced)
