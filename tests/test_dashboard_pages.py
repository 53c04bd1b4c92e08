"""The dashboard run with Streamlit's AppTest against real stores: every page, the banner, the levels,
Refresh, CSV downloads and the kill switches."""

from __future__ import annotations

import csv
import datetime as dt
import io
from decimal import Decimal
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from streamlit.runtime.memory_media_file_storage import MemoryMediaFileStorage
from streamlit.runtime.pages_manager import PagesManager
from streamlit.testing.v1 import AppTest
from streamlit.testing.v1 import app_test as app_test_module

from llmcost.config import load_settings
from llmcost.dashboard import legacy_pages
from llmcost.dashboard.ui import NO_DATA
from llmcost.sdk import fallback
from llmcost.store import connection as store
from tests.dashboard_seed import empty_store, event, failed_log, insert

APP = Path(__file__).resolve().parent.parent / "app.py"
PAGES = ["pages/01_overview.py", "pages/02_use_cases.py", "pages/03_users.py", "pages/04_failed_logs.py",
         "pages/05_integrity.py", "pages/06_budgets.py"]
BANNER = "failed to log — cost data may be incomplete"


def test_streamlit_still_has_the_legacy_pages_switch():
    """The dashboard turns off Streamlit's legacy pages/ mode through an internal attribute; an upgrade
    that renames it must fail here, not silently break deep links."""
    legacy_pages.check_switch()
    assert legacy_pages.SWITCH in PagesManager.__annotations__  # declared by Streamlit, not added by us


class NavigationPagesManager(PagesManager):
    """Streamlit stops looking at the `pages/` folder once `st.navigation` runs, for the whole process;
    AppTest forgets that before every run, so its reruns would start a page without `app.py`."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        setattr(PagesManager, legacy_pages.SWITCH, False)


@pytest.fixture(autouse=True)
def navigation_pages(monkeypatch):
    monkeypatch.setattr(app_test_module, "PagesManager", NavigationPagesManager)


@pytest.fixture(autouse=True)
def served_on_loopback():
    """AppTest has no server: say it listens on 127.0.0.1, so the app is in local mode (as `make run` serves it)."""
    from streamlit import config

    before = config.get_option("server.address")
    config.set_option("server.address", "127.0.0.1")
    yield
    config.set_option("server.address", before)


def open_page(page: str = PAGES[0]) -> AppTest:
    app = AppTest.from_file(str(APP), default_timeout=30).run()
    if page != PAGES[0]:
        app.switch_page(page).run()
    return app


def open_section(app: AppTest, key: str) -> AppTest:
    """Open a lazy section (`ui.section`), as a click on its expander does: its content runs from then on."""
    app.session_state[key] = True
    return app.run()


def assert_no_exception(app: AppTest) -> None:
    assert not app.exception, [e.value for e in app.exception]


def today(settings) -> dt.date:
    return dt.datetime.now(settings.tz).date()


def table(app: AppTest, key: str):
    """The rows a table shows (`dashboard_ui.table` keys its container)."""
    return app.container(key=key).dataframe[0].value


def table_rows(app: AppTest, key: str) -> int:
    """How many rows a table shows; an empty table is a caption, not a dataframe."""
    block = app.container(key=key)
    return len(block.dataframe[0].value) if block.dataframe else 0


def texts(elements) -> list[str]:
    return [element.value for element in elements]


@pytest.fixture(scope="module")
def demo_home(tmp_path_factory) -> Path:
    from llmcost.ingestion.demo import load_demo

    home = tmp_path_factory.mktemp("demo") / "home"
    load_demo(load_settings(home=home, db=home / "llmcost.duckdb", config=None))
    return home


@pytest.mark.parametrize("page", PAGES)
@pytest.mark.parametrize("state", ["no store", "empty store", "demo data"])
def test_every_page_runs(page, state, settings, demo_home, monkeypatch):
    if state == "empty store":
        empty_store(settings.db_path)
    if state == "demo data":
        monkeypatch.setenv("LLMCOST_HOME", str(demo_home))
    app = open_page(page)
    assert_no_exception(app)
    assert app.title, "every page has a title"
    if state == "no store":
        assert NO_DATA in texts(app.info)
    if state == "demo data":
        assert NO_DATA not in texts(app.info)
        assert app.dataframe or app.metric


# Every chart the pages draw, by its title: its page and the sections to open for it.
CHARTS_DRAWN = {
    "Daily spend by use case": (PAGES[0], ()),
    "Spend by model": (PAGES[0], ()),
    "Cost by use case": (PAGES[1], ()),
    "Daily cost per use case": (PAGES[1], ("use_cases_trend",)),
    "Attempted vs logged calls": (PAGES[4], ("integrity_coverage_section",)),
}


def test_every_chart_the_pages_draw_is_valid_vega_lite(demo_home, monkeypatch):
    """`charts.vega_lite` skips Altair's validation (CPU on every figure's first run), so here every spec the
    pages draw from the demo data, the daily spend on both scales, goes through Altair's validator against its
    Vega-Lite schema: a wrong spec fails here, not in a visitor's browser."""
    import streamlit as st
    from altair.utils.schemapi import validate_jsonschema
    from altair.vegalite.v6.schema.core import load_schema
    from jsonschema import ValidationError

    from llmcost.dashboard import charts

    monkeypatch.setenv("LLMCOST_HOME", str(demo_home))
    st.cache_data.clear()  # every spec converted afresh (`ui.chart` keeps them per figure)
    converted = []
    convert = charts.vega_lite
    monkeypatch.setattr(charts, "vega_lite", lambda chart: converted.append(convert(chart)) or converted[-1])
    for page in dict.fromkeys(page for page, _ in CHARTS_DRAWN.values()):
        app = open_page(page)
        for section in {s for p, sections in CHARTS_DRAWN.values() if p == page for s in sections}:
            app = open_section(app, section)
        if page == PAGES[0]:
            app.toggle(key="overview_log_scale").set_value(True).run()
        assert_no_exception(app)
    titles = [spec["title"] for spec in converted]
    assert sorted(set(titles)) == sorted(CHARTS_DRAWN) and len(titles) == len(CHARTS_DRAWN) + 1
    daily = [spec for spec in converted if spec["title"] == "Daily spend by use case"]
    assert {spec["layer"][0]["encoding"]["y"]["scale"].get("type") for spec in daily} == {None, "symlog"}
    schema = load_schema()
    for spec in converted:
        validate_jsonschema(spec, schema)  # raises on a spec Vega-Lite would not take
    with pytest.raises(ValidationError):  # and the validator does look: an unknown mark fails
        validate_jsonschema({**converted[0], "layer": [{**converted[0]["layer"][0], "mark": "blob"}]}, schema)


