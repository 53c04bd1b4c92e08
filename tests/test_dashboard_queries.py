"""The dashboard's queries, transforms, formatting and charts, against a real DuckDB store."""

from __future__ import annotations

import dataclasses
import datetime as dt
from decimal import Decimal

import pandas as pd
import pytest

from llmcost import money as formatting
from llmcost.config import SystemLevels, load_settings
from llmcost.control.policy import system_level
from llmcost.dashboard import charts, fetch, limits
from llmcost.dashboard import failed as fq
from llmcost.dashboard import queries as dq
from llmcost.store import connection as store
from tests.dashboard_seed import empty_store, event, failed_log, insert

TODAY = dt.date(2026, 3, 31)
D = Decimal


def read(settings, query, *args):
    with store.reading(settings.db_path) as db:
        return query(db, *args)


def everything(start=dt.date(2000, 1, 1), end=dt.date(2100, 1, 1), **choices) -> dq.Filters:
    return dq.Filters(start, end, **choices)


# ---------------------------------------------------------------- overview

def test_period_totals_compare_today_yesterday_and_month_to_date(settings):
    yesterday = TODAY - dt.timedelta(days=1)
    insert(settings.db_path, "usage_events", [
        event(TODAY, "0.000000000001", total_tokens=10),
        event(TODAY, "1.5", total_tokens=20),
        event(yesterday, "2", total_tokens=30),
        event(TODAY - dt.timedelta(days=2), "4", total_tokens=40),
        event(dt.date(2026, 3, 1), "8", total_tokens=50),
        # February has 28 days: "the same days of last month" for March 31 ends on February 28.
        event(dt.date(2026, 2, 28), "16", total_tokens=60),
        event(dt.date(2026, 2, 1), "32", total_tokens=70),
        event(dt.date(2026, 1, 31), "64", total_tokens=80),  # before both periods
        event(TODAY, "128", tenant_id="tenant-b", total_tokens=90),
    ])
    totals = dq.overview(settings.db_path, TODAY, everything(tenants=("tenant-a",))).periods
    assert totals["today"] == dq.Totals(2, 30, D("1.500000000001"))
    assert totals["yesterday"] == dq.Totals(1, 30, D("2"))
    assert totals["day_before_yesterday"] == dq.Totals(1, 40, D("4"))
    assert totals["month_to_date"] == dq.Totals(5, 150, D("15.500000000001"))
    assert totals["previous_month_to_date"] == dq.Totals(2, 130, D("48"))
    unfiltered = dq.overview(settings.db_path, TODAY, everything()).periods
    assert unfiltered["today"].cost_usd == D("129.500000000001")


def test_overview_serves_a_distant_range_and_the_periods_from_one_scan(settings):
    insert(settings.db_path, "usage_events", [
        event(dt.date(2025, 1, 10), "7", use_case="old"),
        event(dt.date(2025, 6, 1), "100", use_case="between"),  # in neither the range nor a period
        event(TODAY, "1", use_case="new"),
    ])
    data = dq.overview(settings.db_path, TODAY, dq.Filters(dt.date(2025, 1, 1), dt.date(2025, 1, 31)))
    assert data.daily[["day", "use_case", "cost_usd"]].values.tolist() == [[dt.date(2025, 1, 10), "old", D("7")]]
    assert data.periods["today"] == dq.Totals(1, 150, D("1"))
    assert data.periods["month_to_date"].cost_usd == D("1")
    assert data.events == 3


def test_previous_month_period_is_clipped_to_the_shorter_month():
    assert dq.Periods(dt.date(2026, 3, 31)).ranges()["previous_month_to_date"] == (
        dt.date(2026, 2, 1), dt.date(2026, 2, 28))
    assert dq.Periods(dt.date(2026, 1, 15)).ranges()["previous_month_to_date"] == (
        dt.date(2025, 12, 1), dt.date(2025, 12, 15))


