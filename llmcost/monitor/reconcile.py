"""Reconciliation: compare a provider's usage export with what we logged, per day and model.

This is how a team proves the dashboard matches the bill. Accepted CSV columns (header names match
case-insensitively; for each figure the first alias present is used):

=============  ==============================================================================
figure         accepted header names
=============  ==============================================================================
day            date, day, usage_date, start_time_iso, start_time, timestamp, aggregation_timestamp
model          model, model_name, model_id, snapshot_id
requests       requests, num_model_requests, n_requests, num_requests, request_count, calls
input_tokens   input_tokens, prompt_tokens, n_context_tokens_total, context_tokens
output_tokens  output_tokens, completion_tokens, n_generated_tokens_total, generated_tokens
cached_tokens  input_cached_tokens, cached_tokens, cache_read_tokens
cost_usd       cost_usd, cost, amount_value, amount, usd
=============  ==============================================================================

`day` and `model` are required, and at least one figure; figures the export lacks are not compared.
A day may be a date (`2025-01-31`, taken as is), an ISO-8601 time (with an offset, or naive meaning
the export's time zone) or Unix seconds; times are placed on the calendar of `export_timezone` (UTC by
default, as providers bill in UTC). Rows for the same day and model are summed. So OpenAI's usage
dashboard export (`completions_usage_*.csv`, grouped by model: `start_time`, `start_time_iso`,
`num_model_requests`, `model`, `input_tokens`, `input_cached_tokens`, `output_tokens`, ...) and its
legacy usage export (`aggregation_timestamp`, `n_requests`, `snapshot_id`, `n_context_tokens_total`,
`n_generated_tokens_total`) are read as they are, as is a plain
`date,model,requests,input_tokens,output_tokens,cost_usd` file.

Our side counts every logged call (failed calls included: a provider may bill them) whose UTC time
falls on the export's days, with input tokens including cached ones as OpenAI counts them. Models
match by name, ignoring case: a call counts under the model its response named (the snapshot, such as
`gpt-4o-mini-2024-07-18`) when the export has that name, else under the model requested (`gpt-4o-mini`),
so each call counts once. With `provider` given, only that provider's events count and models we
logged that the export lacks are reported too; without it, only the export's models are compared.
A figure differs when |ours - theirs| > tolerance x |theirs| (tolerance 0.01 = 1%).
"""

from __future__ import annotations

import csv
import datetime as dt
import json
from collections import defaultdict
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import pandas as pd

from llmcost.config import Settings
from llmcost.errors import ReconcileError
from llmcost.money import day_bounds_utc, money, number
from llmcost.monitor.reports import json_default, text_table
from llmcost.store.connection import reading

COLUMN_ALIASES: dict[str, tuple[str, ...]] = {
    "day": ("date", "day", "usage_date", "start_time_iso", "start_time", "timestamp", "aggregation_timestamp"),
    "model": ("model", "model_name", "model_id", "snapshot_id"),
    "requests": ("requests", "num_model_requests", "n_requests", "num_requests", "request_count", "calls"),
    "input_tokens": ("input_tokens", "prompt_tokens", "n_context_tokens_total", "context_tokens"),
    "output_tokens": ("output_tokens", "completion_tokens", "n_generated_tokens_total", "generated_tokens"),
    "cached_tokens": ("input_cached_tokens", "cached_tokens", "cache_read_tokens"),
    "cost_usd": ("cost_usd", "cost", "amount_value", "amount", "usd"),
}
FIGURES = ("requests", "input_tokens", "output_tokens", "cached_tokens", "cost_usd")
DEFAULT_TOLERANCE = Decimal("0.01")
UNKNOWN_MODEL = "(no model)"
ExportTotals = dict[tuple[dt.date, str], dict[str, Any]]  # (day, lower-cased model) -> model name and figures


