"""Budgets and alerts: the limits, today's state per account type, alert history and kill switches."""

import dataclasses

import pandas as pd
import streamlit as st

from llmcost import money as fmt
from llmcost.control.backend import open_control
from llmcost.dashboard import limits, tables, ui
from llmcost.dashboard import queries as dq
from llmcost.monitor import alerts

KILL_SWITCH_MESSAGE = "budgets_kill_switch_message"

context = ui.context()
settings, filters = context.settings, context.filters


def switch_off() -> None:
    state = st.session_state
    if (access := ui.operator_or_refuse(KILL_SWITCH_MESSAGE)) is None:
        return
    use_case, reason = state.get("budgets_disable_use_case"), (state.get("budgets_disable_reason") or "").strip()
    if not use_case:
        state[KILL_SWITCH_MESSAGE] = ("warning", "Choose the use case to disable.")
    elif not reason:
        state[KILL_SWITCH_MESSAGE] = ("warning", "Give a reason: it is shown to whoever sees the refused calls.")
    elif not state.get("budgets_disable_confirm"):
        state[KILL_SWITCH_MESSAGE] = ("warning",
                                      "Tick the confirmation: every call of this use case will be refused.")
    else:
        with open_control(settings) as switches:
            switches.disable(use_case, reason, by=access.who)
        state["budgets_disable_reason"], state["budgets_disable_confirm"] = "", False
        state[KILL_SWITCH_MESSAGE] = ("success", f"Disabled {ui.plain(use_case)}: its calls are refused from now on.")


def switch_on() -> None:
    state = st.session_state
    if (access := ui.operator_or_refuse(KILL_SWITCH_MESSAGE)) is None:
        return
    use_case = state.get("budgets_enable_use_case")
    if not use_case:
        state[KILL_SWITCH_MESSAGE] = ("warning", "Choose the use case to enable.")
    elif not state.get("budgets_enable_confirm"):
        state[KILL_SWITCH_MESSAGE] = ("warning", "Tick the confirmation to enable it again.")
    else:
        with open_control(settings) as switches:
            switches.enable(use_case, by=access.who)
        state["budgets_enable_confirm"] = False
        state[KILL_SWITCH_MESSAGE] = ("success", f"Enabled {ui.plain(use_case)}: its calls are allowed again.")


def resume() -> None:
    if (access := ui.operator_or_refuse(KILL_SWITCH_MESSAGE)) is None:
        return
    with open_control(settings) as switches:
        switches.resume(context.today, by=access.who)
    st.session_state[KILL_SWITCH_MESSAGE] = ("success", "Resumed: tracked calls are allowed again today.")


st.title("Budgets and alerts")
data = ui.load(dq.budgets, settings, context.today, filters)

st.subheader("Limits per user, by account type (a day, and a month where set)")
st.caption(ui.dollars(
    f"Users without an account type count as `{settings.default_account_type}`. System-wide levels per day: "
    f"warning {fmt.money(settings.system.warning_usd)}, critical {fmt.money(settings.system.critical_usd)}, "
    f"shutdown {fmt.money(settings.system.shutdown_usd)}."))
ui.table(limits.limits_table(settings), "budgets_limits", file_name="limits.csv",
         money=["daily_cost_usd", "alert_above_usd", "monthly_cost_usd"], counts=["daily_tokens", "monthly_tokens"])

if data is None:
    ui.stop_without_data()

st.subheader(f"Today ({context.today:%Y-%m-%d}) per account type")
system = ui.live(limits.system_spend_today, settings, context.today)
st.metric("System-wide spend today", fmt.money(system.spend),
          help="As the tracker's emergency shutdown counts it: stored events plus tracked calls not yet "
               "ingested or still in flight. Level reached: " + (system.level or "none") + ".")
st.caption(ui.dollars(
    "The table counts stored events only (`cost_today` per account type), so it can be below the system-wide "
    "figure while tracked calls wait to be ingested."))