def test_daily_cost_is_grouped_by_day_and_use_case_and_follows_every_filter(settings):
    insert(settings.db_path, "usage_events", [
        event(TODAY, "1.25", use_case="chat_tutor"),
        event(TODAY, "0.75", use_case="chat_tutor"),
        event(TODAY, "3", use_case="scaffolder", provider="x-ai", model="grok-2"),
        event(TODAY, "5", use_case="scaffolder", tenant_id="tenant-b"),
        event(TODAY - dt.timedelta(days=40), "100"),
    ])
    daily = read(settings, dq.daily_cost_by_use_case, everything(start=TODAY - dt.timedelta(days=29), end=TODAY))
    assert daily[["use_case", "calls", "cost_usd"]].values.tolist() == [
        ["chat_tutor", 2, D("2")], ["scaffolder", 2, D("8")]]
    only_grok = read(settings, dq.daily_cost_by_use_case, everything(providers=("x-ai",), models=("grok-2",)))
    assert only_grok["cost_usd"].tolist() == [D("3")]
    tenant_b = read(settings, dq.daily_cost_by_use_case, everything(tenants=("tenant-b",)))
    assert tenant_b["cost_usd"].tolist() == [D("5")]


def test_system_cost_failed_logs_and_last_synced(settings):
    insert(settings.db_path, "usage_events", [event(TODAY, "9.99"), event(TODAY, "0.01", tenant_id="t2")])
    noon = dt.datetime(2026, 3, 31, 12)
    insert(settings.db_path, "failed_logs", [failed_log(noon), failed_log(noon), failed_log(noon, recovered=True)])
    data = dq.overview(settings.db_path, TODAY, everything(tenants=("t2",)))
    assert data.unrecovered_failed == 2
    assert data.last_synced is None
    # The levels ignore the filters; a past day's spend is the store's (the control state keeps two days).
    assert limits.system_spend_today(settings, TODAY) == limits.SystemSpend(D("10"), "warning", D("10"))


@pytest.mark.parametrize("spend, level", [
    ("0", None), ("9.999999999999", None), ("10", "warning"), ("49.99", "warning"), ("50", "critical"),
    ("199.99", "critical"), ("200", "shutdown"), ("1000", "shutdown"),
])
def test_system_level(settings, spend, level):
    settings = dataclasses.replace(settings, system=SystemLevels(D("10"), D("50"), D("200")))
    crossed = system_level(settings, D(spend))
    assert (crossed[0] if crossed else None) == level


def test_bundles_return_none_without_a_store(settings):
    assert not settings.db_path.exists()
    assert dq.overview(settings.db_path, TODAY, everything()) is None
    assert dq.sidebar(settings.db_path) is None
    assert fetch.store_version(settings.db_path) is None


def test_store_version_changes_when_the_store_is_written(settings):
    empty_store(settings.db_path)
    before = fetch.store_version(settings.db_path)
    insert(settings.db_path, "usage_events", [event(TODAY, "1")])
    assert fetch.store_version(settings.db_path) != before


def test_sidebar_options_and_span(settings):
    insert(settings.db_path, "usage_events", [
        event(TODAY, "1", tenant_id="b", provider=None, model="m2"),
        event(TODAY - dt.timedelta(days=3), "1", tenant_id="a", provider="p", model="m1"),
    ])
    span, options = dq.sidebar(settings.db_path)
    assert span == dq.Span(TODAY - dt.timedelta(days=3), TODAY, 2)
    assert options == {"tenants": ["a", "b"], "providers": ["p"], "models": ["m1", "m2"]}


# ---------------------------------------------------------------- use cases

