"""The sidebar's filters in the page's URL (`?start=...&end=...&tenant=...`), so a link reproduces a view.

The page itself is the URL's path (`/use_cases`), which `st.navigation` already follows. A link's values are
read once, when a session starts, and only those the store offers are kept: a stale or edited link narrows
nothing it cannot show and never raises.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from typing import Any

import streamlit as st

DATES_KEY = "filter_dates"
# Widget key -> query parameter (repeated for several values: ?tenant=a&tenant=b).
LISTS = {"filter_tenants": "tenant", "filter_providers": "provider", "filter_models": "model"}
RESTORED_KEY = "url_state_restored"
LIST_NAMES = {"filter_tenants": ("tenant", "tenants"), "filter_providers": ("provider", "providers"),
              "filter_models": ("model", "models")}


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


def date_range(chosen: Any, default: tuple[dt.date, dt.date]) -> tuple[dt.date, dt.date]:
    """The date filter's range; while a range is being picked the widget holds one day: a one-day range."""
    if isinstance(chosen, dt.date):
        return chosen, chosen
    days = [d for d in (chosen or ()) if d is not None]
    return (min(days), max(days)) if days else default


def filters_label(state: Mapping[str, Any], default: tuple[dt.date, dt.date]) -> str:
    """What the filters are set to, in a line: the dates, then how many of each list are chosen, if any."""
    start, end = date_range(state.get(DATES_KEY), default)
    parts = [f"{start:%Y-%m-%d}" if start == end else f"{start:%Y-%m-%d} to {end:%Y-%m-%d}"]
    for key, (one, many) in LIST_NAMES.items():
        if count := len(state.get(key) or ()):
            parts.append(f"{count} {one if count == 1 else many}")
    return "Filters: " + ", ".join(parts)
