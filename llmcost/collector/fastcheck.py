"""Which records of a batch are plain usage events, judged in one call into pydantic-core.

Validating each record with `UsageEvent` costs ~10-20 µs (its Python validators run per field), far more
than parsing it. Most records are plain: the right keys with the right JSON types and values in range. A
strict schema, read from `UsageEvent`'s own field declarations (`llmcost.ingestion.bulk.fields_of`, as the
bulk ingestion path does), judges a whole batch at once; it only passes records that `UsageEvent` accepts
too, and the collector sends every other record through the exact per-record path, which accepts, marks
unattributed or rejects it with its reason. The event schema stays written once: a check `UsageEvent`
gains that this module does not know makes importing it fail, instead of letting the two drift apart.
"""

from __future__ import annotations

import datetime as dt
import time
import types
import typing
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
REBUILD_SECONDS = 60.0  # the latest time a record may carry moves with the clock


def _field_schema(f: Field, latest: dt.datetime) -> cs.CoreSchema:
    if f.kind == "str":
        return cs.str_schema(strict=True, min_length=f.min_length or None, max_length=f.max_length or None,
                             pattern=STRIPPED_TEXT if f.stripped else FREE_TEXT)
    if f.kind == "ts":  # the same parser UsageEvent uses (naive times compare as UTC, as it reads them)
        return cs.chain_schema([cs.str_schema(strict=True, pattern=f"^{ISO_TS}$"),
                                cs.datetime_schema(ge=EARLIEST_TS, le=latest)])
    return {
        "int": cs.int_schema(strict=True, ge=0, le=MAX_TOKENS_PER_CALL),
        "float": cs.float_schema(strict=True, ge=0, allow_inf_nan=False),
        "bool": cs.bool_schema(strict=True),
        "status": cs.literal_schema(["ok", "error"]),
        "price_source": cs.literal_schema(list(PRICE_SOURCES)),
        "cost": cs.str_schema(strict=True, pattern=COST_TEXT),
        "object": cs.dict_schema(strict=True),
    }[f.kind]


def batch_schema(latest: dt.datetime) -> cs.CoreSchema:
    """A list of strict records: the identity and the time given, each other field absent, null (absent to
    UsageEvent too) or of its plain type; no other key."""
    fields = {
        f.name: cs.typed_dict_field(_field_schema(f, latest) if f.required
                                    else cs.nullable_schema(_field_schema(f, latest)), required=f.required)
        for f in FIELDS
    }
    return cs.list_schema(cs.typed_dict_schema(fields, extra_behavior="forbid"))


class PlainEvents:
    """Judges batches; the validator is rebuilt every minute so its latest allowed time (built at + a day)
    never passes a record that `UsageEvent`, judging against the current time, would refuse."""

    def __init__(self):
        self._validator: SchemaValidator | None = None
        self._built_at = 0.0

    def judge(self, records: list[Any]) -> list[bool]:
        """For each record, True when it is a plain usage event that UsageEvent accepts as it stands."""
        now = time.monotonic()
        if self._validator is None or now - self._built_at > REBUILD_SECONDS:
            self._validator = SchemaValidator(batch_schema(dt.datetime.now(dt.timezone.utc) + MAX_CLOCK_SKEW))
            self._built_at = now
        plain = [True] * len(records)
        try:
            self._validator.validate_python(records)
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