def test_use_cases_month_to_date_and_models(settings):
    insert(settings.db_path, "usage_events", [
        event(TODAY, "0.10", use_case="a", input_tokens=10, output_tokens=5, total_tokens=15),
        event(dt.date(2026, 3, 1), "0.20", use_case="a", model="gpt-4o-mini", input_tokens=1, output_tokens=1,
              total_tokens=2),
        event(dt.date(2026, 2, 27), "5", use_case="b"),
        event(TODAY, "0.000001", use_case="b", model="mystery", price_source="default-rate"),
    ])
    data = dq.use_cases(settings.db_path, TODAY, everything(start=dt.date(2026, 2, 1), end=TODAY))
    assert data.by_use_case[["use_case", "calls", "cost_usd"]].values.tolist() == [
        ["b", 2, D("5.000001")], ["a", 2, D("0.30")]]
    month = dq.with_total_row(data.month_to_date, "use_case")
    assert month[["use_case", "calls", "input_tokens", "total_tokens", "cost_usd"]].values.tolist() == [
        ["a", 2, 11, 17, D("0.30")], ["b", 1, 100, 150, D("0.000001")], ["Total", 3, 111, 167, D("0.300001")]]
    # A use case with calls this month but none in the range appears only in the month's table.
    data = dq.use_cases(settings.db_path, TODAY, everything(start=dt.date(2026, 2, 1), end=dt.date(2026, 2, 28)))
    assert data.by_use_case["use_case"].tolist() == ["b"]
    assert data.month_to_date["use_case"].tolist() == ["a", "b"]
    models = read(settings, dq.cost_by_model, everything(), "b")
    assert models[["model", "calls", "default_rate_calls"]].values.tolist() == [["gpt-4o", 1, 0], ["mystery", 1, 1]]


# ---------------------------------------------------------------- users and limits

def test_limit_usage_names_the_action_of_each_account_type(settings):
    insert(settings.db_path, "usage_events", [
        event(TODAY, "0.01", user_id="student-under", account_type="student", total_tokens=9_999),
        event(TODAY, "0.01", user_id="student-tokens", account_type="student", total_tokens=10_001),
        event(TODAY, "0.500000000001", user_id="builder-cost", account_type="lesson_builder", total_tokens=10),
        event(TODAY, "2.6", user_id="admin-cost", account_type="admin", total_tokens=10),
        event(TODAY, "50.01", user_id="super", account_type="super_admin", total_tokens=10_000_000),
        event(TODAY, "49", user_id="super-under", account_type="super_admin"),
        event(TODAY, "0.06", user_id="no-type", account_type=None),
        event(TODAY - dt.timedelta(days=1), "99", user_id="student-under", account_type="student"),
    ])
    today = read(settings, dq.usage_by_user_on, TODAY)
    usage = limits.limit_usage(today, settings).set_index("user_id")
    assert usage.loc["student-under", "action"] == "" and not usage.loc["student-under", "over_limit"]
    assert usage.loc["student-under", "used_share"] == pytest.approx(0.9999)
    assert usage.loc["student-tokens", "action"] == "warned"
    assert usage.loc["builder-cost", "action"] == "blocked"
    assert usage.loc["admin-cost", "action"] == "alerted"
    assert usage.loc["super", "action"] == "alerted" and pd.isna(usage.loc["super", "limit_tokens"])
    assert usage.loc["super-under", "action"] == ""
    assert usage.loc["no-type", "account_type"] == "student" and usage.loc["no-type", "action"] == "warned"
    state = limits.account_type_state(limits.limit_usage(today, settings)).set_index("account_type")
    assert state.loc["student", "active_users"] == 3 and state.loc["student", "over_limit"] == 2
    assert state.loc["super_admin", "cost_today"] == D("99.01")


def test_top_users_join_today_and_zero_when_idle_today(settings):
    insert(settings.db_path, "usage_events", [
        event(TODAY - dt.timedelta(days=1), "3", user_id="idle-today", account_type="lesson_builder"),
        event(TODAY, "0.6", user_id="busy", account_type="lesson_builder"),
        event(TODAY, "0.1", user_id="busy", account_type="lesson_builder", tenant_id="tenant-b"),
    ])
    data = dq.users(settings.db_path, TODAY, everything(), 10)
    top = limits.users_with_limits(data.users, data.today, settings)
    rows = {(r.user_id, r.tenant_id): r for r in top.itertuples()}
    assert list(top["user_id"]) == ["idle-today", "busy", "busy"]
    assert rows["idle-today", "tenant-a"].cost_today == 0 and rows["idle-today", "tenant-a"].action == ""
    # The limit counts all of a user's calls today, across tenants.
    assert rows["busy", "tenant-b"].cost_today == D("0.7") and rows["busy", "tenant-b"].action == "blocked"
    assert data.tenants[["tenant_id", "users", "cost_usd"]].values.tolist() == [
        ["tenant-a", 2, D("3.6")], ["tenant-b", 1, D("0.1")]]


