"""Vega-Lite charts (Altair) for the dashboard, built from the small frames `dashboard_queries` returns.

Vega-Lite, not Plotly: Streamlit's Plotly component alone costs about 3x a bare page to draw in the browser,
its Vega-Lite one about 2x (bench/dashboard_load.py). Vega-Lite draws every label as text, never as HTML, so a
use case or model name shows as the text it is without escaping.
"""

from __future__ import annotations

import datetime as dt
import threading
from collections.abc import Mapping
from decimal import Decimal

import altair as alt
import pandas as pd

from llmcost.money import money

LEVEL_COLOURS = {"warning": "#e6a700", "critical": "#d9480f", "shutdown": "#c92a2a"}
ALERT_COLOUR = "#c92a2a"
# Use cases, models and users get calm colours: red and orange stay for levels and alerts.
SERIES_COLOURS = ("#1c7ed6", "#37b24d", "#7048e8", "#1098ad", "#ae3ec9", "#74b816", "#4263eb", "#0ca678",
                  "#845ef7", "#3bc9db", "#5c940d", "#868e96")
CALM_COLOUR = SERIES_COLOURS[0]
ATTEMPTED_COLOUR = "#adb5bd"
# Symlog is linear within a cent of zero, so days without spend still sit on the axis, and logarithmic above.
LOG_SCALE = alt.Scale(type="symlog", constant=0.01)
DAY = "utcyearmonthdate"  # days travel as ISO dates, which Vega reads as UTC midnight
USD = "$,.2f"
USD_EXACT = "$,.4f"
LEGEND = alt.Legend(orient="bottom", title=None)
# Altair's data transformer and theme are process-wide: one conversion at a time.
_CONVERTING = threading.Lock()


def vega_lite(chart: alt.TopLevelMixin) -> dict:
    """The chart's Vega-Lite spec as Streamlit draws it: data inline however many rows, without Altair's default
    theme, whose fixed sizes Streamlit's layout replaces."""
    # Not validated here: validating each new spec against the Vega-Lite schema gives the same spec and cost
    # every first run of a figure CPU (the Overview's two charts: 30 ms with it, 21 ms without, after `warm`).
    # tests/test_dashboard_pages.py validates every chart the pages draw from the demo data instead, so a
    # wrong spec still fails there. (Altair still checks each encoding's parts as a chart is built.)
    with _CONVERTING, alt.data_transformers.enable("default", max_rows=None), alt.theme.enable("none"):
        return chart.to_dict(validate=False)


def _names(values: pd.Series) -> pd.Series:
    return values.map(lambda v: "(none)" if v is None or pd.isna(v) else str(v))


def _iso_days(values: pd.Series) -> pd.Series:
    return values.map(lambda day: pd.Timestamp(day).strftime("%Y-%m-%d"))


def colours(names) -> dict[str, str]:
    """A calm colour per name, the same for a name wherever it is drawn in one chart."""
    return {name: SERIES_COLOURS[index % len(SERIES_COLOURS)] for index, name in enumerate(sorted(set(names)))}


def _colour_scale(palette: Mapping[str, str]) -> alt.Scale:
    return alt.Scale(domain=list(palette), range=list(palette.values()))


def levels_to_draw(levels: Mapping[str, Decimal], highest_day: Decimal) -> dict[str, Decimal]:
    """The levels the highest day reached or came within 10% of: a level far above every bar would squash them."""
    return {name: amount for name, amount in sorted(levels.items(), key=lambda item: item[1])
            if amount <= highest_day * Decimal("1.1")}


def _daily_frame(daily: pd.DataFrame, label_column: str) -> pd.DataFrame:
    if daily.empty:
        return pd.DataFrame({"day": pd.Series(dtype=str), "label": pd.Series(dtype=str),
                             "cost_usd": pd.Series(dtype=float), "calls": pd.Series(dtype=int)})
    return pd.DataFrame({"day": _iso_days(daily["day"]), "label": _names(daily[label_column]),
                         "cost_usd": daily["cost_usd"].map(float),
                         "calls": daily["calls"] if "calls" in daily else 0})


def daily_spend(daily: pd.DataFrame, levels: Mapping[str, Decimal],
                days: tuple[dt.date, dt.date] | None = None, *, log_scale: bool = False) -> alt.LayerChart:
    """Daily cost stacked by use case over `days` (inclusive), with the system-wide levels in range as dashed
    lines; `log_scale` keeps the ordinary days readable next to a spike."""
    frame = _daily_frame(daily, "use_case")
    palette = colours(frame["label"])
    y_scale = LOG_SCALE if log_scale else alt.Scale()
    x_scale = alt.Scale()
    if days is not None:
        # The whole range, so days without a call show as days without spend.
        x_scale = alt.Scale(domain=[f"{days[0]:%Y-%m-%d}", f"{days[1] + dt.timedelta(days=1):%Y-%m-%d}"])
    bars = alt.Chart(frame).mark_bar().encode(
        x=alt.X("day:T", timeUnit=DAY, title=None, scale=x_scale, axis=alt.Axis(format="%b %d")),
        y=alt.Y("sum(cost_usd):Q", stack="zero", title="USD", scale=y_scale, axis=alt.Axis(format=USD)),
        color=alt.Color("label:N", title="Use case", scale=_colour_scale(palette), legend=LEGEND),
        order=alt.Order("label:N"),
        tooltip=[alt.Tooltip("day:T", timeUnit=DAY, title="Day"), alt.Tooltip("label:N", title="Use case"),
                 alt.Tooltip("sum(cost_usd):Q", title="Cost", format=USD_EXACT),
                 alt.Tooltip("sum(calls):Q", title="Calls", format=",")],
    )
    highest = daily.groupby("day")["cost_usd"].sum().max() if not daily.empty else Decimal(0)
    drawn = levels_to_draw(levels, Decimal(highest))
    layers: list[alt.Chart] = [bars]
    if drawn:
        lines = pd.DataFrame({"level": list(drawn), "usd": [float(amount) for amount in drawn.values()],
                              "text": [f"{name} {money(amount)}" for name, amount in drawn.items()]})
        level_colour = alt.Color("level:N", scale=alt.Scale(domain=list(drawn),
                                                            range=[LEVEL_COLOURS.get(n, "#868e96") for n in drawn]),
                                 legend=None)
        rule = alt.Chart(lines).mark_rule(strokeDash=[6, 4], strokeWidth=2)
        layers.append(rule.encode(y=alt.Y("usd:Q", scale=y_scale), color=level_colour))
        layers.append(rule.mark_text(align="left", baseline="bottom", dx=4, dy=-2, x=0, fontWeight="bold").encode(
            y=alt.Y("usd:Q", scale=y_scale), text="text:N", color=level_colour))
    return alt.layer(*layers, title="Daily spend by use case").resolve_scale(color="independent")


