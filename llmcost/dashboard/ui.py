"""Streamlit glue shared by the dashboard's pages: settings, sidebar filters, cached loads, tables.

Pages stay thin: they ask `context()` for the settings and filters, `load()` a bundle from
`dashboard_queries`, and lay out what comes back. User-supplied text only ever reaches widgets that
show text (tables, select boxes, `st.text`), never markdown or HTML.
"""

from __future__ import annotations

import datetime as dt
import importlib
import re
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import streamlit as st

from llmcost.config import Settings, load_settings
from llmcost.dashboard import fetch, legacy_pages, tables, url_state, writes
from llmcost.dashboard import queries as dq
from llmcost.dashboard.access import Access, decide_access, without_sign_in
from llmcost.errors import LLMCostError
from llmcost.money import today_in
from llmcost.store.export import frame_to_csv_bytes

NO_DATA = "No data yet: run `llmcost demo` or `llmcost ingest`"
CACHE_SECONDS = 60
DEFAULT_DAYS = 30
CONTEXT_KEY = "dashboard_context"


# Every character CommonMark lets a backslash escape, plus `$` (Streamlit reads $...$ as LaTeX).
_MARKDOWN_SPECIAL = re.compile(r"([\\`*_{}\[\]()#+\-.!|<>~$:=&\"'])")


def plain(text: Any) -> str:
    """Text that Streamlit's markdown shows exactly as typed: for user data in messages."""
    return _MARKDOWN_SPECIAL.sub(r"\\\1", str(text))


def dollars(text: str) -> str:
    """Our own markdown with its dollar amounts kept as text rather than read as LaTeX."""
    return text.replace("$", r"\$")


@dataclass(frozen=True)
class PageContext:
    settings: Settings
    filters: dq.Filters
    today: dt.date
    access: Access


def settings_or_stop() -> Settings:
    try:
        return load_settings()
    except LLMCostError as error:
        st.error("The configuration cannot be read: " + plain(error))
        st.stop()
        raise  # unreachable: st.stop() raises


@st.cache_data(ttl=CACHE_SECONDS, max_entries=64, show_spinner=False)
def _cached(module: str, bundle_name: str, db_path: str, version: Any, *args: Any) -> Any:
    # `version` is not used here: it is part of the cache key, so a store that changed is read again.
    return getattr(importlib.import_module(module), bundle_name)(db_path, *args)


def load(bundle: Callable[..., Any], settings: Settings, *args: Any) -> Any:
    """A page bundle from the dashboard's query modules, cached until the store changes (or for a minute)."""
    version = fetch.store_version(settings.db_path)
    if version is None:
        return None
    try:
        return _cached(bundle.__module__, bundle.__name__, str(settings.db_path), version, *args)
    except LLMCostError as error:  # the store stayed locked, or cannot be read
        st.error(plain(error))
        st.stop()


@st.cache_data(ttl=CACHE_SECONDS, max_entries=16, show_spinner=False)
def _cached_with_settings(module: str, name: str, settings_key: str, version: Any, _settings: Settings,
                          *args: Any) -> Any:
    # `settings_key` stands for `_settings` in the cache key: hashing the Settings object itself took
    # longer than the cached report (60 ms a run on Integrity).
    return getattr(importlib.import_module(module), name)(_settings, *args)


def load_report(report: Callable[..., Any], settings: Settings, *args: Any) -> Any:
    """A library report over the store (`report(settings, *args)`), cached like `load`: None without a store."""
    version = fetch.store_version(settings.db_path)
    if version is None:
        return None
    try:
        return _cached_with_settings(report.__module__, report.__name__, repr(settings), version, settings, *args)
    except LLMCostError as error:
        st.error(plain(error))
        st.stop()


# Today's live figures (system-wide spend, thresholds crossed, budgets) read the control state and the journals
# as well as the store, and refresh the control state's copy of the store's figures as they go; so they are
# kept with what those files looked like once computed, and computed again when anything changed since.
_LIVE: dict[tuple, tuple[Any, float, Any]] = {}
_LIVE_LOCK = threading.Lock()
_LIVE_ENTRIES = 64


