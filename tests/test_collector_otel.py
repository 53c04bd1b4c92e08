"""OTLP/HTTP into `llmcost serve`: the OpenTelemetry SDK's own exporter (protobuf) and hand-written OTLP/JSON."""

from __future__ import annotations

import time

import httpx
import pytest
from opentelemetry.exporter.otlp.proto.http import Compression
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.trace import Status, StatusCode

from .collector_server import ingest, rows, running_collector


@pytest.mark.slow
def test_the_sdk_exporter_sends_genai_spans_that_become_usage_events(settings, isolated_home):
    with running_collector(isolated_home) as c:
        provider = TracerProvider(resource=Resource.create({
            "service.name": "lesson-api", "llmcost.tenant_id": "school-7"}))
        exporter = OTLPSpanExporter(endpoint=c.url + "/v1/traces", timeout=10, compression=Compression.Gzip)
        provider.add_span_processor(SimpleSpanProcessor(exporter))
        tracer = provider.get_tracer("test")
        with tracer.start_as_current_span("chat gpt-4o") as span:  # current attribute names
            span.set_attributes({
                "gen_ai.provider.name": "openai", "gen_ai.request.model": "gpt-4o",
                "gen_ai.response.model": "gpt-4o-2024-08-06", "gen_ai.usage.input_tokens": 1200,
                "gen_ai.usage.output_tokens": 300, "gen_ai.usage.cache_read.input_tokens": 1000,
                "llmcost.user_id": "teacher-1", "llmcost.use_case": "auto_populate"})
            trace_id = format(span.get_span_context().trace_id, "032x")
        with tracer.start_as_current_span("chat claude") as span:  # older spellings, identity via enduser.id
            span.set_attributes({
                "gen_ai.system": "anthropic", "gen_ai.request.model": "claude-sonnet-4-5",
                "gen_ai.usage.prompt_tokens": 500, "gen_ai.usage.completion_tokens": 50,
                "gen_ai.usage.cache_creation_input_tokens": 100, "enduser.id": "student-2",
                "llmcost.use_case": "chat_tutor"})
            span.set_status(Status(StatusCode.ERROR, "overloaded"))
        with tracer.start_as_current_span("GET /lessons"):  # not a GenAI call
            pass
        with tracer.start_as_current_span("chat no identity") as span:
            span.set_attributes({"gen_ai.request.model": "gpt-4o-mini", "gen_ai.usage.input_tokens": 7})
        assert provider.force_flush(10_000)
        metrics = httpx.get(c.url + "/metrics").text
        provider.shutdown()
    assert "llmcost_collector_ignored_spans_total 1.0" in metrics
    assert 'llmcost_collector_records_total{endpoint="traces",outcome="accepted"} 3.0' in metrics
    assert 'llmcost_collector_records_total{endpoint="traces",outcome="unattributed"} 1.0' in metrics
    ingest(isolated_home)
    stored = rows(settings, """SELECT provider, model, user_id, tenant_id, use_case, input_tokens, output_tokens,
                                      cache_read_tokens, cache_write_tokens, status, error, source, event_id, cost_usd
                               FROM usage_events ORDER BY input_tokens DESC""")
    assert [r[:12] for r in stored] == [
        ("openai", "gpt-4o-2024-08-06", "teacher-1", "school-7", "auto_populate", 1200, 300, 1000, 0, "ok", None,
         "otel:lesson-api"),
        ("anthropic", "claude-sonnet-4-5", "student-2", "school-7", "chat_tutor", 500, 50, 0, 100, "error",
         "overloaded", "otel:lesson-api"),
        (None, "gpt-4o-mini", "(unattributed)", "school-7", "(unattributed)", 7, 0, 0, 0, "ok", None,
         "otel:lesson-api"),
    ]
    assert stored[0][12].startswith(f"otel-{trace_id}-") and all(r[13] > 0 for r in stored[:2])
    assert rows(settings, "SELECT kind FROM failed_logs") == [("unattributed",)]


def otlp_json(trace_id: str, span_id: str, tokens: int, start_ns: int) -> dict:
    attributes = [
        {"key": "gen_ai.provider.name", "value": {"stringValue": "openai"}},
        {"key": "gen_ai.request.model", "value": {"stringValue": "gpt-4o"}},
        {"key": "gen_ai.usage.input_tokens", "value": {"intValue": str(tokens)}},
        {"key": "gen_ai.usage.output_tokens", "value": {"intValue": 5}},
        {"key": "user.id", "value": {"stringValue": "u-json"}},
        {"key": "llmcost.tenant_id", "value": {"stringValue": "t-json"}},
        {"key": "llmcost.use_case", "value": {"stringValue": "chat_tutor"}},
    ]
    return {"resourceSpans": [{"resource": {"attributes": []}, "scopeSpans": [{"scope": {"name": "manual"}, "spans": [
        {"traceId": trace_id, "spanId": span_id, "name": "chat", "kind": 3, "startTimeUnixNano": str(start_ns),
         "endTimeUnixNano": str(start_ns + 250_000_000), "attributes": attributes, "status": {}}]}]}]}


@pytest.mark.slow
def test_otlp_json_with_hex_ids_and_bad_exports(settings, isolated_home):
    trace_id, span_id = "5b8efff798038103d269b633813fc60c", "eee19b7ec3c1b174"
    start = time.time_ns() - 60_000_000_000
    with running_collector(isolated_home) as c:
        sent = httpx.post(c.url + "/v1/traces", json=otlp_json(trace_id, span_id, 40, start))
        retried = httpx.post(c.url + "/v1/traces", json=otlp_json(trace_id, span_id, 40, start))
        bad_ids = httpx.post(c.url + "/v1/traces", json=otlp_json("not-hex", span_id, 40, start))
        bad_counts = httpx.post(c.url + "/v1/traces", json=otlp_json("ab" * 16, "cd" * 8, -3, start))
        garbage = httpx.post(c.url + "/v1/traces", content=b"\xff\x00garbage",
                             headers={"content-type": "application/x-protobuf"})
    assert sent.status_code == 200 and sent.json() == {}
    assert bad_ids.status_code == 400 and "traceId" in bad_ids.json()["error"]
    assert bad_counts.status_code == 200
    assert bad_counts.json()["partialSuccess"]["rejectedSpans"] == "1"
    assert "input_tokens" in bad_counts.json()["partialSuccess"]["errorMessage"]
    assert garbage.status_code == 400 and "protobuf" in garbage.json()["error"]
    assert retried.status_code == 200
    ingest(isolated_home)
    assert rows(settings, "SELECT event_id, user_id, input_tokens, latency_ms FROM usage_events") == [
        (f"otel-{trace_id}-{span_id}", "u-json", 40, 250.0)]  # the retry of the same span counted once
