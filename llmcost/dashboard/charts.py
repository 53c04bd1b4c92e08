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
_LAYOUT = dict(margin=dict(l=10, r=10, t=40, b=10), legend=dict(orientation="h", y=-0.15), hovermode="x unified")


def _plain(values: pd.Series) -> pd.Series:
    return values.map(lambda v: html.escape("(none)" if v is None or pd.isna(v) else str(v)))


def levels_to_draw(levels: Mapping[str, Decimal], highest_day: Decimal) -> dict[str, Decimal]:
    """The lowest level, and every other level up to twice the highest day, so the bars stay readable."""
    ordered = sorted(levels.items(), key=lambda item: item[1])
    return {name: amount for index, (name, amount) in enumerate(ordered)
            if index == 0 or amount <= 2 * highest_day}


def daily_spend(daily: pd.DataFrame, levels: Mapping[str, Decimal],
                days: tuple[dt.date, dt.date] | None = None) -> go.Figure:
    """Daily cost stacked by use case over `days` (inclusive), with the system-wide levels as dashed lines."""
    figure = go.Figure()
    labels = _plain(daily["use_case"]) if not daily.empty else pd.Series(dtype=str)
    for use_case in sorted(labels.unique()):
        part = daily[labels == use_case]
        figure.add_bar(
            x=part["day"], y=part["cost_usd"].map(float), name=use_case,
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
    if days is not None:
        # The whole range, so days without a call show as days without spend.
        half_day = dt.timedelta(hours=12)
        figure.update_xaxes(range=[dt.datetime.combine(days[0], dt.time()) - half_day,
                                   dt.datetime.combine(days[1], dt.time()) + half_day])
    return figure


def cost_bars(frame: pd.DataFrame, label_column: str, title: str) -> go.Figure:
    """Horizontal bars of `cost_usd` per label, largest on top."""
    ordered = frame.sort_values("cost_usd", ascending=True) if not frame.empty else frame
    figure = go.Figure(go.Bar(
        x=ordered["cost_usd"].map(float) if not ordered.empty else [],
        y=_plain(ordered[label_column]) if not ordered.empty else [],
        orientation="h", hovertemplate="%{y}: %{x:$,.4f}<extra></extra>",
    ))
    figure.update_layout(title=title, xaxis_title="USD", xaxis_tickformat="$,.2f",
                         margin=_LAYOUT["margin"], height=max(250, 40 * len(ordered) + 100))
    return figure


def coverage(frame: pd.DataFrame) -> go.Figure:
    """Calls the tracker attempted against calls logged, per day, with attempts never logged."""
    figure = go.Figure()
    for column, name in (("attempted", "attempted"), ("logged_with_attempt", "logged"),
                         ("never_logged", "never logged")):
        figure.add_bar(x=frame["day"], y=frame[column], name=name)
    figure.update_layout(barmode="group", title="Attempted vs logged calls", yaxis_title="calls", **_LAYOUT)
    return figure
