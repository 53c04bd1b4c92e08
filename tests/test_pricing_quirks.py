"""Exact to the cent on every pricing quirk (issue 12): 1-hour cache writes, tiered overrides, one name per
provider, the served model and service tiers.

Each call goes through the real openai / anthropic SDK clients (plain, streaming, async, async streaming)
against the local fake provider, then the tracker's journal, ingestion and the store. Every expected cost
is computed by hand in the test from the providers' list prices (USD per million tokens, stated beside it).
"""

from __future__ import annotations

import asyncio
import csv
import dataclasses
import datetime as dt
import json
from decimal import Decimal

import anthropic
import openai
import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from llmcost.errors import ConfigError
from llmcost.events import UsageEvent
from llmcost.ingestion.run import ingest
from llmcost.monitor.integrity import run_checks
from llmcost.monitor.reports import daily
from llmcost.pricing.rates import Pricer
from llmcost.sdk.tracker import Tracker
from llmcost.store import connection as store
from llmcost.store.export import export_table

from .fake_provider import anthropic_message, chat_completion

MODES = ("plain", "stream", "async", "async_stream")
IDENTITY = {"use_case": "chat_tutor", "user_id": "u1", "tenant_id": "t1"}


async def _collect(stream):
    return [chunk async for chunk in stream]


def anthropic_call(tracker, provider, mode, *, model, provider_name="anthropic"):
    """One tracked Anthropic Messages call through the real SDK, in the given mode."""
    request = {"model": model, "max_tokens": 1024, "messages": [{"role": "user", "content": "hi"}]}
    with tracker.call(provider=provider_name, model=model, **IDENTITY) as call:
        if mode == "plain":
            call.record(anthropic.Anthropic(base_url=provider.url, api_key="k", max_retries=0).messages.create(**request))
        elif mode == "stream":
            client = anthropic.Anthropic(base_url=provider.url, api_key="k", max_retries=0)
            for _ in call.stream(client.messages.create(stream=True, **request)):
                pass
        elif mode == "async":
            async def create():
                client = anthropic.AsyncAnthropic(base_url=provider.url, api_key="k", max_retries=0)
                return await client.messages.create(**request)
            call.record(asyncio.run(create()))
        else:
            async def chunks():
                client = anthropic.AsyncAnthropic(base_url=provider.url, api_key="k", max_retries=0)
                return await _collect(await client.messages.create(stream=True, **request))
            for _ in call.stream(asyncio.run(chunks())):
                pass
    return call.event


def openai_call(tracker, provider, mode, *, model, provider_name="openai"):
    """One tracked OpenAI Chat Completions call through the real SDK, in the given mode."""
    request = {"model": model, "messages": [{"role": "user", "content": "hi"}]}
    streamed = {"stream": True, "stream_options": {"include_usage": True}, **request}
    with tracker.call(provider=provider_name, model=model, **IDENTITY) as call:
        if mode == "plain":
            call.record(openai.OpenAI(base_url=provider.url + "/v1", api_key="k", max_retries=0)
                        .chat.completions.create(**request))
        elif mode == "stream":
            client = openai.OpenAI(base_url=provider.url + "/v1", api_key="k", max_retries=0)
            for _ in call.stream(client.chat.completions.create(**streamed)):
                pass
        elif mode == "async":
            async def create():
                client = openai.AsyncOpenAI(base_url=provider.url + "/v1", api_key="k", max_retries=0)
                return await client.chat.completions.create(**request)
            call.record(asyncio.run(create()))
        else:
            async def chunks():
                client = openai.AsyncOpenAI(base_url=provider.url + "/v1", api_key="k", max_retries=0)
                return await _collect(await client.chat.completions.create(**streamed))
            for _ in call.stream(asyncio.run(chunks())):
                pass
    return call.event


def serve_chat(provider, *, model, prompt_tokens, completion_tokens, cached, service_tier=None):
    """Answer chat calls, whole and streamed, naming `model` and `service_tier` as the API does."""
    extra = {"service_tier": service_tier} if service_tier else {}
    provider.chat = {**chat_completion(model=model, prompt_tokens=prompt_tokens, completion_tokens=completion_tokens,
                                       cached=cached), **extra}
    provider.chunk_fields = {"model": model, **extra}
    provider.chunk_usage = {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens}
    # The streamed usage carries no cache detail in the fake; the whole and streamed expectations say so.


