"""How a dashboard table shows its frame: readable headers, one money format, percentages, times, blanks.

Pure preparation for `ui.table`: the frame's column names stay as they are (the CSV keeps them, tests
and stylers find columns by them); only the headers a reader sees and the cells' text change. Every
figure goes through `llmcost.money`, the formatter the CLI, reports and alerts use.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import pandas as pd
import streamlit as st

from llmcost import money as fmt

# Headers the generic rule (`use_case` -> "Use case") would get wrong or leave vague.
HEADERS = {
    "cost_usd": "Cost",
    "total_tokens": "Tokens",
    "used_share": "Used of daily limit",
    "limit_cost_usd": "Daily cost limit",
    "limit_tokens": "Daily token limit",
    "daily_cost_usd": "Daily cost limit",
    "daily_tokens": "Daily token limit",
    "alert_above_usd": "Alert above",
    "default_rate_calls": "Calls at the default rate",
    "over_limit": "Over the limit",
    "when_over": "When over",
    "figure": "Figure",
    "scope_id": "Scope ID",
    "account_type": "Account type",
    "dismiss_reason": "Why dismissed",
    "cost_day_before": "Cost the day before",
    "change_usd": "Change",
    "change": "Change (%)",
    "tokens": "Tokens",
}
UNLIMITED = "unlimited"
# Tables up to this many rows show every row without scrolling; longer ones scroll.
ROWS_SHOWN = 25
ROW_PX = 35


def header(column: str) -> str:
    """The header a reader sees for a column: `tenant_id` -> "Tenant ID", `cost_today` -> "Cost today"."""
    if column in HEADERS:
        return HEADERS[column]
    words = [{"id": "ID", "usd": "(USD)", "csv": "CSV"}.get(word, word) for word in column.split("_") if word]
    text = " ".join(words) or column
    return text[:1].upper() + text[1:]


def measure_text(metric: Any, value: Any) -> str:
    """An alert's figure or threshold as the alert says it: dollars for a cost, a count for tokens."""
    if value is None or (isinstance(value, float) and value != value):
        return ""
    if str(metric).endswith(("usd", "cost")):
        return fmt.money(Decimal(str(value)))
    return fmt.number(value)


def with_measures_as_text(frame: pd.DataFrame, columns: Sequence[str] = ("figure", "threshold")) -> pd.DataFrame:
    """Alert rows with their `figure` and `threshold` written by their `metric` ($10.00, 1,500)."""
    shown = frame.copy()
    for column in columns:
        if column in shown.columns:
            shown[column] = [measure_text(m, v) for m, v in zip(shown["metric"], shown[column])]
    return shown


@dataclass
class Shown:
    """A frame ready for `st.dataframe`, with its column configuration."""

    frame: pd.DataFrame
    config: dict[str, Any] = field(default_factory=dict)
    height: int | str = "auto"


def _missing(value: Any) -> bool:
    return value is None or (not isinstance(value, (str, bytes)) and bool(pd.isna(value)))


def _plain_number(value: Any) -> str:
    number = float(value)
    return fmt.number(number) if number.is_integer() else f"{number:,.2f}"


def prepare(frame: pd.DataFrame, *, money: Sequence[str] = (), counts: Sequence[str] = (),
            times: Sequence[str] = (), percents: Sequence[str] = (), unlimited: Sequence[str] = (),
            timezone: str = "UTC", pinned: Sequence[str] = (), bars: Sequence[str] = ()) -> Shown:
    """The table a reader sees: one money format for all money columns, times in the configured zone as
    `local_time` writes them, `None` as "unlimited" in `unlimited` columns and as a blank elsewhere. Money
    columns in `bars` are drawn as bars in their cells: a chart the table draws, without a chart library."""
    shown = frame.copy()
    places = fmt.money_places(itertools.chain.from_iterable(
        (v for v in shown[c] if not _missing(v)) for c in money if c in shown.columns))
    config: dict[str, Any] = {}
    for column in shown.columns:
        values = shown[column]
        has_gaps = any(_missing(v) for v in values)
        blank = UNLIMITED if column in unlimited else ""
        label = header(column)
        if column in times:
            shown[column] = [blank if _missing(v) else fmt.local_time(pd.Timestamp(v).to_pydatetime(), timezone)
                             for v in values]
            config[column] = st.column_config.TextColumn(label)
        elif column in money and (has_gaps or any(v < 0 for v in values if not _missing(v))):
            # Text, as `money` writes it: a blank or "unlimited" for a gap, and "-$0.15" (printf gives "$-0.15").
            shown[column] = [blank if _missing(v) else fmt.money(v, places) for v in values]
            config[column] = st.column_config.TextColumn(label)
        elif column in money and column in bars:
            shown[column] = [float(v) for v in values]
            config[column] = st.column_config.ProgressColumn(label, format=f"$%,.{places}f", min_value=0,
                                                             max_value=max(shown[column], default=0) or 1)
        elif column in money:
            shown[column] = [float(v) for v in values]
            config[column] = st.column_config.NumberColumn(label, format=f"$%,.{places}f")
        elif column in counts and has_gaps:
            shown[column] = [blank if _missing(v) else fmt.number(v) for v in values]
            config[column] = st.column_config.TextColumn(label)
        elif column in counts:
            shown[column] = [int(v) for v in values]  # a DuckDB sum arrives as Decimal
            config[column] = st.column_config.NumberColumn(label, format="%,d")
        elif column in percents and has_gaps:
            shown[column] = ["" if _missing(v) else f"{float(v):.2%}" for v in values]
            config[column] = st.column_config.TextColumn(label)
        elif column in percents:
            shown[column] = [float(v) for v in values]
            config[column] = st.column_config.NumberColumn(label, format="percent")
        elif has_gaps and pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values):
            shown[column] = [blank if _missing(v) else _plain_number(v) for v in values]
            config[column] = st.column_config.TextColumn(label)
        elif has_gaps or values.dtype == object:
            shown[column] = pd.Series([blank if _missing(v) else (float(v) if isinstance(v, Decimal) else v)
                                       for v in values], index=shown.index, dtype=object)
            config[column] = st.column_config.Column(label)
        else:
            config[column] = st.column_config.Column(label)
        if column in pinned:
            config[column]["pinned"] = True
    height: int | str = "auto"
    if len(shown) > 10:
        height = ROW_PX * (min(len(shown), ROWS_SHOWN) + 1) + 3
    return Shown(shown, config, height)
