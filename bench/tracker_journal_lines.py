"""The tracker's journal lines for varied calls, with their ids, times and latencies made repeatable, to compare
two versions of the tracker byte for byte (run it in each checkout, then `cmp` the outputs; with `--rows FILE`
it also ingests them and writes the stored rows). The calls: every provider shape the usage reader knows (OpenAI
chat, Responses, Anthropic, xAI with its reported cost, Gemini), service tiers, cached, 1-hour cache and reasoning
tokens, streams with and without usage, failures, calls without usage, counts given by hand, unicode, quotes,
backslashes and control characters in names, metadata, the wrapped client and the decorator.

    T0=2026-12-03T11:00:00+00:00 python bench/tracker_journal_lines.py [--rows FILE] > lines.jsonl
"""

from __future__ import annotations

import argparse
import datetime as dt
import itertools
import logging
import os
import sys
import tempfile
from dataclasses import replace
from decimal import Decimal
from pathlib import Path

from anthropic.types import Message
from openai.types.chat import ChatCompletion, ChatCompletionChunk
from openai.types.responses import Response

from llmcost.config import load_settings
from llmcost.sdk.tracker import Tracker


def chat(model="gpt-4o", prompt=1000, completion=500, cached=200, reasoning=0, ticks=None, tier=None):
    usage = {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion,
             "prompt_tokens_details": {"cached_tokens": cached},
             "completion_tokens_details": {"reasoning_tokens": reasoning}}
    if ticks is not None:
        usage["cost_in_usd_ticks"] = ticks
    answer = {"id": "x", "object": "chat.completion", "created": 1764400000, "model": model, "usage": usage,
              "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": "hi"}}]}
    if tier:
        answer["service_tier"] = tier
    return ChatCompletion.model_validate(answer)


def message(model="claude-sonnet-4-5-20250929", uncached=700, output=500, cache_read=200, cache_write=100,
            one_hour=None):
    usage = {"input_tokens": uncached, "output_tokens": output, "cache_read_input_tokens": cache_read,
             "cache_creation_input_tokens": cache_write}
    if one_hour is not None:
        usage["cache_creation"] = {"ephemeral_1h_input_tokens": one_hour,
                                   "ephemeral_5m_input_tokens": cache_write - one_hour}
    return Message.model_validate({"id": "m", "type": "message", "role": "assistant", "model": model, "usage": usage,
                                   "content": [{"type": "text", "text": "hi"}], "stop_reason": "end_turn",
                                   "stop_sequence": None})


def response(model="gpt-4o", input_tokens=400, output=200, cached=0, reasoning=0):
    return Response.model_validate({
        "id": "r", "object": "response", "created_at": 1764400000, "model": model, "status": "completed",
        "error": None, "incomplete_details": None, "instructions": None, "metadata": {}, "parallel_tool_calls": True,
        "temperature": 1.0, "tool_choice": "auto", "tools": [], "top_p": 1.0, "output": [],
        "usage": {"input_tokens": input_tokens, "output_tokens": output, "total_tokens": input_tokens + output,
                  "input_tokens_details": {"cached_tokens": cached, "cache_write_tokens": 0},
                  "output_tokens_details": {"reasoning_tokens": reasoning}}})


def gemini(prompt=100, candidates=50, thoughts=7):
    return {"model_version": "gemini-2.5-flash", "usage_metadata": {
        "prompt_token_count": prompt, "candidates_token_count": candidates, "thoughts_token_count": thoughts}}


def chat_chunks(model="gpt-4o-mini", words=5, usage=True):
    for n in range(words):
        yield ChatCompletionChunk.model_validate({
            "id": "c", "object": "chat.completion.chunk", "created": 1, "model": model,
            "choices": [{"index": 0, "delta": {"content": f"w{n} "}, "finish_reason": None}]})
    if usage:
        yield ChatCompletionChunk.model_validate({
            "id": "c", "object": "chat.completion.chunk", "created": 1, "model": model, "choices": [],
            "usage": {"prompt_tokens": 33, "completion_tokens": 5, "total_tokens": 38}})


def anthropic_stream():
    yield {"type": "message_start", "message": {"model": "claude-3-5-haiku-20241022", "usage": {
        "input_tokens": 50, "output_tokens": 1, "cache_read_input_tokens": 10}}}
    yield {"type": "content_block_delta", "delta": {"type": "text_delta", "text": "hello there"}}
    yield {"type": "message_delta", "usage": {"output_tokens": 42}}


USERS = ["user-1", "用户-ü", 'quote"user', "back\\slash", "emoji-😀", " padded ", "tab\tuser", "x" * 500, "ctl\x1fuser",
         "del\x7f"]
TENANTS = ["acme", "Ünïcode GmbH", "t/1"]
CASES = [  # provider and model as the caller names them, and the response
    ("openai", "gpt-4o", lambda: chat()), ("openai", "gpt-4o-mini", lambda: chat("gpt-4o-mini", 120, 30, 0)),
    ("openai", "o3-mini", lambda: chat("o3-mini", 5000, 3000, 1000, 2500)),
    ("openai", None, lambda: chat("gpt-4o-2024-08-06")),
    ("openai", "gpt-4o", lambda: chat(tier="flex")), ("openai", "gpt-4o", lambda: chat(tier="priority")),
    ("x-ai", "grok-3", lambda: chat("grok-3", 100, 20, 0, 5, ticks=123456789)),
    ("openai", "grok-3-mini", lambda: chat("grok-3-mini", 100, 20)),
    ("anthropic", "claude-sonnet-4-5", lambda: message()),
    ("Claude", "claude-3-5-haiku", lambda: message("claude-3-5-haiku-20241022", one_hour=60)),
    ("openai", "gpt-4o", lambda: response(cached=100, reasoning=50)), ("google", "gemini-2.5-flash", lambda: gemini()),
    ("my-gateway", "my-model", lambda: chat("my-model")), (None, None, lambda: chat("unknown")),
    ("OpenAI", "gpt-4o-mini", lambda: chat("gpt-4o-mini")), ("openai", " gpt-4o ", lambda: chat()),
]


