"""Pricing: exact costs from the bundled genai-prices table, overrides and the default rate.

Expected costs are worked out by hand from the table's per-million-token (MTok) prices, shown in the
comment next to each figure.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from decimal import Decimal

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from anthropic.types import Usage as AnthropicUsage
from genai_prices import Usage, calc_price
from openai.types import CompletionUsage
from openai.types.completion_usage import CompletionTokensDetails, PromptTokensDetails

from llmcost.config import load_settings
from llmcost.errors import ConfigError
from llmcost.pricing.rates import Price, Pricer, canonical_provider, load_overrides
from llmcost.pricing.vector import price_columns_pico, price_frame_pico
from llmcost.sdk.usage import extract_usage

SEPT = datetime(2025, 9, 1, 12, 0, tzinfo=timezone.utc)
OVERRIDES = {
    "self-hosted/llama-3-70b": {"input_mtok": "0.50", "output_mtok": "1.50", "cache_read_mtok": "0.05",
                                "cache_write_mtok": "0.60"},
    "Llama-3-70B": {"input_mtok": "1.00", "output_mtok": "2.00"},
    "tiny": {"input_mtok": "0.0000005", "output_mtok": "0.0000005"},
}


def tokens_of(provider, model, usage) -> dict[str, int]:
    """The token counts the SDK path (`extract_usage`) reads from a response carrying `usage`."""
    body = usage.model_dump() if hasattr(usage, "model_dump") else usage
    key = "usageMetadata" if "promptTokenCount" in body else "usage"
    read = extract_usage({"model": model, key: body}, provider)
    counts = {name: getattr(read, name) for name in
              ("input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens", "reasoning_tokens")}
    return {**counts, "total_tokens": read.input_tokens + read.output_tokens}


def price_frame(pricer, frame) -> tuple[list[Decimal], list[str]]:
    """Costs (USD) and sources of a frame's rows from the bulk path."""
    pico, sources = price_frame_pico(pricer, frame)
    return [Decimal(value).scaleb(-12) for value in pico.tolist()], sources


@pytest.fixture(scope="module")
def pricer() -> Pricer:
    return Pricer()


def test_gpt_4o_bills_cache_reads_at_the_cache_rate(pricer):
    usage = CompletionUsage(prompt_tokens=1000, completion_tokens=500, total_tokens=1500,
                            prompt_tokens_details=PromptTokensDetails(cached_tokens=200))
    tokens = tokens_of("openai", "gpt-4o", usage)
    assert tokens == {"input_tokens": 1000, "output_tokens": 500, "cache_read_tokens": 200,
                      "cache_write_tokens": 0, "reasoning_tokens": 0, "total_tokens": 1500}

    price = pricer.price(provider="openai", model="gpt-4o", ts=SEPT, **tokens)

    # (800 * 2.50 + 200 * 1.25 + 500 * 10.00) / 1e6 = 7250 / 1e6
    assert price == Price(Decimal("0.007250000000"), "price-table", "gpt-4o")
    assert price.cost_usd.as_tuple().exponent == -12


def test_openai_reasoning_tokens_are_already_in_the_output(pricer):
    usage = CompletionUsage(prompt_tokens=2000, completion_tokens=3000, total_tokens=5000,
                            prompt_tokens_details=PromptTokensDetails(cached_tokens=500),
                            completion_tokens_details=CompletionTokensDetails(reasoning_tokens=2500))
    tokens = tokens_of("openai", "o3-mini", usage)
    assert (tokens["output_tokens"], tokens["reasoning_tokens"]) == (3000, 2500)

    price = pricer.price(provider="openai", model="o3-mini", ts=SEPT, **tokens)

    # o3-mini: (1500 * 1.10 + 500 * 0.55 + 3000 * 4.40) / 1e6 = (1650 + 275 + 13200) / 1e6
    assert price == Price(Decimal("0.015125"), "price-table", "o3-mini")
    without_breakdown = pricer.price(provider="openai", model="o3-mini", ts=SEPT, input_tokens=2000,
                                     output_tokens=3000, cache_read_tokens=500)
    assert without_breakdown.cost_usd == price.cost_usd


