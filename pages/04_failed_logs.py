"""Failed logs: every record that could not be stored normally, and replaying the fallback log."""

import streamlit as st

from llmcost import money as fmt
from llmcost.dashboard import failed as failed_queries
from llmcost.dashboard import ui

REPLAY_MESSAGE = "failed_replay_message"
DISMISS_MESSAGE = "failed_dismiss_message"
STATUS_LABELS = {"unrecovered": "Not recovered", "recovered": "Recovered", "dismissed": "Dismissed", "all": "All"}

context = ui.context()
settings, filters = context.settings, context.filters

st.title("Failed logs")
st.caption("Calls whose record went to the fallback log, lines that could not be read, and calls stored "
           "without a user or tenant. A fallback-log record is recovered once its event is in the store.")

# In a popover that says what is shown: the browser draws the select boxes only when it is opened.
shown_kinds = st.session_state.get("failed_kinds") or ()
with st.popover(f"{STATUS_LABELS[st.session_state.get('failed_status', 'unrecovered')]}, "
                + (", ".join(shown_kinds) if shown_kinds else "all kinds"), icon=":material/filter_alt:"):
    status = st.selectbox("Status", list(STATUS_LABELS), format_func=STATUS_LABELS.get, key="failed_status")
    kinds = st.multiselect("Kinds", failed_queries.FAILED_KINDS, key="failed_kinds", placeholder="All kinds")
query = failed_queries.FailedLogQuery(status=status, kinds=tuple(kinds))
data = ui.load(failed_queries.failed, settings, filters, settings.timezone, query)
if data is None:
    ui.stop_without_data()

unrecovered, matching, replay = st.columns([1, 1, 2], vertical_alignment="bottom")
unrecovered.metric("Not recovered (all days)", fmt.number(data.unrecovered))
matching.metric("Matching these filters", fmt.number(data.matching))
fallback_exists = settings.fallback_log.is_file()
if context.access.can_operate:
    replay.button("Replay the fallback log", key="failed_replay", on_click=ui.ingest_now,
                  args=(settings, REPLAY_MESSAGE, [settings.fallback_log]), disabled=not fallback_exists,
                  help="Ingest the fallback log now: its events are stored once and their failed logs marked "
                       "recovered.")
ui.show_message(REPLAY_MESSAGE)
if not fallback_exists:
    st.caption("There is no fallback log at the configured path, so nothing to replay.")

if data.matching > len(data.rows):
    st.caption(f"Showing the newest {fmt.number(len(data.rows))} of {fmt.number(data.matching)}; "
               "the CSV holds the rows shown.")
ui.table(data.rows, "failed_table", file_name="failed-logs.csv", counts=["estimated_tokens"],
         times=["logged_at", "recovered_at", "dismissed_at"], timezone=settings.timezone,
         order=[c for c in data.rows.columns if c != "raw"], pinned=["logged_at"])

# The full text of one failed log and the Dismiss form sit in sections drawn only when opened.
if not data.rows.empty:
    with ui.section("Full error and raw text of one failed log", "failed_detail") as shown:
        if shown:
            chosen_id = st.selectbox("Failed log", data.rows["failed_id"].tolist(), key="failed_detail_id")
            chosen_row = data.rows.loc[data.rows["failed_id"] == chosen_id].iloc[0]
            # st.text shows the text exactly as stored, never read as markdown or HTML.
            st.markdown("**Error**")
            st.text(str(chosen_row["error"] or ""))
            st.markdown("**Raw text**")
            st.text(str(chosen_row["raw"] or ""))

open_ids = data.rows.loc[~data.rows["recovered"] & data.rows["dismissed_at"].isna(), "failed_id"].tolist()
if context.access.can_operate:
    with ui.section("Dismiss failed logs that need nothing more", "failed_dismiss_section") as shown:
        if shown:
            st.caption("Dismissed entries stay in this table, marked with who dismissed them, when and why; they "
                       "leave the warning banner and the counts of entries not recovered.")
            chosen = st.multiselect("Failed logs shown above", open_ids, key="failed_dismiss_ids",
                                    placeholder="Choose by failed_id")
            reason = st.text_input("Why they need nothing more", key="failed_dismiss_reason")
            by = (context.access.who if context.access.signed_in
                  else st.text_input("Dismissed by", key="failed_dismiss_by"))
            confirmed = st.checkbox(f"Dismiss {len(chosen)} failed log(s)", key="failed_dismiss_confirm")
            st.button("Dismiss", key="failed_dismiss", on_click=ui.dismiss_now,
                      args=(settings, DISMISS_MESSAGE, chosen, reason, by),
                      disabled=not (chosen and reason.strip() and confirmed))
ui.show_message(DISMISS_MESSAGE)

st.subheader("Not recovered, by error")
ui.table(data.unrecovered_by_error, "failed_by_error", file_name="failed-logs-by-error.csv",
         counts=["records", "estimated_tokens"], times=["first_logged_at", "last_logged_at"],
         timezone=settings.timezone)