def stored_rows(settings):
    ingest(settings)
    with store.reading(settings.db_path) as db:
        result = db.execute("SELECT * FROM usage_events ORDER BY ts")
        names = [d[0] for d in result.description]
        return [dict(zip(names, row)) for row in result.fetchall()]


def haiku_message(one_hour, five_minutes, **usage):
    message = anthropic_message(model="claude-haiku-4-5-20251001", input_tokens=2000, output_tokens=500,
                                cache_read=0, cache_write=one_hour + five_minutes)
    message["usage"]["cache_creation"] = {"ephemeral_1h_input_tokens": one_hour,
                                          "ephemeral_5m_input_tokens": five_minutes}
    message["usage"].update(usage)
    return message


# -- 1. Anthropic 1-hour cache writes ------------------------------------------------------------------

@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(("one_hour", "five_minutes", "expected"), [
    # claude-haiku-4-5 list prices: input $1, 5-minute cache write $1.25, 1-hour cache write $2, output $5.
    # 2,000 x $1 + 20,000 x $2 + 500 x $5 = $0.0445 (before: the writes at $1.25 gave $0.0295)
    (20_000, 0, Decimal("0.0445")),
    # 2,000 x $1 + 10,000 x $1.25 + 10,000 x $2 + 500 x $5 = $0.037 (before: $0.0295)
    (10_000, 10_000, Decimal("0.037")),
    # no 1-hour write: 2,000 x $1 + 20,000 x $1.25 + 500 x $5 = $0.0295, as before
    (0, 20_000, Decimal("0.0295")),
])
def test_anthropic_one_hour_cache_writes_are_billed_at_the_one_hour_rate(tracker, settings, provider, mode,
                                                                         one_hour, five_minutes, expected):
    provider.message = haiku_message(one_hour, five_minutes)
    event = anthropic_call(tracker, provider, mode, model="claude-haiku-4-5")
    assert event.cost_usd == expected
    [row] = stored_rows(settings)
    assert (row["input_tokens"], row["cache_write_tokens"], row["cache_write_1h_tokens"]) == (
        2000 + one_hour + five_minutes, one_hour + five_minutes, one_hour)
    assert row["cost_usd"] == expected


def test_one_hour_writes_given_as_counts_are_priced_alike(tracker):
    with tracker.call(provider="anthropic", model="claude-haiku-4-5", **IDENTITY) as call:
        call.record(input_tokens=22_000, output_tokens=500, cache_write_tokens=20_000, cache_write_1h_tokens=20_000)
    # 2,000 x $1 + 20,000 x $2 (1-hour writes) + 500 x $5 per million tokens = $0.0445
    assert (call.event.cache_write_1h_tokens, call.event.cost_usd) == (20_000, Decimal("0.0445"))


def test_one_hour_writes_travel_through_csv_ingest_reports_and_csv_export(settings, tmp_path):
    inbox = tmp_path / "usage.csv"
    with inbox.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["event_id", "ts", "user_id", "tenant_id", "use_case", "provider", "model", "input_tokens",
                         "output_tokens", "cache_write_tokens", "cache_write_1h_tokens"])
        writer.writerow(["csv-1", "2026-11-20T10:00:00Z", "u", "t", "chat_tutor", "anthropic", "claude-haiku-4-5",
                         22000, 500, 20000, 20000])
        # the pydantic path: a count written " 22000" is coerced there, never by the bulk SQL
        writer.writerow(["csv-2", "2026-11-20T11:00:00Z", "u", "t", "chat_tutor", "anthropic", "claude-haiku-4-5",
                         " 22000", 500, 20000, 20000])
    result = ingest(settings, [inbox])
    assert result.stored == 2
    with store.reading(settings.db_path) as db:
        rows = db.execute("SELECT event_id, cache_write_1h_tokens, cost_usd FROM usage_events ORDER BY 1").fetchall()
    # 2,000 x $1 + 20,000 x $2 (1-hour writes) + 500 x $5 per million tokens = $0.0445, on both paths
    assert rows == [("csv-1", 20000, Decimal("0.0445")), ("csv-2", 20000, Decimal("0.0445"))]
    report = daily(settings, dt.date(2026, 11, 20))
    assert (report.totals.cache_write_tokens, report.totals.cache_write_1h_tokens) == (40000, 40000)
    assert "cache writes 40,000 (40,000 kept 1 hour)" in report.to_text()
    out = tmp_path / "export.csv"
    export_table(settings, out)
    exported = list(csv.DictReader(out.open()))
    assert [r["cache_write_1h_tokens"] for r in exported] == ["20000", "20000"]


