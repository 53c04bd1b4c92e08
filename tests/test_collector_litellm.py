"""LiteLLM's StandardLoggingPayload (its documented fields) through `llmcost serve` and the CustomLogger."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import sys
import time
import types

import httpx

from llmcost.pricing.rates import Pricer
from llmcost.sdk.tracker import Tracker

from .collector_server import ingest, rows, running_collector


def payload(call_id: str, prompt: int, completion: int, **overrides) -> dict:
    """A StandardLoggingPayload with the fields LiteLLM documents (docs/proxy/logging_spec.md)."""
    start = time.time() - 120
    base = {
        "id": call_id, "trace_id": "trace-" + call_id, "call_type": "acompletion", "response_cost": 0.00123,
        "status": "success", "total_tokens": prompt + completion, "prompt_tokens": prompt,
        "completion_tokens": completion, "startTime": start, "endTime": start + 1.5, "completionStartTime": start + 0.4,
        "model": "gpt-4o", "custom_llm_provider": "openai", "model_id": "deploy-1", "model_group": "gpt-4o",
        "api_base": "https://api.openai.com/v1",
        "metadata": {"user_api_key_hash": "88dc28", "user_api_key_alias": None, "user_api_key_org_id": None,
                     "user_api_key_team_id": "team-school-7", "user_api_key_user_id": "key-owner",
                     "user_api_key_team_alias": None,
                     "spend_logs_metadata": {"use_case": "content_analyzer", "user_id": "teacher-9"},
                     "requester_ip_address": "10.0.0.1", "requester_metadata": {}},
        "cache_hit": None, "cache_key": None, "saved_cache_cost": 0.0, "request_tags": [], "end_user": None,
        "requester_ip_address": "10.0.0.1", "messages": [{"role": "user", "content": "secret prompt text"}],
        "response": {"id": "chatcmpl-1", "object": "chat.completion", "model": "gpt-4o-2024-08-06",
                     "choices": [], "usage": {"prompt_tokens": prompt, "completion_tokens": completion,
                                              "total_tokens": prompt + completion,
                                              "prompt_tokens_details": {"cached_tokens": prompt // 2}}},
        "error_str": None, "model_parameters": {}, "hidden_params": {"model_id": "deploy-1", "response_cost": "0.00123"},
    }
    base.update(overrides)
    return base


def test_generic_api_batches_in_every_format_are_repriced(settings, isolated_home):
    failure = payload("c4", 300, 0, status="failure", error_str="RateLimitError: slow down", response=None,
                      end_user="student-1", metadata={"user_api_key_team_id": "team-school-7"})
    with running_collector(isolated_home) as c:
        array = httpx.post(c.url + "/v1/litellm", json=[payload("c1", 1000, 100), payload("c2", 2000, 200)])
        ndjson = httpx.post(c.url + "/v1/litellm", headers={"content-type": "application/x-ndjson"},
                            content="\n".join(json.dumps(p) for p in (payload("c3", 10, 1), failure)))
        single = httpx.post(c.url + "/v1/litellm", json=payload("c5", 50, 5, model="anthropic/claude-sonnet-4-5",
                                                                custom_llm_provider=None, response=None))
        resent = httpx.post(c.url + "/v1/litellm", json=payload("c1", 1000, 100))  # LiteLLM retries a batch
        bad = httpx.post(c.url + "/v1/litellm", json=[payload("c6", -1, 5, response=None), "text"])
    assert [r.status_code for r in (array, ndjson, single, resent, bad)] == [202] * 5
    assert (array.json()["accepted"], ndjson.json()["accepted"], single.json()["accepted"]) == (2, 2, 1)
    assert [r["index"] for r in bad.json()["rejected"]] == [0, 1]
    ingest(isolated_home)
    stored = rows(settings, """SELECT event_id, provider, model, user_id, tenant_id, use_case, input_tokens,
                                      output_tokens, cache_read_tokens, status, error, cost_usd, metadata
                               FROM usage_events ORDER BY event_id""")
    assert [r[0] for r in stored] == ["litellm-c1", "litellm-c2", "litellm-c3", "litellm-c4", "litellm-c5"]
    first = stored[0]
    assert first[1:9] == ("openai", "gpt-4o-2024-08-06", "teacher-9", "team-school-7", "content_analyzer", 1000,
                          100, 500)
    pricer = Pricer.from_settings(settings)
    expected = pricer.price(provider="openai", model="gpt-4o-2024-08-06", ts=dt.datetime.now(dt.timezone.utc),
                            input_tokens=1000,
                            output_tokens=100, cache_read_tokens=500).cost_usd
    assert first[11] == expected and str(first[11]) != "0.00123"
    assert json.loads(first[12])["litellm_response_cost"] == 0.00123
    assert "secret prompt text" not in json.dumps([list(map(str, r)) for r in stored])
    assert stored[3][3:6] == ("student-1", "team-school-7", "(unattributed)")
    assert stored[3][9:11] == ("error", "RateLimitError: slow down")
    assert stored[4][1:3] == ("anthropic", "claude-sonnet-4-5")
    unattributed = rows(settings, "SELECT count(*) FROM failed_logs WHERE kind = 'unattributed'")
    assert unattributed == [(1,)]  # c4 named no use case: kept under (unattributed) and listed


def test_custom_logger_journals_through_the_tracker(settings, monkeypatch):
    calls = []

    class CustomLogger:  # LiteLLM's base class is not installed here: the hooks it calls, by name
        def __init__(self, **kwargs):
            calls.append(kwargs)

    fake = types.ModuleType("litellm.integrations.custom_logger")
    fake.CustomLogger = CustomLogger
    monkeypatch.setitem(sys.modules, "litellm", types.ModuleType("litellm"))
    monkeypatch.setitem(sys.modules, "litellm.integrations", types.ModuleType("litellm.integrations"))
    monkeypatch.setitem(sys.modules, "litellm.integrations.custom_logger", fake)
    monkeypatch.delitem(sys.modules, "llmcost.integrations.litellm", raising=False)
    from llmcost.integrations.litellm import LLMCostLogger

    tracker = Tracker(settings)
    logger = LLMCostLogger(tracker=tracker)
    assert isinstance(logger, CustomLogger) and calls == [{}]
    logger.log_success_event({"standard_logging_object": payload("s1", 100, 10)}, None, None, None)
    asyncio.run(logger.async_log_failure_event(
        {"standard_logging_object": payload("s2", 100, 0, status="failure", error_str="boom")}, None, None, None))
    logger.log_success_event({"standard_logging_object": payload("s3", -5, 10, response=None)}, None, None, None)
    tracker.close()
    journaled = [json.loads(line) for path in settings.journal_dir.glob("*.jsonl") for line in path.open()]
    assert [r["event_id"] for r in journaled] == ["litellm-s1", "litellm-s2"]
    kept = [json.loads(line) for line in settings.fallback_log.open()]
    assert len(kept) == 1 and "input_tokens" in kept[0]["error"]
    assert kept[0]["event"]["litellm_payload"]["id"] == "s3"
