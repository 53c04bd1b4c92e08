"""The tracker's usage event without a second validation of what it built itself.

`UsageEvent(**fields)` validates every field (about 25 µs a call). Most of what the tracker passes it made
itself: counts from `ExtractedUsage`, a cost from the pricer, a uuid, a UTC timestamp. `built_event` checks
the values cheaply against the model's own constraints (read from `UsageEvent.model_fields`, so the rule
stays in one place) and constructs the event without validation only when every value is one the model
would keep exactly as given; anything else (whitespace to strip, a NUL, an over-long name, a provider alias,
inconsistent counts) goes through `UsageEvent(**fields)`, which fixes or refuses it as it always has.

`journal_line` writes the event's journal line with pydantic-core's JSON serializer in one step, where
`encode_line(event.model_dump(mode="json"))` built a dict of JSON values first (about 10x slower).
"""

from __future__ import annotations

import datetime as dt
import math
from decimal import Decimal
from typing import Any

from annotated_types import MaxLen, MinLen

from llmcost.events import EARLIEST_TS, MAX_CLOCK_SKEW, MAX_TOKENS_PER_CALL, PRICE_SOURCES, UsageEvent
from llmcost.providers import stored_provider

_NAMES = ("user_id", "tenant_id", "use_case", "account_type", "provider", "model", "response_model", "service_tier",
          "attempt_id", "source")
_COUNTS = ("input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens", "reasoning_tokens",
           "cache_write_1h_tokens", "estimated_tokens")
_MAX_COST = Decimal(10) ** 6  # DECIMAL(18, 12): 6 whole digits
_FIELDS = {"ts", "status", "error", "usage_estimated", "latency_ms", "cost_usd", "price_source", "metadata",
           *_NAMES, *_COUNTS}


def _length_bounds(name: str) -> tuple[int, int]:
    field = UsageEvent.model_fields[name]
    low, high = 0, 10**9
    for item in field.metadata:
        if isinstance(item, MinLen):
            low = item.min_length
        elif isinstance(item, MaxLen):
            high = item.max_length
    return low, high


_NAME_BOUNDS = {name: _length_bounds(name) for name in _NAMES}
_ERROR_BOUNDS = _length_bounds("error")
_NEW_EVENT_ID = UsageEvent.model_fields["event_id"].default_factory
_FIELD_ORDER = tuple(UsageEvent.model_fields)
# Every field the tracker may leave out has a plain default (event_id, metadata and total_tokens are always given).
_DEFAULTS = {name: field.default for name, field in UsageEvent.model_fields.items()
             if not field.is_required() and field.default_factory is None}
_REQUIRED = {name for name in _NAMES if UsageEvent.model_fields[name].is_required()}


def _clean_name(value: Any, bounds: tuple[int, int]) -> bool:
    """A name the model keeps as given: a str with nothing to strip, no NUL, within its length."""
    return (type(value) is str and bounds[0] <= len(value) <= bounds[1] and "\x00" not in value
            and (not value or not (value[0].isspace() or value[-1].isspace())))


def _kept_as_given(fields: dict[str, Any]) -> bool:
    """Whether validating `fields` would keep every value exactly as given (so no validation is needed)."""
    if fields.keys() - _FIELDS:
        return False
    for name in _NAMES:
        value = fields.get(name)
        if value is None:
            if name in _REQUIRED:
                return False
        elif not _clean_name(value, _NAME_BOUNDS[name]):
            return False
    for name in _COUNTS:
        value = fields.get(name, 0)
        if not (type(value) is int and 0 <= value <= MAX_TOKENS_PER_CALL) and not (
                value is None and name == "estimated_tokens"):
            return False
    given = {name: fields.get(name, 0) for name in _COUNTS}
    if (given["cache_write_1h_tokens"] > given["cache_write_tokens"]
            or (given["input_tokens"] and given["cache_read_tokens"] + given["cache_write_tokens"] > given["input_tokens"])
            or (given["output_tokens"] and given["reasoning_tokens"] > given["output_tokens"])):
        return False
    ts = fields.get("ts")
    if not (type(ts) is dt.datetime and ts.tzinfo is dt.timezone.utc and EARLIEST_TS <= ts
            and ts <= dt.datetime.now(dt.timezone.utc) + MAX_CLOCK_SKEW):
        return False
    error = fields.get("error")
    if error is not None and not (type(error) is str and len(error) <= _ERROR_BOUNDS[1] and "\x00" not in error):
        return False
    latency = fields.get("latency_ms")
    if latency is not None and not (type(latency) is float and math.isfinite(latency) and latency >= 0):
        return False
    cost = fields.get("cost_usd")
    if cost is not None and not (type(cost) is Decimal and cost.is_finite() and 0 <= cost < _MAX_COST
                                 and -12 <= cost.as_tuple().exponent <= 0):
        return False
    metadata = fields.get("metadata")
    return (fields.get("status", "ok") in ("ok", "error") and type(fields.get("usage_estimated", False)) is bool
            and fields.get("price_source") in (None, *PRICE_SOURCES)
            and (metadata is None or (type(metadata) is dict and all(type(key) is str for key in metadata)))
            and stored_provider(fields.get("provider")) == fields.get("provider"))


def journal_line(event: UsageEvent) -> bytes | None:
    """The event's journal line as `encode_line(event.model_dump(mode="json", exclude_none=True))` writes it, from
    pydantic-core's serializer; None when the metadata holds a value whose JSON text the two could write
    differently (a float that is not finite, a type other than text, whole numbers, truth values and None: NaN
    is `NaN` in Python's json and `null` in pydantic's) or the serializer refuses a value (then the caller's
    path reports it as before). Finite floats may be spelled differently (`1e-05`, `1e-5`): the same number."""
    for value in event.metadata.values():
        kind = type(value)
        if not (kind in (str, int, bool) or value is None or (kind is float and math.isfinite(value))):
            return None
    try:
        return event.__pydantic_serializer__.to_json(event, exclude_none=True) + b"\n"
    except Exception:  # e.g. a lone surrogate; json.dumps and encode() name the problem on the caller's path
        return None


def built_event(**fields: Any) -> UsageEvent:
    """`UsageEvent(**fields)`, constructed without validation when validation would change nothing."""
    if not _kept_as_given(fields):
        return UsageEvent(**fields)
    given = {name: value for name, value in fields.items() if value is not None}
    given["total_tokens"] = given.get("input_tokens", 0) + given.get("output_tokens", 0)
    if "cost_usd" in given and "price_source" not in given:
        given["price_source"] = "provider"
    fields_set = set(given)  # as validation leaves it: what was given, and what its validators assigned
    given["event_id"] = _NEW_EVENT_ID()  # the model's own factory (by the model it is left out of fields_set)
    given["metadata"] = dict(given.get("metadata") or {})
    return _constructed(given, fields_set)


def _constructed(given: dict[str, Any], fields_set: set[str]) -> UsageEvent:
    """What `UsageEvent.model_construct(**given)` builds, without its loop over every field and alias (~30 µs in
    pydantic 2.14): the fields in their declared order, defaults for the rest; tests/test_tracker_event.py
    checks the result equals the validated event."""
    event = UsageEvent.__new__(UsageEvent)
    object.__setattr__(event, "__dict__", {name: given[name] if name in given else _DEFAULTS[name]
                                           for name in _FIELD_ORDER})
    object.__setattr__(event, "__pydantic_fields_set__", fields_set)
    object.__setattr__(event, "__pydantic_extra__", None)
    object.__setattr__(event, "__pydantic_private__", None)
    return event
