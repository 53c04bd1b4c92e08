"""Token usage read from real provider SDK objects and their dict forms, whole and streamed."""

from __future__ import annotations

from datetime import datetime, timezone
from decimal import Decimal
from types import SimpleNamespace

import pytest
from anthropic.types import (
    Message,
    RawContentBlockDeltaEvent,
    RawContentBlockStartEvent,
    RawContentBlockStopEvent,
    RawMessageDeltaEvent,
    RawMessageStartEvent,
    RawMessageStopEvent,
)
from hypothesis import given, settings
from hypothesis import strategies as st
from openai.types.chat import ChatCompletion, ChatCompletionChunk
from openai.types.responses import Response, ResponseCompletedEvent, ResponseTextDeltaEvent

from llmcost.events import MAX_TOKENS_PER_CALL, UsageEvent
from llmcost.sdk.usage import ExtractedUsage, StreamUsage, extract_usage

CHAT_COMPLETION = {
    "id": "chatcmpl-abc",
    "object": "chat.completion",
    "created": 1_760_000_000,
    "model": "gpt-5-mini-2025-08-07",
    "choices": [
        {
            "index": 0,
            "finish_reason": "stop",
            "message": {"role": "assistant", "content": "Paris is the capital of France."},
        }
    ],
    "usage": {
        "prompt_tokens": 1200,
        "completion_tokens": 300,
        "total_tokens": 1500,
        "prompt_tokens_details": {"cached_tokens": 1024, "audio_tokens": 0},
        "completion_tokens_details": {"reasoning_tokens": 128, "audio_tokens": 0},
    },
}
RESPONSE = {
    "id": "resp_abc",
    "object": "response",
    "created_at": 1_760_000_000,
    "model": "o4-mini-2025-04-16",
    "status": "completed",
    "output": [
        {
            "type": "message",
            "id": "msg_1",
            "role": "assistant",
            "status": "completed",
            "content": [{"type": "output_text", "text": "Hello.", "annotations": []}],
        }
    ],
    "parallel_tool_calls": True,
    "tool_choice": "auto",
    "tools": [],
    "usage": {
        "input_tokens": 900,
        "input_tokens_details": {"cached_tokens": 512, "cache_write_tokens": 64},
        "output_tokens": 400,
        "output_tokens_details": {"reasoning_tokens": 256},
        "total_tokens": 1300,
    },
}
ANTHROPIC_MESSAGE = {
    "id": "msg_01",
    "type": "message",
    "role": "assistant",
    "model": "claude-sonnet-4-5-20250929",
    "content": [{"type": "text", "text": "Hi there."}],
    "stop_reason": "end_turn",
    "stop_sequence": None,
    "usage": {
        "input_tokens": 50,
        "cache_read_input_tokens": 1000,
        "cache_creation_input_tokens": 200,
        "output_tokens": 80,
        "output_tokens_details": {"thinking_tokens": 30},
    },
}
XAI_CHAT = {
    "id": "xai-1",
    "object": "chat.completion",
    "created": 1_760_000_000,
    "model": "grok-4-fast-reasoning",
    "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": "42"}}],
    "usage": {
        "prompt_tokens": 150,
        "completion_tokens": 40,
        "total_tokens": 400,
        "prompt_tokens_details": {"text_tokens": 150, "cached_tokens": 100},
        "completion_tokens_details": {"reasoning_tokens": 210},
        "cost_in_usd_ticks": 37_756_000,
    },
}
GEMINI_SNAKE = {
    "model_version": "gemini-2.5-pro",
    "candidates": [{"content": {"role": "model", "parts": [{"text": "Bonjour"}]}}],
    "usage_metadata": {
        "prompt_token_count": 2000,
        "cached_content_token_count": 1500,
        "candidates_token_count": 300,
        "thoughts_token_count": 700,
        "total_token_count": 3000,
    },
}
GEMINI_CAMEL = {
    "modelVersion": "gemini-2.5-pro",
    "candidates": [{"content": {"role": "model", "parts": [{"text": "Bonjour"}]}}],
    "usageMetadata": {
        "promptTokenCount": 2000,
        "cachedContentTokenCount": 1500,
        "candidatesTokenCount": 300,
        "thoughtsTokenCount": 700,
        "totalTokenCount": 3000,
    },
}