def _one_call(tracker: Tracker, n: int, user: str, tenant: str, provider, model, make) -> None:
    metadata = {"k": "ü", "n": n} if n % 3 == 0 else ({"f": 1.25, "nested": {"a": [1, "b"]}} if n % 5 == 0 else None)
    kind = n % 9
    with tracker.call(use_case="chat" if n % 4 else "use case ☃", user_id=user, tenant_id=tenant,
                      account_type=None if n % 6 == 0 else "admin", provider=provider, model=model,
                      prompt=[{"role": "user", "content": "Hello ü " * (n % 13)}], metadata=metadata,
                      expected_output_tokens=(n % 11) * 10 or None) as call:
        if kind == 1:
            raise RuntimeError(f"boom ü {n}\nline2")
        if kind == 3:
            for _ in call.stream(chat_chunks(usage=n % 2 == 0)):
                pass
        elif kind == 4:
            for _ in call.stream(anthropic_stream()):
                pass
        elif kind == 5:
            call.record(input_tokens=1000 + n, output_tokens=n, cache_read_tokens=n % 50, reasoning_tokens=n % 7)
        elif kind == 6:
            call.record(input_tokens=10, output_tokens=5, cost_usd=Decimal("0.0001234"))
        elif kind != 2:  # 2: no usage, so the estimate is billed
            call.record(make())


def varied_calls(tracker: Tracker) -> None:
    """Every kind of call, through the context manager, the wrapped client and the decorator."""
    n = 0
    for user in USERS:
        for tenant in TENANTS:
            for provider, model, make in CASES:
                n += 1
                try:
                    _one_call(tracker, n, user, tenant, provider, model, make)
                except RuntimeError:
                    pass

    class Completions:
        def create(self, **kwargs):
            return chat_chunks(kwargs["model"]) if kwargs.get("stream") else chat(kwargs["model"], 321, 12, 0)

    class Client:
        chat = type("Chat", (), {"completions": Completions()})()

    wrapped = tracker.wrap(Client(), use_case="wrapped", provider="openai", user_id="w-user", tenant_id="w-tenant")
    for model in ("gpt-4o", "gpt-4o-mini", "o1"):
        wrapped.chat.completions.create(model=model, messages=[{"role": "user", "content": "hi ü"}], max_tokens=100)
        for _ in wrapped.chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}],
                                                 stream=True):
            pass

    @tracker.track("decorated", provider="anthropic")
    def ask(prompt, user_id, tenant_id):
        return message("claude-3-5-haiku-20241022", 99, 9, 0, 0)

    for user in USERS[:4]:
        ask("question ü", user_id=user, tenant_id="acme")


def _repeatable(start: dt.datetime) -> None:
    """Ids from a counter (uuid4 and llmcost both read 16 bytes of os.urandom), times and latencies from clocks
    that advance by fixed steps."""
    from llmcost.sdk import call as call_module

    counter = itertools.count(1)
    urandom = os.urandom
    os.urandom = lambda size: (next(counter) * 0x9E3779B97F4A7C15 % (1 << 128)).to_bytes(16, "big") if size == 16 \
        else urandom(size)
    ticks = itertools.count()

    def utcnow() -> dt.datetime:
        n = next(ticks)
        return start + dt.timedelta(seconds=n, microseconds=n * 1234 if n % 7 else 0)

    call_module._utcnow = utcnow
    steps = itertools.count()

    class Clock:
        def perf_counter(self):
            return next(steps) * 0.0123457

        def __getattr__(self, name):
            import time

            return getattr(time, name)

    call_module.time = Clock()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=Path, help="also ingest the lines and write the stored rows here")
    args = parser.parse_args()
    logging.disable(logging.CRITICAL)
    _repeatable(dt.datetime.fromisoformat(os.environ["T0"]))
    home = Path(tempfile.mkdtemp(prefix="llmcost-lines-"))
    tracker = Tracker(replace(load_settings(home=home), fsync=False))
    varied_calls(tracker)
    tracker.close()
    lines = [line for path in sorted((home / "journal").glob("*.jsonl")) for line in path.read_bytes().splitlines(True)]
    sys.stdout.buffer.write(b"".join(lines))
    print(f"{len(lines)} lines", file=sys.stderr)
    if args.rows:
        import duckdb

        from llmcost.ingestion.run import ingest

        settings = load_settings(home=home)
        ingest(settings, [home / "journal"])
        out = []
        with duckdb.connect(str(settings.db_path), read_only=True) as db:
            for table, order in (("usage_events", "event_id"), ("call_attempts", "attempt_id")):
                rows = db.execute(f"SELECT * FROM {table} ORDER BY {order}").fetchall()
                columns = [d[0] for d in db.description]
                out.append(f"{table} {columns}")
                out += [repr(tuple(v for c, v in zip(columns, row) if c != "ingested_at")) for row in rows]
            out.append(f"failed_logs {db.execute('SELECT count(*) FROM failed_logs').fetchone()[0]}")
        args.rows.write_text("\n".join(out) + "\n")


if __name__ == "__main__":
    main()