def test_one_hour_writes_above_all_cache_writes_are_refused_with_the_reason(settings, tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps({"event_id": "x", "ts": "2026-11-20T10:00:00Z", "user_id": "u", "tenant_id": "t",
                                "use_case": "c", "input_tokens": 100, "cache_write_tokens": 10,
                                "cache_write_1h_tokens": 20}) + "\n")
    result = ingest(settings, [path])
    assert (result.stored, result.failed) == (0, 1)
    assert "cache_write_1h_tokens exceed cache_write_tokens" in result.failed_reasons[0]


# -- 2. Tiered price overrides -------------------------------------------------------------------------

SONNET_4_OVERRIDE = """
[models."anthropic/claude-sonnet-4-0"]
input_mtok = "3"
output_mtok = "15"
cache_read_mtok = "0.30"
cache_write_mtok = "3.75"
cache_write_1h_mtok = "6"

[[models."anthropic/claude-sonnet-4-0".tiers]]
above_input_tokens = 200000
input_mtok = "6"
output_mtok = "22.50"
cache_read_mtok = "0.60"
cache_write_mtok = "7.50"
cache_write_1h_mtok = "12"
"""


@pytest.fixture
def sonnet_tracker(settings, tmp_path):
    prices = tmp_path / "prices.toml"
    prices.write_text(SONNET_4_OVERRIDE)
    tiered = dataclasses.replace(settings, price_overrides_file=prices)
    t = Tracker(tiered)
    yield t
    t.close()


@pytest.mark.parametrize("mode", MODES)
def test_a_tiered_override_prices_sonnet_4_above_200k_input_tokens(sonnet_tracker, provider, mode):
    message = anthropic_message(model="claude-sonnet-4-20250514", input_tokens=230_000, output_tokens=1000,
                                cache_read=20_000, cache_write=10_000)
    message["usage"]["cache_creation"] = {"ephemeral_1h_input_tokens": 5000, "ephemeral_5m_input_tokens": 5000}
    provider.message = message
    event = anthropic_call(sonnet_tracker, provider, mode, model="claude-sonnet-4-20250514")
    # 260,000 input tokens > 200,000, so every token is at Sonnet 4's long-context list prices: 230,000 x $6
    # + 20,000 cache reads x $0.60 + 5,000 5-minute writes x $7.50 + 5,000 1-hour writes x $12 + 1,000 output
    # x $22.50 per million tokens = $1.512 (before: the table's base rates, $0.7485)
    assert (event.cost_usd, event.price_source) == (Decimal("1.512"), "override")
    assert stored_rows(sonnet_tracker.settings)[0]["cost_usd"] == Decimal("1.512")


def test_a_tiered_override_keeps_the_base_rate_up_to_the_threshold(sonnet_tracker, provider):
    provider.message = anthropic_message(model="claude-sonnet-4-20250514", input_tokens=200_000, output_tokens=1000,
                                         cache_read=0, cache_write=0)
    event = anthropic_call(sonnet_tracker, provider, "plain", model="claude-sonnet-4-20250514")
    # exactly 200,000 input tokens is not above the threshold: 200,000 x $3 + 1,000 x $15 = $0.615
    assert event.cost_usd == Decimal("0.615")


