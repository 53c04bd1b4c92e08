"""Pricing whole columns at once (the ingest's bulk path): equal, row by row, to `Pricer.price`.

Rows are grouped by provider, model, served model, service tier and UTC day; each group's rates are
looked up once (`Pricer.lookup` / `Pricer.rates_at`) and its costs computed as int64 picodollars, falling
back to exact Decimal arithmetic where int64 could overflow. Only ingestion imports this module: it needs
numpy, pandas and pyarrow, which the SDK never loads.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timezone
from decimal import Decimal
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute  # noqa: F401 - pa.compute
from genai_prices.types import ModelInfo

from llmcost.events import TOKEN_FIELDS
from llmcost.pricing.cost import Tokens, exact_cost, rounded_to_pico
from llmcost.pricing.rates import GROUP_COLUMNS, INT64_SAFE, Pricer, Rates, prices_vary_within_a_day


def price_frame_pico(pricer: Pricer, frame: pd.DataFrame) -> tuple[np.ndarray, list[str]]:
    """Costs of every row as whole picodollars (1e-12 USD; exact, since costs have 12 places)."""
    rows = len(frame)
    if rows == 0:
        return np.zeros(0, dtype=np.int64), []
    for column in ("provider", "model", "ts"):
        if column not in frame.columns:
            raise ValueError(f"price_frame needs a {column!r} column (got {', '.join(map(str, frame.columns))})")
    cols = _token_columns(frame)
    ts = pd.to_datetime(frame["ts"], utc=True)
    if ts.isna().any():
        raise ValueError(f"ts is missing in row {frame.index[int(np.argmax(ts.isna().to_numpy()))]!r}")
    days = ts.dt.tz_localize(None).to_numpy().astype("datetime64[D]").astype(np.int64)
    keys = [frame[name] if name in frame.columns else pd.Series([None] * rows, index=frame.index)
            for name in GROUP_COLUMNS]
    first_rows, rows_by_group = _group_rows(keys, days)
    groups = [tuple(series.iat[first] for series in keys) for first in first_rows]
    pico, source_codes, source_names = _price_groups(pricer, groups, rows_by_group, cols,
                                                     lambda row: ts.iat[row].to_pydatetime())
    return pico, np.array(source_names, dtype=object)[source_codes].tolist()

def price_columns_pico(pricer: Pricer, provider: pa.Array, model: pa.Array, ts: np.ndarray,
                       tokens: Mapping[str, np.ndarray], response_model: pa.Array | None = None,
                       service_tier: pa.Array | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Like `price_frame_pico`, from columns: provider, model, response_model and service_tier as
    Arrow string arrays (nulls allowed), ts as UTC datetime64, and the token counts of `UsageEvent`
    as int64 arrays (0 where not given; total_tokens 0 means input + output). Returns the costs and
    an object array of sources.
    """
    rows = len(ts)
    if rows == 0:
        return np.zeros(0, dtype=np.int64), np.empty(0, dtype=object)
    coded = [_codes(column) if column is not None else (np.zeros(rows, dtype=np.int64), [None])
             for column in (provider, model, response_model, service_tier)]
    days = ts.astype("datetime64[D]").astype(np.int64)
    day_codes = days - days.min()
    key, span = np.zeros(rows, dtype=np.int64), 1
    for codes, count in [*((codes, len(values)) for codes, values in coded), (day_codes, int(day_codes.max()) + 1)]:
        if span * count >= INT64_SAFE:  # many distinct values: renumber the keys so far before they overflow
            _, key = np.unique(key, return_inverse=True)
            span = int(key.max()) + 1
        key, span = key * count + codes, span * count
    _, first_rows, group_of_row = np.unique(key, return_index=True, return_inverse=True)
    groups = [tuple(values[codes[first]] for codes, values in coded) for first in first_rows]
    pico, source_codes, source_names = price_groups_pico(pricer, groups, group_of_row, ts, tokens)
    return pico, np.array(source_names, dtype=object)[source_codes]