@dataclass
class ReconcileResult:
    """Per day and model: the export's figures, ours, and whether they differ beyond the tolerance."""

    export_path: Path
    tolerance: Decimal
    provider: str | None
    export_timezone: str
    figures: tuple[str, ...]
    rows: pd.DataFrame

    @property
    def differences(self) -> pd.DataFrame:
        return self.rows[self.rows["differs"]].reset_index(drop=True)

    @property
    def ok(self) -> bool:
        return not bool(self.rows["differs"].any()) if len(self.rows) else True

    def to_dict(self) -> dict[str, Any]:
        records = self.rows.astype(object).where(self.rows.notna(), None).to_dict("records")
        return {
            "export": str(self.export_path), "tolerance": str(self.tolerance), "provider": self.provider,
            "export_timezone": self.export_timezone, "figures": list(self.figures),
            "days_and_models": len(self.rows), "differing": int(self.rows["differs"].sum()) if len(self.rows) else 0,
            "rows": records,
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, default=json_default)

    def to_text(self) -> str:
        scope = f"provider {self.provider}" if self.provider else "the export's models"
        head = (f"Reconciliation of {self.export_path.name} against the store ({scope}, days in "
                f"{self.export_timezone}, tolerance {(self.tolerance * 100).normalize():f}%)")
        lines = [head, f"{len(self.rows)} day-and-model rows compared ({', '.join(self.figures)})."]
        differing = self.differences
        if differing.empty:
            lines.append("Every day and model matches within the tolerance.")
            return "\n".join(lines) + "\n"
        lines.append(f"{len(differing)} differ:")
        table = [[r["day"].isoformat(), r["model"], r["difference"]] for r in differing.to_dict("records")]
        lines.append(text_table(["Day", "Model", "Export vs ours"], table))
        return "\n".join(lines) + "\n"


def read_export(path: str | Path, export_timezone: str = "UTC") -> tuple[ExportTotals, tuple[str, ...]]:
    """The export summed per (day, lower-cased model): {figure: value}, and which figures it has."""
    path = Path(path)
    tz = _zone(export_timezone)
    try:
        handle = path.open(newline="", encoding="utf-8-sig")
    except OSError as e:
        raise ReconcileError(f"cannot read the export {path}: {e.strerror}") from None
    with handle:
        reader = csv.DictReader(handle)
        columns = _map_columns(path, reader.fieldnames or [])
        figures = tuple(f for f in FIGURES if f in columns)
        totals: ExportTotals = defaultdict(lambda: {"model": None, **{f: 0 for f in figures}})
        for line_number, record in enumerate(reader, start=2):
            day = _parse_day(record.get(columns["day"]), tz, path, line_number)
            model = (record.get(columns["model"]) or "").strip() or UNKNOWN_MODEL
            entry = totals[(day, model.lower())]
            entry["model"] = entry["model"] or model
            for figure in figures:
                entry[figure] += _parse_number(record.get(columns[figure]), figure, path, line_number)
    return dict(totals), figures


def reconcile(
    settings: Settings,
    export_path: str | Path,
    *,
    tolerance: Decimal = DEFAULT_TOLERANCE,
    provider: str | None = None,
    export_timezone: str = "UTC",
) -> ReconcileResult:
    """Compare the export with the store for the export's days; see the module docstring for the rules."""
    tolerance = Decimal(tolerance)
    if tolerance < 0:
        raise ReconcileError(f"tolerance {tolerance} must be >= 0 (0.01 means 1%)")
    theirs, figures = read_export(export_path, export_timezone)
    ours = _logged(settings, theirs, provider, export_timezone) if theirs else {}
    keys = set(theirs) | (set(ours) if provider else set())
    rows = []
    for key in sorted(keys):
        day, model_key = key
        export_row, our_row = theirs.get(key), ours.get(key, {})
        row: dict[str, Any] = {"day": day, "model": (export_row or our_row)["model"]}
        notes = []
        for figure in figures:
            expected = export_row[figure] if export_row else 0
            actual = our_row.get(figure, 0)
            row[f"export_{figure}"], row[f"ours_{figure}"] = expected, actual
            if _differs(expected, actual, tolerance):
                notes.append(_describe(figure, expected, actual))
        row["ours_failed_calls"] = our_row.get("failed_calls", 0)
        row["differs"] = bool(notes)
        row["difference"] = ("not in the export: " if export_row is None else "") + "; ".join(notes)
        rows.append(row)
    columns = ["day", "model", *(f"{side}_{f}" for f in figures for side in ("export", "ours")),
               "ours_failed_calls", "differs", "difference"]
    return ReconcileResult(Path(export_path), tolerance, provider, export_timezone, figures,
                           pd.DataFrame(rows, columns=columns))


_LOGGED = """
SELECT CAST(timezone(?, ts::TIMESTAMPTZ) AS DATE) AS day, lower(COALESCE(model, ?)) AS model_key,
       lower(response_model) AS served_key, any_value(COALESCE(model, ?)) AS model,
       any_value(response_model) AS served, COUNT(*) AS requests, SUM(input_tokens) AS input_tokens,
       SUM(output_tokens) AS output_tokens, SUM(cache_read_tokens) AS cached_tokens, SUM(cost_usd) AS cost_usd,
       COUNT(*) FILTER (WHERE status = 'error') AS failed_calls
FROM usage_events
WHERE ts >= ? AND ts < ? AND (CAST(? AS VARCHAR) IS NULL OR provider = ?)
GROUP BY 1, 2, 3
"""
_SUMMED = ("requests", "input_tokens", "output_tokens", "cached_tokens", "cost_usd", "failed_calls")