def test_anthropic_cache_read_and_write_from_raw_usage(pricer):
    raw = AnthropicUsage(input_tokens=700, output_tokens=500, cache_read_input_tokens=200,
                         cache_creation_input_tokens=100)
    tokens = tokens_of("anthropic", "claude-sonnet-4-5", raw)
    # Anthropic's input_tokens leaves out both cache figures: 700 + 200 + 100
    assert tokens["input_tokens"] == 1000
    assert tokens["total_tokens"] == 1500

    price = pricer.price(provider="claude", model="claude-sonnet-4-5", ts=SEPT, **tokens)

    # (700 * 3.00 + 200 * 0.30 + 100 * 3.75 + 500 * 15.00) / 1e6 = (2100 + 60 + 375 + 7500) / 1e6
    assert price == Price(Decimal("0.010035"), "price-table", "claude-sonnet-4-5")


def test_anthropic_usage_without_cache_fields_counts_them_as_zero():
    raw = AnthropicUsage(input_tokens=10, output_tokens=5)
    tokens = tokens_of("anthropic", "claude-sonnet-4-5", raw)
    assert tokens["input_tokens"] == 10 and tokens["cache_read_tokens"] == 0


@pytest.mark.parametrize("alias", ["xai", "grok", "x-ai", " XAI "])
def test_xai_reasoning_is_added_to_the_completion(pricer, alias):
    # xAI's completion_tokens leave the reasoning out.
    raw = CompletionUsage(prompt_tokens=1000, completion_tokens=200, total_tokens=2000,
                          prompt_tokens_details=PromptTokensDetails(cached_tokens=400),
                          completion_tokens_details=CompletionTokensDetails(reasoning_tokens=800))
    tokens = tokens_of(alias, "grok-3-mini", raw)
    assert tokens["output_tokens"] == 1000  # 200 + 800
    assert tokens["total_tokens"] == raw.total_tokens

    price = pricer.price(provider=alias, model="grok-3-mini", ts=SEPT, **tokens)

    # grok-3-mini: (600 * 0.30 + 400 * 0.075 + 1000 * 0.50) / 1e6 = (180 + 30 + 500) / 1e6
    assert price == Price(Decimal("0.00071"), "price-table", "grok-3-mini")


def test_gemini_long_context_tier_applies_to_every_token(pricer):
    # Gemini's usageMetadata: promptTokenCount includes the cached content, candidates exclude thoughts.
    tokens = tokens_of("gemini", "gemini-2.5-pro", {"promptTokenCount": 250_000, "cachedContentTokenCount": 50_000,
                                                     "candidatesTokenCount": 1_000, "thoughtsTokenCount": 3_000})
    assert (tokens["input_tokens"], tokens["output_tokens"]) == (250_000, 4_000)

    above = pricer.price(provider="gemini", model="gemini-2.5-pro", ts=SEPT, **tokens)
    below = pricer.price(provider="google", model="gemini-2.5-pro", ts=SEPT, input_tokens=150_000,
                         cache_read_tokens=50_000, output_tokens=4_000, reasoning_tokens=3_000)

    # over 200k input: (200,000 * 2.50 + 50,000 * 0.25 + 4,000 * 15.00) / 1e6 = 572,500 / 1e6
    assert above == Price(Decimal("0.5725"), "price-table", "gemini-2.5-pro")
    # up to 200k input: (100,000 * 1.25 + 50,000 * 0.125 + 4,000 * 10.00) / 1e6 = 171,250 / 1e6
    assert below.cost_usd == Decimal("0.17125")


def test_gemini_tier_starts_above_its_threshold(pricer):
    at_threshold = pricer.price(provider="google", model="gemini-2.5-pro", ts=SEPT, input_tokens=200_000)
    past_threshold = pricer.price(provider="google", model="gemini-2.5-pro", ts=SEPT, input_tokens=200_001)
    assert at_threshold.cost_usd == Decimal("0.25")  # 200,000 * 1.25 / 1e6
    assert past_threshold.cost_usd == Decimal("0.5000025")  # 200,001 * 2.50 / 1e6