def test_the_bulk_and_pydantic_paths_price_a_tiered_override_alike(settings, tmp_path):
    prices = tmp_path / "prices.toml"
    prices.write_text(SONNET_4_OVERRIDE)
    tiered = dataclasses.replace(settings, price_overrides_file=prices)
    base = {"ts": "2026-11-20T10:00:00Z", "user_id": "u", "tenant_id": "t", "use_case": "c",
            "provider": "anthropic", "model": "claude-sonnet-4-20250514", "output_tokens": 1000}
    lines = [{**base, "event_id": "bulk", "input_tokens": 250_000},
             {**base, "event_id": "pydantic", "input_tokens": "250000"}]  # a string count takes pydantic's path
    path = tmp_path / "tiered.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    assert ingest(tiered, [path]).stored == 2
    with store.reading(tiered.db_path) as db:
        costs = db.execute("SELECT event_id, cost_usd, price_source FROM usage_events ORDER BY 1").fetchall()
    # 250,000 x $6 + 1,000 x $22.50 per million tokens = $1.5225
    assert costs == [("bulk", Decimal("1.5225"), "override"), ("pydantic", Decimal("1.5225"), "override")]


@pytest.mark.parametrize(("tier", "message"), [
    ('above_input_tokens = 200000\ninput_mtok = "6"\noutput_mtok = "22.5"', "lacks cache_read_mtok"),
    ('input_mtok = "6"\noutput_mtok = "22.5"\ncache_read_mtok = "0.6"', "lacks above_input_tokens"),
    ('above_input_tokens = "lots"\ninput_mtok = "6"\noutput_mtok = "22.5"\ncache_read_mtok = "0.6"',
     "must be a whole number of input tokens"),
    ('above_input_tokens = 200000\ninput_mtok = 6.1e400\noutput_mtok = "22.5"\ncache_read_mtok = "0.6"',
     "must be a finite price"),
])
def test_a_tier_that_would_leave_a_price_to_guess_is_refused(tmp_path, tier, message):
    prices = tmp_path / "prices.toml"
    prices.write_text('[models."m"]\ninput_mtok = "3"\noutput_mtok = "15"\ncache_read_mtok = "0.3"\n'
                      f'[[models."m".tiers]]\n{tier}\n')
    with pytest.raises(ConfigError, match=message):
        Pricer(overrides_file=prices)


# -- 3. One name per provider --------------------------------------------------------------------------

@pytest.mark.parametrize("mode", MODES)
def test_an_alias_of_a_provider_is_stored_under_its_one_name(tracker, settings, provider, mode):
    provider.message = haiku_message(0, 0)
    event = anthropic_call(tracker, provider, mode, model="claude-haiku-4-5", provider_name="Claude")
    # 2,000 x $1 + 500 x $5 per million tokens (claude-haiku-4-5 list prices) = $0.0045
    assert (event.provider, event.metadata["provider_original"], event.cost_usd) == (
        "anthropic", "Claude", Decimal("0.0045"))
    [row] = stored_rows(settings)
    assert row["provider"] == "anthropic"
    assert json.loads(row["metadata"])["provider_original"] == "Claude"


def test_ingest_normalises_providers_alike_on_the_bulk_and_pydantic_paths(settings, tmp_path):
    base = {"ts": "2026-11-20T10:00:00Z", "user_id": "u", "tenant_id": "t", "use_case": "c",
            "model": "claude-haiku-4-5", "input_tokens": 1000, "output_tokens": 100}
    names = ["claude", "Anthropic", "anthropic", "XAI", " grok ", "vertex_ai", "Self-Hosted"]
    lines = []
    for n, name in enumerate(names):
        lines.append({**base, "event_id": f"bulk-{n}", "provider": name, "metadata": {"team": "a"}})
        lines.append({**base, "event_id": f"slow-{n}", "provider": name, "metadata": {"team": "a"},
                      "output_tokens": "100"})  # a string count takes pydantic's path
    path = tmp_path / "providers.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    assert ingest(settings, [path]).stored == len(lines)
    with store.reading(settings.db_path) as db:
        stored_rows = db.execute("SELECT event_id, provider, metadata, cost_usd FROM usage_events").fetchall()
        rows = {r[0]: r[1:] for r in stored_rows}
    expected = ["anthropic", "anthropic", "anthropic", "x-ai", "x-ai", "google", "Self-Hosted"]  # unknown: as given
    for n, (name, canonical) in enumerate(zip(names, expected)):
        assert rows[f"bulk-{n}"] == rows[f"slow-{n}"]
        provider_name, metadata, _ = rows[f"bulk-{n}"]
        assert provider_name == canonical
        kept = json.loads(metadata)
        assert kept == ({"team": "a", "provider_original": name.strip()} if name.strip() != canonical
                        else {"team": "a"})  # pydantic strips names before they are compared
    with store.reading(settings.db_path) as db:
        providers = [r[0] for r in db.execute("SELECT DISTINCT provider FROM usage_events ORDER BY 1").fetchall()]
    assert providers == ["Self-Hosted", "anthropic", "google", "x-ai"]


