"""A local HTTP server that answers like the OpenAI and Anthropic APIs, so tests drive the real SDK clients.

Only the paid API cannot exist here; everything between our code and the wire is the real SDK.
"""

from __future__ import annotations

import json
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def chat_completion(model="gpt-4o", prompt_tokens=1000, completion_tokens=500, cached=200, reasoning=0):
    return {
        "id": "chatcmpl-test", "object": "chat.completion", "created": 1764400000, "model": model,
        "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": "Hello!"}}],
        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                  "total_tokens": prompt_tokens + completion_tokens,
                  "prompt_tokens_details": {"cached_tokens": cached},
                  "completion_tokens_details": {"reasoning_tokens": reasoning}},
    }


def anthropic_message(model="claude-sonnet-4-5-20250929", input_tokens=700, output_tokens=500, cache_read=200,
                      cache_write=100):
    return {
        "id": "msg_test", "type": "message", "role": "assistant", "model": model,
        "content": [{"type": "text", "text": "Hello!"}], "stop_reason": "end_turn", "stop_sequence": None,
        "usage": {"input_tokens": input_tokens, "output_tokens": output_tokens,
                  "cache_read_input_tokens": cache_read, "cache_creation_input_tokens": cache_write},
    }


def responses_response(model="gpt-4o", input_tokens=400, output_tokens=200, cached=0, reasoning=0):
    """A Responses API (`client.responses.create`) answer."""
    return {
        "id": "resp_test", "object": "response", "created_at": 1764400000, "model": model, "status": "completed",
        "error": None, "incomplete_details": None, "instructions": None, "metadata": {}, "parallel_tool_calls": True,
        "temperature": 1.0, "tool_choice": "auto", "tools": [], "top_p": 1.0,
        "output": [{"type": "message", "id": "msg_r", "status": "completed", "role": "assistant",
                    "content": [{"type": "output_text", "text": "Hello!", "annotations": []}]}],
        "usage": {"input_tokens": input_tokens, "input_tokens_details": {"cached_tokens": cached},
                  "output_tokens": output_tokens, "output_tokens_details": {"reasoning_tokens": reasoning},
                  "total_tokens": input_tokens + output_tokens},
    }


def responses_events(response, words=5):
    """(event name, payload) of a streamed Responses API answer: usage arrives on response.completed."""
    running = {**response, "status": "in_progress", "output": [], "usage": None}
    yield "response.created", {"type": "response.created", "sequence_number": 0, "response": running}
    for n in range(words):
        yield "response.output_text.delta", {"type": "response.output_text.delta", "sequence_number": n + 1,
                                             "item_id": "msg_r", "output_index": 0, "content_index": 0,
                                             "delta": f"word{n} ", "logprobs": []}
    yield "response.completed", {"type": "response.completed", "sequence_number": words + 1, "response": response}


def anthropic_events(message, words=5):
    """(event name, payload) of a streamed Messages answer: input usage on message_start, output on message_delta."""
    usage = message["usage"]
    start_usage = {**usage, "output_tokens": 1}
    yield "message_start", {"type": "message_start",
                            "message": {**message, "content": [], "stop_reason": None, "usage": start_usage}}
    yield "content_block_start", {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}
    for n in range(words):
        yield "content_block_delta", {"type": "content_block_delta", "index": 0,
                                      "delta": {"type": "text_delta", "text": f"word{n} "}}
    yield "content_block_stop", {"type": "content_block_stop", "index": 0}
    yield "message_delta", {"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                            "usage": {"output_tokens": usage["output_tokens"]}}
    yield "message_stop", {"type": "message_stop"}


def chat_chunks(model="gpt-4o", words=20, prompt_tokens=120, completion_tokens=20, **fields):
    base = {"id": "chatcmpl-s", "object": "chat.completion.chunk", "created": 1764400000, "model": model, **fields}
    for n in range(words):
        yield {**base, "choices": [{"index": 0, "delta": {"content": f"word{n} "}, "finish_reason": None}]}
    yield {**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}
    yield {**base, "choices": [], "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                                            "total_tokens": prompt_tokens + completion_tokens}}


class _Server(ThreadingHTTPServer):
    def handle_error(self, request, client_address):
        if isinstance(sys.exc_info()[1], (ConnectionResetError, BrokenPipeError)):
            return  # a client that hung up (an async client closing its pool): not a fault of the fake
        super().handle_error(request, client_address)


class FakeProvider:
    """Serve canned responses; `mode` is 'ok', 'error' (HTTP 500) or 'cut' (a stream cut off mid-way)."""

    def __init__(self):
        self.mode = "ok"
        self.chat = chat_completion()
        self.message = anthropic_message()
        self.response = responses_response()
        self.stream_usage = (120, 20)  # (prompt, completion) tokens on a streamed chat answer's usage chunk
        self.chunk_fields: dict = {}  # merged into every chat chunk (a served model, a service_tier)
        self.chunk_usage: dict = {}   # prompt_tokens / completion_tokens of the streamed chat usage
        self.requests: list[dict] = []
        provider = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers.get("content-length", 0))) or b"{}")
                provider.requests.append({"path": self.path, "body": body})
                if provider.mode == "error":
                    return self._json(500, {"error": {"message": "upstream exploded", "type": "server_error"}})
                if self.path.endswith("/messages"):
                    if body.get("stream"):
                        return self._events(anthropic_events(provider.message))
                    return self._json(200, provider.message)
                if self.path.endswith("/responses"):
                    if body.get("stream"):
                        return self._events(responses_events(provider.response))
                    return self._json(200, provider.response)
                if body.get("stream"):
                    return self._stream(body)
                return self._json(200, provider.chat)

            def _json(self, status, payload):
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _stream(self, body):
                self.send_response(200)
                self.send_header("content-type", "text/event-stream")
                self.send_header("transfer-encoding", "chunked")
                self.end_headers()
                prompt_tokens, completion_tokens = provider.stream_usage
                chunks = list(chat_chunks(**{"model": body.get("model", "gpt-4o"), "prompt_tokens": prompt_tokens,
                                             "completion_tokens": completion_tokens, **provider.chunk_usage,
                                             **provider.chunk_fields}))
                if not (body.get("stream_options") or {}).get("include_usage"):
                    chunks = chunks[:-1]
                if provider.mode == "cut":
                    chunks = chunks[:8]
                for chunk in chunks:
                    payload = f"data: {json.dumps(chunk)}\n\n".encode()
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(payload), payload))
                    self.wfile.flush()
                if provider.mode == "cut":
                    self.wfile.write(b"5\r\nda")  # a torn chunk, then the connection drops
                    self.wfile.flush()
                    self.close_connection = True
                    return
                done = b"data: [DONE]\n\n"
                self.wfile.write(b"%x\r\n%s\r\n0\r\n\r\n" % (len(done), done))

            def _events(self, events):
                self.send_response(200)
                self.send_header("content-type", "text/event-stream")
                self.send_header("transfer-encoding", "chunked")
                self.end_headers()
                for name, payload in events:
                    data = f"event: {name}\ndata: {json.dumps(payload)}\n\n".encode()
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
                self.wfile.write(b"0\r\n\r\n")
                self.wfile.flush()

        self.server = _Server(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()