def test_o3_is_priced_at_the_rate_of_its_utc_day(pricer):
    # The table cut o3 from $10/$40 to $2/$8 per MTok on 2025-06-10 (UTC).
    def cost(ts):
        return pricer.price(provider="openai", model="o3", ts=ts, input_tokens=1000, output_tokens=1000).cost_usd

    assert cost(datetime(2025, 6, 9, 23, 59, tzinfo=timezone.utc)) == Decimal("0.05")  # (1000*10 + 1000*40) / 1e6
    assert cost(datetime(2025, 6, 10, 0, 0, tzinfo=timezone.utc)) == Decimal("0.01")  # (1000*2 + 1000*8) / 1e6
    # 01:00 at +02:00 is still 9 June in UTC.
    assert cost(datetime(2025, 6, 10, 1, 0, tzinfo=timezone(timedelta(hours=2)))) == Decimal("0.05")
    assert cost(datetime(2025, 6, 10, 12, 0)) == Decimal("0.01")  # naive means UTC


def test_overrides_match_provider_and_model_before_model_alone():
    pricer = Pricer(overrides=OVERRIDES)
    tokens = dict(input_tokens=1000, cache_read_tokens=200, cache_write_tokens=100, output_tokens=500)

    specific = pricer.price(provider="self-hosted", model="LLAMA-3-70b", ts=SEPT, **tokens)
    general = pricer.price(provider="other-host", model="llama-3-70b", ts=SEPT, **tokens)
    no_provider = pricer.price(provider=None, model="self-hosted/llama-3-70b", ts=SEPT, **tokens)

    # (700 * 0.50 + 200 * 0.05 + 100 * 0.60 + 500 * 1.50) / 1e6 = (350 + 10 + 60 + 750) / 1e6
    assert specific == Price(Decimal("0.00117"), "override", "self-hosted/llama-3-70b")
    # cache prices default to the input price: (1000 * 1.00 + 500 * 2.00) / 1e6
    assert general == Price(Decimal("0.002"), "override", "Llama-3-70B")
    assert no_provider.cost_usd == Decimal("0.00117")


def test_overrides_win_over_the_table_and_accept_provider_aliases():
    pricer = Pricer(overrides={"gpt-4o": {"input_mtok": "1", "output_mtok": "1"},
                               "xai/grok-3-mini": {"input_mtok": "9", "output_mtok": "9"}})
    gpt = pricer.price(provider="openai", model="gpt-4o", ts=SEPT, input_tokens=1000, output_tokens=500)
    grok = pricer.price(provider="grok", model="grok-3-mini", ts=SEPT, input_tokens=1000, output_tokens=0)
    other_grok = pricer.price(provider="x-ai", model="grok-3", ts=SEPT, input_tokens=1000)

    assert gpt == Price(Decimal("0.0015"), "override", "gpt-4o")  # 1500 * 1 / 1e6
    assert grok == Price(Decimal("0.009"), "override", "xai/grok-3-mini")  # 1000 * 9 / 1e6
    assert other_grok == Price(Decimal("0.003"), "price-table", "grok-3")  # 1000 * 3.00 / 1e6


def test_costs_round_half_to_even_at_twelve_places():
    pricer = Pricer(overrides=OVERRIDES)

    def cost(tokens):
        return pricer.price(provider=None, model="tiny", ts=SEPT, input_tokens=tokens).cost_usd

    # 0.0000005 $/MTok is 0.5e-12 $ per token.
    assert cost(1) == Decimal("0E-12")  # 0.5e-12 -> the even 0
    assert cost(3) == Decimal("2E-12")  # 1.5e-12 -> the even 2e-12
    assert cost(5) == Decimal("2E-12")  # 2.5e-12 -> the even 2e-12 (half-up would give 3e-12)