def _file_version(path: Path) -> tuple[int, int]:
    try:
        found = path.stat()
        return found.st_mtime_ns, found.st_size
    except OSError:
        return 0, 0


def live_version(settings: Settings) -> tuple | None:
    """Changes whenever the store, the control file, a journal or the fallback log changes; None when the control
    state is not a file (Redis), so nothing tells when a tracker changed it."""
    if settings.control_backend != "sqlite":
        return None
    control = settings.control_db
    paths = [control, control.with_name(control.name + "-wal"), settings.fallback_log,
             *sorted(settings.journal_dir.glob("*.jsonl"))]
    return fetch.store_version(settings.db_path), tuple((str(path), *_file_version(path)) for path in paths)


def live(figure: Callable[..., Any], settings: Settings, *args: Any) -> Any:
    """`figure(settings, *args)`, one of today's live figures, computed again only when the store, the control
    state or the journals changed since it was computed (or a minute later, or after a Refresh)."""
    key = (figure.__module__, figure.__qualname__, repr(settings), args)
    version = live_version(settings)
    with _LIVE_LOCK:
        found = _LIVE.get(key)
    if version is not None and found and found[0] == version and time.monotonic() - found[1] < CACHE_SECONDS:
        return found[2]
    started = time.monotonic()
    value = figure(settings, *args)
    with _LIVE_LOCK:
        if len(_LIVE) >= _LIVE_ENTRIES:
            _LIVE.clear()
        _LIVE[key] = (live_version(settings), started, value)  # with the figure's own refresh of the control state
    return value


@st.cache_data(max_entries=64, show_spinner=False)
def _vega_lite_spec(module: str, name: str, *args: Any, **kwargs: Any) -> dict:
    from llmcost.dashboard.charts import vega_lite

    return vega_lite(getattr(importlib.import_module(module), name)(*args, **kwargs))


def chart(build: Callable[..., Any], *args: Any, key: str, **kwargs: Any) -> None:
    """Draw the Altair chart `build(*args, **kwargs)` (from `dashboard.charts`), built and converted once per
    figure: building and validating it again took 0.1-0.4 s of every run of a page with charts."""
    st.vega_lite_chart(_vega_lite_spec(build.__module__, build.__name__, *args, **kwargs), width="stretch", key=key)


@contextmanager
def section(label: str, key: str, *, icon: str | None = None) -> Iterator[bool]:
    """A collapsed expander whose content runs only while it is open (yields whether it is), its state in the
    URL (`?key=...`), so a link opens it again. A table or chart behind it costs the browser nothing until
    then: each one drawn on opening a page added a tenth to a half of a bare page's load."""
    with st.expander(label, key=key, icon=icon, bind="query-params") as box:
        yield bool(box.open)


def stop_without_data() -> None:
    st.info(NO_DATA)
    st.stop()


def sign_in_configured() -> bool:
    """Whether `.streamlit/secrets.toml` has an `[auth]` section, which `st.login` signs in with."""
    try:
        return st.secrets.load_if_toml_exists() and "auth" in st.secrets
    except FileNotFoundError:
        return False


def access_or_stop(settings: Settings) -> Access:
    """Who this session is and what they may do, or a sign-in, no-access or refusal page and `st.stop()`."""
    if not sign_in_configured():
        address = st.get_option("server.address")
        found = without_sign_in(address, settings.dashboard)
        if found is None:
            st.title("llmcost")
            st.error(
                f"This dashboard is served on {plain(address or 'every network interface')} without sign-in, so it "
                "shows no data. Configure sign-in (`[auth]` in `.streamlit/secrets.toml`, see docs/dashboard.md), "
                "serve it on 127.0.0.1 (`--server.address 127.0.0.1`), or set `allow_anonymous = true` under "
                "`[dashboard]` in llmcost.toml to show it read only to anyone who can reach it.")
            st.stop()
        return found
    if not st.user.is_logged_in:
        st.title("llmcost")
        st.info("Sign in to see the dashboard.")
        st.button("Sign in", key="auth_sign_in", on_click=st.login, type="primary")
        st.stop()
    claims = st.user.to_dict()
    found = decide_access(claims, settings.dashboard)
    if found is None:
        st.title("No access")
        st.error(f"You are signed in as {plain(claims.get('email') or claims.get('sub') or 'unknown')}, who has no "
                 "role on this dashboard. Ask an admin to add you to `[dashboard.roles]` in llmcost.toml.")
        st.button("Sign out", key="auth_sign_out_no_access", on_click=st.logout)
        st.stop()
    return found