ui.table(limits.account_type_state(limits.limit_usage(data.today, settings)), "budgets_today",
         file_name="account-types-today.csv", money=["cost_today"],
         counts=["active_users", "over_limit", "tokens_today"])

st.subheader("Budgets per tenant, use case, service key and user month")
budgets = ui.live(limits.budgets_table, settings, context.today, filters.scope)
if budgets.empty:
    st.info("No tenant, use case or key budgets configured (e.g. `[tenant_budgets.\"acme\"]` in llmcost.toml), and "
            "no user with spend this month under a monthly limit (`monthly_cost_usd` under `[limits.TYPE]`).")
else:
    ui.table(budgets, "budgets_scopes", file_name="budgets.csv", money=["limit_usd", "spent_usd", "remaining_usd"],
             counts=["limit_tokens", "spent_tokens", "remaining_tokens"])

st.subheader("Thresholds crossed today")
crossed = pd.DataFrame([dataclasses.asdict(alert) for alert in ui.live(alerts.evaluate, settings, context.today)])
if crossed.empty:
    st.success("No threshold crossed today.", icon=":material/check_circle:")
else:
    ui.table(tables.with_measures_as_text(crossed), "budgets_crossed_today",
             file_name="thresholds-crossed-today.csv")

st.subheader("Alert history")
st.caption("Only `llmcost check --notify` records alerts here (one row per alert and notifier, when it was sent); "
           "the thresholds crossed above are judged afresh on every load and are not recorded.")
ui.table(tables.with_measures_as_text(data.alerts), "budgets_alerts", file_name="alerts.csv", counts=["attempts"],
         times=["raised_at"], timezone=settings.timezone)

st.subheader("Kill switches")
with open_control(settings) as switches:
    disabled = switches.disabled()
    halted = switches.halt_reason(context.today, settings.system.shutdown_usd)
if halted:
    st.error("Every tracked call is refused today (emergency shutdown); `llmcost resume` lifts it.",
             icon=":material/block:")
    st.text(halted)
    if context.access.can_operate:
        st.button("Resume", key="budgets_resume", on_click=resume, help="What `llmcost resume` does: lift "
                  "today's emergency shutdown, also the automatic one, for the rest of the day.")
disabled_table = pd.DataFrame(
    [{"use_case": name, **details} for name, details in disabled.items()],
    columns=["use_case", "reason", "disabled_at", "disabled_by"],
)
if disabled_table.empty:
    st.success("Every use case is enabled.", icon=":material/check_circle:")
else:
    ui.table(disabled_table, "budgets_disabled", file_name="disabled-use-cases.csv", times=["disabled_at"],
             timezone=settings.timezone)

if context.access.can_operate:
    # The forms sit in a section drawn only when opened: their select boxes and text input are a tenth of a
    # bare page's load on every visit that changes nothing.
    with ui.section("Disable or enable a use case", "budgets_switches", icon=":material/toggle_on:") as shown:
        if shown:
            known = sorted(set(settings.use_cases) | set(data.use_cases) | set(disabled))
            switch_off_column, switch_on_column = st.columns(2)
            with switch_off_column:
                st.markdown("**Disable a use case**")
                st.selectbox("Use case", [name for name in known if name not in disabled], index=None,
                             key="budgets_disable_use_case", placeholder="Choose a use case")
                st.text_input("Reason", key="budgets_disable_reason", max_chars=500)
                st.checkbox("I understand every call of this use case will be refused",
                            key="budgets_disable_confirm")
                st.button("Disable", key="budgets_disable", on_click=switch_off, type="primary")
            with switch_on_column:
                st.markdown("**Enable a use case**")
                st.selectbox("Disabled use case", list(disabled), index=None, key="budgets_enable_use_case",
                             placeholder="Choose a disabled use case")
                st.checkbox("Enable it again", key="budgets_enable_confirm")
                st.button("Enable", key="budgets_enable", on_click=switch_on)
ui.show_message(KILL_SWITCH_MESSAGE)
