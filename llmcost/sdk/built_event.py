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
# Every field in declared order with the value it takes when not given (None for event_id and metadata,
# which `built_event` always sets).
_FIELD_DEFAULTS = {name: _DEFAULTS.get(name) for name in _FIELD_ORDER}


# (shortest, longest, required) of each name field; the attempt id, new on every call, is checked on its own
_NAME_CHECKS = {name: (*_NAME_BOUNDS[name], name in _REQUIRED) for name in _NAMES}
_ATTEMPT_ID_CHECK = _NAME_CHECKS["attempt_id"]
_REPEATING_NAMES = tuple(name for name in _NAMES if name != "attempt_id")
_KEPT_NAMES: dict[tuple, tuple[tuple[type, ...], bool]] = {}  # a call site's names -> whether they are kept
_TEXT_OR_NONE = frozenset({str, type(None)})
_KEPT_PROVIDERS: dict[str, bool] = {}  # provider name -> whether the model stores it as given


def _name_kept(value: Any, shortest: int, longest: int, required: bool) -> bool:
    """A name the model keeps as given: absent when it may be, or a str with nothing to strip, no NUL, within its
    length."""
    if value is None:
        return not required
    return (type(value) is str and shortest <= len(value) <= longest and "\x00" not in value
            and (not value or not (value[0].isspace() or value[-1].isspace())))


def _names_kept(values: tuple) -> bool:
    """`_name_kept` of each of `_REPEATING_NAMES`, judged once per call site (their values repeat)."""
    types = tuple(map(type, values))
    try:
        cached = _KEPT_NAMES.get(values)
    except TypeError:  # unhashable: not a name, and validation says why
        return False
    if cached is not None and cached[0] == types:
        return cached[1]
    kept = all(_name_kept(value, *_NAME_CHECKS[name]) for name, value in zip(_REPEATING_NAMES, values))
    if _TEXT_OR_NONE.issuperset(types):  # whose judgement their value and type decide
        if len(_KEPT_NAMES) >= 4096:
            _KEPT_NAMES.clear()
        _KEPT_NAMES[values] = (types, kept)
    return kept


def _provider_kept(provider: str | None) -> bool:
    if provider is None:
        return True
    kept = _KEPT_PROVIDERS.get(provider)
    if kept is None:
        kept = stored_provider(provider) == provider
        if len(_KEPT_PROVIDERS) < 1024:
            _KEPT_PROVIDERS[provider] = kept
    return kept


def _kept_as_given(fields: dict[str, Any]) -> bool:
    """Whether validating `fields` would keep every value exactly as given (so no validation is needed)."""
    if not _FIELDS.issuperset(fields):
        return False
    get = fields.get
    if not (_names_kept(tuple(map(get, _REPEATING_NAMES))) and _name_kept(get("attempt_id"), *_ATTEMPT_ID_CHECK)):
        return False
    for name in _COUNTS:
        value = get(name, 0)
        if not (type(value) is int and 0 <= value <= MAX_TOKENS_PER_CALL) and not (
                value is None and name == "estimated_tokens"):
            return False
    input_tokens, output_tokens = get("input_tokens", 0), get("output_tokens", 0)
    cache_write_tokens = get("cache_write_tokens", 0)
    if (get("cache_write_1h_tokens", 0) > cache_write_tokens
            or (input_tokens and get("cache_read_tokens", 0) + cache_write_tokens > input_tokens)
            or (output_tokens and get("reasoning_tokens", 0) > output_tokens)):
        return False
    ts = get("ts")
    if not (type(ts) is dt.datetime and ts.tzinfo is dt.timezone.utc and EARLIEST_TS <= ts
            and ts <= dt.datetime.now(dt.timezone.utc) + MAX_CLOCK_SKEW):
        return False
    error = get("error")
    if error is not None and not (type(error) is str and len(error) <= _ERROR_BOUNDS[1] and "\x00" not in error):
        return False
    latency = get("latency_ms")
    if latency is not None and not (type(latency) is float and math.isfinite(latency) and latency >= 0):
        return False
    cost = get("cost_usd")
    if cost is not None and not (type(cost) is Decimal and cost.is_finite() and 0 <= cost < _MAX_COST
                                 and -12 <= cost.as_tuple().exponent <= 0):
        return False
    metadata = get("metadata")
    return (get("status", "ok") in ("ok", "error") and type(get("usage_estimated", False)) is bool
            and get("price_source") in _PRICE_SOURCES_OR_NONE
            and (metadata is None or (type(metadata) is dict and all(type(key) is str for key in metadata)))
            and _provider_kept(get("provider")))


_PRICE_SOURCES_OR_NONE = (None, *PRICE_SOURCES)


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
    # as validation leaves it: the fields given, and what its validators assigned (never the event id's factory)
    given = {name: value for name, value in fields.items() if value is not None}
    fields_set = set(given)
    fields_set.add("total_tokens")
    state = {**_FIELD_DEFAULTS, **given}  # every field in declared order (each given one is a field, as checked)
    state["event_id"] = _NEW_EVENT_ID()  # the model's own factory
    state["total_tokens"] = state["input_tokens"] + state["output_tokens"]
    if state["cost_usd"] is not None and state["price_source"] is None:
        state["price_source"] = "provider"
        fields_set.add("price_source")
    state["metadata"] = dict(state["metadata"] or {})
    return _constructed(state, fields_set)


def _constructed(state: dict[str, Any], fields_set: set[str]) -> UsageEvent:
    """What `UsageEvent.model_construct(**given)` builds, without its loop over every field and alias (~30 µs in
    pydantic 2.14): `state` holds every field in its declared order; tests/test_tracker_event.py checks the
    result equals the validated event."""
    event = UsageEvent.__new__(UsageEvent)
    object.__setattr__(event, "__dict__", state)
    object.__setattr__(event, "__pydantic_fields_set__", fields_set)
    object.__setattr__(event, "__pydantic_extra__", None)
    object.__setattr__(event, "__pydantic_private__", None)
    return event
