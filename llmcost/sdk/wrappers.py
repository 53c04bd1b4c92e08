"""The decorator and wrapped-client forms of the tracker."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from llmcost.errors import LLMCostError
from llmcost.sdk.estimate import DEFAULT_EXPECTED_OUTPUT_TOKENS

if TYPE_CHECKING:
    from llmcost.sdk.call import TrackedCall

# Paths of the `create` methods that make a billable call, in OpenAI- and Anthropic-style clients.
TRACKED_PATHS = {("chat", "completions", "create"), ("responses", "create"), ("messages", "create"),
                 ("completions", "create")}
_PREFIXES = {path[:i] for path in TRACKED_PATHS for i in range(1, len(path))}
_IDENTITY_ARGS = ("user_id", "tenant_id", "account_type")


class CallMaker(Protocol):
    """What these forms need of a tracker (`llmcost.sdk.tracker.Tracker`, whose `track` and `wrap` call them)."""

    call: Callable[..., TrackedCall]  # keyword arguments: use_case, identity, provider, model, prompt ...


def track(tracker: CallMaker, use_case: str, *, prompt_arg: str | None = None, **call_options):
    """Decorate a function that makes one LLM call.

    `user_id`, `tenant_id` (and `account_type`) come from the function's arguments of those names, else
    from `tracker.identity()`. The function's return value is recorded as the provider response unless
    the function recorded usage itself through `tracker.current_call().record(...)`.
    """

    def decorator(fn):
        signature = inspect.signature(fn)

        def open_call(args, kwargs) -> TrackedCall:
            arguments = signature.bind_partial(*args, **kwargs).arguments
            identity = {name: arguments[name] for name in _IDENTITY_ARGS if arguments.get(name)}
            prompt = arguments.get(prompt_arg) if prompt_arg else next(
                (arguments[n] for n in ("prompt", "messages", "text", "input") if n in arguments), None)
            options = {**call_options, **identity}
            options.setdefault("prompt", prompt)
            return tracker.call(use_case=use_case, **options)

        if is_async_callable(fn):
            @functools.wraps(fn)
            async def async_wrapper(*args, **kwargs):
                with open_call(args, kwargs) as call:
                    result = await fn(*args, **kwargs)
                    if call.usage is None:
                        call.record(result)
                    return result

            return async_wrapper

        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            with open_call(args, kwargs) as call:
                result = fn(*args, **kwargs)
                if call.usage is None:
                    call.record(result)
                return result

        return wrapper

    return decorator


def detect_provider(client: Any) -> str | None:
    """'openai', 'anthropic' or 'x-ai' (an OpenAI client pointed at api.x.ai) from the client object."""
    module = type(client).__module__.split(".")[0]
    base_url = str(getattr(client, "base_url", "") or "")
    if "x.ai" in base_url:
        return "x-ai"
    if "generativelanguage.googleapis.com" in base_url:
        return "google"
    return module if module in ("openai", "anthropic") else None


def wrap_client(tracker: CallMaker, client: Any, *, use_case: str | None = None, provider: str | None = None,
                **call_options) -> Any:
    """A proxy of `client` whose `create` calls are tracked.

    Per call, tracking options go in an extra `llmcost={...}` keyword (use_case, user_id, tenant_id,
    account_type, metadata), which is removed before the provider's SDK sees the call.
    """
    defaults = {"use_case": use_case, "provider": provider or detect_provider(client), **call_options}
    return _ClientProxy(tracker, client, (), defaults)


class _ClientProxy:
    def __init__(self, tracker: CallMaker, target: Any, path: tuple[str, ...], defaults: dict[str, Any]):
        self._tracker = tracker
        self._target = target
        self._path = path
        self._defaults = defaults

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._target, name)
        path = (*self._path, name)
        if path in TRACKED_PATHS and callable(value):
            return _tracked_create(self._tracker, value, path, self._defaults)
        if path in _PREFIXES:
            return _ClientProxy(self._tracker, value, path, self._defaults)
        return value

    def __repr__(self) -> str:
        return f"<llmcost tracked {self._target!r}>"


def _call_for(tracker: CallMaker, path: tuple[str, ...], defaults: dict[str, Any], kwargs: dict[str, Any]):
    options = {**defaults, **{k: v for k, v in (kwargs.pop("llmcost", None) or {}).items() if v is not None}}
    if not options.get("use_case"):
        raise LLMCostError(
            "use_case missing for a tracked call: pass llmcost={'use_case': ...} to create(), "
            "or tracker.wrap(client, use_case=...)"
        )
    prompt = [kwargs.get("system"), kwargs.get("messages"), kwargs.get("input"), kwargs.get("prompt")]
    max_output = kwargs.get("max_tokens") or kwargs.get("max_completion_tokens") or kwargs.get("max_output_tokens")
    options.setdefault("model", kwargs.get("model"))
    if max_output and "expected_output_tokens" not in options:
        options["expected_output_tokens"] = min(int(max_output), DEFAULT_EXPECTED_OUTPUT_TOKENS)
    if kwargs.get("stream") and path == ("chat", "completions", "create"):
        # Without this OpenAI-style streams never report usage.
        kwargs.setdefault("stream_options", {"include_usage": True})
    return tracker.call(prompt=[p for p in prompt if p], **options)


def is_async_callable(fn: Any) -> bool:
    """True for an `async def`, also behind decorators: openai's and anthropic's `create` wrap theirs in a
    plain function (functools.wraps), so `inspect.iscoroutinefunction` alone says False."""
    return inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(inspect.unwrap(fn))


def _tracked_create(tracker: CallMaker, create, path: tuple[str, ...], defaults: dict[str, Any]):
    if is_async_callable(create):
        @functools.wraps(create)
        async def async_tracked(*args, **kwargs):
            call = _call_for(tracker, path, defaults, kwargs).start()
            try:
                response = await create(*args, **kwargs)
            except BaseException as error:
                call.finish(error)
                raise
            return _settle(call, response, kwargs)

        return async_tracked

    @functools.wraps(create)
    def tracked(*args, **kwargs):
        call = _call_for(tracker, path, defaults, kwargs).start()
        try:
            response = create(*args, **kwargs)
        except BaseException as error:
            call.finish(error)
            raise
        if inspect.isawaitable(response):  # an async method no inspection recognised: settle once it is awaited
            return _settle_when_awaited(call, response, kwargs)
        return _settle(call, response, kwargs)

    return tracked


def _settle(call: TrackedCall, response: Any, kwargs: dict[str, Any]) -> Any:
    """Record a plain response now; pass a stream through, recording its usage when it ends."""
    if kwargs.get("stream"):
        stream_class = _AsyncTrackedStream if hasattr(response, "__aiter__") else _TrackedStream
        return stream_class(response, call)
    call.record(response)
    call.finish()
    return response


async def _settle_when_awaited(call: TrackedCall, awaitable: Any, kwargs: dict[str, Any]) -> Any:
    try:
        response = await awaitable
    except BaseException as error:
        call.finish(error)
        raise
    return _settle(call, response, kwargs)


class StreamClosedEarly(Exception):
    """A tracked stream was closed before its final chunk (the consumer stopped reading, or it was cut off)."""


class _TrackedStream:
    """Passes a provider stream through; records usage from its chunks when it ends, however it ends."""

    def __init__(self, stream: Any, call: TrackedCall):
        from llmcost.sdk.usage import StreamUsage

        self._stream = stream
        self._call = call
        call.stream_usage = StreamUsage(call.provider)

    def __iter__(self):
        try:
            for chunk in self._stream:
                self._call.stream_usage.add(chunk)
                yield chunk
        except GeneratorExit:  # the consumer stopped reading: record what is known
            self._finish_early()
            raise
        except BaseException as error:
            self._call.finish(error)
            raise
        self._call.stream_ended = True
        self._call.finish()

    def close(self) -> None:
        closer = getattr(self._stream, "close", None)
        if closer:
            closer()
        self._finish_early()

    def _finish_early(self) -> None:
        if not self._call._finished:
            self._call.finish(StreamClosedEarly("stream closed before its final chunk"))

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()

    def __del__(self):
        try:
            self._finish_early()
        except Exception:  # interpreter shutdown: nothing sensible left to do
            pass

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


class _AsyncTrackedStream(_TrackedStream):
    def __aiter__(self):
        return self._iterate()

    async def _iterate(self):
        try:
            async for chunk in self._stream:
                self._call.stream_usage.add(chunk)
                yield chunk
        except GeneratorExit:  # the consumer stopped reading (break, or the generator was closed)
            self._finish_early()
            raise
        except BaseException as error:
            self._call.finish(error)
            raise
        self._call.stream_ended = True
        self._call.finish()

    async def close(self) -> None:
        closer = getattr(self._stream, "close", None)
        if closer:
            result = closer()
            if inspect.isawaitable(result):
                await result
        self._finish_early()

    async def __aenter__(self):
        return self

    async def __aexit__(self, *exc_info):
        await self.close()
