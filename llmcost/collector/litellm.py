"""LiteLLM's StandardLoggingPayload (its `generic_api` callback and CustomLogger kwargs) to usage events.

Costs are re-priced by llmcost from the token counts: LiteLLM's float `response_cost` is kept in
metadata as `litellm_response_cost` and never stored as the cost. Identity and use case come from the
request's `metadata.spend_logs_metadata` or `metadata.requester_metadata` (`user_id`, `tenant_id`,
`use_case`, `account_type`), else the end user and the virtual key's user and team.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Mapping
from typing import Any

from llmcost.sdk.usage import extract_usage

IDENTITY_KEYS = ("user_id", "tenant_id", "use_case", "account_type")


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def _time(value: Any) -> str | None:
    seconds = _number(value)
    if seconds is None:
        return None
    try:
        return dt.datetime.fromtimestamp(seconds, dt.timezone.utc).isoformat()
    except (OverflowError, OSError, ValueError):
        return None


def _identity(payload: Mapping[str, Any]) -> dict[str, str]:
    metadata = payload.get("metadata") if isinstance(payload.get("metadata"), Mapping) else {}
    found: dict[str, str] = {}
    for section in ("spend_logs_metadata", "requester_metadata"):
        values = metadata.get(section)
        if isinstance(values, Mapping):
            for key in IDENTITY_KEYS:
                if key not in found and values.get(key) not in (None, ""):
                    found[key] = str(values[key])
    fallbacks = {"user_id": (payload.get("end_user"), metadata.get("user_api_key_user_id")),
                 "tenant_id": (metadata.get("user_api_key_team_id"), metadata.get("user_api_key_org_id"))}
    for key, candidates in fallbacks.items():
        if key not in found:
            value = next((c for c in candidates if c not in (None, "")), None)
            if value is not None:
                found[key] = str(value)
    return found


def _provider_and_model(payload: Mapping[str, Any]) -> tuple[str | None, str | None]:
    model = payload.get("model") if isinstance(payload.get("model"), str) else None
    provider = payload.get("custom_llm_provider") if isinstance(payload.get("custom_llm_provider"), str) else None
    if model and "/" in model and provider is None:
        provider, model = model.split("/", 1)  # LiteLLM's "openai/gpt-4o" names the provider first
    elif model and provider and model.startswith(provider + "/"):
        model = model[len(provider) + 1:]
    return provider, model


def payload_to_record(payload: Any) -> Any:
    """One usage event from one StandardLoggingPayload; anything else passes through for intake to reject."""
    if not isinstance(payload, Mapping):
        return payload
    provider, model = _provider_and_model(payload)
    record: dict[str, Any] = {"source": "litellm", "provider": provider, "model": model}
    if payload.get("id"):
        record["event_id"] = f"litellm-{payload['id']}"
    record["ts"] = _time(payload.get("startTime"))
    start, end = _number(payload.get("startTime")), _number(payload.get("endTime"))
    if start is not None and end is not None and end >= start:
        record["latency_ms"] = round((end - start) * 1000, 3)
    usage = extract_usage(payload.get("response"), provider) if isinstance(payload.get("response"), Mapping) else None
    if usage is not None:
        record.update(input_tokens=usage.input_tokens, output_tokens=usage.output_tokens,
                      cache_read_tokens=usage.cache_read_tokens, cache_write_tokens=usage.cache_write_tokens,
                      reasoning_tokens=usage.reasoning_tokens)
        if usage.model:
            record["model"] = usage.model  # the model that answered (and billed), e.g. a dated snapshot
    else:
        record.update(input_tokens=payload.get("prompt_tokens"), output_tokens=payload.get("completion_tokens"),
                      total_tokens=payload.get("total_tokens"))
    if payload.get("status") == "failure":
        record["status"] = "error"
        record["error"] = str(payload.get("error_str") or "LiteLLM reported a failure")[:10_000]
    record.update(_identity(payload))
    metadata: dict[str, Any] = {"litellm_call_type": payload.get("call_type")}
    cost = _number(payload.get("response_cost"))
    if cost is not None:
        metadata["litellm_response_cost"] = cost  # LiteLLM's float estimate, for comparison only
    if payload.get("trace_id"):
        metadata["litellm_trace_id"] = str(payload["trace_id"])
    record["metadata"] = {k: v for k, v in metadata.items() if v is not None}
    return {k: v for k, v in record.items() if v is not None}


def payloads_to_records(payloads: list[Any]) -> list[Any]:
    return [payload_to_record(payload) for payload in payloads]