def current_access() -> Access | None:
    """The access this session's last run established (button callbacks run before the next one)."""
    found = st.session_state.get(CONTEXT_KEY)
    return found.access if isinstance(found, PageContext) else None


def _access_box(access: Access) -> None:
    if access.signed_in:
        st.caption(f"Signed in as {plain(access.who)} ({plain(access.describe())})")
        st.button("Sign out", key="auth_sign_out", on_click=st.logout)
    elif access.can_operate:
        st.caption("Local mode: no sign-in is configured, and this dashboard is served on this machine only.")
    else:
        st.caption("Anonymous, read only: no sign-in is configured (`allow_anonymous = true`).")


def sidebar(settings: Settings, access: Access) -> PageContext:
    """The filters every page shares; the choices live in session state under their widget keys.

    A tenant-scoped viewer's scope goes into the filters here, from their access, never from a widget.
    """
    today = today_in(settings.tz)
    found = load(dq.sidebar, settings, access.tenants)
    span, options = found if found else (dq.Span(None, None, 0), {"tenants": [], "providers": [], "models": []})
    default_range = (today - dt.timedelta(days=DEFAULT_DAYS - 1), today)
    url_state.restore(options, max(today, span.last_day or today), default_range)
    with st.sidebar:
        _access_box(access)
    # The filters sit in a popover whose label says what they are set to: the browser draws its widgets (a date
    # picker, three multiselects) only when it is opened, which took a third of a bare page's time off every page.
    with st.sidebar.popover(url_state.filters_label(st.session_state, default_range), width="stretch",
                            icon=":material/filter_alt:"):
        chosen = st.date_input(
            "Dates",
            # No `value`: the range (a link's, else the default) is in session state, and a value that
            # changed between runs would make this a new widget.
            max_value=max(today, span.last_day or today),
            key="filter_dates",
            help="Days in the configured time zone (" + settings.timezone + ").",
        )
        tenants = st.multiselect("Tenants", options["tenants"], key="filter_tenants", placeholder="All tenants")
        providers = st.multiselect("Providers", options["providers"], key="filter_providers",
                                   placeholder="All providers")
        models = st.multiselect("Models", options["models"], key="filter_models", placeholder="All models")
    st.sidebar.caption(f"Times in {settings.timezone}")
    start, end = url_state.date_range(chosen, default_range)
    url_state.keep(start, end, {"filter_tenants": tenants, "filter_providers": providers, "filter_models": models},
                   default_range)
    filters = dq.Filters(start, end, tuple(tenants), tuple(providers), tuple(models), scope=access.tenants)
    context = PageContext(settings, filters, today, access)
    st.session_state[CONTEXT_KEY] = context
    return context


def context() -> PageContext:
    """What `app.py` put in place for this run (a page run on its own draws the sidebar itself)."""
    legacy_pages.leave_legacy_multipage_mode()
    found = st.session_state.get(CONTEXT_KEY)
    if isinstance(found, PageContext):
        return found
    settings = settings_or_stop()
    return sidebar(settings, access_or_stop(settings))


def clear_cached_figures() -> None:
    st.cache_data.clear()
    with _LIVE_LOCK:
        _LIVE.clear()