@pytest.mark.parametrize("as_object", [True, False], ids=["sdk-object", "dict"])
def test_openai_chat_completion_keeps_cached_and_reasoning_inside_the_totals(as_object):
    response = ChatCompletion.model_validate(CHAT_COMPLETION) if as_object else CHAT_COMPLETION
    assert extract_usage(response) == ExtractedUsage(
        input_tokens=1200,
        output_tokens=300,
        cache_read_tokens=1024,
        reasoning_tokens=128,
        model="gpt-5-mini-2025-08-07",
        provider="openai",
    )


@pytest.mark.parametrize("as_object", [True, False], ids=["sdk-object", "dict"])
def test_openai_responses_api(as_object):
    response = Response.model_validate(RESPONSE) if as_object else RESPONSE
    assert extract_usage(response) == ExtractedUsage(
        input_tokens=900,
        output_tokens=400,
        cache_read_tokens=512,
        cache_write_tokens=64,
        reasoning_tokens=256,
        model="o4-mini-2025-04-16",
        provider="openai",
    )


@pytest.mark.parametrize("as_object", [True, False], ids=["sdk-object", "dict"])
def test_anthropic_input_is_the_sum_of_uncached_cache_read_and_cache_write(as_object):
    response = Message.model_validate(ANTHROPIC_MESSAGE) if as_object else ANTHROPIC_MESSAGE
    assert extract_usage(response) == ExtractedUsage(
        input_tokens=1250,
        output_tokens=80,
        cache_read_tokens=1000,
        cache_write_tokens=200,
        reasoning_tokens=30,
        model="claude-sonnet-4-5-20250929",
        provider="anthropic",
    )


def test_anthropic_dict_without_type_is_recognised_by_model_or_hint():
    bare = {"model": "claude-haiku-4-5", "usage": {"input_tokens": 12, "output_tokens": 7}}
    assert extract_usage(bare).provider == "anthropic"
    unnamed = {"model": "my-proxy-alias", "usage": {"input_tokens": 12, "output_tokens": 7}}
    assert extract_usage(unnamed, provider="anthropic").provider == "anthropic"
    assert extract_usage(unnamed).provider == "openai"


@pytest.mark.parametrize("as_object", [True, False], ids=["sdk-object", "dict"])
def test_xai_output_adds_reasoning_and_reported_ticks_become_exact_usd(as_object):
    response = ChatCompletion.model_validate(XAI_CHAT) if as_object else XAI_CHAT
    usage = extract_usage(response)
    assert usage == ExtractedUsage(
        input_tokens=150,
        output_tokens=250,
        cache_read_tokens=100,
        reasoning_tokens=210,
        model="grok-4-fast-reasoning",
        provider="x-ai",
        cost_usd=Decimal("0.0037756"),
    )
    assert isinstance(usage.cost_usd, Decimal)


def test_provider_hint_tells_xai_from_openai_when_the_model_name_does_not():
    response = {
        "model": "team-default",
        "usage": {"prompt_tokens": 150, "completion_tokens": 40, "completion_tokens_details": {"reasoning_tokens": 10}},
    }
    assert extract_usage(response, provider="xai").output_tokens == 50
    assert extract_usage(response, provider="x-ai").provider == "x-ai"
    assert extract_usage(response).output_tokens == 40
    assert extract_usage(response).provider == "openai"
    # An OpenAI client pointed at api.x.ai still reports grok models.
    grok = {**response, "model": "grok-3-mini"}
    expected = ExtractedUsage(150, 50, reasoning_tokens=10, model="grok-3-mini", provider="x-ai")
    assert extract_usage(grok, provider="openai") == expected