@pytest.mark.parametrize(
    ("provider", "model"),
    [
        (None, "mystery-model-9000"),
        ("openai", "mystery-model-9000"),
        ("acme-cloud", "gpt-4o"),  # a provider the table does not know: its prices are not OpenAI's
        (None, None),
        ("openai", None),
        ("", ""),
        ("   ", "   "),
        (None, "../../etc/passwd\x00☃"),
        ("openai", "x" * 5000),
        ("openai", "whisper-1"),  # the table prices it per audio hour, which a token count cannot carry
    ],
)
def test_what_the_table_cannot_price_gets_the_default_rate(pricer, provider, model):
    price = pricer.price(provider=provider, model=model, ts=SEPT, input_tokens=1000, output_tokens=500)
    # 1500 * 5.00 / 1e6
    assert price == Price(Decimal("0.0075"), "default-rate", None)


def test_default_rate_is_configurable():
    price = Pricer(default_rate_per_mtok=Decimal("2.00")).price(
        provider=None, model="mystery", ts=SEPT, input_tokens=1000, output_tokens=500)
    assert price.cost_usd == Decimal("0.003")  # 1500 * 2.00 / 1e6


def test_table_provider_is_inferred_when_missing(pricer):
    plain = pricer.price(provider=None, model="gpt-4o", ts=SEPT, input_tokens=1000)
    prefixed = pricer.price(provider=None, model="anthropic/claude-sonnet-4-5", ts=SEPT, input_tokens=1000)
    assert plain == Price(Decimal("0.0025"), "price-table", "gpt-4o")  # 1000 * 2.50 / 1e6
    assert prefixed == Price(Decimal("0.003"), "price-table", "claude-sonnet-4-5")  # 1000 * 3.00 / 1e6


def test_total_only_is_priced_at_the_output_rate():
    pricer = Pricer(overrides=OVERRIDES)

    def price(provider, model):
        return pricer.price(provider=provider, model=model, ts=SEPT, total_tokens=10_000)

    assert price("openai", "gpt-4o-mini") == Price(Decimal("0.006"), "price-table", "gpt-4o-mini")  # 10,000 * 0.60
    assert price("self-hosted", "llama-3-70b").cost_usd == Decimal("0.015")  # 10,000 * 1.50 / 1e6
    assert price(None, "mystery") == Price(Decimal("0.05"), "default-rate", None)  # 10,000 * 5.00 / 1e6
    # An embedding model has no output rate: the total is charged at its input rate, 10,000 * 0.02 / 1e6.
    assert price("openai", "text-embedding-3-small").cost_usd == Decimal("0.0002")


def test_total_only_upper_bound_covers_a_long_context_tier(pricer):
    price = pricer.price(provider="google", model="gemini-2.5-pro", ts=SEPT, total_tokens=300_000)
    assert price.cost_usd == Decimal("4.5")  # 300,000 at the over-200k output rate 15.00 / 1e6


def test_cached_tokens_reported_without_input_still_count(pricer):
    price = pricer.price(provider="openai", model="gpt-4o", ts=SEPT, input_tokens=0, cache_read_tokens=1000)
    assert price.cost_usd == Decimal("0.00125")  # 1000 * 1.25 / 1e6


@pytest.mark.parametrize("field", ["input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens",
                                   "reasoning_tokens", "total_tokens"])
def test_negative_counts_are_a_caller_bug(pricer, field):
    with pytest.raises(ValueError, match=field):
        pricer.price(provider="openai", model="gpt-4o", ts=SEPT, **{field: -1})
    frame = _frame([dict(provider="openai", model="gpt-4o", ts=SEPT, **{field: -1})])
    with pytest.raises(ValueError, match=field):
        price_frame(pricer, frame)


def test_other_providers_keep_openai_convention():
    usage = CompletionUsage(prompt_tokens=100, completion_tokens=50, total_tokens=150,
                            prompt_tokens_details=PromptTokensDetails(cached_tokens=10),
                            completion_tokens_details=CompletionTokensDetails(reasoning_tokens=20))
    tokens = tokens_of("mistral", "mistral-large-latest", usage)
    assert (tokens["input_tokens"], tokens["output_tokens"], tokens["total_tokens"]) == (100, 50, 150)


