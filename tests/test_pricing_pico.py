"""The tracker prices a call in whole pico-dollars where the rates allow (`llmcost.pricing.cost.priced_cost`):
the same Decimal, digit for digit and exponent, as the exact Decimal sum rounded to 12 places, for every
model of the bundled price table, override tiers, and rates too fine for whole pico-dollars."""

import datetime as dt
from decimal import Decimal

import pytest
from genai_prices import data_snapshot

from llmcost.pricing.cost import Tokens, exact_cost, pico_cost, priced_cost, rounded_to_pico
from llmcost.pricing.rates import Pricer

NOW = dt.datetime(2026, 6, 1, tzinfo=dt.timezone.utc)
TOKEN_CASES = [
    dict(input_tokens=120, output_tokens=30, cache_read_tokens=0, cache_write_tokens=0, reasoning_tokens=0),
    dict(input_tokens=0, output_tokens=0, cache_read_tokens=0, cache_write_tokens=0, reasoning_tokens=0),
    dict(input_tokens=300_000, output_tokens=9_000, cache_read_tokens=100_000, cache_write_tokens=50_000,
         reasoning_tokens=4_000, cache_write_1h_tokens=20_000),
    dict(input_tokens=7, output_tokens=3, cache_read_tokens=7, cache_write_tokens=0, reasoning_tokens=3),
    dict(input_tokens=0, output_tokens=0, cache_read_tokens=0, cache_write_tokens=0, reasoning_tokens=0,
         total_tokens=4_321),
    dict(input_tokens=1_000_000_000, output_tokens=1_000_000_000, cache_read_tokens=10, cache_write_tokens=10,
         reasoning_tokens=10, cache_write_1h_tokens=10),
    dict(input_tokens=1, output_tokens=0, cache_read_tokens=0, cache_write_tokens=0, reasoning_tokens=0),
]


def _every_table_rates(pricer: Pricer):
    for provider in data_snapshot.get_snapshot().providers:
        for model in provider.models:
            for tier in (None, "flex", "priority", "batch"):
                yield f"{provider.id}/{model.id}/{tier}", pricer.rates_at(model, NOW, tier)


def test_pico_cost_is_the_exact_cost_for_every_table_model():
    pricer = Pricer()
    compared = 0
    for name, rates in _every_table_rates(pricer):
        for case in TOKEN_CASES:
            tokens = Tokens.of(total_tokens=case.get("total_tokens"), **{k: v for k, v in case.items()
                                                                         if k != "total_tokens"})
            exact = rounded_to_pico(exact_cost(rates, tokens))
            fast = priced_cost(rates, tokens)
            assert (fast.as_tuple(), str(fast)) == (exact.as_tuple(), str(exact)), (name, case)
            compared += pico_cost(rates, tokens) is not None
    assert compared > 1000  # the integer path served most of the table


@pytest.mark.parametrize("overrides", [
    {"acme/tiered": {"input_mtok": "1.25", "output_mtok": "10", "cache_read_mtok": "0.125",
                     "cache_write_mtok": "1.5", "cache_write_1h_mtok": "2.5",
                     "tiers": [{"above_input_tokens": 200_000, "input_mtok": "2.5", "output_mtok": "15",
                                "cache_read_mtok": "0.25", "cache_write_mtok": "3", "cache_write_1h_mtok": "5"}]}},
    {"acme/tiered": {"input_mtok": "0.0000001", "output_mtok": "0.0000003"}},  # finer than a pico-dollar a token
    {"acme/tiered": {"input_mtok": "0", "output_mtok": "0"}},
])
def test_pico_cost_is_the_exact_cost_for_overrides(overrides):
    pricer = Pricer(overrides=overrides, default_rate_per_mtok=Decimal("0.0000007"))
    for model in ("tiered", "unknown-model"):
        for case in TOKEN_CASES:
            rates = pricer.rates_at(pricer.lookup("acme", model), NOW)
            tokens = Tokens.of(total_tokens=case.get("total_tokens"), **{k: v for k, v in case.items()
                                                                         if k != "total_tokens"})
            exact = rounded_to_pico(exact_cost(rates, tokens))
            assert priced_cost(rates, tokens).as_tuple() == exact.as_tuple(), (model, case)


def test_negative_counts_still_name_the_count():
    with pytest.raises(ValueError, match="cache_read_tokens is negative"):
        Pricer().price(provider="openai", model="gpt-4o-mini", ts=NOW, input_tokens=5, cache_read_tokens=-1)