def test_xai_flat_usage_shape_and_responses_shape():
    flat_usage = {"prompt_tokens": 90, "cached_prompt_text_tokens": 60, "completion_tokens": 20, "reasoning_tokens": 35}
    assert extract_usage({"model": "grok-3-mini", "usage": flat_usage}) == ExtractedUsage(
        90, 55, cache_read_tokens=60, reasoning_tokens=35, model="grok-3-mini", provider="x-ai"
    )
    responses = {
        "object": "response",
        "model": "grok-4",
        "usage": {
            "input_tokens": 300,
            "input_tokens_details": {"cached_tokens": 200},
            "output_tokens": 120,
            "output_tokens_details": {"reasoning_tokens": 100},
            "cost_in_usd_ticks": 12_345,
        },
    }
    assert extract_usage(responses) == ExtractedUsage(
        300, 120, 200, 0, 100, model="grok-4", provider="x-ai", cost_usd=Decimal("0.0000012345")
    )


@pytest.mark.parametrize("payload", [GEMINI_SNAKE, GEMINI_CAMEL], ids=["snake_case", "camelCase"])
def test_gemini_output_adds_thoughts(payload):
    assert extract_usage(payload) == ExtractedUsage(
        input_tokens=2000,
        output_tokens=1000,
        cache_read_tokens=1500,
        reasoning_tokens=700,
        model="gemini-2.5-pro",
        provider="google",
    )


def test_gemini_object_with_tool_use_prompt_tokens_and_omitted_zero_counts():
    # google-genai is not installed; an attribute object stands in for its GenerateContentResponse.
    response = SimpleNamespace(
        model_version="gemini-2.5-flash",
        usage_metadata=SimpleNamespace(
            prompt_token_count=400, candidates_token_count=None, tool_use_prompt_token_count=25
        ),
    )
    expected = ExtractedUsage(425, 0, model="gemini-2.5-flash", provider="google")
    assert extract_usage(response, provider="gemini") == expected


def test_gemini_openai_compatible_endpoint_counts_thoughts_missing_from_completion_tokens():
    usage = {"prompt_tokens": 20, "completion_tokens": 198, "total_tokens": 623}
    response = {"model": "gemini-2.5-flash", "usage": usage}
    assert extract_usage(response, provider="google").output_tokens == 603
    assert extract_usage(response, provider="openai").output_tokens == 198


@pytest.mark.parametrize(
    "garbage",
    [
        None,
        42,
        "text",
        b"bytes",
        {},
        [],
        object(),
        {"usage": None},
        {"usage": 7},
        {"usage": {"foo": 1}},
        {"usage": {"prompt_tokens": "lots", "completion_tokens": 3}},
        {"usage": {"prompt_tokens": -5}},
        {"usage": {"input_tokens": True}},
        {"usage_metadata": {"total_token_count": 9}},
        ChatCompletion.model_validate({**CHAT_COMPLETION, "usage": None}),
        SimpleNamespace(choices=[]),
    ],
)
def test_responses_without_readable_usage_give_none(garbage):
    assert extract_usage(garbage) is None


def test_a_property_that_raises_reads_as_absent():
    class Exploding:
        model = "gpt-4o"

        @property
        def usage(self):
            raise RuntimeError("lazy field failed")

    assert extract_usage(Exploding()) is None


def test_pydantic_models_are_read_by_field_extra_and_property():
    """SDK types are pydantic models: fields and extras (xAI's flat shape on OpenAI's type) are read
    directly, and a property the class defines is still asked."""
    from pydantic import BaseModel, ConfigDict

    class Usage(BaseModel):
        model_config = ConfigDict(extra="allow")
        prompt_tokens: int
        completion_tokens: int

    class Response(BaseModel):
        model_config = ConfigDict(extra="allow")
        usage_box: dict

        @property
        def usage(self):
            return Usage(**self.usage_box)

    response = Response(model="grok-3-mini", usage_box={"prompt_tokens": 90, "completion_tokens": 20,
                                                        "reasoning_tokens": 35, "cached_prompt_text_tokens": 60})
    assert extract_usage(response) == ExtractedUsage(
        90, 55, cache_read_tokens=60, reasoning_tokens=35, model="grok-3-mini", provider="x-ai"
    )