# -- 4. The served model -------------------------------------------------------------------------------

@pytest.mark.parametrize("mode", MODES)
def test_the_served_snapshot_is_kept_and_priced_when_the_table_knows_it(tracker, settings, provider, mode):
    serve_chat(provider, model="gpt-4o-2024-05-13", prompt_tokens=1000, completion_tokens=500, cached=0)
    event = openai_call(tracker, provider, mode, model="gpt-4o")
    # gpt-4o-2024-05-13 list prices: input $5, output $15: 1,000 x $5 + 500 x $15 = $0.0125
    # (before: priced as the requested gpt-4o at $2.50 / $10 = $0.0075)
    assert (event.model, event.response_model, event.cost_usd) == ("gpt-4o", "gpt-4o-2024-05-13", Decimal("0.0125"))
    [row] = stored_rows(settings)
    assert (row["model"], row["response_model"], row["cost_usd"]) == ("gpt-4o", "gpt-4o-2024-05-13",
                                                                      Decimal("0.0125"))
    by_model = daily(settings, row["day"]).by_model
    assert [(r["provider"], r["model"]) for r in by_model] == [("openai", "gpt-4o")]


def test_a_served_model_the_table_does_not_know_leaves_the_requested_price(tracker, provider):
    serve_chat(provider, model="gpt-4o-mini-internal-canary", prompt_tokens=1000, completion_tokens=500, cached=0)
    event = openai_call(tracker, provider, "plain", model="gpt-4o-mini")
    # gpt-4o-mini list prices, input $0.15, output $0.60: 1,000 x $0.15 + 500 x $0.60 = $0.00045
    assert (event.response_model, event.cost_usd, event.price_source) == (
        "gpt-4o-mini-internal-canary", Decimal("0.00045"), "price-table")


# -- 5. Service tiers ----------------------------------------------------------------------------------

@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(("model", "tier", "expected"), [
    # gpt-4o-mini priority list prices: input $0.25, output $1: 1,000 x $0.25 + 500 x $1 = $0.00075
    # (before: the standard $0.15 / $0.60 = $0.00045)
    ("gpt-4o-mini", "priority", Decimal("0.00075")),
    # gpt-5-mini flex list prices: input $0.125, output $1: 1,000 x $0.125 + 500 x $1 = $0.000625
    # (before: the standard $0.25 / $2 = $0.00125)
    ("gpt-5-mini", "flex", Decimal("0.000625")),
    # default: gpt-5-mini standard prices $0.25 / $2 = $0.00125
    ("gpt-5-mini", "default", Decimal("0.00125")),
])
def test_openai_service_tiers_are_stored_and_priced_at_the_tier(tracker, settings, provider, mode, model, tier,
                                                                expected):
    serve_chat(provider, model=model, prompt_tokens=1000, completion_tokens=500, cached=0, service_tier=tier)
    event = openai_call(tracker, provider, mode, model=model)
    assert (event.service_tier, event.cost_usd) == (tier, expected)
    [row] = stored_rows(settings)
    assert (row["service_tier"], row["cost_usd"]) == (tier, expected)
    assert run_checks(settings).check("service_tier").count == 0


@pytest.mark.parametrize("mode", MODES)
def test_a_tier_the_table_has_no_price_for_is_priced_standard_and_flagged(tracker, settings, provider, mode):
    serve_chat(provider, model="gpt-4o-mini-2024-07-18", prompt_tokens=1000, completion_tokens=500, cached=0,
               service_tier="flex")
    event = openai_call(tracker, provider, mode, model="gpt-4o-mini")
    # genai-prices carries no flex price for gpt-4o-mini: the standard $0.15 / $0.60 = $0.00045, flagged
    assert event.cost_usd == Decimal("0.00045")
    stored_rows(settings)
    check = run_checks(settings).check("service_tier")
    assert (check.level, check.count) == ("warning", 1)
    assert "openai/gpt-4o-mini at flex" in check.summary


