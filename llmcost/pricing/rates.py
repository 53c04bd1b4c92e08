"""The exact cost of a usage event, from price overrides, the genai-prices table or a default rate.

An event is priced by the first of these that applies:

1. an override from the price-override file (`price_source='override'`);
2. the genai-prices table bundled with the installed package, at the prices in force on the event's
   timestamp (`'price-table'`). The table is never refreshed over the network, so a cost is reproducible;
3. `default_rate_per_mtok` on every token (`'default-rate'`): no model, a model or provider the table
   does not know, or a table entry priced by something a token count cannot carry (audio hours, pages).
   Pricing never fails on odd provider or model strings; a negative token count is a caller bug and
   raises ValueError.

Token counts follow the OpenTelemetry GenAI conventions: `input_tokens` is the whole input including
cache reads and writes, `output_tokens` includes reasoning. `llmcost.sdk.usage` turns the figures each
provider reports into that form. Cached tokens are billed at the cache rates and the rest of the input
at the input rate; a rate may depend on the call's total input tokens (long-context tiers).

When a source knows only `total_tokens` (input and output both 0), a table or override price charges
the total at the higher of the model's input and output rates, which is the output rate for every chat
model: an upper bound, so the real bill is never above what llmcost shows.

The price-override file is described in `llmcost.pricing.overrides`.

Keys match the event's model (or the served model, or the table's id for either) case-insensitively,
and a "provider/model" key wins over a "model" key. Overrides win over the table.

An event's served model (`response_model`, e.g. a dated snapshot) is priced when the overrides or the
table know it, else its requested `model`. A `service_tier` other than default/standard/auto is priced
by the table's price for that tier (OpenAI's flex and priority, batch processing) where the table has
one; otherwise at the standard price, which `carries_service_tier` reports so `llmcost check` can flag it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from decimal import Decimal
from functools import cached_property
from pathlib import Path
from typing import Any

from genai_prices import data_snapshot
from genai_prices.types import ConditionalPrice, ModelInfo, ModelPrice, TieredPrices, TimeOfDateConstraint

from llmcost.pricing.cost import EXACT as _EXACT
from llmcost.pricing.cost import ZERO, Tokens, priced_cost
from llmcost.pricing.overrides import OverridePrice, OverrideTier, load_overrides, parse_overrides, price_value
from llmcost.providers import canonical_provider

__all__ = ["Price", "Pricer", "OverridePrice", "OverrideTier", "load_overrides", "canonical_provider"]

PRICE_TABLE = "price-table"
OVERRIDE = "override"
DEFAULT_RATE = "default-rate"

INT64_SAFE = 2**62

# Service tiers billed at the standard price; any other tier is priced by the table's variant for it.
STANDARD_SERVICE_TIERS = ("default", "standard", "auto")
_MAX_CACHED_LOOKUPS = 10_000


@dataclass(frozen=True)
class Price:
    """The cost of one event.

    `cost_usd` is exact, rounded half-even to 12 decimal places (the store's DECIMAL(18,12)).
    `price_source` is 'price-table', 'override' or 'default-rate'; `priced_model` is the table's
    model id or the override key that matched, None for the default rate.
    """

    cost_usd: Decimal
    price_source: str
    priced_model: str | None


@dataclass(frozen=True)
class _Rate:
    """USD per million tokens; above a tier's start (in total input tokens) the tier's price applies."""

    base: Decimal
    tiers: tuple[tuple[int, Decimal], ...] = ()

    @classmethod
    def of(cls, price: Decimal | TieredPrices | None) -> _Rate | None:
        if price is None:
            return None
        if isinstance(price, TieredPrices):
            return cls(price.base, tuple(sorted((tier.start, tier.price) for tier in price.tiers)))
        return cls(price)

    def at(self, input_tokens: int) -> Decimal:
        for start, price in reversed(self.tiers):
            if input_tokens > start:
                return price
        return self.base

    def in_pico_per_token(self) -> tuple[int, tuple[tuple[int, int], ...]] | None:
        """The rate as whole pico-dollars per token, or None when that is not a whole number."""
        base = _pico_per_token(self.base)
        tiers = tuple((start, _pico_per_token(price)) for start, price in self.tiers)
        if base is None or any(price is None for _, price in tiers):
            return None
        return base, tiers


def _pico_per_token(usd_per_mtok: Decimal) -> int | None:
    scaled = usd_per_mtok.scaleb(6, context=_EXACT)
    return int(scaled) if scaled == scaled.to_integral_value(context=_EXACT) else None


@dataclass(frozen=True, eq=False)
class Rates:
    """Everything needed to price one model's tokens; a missing cache or reasoning rate bills those
    tokens as plain input or output, as genai-prices does."""

    source: str
    priced_model: str | None
    input: _Rate
    output: _Rate
    cache_read: _Rate | None = None
    cache_write: _Rate | None = None
    reasoning: _Rate | None = None
    cache_write_1h: _Rate | None = None
    per_call_usd: Decimal = ZERO
    every_token_alike: bool = False

    @cached_property
    def in_pico(self) -> dict[str, Any] | None:
        """The rates in whole pico-dollars for integer arithmetic, or None when one is finer than that."""
        rates = {
            name: rate.in_pico_per_token() if rate is not None else None
            for name, rate in (("input", self.input), ("output", self.output), ("cache_read", self.cache_read),
                               ("cache_write", self.cache_write), ("reasoning", self.reasoning),
                               ("cache_write_1h", self.cache_write_1h))
        }
        per_call = self.per_call_usd.scaleb(12, context=_EXACT)
        if any(rates[name] is None and getattr(self, name) is not None for name in rates):
            return None
        if per_call != per_call.to_integral_value(context=_EXACT):
            return None
        highest = max(
            max([rate[0], *(price for _, price in rate[1])]) for rate in rates.values() if rate is not None
        )
        return {**rates, "per_call": int(per_call), "highest": highest}


def prices_vary_within_a_day(model: ModelInfo) -> bool:
    return isinstance(model.prices, list) and any(
        isinstance(p, ConditionalPrice) and isinstance(p.constraint, TimeOfDateConstraint) for p in model.prices
    )


class Pricer:
    """Prices usage events; build one and reuse it, since it caches every lookup.

    `default_rate_per_mtok` (USD per million tokens) prices what neither the overrides nor the table
    know. `overrides` maps "provider/model" or "model" keys to {input_mtok, output_mtok, cache_read_mtok,
    cache_write_mtok}, as in the override file; it wins over entries from `overrides_file`.
    """

    def __init__(
        self,
        *,
        default_rate_per_mtok: Decimal = Decimal("5.00"),
        overrides: Mapping[str, Any] | None = None,
        overrides_file: Path | None = None,
    ) -> None:
        rate = price_value(default_rate_per_mtok, "default_rate_per_mtok")
        self.default_rate_per_mtok = rate
        self._default = Rates(DEFAULT_RATE, None, _Rate(rate), _Rate(rate), every_token_alike=True)
        found = load_overrides(Path(overrides_file)) if overrides_file is not None else {}
        found.update(parse_overrides(overrides or {}, "overrides"))
        self.overrides: dict[str, OverridePrice] = found
        self._override_rates = {key: _override_rates(entry) for key, entry in found.items()}
        self._lookups: dict[tuple[Any, Any], Rates | ModelInfo] = {}
        self._table_rates: dict[tuple, tuple[ModelPrice, Rates]] = {}
        # (provider, model, response_model, service_tier) -> the UTC date and the rates that day, for `price`
        self._rates_of_day: dict[tuple, tuple[Any, Rates]] = {}

    @classmethod
    def from_settings(cls, settings) -> Pricer:
        """A pricer with the default rate and override file of `llmcost.config.Settings`."""
        return cls(default_rate_per_mtok=settings.default_rate_per_mtok, overrides_file=settings.price_overrides_file)

    def price(
        self,
        *,
        provider: str | None,
        model: str | None,
        ts: datetime,
        input_tokens: int = 0,
        output_tokens: int = 0,
        cache_read_tokens: int = 0,
        cache_write_tokens: int = 0,
        reasoning_tokens: int = 0,
        total_tokens: int | None = None,
        cache_write_1h_tokens: int = 0,
        response_model: str | None = None,
        service_tier: str | None = None,
    ) -> Price:
        """The cost of one call made at `ts` (naive means UTC), token counts as in `UsageEvent`;
        `response_model` is the model the response names, `service_tier` the tier that served it."""
        tokens = Tokens.of(input_tokens=input_tokens, output_tokens=output_tokens, cache_read_tokens=cache_read_tokens,
                            cache_write_tokens=cache_write_tokens, reasoning_tokens=reasoning_tokens,
                            total_tokens=total_tokens, cache_write_1h_tokens=cache_write_1h_tokens)
        utc = _utc(ts)
        key = (provider, model, response_model, service_tier)
        try:
            day, rates = self._rates_of_day.get(key) or (None, None)
        except TypeError:  # an unhashable name: looked up as it always is
            key, day = None, None
        if day != utc.date():
            found = self.lookup(provider, model, response_model)
            rates = self.rates_at(found, utc, service_tier)
            # A table's prices change at UTC dates (genai-prices' start dates) unless they change within a day.
            if key is not None and _tier_context(service_tier) is None and (
                    isinstance(found, Rates) or not prices_vary_within_a_day(found)):
                if len(self._rates_of_day) >= _MAX_CACHED_LOOKUPS:
                    self._rates_of_day.clear()
                self._rates_of_day[key] = (utc.date(), rates)
        return Price(priced_cost(rates, tokens), rates.source, rates.priced_model)

    def carries_service_tier(self, *, provider: str | None, model: str | None, ts: datetime,
                             service_tier: str | None, response_model: str | None = None) -> bool:
        """Whether the call's service tier has its own price here (a standard tier always has)."""
        context = _tier_context(service_tier)
        if context is None:
            return True
        found = self.lookup(provider, model, response_model)
        return isinstance(found, ModelInfo) and bool(_tier_variants(found, _utc(ts), context))


    def lookup(self, provider: Any, model: Any, response_model: Any = None) -> Rates | ModelInfo:
        """The override or default rates, or the table's model (whose price depends on the date)."""
        key = tuple(value if isinstance(value, str) else None for value in (provider, model, response_model))
        if key in self._lookups:
            return self._lookups[key]
        if len(self._lookups) >= _MAX_CACHED_LOOKUPS:
            self._lookups.clear()
        found = self._resolve(*key)
        self._lookups[key] = found
        return found

    def _resolve(self, provider: str | None, model: str | None, response_model: str | None) -> Rates | ModelInfo:
        """The served model's price where known (a dated snapshot may differ), else the requested one's."""
        names = list(dict.fromkeys(name.strip().lower() for name in (response_model, model) if name and name.strip()))
        if not names:
            return self._default
        vendor = canonical_provider(provider)
        for name in names:
            override = self._override(vendor, name)
            if override is not None:
                return override
        for name in names:
            found = _find_in_table(vendor, name)
            if found is not None:
                return self._override(vendor, found.id.lower()) or found
        return self._default

    def _override(self, vendor: str | None, model_name: str) -> Rates | None:
        for key in (f"{vendor}/{model_name}" if vendor else None, model_name):
            if key in self._override_rates:
                return self._override_rates[key]
        return None

    def rates_at(self, found: Rates | ModelInfo, ts: datetime, service_tier: Any = None) -> Rates:
        if isinstance(found, Rates):
            return found
        model_price = found.get_prices(ts)
        context = _tier_context(service_tier)
        variants = _tier_variants(found, ts, context) if context is not None else ()
        key = (id(model_price), tuple(id(variant) for variant in variants))
        cached = self._table_rates.get(key)
        if cached is not None and cached[0] is model_price:
            return cached[1]
        resolved = found.get_prices(ts, context) if variants else model_price
        rates = _rates_from_table(found.id, resolved) or self._default
        self._table_rates[key] = (model_price, rates)
        return rates


GROUP_COLUMNS = ("provider", "model", "response_model", "service_tier")


def _tier_context(service_tier: Any) -> dict[str, str] | None:
    """genai-prices' price context of a service tier; None for the standard tiers."""
    if not isinstance(service_tier, str) or service_tier.strip().lower() in ("", *STANDARD_SERVICE_TIERS):
        return None
    tier = service_tier.strip().lower()
    return {"processing": "batch"} if tier == "batch" else {"service_tier": tier}


def _tier_variants(model: ModelInfo, ts: datetime, context: Mapping[str, str]) -> tuple:
    """The table's price variants for this tier in force at `ts` that change a price."""
    return tuple(
        variant for variant in model.price_variants or ()
        if (variant.constraint is None or variant.constraint.active(ts))
        and all(context.get(k) == v for k, v in variant.when.items())
        and any(price is not None for price in variant.prices.__dict__.values())
    )


def _utc(ts: datetime) -> datetime:
    if not isinstance(ts, datetime):
        raise TypeError(f"ts must be a datetime, got {type(ts).__name__} ({ts!r})")
    return ts.replace(tzinfo=timezone.utc) if ts.tzinfo is None else ts.astimezone(timezone.utc)


def _find_in_table(vendor: str | None, model_name: str) -> ModelInfo | None:
    snapshot = data_snapshot.get_snapshot()
    attempts = [(vendor, model_name)]
    # LiteLLM-style "anthropic/claude-..." names carry their provider in front.
    prefix, slash, rest = model_name.partition("/")
    if slash and rest and vendor in (None, canonical_provider(prefix)):
        attempts.append((canonical_provider(prefix), rest))
    for provider_id, model_ref in attempts:
        try:
            return snapshot.find_provider_model(model_ref, None, provider_id, None)[1]
        except (LookupError, ValueError):
            continue
    return None


def _rates_from_table(model_id: str, model_price: ModelPrice) -> Rates | None:
    """The token rates of a table price; None when the table prices the model by something else."""
    prices = {k: v for k, v in model_price.__dict__.items() if v is not None and not k.startswith("_")}
    if prices and "input_mtok" not in prices and "output_mtok" not in prices:
        return None
    requests_kcount = prices.get("requests_kcount")
    return Rates(
        PRICE_TABLE,
        model_id,
        input=_Rate.of(prices.get("input_mtok")) or _Rate(ZERO),
        output=_Rate.of(prices.get("output_mtok")) or _Rate(ZERO),
        cache_read=_Rate.of(prices.get("cache_read_mtok")),
        cache_write=_Rate.of(prices.get("cache_write_mtok")),
        reasoning=_Rate.of(prices.get("output_reasoning_mtok")),
        cache_write_1h=_Rate.of(prices.get("cache_write_1h_mtok")),
        per_call_usd=requests_kcount / 1000 if isinstance(requests_kcount, Decimal) else ZERO,
    )


def _override_rates(entry: OverridePrice) -> Rates:
    def rate(name: str) -> _Rate:
        base = getattr(entry, name)
        if base is None:  # cache_write_1h_mtok left out: 1-hour writes cost what other writes do
            base = entry.cache_write_mtok
        return _Rate(base, tuple((tier.above_input_tokens, getattr(tier, name)) for tier in entry.tiers))

    return Rates(OVERRIDE, entry.key, input=rate("input_mtok"), output=rate("output_mtok"),
                  cache_read=rate("cache_read_mtok"), cache_write=rate("cache_write_mtok"),
                  cache_write_1h=rate("cache_write_1h_mtok"))


