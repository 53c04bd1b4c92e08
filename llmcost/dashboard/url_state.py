"""The sidebar's filters in the page's URL (`?start=...&end=...&tenant=...`), so a link reproduces a view.

The page itself is the URL's path (`/use_cases`), which `st.navigation` already follows. A link's values are
read once, when a session starts, and only those the store offers are kept: a stale or edited link narrows
nothing it cannot show and never raises.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence

import streamlit as st

DATES_KEY = "filter_dates"
# Widget key -> query parameter (repeated for several values: ?tenant=a&tenant=b).
LISTS = {"filter_tenants": "tenant", "filter_providers": "provider", "filter_models": "model"}
RESTORED_KEY = "url_state_restored"


def _day(text: str | None) -> dt.date | None:
    try:
        return dt.date.fromisoformat(text) if text else None
    except ValueError:
        return None


def restore(options: Mapping[str, Sequence[str]], latest: dt.date, default: tuple[dt.date, dt.date]) -> None:
    """On a session's first run, put the filters the URL carries (else the default range) into the sidebar
    widgets' state."""
    state = st.session_state
    if state.get(RESTORED_KEY) and DATES_KEY in state:
        return
    state[RESTORED_KEY] = True
    params = st.query_params
    start, end = _day(params.get("start")), _day(params.get("end"))
    state[DATES_KEY] = (start, end) if start and end and start <= end <= latest else default
    for key, name in LISTS.items():
        offered = set(options.get(key.removeprefix("filter_"), ()))
        chosen = [value for value in params.get_all(name) if value in offered]
        if chosen:
            state[key] = chosen


def keep(start: dt.date, end: dt.date, lists: Mapping[str, Sequence[str]], default: tuple[dt.date, dt.date]) -> None:
    """Write the filters in force into the URL (a default range is left out, so plain links stay plain)."""
    wanted: dict[str, list[str]] = {}
    if (start, end) != default:
        wanted["start"], wanted["end"] = [start.isoformat()], [end.isoformat()]
    for key, name in LISTS.items():
        if lists.get(key):
            wanted[name] = list(lists[key])
    params = st.query_params
    for name in ("start", "end", *LISTS.values()):
        if params.get_all(name) != wanted.get(name, []):
            if name in wanted:
                params[name] = wanted[name]
            elif name in params:
                del params[name]