def _logged(settings: Settings, theirs: ExportTotals, provider: str | None, export_timezone: str) -> ExportTotals:
    """Our calls per (day in the export's zone, lower-cased model named by the export) over the export's days."""
    tz = _zone(export_timezone)
    days = [day for day, _ in theirs]

    period = list(day_bounds_utc(min(days), max(days), tz))
    with reading(settings.db_path) as db:
        if db is None:
            return {}
        result = db.execute(_LOGGED, [export_timezone, UNKNOWN_MODEL, UNKNOWN_MODEL, *period, provider, provider])
        names = [d[0] for d in result.description]
        found = [dict(zip(names, row)) for row in result.fetchall()]
    wanted_models = {model for _, model in theirs}
    ours: ExportTotals = {}
    for row in found:
        if row["served_key"] in wanted_models:  # the export names the snapshot that served the calls
            key, name = (row["day"], row["served_key"]), row["served"]
        elif row["model_key"] in wanted_models or provider is not None:
            key, name = (row["day"], row["model_key"]), row["model"]
        else:
            continue
        entry = ours.setdefault(key, {"model": name, **{figure: 0 for figure in _SUMMED}})
        for figure in _SUMMED:
            entry[figure] += row[figure] or 0
    return ours


def _differs(expected: Any, actual: Any, tolerance: Decimal) -> bool:
    return abs(Decimal(actual) - Decimal(expected)) > tolerance * abs(Decimal(expected))


def _describe(figure: str, expected: Any, actual: Any) -> str:
    show = money if figure == "cost_usd" else number
    gap = Decimal(actual) - Decimal(expected)
    relative = f" ({gap * 100 / Decimal(expected):+.1f}%)" if expected else ""
    return f"{figure} {show(expected)} vs {show(actual)}{relative}"


def _map_columns(path: Path, header: list[str]) -> dict[str, str]:
    present = {name.strip().lower(): name for name in header if name}
    columns = {}
    for figure, aliases in COLUMN_ALIASES.items():
        found = next((present[a] for a in aliases if a in present), None)
        if found is not None:
            columns[figure] = found
    for required in ("day", "model"):
        if required not in columns:
            hint = " (export the usage grouped by model)" if required == "model" else ""
            raise ReconcileError(
                f"{path}: no {required} column{hint}; expected one of: {', '.join(COLUMN_ALIASES[required])} "
                f"(found: {', '.join(header) or 'no header'})"
            )
    if not any(f in columns for f in FIGURES):
        raise ReconcileError(
            f"{path}: no figure to compare; expected at least one of the columns "
            + "; ".join(f"{f}: {', '.join(COLUMN_ALIASES[f])}" for f in FIGURES)
        )
    return columns


def _zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ReconcileError(
            f"unknown time zone {name!r} (use an IANA name such as 'UTC' or 'Europe/Berlin')"
        ) from None


def _parse_day(value: str | None, tz: ZoneInfo, path: Path, line: int) -> dt.date:
    text = (value or "").strip()
    try:
        if len(text) == 10 and text[4] == "-" and text[7] == "-":
            return dt.date.fromisoformat(text)
        if text.replace(".", "", 1).isdigit():
            moment = dt.datetime.fromtimestamp(float(text), dt.timezone.utc)
        else:
            moment = dt.datetime.fromisoformat(text)
            if moment.tzinfo is None:
                moment = moment.replace(tzinfo=tz)
        return moment.astimezone(tz).date()
    except (ValueError, OverflowError, IndexError):
        raise ReconcileError(
            f"{path}, line {line}: {text!r} is not a date (use YYYY-MM-DD, an ISO-8601 time or Unix seconds)"
        ) from None


def _parse_number(value: str | None, figure: str, path: Path, line: int) -> int | Decimal:
    text = (value or "").strip().replace(",", "").lstrip("$")
    if not text:
        return Decimal(0) if figure == "cost_usd" else 0
    try:
        number = Decimal(text)
    except InvalidOperation:
        number = None
    if number is None or not number.is_finite() or number < 0:
        raise ReconcileError(f"{path}, line {line}: {figure} {value!r} is not a number >= 0")
    if figure == "cost_usd":
        return number
    if number != number.to_integral_value():
        raise ReconcileError(f"{path}, line {line}: {figure} {value!r} is not a whole number")
    return int(number)
