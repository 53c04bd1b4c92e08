"""Users and tenants: who spends most, and how much of their daily limit each user used today."""

import streamlit as st

from llmcost.dashboard import limits, ui
from llmcost.dashboard import queries as dq

context = ui.context()
settings, filters = context.settings, context.filters
OVER_LIMIT_STYLE = "background-color: #ffe3e3"


def highlight_over_limit(frame):
    return frame.style.apply(
        lambda row: [OVER_LIMIT_STYLE if row["over_limit"] else ""] * len(row), axis=1
    )


st.title("Users and tenants")
limit = st.number_input("How many to show", min_value=5, max_value=500, value=20, step=5, key="users_limit")
data = ui.load(dq.users, settings, context.today, filters, int(limit))
if data is None:
    ui.stop_without_data()

today_limits = limits.limit_usage(data.today, settings)
st.subheader("Top users by cost")
st.caption(f"Cost from {filters.start:%Y-%m-%d} to {filters.end:%Y-%m-%d}; `used_share` is the share of the "
           f"daily limit used today ({context.today:%Y-%m-%d}), 1.0 meaning the limit is reached. "
           "Users over their limit are highlighted, with the action taken.")
top = limits.users_with_limits(data.users, data.today, settings)
ui.table(top, "users_top", file_name="top-users.csv", money=["cost_usd", "cost_today", "limit_cost_usd"],
         counts=["calls", "total_tokens", "tokens_today", "limit_tokens"], styler=highlight_over_limit)

st.subheader("Over their daily limit today")
over = today_limits.loc[today_limits["over_limit"]].drop(columns=["over_limit"])
if over.empty:
    st.success("No user is over their daily limit today.", icon=":material/check_circle:")
ui.table(over, "users_over_limit", file_name="users-over-limit-today.csv", money=["cost_today", "limit_cost_usd"],
         counts=["tokens_today", "limit_tokens"])

st.subheader("Top tenants by cost")
ui.table(data.tenants, "users_tenants", file_name="top-tenants.csv", money=["cost_usd"],
         counts=["users", "calls", "total_tokens"])
