"""Read token usage out of LLM provider responses, whole or streamed, as SDK objects or plain dicts.

Counts follow `UsageEvent`: `input_tokens` includes cached tokens and `output_tokens` includes
reasoning tokens, whatever the provider's own convention. Each provider shape has one small reader.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass, replace
from decimal import Decimal
from typing import Any

from pydantic import BaseModel

from llmcost.events import MAX_TOKENS_PER_CALL
from llmcost.providers import canonical_provider

# xAI reports its charge in ticks: 1 USD = 10^10 ticks (https://docs.x.ai/developers/cost-tracking).
XAI_TICKS_PER_USD_EXPONENT = 10
_ANTHROPIC_CACHE_FIELDS = ("cache_read_input_tokens", "cache_creation_input_tokens")
_ANTHROPIC_USAGE_FIELDS = ("input_tokens", "output_tokens", *_ANTHROPIC_CACHE_FIELDS, "output_tokens_details",
                           "cache_creation", "service_tier")
_RESPONSES_FINAL_EVENTS = ("response.completed", "response.incomplete", "response.failed")


@dataclass(frozen=True)
class ExtractedUsage:
    """Token counts one response reports, normalised to llmcost's conventions.

    `provider` is 'openai', 'anthropic', 'x-ai' or 'google' as the shape and model name show, or the
    caller's hint (an unknown name passes through; 'openai' yields to 'x-ai' for grok models).
    `cost_usd` is set only when the provider itself reported its charge (xAI's `cost_in_usd_ticks`).
    `model` is the model the response names (it may be a dated snapshot of the one requested);
    `cache_write_1h_tokens` (Anthropic's 1-hour cache writes) are counted inside `cache_write_tokens`;
    `service_tier` is the tier the response says served it (OpenAI's default/flex/priority, Anthropic's
    standard/priority/batch).
    """

    input_tokens: int
    output_tokens: int
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    reasoning_tokens: int = 0
    model: str | None = None
    provider: str | None = None
    cost_usd: Decimal | None = None
    cache_write_1h_tokens: int = 0
    service_tier: str | None = None


def extract_usage(response: Any, provider: str | None = None) -> ExtractedUsage | None:
    """The usage a provider response reports, or None when it carries none we can read.

    Reads OpenAI Chat Completions and Responses, Anthropic Messages, xAI (OpenAI shapes, model
    `grok-*`) and Gemini `GenerateContentResponse` (snake_case or camelCase), as SDK objects or dicts.
    `provider` tells OpenAI from xAI when the model name does not. Never raises on odd shapes.
    """
    usage = _checked(_read(response, canonical_provider(provider)))
    tier = _text(_field(response, "service_tier"))
    if usage is not None and tier and usage.service_tier is None:
        usage = replace(usage, service_tier=tier)
    return usage


def _read(response: Any, hint: str | None) -> ExtractedUsage | None:
    if response is None or isinstance(response, (str, bytes, int, float)):
        return None
    model = _text(_field(response, "model"))
    metadata = _field(response, "usage_metadata")
    if metadata is not None:
        return _from_gemini(metadata, _text(_field(response, "model_version")) or model, hint or "google")
    usage = _field(response, "usage")
    if usage is None or isinstance(usage, (str, bytes, int, float)):
        return None
    model_name = (model or "").lower()
    # An OpenAI client pointed at api.x.ai is still xAI: its model names and reported cost give it away.
    ticks = _field(usage, "cost_in_usd_ticks")
    looks_xai = model_name.startswith("grok") or ticks is not None
    is_xai = hint == "x-ai" or (looks_xai and hint in (None, "openai"))
    openai_shaped_provider = "x-ai" if is_xai else (hint or "openai")
    prompt = _field(usage, "prompt_tokens")
    if prompt is not None:
        return _from_chat_completions(usage, model, openai_shaped_provider, is_xai, prompt, ticks)
    if _field(usage, "input_tokens") is None:
        return None
    has_cache_fields = any(_field(usage, name) is not None for name in _ANTHROPIC_CACHE_FIELDS)
    is_anthropic = _field(response, "type") == "message" or model_name.startswith("claude") or has_cache_fields
    if hint == "anthropic" or is_anthropic:
        return _from_anthropic(usage, model, hint or "anthropic")
    return _from_responses(usage, model, openai_shaped_provider, ticks)


class StreamUsage:
    """Accumulates usage across streamed chunks: OpenAI chat chunks (usage on the final chunk when
    stream_options={'include_usage': True}), OpenAI Responses stream events (response.completed carries
    response.usage), Anthropic stream events (message_start carries usage.input_tokens + cache fields;
    message_delta carries cumulative usage.output_tokens), Gemini chunks (usage_metadata on chunks, last wins).

    `result()` is None until the final usage has arrived (Anthropic's message_delta, Gemini's chunk with a
    finish_reason), so a stream cut short is estimated from `text_chars` rather than undercounted.
    """

    def __init__(self, provider: str | None = None):
        self._hint = canonical_provider(provider)
        self._latest: ExtractedUsage | None = None
        self._latest_final = False
        self._model: str | None = None
        self._anthropic_usage: dict[str, Any] = {}
        self._anthropic_finished = False
        self._text_chars = 0

    @property
    def text_chars(self) -> int:
        """Characters of generated text (answer, reasoning, tool arguments) seen so far."""
        return self._text_chars

    def add(self, chunk: Any) -> None:
        """Take one streamed chunk or event into account; unknown chunks are ignored."""
        if chunk is None or isinstance(chunk, (str, bytes, int, float)):
            return
        kind = _field(chunk, "type")
        kind = kind if isinstance(kind, str) else None
        self._text_chars += _generated_chars(chunk, kind)
        self._model = _text(_field(chunk, "model")) or _text(_field(chunk, "model_version")) or self._model
        if kind in ("message_start", "message_delta"):
            self._add_anthropic_event(kind, chunk)
            return
        final = True
        if kind in _RESPONSES_FINAL_EVENTS:
            usage = extract_usage(_field(chunk, "response"), self._hint)
        elif kind is None or not kind.startswith(("response.", "content_block", "message_")):
            usage = extract_usage(chunk, self._hint)  # OpenAI chat and Gemini chunks: the last usage wins
            if _field(chunk, "usage_metadata") is not None:
                # Gemini repeats running counts on every chunk; the chunk that finishes the answer has the final ones.
                final = any(_field(c, "finish_reason") for c in _items(_field(chunk, "candidates")))
        else:
            usage = None
        if usage is not None:
            self._latest, self._latest_final = usage, final

    def result(self) -> ExtractedUsage | None:
        """The stream's usage, or None when no final usage was seen (the stream was cut short)."""
        if self._anthropic_finished:
            usage = _checked(_from_anthropic(self._anthropic_usage, self._model, self._hint or "anthropic"))
        else:
            usage = self._latest if self._latest_final else None
        if usage is not None and usage.model is None and self._model is not None:
            usage = replace(usage, model=self._model)
        return usage

    def _add_anthropic_event(self, kind: str, event: Any) -> None:
        source = _field(event, "message") if kind == "message_start" else event
        if kind == "message_start":
            self._model = _text(_field(source, "model")) or self._model
        usage = _field(source, "usage")
        for name in _ANTHROPIC_USAGE_FIELDS:
            value = _field(usage, name)
            if value is not None:
                self._anthropic_usage[name] = value
        if kind == "message_delta" and _count(_field(usage, "output_tokens")) is not None:
            self._anthropic_finished = True


def _from_chat_completions(usage: Any, model: str | None, provider: str, is_xai: bool, prompt: Any,
                           ticks: Any) -> ExtractedUsage | None:
    """`usage`'s counts; `prompt` and `ticks` are its prompt_tokens and cost_in_usd_ticks, read already."""
    prompt = _count(prompt)
    if prompt is None:
        return None
    completion = _count(_field(usage, "completion_tokens")) or 0
    reasoning = _count(_path(usage, "completion_tokens_details", "reasoning_tokens"))
    prompt_details = _field(usage, "prompt_tokens_details")
    cached = _count(_field(prompt_details, "cached_tokens"))
    # Top-level reasoning_tokens and cached_prompt_text_tokens are xAI's older flat shape.
    reasoning = reasoning or _count(_field(usage, "reasoning_tokens")) or 0
    cached = cached or _count(_field(usage, "cached_prompt_text_tokens")) or 0
    cache_write = _count(_field(prompt_details, "cache_write_tokens")) or 0
    # xAI's completion_tokens leaves reasoning out; OpenAI's already counts it.
    output = completion + reasoning if is_xai else completion
    if provider == "google":
        # Gemini's OpenAI-compatible endpoint may leave thoughts out of completion_tokens, never out of the total.
        output = max(output, (_count(_field(usage, "total_tokens")) or 0) - prompt)
    return ExtractedUsage(prompt, output, cached, cache_write, reasoning, model, provider, _cost_of_ticks(ticks))


def _from_responses(usage: Any, model: str | None, provider: str, ticks: Any) -> ExtractedUsage | None:
    input_tokens = _count(_field(usage, "input_tokens"))
    if input_tokens is None:
        return None
    output_tokens = _count(_field(usage, "output_tokens")) or 0
    cached = _count(_path(usage, "input_tokens_details", "cached_tokens")) or 0
    cache_write = _count(_path(usage, "input_tokens_details", "cache_write_tokens")) or 0
    reasoning = _count(_path(usage, "output_tokens_details", "reasoning_tokens")) or 0
    cost = _cost_of_ticks(ticks)
    return ExtractedUsage(input_tokens, output_tokens, cached, cache_write, reasoning, model, provider, cost)


def _from_anthropic(usage: Any, model: str | None, provider: str) -> ExtractedUsage | None:
    uncached_input = _count(_field(usage, "input_tokens"))
    if uncached_input is None:
        return None
    cache_read = _count(_field(usage, "cache_read_input_tokens")) or 0
    # cache_creation splits the writes by how long they are kept: 1-hour writes cost more than 5-minute ones.
    one_hour = _count(_path(usage, "cache_creation", "ephemeral_1h_input_tokens")) or 0
    five_minutes = _count(_path(usage, "cache_creation", "ephemeral_5m_input_tokens")) or 0
    cache_write = max(_count(_field(usage, "cache_creation_input_tokens")) or 0, one_hour + five_minutes)
    output_tokens = _count(_field(usage, "output_tokens")) or 0
    thinking = _count(_path(usage, "output_tokens_details", "thinking_tokens")) or 0
    total_input = uncached_input + cache_read + cache_write
    return ExtractedUsage(total_input, output_tokens, cache_read, cache_write, thinking, model, provider, None,
                          cache_write_1h_tokens=one_hour, service_tier=_text(_field(usage, "service_tier")))


def _from_gemini(metadata: Any, model: str | None, provider: str) -> ExtractedUsage | None:
    prompt = _count(_field(metadata, "prompt_token_count"))
    candidates = _count(_field(metadata, "candidates_token_count"))
    if prompt is None and candidates is None:
        return None
    # Gemini leaves zero counts out, and bills tool-use prompt tokens as input and thoughts as output.
    thoughts = _count(_field(metadata, "thoughts_token_count")) or 0
    tool_prompt = _count(_field(metadata, "tool_use_prompt_token_count")) or 0
    cached = _count(_field(metadata, "cached_content_token_count")) or 0
    input_tokens, output_tokens = (prompt or 0) + tool_prompt, (candidates or 0) + thoughts
    return ExtractedUsage(input_tokens, output_tokens, cached, 0, thoughts, model, provider, None)


def _checked(usage: ExtractedUsage | None) -> ExtractedUsage | None:
    """Clamp the breakdowns to their totals: a provider's inconsistent detail must not make the record invalid."""
    if usage is None or max(usage.input_tokens, usage.output_tokens) > MAX_TOKENS_PER_CALL:
        return None  # past the limit is a data error, not a real call: the tracker's estimate is the better record
    cache_read = min(usage.cache_read_tokens, usage.input_tokens)
    cache_write = min(usage.cache_write_tokens, usage.input_tokens - cache_read)
    one_hour = min(usage.cache_write_1h_tokens, cache_write)
    reasoning = min(usage.reasoning_tokens, usage.output_tokens)
    if (cache_read, cache_write, one_hour, reasoning) == (usage.cache_read_tokens, usage.cache_write_tokens,
                                                         usage.cache_write_1h_tokens, usage.reasoning_tokens):
        return usage  # consistent already, the usual case
    return replace(usage, cache_read_tokens=cache_read, cache_write_tokens=cache_write, reasoning_tokens=reasoning,
                   cache_write_1h_tokens=one_hour)


def _cost_of_ticks(value: Any) -> Decimal | None:
    """xAI's reported charge in USD from its `cost_in_usd_ticks`, or None when that is not a count."""
    ticks = _count(value)
    return None if ticks is None else Decimal(ticks).scaleb(-XAI_TICKS_PER_USD_EXPONENT)


def _generated_chars(chunk: Any, kind: str | None) -> int:
    # Responses API deltas carry text (answer, reasoning, tool arguments), except audio's, which is base64.
    if kind and kind.startswith("response.") and kind.endswith(".delta") and kind != "response.audio.delta":
        return _length(_field(chunk, "delta"))
    if kind == "content_block_delta":
        delta = _field(chunk, "delta")
        return sum(_length(_field(delta, name)) for name in ("text", "thinking", "partial_json"))
    chars = 0
    for choice in _items(_field(chunk, "choices")):
        delta = _field(choice, "delta")
        for name in ("content", "refusal", "reasoning_content", "reasoning"):
            chars += _length(_field(delta, name))
        for call in _items(_field(delta, "tool_calls")):
            chars += _length(_path(call, "function", "arguments"))
    for candidate in _items(_field(chunk, "candidates")):
        for part in _items(_path(candidate, "content", "parts")):
            chars += _length(_field(part, "text"))
    return chars


def _field(source: Any, name: str) -> Any:
    """`name` (or its camelCase form) from a dict or an object; None when absent or unreadable."""
    if source is None:
        return None
    cls = type(source)
    plain = _PLAIN_READS.get((cls, name))
    if plain is None:
        plain = _plain_read(cls, name)
    if plain:
        try:
            if not source.__pydantic_extra__:
                return source.__dict__.get(name)
        except Exception:  # an instance pydantic never initialised: read the long way, which says it is absent
            pass
    reader = _READERS.get(cls)
    if reader is None:
        if len(_READERS) >= 1024:  # classes made on the fly must not grow it without end
            _READERS.clear()
        reader = _READERS[cls] = _reader_for(cls)
    return reader(source, _SPELLINGS.get(name) or _spellings(name))


_SPELLINGS: dict[str, tuple[str, ...]] = {}
_PLAIN_READS: dict[tuple[type, str], bool] = {}


def _plain_read(cls: type, name: str) -> bool:
    """Whether `_field` of `name` on an instance of `cls` without extras is the instance's field `name` itself: a
    pydantic model (not a Mapping) where no spelling of the name is a class attribute, nor any other spelling a
    field. Judged once per class and name; the SDKs' response types are such models."""
    spellings = _SPELLINGS.get(name) or _spellings(name)
    plain = (issubclass(cls, BaseModel) and not issubclass(cls, Mapping)
             and not any(_class_has(cls, key) for key in spellings)
             and not any(key in cls.model_fields for key in spellings[1:]))
    if len(_PLAIN_READS) >= 4096:  # classes made on the fly must not grow it without end
        _PLAIN_READS.clear()
    _PLAIN_READS[cls, name] = plain
    return plain


def _spellings(name: str) -> tuple[str, ...]:
    head, *rest = name.split("_")
    found = (name, head + "".join(word.title() for word in rest)) if rest else (name,)
    if len(_SPELLINGS) < 512:
        _SPELLINGS[name] = found
    return found


@functools.lru_cache(maxsize=4096)
def _class_has(cls: type, key: str) -> bool:
    """Whether a class defines `key` (a property, say): asked once per class and name."""
    return hasattr(cls, key)


def _from_mapping(source: Any, keys: tuple[str, ...]) -> Any:
    """The first of `keys` a mapping holds a value for (not None)."""
    for key in keys:
        try:
            value = source.get(key)
        except Exception:  # a get() that raises is an odd shape, and odd shapes read as absent
            value = None
        if value is not None:
            return value
    return None


def _from_model(source: Any, keys: tuple[str, ...]) -> Any:
    """The first of `keys` a pydantic model holds a value for (not None)."""
    # The SDKs' types are pydantic models: read their fields and extras directly, since a missing
    # attribute costs an exception inside pydantic, and most names looked for are missing.
    cls = type(source)
    for key in keys:
        try:
            value = source.__dict__.get(key)
            if value is None:
                extra = source.__pydantic_extra__
                if extra:
                    value = extra.get(key)
                if value is None and _class_has(cls, key):
                    value = getattr(source, key, None)
        except Exception:  # a property that raises is an odd shape, and odd shapes read as absent
            value = None
        if value is not None:
            return value
    return None


def _from_object(source: Any, keys: tuple[str, ...]) -> Any:
    """The first of `keys` an object (or an object that says it is a Mapping) holds a value for (not None)."""
    for key in keys:
        try:
            if isinstance(source, Mapping):  # an object that says it is a Mapping (its class may change its mind)
                value = source.get(key)
            else:
                value = getattr(source, key, None)
        except Exception:  # a property that raises is an odd shape, and odd shapes read as absent
            value = None
        if value is not None:
            return value
    return None


_READERS: dict[type, Any] = {}


def _reader_for(cls: type):
    """How to read a field of instances of `cls`, decided once per class."""
    if issubclass(cls, Mapping):
        return _from_mapping
    if issubclass(cls, BaseModel):
        return _from_model
    return _from_object


def _path(source: Any, *names: str) -> Any:
    for name in names:
        source = _field(source, name)
    return source


def _count(value: Any) -> int | None:
    """A token count as a non-negative int, or None when the value is not one."""
    if type(value) is int:
        return value if value >= 0 else None
    if isinstance(value, bool):
        return None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return value if isinstance(value, int) and value >= 0 else None


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _length(value: Any) -> int:
    return len(value) if isinstance(value, str) else 0


def _items(value: Any) -> list:
    return list(value) if isinstance(value, (list, tuple)) else []