@pytest.mark.parametrize(
    ("name", "canonical"),
    [("xai", "x-ai"), ("Grok", "x-ai"), ("x-ai", "x-ai"), ("gemini", "google"), ("vertex", "google"),
     ("google", "google"), ("claude", "anthropic"), ("Anthropic", "anthropic"), ("openai", "openai"),
     ("Mistral", "mistral"), ("", None), (None, None)],
)
def test_provider_aliases(name, canonical):
    assert canonical_provider(name) == canonical


# The table's own arithmetic (genai_prices.calc_price) must agree with ours to the last digit.
@pytest.mark.parametrize(
    ("provider", "model", "ts", "tokens"),
    [
        ("openai", "gpt-4o", SEPT, dict(input_tokens=123_457, cache_read_tokens=1_001, output_tokens=977)),
        ("openai", "o3", datetime(2025, 6, 1, tzinfo=timezone.utc), dict(input_tokens=5_000, output_tokens=7_777)),
        ("anthropic", "claude-sonnet-4-5", SEPT,
         dict(input_tokens=250_000, cache_read_tokens=40_000, cache_write_tokens=9_999, output_tokens=3_333)),
        ("anthropic", "claude-opus-4-6", datetime(2026, 3, 1, tzinfo=timezone.utc),
         dict(input_tokens=210_000, cache_read_tokens=10_000, cache_write_tokens=1_000, output_tokens=1_000)),
        ("anthropic", "claude-opus-4-6", datetime(2026, 3, 20, tzinfo=timezone.utc),
         dict(input_tokens=210_000, cache_read_tokens=10_000, cache_write_tokens=1_000, output_tokens=1_000)),
        ("google", "gemini-2.5-pro", SEPT, dict(input_tokens=200_001, cache_read_tokens=7, output_tokens=11)),
        ("google", "gemini-2.5-flash", SEPT, dict(input_tokens=31_415, cache_read_tokens=9_265, output_tokens=358)),
        ("x-ai", "grok-4.20", datetime(2026, 5, 1, tzinfo=timezone.utc),
         dict(input_tokens=199_999, output_tokens=1)),
        ("x-ai", "grok-4.20", datetime(2026, 5, 1, tzinfo=timezone.utc),
         dict(input_tokens=200_000, output_tokens=1)),
        ("deepseek", "deepseek-chat", datetime(2025, 9, 1, 3, 0, tzinfo=timezone.utc),
         dict(input_tokens=1_000, cache_read_tokens=100, output_tokens=10)),
        ("perplexity", "sonar", SEPT, dict(input_tokens=1_000, output_tokens=10)),
        ("openrouter", "google/gemini-2.5-flash", datetime(2026, 11, 1, tzinfo=timezone.utc),
         dict(input_tokens=1_000, cache_write_tokens=7, output_tokens=13)),
    ],
)
def test_agrees_with_genai_prices(pricer, provider, model, ts, tokens):
    expected = calc_price(Usage(**tokens), model, provider_id=provider, genai_request_timestamp=ts).total_price
    price = pricer.price(provider=provider, model=model, ts=ts, **tokens)
    assert price.price_source == "price-table"
    assert price.cost_usd == expected.quantize(Decimal("1e-12"))


def _frame(rows: list[dict]) -> pd.DataFrame:
    columns = ["provider", "model", "ts", "input_tokens", "output_tokens", "cache_read_tokens",
               "cache_write_tokens", "reasoning_tokens", "total_tokens"]
    filled = [{"input_tokens": 0, "output_tokens": 0, "cache_read_tokens": 0, "cache_write_tokens": 0,
               "reasoning_tokens": 0, "total_tokens": None, **row} for row in rows]
    frame = pd.DataFrame(filled, columns=columns)
    frame["ts"] = pd.to_datetime(frame["ts"], utc=True)
    return frame


def _row_by_row(pricer: Pricer, frame: pd.DataFrame) -> list[Price]:
    prices = []
    for row in frame.to_dict("records"):
        provider, model, ts, total = (row.pop(k) for k in ("provider", "model", "ts", "total_tokens"))
        prices.append(pricer.price(
            provider=provider if isinstance(provider, str) else None,
            model=model if isinstance(model, str) else None,
            ts=ts.to_pydatetime(),
            total_tokens=None if pd.isna(total) else int(total),
            **{k: int(v) for k, v in row.items()},
        ))
    return prices


