"""The SDK as a new user meets it: async clients, streams of every API, a stream without usage.

Real openai / anthropic clients talk to the local server in tests/fake_provider.py; only the paid API is faked.
"""

import asyncio
import json
import logging

import anthropic
import openai
import pytest

from llmcost.ingestion.run import ingest
from llmcost.store import connection as store

from .fake_provider import FakeProvider, anthropic_message, chat_completion, responses_response

MESSAGES = [{"role": "user", "content": "hi"}]


@pytest.fixture
def provider():
    server = FakeProvider()
    server.chat = chat_completion(model="gpt-4o-mini", prompt_tokens=400, completion_tokens=200, cached=0)
    server.response = responses_response(model="gpt-4o-mini", input_tokens=400, output_tokens=200)
    server.message = anthropic_message(input_tokens=400, output_tokens=200, cache_read=0, cache_write=0)
    server.stream_usage = (400, 200)
    yield server
    server.close()


def usage_records(settings):
    records = []
    for path in sorted(settings.journal_dir.glob("*.jsonl")):
        records.extend(json.loads(line) for line in path.read_bytes().splitlines())
    return [r for r in records if r.get("record") != "attempt"]


def stored_tokens(settings):
    ingest(settings)
    with store.reading(settings.db_path) as db:
        return db.execute("SELECT input_tokens, output_tokens, usage_estimated, status FROM usage_events").fetchall()


def clients(provider, asynchronous):
    if asynchronous:
        return (openai.AsyncOpenAI(base_url=provider.url + "/v1", api_key="k", max_retries=0),
                anthropic.AsyncAnthropic(base_url=provider.url, api_key="k", max_retries=0))
    return (openai.OpenAI(base_url=provider.url + "/v1", api_key="k", max_retries=0),
            anthropic.Anthropic(base_url=provider.url, api_key="k", max_retries=0))


def create_call(api, openai_client, anthropic_client, stream):
    """The `create` method of one API through a wrapped client, and its keyword arguments."""
    options = {"stream": True} if stream else {}
    if api == "chat":
        return openai_client.chat.completions.create, dict(model="gpt-4o-mini", messages=MESSAGES, **options)
    if api == "responses":
        return openai_client.responses.create, dict(model="gpt-4o-mini", input="hi", **options)
    return anthropic_client.messages.create, dict(model="claude-haiku-4-5", max_tokens=1024, messages=MESSAGES,
                                                  **options)


API_TEXT = {
    "chat": lambda item: "".join(c.delta.content or "" for c in item.choices),
    "responses": lambda item: getattr(item, "delta", "") if item.type == "response.output_text.delta" else "",
    "messages": lambda item: item.delta.text if item.type == "content_block_delta" else "",
}


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
@pytest.mark.parametrize("api", ["chat", "responses", "messages"])
@pytest.mark.parametrize("asynchronous", [False, True], ids=["sync", "async"])
def test_wrapped_clients_record_the_exact_usage_of_every_api_sync_and_async(
        tracker, settings, provider, asynchronous, api, stream):
    openai_client, anthropic_client = (tracker.wrap(c, use_case="chat_tutor") for c in clients(provider, asynchronous))
    create, kwargs = create_call(api, openai_client, anthropic_client, stream)

    def read(result):
        return "".join(API_TEXT[api](item) for item in result) if stream else "answer"

    async def run_async():
        result = await create(**kwargs)
        text = "".join([API_TEXT[api](item) async for item in result]) if stream else "answer"
        await openai_client.close()
        await anthropic_client.close()
        return text

    with tracker.identity(user_id="u", tenant_id="t"):
        text = asyncio.run(run_async()) if asynchronous else read(create(**kwargs))
    assert text == ("word0 word1 word2 word3 word4 " if stream and api != "chat" else
                    "".join(f"word{n} " for n in range(20)) if stream else "answer")
    events = usage_records(settings)
    assert len(events) == 1, events  # no phantom error event beside the real one
    event = events[0]
    assert (event["input_tokens"], event["output_tokens"], event["usage_estimated"], event["status"]) == (
        400, 200, False, "ok"), event
    assert stored_tokens(settings) == [(400, 200, False, "ok")]