def cost_bars(frame: pd.DataFrame, label_column: str, title: str) -> alt.Chart:
    """Horizontal bars of `cost_usd` per label, largest on top."""
    data = pd.DataFrame({"label": _names(frame[label_column]) if not frame.empty else pd.Series(dtype=str),
                         "cost_usd": frame["cost_usd"].map(float) if not frame.empty else pd.Series(dtype=float)})
    # A step per bar, so every label has room however many bars there are.
    return alt.Chart(data, title=title, height=alt.Step(24)).mark_bar(color=CALM_COLOUR).encode(
        x=alt.X("cost_usd:Q", title="USD", axis=alt.Axis(format=USD)),
        y=alt.Y("label:N", title=None, sort="-x", axis=alt.Axis(labelLimit=260)),
        tooltip=[alt.Tooltip("label:N", title=label_column.replace("_", " ").capitalize()),
                 alt.Tooltip("cost_usd:Q", title="Cost", format=USD_EXACT)],
    )


def coverage(frame: pd.DataFrame) -> alt.LayerChart:
    """Calls the tracker attempted against calls logged, per day; attempts never logged, in red on their own
    axis with their count written on the bar, stay visible at one or two calls next to thousands."""
    days = _iso_days(frame["day"])
    never_name = "never logged (right axis)"
    series = ["attempted", "logged", never_name]
    counts = pd.concat([pd.DataFrame({"day": days, "series": "attempted", "calls": frame["attempted"]}),
                        pd.DataFrame({"day": days, "series": "logged", "calls": frame["logged_with_attempt"]})])
    never = pd.DataFrame({"day": days, "series": never_name, "calls": frame["never_logged"],
                          "text": [f"{int(n):,}" if n else "" for n in frame["never_logged"]]})
    x = alt.X("day:O", title=None, axis=alt.Axis(labelAngle=-45))
    offset = alt.XOffset("series:N", scale=alt.Scale(domain=series))
    colour = alt.Color("series:N", scale=alt.Scale(domain=series, range=[ATTEMPTED_COLOUR, CALM_COLOUR, ALERT_COLOUR]),
                       legend=LEGEND)
    tooltip = [alt.Tooltip("day:O", title="Day"), alt.Tooltip("series:N", title="Calls"),
               alt.Tooltip("calls:Q", title="Count", format=",")]
    logged = alt.Chart(counts).mark_bar().encode(x=x, xOffset=offset, color=colour, tooltip=tooltip,
                                                 y=alt.Y("calls:Q", title="calls"))
    never_axis = alt.Y("calls:Q", title="never logged", axis=alt.Axis(orient="right", grid=False),
                       scale=alt.Scale(domain=[0, max(2, int(frame["never_logged"].max() or 0)) * 1.3]))
    never_bars = alt.Chart(never).mark_bar().encode(x=x, xOffset=offset, color=colour, tooltip=tooltip, y=never_axis)
    never_counts = alt.Chart(never).mark_text(baseline="bottom", dy=-2, color=ALERT_COLOUR, fontWeight="bold").encode(
        x=x, xOffset=offset, y=never_axis, text="text:N")
    return alt.layer(logged, alt.layer(never_bars, never_counts), title="Attempted vs logged calls").resolve_scale(
        y="independent")


def trend(daily: pd.DataFrame, label_column: str = "use_case", title: str = "Daily cost per use case") -> alt.Chart:
    """One line of daily cost per label over the range."""
    frame = _daily_frame(daily, label_column)
    palette = colours(frame["label"])
    return alt.Chart(frame, title=title).mark_line(point=True).encode(
        x=alt.X("day:T", timeUnit=DAY, title=None, axis=alt.Axis(format="%b %d")),
        y=alt.Y("sum(cost_usd):Q", title="USD", axis=alt.Axis(format=USD)),
        color=alt.Color("label:N", title=label_column.replace("_", " ").capitalize(), scale=_colour_scale(palette),
                        legend=LEGEND),
        tooltip=[alt.Tooltip("day:T", timeUnit=DAY, title="Day"), alt.Tooltip("label:N", title="Name"),
                 alt.Tooltip("sum(cost_usd):Q", title="Cost", format=USD_EXACT)],
    )
