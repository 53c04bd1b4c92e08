"""Plotly figures for the dashboard, built from the small frames `dashboard_queries` returns.

Plotly reads a few HTML tags in labels, so every label that comes from the data (use cases, models)
is escaped first and shows as the text it is.
"""

from __future__ import annotations

import datetime as dt
import html
from collections.abc import Mapping
from decimal import Decimal

import pandas as pd
import plotly.graph_objects as go

from llmcost.money import money

LEVEL_COLOURS = {"warning": "#e6a700", "critical": "#d9480f", "shutdown": "#c92a2a"}
ALERT_COLOUR = "#c92a2a"
# Use cases, models and users get calm colours: red and orange stay for levels and alerts.
SERIES_COLOURS = ("#1c7ed6", "#37b24d", "#7048e8", "#1098ad", "#ae3ec9", "#74b816", "#4263eb", "#0ca678",
                  "#845ef7", "#3bc9db", "#5c940d", "#868e96")
CALM_COLOUR = SERIES_COLOURS[0]
_LAYOUT = dict(margin=dict(l=10, r=10, t=40, b=10), legend=dict(orientation="h", y=-0.15), hovermode="x unified")


def _plain(values: pd.Series) -> pd.Series:
    return values.map(lambda v: html.escape("(none)" if v is None or pd.isna(v) else str(v)))


def colours(names) -> dict[str, str]:
    """A calm colour per name, the same for a name wherever it is drawn in one chart."""
    return {name: SERIES_COLOURS[index % len(SERIES_COLOURS)] for index, name in enumerate(sorted(set(names)))}


def levels_to_draw(levels: Mapping[str, Decimal], highest_day: Decimal) -> dict[str, Decimal]:
    """The levels the highest day reached or came within 10% of: a level far above every bar would squash them."""
    return {name: amount for name, amount in sorted(levels.items(), key=lambda item: item[1])
            if amount <= highest_day * Decimal("1.1")}


def daily_spend(daily: pd.DataFrame, levels: Mapping[str, Decimal],
                days: tuple[dt.date, dt.date] | None = None, *, log_scale: bool = False) -> go.Figure:
    """Daily cost stacked by use case over `days` (inclusive), with the system-wide levels in range as dashed
    lines; `log_scale` keeps the ordinary days readable next to a spike."""
    figure = go.Figure()
    labels = _plain(daily["use_case"]) if not daily.empty else pd.Series(dtype=str)
    palette = colours(labels)
    for use_case in sorted(labels.unique()):
        part = daily[labels == use_case]
        figure.add_bar(
            x=part["day"], y=part["cost_usd"].map(float), name=use_case, marker_color=palette[use_case],
            customdata=part["calls"], hovertemplate="%{y:$,.4f} (%{customdata:,} calls)",
        )
    highest = daily.groupby("day")["cost_usd"].sum().max() if not daily.empty else Decimal(0)
    for name, amount in levels_to_draw(levels, Decimal(highest)).items():
        figure.add_hline(
            y=float(amount), line_dash="dash", line_color=LEVEL_COLOURS.get(name, "#868e96"),
            annotation_text=f"{name} {money(amount)}", annotation_position="top left",
        )
    figure.update_layout(barmode="stack", title="Daily spend by use case", yaxis_title="USD",
                         yaxis_tickformat="$,.2f", **_LAYOUT)
    if log_scale:
        figure.update_yaxes(type="log", tickformat="$,.2~f")
    if days is not None:
        # The whole range, so days without a call show as days without spend.
        half_day = dt.timedelta(hours=12)
        figure.update_xaxes(range=[dt.datetime.combine(days[0], dt.time()) - half_day,
                                   dt.datetime.combine(days[1], dt.time()) + half_day])
    return figure


def cost_bars(frame: pd.DataFrame, label_column: str, title: str) -> go.Figure:
    """Horizontal bars of `cost_usd` per label, largest on top."""
    ordered = frame.sort_values("cost_usd", ascending=True) if not frame.empty else frame
    colour = CALM_COLOUR
    figure = go.Figure(go.Bar(
        x=ordered["cost_usd"].map(float) if not ordered.empty else [],
        y=_plain(ordered[label_column]) if not ordered.empty else [],
        orientation="h", hovertemplate="%{y}: %{x:$,.4f}<extra></extra>", marker_color=colour,
    ))
    figure.update_layout(title=title, xaxis_title="USD", xaxis_tickformat="$,.2f",
                         margin=_LAYOUT["margin"], height=max(250, 40 * len(ordered) + 100))
    return figure


def coverage(frame: pd.DataFrame) -> go.Figure:
    """Calls the tracker attempted against calls logged, per day; attempts never logged, in red on their own
    axis with their count written on the bar, stay visible at one or two calls next to thousands."""
    figure = go.Figure()
    for column, name, colour in (("attempted", "attempted", "#adb5bd"), ("logged_with_attempt", "logged", CALM_COLOUR)):
        figure.add_bar(x=frame["day"], y=frame[column], name=name, marker_color=colour, offsetgroup=name)
    never = frame["never_logged"]
    figure.add_bar(x=frame["day"], y=never, name="never logged (right axis)", marker_color=ALERT_COLOUR,
                   yaxis="y2", offsetgroup="never", text=[f"{int(n):,}" if n else "" for n in never],
                   textposition="outside")
    figure.update_layout(barmode="group", title="Attempted vs logged calls", yaxis_title="calls",
                         yaxis2=dict(title="never logged", overlaying="y", side="right", rangemode="tozero",
                                     range=[0, max(2, int(never.max() or 0)) * 1.3], showgrid=False),
                         **_LAYOUT)
    return figure


def trend(daily: pd.DataFrame, label_column: str = "use_case", title: str = "Daily cost per use case") -> go.Figure:
    """One line of daily cost per label over the range."""
    figure = go.Figure()
    labels = _plain(daily[label_column]) if not daily.empty else pd.Series(dtype=str)
    palette = colours(labels)
    for name in sorted(labels.unique()):
        part = daily[labels == name].sort_values("day")
        figure.add_scatter(x=part["day"], y=part["cost_usd"].map(float), name=name, mode="lines+markers",
                           line_color=palette[name], hovertemplate="%{y:$,.4f}")
    figure.update_layout(title=title, yaxis_title="USD", yaxis_tickformat="$,.2f", **_LAYOUT)
    return figure