def price_groups_pico(pricer: Pricer, groups: Sequence[tuple[Any, Any, Any, Any]], group_of_row: np.ndarray,
                      ts: np.ndarray, tokens: Mapping[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Like `price_columns_pico`, for rows already grouped: `groups[g]` is group g's (provider, model,
    response_model, service_tier), the same for all its rows, whose times (ts, UTC datetime64) fall on one
    UTC day; `group_of_row` is each row's g. Returns the costs, each row's source as a code, and the
    sources the codes stand for.
    """
    rows = len(ts)
    if rows == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int8), []
    # A stable sort of 16-bit numbers is a radix sort: a tenth of the time of int64's.
    narrow = group_of_row.astype(np.uint16) if len(groups) <= np.iinfo(np.uint16).max + 1 else group_of_row
    order = np.argsort(narrow, kind="stable")
    bounds = np.cumsum(np.bincount(narrow, minlength=len(groups)))
    rows_by_group = np.split(order, bounds[:-1])
    cols = _completed_tokens({name: tokens.get(name, np.zeros(rows, dtype=np.int64))
                              for name in (*TOKEN_FIELDS, "total_tokens")})
    return _price_groups(pricer, groups, rows_by_group, cols,
                         lambda row: ts[row].astype("datetime64[us]").item().replace(tzinfo=timezone.utc))

def _price_groups(pricer: Pricer, groups: Sequence[tuple[Any, Any, Any, Any]], rows_by_group: list[np.ndarray],
                  cols: dict[str, np.ndarray], ts_of: Callable[[int], datetime]
                  ) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Costs (pico-dollars) and sources (codes, and the sources they stand for) of rows grouped by
    (provider, model, response_model, service_tier, UTC day); `ts_of(row)` is a row's time, and one
    row's time stands for its group's unless prices change within a day."""
    pico = np.zeros(len(cols["total"]), dtype=np.int64)
    source_codes = np.zeros(len(pico), dtype=np.int8)  # a handful of sources: PRICE_TABLE, OVERRIDE, DEFAULT_RATE
    source_names: dict[str, int] = {}
    exact: dict[int, Decimal] = {}
    for (provider, model, response_model, tier), members in zip(groups, rows_by_group):
        if not len(members):
            continue
        found = pricer.lookup(provider, model, response_model)
        if isinstance(found, ModelInfo) and prices_vary_within_a_day(found):
            batches = _split_by_rates(pricer, found, members, ts_of, tier)
        else:
            batches = [(pricer.rates_at(found, ts_of(int(members[0])), tier), members)]
        for rates, batch in batches:
            source_codes[batch] = source_names.setdefault(rates.source, len(source_names))
            batch_cols = {name: values[batch] for name, values in cols.items()}
            costs = _pico_costs(rates, batch_cols)
            if costs is not None:
                pico[batch] = costs
                continue
            for position, row in enumerate(batch.tolist()):
                tokens = Tokens(*(int(batch_cols[name][position]) for name in Tokens._fields))
                exact[row] = rounded_to_pico(exact_cost(rates, tokens))

    if exact:
        values = {row: int(cost.scaleb(12)) for row, cost in exact.items()}
        if any(abs(v) >= 2**63 for v in values.values()):
            pico = pico.astype(object)  # beyond int64: keep Python ints, still exact
        for row, value in values.items():
            pico[row] = value
    return pico, source_codes, list(source_names)

def _split_by_rates(pricer: Pricer, model: ModelInfo, members: np.ndarray, ts_of: Callable[[int], datetime],
                    tier: Any) -> list[tuple[Rates, np.ndarray]]:
    by_rates: dict[int, tuple[Rates, list[int]]] = {}
    for row in members.tolist():
        rates = pricer.rates_at(model, ts_of(row), tier)
        by_rates.setdefault(id(rates), (rates, []))[1].append(row)
    return [(rates, np.array(batch, dtype=np.int64)) for rates, batch in by_rates.values()]


def _pico_rate_array(rate: tuple[int, tuple[tuple[int, int], ...]], basis: np.ndarray) -> np.ndarray | int:
    base, tiers = rate
    if not tiers:
        return base
    rates = np.full(len(basis), base, dtype=np.int64)
    for start, price in tiers:  # ascending, so the highest tier passed wins
        rates[basis > start] = price
    return rates


def _pico_costs(rates: Rates, cols: dict[str, np.ndarray]) -> np.ndarray | None:
    """Costs in whole pico-dollars with int64 arithmetic, or None when only Decimal arithmetic is exact."""
    pico = rates.in_pico
    if pico is None:
        return None
    total = cols["total"]
    # Every billed token is counted in `total`, so total * the highest rate bounds each row's cost.
    if len(total) and int(total.max()) * pico["highest"] + pico["per_call"] >= INT64_SAFE:
        return None
    if rates.every_token_alike:
        return total * pico["input"][0]
    inputs, outputs = cols["input"], cols["output"]
    plain_input, plain_output = inputs.copy(), outputs.copy()
    cost = np.zeros(len(total), dtype=np.int64)
    one_hour = cols["cache_write_1h"] if pico["cache_write_1h"] is not None else np.zeros(len(total), dtype=np.int64)
    other_writes = cols["cache_write"] - one_hour
    for name, tokens, counted_in in (("cache_read", cols["cache_read"], plain_input),
                                     ("cache_write_1h", one_hour, plain_input),
                                     ("cache_write", other_writes, plain_input),
                                     ("reasoning", cols["reasoning"], plain_output)):
        if pico[name] is not None:
            cost += tokens * _pico_rate_array(pico[name], inputs)
            counted_in -= tokens
    cost += plain_input * _pico_rate_array(pico["input"], inputs)
    cost += plain_output * _pico_rate_array(pico["output"], inputs)
    total_only = (inputs == 0) & (outputs == 0) & (total > 0)
    if total_only.any():
        upper = np.maximum(_pico_rate_array(pico["input"], total), _pico_rate_array(pico["output"], total))
        cost = np.where(total_only, total * upper, cost)
    if pico["per_call"]:
        cost += np.where(total > 0, pico["per_call"], 0)
    return cost


def _token_columns(frame: pd.DataFrame) -> dict[str, np.ndarray]:
    """The frame's token counts as int64 arrays, completed the way `Tokens.of` completes one event."""
    raw: dict[str, np.ndarray] = {}
    for column in (*TOKEN_FIELDS, "total_tokens"):
        if column not in frame.columns:
            raw[column] = np.zeros(len(frame), dtype=np.int64)
            continue
        raw[column] = pd.to_numeric(frame[column]).fillna(0).to_numpy(dtype=np.int64)
    return _completed_tokens(raw, row_label=lambda row: frame.index[row])


def _completed_tokens(raw: Mapping[str, np.ndarray],
                      row_label: Callable[[int], Any] = lambda row: row) -> dict[str, np.ndarray]:
    """Token counts (int64 arrays named like UsageEvent's) completed the way `Tokens.of` completes one event."""
    for column, values in raw.items():
        negative = values < 0
        if negative.any():
            where = int(np.argmax(negative))
            raise ValueError(
                f"{column} is negative ({values[where]}) in row {row_label(where)!r}; "
                "token counts must be >= 0 (fix the caller)"
            )
    cache_write = np.maximum(raw["cache_write_tokens"], raw["cache_write_1h_tokens"])
    whole_input = np.maximum(raw["input_tokens"], raw["cache_read_tokens"] + cache_write)
    whole_output = np.maximum(raw["output_tokens"], raw["reasoning_tokens"])
    return {
        "input": whole_input,
        "output": whole_output,
        "cache_read": raw["cache_read_tokens"],
        "cache_write": cache_write,
        "reasoning": raw["reasoning_tokens"],
        "total": np.maximum(raw["total_tokens"], whole_input + whole_output),
        "cache_write_1h": raw["cache_write_1h_tokens"],
    }


def _codes(values: pa.Array | pa.ChunkedArray) -> tuple[np.ndarray, list[Any]]:
    """Each value's code (int64, 0 for null) and the values the codes stand for (None at 0)."""
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    encoded = pa.compute.dictionary_encode(values)
    codes = pa.compute.fill_null(pa.compute.add(encoded.indices.cast(pa.int64()), 1), 0).to_numpy()
    return codes, [None, *encoded.dictionary.to_pylist()]


def _group_rows(keys: list[pd.Series], days: np.ndarray) -> tuple[list[int], list[np.ndarray]]:
    """Each distinct (keys..., day)'s first row and all its rows, in order of appearance."""
    groups = np.zeros(len(days), dtype=np.int64)
    for codes in [*(pd.factorize(series, use_na_sentinel=False)[0] for series in keys), pd.factorize(days)[0]]:
        groups, _ = pd.factorize(groups * (int(codes.max()) + 1) + codes.astype(np.int64))
    order = np.argsort(groups, kind="stable")
    ends = np.cumsum(np.bincount(groups))
    starts = ends - np.bincount(groups)
    rows_by_group = [order[start:end] for start, end in zip(starts.tolist(), ends.tolist())]
    return order[starts].tolist(), rows_by_group
