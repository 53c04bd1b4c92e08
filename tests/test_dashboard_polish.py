"""What an analyst reads on the dashboard (issue 16): headers, one money format per table, percentages,
"unlimited", times, blanks, breaches in the range, silent use cases, skipped checks, full failed-log text,
and filters carried in the URL. Each test reads the rendered table's headers and cells through AppTest."""

from __future__ import annotations

import datetime as dt
import json
from decimal import Decimal

import pandas as pd
import pytest

from llmcost.dashboard import tables
from tests.dashboard_seed import event, failed_log, insert
from tests.test_dashboard_pages import (
    PAGES,
    assert_no_exception,
    navigation_pages,
    open_page,
    open_section,
    served_on_loopback,
    texts,
    today,
)

# The autouse fixtures: pages run under app.py's navigation, in local mode.
__all__ = ["navigation_pages", "served_on_loopback"]


def rendered(app, key: str) -> tuple[list[str], dict[str, dict], pd.DataFrame]:
    """A table as the reader sees it: its headers in the order shown, each column's configuration, its cells."""
    frame = app.container(key=key).dataframe[0]
    config = json.loads(frame.proto.columns)
    order = list(frame.proto.column_order) or [c for c in frame.value.columns]
    headers = [config.get(column, {}).get("label", column) for column in order]
    return headers, config, frame.value


def as_list(value) -> list[str]:
    return value if isinstance(value, list) else [value]


def money_formats(config: dict[str, dict]) -> set[str]:
    return {c["type_config"]["format"] for c in config.values()
            if c.get("type_config", {}).get("format", "").startswith("$")}


def test_top_users_table_has_readable_headers_key_columns_first_and_one_money_format(settings):
    day = today(settings)
    insert(settings.db_path, "usage_events", [
        *[event(day, f"0.{i + 10}", user_id=f"student-{i:02d}") for i in range(17)],
        event(day, "17.18", user_id="builder", account_type="lesson_builder"),
        event(day, "0.00525", user_id="boss", account_type="super_admin"),
        *[event(day, "0.001", user_id=f"tiny-{i}") for i in range(3)],
    ])
    app = open_page(PAGES[2])
    assert_no_exception(app)
    headers, config, cells = rendered(app, "users_top")
    assert headers[:4] == ["User ID", "Cost", "Used of daily limit", "Action"]  # never behind a sideways scroll
    assert not [h for h in headers if "_" in h] and "Over the limit" not in headers
    assert config["user_id"]["pinned"] is True
    assert money_formats(config) == {"$%,.4f"}  # $17.18 and $0.00525 in one table: one format
    assert config["cost_usd"]["type_config"]["type"] == "progress"  # the users' chart: bars in the cost cells
    assert config["used_share"]["type_config"]["format"] == "percent"
    assert len(cells) == 20  # as many as "How many to show" asks
    assert tables.prepare(cells, money=["cost_usd"]).height >= tables.ROW_PX * 21  # all 20 rows in view
    row = cells.set_index("user_id")
    assert row.loc["builder", "used_share"] == 17.18 / 0.5 and row.loc["builder", "action"] == "blocked"
    # An unlimited account type's token limit reads "unlimited"; its cost is measured against its alert level.
    assert row.loc["boss", "limit_tokens"] == "unlimited" and row.loc["boss", "limit_cost_usd"] == 50.0
    assert row.loc["tiny-0", "limit_tokens"] == "10,000" and row.loc["tiny-0", "action"] == ""


def test_breaches_show_for_every_day_in_the_range_not_only_today(settings):
    day = today(settings)
    spike = day - dt.timedelta(days=4)
    insert(settings.db_path, "usage_events", [
        event(spike, "29.50", user_id="builder", account_type="lesson_builder"),  # 59x the $0.50 hard limit
        event(spike, "0.40", user_id="careful", account_type="lesson_builder"),
        event(day, "0.01", user_id="builder", account_type="lesson_builder"),
    ])
    app = open_page(PAGES[2])
    assert_no_exception(app)
    headers, config, cells = rendered(app, "users_over_limit")
    assert cells[["day", "user_id", "action"]].values.tolist() == [[spike, "builder", "blocked"]]
    assert cells["used_share"].tolist() == [59.0] and config["used_share"]["type_config"]["format"] == "percent"
    assert headers[:3] == ["Day", "User ID", "Account type"]
    assert not [s for s in app.success if "No user went over" in s.value]

    app.date_input(key="filter_dates").set_value((day - dt.timedelta(days=2), day)).run()
    assert any("No user went over their daily limit in this range" in s.value for s in app.success)