# ---------------------------------------------------------------- failed logs

def test_failed_logs_use_local_day_bounds_and_filters(tmp_path, monkeypatch):
    monkeypatch.setenv("LLMCOST_TIMEZONE", "Europe/Berlin")
    settings = load_settings()
    # 23:30 UTC on March 30 is already March 31 in Berlin (UTC+2 from March 29).
    late = dt.datetime(2026, 3, 30, 23, 30)
    insert(settings.db_path, "failed_logs", [
        failed_log(late, kind="fallback"),
        failed_log(dt.datetime(2026, 3, 30, 21, 59), kind="invalid", tenant_id=None),
        failed_log(late, recovered=True, tenant_id="tenant-b"),
    ])
    march_31 = dq.Filters(TODAY, TODAY)
    rows, matching = read(settings, fq.failed_logs, march_31, settings.timezone, fq.FailedLogQuery("unrecovered"))
    assert matching == 1 and rows["kind"].tolist() == ["fallback"]
    rows, matching = read(settings, fq.failed_logs, march_31, settings.timezone, fq.FailedLogQuery("all"))
    assert matching == 2
    rows, matching = read(settings, fq.failed_logs, dq.Filters(TODAY, TODAY, tenants=("tenant-b",)),
                          settings.timezone, fq.FailedLogQuery("recovered"))
    assert matching == 1 and rows["recovered"].tolist() == [True]
    rows, matching = read(settings, fq.failed_logs, dq.Filters(dt.date(2026, 3, 30), TODAY), settings.timezone,
                          fq.FailedLogQuery("all", kinds=("invalid",), limit=5))
    assert matching == 1 and rows["error"].tolist() == ["OSError: [Errno 28] No space left on device"]
    with pytest.raises(ValueError, match="not one of"):
        read(settings, fq.failed_logs, march_31, "UTC", fq.FailedLogQuery("lost"))


def test_day_bounds_utc_follow_daylight_saving():
    assert formatting.day_bounds_utc(dt.date(2026, 3, 29), dt.date(2026, 3, 29), "Europe/Berlin") == (
        dt.datetime(2026, 3, 28, 23), dt.datetime(2026, 3, 29, 22))


# ---------------------------------------------------------------- budgets

def test_alert_history_in_range_newest_first(settings):
    def alert(raised_at, level):
        return {"alert_id": f"a-{level}", "raised_at": raised_at, "day": raised_at.date(), "level": level,
                "scope": "system", "scope_id": "system", "metric": "cost_usd", "figure": "12.5",
                "threshold": "10", "message": "spend reached the warning level", "notifier": "log",
                "delivered": True, "attempts": 1, "last_error": None}

    insert(settings.db_path, "alerts", [alert(dt.datetime(2026, 3, 30, 9), "warning"),
                                        alert(dt.datetime(2026, 3, 31, 9), "critical"),
                                        alert(dt.datetime(2026, 1, 1, 9), "info")])
    data = dq.budgets(settings.db_path, TODAY, everything(start=dt.date(2026, 3, 1), end=TODAY))
    assert data.alerts["level"].tolist() == ["critical", "warning"]
    assert data.alerts["figure"].tolist() == [D("12.5"), D("12.5")]


def test_limits_table_as_configured(tmp_path, monkeypatch):
    (tmp_path / "llmcost.toml").write_text('[limits.student]\ncost_usd = 0.10\n[limits.intern]\ntokens = 5\n')
    settings = load_settings()
    table = limits.limits_table(settings).set_index("account_type")
    assert table.loc["student", "daily_cost_usd"] == D("0.10") and table.loc["student", "when_over"] == "warned"
    assert table.loc["intern", "daily_tokens"] == 5 and table.loc["intern", "when_over"] == "alerted"
    assert table.loc["super_admin", "alert_above_usd"] == D("50")
    assert table["default"].tolist().count(True) == 1


# ---------------------------------------------------------------- formatting and charts