MIXED_ROWS = [
    dict(provider="openai", model="gpt-4o", ts=SEPT, input_tokens=1000, cache_read_tokens=200, output_tokens=500),
    dict(provider="OpenAI", model="GPT-4o", ts=SEPT, input_tokens=1000, cache_read_tokens=200, output_tokens=500),
    dict(provider="openai", model="o3", ts=datetime(2025, 6, 9, 23, tzinfo=timezone.utc), input_tokens=1000,
         output_tokens=1000),
    dict(provider="openai", model="o3", ts=datetime(2025, 6, 10, 1, tzinfo=timezone.utc), input_tokens=1000,
         output_tokens=1000),
    dict(provider="google", model="gemini-2.5-pro", ts=SEPT, input_tokens=250_000, cache_read_tokens=50_000,
         output_tokens=4_000, reasoning_tokens=3_000),
    dict(provider="google", model="gemini-2.5-pro", ts=SEPT, input_tokens=150_000, cache_read_tokens=50_000,
         output_tokens=4_000),
    dict(provider="google", model="gemini-2.5-pro", ts=SEPT, input_tokens=200_000, output_tokens=1),
    dict(provider="google", model="gemini-2.5-pro", ts=SEPT, input_tokens=200_001, output_tokens=1),
    dict(provider="anthropic", model="claude-sonnet-4-5", ts=SEPT, input_tokens=1000, cache_read_tokens=200,
         cache_write_tokens=100, output_tokens=500),
    dict(provider="xai", model="grok-3-mini", ts=SEPT, input_tokens=1000, cache_read_tokens=400,
         output_tokens=1000, reasoning_tokens=800),
    # DeepSeek's off-peak discount changes the price within one day.
    dict(provider="deepseek", model="deepseek-chat", ts=datetime(2025, 9, 1, 3, tzinfo=timezone.utc),
         input_tokens=1000, output_tokens=1000),
    dict(provider="deepseek", model="deepseek-chat", ts=datetime(2025, 9, 1, 20, tzinfo=timezone.utc),
         input_tokens=1000, output_tokens=1000),
    # A price finer than a pico-dollar per token needs Decimal arithmetic and rounding.
    dict(provider="openrouter", model="google/gemini-2.5-flash", ts=datetime(2026, 11, 1, tzinfo=timezone.utc),
         input_tokens=1000, cache_write_tokens=7),
    dict(provider=None, model=None, ts=SEPT, input_tokens=1000, output_tokens=500),
    dict(provider="acme", model="mystery-model", ts=SEPT, input_tokens=1000, output_tokens=500),
    dict(provider="self-hosted", model="llama-3-70b", ts=SEPT, input_tokens=1000, cache_read_tokens=200,
         cache_write_tokens=100, output_tokens=500),
    dict(provider="other-host", model="LLAMA-3-70B", ts=SEPT, input_tokens=1000, output_tokens=500),
    dict(provider=None, model="tiny", ts=SEPT, input_tokens=5),
    dict(provider="openai", model="gpt-4o-mini", ts=SEPT, total_tokens=10_000),
    dict(provider="google", model="gemini-2.5-pro", ts=SEPT, total_tokens=300_000),
    dict(provider="self-hosted", model="llama-3-70b", ts=SEPT, total_tokens=10_000),
    dict(provider=None, model="mystery", ts=SEPT, total_tokens=10_000),
    dict(provider="openai", model="gpt-4o", ts=SEPT, input_tokens=0, output_tokens=0, total_tokens=0),
    dict(provider="perplexity", model="sonar", ts=SEPT, input_tokens=1000, output_tokens=10),
]


