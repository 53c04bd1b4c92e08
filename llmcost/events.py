"""The usage event: one row per LLM call, the public record every writer produces."""

from __future__ import annotations

import os
import threading
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from itertools import repeat
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    model_validator,
)

from llmcost.providers import stored_provider

PRICE_SOURCES = ("provider", "price-table", "override", "default-rate")
UNATTRIBUTED = "(unattributed)"
TOKEN_FIELDS = (
    "input_tokens",
    "output_tokens",
    "cache_read_tokens",
    "cache_write_tokens",
    "reasoning_tokens",
    "cache_write_1h_tokens",
)
# A single call above this many tokens is a data error, not a real call (largest context windows are ~10M).
MAX_TOKENS_PER_CALL = 1_000_000_000
EARLIEST_TS = datetime(2015, 1, 1, tzinfo=timezone.utc)
MAX_CLOCK_SKEW = timedelta(days=1)


def new_id() -> str:
    """`str(uuid.uuid4())` (a random RFC 4122 version 4 UUID) in a third of its time: every tracked call makes two."""
    bits = int.from_bytes(_random_16_bytes(), "big") & _UUID4_CLEARED | _UUID4_SET
    text = "%032x" % bits
    return f"{text[:8]}-{text[8:12]}-{text[12:16]}-{text[16:20]}-{text[20:]}"


# The operating system's random bytes, taken 64 ids at a time: one getrandom system call per call made two per
# tracked call, each right after the journal's fsync, when a system call costs most (issue 17). Taken under a lock
# (two threads never get the same bytes), and dropped in a forked child (which must not repeat its parent's ids).
_RANDOM_POOL_BYTES = 16 * 64
_random_pool = [b"", 0]  # the bytes, and how many of them are used
_random_lock = threading.Lock()


def _random_16_bytes() -> bytes:
    with _random_lock:
        pool, used = _random_pool
        if used >= len(pool):
            pool, used = os.urandom(_RANDOM_POOL_BYTES), 0
            _random_pool[0] = pool
        _random_pool[1] = used + 16
    return pool[used:used + 16]


def _forget_random_pool_in_forked_child() -> None:
    global _random_lock
    _random_lock = threading.Lock()
    _random_pool[:] = [b"", 0]


os.register_at_fork(after_in_child=_forget_random_pool_in_forked_child)


_UUID4_CLEARED = ~(0xF000 << 64) & ~(0xC000 << 48)  # the version and variant bits
_UUID4_SET = 4 << 76 | 0x8000 << 48  # version 4, variant RFC 4122


def _no_nul(value: str) -> str:
    if "\x00" in value:
        raise ValueError("contains a NUL character")
    return value


def _no_boolean(value: Any) -> Any:
    if isinstance(value, bool):
        raise ValueError("a boolean is not a number")
    return value


def _plausible_utc(value: datetime) -> datetime:
    """A naive time is UTC; the time must be after 2015 and at most a day ahead of now."""
    try:
        value = value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)
    except OverflowError:
        raise ValueError("is out of the range of dates") from None
    if value < EARLIEST_TS:
        raise ValueError(f"{value.isoformat()} is before {EARLIEST_TS.date()}: not a real LLM call")
    if value > datetime.now(timezone.utc) + MAX_CLOCK_SKEW:
        raise ValueError(f"{value.isoformat()} is in the future (more than {MAX_CLOCK_SKEW} ahead of now)")
    return value


# Names are stripped of surrounding whitespace; free text (error, metadata keys and values) is kept as given.
Name = Annotated[str, StringConstraints(strip_whitespace=True), AfterValidator(_no_nul)]
Text = Annotated[str, AfterValidator(_no_nul)]
Count = Annotated[int, BeforeValidator(_no_boolean), Field(ge=0, le=MAX_TOKENS_PER_CALL)]
UtcTime = Annotated[datetime, AfterValidator(_plausible_utc)]


class UsageEvent(BaseModel):
    """One LLM call's usage.

    `input_tokens` is the whole input including cached tokens and `output_tokens` includes reasoning
    tokens (OpenTelemetry GenAI conventions). `cache_write_1h_tokens` are the cache writes kept for an
    hour (Anthropic bills them above 5-minute writes), counted inside `cache_write_tokens`.
    `total_tokens` may be given alone when a source only knows a total. `cost_usd` is computed by
    `llmcost.pricing.rates` when absent; `price_source` says how.

    A known `provider` is stored under its one name (`llmcost.providers`: 'Claude' -> 'anthropic'), the
    name given kept as `metadata["provider_original"]`; any other name is kept as given. `model` is the model
    requested, `response_model`
    the one the response names (a dated snapshot, say), `service_tier` the tier that served the call.
    """

    model_config = ConfigDict(extra="forbid")

    event_id: Name = Field(default_factory=new_id, min_length=1, max_length=200)
    ts: UtcTime
    user_id: Name = Field(min_length=1, max_length=500)
    tenant_id: Name = Field(min_length=1, max_length=500)
    use_case: Name = Field(min_length=1, max_length=500)
    account_type: Name | None = Field(default=None, max_length=200)
    provider: Name | None = Field(default=None, max_length=200)
    model: Name | None = Field(default=None, max_length=500)
    response_model: Name | None = Field(default=None, max_length=500)
    service_tier: Name | None = Field(default=None, max_length=100)
    input_tokens: Count = 0
    output_tokens: Count = 0
    cache_read_tokens: Count = 0
    cache_write_tokens: Count = 0
    reasoning_tokens: Count = 0
    cache_write_1h_tokens: Count = 0
    total_tokens: Count | None = None
    estimated_tokens: Count | None = None
    usage_estimated: bool = False
    latency_ms: Annotated[float, BeforeValidator(_no_boolean)] | None = Field(default=None, ge=0, allow_inf_nan=False)
    status: Literal["ok", "error"] = "ok"
    error: Text | None = Field(default=None, max_length=10_000)
    cost_usd: Decimal | None = Field(default=None, ge=0, allow_inf_nan=False, max_digits=18, decimal_places=12)
    price_source: Literal["provider", "price-table", "override", "default-rate"] | None = None
    attempt_id: Name | None = Field(default=None, max_length=200)
    source: Name | None = Field(default=None, max_length=1000)
    metadata: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _null_means_absent(cls, data: Any) -> Any:
        # {"input_tokens": null} reads as "not given", as in most JSON APIs; the bulk path does the same.
        if isinstance(data, dict) and None in data.values():
            return {k: v for k, v in data.items() if v is not None}
        return data

    @model_validator(mode="after")
    def _one_provider_name(self) -> UsageEvent:
        stored = stored_provider(self.provider)
        if stored != self.provider:
            self.metadata = {**self.metadata, "provider_original": self.provider}
            self.provider = stored
        return self

    @model_validator(mode="after")
    def _totals(self) -> UsageEvent:
        problem = token_totals_problem(self.__dict__)
        if problem is not None:
            raise ValueError(problem)
        if self.total_tokens is None:
            self.total_tokens = self.input_tokens + self.output_tokens
        if self.cost_usd is not None and self.price_source is None:
            self.price_source = "provider"
        return self