def test_use_cases_lists_configured_use_cases_without_calls(settings):
    insert(settings.db_path, "usage_events", [event(today(settings), "1.5", use_case="chat_tutor")])
    app = open_page(PAGES[1])
    assert_no_exception(app)
    headers, _, cells = rendered(app, "use_cases_table")
    shown = dict(zip(cells["use_case"], cells["calls"]))
    assert shown["chat_tutor"] == 1 and shown["interaction_generator"] == 0
    assert set(shown) == {"chat_tutor", *settings.use_cases}
    assert headers == ["Use case", "Calls", "Input tokens", "Output tokens", "Tokens", "Cost"]
    assert any("interaction\\_generator" in c for c in texts(app.caption))
    open_section(app, "use_cases_trend")  # the trend is drawn once its section is opened
    assert [json.loads(c.proto.spec)["title"] for c in app.get("vega_lite_chart")] == [
        "Cost by use case", "Daily cost per use case"]  # the per-use-case trend over time


def test_integrity_says_skipped_for_a_check_it_did_not_run(settings):
    insert(settings.db_path, "usage_events", [event(today(settings), "1")])
    app = open_page(PAGES[4])
    assert_no_exception(app)
    figures = {m.label: m.value for m in app.metric}
    assert figures["Reconciliation"] == "skipped"


HOSTILE_RAW = '{"user_id": "<img src=x onerror=alert(1)>", "note": "**not bold** [x](javascript:alert(1))"}'


def test_failed_log_shows_its_full_error_and_raw_text_verbatim(settings):
    noon = dt.datetime.combine(today(settings), dt.time(12))
    long_error = "ValueError: " + "field cost_usd is not a number; " * 20 + "<b>end</b>"
    insert(settings.db_path, "failed_logs", [failed_log(noon, failed_id="bad-1", kind="invalid", error=long_error,
                                                        raw=HOSTILE_RAW)])
    app = open_page(PAGES[3])
    assert_no_exception(app)
    headers, _, cells = rendered(app, "failed_table")
    assert "Raw" not in headers and headers[0] == "Logged at"
    assert cells["recovered_at"].tolist() == [""] and cells["dismissed_by"].tolist() == [""]  # blank, not None
    assert cells["logged_at"].iloc[0].endswith(" UTC")
    assert not app.text  # the full text is drawn once its section is opened
    shown = [text.value for text in open_section(app, "failed_detail").text]
    assert shown == [long_error, HOSTILE_RAW]  # whole and exact, as plain text: never markdown or HTML
    assert not any("onerror" in m.value for m in app.markdown)


def test_thresholds_and_alert_history_are_formatted_and_explained(settings):
    day = today(settings)
    insert(settings.db_path, "usage_events", [event(day, "12", user_id="heavy", account_type="lesson_builder")])
    app = open_page(PAGES[5])
    assert_no_exception(app)
    _, _, crossed = rendered(app, "budgets_crossed_today")
    system = crossed.loc[crossed["scope"] == "system"].iloc[0]
    assert (system["figure"], system["threshold"]) == ("$12.00", "$10.00")
    assert any("llmcost check --notify" in c for c in texts(app.caption))