def table(
    frame: pd.DataFrame,
    key: str,
    *,
    file_name: str,
    money: Sequence[str] = (),
    counts: Sequence[str] = (),
    times: Sequence[str] = (),
    percents: Sequence[str] = (),
    unlimited: Sequence[str] = (),
    timezone: str = "UTC",
    styler: Callable[[pd.DataFrame], Any] | None = None,
    order: Sequence[str] | None = None,
    pinned: Sequence[str] = (),
    bars: Sequence[str] = (),
) -> None:
    """A table with readable headers and a CSV download of exactly its rows (exact amounts, neutralised text).

    Times are naive UTC in the frame; both the table and the CSV show them in `timezone`. `order` picks and
    orders the columns shown (the CSV keeps them all); `pinned` columns stay in view while scrolling sideways;
    `bars` money columns are drawn as bars in their cells.
    """
    shown = tables.prepare(frame, money=money, counts=counts, times=times, percents=percents,
                           unlimited=unlimited, timezone=timezone, pinned=pinned, bars=bars)
    # The container carries the key, so tests (and CSS) find the table and its download together.
    with st.container(key=key):
        if shown.frame.empty:
            st.caption("No rows for these filters.")
        else:
            # The frame's own order is the meaningful one (cost, time); an index column adds nothing.
            st.dataframe(styler(shown.frame) if styler else shown.frame, column_config=shown.config,
                         hide_index=True, width="stretch", height=shown.height, column_order=order)
        csv_frame = frame.copy()
        for column in times:
            csv_frame[column] = _in_zone(csv_frame[column], timezone)
        st.download_button(
            "Download CSV",
            data=frame_to_csv_bytes(csv_frame),
            file_name=file_name,
            mime="text/csv",
            key=f"{key}_csv",
            on_click="ignore",
            disabled=frame.empty,
        )


def _in_zone(column: pd.Series, timezone: str) -> pd.Series:
    values = pd.to_datetime(column)
    if values.dt.tz is None:
        values = values.dt.tz_localize("UTC")
    return values.dt.tz_convert(timezone)


def operator_or_refuse(message_key: str) -> Access | None:
    """This session's access when it may operate; otherwise leave a refusal message and return None."""
    access = current_access()
    if access is None or not access.can_operate:
        st.session_state[message_key] = ("error", "Only an operator can do this: ask an admin to add you to "
                                                  "`operator` under `[dashboard.roles]` in llmcost.toml.")
        return None
    return access


def ingest_now(settings: Settings, message_key: str, paths: Sequence[Any] | None = None) -> None:
    """Ingest (the configured sources, or `paths`) in a child process, then drop every cached figure.
    A button callback, for operators; one ingest at a time per server (`dashboard.writes`)."""
    access = operator_or_refuse(message_key)
    if access is None:
        return
    try:
        result = writes.ingest(settings, access.who, list(paths) if paths else None)
    except writes.WriteRunningError as running:
        st.session_state[message_key] = ("info", "Not started: " + plain(running))
        return
    except (LLMCostError, OSError) as error:
        st.session_state[message_key] = ("error", "Ingest failed: " + plain(error))
        return
    clear_cached_figures()
    st.session_state[message_key] = ("success", "Ingested: " + result.summary())


def dismiss_now(settings: Settings, message_key: str, failed_ids: Sequence[str], reason: str, by: str) -> None:
    """Dismiss the chosen failed logs, then drop every cached figure. A button callback, for operators.

    A signed-in operator is who dismissed them; in local mode, whoever the form names."""
    access = operator_or_refuse(message_key)
    if access is None:
        return
    who = access.who if access.signed_in else (by or "").strip() or access.who
    try:
        count = writes.dismiss(settings, who, list(failed_ids), reason)
    except writes.WriteRunningError as running:
        st.session_state[message_key] = ("info", "Not dismissed yet: " + plain(running))
        return
    except LLMCostError as error:
        st.session_state[message_key] = ("error", "Not dismissed: " + plain(error))
        return
    for key in ("failed_dismiss_ids", "failed_dismiss_confirm"):
        st.session_state.pop(key, None)
    clear_cached_figures()
    st.session_state[message_key] = ("success", f"Dismissed {count:,} failed log(s).")


def show_message(message_key: str) -> None:
    """Show, once, what a button callback left in session state."""
    found = st.session_state.pop(message_key, None)
    if found:
        kind, text = found
        getattr(st, kind)(text)
