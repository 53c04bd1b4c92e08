"""The price-override file: the user's own prices, flat or tiered, checked so that no price is guessed.

Price-override file (TOML), named by `price_overrides = "prices.toml"` in llmcost.toml:

    [models."self-hosted/llama-3-70b"]   # "provider/model", or just "model" to match any provider
    input_mtok = "0.50"                  # USD per million tokens; quote prices so they stay exact
    output_mtok = "1.50"
    cache_read_mtok = "0.05"             # optional, defaults to input_mtok
    cache_write_mtok = "0.60"            # optional, defaults to input_mtok
    cache_write_1h_mtok = "0.80"         # optional (Anthropic's 1-hour cache writes), defaults to cache_write_mtok

    [[models."self-hosted/llama-3-70b".tiers]]   # optional: rates for calls above a number of input tokens
    above_input_tokens = 200000          # the tier's rates apply to every token of a call with more input
    input_mtok = "1.00"                  # input_mtok and output_mtok are required in a tier, and so is
    output_mtok = "3.00"                 # each cache rate the model's base prices name
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

from llmcost.errors import ConfigError
from llmcost.providers import canonical_provider

__all__ = ["OverridePrice", "OverrideTier", "load_overrides", "parse_overrides", "price_value"]

_OVERRIDE_KEYS = ("input_mtok", "output_mtok", "cache_read_mtok", "cache_write_mtok", "cache_write_1h_mtok")
_TIER_KEY = "above_input_tokens"


@dataclass(frozen=True)
class OverrideTier:
    """An override's rates for calls with more than `above_input_tokens` input tokens (every token of the call)."""

    above_input_tokens: int
    input_mtok: Decimal
    output_mtok: Decimal
    cache_read_mtok: Decimal
    cache_write_mtok: Decimal
    cache_write_1h_mtok: Decimal


@dataclass(frozen=True)
class OverridePrice:
    """One entry of the price-override file, USD per million tokens, cache prices filled in."""

    key: str
    input_mtok: Decimal
    output_mtok: Decimal
    cache_read_mtok: Decimal
    cache_write_mtok: Decimal
    cache_write_1h_mtok: Decimal | None = None  # None: as cache_write_mtok
    tiers: tuple[OverrideTier, ...] = ()


def load_overrides(path: Path) -> dict[str, OverridePrice]:
    """Read a price-override file (format in the module docstring), keyed by lower-case model key."""
    path = Path(path)
    try:
        with path.open("rb") as f:
            raw = tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(
            f"price overrides file not found: {path} (create it, or fix price_overrides in llmcost.toml)"
        ) from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: invalid TOML: {e}") from None
    except OSError as e:
        raise ConfigError(f"cannot read price overrides file {path}: {e.strerror}") from None
    unknown = sorted(set(raw) - {"models"})
    if unknown:
        raise ConfigError(
            f"{path}: unknown key {unknown[0]!r}; prices go in tables named "
            '[models."provider/model"] or [models."model"]'
        )
    models = raw.get("models", {})
    if not isinstance(models, dict):
        raise ConfigError(f'{path}: models must be tables such as [models."provider/model"]')
    return parse_overrides(models, str(path))


