"""Integrity: is every call logged? The same checks as `llmcost check`, over its last seven days."""

import streamlit as st

from llmcost import money as fmt
from llmcost.dashboard import charts, ui
from llmcost.monitor import integrity

LEVEL_BOXES = {"ok": st.success, "skipped": st.info, "info": st.info}
LEVEL_ICONS = {"ok": ":material/check_circle:", "skipped": ":material/do_not_disturb_on:", "info": ":material/info:"}
QUIET_LEVELS = ("ok", "skipped")
MONEY_COLUMNS = ("cost_usd",)
TIME_COLUMNS = ("ts", "last_call_at", "first_seen", "last_seen", "first_logged_at", "last_logged_at")


def label(check) -> str:
    return check.name.replace("_", " ").capitalize()


context = ui.context()
settings = context.settings

st.title("Integrity")
# Cached until the store changes (or for a minute), like every other page's figures.
report = ui.load_report(integrity.run_checks, settings, context.today)
if report is None:
    ui.stop_without_data()

st.caption(f"The checks `llmcost check` runs, for the {integrity.CHECK_WINDOW_DAYS} days to "
           f"{report.today:%Y-%m-%d}; checked at {fmt.local_time(report.checked_at, settings.timezone)}. "
           "The sidebar's filters do not apply here.")
FIGURES_PER_ROW = 4  # wide enough for "skipped" and five-digit counts
figures = [column for start in range(0, len(report.checks), FIGURES_PER_ROW)
           for column in st.columns(FIGURES_PER_ROW)][:len(report.checks)]
for column, check in zip(figures, report.checks):
    column.metric(label(check), "skipped" if check.level == "skipped" else fmt.number(check.count),
                  help=ui.plain(check.title))

# What each check found, in one box; each check's rows and chart in a section drawn only when opened.
found = [check for check in report.checks if check.level not in QUIET_LEVELS]
if found:
    LEVEL_BOXES.get(max((c.level for c in found), key=integrity.CHECK_LEVEL_RANK.__getitem__), st.warning)(
        "\n".join(f"- **{label(check)}**: {ui.plain(check.summary)}" for check in found))
else:
    st.success("Every check passed.", icon=":material/check_circle:")

for check in report.checks:
    icon = LEVEL_ICONS.get(check.level, ":material/warning:")
    with ui.section(check.title, f"integrity_{check.name}_section", icon=icon) as shown:
        if not shown:
            continue
        LEVEL_BOXES.get(check.level, st.warning)(ui.plain(check.summary))
        if check.name == "coverage" and not check.rows.empty:
            ui.chart(charts.coverage, check.rows, key="integrity_coverage_chart")
        if check.rows.empty:
            continue
        columns = list(check.rows.columns)
        ui.table(
            check.rows, f"integrity_{check.name}", file_name=f"integrity-{check.name}.csv",
            money=[c for c in columns if c in MONEY_COLUMNS],
            counts=[c for c in columns
                    if c.endswith(("tokens", "calls", "logged", "attempted", "records", "in_flight"))
                    or c in ("attempted", "age_seconds")],
            times=[c for c in columns if c in TIME_COLUMNS], timezone=settings.timezone,
        )
