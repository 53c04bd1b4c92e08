"""The arithmetic of a call's cost: token counts completed, times the rates, exact to the pico-dollar.

`priced_cost` is what `Pricer.price` charges: in whole pico-dollars with integers where every rate is a whole
number of pico-dollars a token (the same sums, so the same number), else in Decimal at 60 digits, rounded
half-even to 12 places (the store's DECIMAL(18, 12)).
"""

from __future__ import annotations

from decimal import ROUND_HALF_EVEN, Context, Decimal, localcontext
from typing import Any, NamedTuple, Protocol

_PICO_EXPONENT = 12
_PICO = Decimal(1).scaleb(-_PICO_EXPONENT)
_MILLION = Decimal(1_000_000)
ZERO = Decimal(0)
# Token counts up to 1e9 times prices with up to ~20 digits need far more than the default 28 digits.
EXACT = Context(prec=60)


class Rates(Protocol):
    """What pricing needs of one model's rates (`llmcost.pricing.rates.Rates`), named here so that the
    arithmetic does not import the table that calls it."""

    input: Any
    output: Any
    cache_read: Any
    cache_write: Any
    reasoning: Any
    cache_write_1h: Any
    per_call_usd: Decimal
    every_token_alike: bool

    @property
    def in_pico(self) -> dict[str, Any] | None: ...


class Tokens(NamedTuple):  # a tuple: built twice per tracked call, several times faster than a frozen dataclass
    input: int
    output: int
    cache_read: int
    cache_write: int
    reasoning: int
    total: int
    cache_write_1h: int = 0  # counted inside cache_write

    @classmethod
    def of(cls, *, input_tokens: int, output_tokens: int, cache_read_tokens: int, cache_write_tokens: int,
           reasoning_tokens: int, total_tokens: int | None, cache_write_1h_tokens: int = 0) -> Tokens:
        if min(input_tokens, output_tokens, cache_read_tokens, cache_write_tokens, reasoning_tokens,
               total_tokens or 0, cache_write_1h_tokens or 0) < 0:
            given = {"input_tokens": input_tokens, "output_tokens": output_tokens,
                     "cache_read_tokens": cache_read_tokens, "cache_write_tokens": cache_write_tokens,
                     "reasoning_tokens": reasoning_tokens, "total_tokens": total_tokens or 0,
                     "cache_write_1h_tokens": cache_write_1h_tokens or 0}
            name, value = next((name, value) for name, value in given.items() if value < 0)
            raise ValueError(f"{name} is negative ({value}); token counts must be >= 0 (fix the caller)")
        # A source that reports cached or reasoning tokens but not the whole count still used them.
        cache_write = max(int(cache_write_tokens), int(cache_write_1h_tokens or 0))
        whole_input = max(int(input_tokens), int(cache_read_tokens) + cache_write)
        whole_output = max(int(output_tokens), int(reasoning_tokens))
        return cls(whole_input, whole_output, int(cache_read_tokens), cache_write, int(reasoning_tokens),
                   max(int(total_tokens or 0), whole_input + whole_output), int(cache_write_1h_tokens or 0))

    @property
    def total_only(self) -> bool:
        return self.input == 0 and self.output == 0 and self.total > 0


def exact_cost(rates: Rates, tokens: Tokens) -> Decimal:
    with localcontext(EXACT):
        if rates.every_token_alike:
            return tokens.total * rates.input.base / _MILLION
        per_call = rates.per_call_usd if tokens.total else ZERO
        if tokens.total_only:
            rate = max(rates.input.at(tokens.total), rates.output.at(tokens.total))
            return tokens.total * rate / _MILLION + per_call
        units = ZERO
        plain_input = tokens.input
        if rates.cache_read is not None:
            units += tokens.cache_read * rates.cache_read.at(tokens.input)
            plain_input -= tokens.cache_read
        # 1-hour writes are part of cache_write and have their own rate where one is known.
        one_hour = tokens.cache_write_1h if rates.cache_write_1h is not None else 0
        if one_hour:
            units += one_hour * rates.cache_write_1h.at(tokens.input)
            plain_input -= one_hour
        if rates.cache_write is not None:
            units += (tokens.cache_write - one_hour) * rates.cache_write.at(tokens.input)
            plain_input -= tokens.cache_write - one_hour
        plain_output = tokens.output
        if rates.reasoning is not None:
            units += tokens.reasoning * rates.reasoning.at(tokens.input)
            plain_output -= tokens.reasoning
        units += plain_input * rates.input.at(tokens.input) + plain_output * rates.output.at(tokens.input)
        return units / _MILLION + per_call


def _pico_at(rate: tuple[int, tuple[tuple[int, int], ...]], input_tokens: int) -> int:
    """`_Rate.at` on a rate in whole pico-dollars per token."""
    base, tiers = rate
    for start, price in reversed(tiers):
        if input_tokens > start:
            return price
    return base


def pico_cost(rates: Rates, tokens: Tokens) -> int | None:
    """`exact_cost` in whole pico-dollars with integer arithmetic (the same sums, so the same number), or None
    when a rate is finer than a pico-dollar a token and only Decimal arithmetic is exact."""
    pico = rates.in_pico
    if pico is None:
        return None
    if rates.every_token_alike:
        return tokens.total * pico["input"][0]
    per_call = pico["per_call"] if tokens.total else 0
    if tokens.total_only:
        return tokens.total * max(_pico_at(pico["input"], tokens.total), _pico_at(pico["output"], tokens.total)) + per_call
    cost = 0
    plain_input = tokens.input
    if pico["cache_read"] is not None:
        cost += tokens.cache_read * _pico_at(pico["cache_read"], tokens.input)
        plain_input -= tokens.cache_read
    one_hour = tokens.cache_write_1h if pico["cache_write_1h"] is not None else 0
    if one_hour:
        cost += one_hour * _pico_at(pico["cache_write_1h"], tokens.input)
        plain_input -= one_hour
    if pico["cache_write"] is not None:
        cost += (tokens.cache_write - one_hour) * _pico_at(pico["cache_write"], tokens.input)
        plain_input -= tokens.cache_write - one_hour
    plain_output = tokens.output
    if pico["reasoning"] is not None:
        cost += tokens.reasoning * _pico_at(pico["reasoning"], tokens.input)
        plain_output -= tokens.reasoning
    cost += plain_input * _pico_at(pico["input"], tokens.input) + plain_output * _pico_at(pico["output"], tokens.input)
    return cost + per_call


def priced_cost(rates: Rates, tokens: Tokens) -> Decimal:
    """`rounded_to_pico(exact_cost(rates, tokens))`, from whole pico-dollars where the rates allow (a Decimal of
    the same digits and exponent: `tests/test_pricing_pico.py` compares the two over the whole table)."""
    cost = pico_cost(rates, tokens)
    if cost is None:
        return rounded_to_pico(exact_cost(rates, tokens))
    return EXACT.multiply(cost, _PICO)  # exact: the coefficient `cost`, the exponent -12


def rounded_to_pico(cost: Decimal) -> Decimal:
    return cost.quantize(_PICO, rounding=ROUND_HALF_EVEN, context=EXACT)
