"""OTLP/HTTP traces (protobuf or JSON) to usage events, from the OpenTelemetry GenAI span attributes.

The GenAI conventions are still marked Development, so each figure is read under its current name and
the older spellings instrumentations still send. A span is a GenAI call when it carries a token count;
other spans are ignored (and counted). Identity and use case come from the span's attributes, else the
resource's: `llmcost.user_id`, `llmcost.tenant_id`, `llmcost.use_case`, `llmcost.account_type`, and
`enduser.id` / `user.id` for the user. The event id is derived from the trace and span ids, so an
exporter's retry of the same spans is counted once.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
from dataclasses import dataclass, field
from typing import Any

from google.protobuf import json_format
from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTracePartialSuccess,
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.trace.v1.trace_pb2 import Status

from llmcost.collector.intake import BadBody

# Each figure under its current name first, then older spellings.
TOKEN_ATTRIBUTES = {
    "input_tokens": ("gen_ai.usage.input_tokens", "gen_ai.usage.prompt_tokens", "llm.usage.prompt_tokens"),
    "output_tokens": ("gen_ai.usage.output_tokens", "gen_ai.usage.completion_tokens",
                      "llm.usage.completion_tokens"),
    "cache_read_tokens": ("gen_ai.usage.cache_read.input_tokens", "gen_ai.usage.cache_read_input_tokens"),
    "cache_write_tokens": ("gen_ai.usage.cache_creation.input_tokens", "gen_ai.usage.cache_creation_input_tokens"),
    "reasoning_tokens": ("gen_ai.usage.reasoning.output_tokens", "gen_ai.usage.reasoning_tokens"),
}
TEXT_ATTRIBUTES = {
    "provider": ("gen_ai.provider.name", "gen_ai.system"),
    "model": ("gen_ai.response.model", "gen_ai.request.model"),
    "user_id": ("llmcost.user_id", "enduser.id", "user.id"),
    "tenant_id": ("llmcost.tenant_id",),
    "use_case": ("llmcost.use_case",),
    "account_type": ("llmcost.account_type",),
}
_ID_FIELDS = ("traceId", "spanId", "parentSpanId")


@dataclass
class Spans:
    """The usage events found in an export, and the count of spans that were not GenAI calls."""

    records: list[dict[str, Any]] = field(default_factory=list)
    ignored: int = 0


def decode_request(body: bytes, content_type: str | None) -> ExportTraceServiceRequest:
    """An export request from OTLP/HTTP protobuf or OTLP/JSON (whose ids are hex, not protobuf JSON's base64)."""
    request = ExportTraceServiceRequest()
    if "json" in (content_type or ""):
        try:
            data = json.loads(body)
            if not isinstance(data, dict):
                raise ValueError("the body must be a JSON object with resourceSpans")
            json_format.ParseDict(_hex_ids_to_base64(data), request, ignore_unknown_fields=True)
        except (ValueError, json_format.ParseError) as error:
            raise BadBody(f"not an OTLP/JSON trace export: {error}") from None
        return request
    try:
        request.ParseFromString(body)
    except DecodeError as error:
        raise BadBody(f"not an OTLP protobuf trace export ({error}); send Content-Type: application/x-protobuf "
                      "or application/json") from None
    return request


def _hex_ids_to_base64(data: dict[str, Any]) -> dict[str, Any]:
    for resource_spans in data.get("resourceSpans") or ():
        for scope_spans in (resource_spans or {}).get("scopeSpans") or ():
            for span in (scope_spans or {}).get("spans") or ():
                for item in [span, *(span.get("links") or ())]:
                    for name in _ID_FIELDS:
                        value = item.get(name) if isinstance(item, dict) else None
                        if isinstance(value, str) and value:
                            try:
                                item[name] = base64.b64encode(bytes.fromhex(value)).decode()
                            except ValueError:
                                raise ValueError(f"{name} {value[:40]!r} is not hex") from None
    return data


def encode_response(rejected: int, message: str, content_type: str | None) -> tuple[bytes, str]:
    """The OTLP export response, in the request's encoding, with partial success when spans were rejected."""
    response = ExportTraceServiceResponse()
    if rejected:
        response.partial_success.CopyFrom(ExportTracePartialSuccess(rejected_spans=rejected, error_message=message))
    if "json" in (content_type or ""):
        return json_format.MessageToJson(response).encode(), "application/json"
    return response.SerializeToString(), "application/x-protobuf"


def _value(any_value) -> Any:
    kind = any_value.WhichOneof("value")
    if kind is None or kind in ("array_value", "kvlist_value", "bytes_value"):
        return None
    return getattr(any_value, kind)


def _attributes(key_values) -> dict[str, Any]:
    return {kv.key: _value(kv.value) for kv in key_values}


def _first(attributes: list[dict[str, Any]], names: tuple[str, ...]) -> Any:
    for scope in attributes:  # span first, then resource
        for name in names:
            if scope.get(name) not in (None, ""):
                return scope[name]
    return None


def _time(unix_nano: int) -> str | None:
    if not unix_nano:
        return None
    return dt.datetime.fromtimestamp(unix_nano / 1e9, dt.timezone.utc).isoformat()


def spans_to_records(request: ExportTraceServiceRequest) -> Spans:
    """Usage events of the GenAI spans in an export (not yet validated: that is intake's job)."""
    found = Spans()
    for resource_spans in request.resource_spans:
        resource = _attributes(resource_spans.resource.attributes)
        service = resource.get("service.name")
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                scopes = [_attributes(span.attributes), resource]
                counts = {name: _first(scopes, names) for name, names in TOKEN_ATTRIBUTES.items()}
                if all(value is None for value in counts.values()):
                    found.ignored += 1
                    continue
                found.records.append(_record(span, scopes, counts, service))
    return found


def _record(span, scopes: list[dict[str, Any]], counts: dict[str, Any], service: Any) -> dict[str, Any]:
    trace_id, span_id = span.trace_id.hex(), span.span_id.hex()
    record: dict[str, Any] = {"event_id": f"otel-{trace_id}-{span_id}", "ts": _time(span.start_time_unix_nano)}
    record.update({name: value for name, value in counts.items() if value is not None})
    for name, names in TEXT_ATTRIBUTES.items():
        value = _first(scopes, names)
        if value is not None:
            record[name] = str(value)
    if span.end_time_unix_nano and span.start_time_unix_nano and span.end_time_unix_nano >= span.start_time_unix_nano:
        record["latency_ms"] = round((span.end_time_unix_nano - span.start_time_unix_nano) / 1e6, 3)
    if span.status.code == Status.STATUS_CODE_ERROR:
        record["status"] = "error"
        record["error"] = span.status.message or "span status ERROR"
    record["source"] = f"otel:{service}" if service else "otel"
    record["metadata"] = {"trace_id": trace_id, "span_id": span_id, "span_name": span.name}
    return record