def test_overview_draws_no_level_line_the_bars_do_not_reach_and_offers_a_log_scale(settings):
    day = today(settings)
    insert(settings.db_path, "usage_events", [event(day, "0.40"), event(day - dt.timedelta(days=1), "0.10",
                                                                      model="gpt-4o-mini"),
                                              event(day - dt.timedelta(days=2), "0.50")])
    app = open_page()
    assert_no_exception(app)
    daily = json.loads(app.get("vega_lite_chart")[0].proto.spec)
    assert [layer["mark"]["type"] for layer in daily["layer"]] == ["bar"]  # no $10 line pinning the axis
    assert daily["layer"][0]["encoding"]["y"]["scale"] == {}
    app.toggle(key="overview_log_scale").set_value(True).run()
    daily = json.loads(app.get("vega_lite_chart")[0].proto.spec)
    assert daily["layer"][0]["encoding"]["y"]["scale"]["type"] == "symlog"
    models = json.loads(app.get("vega_lite_chart")[1].proto.spec)
    assert models["title"] == "Spend by model"
    with pytest.raises(KeyError):  # in a closed section: the table is drawn once the section is opened
        app.container(key="overview_movers")
    _, _, movers = rendered(open_section(app, "overview_movers_section"), "overview_movers")
    assert movers[["use_case", "cost_day_before", "cost_usd", "change_usd"]].values.tolist() == [
        ["chat_tutor", 0.10, 0.40, 0.30]]
    assert movers["change"].tolist() == [3.0]
    app.date_input(key="filter_dates").set_value((day - dt.timedelta(days=5), day - dt.timedelta(days=1))).run()
    _, config, movers = rendered(app, "overview_movers")
    # A fall is written as money writes it, "-$0.40", in the table's one format (printf would give "$-0.40").
    assert movers[["cost_day_before", "cost_usd", "change_usd"]].values.tolist() == [[0.5, 0.1, "-$0.40"]]
    assert money_formats(config) == {"$%,.2f"} and config["change_usd"]["label"] == "Change"


def test_filters_and_page_come_back_from_a_link(settings):
    day = today(settings)
    insert(settings.db_path, "usage_events", [
        event(day, "1", tenant_id="tenant-a"), event(day, "2", tenant_id="tenant-b"),
        event(day - dt.timedelta(days=40), "4", tenant_id="tenant-b")])
    app = open_page(PAGES[1])
    app.multiselect(key="filter_tenants").select("tenant-b").run()
    start = day - dt.timedelta(days=60)
    app.date_input(key="filter_dates").set_value((start, day)).run()
    link = {name: as_list(app.query_params[name]) for name in app.query_params}
    assert link == {"tenant": ["tenant-b"], "start": [start.isoformat()], "end": [day.isoformat()]}

    from streamlit.testing.v1 import AppTest

    from tests.test_dashboard_pages import APP

    fresh = AppTest.from_file(str(APP), default_timeout=30)
    for name, values in link.items():
        fresh.query_params[name] = values
    fresh.query_params["tenant"] = ["tenant-b", "no-such-tenant"]  # a stale value is dropped, not an error
    fresh.run()
    fresh.switch_page(PAGES[1]).run()
    assert_no_exception(fresh)
    assert fresh.multiselect(key="filter_tenants").value == ["tenant-b"]
    assert fresh.date_input(key="filter_dates").value == (start, day)
    _, _, cells = rendered(fresh, "use_cases_table")
    assert cells.loc[cells["use_case"] == "chat_tutor", "cost_usd"].tolist() == [6.0]


def test_headers_money_and_blanks_follow_one_rule():
    assert tables.header("tenant_id") == "Tenant ID" and tables.header("cost_today") == "Cost today"
    assert tables.header("last_error") == "Last error"
    frame = pd.DataFrame({"cost_usd": [Decimal("17.18"), Decimal("0.00525")],
                          "limit_cost_usd": [Decimal("0.5"), None], "note": ["x", None]})
    shown = tables.prepare(frame, money=["cost_usd", "limit_cost_usd"], unlimited=["limit_cost_usd"])
    assert shown.frame["limit_cost_usd"].tolist() == ["$0.5000", "unlimited"]
    assert shown.frame["note"].tolist() == ["x", ""]
    assert shown.config["cost_usd"]["type_config"]["format"] == "$%,.4f"
    assert tables.measure_text("tokens", Decimal(150_000)) == "150,000"
    assert tables.measure_text("cost_usd", Decimal("10")) == "$10.00"