def test_pydantic_models_with_camel_case_fields_are_read_by_either_spelling():
    """A model whose field is the camelCase spelling of a name read (or whose snake_case field is unset) is read
    the long way, spelling by spelling, as a dict is."""
    from pydantic import BaseModel

    class CamelUsage(BaseModel):
        prompt_tokens: int | None = None
        promptTokens: int | None = None  # noqa: N815 (the spelling under test)
        completionTokens: int  # noqa: N815

    class Response(BaseModel):
        model: str
        usage: CamelUsage

    response = Response(model="gpt-4o", usage=CamelUsage(promptTokens=70, completionTokens=7))
    assert extract_usage(response) == ExtractedUsage(70, 7, model="gpt-4o", provider="openai")


def test_inconsistent_provider_details_are_clamped_so_the_event_stays_valid():
    response = {
        "model": "gpt-4o",
        "usage": {
            "prompt_tokens": 10,
            "completion_tokens": 5,
            "prompt_tokens_details": {"cached_tokens": 50},
            "completion_tokens_details": {"reasoning_tokens": 9},
        },
    }
    usage = extract_usage(response)
    assert (usage.cache_read_tokens, usage.reasoning_tokens) == (10, 5)
    _event_from(usage)


@pytest.mark.parametrize(
    "response",
    [
        ChatCompletion.model_validate(CHAT_COMPLETION),
        Response.model_validate(RESPONSE),
        Message.model_validate(ANTHROPIC_MESSAGE),
        XAI_CHAT,
        GEMINI_CAMEL,
    ],
    ids=["openai-chat", "openai-responses", "anthropic", "x-ai", "gemini"],
)
def test_every_extracted_usage_builds_a_valid_usage_event(response):
    usage = extract_usage(response)
    event = _event_from(usage)
    assert event.total_tokens == usage.input_tokens + usage.output_tokens
    assert event.price_source == ("provider" if usage.cost_usd is not None else None)


def _event_from(usage: ExtractedUsage) -> UsageEvent:
    return UsageEvent(
        ts=datetime(2026, 1, 1, tzinfo=timezone.utc),
        user_id="u1",
        tenant_id="t1",
        use_case="chat",
        provider=usage.provider,
        model=usage.model,
        input_tokens=usage.input_tokens,
        output_tokens=usage.output_tokens,
        cache_read_tokens=usage.cache_read_tokens,
        cache_write_tokens=usage.cache_write_tokens,
        reasoning_tokens=usage.reasoning_tokens,
        cost_usd=usage.cost_usd,
    )


# --- streams ---------------------------------------------------------------------------------


