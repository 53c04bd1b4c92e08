"""Users and tenants: who spends most, how much of their daily limit each used, and who went over it."""

import pandas as pd
import streamlit as st

from llmcost.dashboard import limits, trends, ui
from llmcost.dashboard import queries as dq

context = ui.context()
settings, filters = context.settings, context.filters
OVER_LIMIT_STYLE = "background-color: #ffe3e3"
DEFAULT_LIMIT = 20
# The columns a reader needs first, so they are never behind a horizontal scroll.
TOP_USER_COLUMNS = ["user_id", "cost_usd", "used_share", "action", "tenant_id", "account_type", "calls",
                    "total_tokens", "cost_today", "limit_cost_usd", "tokens_today", "limit_tokens"]


def highlight_over_limit(frame):
    # One frame of styles for the whole table: a function called per row took 3x as long (5 ms for 20 rows).
    over = frame["over_limit"].to_numpy(dtype=bool)[:, None].repeat(len(frame.columns), axis=1)
    styles = pd.DataFrame(over, index=frame.index, columns=frame.columns).replace({True: OVER_LIMIT_STYLE,
                                                                                   False: ""})
    return frame.style.apply(lambda _: styles, axis=None)


st.title("Users and tenants")
# In a popover that says how many are shown: the browser draws the number input only when it is opened.
with st.popover(f"Top {st.session_state.get('users_limit', DEFAULT_LIMIT)} users and tenants",
                icon=":material/format_list_numbered:"):
    limit = st.number_input("How many to show", min_value=5, max_value=500, value=DEFAULT_LIMIT, step=5,
                            key="users_limit")
data = ui.load(dq.users, settings, context.today, filters, int(limit))
if data is None:
    ui.stop_without_data()

st.subheader("Top users by cost")
st.caption(f"Cost from {filters.start:%Y-%m-%d} to {filters.end:%Y-%m-%d}, drawn as bars. \"Used of daily "
           f"limit\" is the share of the daily limit used today ({context.today:%Y-%m-%d}); users over their limit "
           "today are highlighted, with the action taken.")
top = limits.users_with_limits(data.users, data.today, settings)
# The bars are the table's own (a cell chart): a chart library would double this page's load time.
ui.table(top, "users_top", file_name="top-users.csv", money=["cost_usd", "cost_today", "limit_cost_usd"],
         counts=["calls", "total_tokens", "tokens_today", "limit_tokens"], percents=["used_share"],
         unlimited=["limit_tokens", "limit_cost_usd"], styler=highlight_over_limit, order=TOP_USER_COLUMNS,
         pinned=["user_id"], bars=["cost_usd"])

st.subheader("Over their daily limit in this range")
st.caption(f"Every user-day from {filters.start:%Y-%m-%d} to {filters.end:%Y-%m-%d} over the limit of the "
           "user's account type, judged as the tracker judges (all of the user's calls that day, whatever the "
           "tenant, provider and model filters).")
floor_tokens, floor_cost = trends.limit_floors(settings)
user_days = ui.load(trends.breaches, settings, filters, floor_tokens, floor_cost)
over = limits.breaches(user_days, settings)
if over.empty:
    st.success("No user went over their daily limit in this range.", icon=":material/check_circle:")
ui.table(over, "users_over_limit", file_name="users-over-limit.csv", money=["cost_usd", "limit_cost_usd"],
         counts=["tokens", "limit_tokens"], percents=["used_share"], unlimited=["limit_tokens", "limit_cost_usd"],
         pinned=["day", "user_id"])

st.subheader("Top tenants by cost")
ui.table(data.tenants, "users_tenants", file_name="top-tenants.csv", money=["cost_usd"],
         counts=["users", "calls", "total_tokens"])