def test_price_frame_equals_price_row_by_row():
    pricer = Pricer(overrides=OVERRIDES)
    frame = _frame(MIXED_ROWS * 3)
    frame.index = frame.index * 10 + 7  # price_frame must not rely on a 0..n-1 index

    costs, sources = price_frame(pricer, frame)

    expected = _row_by_row(Pricer(overrides=OVERRIDES), frame)
    assert costs == [p.cost_usd for p in expected]
    assert [c.as_tuple().exponent for c in costs] == [-12] * len(costs)
    assert sources == [p.price_source for p in expected]
    assert sources[:len(MIXED_ROWS)] == [
        "price-table", "price-table", "price-table", "price-table", "price-table", "price-table", "price-table",
        "price-table", "price-table", "price-table", "price-table", "price-table", "price-table", "default-rate",
        "default-rate", "override",
        "override", "override", "price-table", "price-table", "override", "default-rate", "price-table",
        "price-table",
    ]
    by_row = dict(zip(range(len(MIXED_ROWS)), costs))
    assert by_row[0] == Decimal("0.00725")
    assert (by_row[2], by_row[3]) == (Decimal("0.05"), Decimal("0.01"))
    # peak 00:30-16:30 UTC: (1000 * 0.27 + 1000 * 1.10) / 1e6; off-peak: (1000 * 0.135 + 1000 * 0.55) / 1e6
    assert (by_row[10], by_row[11]) == (Decimal("0.00137"), Decimal("0.000685"))
    # (993 * 0.30 + 7 * 0.0833333333333333) / 1e6 = 0.0002984833333333333331, rounded to 12 places
    assert by_row[12] == Decimal("0.000298483333")
    assert by_row[17] == Decimal("2E-12")
    # sonar charges $12 per 1000 requests on top: (1000 * 1 + 10 * 1) / 1e6 + 12 / 1000 = 0.00101 + 0.012
    assert by_row[23] == Decimal("0.01301")


def test_price_columns_equal_price_row_by_row():
    """The ingest's columnar entry point: Arrow names (nulls too), UTC datetime64, int64 token counts."""
    pricer = Pricer(overrides=OVERRIDES)
    frame = _frame(MIXED_ROWS * 2)
    tokens = {name: frame[name].fillna(0).to_numpy(dtype=np.int64) for name in
              ("input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens", "reasoning_tokens",
               "total_tokens")}
    ts = frame["ts"].dt.tz_localize(None).to_numpy().astype("datetime64[us]")

    names = {column: [None if pd.isna(v) else v for v in frame[column]] for column in ("provider", "model")}
    pico, sources = price_columns_pico(pricer, pa.array(names["provider"], pa.string()),
                                              pa.chunked_array([pa.array(names["model"], pa.string())]), ts, tokens)

    expected = _row_by_row(Pricer(overrides=OVERRIDES), frame)
    assert [Decimal(int(p)).scaleb(-12) for p in pico] == [p.cost_usd for p in expected]
    assert sources.tolist() == [p.price_source for p in expected]
    assert len(set(sources.tolist())) == 3  # the table, overrides and the default rate all took part


def test_price_columns_of_nothing():
    pico, sources = price_columns_pico(Pricer(), pa.array([], pa.string()), pa.array([], pa.string()),
                                                np.zeros(0, dtype="datetime64[us]"), {})
    assert (len(pico), len(sources)) == (0, 0)


def test_price_frame_reads_naive_and_aware_timestamps_alike(pricer):
    naive = pd.DataFrame({"provider": ["openai"] * 2, "model": ["o3"] * 2,
                          "ts": [datetime(2025, 6, 9, 23), datetime(2025, 6, 10, 1)],
                          "input_tokens": [1000, 1000], "output_tokens": [1000, 1000]})
    costs, sources = price_frame(pricer, naive)
    assert costs == [Decimal("0.05"), Decimal("0.01")]
    assert sources == ["price-table", "price-table"]


def test_price_frame_falls_back_to_decimals_when_integers_would_overflow():
    pricer = Pricer(default_rate_per_mtok=Decimal("100000"))
    frame = _frame([dict(provider=None, model="mystery", ts=SEPT, input_tokens=1_000_000_000),
                    dict(provider=None, model="mystery", ts=SEPT, input_tokens=1)])
    costs, _ = price_frame(pricer, frame)
    # 1e9 * 100,000 / 1e6 and 1 * 100,000 / 1e6
    assert costs == [Decimal("100000000"), Decimal("0.1")]