def _chat_chunk(content: str | None = None, usage: dict | None = None, delta: dict | None = None):
    if content is not None:
        delta = {"content": content}
    choices = [] if delta is None else [{"index": 0, "delta": delta, "finish_reason": None}]
    chunk = {"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "gpt-4o-mini", "choices": choices}
    return ChatCompletionChunk.model_validate({**chunk, "usage": usage})


def test_openai_chat_stream_reads_usage_from_the_final_chunk():
    stream = StreamUsage()
    for text in ("Hel", "lo ", "world"):
        stream.add(_chat_chunk(text))
    assert stream.result() is None
    stream.add(_chat_chunk(usage={"prompt_tokens": 20, "completion_tokens": 3, "total_tokens": 23}))
    assert stream.result() == ExtractedUsage(20, 3, model="gpt-4o-mini", provider="openai")
    assert stream.text_chars == len("Hello world")


def test_openai_chat_stream_cut_before_the_usage_chunk_gives_none_but_counts_text():
    stream = StreamUsage(provider="openai")
    stream.add(_chat_chunk("The answer is"))
    stream.add(_chat_chunk(delta={"tool_calls": [{"index": 0, "function": {"arguments": '{"a":1}'}}]}))
    assert stream.result() is None
    assert stream.text_chars == len("The answer is") + len('{"a":1}')


def test_xai_chat_stream_as_dicts_with_the_provider_hint():
    stream = StreamUsage(provider="xai")
    stream.add({"model": "team-alias", "choices": [{"delta": {"reasoning_content": "thinking", "content": "ok"}}]})
    stream.add({"model": "team-alias", "choices": [], "usage": XAI_CHAT["usage"]})
    assert stream.result() == ExtractedUsage(150, 250, 100, 0, 210, "team-alias", "x-ai", Decimal("0.0037756"))
    assert stream.text_chars == len("thinking") + len("ok")


def _text_delta(text: str, sequence: int) -> ResponseTextDeltaEvent:
    return ResponseTextDeltaEvent(
        type="response.output_text.delta",
        delta=text,
        item_id="msg_1",
        output_index=0,
        content_index=0,
        sequence_number=sequence,
        logprobs=[],
    )


def test_openai_responses_stream_reads_usage_from_response_completed():
    stream = StreamUsage()
    in_progress = {**RESPONSE, "status": "in_progress", "usage": None}
    stream.add({"type": "response.created", "sequence_number": 0, "response": in_progress})
    stream.add(_text_delta("Hel", 1))
    stream.add(_text_delta("lo.", 2))
    stream.add({"type": "response.audio.delta", "delta": "QUJDRA=="})
    assert stream.result() is None
    assert stream.text_chars == 6
    completed = Response.model_validate(RESPONSE)
    stream.add(ResponseCompletedEvent(type="response.completed", sequence_number=3, response=completed))
    assert stream.result() == ExtractedUsage(900, 400, 512, 64, 256, "o4-mini-2025-04-16", "openai")


def _anthropic_stream_events() -> list:
    start_usage = {**ANTHROPIC_MESSAGE["usage"], "output_tokens": 1, "output_tokens_details": None}
    start_message = {**ANTHROPIC_MESSAGE, "content": [], "stop_reason": None, "usage": start_usage}
    thinking_block = {"type": "thinking", "thinking": "", "signature": ""}
    final_usage = {"output_tokens": 80, "output_tokens_details": {"thinking_tokens": 30}}
    return [
        RawMessageStartEvent(type="message_start", message=Message.model_validate(start_message)),
        RawContentBlockStartEvent(type="content_block_start", index=0, content_block=thinking_block),
        RawContentBlockDeltaEvent.model_validate(
            {"type": "content_block_delta", "index": 0, "delta": {"type": "thinking_delta", "thinking": "Hmm, think."}}
        ),
        RawContentBlockStopEvent(type="content_block_stop", index=0),
        RawContentBlockDeltaEvent.model_validate(
            {"type": "content_block_delta", "index": 1, "delta": {"type": "text_delta", "text": "Hi there."}}
        ),
        RawMessageDeltaEvent.model_validate(
            {"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": final_usage}
        ),
        RawMessageStopEvent(type="message_stop"),
    ]


@pytest.mark.parametrize("as_object", [True, False], ids=["sdk-objects", "dicts"])
def test_anthropic_stream_combines_message_start_and_message_delta(as_object):
    stream = StreamUsage()
    for event in _anthropic_stream_events():
        stream.add(event if as_object else event.model_dump())
    assert stream.result() == ExtractedUsage(1250, 80, 1000, 200, 30, "claude-sonnet-4-5-20250929", "anthropic")
    assert stream.text_chars == len("Hmm, think.") + len("Hi there.")


def test_anthropic_stream_cut_before_message_delta_gives_none():
    stream = StreamUsage(provider="anthropic")
    for event in _anthropic_stream_events()[:5]:
        stream.add(event)
    assert stream.result() is None
    assert stream.text_chars > 0


def test_anthropic_message_delta_cumulative_input_counts_override_message_start():
    stream = StreamUsage()
    stream.add(_anthropic_stream_events()[0])
    cumulative = {"input_tokens": 70, "cache_read_input_tokens": 1000, "output_tokens": 90}
    stream.add({"type": "message_delta", "delta": {}, "usage": cumulative})
    assert stream.result() == ExtractedUsage(1270, 90, 1000, 200, 0, "claude-sonnet-4-5-20250929", "anthropic")


def _gemini_chunk(text: str, candidates_tokens: int, finish_reason: str | None = None) -> dict:
    candidate = {"content": {"parts": [{"text": text}]}, "finishReason": finish_reason}
    usage = {"promptTokenCount": 30, "candidatesTokenCount": candidates_tokens, "thoughtsTokenCount": 12}
    return {"modelVersion": "gemini-2.5-flash", "candidates": [candidate], "usageMetadata": usage}


def test_gemini_stream_last_usage_metadata_wins():
    stream = StreamUsage()
    stream.add(_gemini_chunk("Bon", 2))
    stream.add(_gemini_chunk("jour", 5, finish_reason="STOP"))
    assert stream.result() == ExtractedUsage(30, 17, 0, 0, 12, "gemini-2.5-flash", "google")
    assert stream.text_chars == len("Bonjour")


def test_gemini_stream_cut_before_the_finishing_chunk_gives_none():
    stream = StreamUsage(provider="google")
    stream.add(_gemini_chunk("Bon", 2))
    assert stream.result() is None
    assert stream.text_chars == 3


def test_stream_ignores_chunks_it_does_not_know():
    stream = StreamUsage()
    odd_chunks = [None, 42, "data: [DONE]", b"", {}, [], object(), {"type": "ping"}, {"type": "message_delta"}]
    for chunk in [*odd_chunks, {"choices": "x"}, {"candidates": [{"content": {"parts": [{"text": 5}]}}]}]:
        stream.add(chunk)
    assert stream.result() is None
    assert stream.text_chars == 0


_COUNT_NAMES = [
    "prompt_tokens", "completion_tokens", "input_tokens", "output_tokens", "cache_read_input_tokens",
    "cache_creation_input_tokens", "cached_tokens", "cache_write_tokens", "reasoning_tokens", "thinking_tokens",
    "cost_in_usd_ticks", "prompt_token_count", "candidates_token_count", "thoughtsTokenCount",
    "cached_content_token_count", "tool_use_prompt_token_count",
]
_DETAIL_NAMES = ["prompt_tokens_details", "completion_tokens_details", "input_tokens_details", "output_tokens_details"]
_ODD_VALUES = st.one_of(st.none(), st.booleans(), st.floats(), st.text(max_size=4), st.lists(st.integers(), max_size=2))
_COUNTS = st.one_of(st.integers(0, 10**6), st.integers(-5, 2 * 10**9), _ODD_VALUES)
_DETAILS = st.dictionaries(st.sampled_from(_COUNT_NAMES), _COUNTS, max_size=3) | _ODD_VALUES
_USAGE = st.fixed_dictionaries(
    {}, optional={name: _COUNTS for name in _COUNT_NAMES} | {name: _DETAILS for name in _DETAIL_NAMES}
)
_COMMON = {
    "model": st.sampled_from(["gpt-4o", "grok-4", "claude-sonnet-4-5", "gemini-2.5-pro", ""]) | _ODD_VALUES,
    "type": st.sampled_from(["message", "message_start", "content_block_delta", "ping"]) | _ODD_VALUES,
    "choices": st.lists(st.fixed_dictionaries({"delta": st.dictionaries(st.just("content"), _ODD_VALUES)})),
}
_RESPONSE_LIKE = st.one_of(
    st.fixed_dictionaries({"usage": _USAGE}, optional=_COMMON),
    st.fixed_dictionaries({"usageMetadata": _USAGE}, optional=_COMMON),
    st.fixed_dictionaries({"type": st.just("message_start"), "message": st.fixed_dictionaries({"usage": _USAGE})}),
    st.fixed_dictionaries({"type": st.just("message_delta"), "usage": _USAGE}),
    st.fixed_dictionaries({"type": st.just("response.completed"), "response": _USAGE.map(lambda u: {"usage": u})}),
)
_JSON_LIKE = st.recursive(
    _ODD_VALUES | st.integers(), lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner)
)


@settings(max_examples=250, deadline=None)
@given(payloads=st.lists(_RESPONSE_LIKE | _JSON_LIKE, max_size=4))
def test_arbitrary_shapes_never_raise_and_never_give_invalid_counts(payloads):
    stream = StreamUsage()
    for payload in payloads:
        stream.add(payload)
        for usage in (extract_usage(payload), stream.result()):
            if usage is not None:
                assert 0 <= usage.input_tokens <= MAX_TOKENS_PER_CALL
                assert 0 <= usage.output_tokens <= MAX_TOKENS_PER_CALL
                assert 0 <= usage.cache_read_tokens + usage.cache_write_tokens <= usage.input_tokens
                assert 0 <= usage.reasoning_tokens <= usage.output_tokens
                assert usage.cost_usd is None or usage.cost_usd >= 0