def parse_overrides(models: Mapping[str, Any], where: str) -> dict[str, OverridePrice]:
    parsed: dict[str, OverridePrice] = {}
    for key, spec in models.items():
        if isinstance(spec, OverridePrice):
            parsed[_override_key(spec.key, where)] = spec
            continue
        name = f'models."{key}"'
        if not isinstance(spec, Mapping):
            raise ConfigError(f"{where}: {name} must be a table with input_mtok and output_mtok")
        prices = _prices_of(spec, name, where, allowed=(*_OVERRIDE_KEYS, "tiers"),
                            required=("input_mtok", "output_mtok"))
        tiers_spec = spec.get("tiers", [])
        if not isinstance(tiers_spec, list) or not all(isinstance(t, Mapping) for t in tiers_spec):
            raise ConfigError(f'{where}: {name}.tiers must be tables: [[models."{key}".tiers]]')
        canonical = _override_key(key, where)
        if canonical in parsed:
            raise ConfigError(f"{where}: {name} is listed twice (keys match case-insensitively)")
        base = OverridePrice(
            key=key,
            input_mtok=prices["input_mtok"],
            output_mtok=prices["output_mtok"],
            cache_read_mtok=prices.get("cache_read_mtok", prices["input_mtok"]),
            cache_write_mtok=prices.get("cache_write_mtok", prices["input_mtok"]),
            cache_write_1h_mtok=prices.get("cache_write_1h_mtok"),
        )
        tiers = [_parse_tier(tier, set(prices), f"{name}.tiers[{n}]", where) for n, tier in enumerate(tiers_spec)]
        starts = [tier.above_input_tokens for tier in tiers]
        if len(set(starts)) != len(starts):
            raise ConfigError(f"{where}: {name}.tiers has two tiers with the same {_TIER_KEY}")
        ordered = tuple(sorted(tiers, key=lambda tier: tier.above_input_tokens))
        parsed[canonical] = OverridePrice(**{**base.__dict__, "tiers": ordered})
    return parsed


def _prices_of(spec: Mapping[str, Any], name: str, where: str, *, allowed: tuple[str, ...],
               required: tuple[str, ...]) -> dict[str, Decimal]:
    unknown = sorted(set(spec) - set(allowed))
    if unknown:
        raise ConfigError(f"{where}: {name}.{unknown[0]} is not a price key (use {', '.join(allowed)})")
    for key in required:
        if key not in spec:
            example = "200000" if key == _TIER_KEY else '"<USD per million tokens>"'
            raise ConfigError(f"{where}: {name} lacks {key} (add {key} = {example})")
    return {k: price_value(spec[k], f"{where}: {name}.{k}") for k in _OVERRIDE_KEYS if k in spec}


def _parse_tier(spec: Mapping[str, Any], named: set[str], name: str, where: str) -> OverrideTier:
    """A tier names every rate its model's base prices name, so no rate above the threshold is guessed."""
    required = (_TIER_KEY, "input_mtok", "output_mtok", *(k for k in _OVERRIDE_KEYS[2:] if k in named))
    prices = _prices_of(spec, name, where, allowed=(_TIER_KEY, *_OVERRIDE_KEYS), required=required)
    start = spec[_TIER_KEY]
    if isinstance(start, bool) or not isinstance(start, int) or start < 0:
        raise ConfigError(f"{where}: {name}.{_TIER_KEY} = {start!r} must be a whole number of input tokens >= 0")
    write = prices.get("cache_write_mtok", prices["input_mtok"])
    return OverrideTier(start, prices["input_mtok"], prices["output_mtok"],
                        prices.get("cache_read_mtok", prices["input_mtok"]), write,
                        prices.get("cache_write_1h_mtok", write))


def _override_key(key: Any, where: str) -> str:
    if not isinstance(key, str) or not key.strip():
        raise ConfigError(f'{where}: empty model key; name the model as [models."provider/model"]')
    name = key.strip().lower()
    prefix, slash, rest = name.partition("/")
    return f"{canonical_provider(prefix)}/{rest}" if slash and prefix and rest else name


def price_value(value: Any, where: str) -> Decimal:
    if isinstance(value, bool) or not isinstance(value, (str, int, float, Decimal)):
        raise ConfigError(f'{where}: {value!r} is not a price; write USD per million tokens, e.g. "0.50"')
    try:
        price = Decimal(str(value).strip())
    except InvalidOperation:
        raise ConfigError(f'{where}: {value!r} is not a number; write USD per million tokens, e.g. "0.50"') from None
    if not price.is_finite() or price < 0:
        raise ConfigError(f"{where}: {value!r} must be a finite price >= 0")
    return price