@pytest.mark.parametrize("amount, text", [
    (D("1234.5"), "$1,234.50"), (D("0.01"), "$0.01"), (D("0.0042"), "$0.0042"),
    (D("0.000001234567"), "$0.0000012"), (D("0"), "$0.00"), (D("-0.5"), "-$0.50"),
    (D("0.000000000001"), "<$0.00000001"), (12, "$12.00"), (None, "—"),
])
def test_money(amount, text):
    assert formatting.money(amount) == text


def test_numbers_changes_and_times():
    assert formatting.number(14_851_705) == "14,851,705"
    assert formatting.change(D("1.5"), D("1")) == "+50.0%"
    assert formatting.change(3, 4) == "-25.0%"
    assert formatting.change(3, 0) is None
    assert formatting.money_column_format([D("12.5"), D("0.0042"), None]) == "$%,.4f"
    assert formatting.money_column_format([D("12.5")]) == "$%,.2f"
    assert formatting.local_time(dt.datetime(2026, 1, 15, 23, 30), "Europe/Berlin") == "2026-01-16 00:30:00 CET"
    assert formatting.local_time(None, "UTC") == "never"


def layers(chart) -> list[tuple[dict, list[dict]]]:
    """Each layer of a Vega-Lite chart (nested layers flattened) with the rows it draws."""
    spec = chart.to_dict()
    found = []

    def walk(part, data=None):
        data = part.get("data", data)  # Altair lifts data the layers share to their parent
        for layer in part.get("layer", []):
            walk(layer, data)
        if "mark" in part:
            found.append((part, spec["datasets"][data["name"]]))
    walk(spec)
    return found


def mark(layer: dict) -> str:
    return layer["mark"]["type"] if isinstance(layer["mark"], dict) else layer["mark"]


def test_chart_draws_the_nearest_levels_and_shows_labels_as_text(settings):
    insert(settings.db_path, "usage_events", [
        event(TODAY, "12", use_case="<b>bold</b>"), event(TODAY, "1", use_case="plain")])
    daily = read(settings, dq.daily_cost_by_use_case, everything())
    drawn = layers(charts.daily_spend(daily, limits.system_levels(settings)))
    (bars, rows), = [(layer, rows) for layer, rows in drawn if mark(layer) == "bar"]
    # Vega-Lite draws labels as text, never HTML: the name is kept as written, unescaped.
    assert bars["encoding"]["color"]["scale"]["domain"] == ["<b>bold</b>", "plain"]
    assert sorted((row["label"], row["cost_usd"]) for row in rows) == [("<b>bold</b>", 12.0), ("plain", 1.0)]
    levels = [(row["level"], row["usd"]) for layer, rows in drawn if mark(layer) == "rule" for row in rows]
    assert levels == [("warning", 10.0)]  # the day reached $13: critical ($50) and shutdown would squash the bars
    labels = [row["text"] for layer, rows in drawn if mark(layer) == "text" for row in rows]
    assert labels == ["warning $10.00"]
    levels = {"warning": D(10), "critical": D(50), "shutdown": D(200)}
    # A level is drawn only where the bars reach it (or come within 10%): a $10 line over $0.40 days
    # would pin the axis to $10 and leave the bars as slivers.
    assert charts.levels_to_draw(levels, D(0)) == {}
    assert charts.levels_to_draw(levels, D("0.40")) == {}
    assert charts.levels_to_draw(levels, D("9.10")) == {"warning": D(10)}
    assert charts.levels_to_draw(levels, D(25)) == {"warning": D(10)}
    assert charts.levels_to_draw(levels, D(46)) == {"warning": D(10), "critical": D(50)}