def test_price_frame_of_nothing():
    assert price_frame(Pricer(), _frame([])) == ([], [])


def test_price_frame_names_a_missing_column(pricer):
    with pytest.raises(ValueError, match="'model'"):
        price_frame(pricer, pd.DataFrame({"provider": ["openai"], "ts": [SEPT]}))


def test_settings_supply_the_default_rate_and_override_file(tmp_path):
    (tmp_path / "prices.toml").write_text(
        '[models."self-hosted/llama-3-70b"]\ninput_mtok = "0.50"\noutput_mtok = "1.50"\n', encoding="utf-8")
    (tmp_path / "llmcost.toml").write_text('default_rate_per_mtok = "2.00"\nprice_overrides = "prices.toml"\n',
                                           encoding="utf-8")
    pricer = Pricer.from_settings(load_settings(config=tmp_path / "llmcost.toml"))

    unknown = pricer.price(provider=None, model="mystery", ts=SEPT, input_tokens=1000)
    override = pricer.price(provider="self-hosted", model="llama-3-70b", ts=SEPT, input_tokens=1000,
                            output_tokens=1000)
    assert unknown.cost_usd == Decimal("0.002")  # 1000 * 2.00 / 1e6
    assert override == Price(Decimal("0.002"), "override", "self-hosted/llama-3-70b")  # 1000 * 0.5 + 1000 * 1.5


def test_load_overrides_reads_numbers_and_strings_exactly(tmp_path):
    path = tmp_path / "prices.toml"
    path.write_text('[models."GPT-4o"]\ninput_mtok = 0.1\noutput_mtok = "0.30"\ncache_read_mtok = 0\n',
                    encoding="utf-8")
    entry = load_overrides(path)["gpt-4o"]
    assert (entry.key, entry.input_mtok, entry.output_mtok) == ("GPT-4o", Decimal("0.1"), Decimal("0.30"))
    assert (entry.cache_read_mtok, entry.cache_write_mtok) == (Decimal("0"), Decimal("0.1"))


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('[models."m"\ninput_mtok = "1"', "invalid TOML"),
        ('[models."m"]\ninput_mtok = "1"\n', 'models."m" lacks output_mtok'),
        ('[models."m"]\ninput_mtok = "-1"\noutput_mtok = "1"\n', 'models."m".input_mtok'),
        ('[models."m"]\ninput_mtok = "cheap"\noutput_mtok = "1"\n', 'models."m".input_mtok: \'cheap\' is not a number'),
        ('[models."m"]\ninput_mtok = "1"\noutput_mtok = true\n', 'models."m".output_mtok: True is not a price'),
        ('[models."m"]\ninput_mtok = "1"\noutput_mtok = "inf"\n', "must be a finite price"),
        ('[models."m"]\ninput_mtoks = "1"\noutput_mtok = "1"\n', 'models."m".input_mtoks is not a price key'),
        ('[models]\nm = "1"\n', 'models."m" must be a table'),
        ('[model."m"]\ninput_mtok = "1"\noutput_mtok = "1"\n', "unknown key 'model'"),
        ('models = "gpt-4o"\n', "models must be tables"),
        ('[models."M"]\ninput_mtok = "1"\noutput_mtok = "1"\n[models."m"]\ninput_mtok = "1"\noutput_mtok = "1"\n',
         "listed twice"),
    ],
)
def test_bad_override_file_names_the_problem(tmp_path, content, message):
    path = tmp_path / "prices.toml"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(ConfigError, match=message.replace(".", r"\.").replace("(", r"\(")) as caught:
        Pricer(overrides_file=path)
    assert str(path) in str(caught.value)


def test_missing_override_file_says_how_to_fix_it(tmp_path):
    with pytest.raises(ConfigError, match="not found.*price_overrides"):
        load_overrides(tmp_path / "nope.toml")


def test_bad_default_rate_is_refused():
    with pytest.raises(ConfigError, match="default_rate_per_mtok"):
        Pricer(default_rate_per_mtok="-1")