def test_an_async_stream_left_early_is_recorded_once_as_closed_early(tracker, settings, provider):
    client = tracker.wrap(clients(provider, asynchronous=True)[0], use_case="chat_tutor")

    async def read_two():
        stream = await client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, stream=True)
        seen = 0
        async with stream:
            async for _ in stream:
                seen += 1
                if seen == 2:
                    break
        await client.close()
        return seen

    with tracker.identity(user_id="u", tenant_id="t"):
        assert asyncio.run(read_two()) == 2
    (event,) = usage_records(settings)
    assert event["status"] == "error" and event["error"].startswith("StreamClosedEarly")
    assert event["usage_estimated"] is True and event["output_tokens"] > 0


def test_an_async_decorated_function_records_the_usage_of_the_response_it_returns(tracker, settings, provider):
    client = clients(provider, asynchronous=True)[0]

    @tracker.track(use_case="interaction_generator", provider="openai", model="gpt-4o-mini")
    async def generate(prompt, user_id, tenant_id):
        return await client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": prompt}])

    async def main():
        await generate("make a quiz", user_id="teacher-7", tenant_id="school-2")
        await client.close()

    asyncio.run(main())
    (event,) = usage_records(settings)
    assert (event["user_id"], event["input_tokens"], event["output_tokens"], event["usage_estimated"]) == (
        "teacher-7", 400, 200, False)


def test_a_stream_that_ends_without_usage_warns_naming_stream_options_and_marks_the_event(
        tracker, settings, provider, caplog):
    provider.stream_usage = (2222, 1111)
    client = clients(provider, asynchronous=False)[0]
    with caplog.at_level(logging.WARNING, logger="llmcost"):
        with tracker.call(use_case="chat_tutor", user_id="u", tenant_id="t", provider="openai",
                          model="gpt-4o-mini") as call:
            chunks = list(call.stream(client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES,
                                                                     stream=True)))
    assert len(chunks) == 21  # 20 words and the stop chunk: without the option the provider sends no usage chunk
    (event,) = usage_records(settings)
    assert event["usage_estimated"] is True and event["status"] == "ok"
    assert (event["input_tokens"], event["output_tokens"]) != (2222, 1111)
    reason = event["metadata"]["usage_estimated_reason"]
    assert "stream_options={'include_usage': True}" in reason and reason == event["error"]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("stream_options={'include_usage': True}" in w and "chat_tutor" in w for w in warnings), warnings

    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="llmcost"):
        with tracker.call(use_case="chat_tutor", user_id="u", tenant_id="t", provider="openai",
                          model="gpt-4o-mini") as call:
            list(call.stream(client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, stream=True,
                                                            stream_options={"include_usage": True})))
    exact = usage_records(settings)[1]
    assert (exact["input_tokens"], exact["output_tokens"], exact["usage_estimated"]) == (2222, 1111, False)
    assert "usage_estimated_reason" not in exact.get("metadata", {})
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_a_stream_form_left_before_its_end_is_not_blamed_on_stream_options(tracker, settings, provider, caplog):
    client = clients(provider, asynchronous=False)[0]
    with caplog.at_level(logging.WARNING, logger="llmcost"):
        with tracker.call(use_case="chat_tutor", user_id="u", tenant_id="t", provider="openai",
                          model="gpt-4o-mini") as call:
            for n, _ in enumerate(call.stream(client.chat.completions.create(
                    model="gpt-4o-mini", messages=MESSAGES, stream=True, stream_options={"include_usage": True}))):
                if n == 3:
                    break
    (event,) = usage_records(settings)
    assert event["usage_estimated"] is True
    assert "before its end" in event["metadata"]["usage_estimated_reason"]
    assert "include_usage" not in event["metadata"]["usage_estimated_reason"]


def test_the_context_manager_passes_an_async_stream_through_with_its_exact_usage(tracker, settings, provider):
    client = clients(provider, asynchronous=True)[0]

    async def main():
        with tracker.call(use_case="chat_tutor", user_id="u", tenant_id="t", provider="openai",
                          model="gpt-4o-mini") as call:
            stream = await client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, stream=True,
                                                          stream_options={"include_usage": True})
            chunks = [chunk async for chunk in call.stream(stream)]
        await client.close()
        return chunks

    assert len(asyncio.run(main())) == 22  # 20 words, the stop chunk, the usage chunk
    (event,) = usage_records(settings)
    assert (event["input_tokens"], event["output_tokens"], event["usage_estimated"]) == (400, 200, False)