def test_use_case_colours_keep_red_and_orange_for_levels_and_alerts(settings):
    names = [f"use-case-{i}" for i in range(30)]
    insert(settings.db_path, "usage_events", [event(TODAY, "1", use_case=name) for name in names])
    figure = charts.daily_spend(read(settings, dq.daily_cost_by_use_case, everything()),
                                limits.system_levels(settings), log_scale=True)
    (bars, rows), = [(layer, rows) for layer, rows in layers(figure) if mark(layer) == "bar"]
    colour = bars["encoding"]["color"]["scale"]
    assert sorted(colour["domain"]) == sorted(names) and {row["label"] for row in rows} == set(names)
    bar_colours = set(colour["range"])
    assert len(bar_colours) > 5 and not bar_colours & {*charts.LEVEL_COLOURS.values(), charts.ALERT_COLOUR}
    # Symlog: logarithmic above a cent, so a day without spend still sits on the axis.
    assert bars["encoding"]["y"]["scale"]["type"] == "symlog"


def test_never_logged_calls_stay_visible_next_to_thousands():
    days = [TODAY - dt.timedelta(days=1), TODAY]
    frame = pd.DataFrame({"day": days, "attempted": [4000, 3000], "logged_with_attempt": [3999, 3000],
                          "never_logged": [1, 0]})
    chart = charts.coverage(frame)
    assert chart.to_dict()["resolve"]["scale"]["y"] == "independent"  # never logged gets its own axis
    drawn = layers(chart)
    never_bars = [(layer, rows) for layer, rows in drawn if mark(layer) == "bar"
                  and rows[0]["series"].startswith("never")]
    (bars, rows), = never_bars
    assert [row["calls"] for row in rows] == [1, 0]
    assert bars["encoding"]["y"]["scale"]["domain"] == [0, 2.6]  # one call fills a third of the axis, not 1/4000
    assert bars["encoding"]["color"]["scale"]["range"][2] == charts.ALERT_COLOUR
    (counts, count_rows), = [(layer, rows) for layer, rows in drawn if mark(layer) == "text"]
    assert [row["text"] for row in count_rows] == ["1", ""] and counts["encoding"]["y"] == bars["encoding"]["y"]


def test_cost_bars_put_the_largest_on_top_and_trend_draws_a_line_per_use_case():
    frame = pd.DataFrame({"model": ["small", "<i>big</i>"], "cost_usd": [D("0.5"), D("7.25")]})
    (bars, rows), = layers(charts.cost_bars(frame, "model", "Spend by model"))
    assert bars["encoding"]["y"]["sort"] == "-x" and bars["mark"]["color"] == charts.CALM_COLOUR
    assert sorted((row["label"], row["cost_usd"]) for row in rows) == [("<i>big</i>", 7.25), ("small", 0.5)]
    daily = pd.DataFrame({"day": [TODAY, TODAY, TODAY - dt.timedelta(days=1)], "use_case": ["a", "b", "a"],
                          "cost_usd": [D("1.5"), D(2), D("0.25")], "calls": [1, 2, 3]})
    (line, rows), = layers(charts.trend(daily))
    assert mark(line) == "line" and line["encoding"]["color"]["scale"]["domain"] == ["a", "b"]
    assert sorted((row["day"], row["label"], row["cost_usd"]) for row in rows) == [
        (f"{TODAY - dt.timedelta(days=1):%Y-%m-%d}", "a", 0.25), (f"{TODAY:%Y-%m-%d}", "a", 1.5),
        (f"{TODAY:%Y-%m-%d}", "b", 2.0)]


def test_a_chart_converts_to_vega_lite_whatever_its_rows_and_leaves_altair_as_it_was():
    """Pages draw a chart's cached Vega-Lite spec: a year of days by many use cases is past Altair's default
    5,000-row limit, which Streamlit's own conversion never applied either."""
    import altair as alt

    days = [TODAY - dt.timedelta(days=n) for n in range(400)]
    daily = pd.DataFrame({"day": days * 15, "use_case": [f"u{n}" for n in range(15) for _ in days],
                          "cost_usd": [D("0.5")] * 6000, "calls": [1] * 6000})
    spec = charts.vega_lite(charts.trend(daily))
    (rows,) = spec["datasets"].values()
    assert len(rows) == 6000 and "config" not in spec  # no Altair theme: Streamlit's layout sizes the chart
    assert alt.data_transformers.active == "default" and alt.theme.active == "default"
    with pytest.raises(alt.MaxRowsError):
        charts.trend(daily).to_dict()  # Altair's own limit is still in force for everyone else
