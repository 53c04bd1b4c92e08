"""The usage event: one row per LLM call, the public record every writer produces."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

PRICE_SOURCES = ("provider", "price-table", "override", "default-rate")
UNATTRIBUTED = "(unattributed)"
TOKEN_FIELDS = (
    "input_tokens",
    "output_tokens",
    "cache_read_tokens",
    "cache_write_tokens",
    "reasoning_tokens",
)
# A single call above this many tokens is a data error, not a real call (largest context windows are ~10M).
MAX_TOKENS_PER_CALL = 1_000_000_000
EARLIEST_TS = datetime(2015, 1, 1, tzinfo=timezone.utc)
MAX_CLOCK_SKEW = timedelta(days=1)


class UsageEvent(BaseModel):
    """One LLM call's usage.

    `input_tokens` is the whole input including cached tokens and `output_tokens` includes reasoning
    tokens (OpenTelemetry GenAI conventions). `total_tokens` may be given alone when a source only
    knows a total. `cost_usd` is computed by `llmcost.pricing` when absent; `price_source` says how.
    """

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    event_id: str = Field(default_factory=lambda: str(uuid.uuid4()), min_length=1, max_length=200)
    ts: datetime
    user_id: str = Field(min_length=1, max_length=500)
    tenant_id: str = Field(min_length=1, max_length=500)
    use_case: str = Field(min_length=1, max_length=500)
    account_type: str | None = Field(default=None, max_length=200)
    provider: str | None = Field(default=None, max_length=200)
    model: str | None = Field(default=None, max_length=500)
    input_tokens: int = Field(default=0, ge=0, le=MAX_TOKENS_PER_CALL)
    output_tokens: int = Field(default=0, ge=0, le=MAX_TOKENS_PER_CALL)
    cache_read_tokens: int = Field(default=0, ge=0, le=MAX_TOKENS_PER_CALL)
    cache_write_tokens: int = Field(default=0, ge=0, le=MAX_TOKENS_PER_CALL)
    reasoning_tokens: int = Field(default=0, ge=0, le=MAX_TOKENS_PER_CALL)
    total_tokens: int | None = Field(default=None, ge=0, le=MAX_TOKENS_PER_CALL)
    estimated_tokens: int | None = Field(default=None, ge=0, le=MAX_TOKENS_PER_CALL)
    usage_estimated: bool = False
    latency_ms: float | None = Field(default=None, ge=0, allow_inf_nan=False)
    status: Literal["ok", "error"] = "ok"
    error: str | None = Field(default=None, max_length=10_000)
    cost_usd: Decimal | None = Field(default=None, ge=0, allow_inf_nan=False, max_digits=18, decimal_places=12)
    price_source: Literal["provider", "price-table", "override", "default-rate"] | None = None
    attempt_id: str | None = Field(default=None, max_length=200)
    source: str | None = Field(default=None, max_length=1000)
    metadata: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _null_means_absent(cls, data: Any) -> Any:
        # {"input_tokens": null} reads as "not given", as in most JSON APIs; the bulk path does the same.
        if isinstance(data, dict) and None in data.values():
            return {k: v for k, v in data.items() if v is not None}
        return data

    @field_validator("ts")
    @classmethod
    def _aware_utc(cls, value: datetime) -> datetime:
        if value.tzinfo is None:
            return value.replace(tzinfo=timezone.utc)
        return value.astimezone(timezone.utc)

    @field_validator("ts")
    @classmethod
    def _plausible_time(cls, value: datetime) -> datetime:
        if value < EARLIEST_TS:
            raise ValueError(f"{value.isoformat()} is before {EARLIEST_TS.date()}: not a real LLM call")
        latest = datetime.now(timezone.utc) + MAX_CLOCK_SKEW
        if value > latest:
            raise ValueError(f"{value.isoformat()} is in the future (more than {MAX_CLOCK_SKEW} ahead of now)")
        return value

    @field_validator(
        "event_id", "user_id", "tenant_id", "use_case", "account_type", "provider", "model", "error",
        "attempt_id", "source",
    )
    @classmethod
    def _no_nul(cls, value: str | None) -> str | None:
        if value is not None and "\x00" in value:
            raise ValueError("contains a NUL character")
        return value

    @model_validator(mode="after")
    def _totals(self) -> UsageEvent:
        if self.cache_read_tokens + self.cache_write_tokens > self.input_tokens and self.input_tokens:
            raise ValueError(
                "cache_read_tokens + cache_write_tokens exceed input_tokens "
                "(input_tokens must include cached tokens)"
            )
        if self.reasoning_tokens > self.output_tokens and self.output_tokens:
            raise ValueError("reasoning_tokens exceed output_tokens (output_tokens must include reasoning tokens)")
        parts = self.input_tokens + self.output_tokens
        if self.total_tokens is None:
            self.total_tokens = parts
        elif parts and self.total_tokens < parts:
            raise ValueError(f"total_tokens {self.total_tokens} is less than input + output tokens ({parts})")
        if self.cost_usd is not None and self.price_source is None:
            self.price_source = "provider"
        return self

    @property
    def tokens_split_known(self) -> bool:
        """False when the source gave only a total, so input/output cannot be priced separately."""
        return bool(self.input_tokens or self.output_tokens) or not self.total_tokens


def describe_validation_error(error: ValidationError) -> str:
    """One line naming each bad field and its problem, for failed_logs and CLI output."""
    parts = []
    for item in error.errors(include_url=False):
        where = ".".join(str(p) for p in item["loc"]) or "record"
        parts.append(f"{where}: {item['msg']}")
    return "; ".join(parts)
