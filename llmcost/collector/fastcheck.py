"""Which records of a batch are plain usage events, judged in one call into pydantic-core.

Validating each record with `UsageEvent` costs ~10-20 µs (its Python validators run per field), far more
than parsing it. Most records are plain: the right keys with the right JSON types and values in range. A
strict schema, read from `UsageEvent`'s own field declarations (`llmcost.ingestion.bulk.fields_of`, as the
bulk ingestion path does), judges a whole batch at once; it only passes records that `UsageEvent` accepts
too, and the collector sends every other record through the exact per-record path, which accepts, marks
unattributed or rejects it with its reason. The usual body, every record plain, is read and judged straight
from its bytes in the same one call (`read_json`), which gives the records `from_json` would. The event
schema stays written once: a check `UsageEvent` gains that this module does not know makes importing it
fail, instead of letting the two drift apart.
"""

from __future__ import annotations

import datetime as dt
import time
import types
import typing
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from annotated_types import Ge, Le, MaxLen, MinLen
from pydantic import AfterValidator, BaseModel, BeforeValidator, StringConstraints
from pydantic.fields import FieldInfo
from pydantic_core import SchemaValidator, ValidationError
from pydantic_core import core_schema as cs

from llmcost import events
from llmcost.events import EARLIEST_TS, MAX_CLOCK_SKEW, MAX_TOKENS_PER_CALL, PRICE_SOURCES, UsageEvent
from llmcost.ingestion.bulk import ISO_TS, Field, fields_of

# Printable ASCII at both ends (pydantic's whitespace stripping changes nothing) and no NUL anywhere.
STRIPPED_TEXT = r"^(?:[!-~](?:[^\x00]*[!-~])?)?$"
FREE_TEXT = r"^[^\x00]*$"
# A cost as a string with at most 6 whole digits and 12 decimals: a Decimal that fits max_digits=18,
# decimal_places=12. Other costs (JSON numbers) take the exact path.
COST_TEXT = r"^[0-9]{1,6}(\.[0-9]{1,12})?$"
FLOAT_CHECK = cs.float_schema(strict=True, ge=0, allow_inf_nan=False)
REBUILD_SECONDS = 60.0  # the latest time a record may carry moves with the clock


def _as_given(value: Any, check) -> Any:
    check(value)
    return value


def _field_schema(f: Field, latest: dt.datetime | None) -> cs.CoreSchema:
    """A field's strict check; with `latest` None (records read from JSON bytes) every value comes out as the
    JSON reader gives it: a time's text (its bounds are checked apart, `_times_schema`), an int as an int."""
    if f.kind == "str":
        return cs.str_schema(strict=True, min_length=f.min_length or None, max_length=f.max_length or None,
                             pattern=STRIPPED_TEXT if f.stripped else FREE_TEXT)
    if f.kind == "ts":
        if latest is None:
            return cs.str_schema(strict=True, pattern=f"^{ISO_TS}$")
        return cs.chain_schema([cs.str_schema(strict=True, pattern=f"^{ISO_TS}$"), _times_schema(latest)])
    if f.kind == "float" and latest is None:  # the float check turns 812 into 812.0: keep what was sent
        return cs.no_info_wrap_validator_function(_as_given, FLOAT_CHECK)
    return {
        "int": cs.int_schema(strict=True, ge=0, le=MAX_TOKENS_PER_CALL),
        "float": FLOAT_CHECK,
        "bool": cs.bool_schema(strict=True),
        "status": cs.literal_schema(["ok", "error"]),
        "price_source": cs.literal_schema(list(PRICE_SOURCES)),
        "cost": cs.str_schema(strict=True, pattern=COST_TEXT),
        "object": cs.dict_schema(strict=True),
    }[f.kind]


def _times_schema(latest: dt.datetime) -> cs.CoreSchema:
    """The same parser UsageEvent uses (naive times compare as UTC, as it reads them) and its bounds."""
    return cs.datetime_schema(ge=EARLIEST_TS, le=latest)


def record_schema(latest: dt.datetime | None) -> cs.CoreSchema:
    """A strict record: the identity and the time given, each other field absent, null (absent to UsageEvent
    too) or of its plain type; no other key. With `latest` None the time is checked as text only."""
    fields = {
        f.name: cs.typed_dict_field(_field_schema(f, latest) if f.required
                                    else cs.nullable_schema(_field_schema(f, latest)), required=f.required)
        for f in FIELDS
    }
    return cs.typed_dict_schema(fields, extra_behavior="forbid")


def batch_schema(latest: dt.datetime) -> cs.CoreSchema:
    """A list of strict records (`record_schema`)."""
    return cs.list_schema(record_schema(latest))


@dataclass(frozen=True)
class _Validators:
    batch: SchemaValidator  # parsed records, times included
    json_batch: SchemaValidator  # a JSON array of records read from its bytes, times as text
    json_record: SchemaValidator  # one JSON record read from its bytes, times as text
    times: SchemaValidator  # the texts of times, against their bounds

    @classmethod
    def build(cls) -> _Validators:
        latest = dt.datetime.now(dt.timezone.utc) + MAX_CLOCK_SKEW
        return cls(SchemaValidator(batch_schema(latest)), SchemaValidator(cs.list_schema(record_schema(None))),
                   SchemaValidator(record_schema(None)), SchemaValidator(cs.list_schema(_times_schema(latest))))