def token_totals_problem(counts: dict[str, Any]) -> str | None:
    """Why a call's token counts do not add up, or None; absent or null counts are 0 (the total: not given).

    The one rule `UsageEvent` applies, also called on raw records by the collector's batch check.
    """
    get = counts.get
    input_tokens, output_tokens = get("input_tokens") or 0, get("output_tokens") or 0
    cache_write_tokens = get("cache_write_tokens") or 0
    if (get("cache_write_1h_tokens") or 0) > cache_write_tokens:
        return ("cache_write_1h_tokens exceed cache_write_tokens "
                "(cache_write_tokens must include the 1-hour cache writes)")
    if (get("cache_read_tokens") or 0) + cache_write_tokens > input_tokens and input_tokens:
        return "cache_read_tokens + cache_write_tokens exceed input_tokens (input_tokens must include cached tokens)"
    if (get("reasoning_tokens") or 0) > output_tokens and output_tokens:
        return "reasoning_tokens exceed output_tokens (output_tokens must include reasoning tokens)"
    parts, total_tokens = input_tokens + output_tokens, get("total_tokens")
    if total_tokens is not None and parts and total_tokens < parts:
        return f"total_tokens {total_tokens} is less than input + output tokens ({parts})"
    return None


# The counts whose rules can fail; with each absent or 0 (and no total given) a call's counts always add up.
COUNTS_BOUND_BY_OTHERS = ("cache_write_1h_tokens", "cache_read_tokens", "cache_write_tokens", "reasoning_tokens")


def any_token_totals_problem(records: list[dict[str, Any]]) -> bool:
    """Whether `token_totals_problem` finds one in any of these records, whose counts are non-negative ints.

    Most batches give only input and output tokens: that is seen column by column, without a call per record."""
    if any(map(dict.__contains__, records, repeat("total_tokens"))) or any(
            any(map(dict.get, records, repeat(name))) for name in COUNTS_BOUND_BY_OTHERS):
        return any(map(token_totals_problem, records))
    return False


class AttemptRecord(BaseModel):
    """The tracker's write-ahead record of a call about to be made: `{"record": "attempt", ...}` in a journal."""

    model_config = ConfigDict(extra="ignore")

    record: str
    attempt_id: Name = Field(min_length=1, max_length=200)
    ts: UtcTime
    user_id: Name | None = Field(default=None, max_length=500)
    tenant_id: Name | None = Field(default=None, max_length=500)
    use_case: Name | None = Field(default=None, max_length=500)
    account_type: Name | None = Field(default=None, max_length=200)
    provider: Name | None = Field(default=None, max_length=200)
    model: Name | None = Field(default=None, max_length=500)
    estimated_tokens: Count | None = None
    source: Name | None = Field(default=None, max_length=1000)


# A record missing any of these is stored under "(unattributed)" when it carries usage (its tokens were spent).
IDENTITY_FIELDS = ("user_id", "tenant_id", "use_case")


def whole_number_or_none(value: Any) -> int | None:
    """A raw record's count as a non-negative int, or None when it is not one."""
    try:
        number = int(value)
    except (TypeError, ValueError, OverflowError):
        return None
    return number if 0 <= number < 2**62 else None


def has_usage(obj: dict[str, Any]) -> bool:
    """Whether a raw record reports spent tokens or a cost: without identity it is still stored, unattributed."""
    return any(whole_number_or_none(obj.get(name)) for name in (*TOKEN_FIELDS, "total_tokens", "estimated_tokens")) or bool(
        obj.get("cost_usd") not in (None, "", 0, "0")
    )


def describe_validation_error(error: ValidationError) -> str:
    """One line naming each bad field and its problem, for failed_logs and CLI output."""
    parts = []
    for item in error.errors(include_url=False):
        where = ".".join(str(p) for p in item["loc"]) or "record"
        parts.append(f"{where}: {item['msg']}")
    return "; ".join(parts)
