"""llmcost's dashboard: `streamlit run app.py` (or `make run`).

The navigation and the shared sidebar filters live here; each page is a thin script in `pages/`.
"""

import streamlit as st

from llmcost.dashboard import legacy_pages, ui
from llmcost.store.connection import held_open

st.set_page_config(page_title="llmcost", page_icon=":material/paid:", layout="wide")

# Each page's URL comes from its file name (/use_cases, /failed_logs, ...), the same URL Streamlit's legacy
# pages/ mode gives it, so a deep link still finds its page on the first request after the server starts.
PAGES = [
    st.Page("pages/01_overview.py", title="Overview", icon=":material/monitoring:", default=True),
    st.Page("pages/02_use_cases.py", title="Use cases", icon=":material/category:"),
    st.Page("pages/03_users.py", title="Users and tenants", icon=":material/group:"),
    st.Page("pages/04_failed_logs.py", title="Failed logs", icon=":material/report:"),
]
# Pages about the whole system, not shown to a tenant-scoped viewer, who sees only their tenants' figures.
SYSTEM_WIDE_PAGES = [
    st.Page("pages/05_integrity.py", title="Integrity", icon=":material/fact_check:"),
    st.Page("pages/06_budgets.py", title="Budgets and alerts", icon=":material/savings:"),
]

legacy_pages.leave_legacy_multipage_mode()
settings = ui.settings_or_stop()
# The run's reads (the sidebar's, the page's bundles, its live figures: five on the Overview) share one opening of
# the store. Held for this run only: a Refresh's ingest, in a child process, waits for it as for any reader, and
# a button's callback (which starts the ingest) runs before the run, so never waits for its own session.
with held_open(settings.db_path):
    access = ui.access_or_stop(settings)
    page = st.navigation(PAGES + SYSTEM_WIDE_PAGES if access.sees_every_tenant else PAGES)
    ui.sidebar(settings, access)
    page.run()