@pytest.mark.parametrize("mode", MODES)
def test_anthropic_batch_tier_is_priced_at_the_batch_rates(tracker, settings, provider, mode):
    provider.message = haiku_message(20_000, 0, service_tier="batch")
    event = anthropic_call(tracker, provider, mode, model="claude-haiku-4-5")
    # claude-haiku-4-5 batch list prices (half the standard): input $0.50, 1-hour write $1, output $2.50:
    # 2,000 x $0.50 + 20,000 x $1 + 500 x $2.50 = $0.02225 (before: $0.0295)
    assert (event.service_tier, event.cost_usd) == ("batch", Decimal("0.02225"))
    assert stored_rows(settings)[0]["cost_usd"] == Decimal("0.02225")


# -- The bulk path and pydantic's store the same cost --------------------------------------------------

MODELS = [("anthropic", "claude-haiku-4-5", None), ("claude", "claude-sonnet-4-5", None),
          ("openai", "gpt-4o-mini", "gpt-4o-mini-2024-07-18"), ("openai", "gpt-4o", "gpt-4o-2024-05-13"),
          ("OpenAI", "gpt-5-mini", None), ("self-hosted", "llama", None), ("x-ai", "grok-3-mini", None)]


@st.composite
def token_splits(draw):
    uncached = draw(st.integers(0, 400_000))
    cache_read = draw(st.integers(0, 300_000))
    one_hour = draw(st.integers(0, 100_000))
    five_minutes = draw(st.integers(0, 100_000))
    output = draw(st.integers(0, 100_000))
    return {
        "input_tokens": uncached + cache_read + one_hour + five_minutes,
        "cache_read_tokens": cache_read,
        "cache_write_tokens": one_hour + five_minutes,
        "cache_write_1h_tokens": one_hour,
        "output_tokens": output,
        "reasoning_tokens": draw(st.integers(0, output)),
        "provider_model": draw(st.sampled_from(MODELS)),
        "service_tier": draw(st.sampled_from([None, "default", "flex", "priority", "batch"])),
    }


@pytest.mark.slow
@hypothesis_settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(splits=st.lists(token_splits(), min_size=1, max_size=12))
def test_bulk_and_pydantic_paths_store_the_same_cost_for_any_token_split(settings, tmp_path_factory, splits):
    folder = tmp_path_factory.mktemp("split")
    lines = []
    for n, split in enumerate(splits):
        provider, model, served = split.pop("provider_model")
        record = {"ts": "2026-11-20T10:00:00Z", "user_id": "u", "tenant_id": "t", "use_case": "c",
                  "provider": provider, "model": model, **{k: v for k, v in split.items() if v is not None}}
        if served:
            record["response_model"] = served
        lines.append({**record, "event_id": f"bulk-{n}"})
        lines.append({**record, "event_id": f"slow-{n}", "output_tokens": str(record["output_tokens"])})
    path = folder / "splits.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    home = dataclasses.replace(settings, db_path=folder / "store.duckdb")
    result = ingest(home, [path])
    assert result.stored == len(lines)
    with store.reading(home.db_path) as db:
        rows = {r[0]: r[1:] for r in db.execute(
            "SELECT event_id, cost_usd, price_source, provider, metadata, cache_write_1h_tokens, response_model, "
            "service_tier FROM usage_events").fetchall()}
    pricer = Pricer.from_settings(home)
    for n, line in enumerate(lines[::2]):
        assert rows[f"bulk-{n}"] == rows[f"slow-{n}"]
        event = UsageEvent.model_validate(line)
        price = pricer.price(provider=event.provider, model=event.model, ts=event.ts,
                             input_tokens=event.input_tokens, output_tokens=event.output_tokens,
                             cache_read_tokens=event.cache_read_tokens, cache_write_tokens=event.cache_write_tokens,
                             reasoning_tokens=event.reasoning_tokens, cache_write_1h_tokens=event.cache_write_1h_tokens,
                             response_model=event.response_model, service_tier=event.service_tier)
        assert abs(rows[f"bulk-{n}"][0] - price.cost_usd) <= Decimal("1e-12")