class PlainEvents:
    """Judges batches; the validator is rebuilt every minute so its latest allowed time (built at + a day)
    never passes a record that `UsageEvent`, judging against the current time, would refuse."""

    def __init__(self):
        self._validators: _Validators | None = None
        self._built_at = 0.0

    def _current(self) -> _Validators:
        now = time.monotonic()
        if self._validators is None or now - self._built_at > REBUILD_SECONDS:
            self._validators = _Validators.build()
            self._built_at = now
        return self._validators

    def read_json(self, body: bytes) -> list[dict[str, Any]] | None:
        """The records of a JSON body (one object or an array) when every one is a plain usage event, read and
        judged in one pass over the bytes, as `pydantic_core.from_json` reads them; None for any other body.

        The bytes' reader takes NaN and Infinity, which the collector's JSON refuses: such bodies are left
        to the usual reading (a string merely containing those words too, which costs only time)."""
        start = body.lstrip()[:1]
        if start not in (b"[", b"{") or b"NaN" in body or b"Infinity" in body:
            return None
        validators = self._current()
        try:
            if start == b"[":
                records = validators.json_batch.validate_json(body)
            else:
                records = [validators.json_record.validate_json(body)]
            validators.times.validate_python([record["ts"] for record in records])
        except ValidationError:
            return None
        if events.any_token_totals_problem(records):
            return None
        return records

    def times_in_bounds(self, times: list[str]) -> bool:
        """Whether the texts of times, each of the event format's form, are within UsageEvent's bounds."""
        try:
            self._current().times.validate_python(times)
        except ValidationError:
            return False
        return True

    def judge(self, records: list[Any]) -> list[bool]:
        """For each record, True when it is a plain usage event that UsageEvent accepts as it stands."""
        plain = [True] * len(records)
        try:
            self._current().batch.validate_python(records)
        except ValidationError as error:
            for item in error.errors(include_url=False, include_context=False, include_input=False):
                if item["loc"]:
                    plain[item["loc"][0]] = False
        for index, record in enumerate(records):
            if plain[index] and events.token_totals_problem(record) is not None:
                plain[index] = False
        return plain


# What UsageEvent checks beyond the fields' types and lengths, each mirrored above: a strict type has no
# booleans for numbers, the patterns no NUL and nothing to strip, the time its bounds, the cost its digits.
_KNOWN_CHECKS = (
    Ge(ge=0), Le(le=MAX_TOKENS_PER_CALL), StringConstraints(strip_whitespace=True),
    BeforeValidator(events._no_boolean), AfterValidator(events._no_nul), AfterValidator(events._plausible_utc),
)
_KNOWN_MODEL_VALIDATORS = {"_null_means_absent", "_one_provider_name", "_totals"}


def _checks(value: Any) -> list[Any]:
    """Every constraint and validator declared on a field, however its annotation nests them."""
    if isinstance(value, FieldInfo):
        return [*_checks(value.annotation), *(c for item in value.metadata for c in _checks(item))]
    if typing.get_origin(value) is typing.Annotated:
        base, *extra = typing.get_args(value)
        return [*_checks(base), *(c for item in extra for c in _checks(item))]
    if typing.get_origin(value) in (typing.Union, types.UnionType):
        return [c for arg in typing.get_args(value) for c in _checks(arg)]
    if isinstance(value, type) or typing.get_origin(value) is not None or value is None:
        return []  # a type, not a check
    return [value]


def unknown_checks(model: type[BaseModel] = UsageEvent) -> list[str]:
    """The checks of the event model that the strict schema does not mirror (none, or importing fails)."""
    unknown = []
    for name, info in model.model_fields.items():
        for check in _checks(info):
            known = (isinstance(check, (MinLen, MaxLen)) or check in _KNOWN_CHECKS
                     or (name == "latency_ms" and getattr(check, "allow_inf_nan", None) is False)
                     or (name == "cost_usd" and _cost_check(check)))
            if not known:
                unknown.append(f"{name}: {check!r}")
    validators = set(model.__pydantic_decorators__.model_validators)
    validators |= set(model.__pydantic_decorators__.field_validators)
    unknown += [f"validator {name}" for name in sorted(validators - _KNOWN_MODEL_VALIDATORS)]
    if model.model_fields["cost_usd"].annotation != Decimal | None:
        unknown.append(f"cost_usd: {model.model_fields['cost_usd'].annotation!r}")
    return unknown


def _cost_check(check: Any) -> bool:
    if getattr(check, "allow_inf_nan", None) is False:
        return True
    return getattr(check, "max_digits", None) == 18 and getattr(check, "decimal_places", None) == 12


FIELDS = fields_of(UsageEvent)
if unknown_checks():
    raise TypeError(f"UsageEvent has checks the collector's batch check does not mirror: {unknown_checks()}; "
                    "add them to llmcost.collector.fastcheck")
