"""The one place llmcost touches Streamlit's internals: leaving its legacy `pages/` mode.

The dashboard's page folder keeps the name the product's design card gives it, `pages/`, and Streamlit reads
a folder of that name as its legacy multipage app: on the first request after the server starts, a deep link
(/users) runs the page script alone, with a menu built from file names, until a run of `app.py` calls
`st.navigation`. Streamlit has no documented switch for this, so the class attribute it keeps is turned off
here, and `tests/test_dashboard_pages.py::test_streamlit_still_has_the_legacy_pages_switch` fails loudly
when an upgrade renames or removes it.
"""

from __future__ import annotations

import streamlit as st
from streamlit.runtime.pages_manager import PagesManager

SWITCH = "uses_pages_directory"


def check_switch() -> None:
    """Raise, naming the fix, when this Streamlit no longer keeps the legacy-mode switch we turn off."""
    # None until the first PagesManager looks at the folder, then True or False
    if not hasattr(PagesManager, SWITCH) or getattr(PagesManager, SWITCH) not in (None, True, False):
        raise RuntimeError(
            f"Streamlit {st.__version__} has no PagesManager.{SWITCH}: deep links to dashboard pages would run a "
            "page without app.py. Update llmcost/dashboard/legacy_pages.py for this Streamlit, or pin the "
            "version in pyproject.toml."
        )


def start_in_navigation_mode() -> None:
    """Before the server starts: the first request already goes through `app.py`, with no extra run to leave
    legacy mode (`leave_legacy_multipage_mode` stays as the way out under `streamlit run app.py`)."""
    check_switch()
    setattr(PagesManager, SWITCH, False)


def leave_legacy_multipage_mode() -> None:
    """Route every request through `app.py` and `st.navigation`, even the first one after the server starts."""
    check_switch()
    if getattr(PagesManager, SWITCH):
        setattr(PagesManager, SWITCH, False)
        st.rerun()
