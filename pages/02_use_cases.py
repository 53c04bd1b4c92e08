"""Use cases: calls, tokens and cost per use case, the month-to-date verification table, models."""

import streamlit as st

from llmcost.dashboard import charts, trends, ui
from llmcost.dashboard import queries as dq

context = ui.context()
settings, filters = context.settings, context.filters
TOKENS = ["calls", "input_tokens", "output_tokens", "total_tokens"]

st.title("Use cases")
data = ui.load(dq.use_cases, settings, context.today, filters)
if data is None:
    ui.stop_without_data()

by_use_case = trends.with_configured(data.by_use_case, settings.use_cases)
silent = [name for name in settings.use_cases if name not in set(data.by_use_case["use_case"])]
st.caption(f"{filters.start:%Y-%m-%d} to {filters.end:%Y-%m-%d}")
chart, numbers = st.columns([2, 3])
with chart:
    ui.chart(charts.cost_bars, data.by_use_case, "use_case", "Cost by use case", key="use_cases_chart")
with numbers:
    ui.table(by_use_case, "use_cases_table", file_name="use-cases.csv", money=["cost_usd"], counts=TOKENS)
    if silent:
        st.caption("Configured but without a call in this range: " + ", ".join(map(ui.plain, silent)) + ".")

# The trend, the month's verification table and the models sit in sections drawn only when opened.
with ui.section("Daily cost per use case over time", "use_cases_trend") as shown:
    daily = ui.load(trends.daily_by_use_case, settings, filters) if shown else None
    if daily is not None and not daily.empty:
        ui.chart(charts.trend, daily, key="use_cases_trend_chart")

with ui.section(f"Month to date ({context.today:%B %Y}): cost verification", "use_cases_month") as shown:
    if shown:
        st.caption("Calls, tokens and cost per use case from the first of the month to today, with the total: "
                   "compare it with the providers' bills.")
        ui.table(dq.with_total_row(data.month_to_date, "use_case"), "use_cases_month_to_date",
                 file_name=f"use-cases-{context.today:%Y-%m}-to-date.csv", money=["cost_usd"], counts=TOKENS)

with ui.section("Models and providers", "use_cases_models_section") as shown:
    if shown:
        use_case = st.selectbox("Use case", [None, *data.by_use_case["use_case"].tolist()], key="use_cases_drill",
                                format_func=lambda name: "All use cases" if name is None else name)
        models = ui.load(dq.models, settings, filters, use_case)
        ui.table(models, "use_cases_models", file_name="models.csv", money=["cost_usd"],
                 counts=["calls", "total_tokens", "default_rate_calls"])