def test_overview_figures_follow_the_store_and_the_filters(settings):
    day = today(settings)
    insert(settings.db_path, "usage_events", [
        event(day, "1.25", total_tokens=1000), event(day, "0.004", total_tokens=20_000, tenant_id="tenant-b"),
        event(day - dt.timedelta(days=1), "0.5", total_tokens=10),
    ])
    app = open_page()
    assert_no_exception(app)
    metrics = {(m.label, i // 3): m for i, m in enumerate(app.metric[:9])}
    assert metrics["Cost", 0].value == "$1.25" and metrics["Calls", 0].value == "2"
    assert metrics["Tokens", 0].value == "21,000"
    assert metrics["Cost", 0].delta == "+150.8%"  # $1.254 against yesterday's $0.50
    assert metrics["Cost", 1].value == "$0.50"
    app.multiselect(key="filter_tenants").select("tenant-b").run()
    assert app.metric[0].value == "$0.0040" and app.metric[1].value == "1"


def test_todays_spend_is_kept_between_runs_but_shows_a_tracked_call_at_once(settings, monkeypatch):
    """Today's system-wide spend is kept between runs (it reads the control state and the journals as well as the
    store), but never past a change to any of them: a tracked call not yet ingested shows on the next run."""
    from llmcost.control import rebuild
    from llmcost.sdk.tracker import Tracker

    computed = []
    day_spend = rebuild.day_spend
    monkeypatch.setattr(rebuild, "day_spend", lambda *args: computed.append(args) or day_spend(*args))

    def spend_today(app: AppTest) -> str:
        (message,) = [e.value for e in app.success if "Today's spend" in e.value]
        return message.split(" is below")[0]

    insert(settings.db_path, "usage_events", [event(today(settings), "1")])
    app = open_page()
    assert spend_today(app) == r"Today's spend \$1.00"
    assert spend_today(app.run()) == r"Today's spend \$1.00"
    assert len(computed) == 1  # the second run showed the figure the first one computed
    tracker = Tracker(settings)
    with tracker.call(use_case="chat_tutor", user_id="u", tenant_id="t", provider="openai", model="gpt-4o") as call:
        call.record(input_tokens=10, output_tokens=5, cost_usd=Decimal("2"))
    assert spend_today(app.run()) == r"Today's spend \$3.00"
    assert len(computed) == 2


def test_banner_counts_unrecovered_failed_logs_and_goes_once_they_are_recovered(settings):
    day = today(settings)
    insert(settings.db_path, "usage_events", [event(day, "1")])
    noon = dt.datetime.combine(day, dt.time(12))
    insert(settings.db_path, "failed_logs", [failed_log(noon), failed_log(noon), failed_log(noon, kind="invalid"),
                                             failed_log(noon, recovered=True)])
    app = open_page()
    banner = [e for e in app.error if BANNER in e.value]
    assert len(banner) == 1
    assert banner[0].value == f"3 LLM calls {BANNER}" and banner[0].icon == "⚠️"

    app.button(key="overview_open_failed_logs").click().run()
    assert texts(app.title) == ["Failed logs"]
    shown = table(app, "failed_table")
    assert len(shown) == 3 and not shown["recovered"].any()

    with store.writing(settings.db_path) as db:
        db.execute("UPDATE failed_logs SET recovered = true, recovered_at = now()::TIMESTAMP")
    app.switch_page(PAGES[0]).run()
    assert_no_exception(app)
    assert not [e for e in app.error if BANNER in e.value]


def test_banner_says_call_for_one(settings):
    day = today(settings)
    insert(settings.db_path, "failed_logs", [failed_log(dt.datetime.combine(day, dt.time(12)))])
    app = open_page()
    assert [e.value for e in app.error if BANNER in e.value] == [f"1 LLM call {BANNER}"]


@pytest.mark.parametrize("spend, level", [
    ("9.99", None), ("10", "warning"), ("49.99", "warning"), ("50", "critical"), ("200", "shutdown"),
])
def test_threshold_warning_appears_exactly_when_a_level_is_reached(spend, level, settings):
    day = today(settings)
    # Spread over two tenants: the level is system-wide, whatever the filters show.
    half = Decimal(spend) / 2
    insert(settings.db_path, "usage_events", [event(day, half), event(day, half, tenant_id="tenant-b"),
                                              event(day - dt.timedelta(days=1), "500")])
    app = open_page()
    app.multiselect(key="filter_tenants").select("tenant-b").run()
    reached = [e for e in [*app.warning, *app.error] if "has reached the" in e.value]
    below = [e for e in app.success if "below the warning level" in e.value]
    if level is None:
        assert not reached and len(below) == 1
    else:
        assert len(reached) == 1 and not below
        assert f"has reached the {level} level" in reached[0].value
        assert (reached[0] in app.warning) == (level == "warning")


def test_csv_download_serves_exact_neutralised_rows(settings, monkeypatch):
    served = []

    class RecordingStorage(MemoryMediaFileStorage):
        def __init__(self, endpoint):
            super().__init__(endpoint)
            served.append(self)

    monkeypatch.setattr(app_test_module, "MemoryMediaFileStorage", RecordingStorage)
    day = today(settings)
    insert(settings.db_path, "usage_events", [
        event(day, "1.000000000001", use_case='=HYPERLINK("http://evil.example","x")'),
        event(day, "0.000000000002", use_case="@SUM(A1)"),
        event(day, "2", use_case="<script>alert(1)</script>"),
    ])
    app = open_page(PAGES[1])
    assert_no_exception(app)
    assert not any("<script>" in m.value for m in app.markdown)
    url = app.container(key="use_cases_table").get("download_button")[0].proto.url
    content = next(s.get_file(url.rsplit("/", 1)[1]).content for s in served if _has(s, url))
    rows = list(csv.DictReader(io.StringIO(content.decode("utf-8"))))
    by_use_case = {row["use_case"]: row for row in rows if row["calls"] != "0"}
    assert {row["use_case"] for row in rows if row["calls"] == "0"} == set(settings.use_cases)  # configured, silent
    assert set(by_use_case) == {"'=HYPERLINK(\"http://evil.example\",\"x\")", "'@SUM(A1)", "<script>alert(1)</script>"}
    assert Decimal(by_use_case["'=HYPERLINK(\"http://evil.example\",\"x\")"]["cost_usd"]) == Decimal("1.000000000001")
    assert Decimal(by_use_case["'@SUM(A1)"]["cost_usd"]) == Decimal("0.000000000002")
    assert list(rows[0]) == ["use_case", "calls", "input_tokens", "output_tokens", "total_tokens", "cost_usd"]


HOSTILE = "<img src=x onerror=alert(1)> **bold** [link](javascript:alert(1)) $x$"


def test_hostile_text_never_reaches_markdown_on_any_page(settings):
    day = today(settings)
    insert(settings.db_path, "usage_events", [
        # Priced at the default rate, so the integrity page names the model in a message.
        event(day, "12", use_case=HOSTILE, tenant_id=HOSTILE, model=HOSTILE, user_id=HOSTILE,
              price_source="default-rate")])
    noon = dt.datetime.combine(day, dt.time(12))
    insert(settings.db_path, "failed_logs", [failed_log(noon, error=HOSTILE, use_case=HOSTILE)])
    app = open_page()
    mentioned = []
    for page in PAGES:
        app.switch_page(page).run()
        assert_no_exception(app)
        rendered = [e.value for kind in ("markdown", "caption", "success", "info", "warning", "error")
                    for e in getattr(app, kind)]
        mentioned += [text for text in rendered if "onerror" in text]
        assert all("\\<img" in text and "\\[link\\]" in text for text in mentioned), page
    assert mentioned, "the integrity page names the default-rate model in its message"
    app.switch_page(PAGES[2]).run()
    assert table(app, "users_top")["user_id"].tolist() == [HOSTILE]


def _has(storage: MemoryMediaFileStorage, url: str) -> bool:
    try:
        storage.get_file(url.rsplit("/", 1)[1])
        return True
    except Exception:
        return False


def test_users_page_highlights_users_over_their_limit_with_the_action(settings):
    day = today(settings)
    insert(settings.db_path, "usage_events", [
        event(day, "0.06", user_id="student-over", account_type="student"),
        event(day, "0.04", user_id="student-under", account_type="student"),
        event(day, "0.75", user_id="builder-over", account_type="lesson_builder"),
    ])
    app = open_page(PAGES[2])
    assert_no_exception(app)
    top = table(app, "users_top").set_index("user_id")
    assert top.loc["student-over", "action"] == "warned" and top.loc["builder-over", "action"] == "blocked"
    assert top.loc["student-under", "action"] == "" and not top.loc["student-under", "over_limit"]
    over = table(app, "users_over_limit")
    assert sorted(over["user_id"]) == ["builder-over", "student-over"]


def test_failed_logs_page_filters_by_status(settings):
    day = today(settings)
    noon = dt.datetime.combine(day, dt.time(12))
    insert(settings.db_path, "failed_logs", [failed_log(noon, error="disk full"),
                                             failed_log(noon, recovered=True, error="journal unwritable")])
    app = open_page(PAGES[3])
    assert table(app, "failed_table")["error"].tolist() == ["disk full"]
    app.selectbox(key="failed_status").set_value("recovered").run()
    assert table(app, "failed_table")["error"].tolist() == ["journal unwritable"]
    app.selectbox(key="failed_status").set_value("all").run()
    assert len(table(app, "failed_table")) == 2


def test_times_show_in_the_configured_time_zone(settings, monkeypatch):
    monkeypatch.setenv("LLMCOST_TIMEZONE", "America/New_York")
    zone = ZoneInfo("America/New_York")
    local_noon = dt.datetime.combine(dt.datetime.now(zone).date(), dt.time(12), tzinfo=zone)
    stored = local_noon.astimezone(dt.timezone.utc).replace(tzinfo=None)  # the store keeps naive UTC
    insert(settings.db_path, "failed_logs", [failed_log(stored)])
    app = open_page(PAGES[3])
    assert_no_exception(app)
    shown = table(app, "failed_table")["logged_at"].iloc[0]
    assert shown == f"{local_noon:%Y-%m-%d} 12:00:00 {local_noon.tzname()}"  # as `money.local_time` writes it
    assert "Times in America/New_York" in texts(app.caption)


def test_refresh_ingests_a_new_fallback_log_line_and_updates_the_figures(settings):
    from llmcost.ingestion.run import ingest
    from llmcost.lines import encode_line

    day = today(settings)
    ts = dt.datetime.combine(day, dt.time(0, 5), tzinfo=settings.tz).isoformat()
    record = {"ts": ts, "user_id": "u1", "tenant_id": "t1", "use_case": "chat_tutor", "provider": "openai",
              "model": "gpt-4o", "input_tokens": 1000, "output_tokens": 500}
    journal = settings.journal_dir / "first.jsonl"
    journal.write_bytes(encode_line({**record, "event_id": "e1"}))
    ingest(settings)
    with store.writing(settings.db_path) as db:  # so the new sync time is visibly later
        db.execute("UPDATE ingest_sources SET last_synced_at = TIMESTAMP '2001-01-01 00:00:00'")

    fallback.append(settings.fallback_log, {**record, "event_id": "e2"}, "OSError: [Errno 28] No space left on device")
    app = open_page()
    metrics = {m.label: m.value for m in app.metric}
    assert metrics["Waiting in the fallback log"] == "1" and metrics["Waiting in journals"] == "0"
    assert app.metric[1].value == "1"  # today's calls
    assert metrics["Last synced"] == "2001-01-01 00:00 UTC"

    app.button(key="overview_refresh").click().run()
    assert_no_exception(app)
    metrics = {m.label: m.value for m in app.metric}
    assert app.metric[1].value == "2"
    assert app.metric[0].value == "$0.02"  # two gpt-4o calls of $0.0075
    assert metrics["Waiting in the fallback log"] == "0"
    assert metrics["Last synced"].startswith(f"{dt.datetime.now(dt.timezone.utc):%Y-%m-%d}")
    assert any("stored 1" in s.value for s in app.success)
    assert not [e for e in app.error if BANNER in e.value]  # the fallback record is stored, so recovered


def test_refresh_on_an_empty_data_folder_loads_the_journal(settings):
    from llmcost.lines import encode_line

    record = {"event_id": "e1", "ts": dt.datetime.now(dt.timezone.utc).isoformat(), "user_id": "u1",
              "tenant_id": "t1", "use_case": "chat_tutor", "provider": "openai", "model": "gpt-4o",
              "input_tokens": 1000, "output_tokens": 500}
    (settings.journal_dir / "first.jsonl").write_bytes(encode_line(record))
    app = open_page()
    assert NO_DATA in texts(app.info)
    assert {m.label: m.value for m in app.metric}["Waiting in journals"] == "1"
    app.button(key="overview_refresh").click().run()
    assert_no_exception(app)
    assert NO_DATA not in texts(app.info)
    assert app.metric[0].value == "$0.0075" and app.metric[1].value == "1"


def test_replaying_the_fallback_log_recovers_its_records(settings):
    day = today(settings)
    insert(settings.db_path, "usage_events", [event(day, "1")])
    record = {"event_id": "lost-1", "ts": dt.datetime.now(dt.timezone.utc).isoformat(), "user_id": "u1",
              "tenant_id": "tenant-a", "use_case": "chat_tutor", "provider": "openai", "model": "gpt-4o",
              "input_tokens": 10, "output_tokens": 5}
    fallback.append(settings.fallback_log, record, "OSError: [Errno 28] No space left on device")
    app = open_page(PAGES[3])
    app.selectbox(key="failed_status").set_value("all").run()
    assert table_rows(app, "failed_table") == 0
    app.button(key="failed_replay").click().run()
    assert_no_exception(app)
    assert any("stored 1" in s.value for s in app.success)
    rows = table(app, "failed_table")
    assert rows["recovered"].tolist() == [True] and rows["use_case"].tolist() == ["chat_tutor"]
    with store.reading(settings.db_path) as db:
        assert db.execute("SELECT count(*) FROM usage_events WHERE event_id = 'lost-1'").fetchall() == [(1,)]


def test_kill_switch_changes_what_the_tracker_enforces(settings):
    from llmcost.control.state import ControlState
    from llmcost.errors import UseCaseDisabledError
    from llmcost.sdk.tracker import Tracker

    insert(settings.db_path, "usage_events", [event(today(settings), "1")])
    app = open_section(open_page(PAGES[5]), "budgets_switches")
    app.selectbox(key="budgets_disable_use_case").set_value("chat_tutor")
    app.text_input(key="budgets_disable_reason").input("runaway loop")
    app.button(key="budgets_disable").click().run()
    assert any("Tick the confirmation" in w.value for w in app.warning)  # nothing happens unconfirmed
    with ControlState(settings.control_db) as control:
        assert control.disabled() == {}

    app.checkbox(key="budgets_disable_confirm").check()
    app.button(key="budgets_disable").click().run()
    assert_no_exception(app)
    with ControlState(settings.control_db) as control:
        assert control.disabled()["chat_tutor"]["reason"] == "runaway loop"
    assert table(app, "budgets_disabled")["use_case"].tolist() == ["chat_tutor"]
    tracker = Tracker(settings)
    with pytest.raises(UseCaseDisabledError, match="runaway loop"):
        with tracker.call(use_case="chat_tutor", user_id="u", tenant_id="t"):
            pytest.fail("the call must not be made")

    app.selectbox(key="budgets_enable_use_case").set_value("chat_tutor")
    app.checkbox(key="budgets_enable_confirm").check()
    app.button(key="budgets_enable").click().run()
    with ControlState(settings.control_db) as control:
        assert control.disabled() == {}
    with tracker.call(use_case="chat_tutor", user_id="u", tenant_id="t") as call:
        call.record(input_tokens=10, output_tokens=5)


def test_integrity_page_lists_a_stale_attempt(settings):
    from tests.dashboard_seed import attempt

    now = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)
    insert(settings.db_path, "call_attempts", [attempt(now - dt.timedelta(minutes=10), "lost-call")])
    insert(settings.db_path, "usage_events", [event(now.date(), "1")])
    app = open_page(PAGES[4])
    assert_no_exception(app)
    with pytest.raises(KeyError):  # the table is drawn only once its section is opened
        app.container(key="integrity_stale_attempts")
    stale = table(open_section(app, "integrity_stale_attempts_section"), "integrity_stale_attempts")
    assert stale["attempt_id"].tolist() == ["lost-call"]


def test_dismissing_a_failed_log_keeps_it_marked_in_the_table_and_takes_it_off_the_banner(settings):
    day = today(settings)
    insert(settings.db_path, "usage_events", [event(day, "1")])
    noon = dt.datetime.combine(day, dt.time(12))
    insert(settings.db_path, "failed_logs", [
        failed_log(noon, failed_id="readme-1", kind="refused", error="not a usage file: README.md"),
        failed_log(noon, failed_id="disk-1"),
    ])
    app = open_section(open_page(PAGES[3]), "failed_dismiss_section")
    assert app.button(key="failed_dismiss").disabled
    app.multiselect(key="failed_dismiss_ids").select("readme-1")
    app.text_input(key="failed_dismiss_reason").input("ingested README.md by mistake")
    app.text_input(key="failed_dismiss_by").input("ops")
    app.run()
    assert app.button(key="failed_dismiss").disabled  # not before the confirmation is ticked
    app.checkbox(key="failed_dismiss_confirm").check().run()
    app.button(key="failed_dismiss").click().run()
    assert_no_exception(app)
    assert any("Dismissed 1" in s.value for s in app.success)
    with store.reading(settings.db_path) as db:
        assert db.execute("SELECT failed_id, dismissed_by, dismiss_reason FROM failed_logs "
                          "WHERE dismissed_at IS NOT NULL").fetchall() == [("readme-1", "ops",
                                                                            "ingested README.md by mistake")]
    assert table(app, "failed_table")["failed_id"].tolist() == ["disk-1"]  # "Not recovered" lists open ones
    app.selectbox(key="failed_status").set_value("dismissed").run()
    shown = table(app, "failed_table")
    assert shown["failed_id"].tolist() == ["readme-1"] and shown["dismissed_by"].tolist() == ["ops"]
    app.switch_page(PAGES[0]).run()
    assert [e.value for e in app.error if BANNER in e.value] == [f"1 LLM call {BANNER}"]
