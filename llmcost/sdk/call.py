"""One tracked LLM call: admitted before it is made, recorded after, whatever happens in between.

`Tracker.call(...)` builds one; it is a context manager, or `start()` / `finish()` for a stream that outlives a
block. Its usage comes from the provider's response or stream (`llmcost.sdk.usage`), else from its estimate.
"""

from __future__ import annotations

import contextvars
import datetime as dt
import logging
import math
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Protocol

from llmcost.control.policy import BudgetDecision, release_after_refusal
from llmcost.errors import (
    ControlStateError,
    MissingIdentityError,
    TrackingUnavailableError,
)
from llmcost.events import UsageEvent, new_id
from llmcost.lines import encode_line
from llmcost.money import local_day
from llmcost.sdk import fallback
from llmcost.sdk.built_event import built_event
from llmcost.sdk.estimate import CHARS_PER_TOKEN, DEFAULT_EXPECTED_OUTPUT_TOKENS, estimate_missed, estimate_prompt_tokens
from llmcost.sdk.usage import ExtractedUsage, StreamUsage, extract_usage

if TYPE_CHECKING:
    from llmcost.config import Settings
    from llmcost.pricing.rates import Pricer

log = logging.getLogger("llmcost")

_current_call: contextvars.ContextVar[TrackedCall | None] = contextvars.ContextVar("llmcost_call", default=None)


# Names the event of a shared call's settle by its reservation id (see `TrackedCall.finish_once`).
_SETTLE_EVENTS = uuid.UUID("6f2b1c3e-9d4a-5e7f-8a1b-2c3d4e5f6a7b")


def settle_event_id(reservation_id: str) -> str:
    """The one event id every settle of a reservation writes, so a retried settle is stored once."""
    return str(uuid.uuid5(_SETTLE_EVENTS, reservation_id))


_IDENTITY = ("user_id", "tenant_id", "use_case", "account_type", "provider", "model")
_ATTEMPT_IDENTITY: dict[tuple, tuple[tuple[type, ...], bytes, bytes]] = {}  # a call site's identity as JSON text
_TEXT_OR_NONE = frozenset({str, type(None)})


def attempt_line(attempt: dict[str, Any]) -> bytes:
    """`encode_line(attempt)` for the record `TrackedCall.start` writes, byte for byte: the call site's identity
    is encoded once (its values repeat from call to call), the id, time and estimate into it each time."""
    attempt_id, ts, estimated = attempt["attempt_id"], attempt["ts"], attempt["estimated_tokens"]
    plain = f"{attempt_id}{ts}"  # JSON writes plain ASCII text as it is
    if not (type(estimated) is int and type(attempt_id) is str and type(ts) is str and plain.isascii()
            and plain.isprintable() and '"' not in plain and "\\" not in plain):
        return encode_line(attempt)
    values = (attempt["user_id"], attempt["tenant_id"], attempt["use_case"], attempt["account_type"],
              attempt["provider"], attempt["model"], attempt["source"])
    types = tuple(map(type, values))  # 1, 1.0 and True are equal keys but different JSON
    try:
        cached = _ATTEMPT_IDENTITY.get(values)
        if cached is None or cached[0] != types:
            identity = encode_line({name: attempt[name] for name in _IDENTITY})[1:-2]
            cached = (types, identity, encode_line({"source": attempt["source"]})[1:-2])
            if _TEXT_OR_NONE.issuperset(types):  # kept only for text, whose JSON its value and type decide
                if len(_ATTEMPT_IDENTITY) >= 4096:
                    _ATTEMPT_IDENTITY.clear()
                _ATTEMPT_IDENTITY[values] = cached
    except (TypeError, ValueError):  # unhashable, or not JSON: encode_line names the problem
        return encode_line(attempt)
    return b'{"record":"attempt","attempt_id":"%s","ts":"%s",%s,"estimated_tokens":%d,%s}\n' % (
        attempt_id.encode(), ts.encode(), cached[1], estimated, cached[2])


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


class CallOwner(Protocol):
    """What a call needs of the tracker that made it (`llmcost.sdk.tracker.Tracker`), named here so that
    this module does not import the tracker, which imports it."""

    settings: Settings
    source: str
    pricer: Pricer
    control: Any  # what llmcost.control.backend.open_control opens: the SQLite or the Redis control state
    admit: Callable[..., BudgetDecision]  # keyword arguments: the call's day, identity and estimate

    def settle(self, decision: BudgetDecision, tokens: int, cost: Decimal) -> None: ...

    def write(self, record: dict[str, Any], line: bytes | None = None) -> OSError | None: ...

    def warn_once(self, key: tuple, message: str, *args: Any) -> None: ...

    def _journal_event(self, event: UsageEvent, response: Any) -> None: ...

    def _register(self, call: TrackedCall) -> None: ...

    def _unregister(self, call: TrackedCall) -> None: ...


class TrackedCall:
    """One tracked LLM call: a context manager, or `start()` / `finish()` for a stream that outlives a block."""

    def __init__(self, tracker: CallOwner, *, use_case: str, user_id: str | None, tenant_id: str | None,
                 provider: str | None, model: str | None, account_type: str | None, prompt: Any,
                 estimated_tokens: int | None, expected_output_tokens: int | None, metadata: dict | None):
        self.tracker = tracker
        self.use_case = use_case
        self.user_id = user_id
        self.tenant_id = tenant_id
        self.provider = provider
        self.model = model
        self.account_type = account_type
        self.metadata = dict(metadata or {})
        prompt_tokens = estimate_prompt_tokens(prompt)
        output_tokens = expected_output_tokens if expected_output_tokens is not None else DEFAULT_EXPECTED_OUTPUT_TOKENS
        self.estimated_input_tokens = prompt_tokens
        self.estimated_tokens = estimated_tokens if estimated_tokens is not None else prompt_tokens + output_tokens
        self.attempt_id = new_id()
        self.started_at: dt.datetime | None = None
        self._started_clock = 0.0
        self.decision: BudgetDecision | None = None
        self.usage: ExtractedUsage | None = None
        self.stream_usage: StreamUsage | None = None
        self.stream_ended = False  # the stream was read to its end (not cut off, not left early)
        self.response: Any = None
        self.event: UsageEvent | None = None
        self._finished = False
        self._token: contextvars.Token | None = None
        self.service_key: str | None = None  # the collector's key hash, for key budgets
        self.shared = False  # reserve in the control state with what another process needs to settle it

    # -- before the call -------------------------------------------------------------------------
    def start(self) -> TrackedCall:
        """Check identity, kill switch, shutdown and budget, reserve the estimate, write the attempt record."""
        if not (type(self.user_id) is str and self.user_id.strip() and type(self.tenant_id) is str
                and self.tenant_id.strip()):  # the usual case, without the general rule's str() of each
            missing = [name for name in ("user_id", "tenant_id") if not str(getattr(self, name) or "").strip()]
            if missing:
                raise MissingIdentityError(missing)
        tracker = self.tracker
        self.started_at = _utcnow()
        self._started_clock = time.perf_counter()
        day = local_day(self.started_at, tracker.settings.tz)
        estimated_cost = tracker.pricer.price(
            provider=self.provider, model=self.model, ts=self.started_at,
            input_tokens=min(self.estimated_input_tokens, self.estimated_tokens),
            output_tokens=max(self.estimated_tokens - self.estimated_input_tokens, 0),
        ).cost_usd
        try:
            self.decision = tracker.admit(
                day=day, user_id=self.user_id, tenant_id=self.tenant_id, use_case=self.use_case,
                account_type=self.account_type, estimated_tokens=self.estimated_tokens, estimated_cost=estimated_cost,
                service_key=self.service_key, details=self.details() if self.shared else None,
                reservation_id=self.attempt_id if self.shared else None,
            )
        except ControlStateError as error:
            if tracker.settings.on_control_error != "allow":
                raise ControlStateError(f"call refused: {error} (set on_control_error = \"allow\" in llmcost.toml "
                                        "to make calls unchecked while the control state is unusable)") from error
            self.metadata["control_error"] = f"allowed unchecked (on_control_error = allow): {error}"
            tracker.warn_once((day, "control_error"), "llmcost: %s; calls are allowed unchecked", error)
        if self.decision is not None and self.decision.reason:
            self.metadata["budget"] = self.decision.reason
            tracker.warn_once((day, self.user_id, self.decision.action),
                              "llmcost: %s for user %s (%s action): call allowed", self.decision.reason,
                              self.user_id, self.decision.action)
        attempt = {
            "record": "attempt", "attempt_id": self.attempt_id, "ts": self.started_at.isoformat(),
            "user_id": self.user_id, "tenant_id": self.tenant_id, "use_case": self.use_case,
            "account_type": self.account_type, "provider": self.provider, "model": self.model,
            "estimated_tokens": self.estimated_tokens, "source": tracker.source,
        }
        try:
            # in the fallback log is good enough for an attempt, even when strict
            tracker.write(attempt, attempt_line(attempt))
        except OSError as error:
            if self.decision is not None:
                try:
                    release_after_refusal(tracker.control, self.decision)
                except ControlStateError as control_error:  # released as stale later: its process moves on
                    log.error("llmcost: reservation of refused call %s not released: %s", self.attempt_id, control_error)
            raise TrackingUnavailableError(
                f"cannot record the call attempt anywhere (journal {tracker.settings.journal_dir} and fallback log "
                f"{tracker.settings.fallback_log} both failed: {error}); the call was not made. "
                "Free disk space or fix permissions, or point LLMCOST_HOME / fallback_log elsewhere."
            ) from error
        tracker._register(self)
        return self

    def details(self) -> dict[str, Any]:
        """What another process needs to settle this call (see `resumed`)."""
        return {"use_case": self.use_case, "user_id": self.user_id, "tenant_id": self.tenant_id,
                "account_type": self.account_type, "provider": self.provider, "model": self.model,
                "estimated_tokens": self.estimated_tokens, "estimated_input_tokens": self.estimated_input_tokens,
                "started_at": self.started_at.isoformat() if self.started_at else None, "metadata": self.metadata}

    @classmethod
    def resumed(cls, tracker: CallOwner, reservation_id: str, details: dict[str, Any]) -> TrackedCall:
        """A call reserved by another process sharing the control state, to record and settle here
        (`finish_once`); its reservation id is its attempt id."""
        call = cls(tracker, use_case=details["use_case"], user_id=details["user_id"], tenant_id=details["tenant_id"],
                   provider=details.get("provider"), model=details.get("model"),
                   account_type=details.get("account_type"), prompt=None,
                   estimated_tokens=details["estimated_tokens"], expected_output_tokens=None,
                   metadata=details.get("metadata"))
        call.estimated_input_tokens = details.get("estimated_input_tokens", 0)
        call.attempt_id = reservation_id
        call.started_at = dt.datetime.fromisoformat(details["started_at"])
        call._started_clock = time.perf_counter() - (_utcnow() - call.started_at).total_seconds()
        call.shared = True
        return call

    def finish_once(self, exc: BaseException | None = None) -> UsageEvent | None:
        """Price the call, journal its usage, then claim its reservation in the shared control state; None when
        another process claimed it first (so the event is recorded exactly once).

        Journaled before claimed, under the event id `settle_event_id` derives from the reservation id: a crash
        in between leaves the reservation open, and the retried settle journals the same event again (same id
        and content: ingestion stores it once) and claims it; a crash after the claim leaves the event journaled.
        A settle that loses a race to another process journals a line with that id too: stored once (a
        different usage in it is kept in failed_logs as a conflict, never counted twice)."""
        if self._finished:
            return self.event
        self._finished = True
        if self.stream_usage is not None and self.usage is None:
            self.usage = self.stream_usage.result()
        event = self._build_event(exc).model_copy(update={"event_id": settle_event_id(self.attempt_id)})
        self.tracker._journal_event(event, self.response)
        if not self.tracker.control.settle(self.attempt_id, event.total_tokens, event.cost_usd):
            return None
        self.event = event
        return event

    def __enter__(self) -> TrackedCall:
        self.start()
        self._token = _current_call.set(self)
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if self._token is not None:
            _current_call.reset(self._token)
            self._token = None
        self.finish(exc)

    # -- during and after the call ---------------------------------------------------------------
    def record(self, response: Any = None, *, input_tokens: int | None = None, output_tokens: int | None = None,
               cache_read_tokens: int = 0, cache_write_tokens: int = 0, reasoning_tokens: int = 0,
               cost_usd: Decimal | None = None, model: str | None = None,
               cache_write_1h_tokens: int = 0) -> ExtractedUsage | None:
        """Record the usage of the call: a provider response (object or dict), or the counts themselves."""
        if response is not None:
            self.response = response
            self.usage = extract_usage(response, self.provider)
        if input_tokens is not None or output_tokens is not None:
            self.usage = ExtractedUsage(
                input_tokens=input_tokens or 0, output_tokens=output_tokens or 0,
                cache_read_tokens=cache_read_tokens, cache_write_tokens=cache_write_tokens,
                reasoning_tokens=reasoning_tokens, model=model, provider=self.provider, cost_usd=cost_usd,
                cache_write_1h_tokens=cache_write_1h_tokens,
            )
        if self.usage is not None and self.usage.model and not self.model:
            self.model = self.usage.model
        return self.usage

    def stream(self, chunks) -> Iterator[Any] | AsyncIterator[Any]:
        """Pass a provider stream through, reading usage from its chunks (the final one carries it).

        An async stream (AsyncOpenAI, AsyncAnthropic) comes back as one to read with `async for`.
        """
        self.stream_usage = StreamUsage(self.provider)
        return self._passed_async(chunks) if hasattr(chunks, "__aiter__") else self._passed(chunks)

    def _passed(self, chunks) -> Iterator[Any]:
        for chunk in chunks:
            self.stream_usage.add(chunk)
            yield chunk
        self._stream_done()

    async def _passed_async(self, chunks) -> AsyncIterator[Any]:
        async for chunk in chunks:
            self.stream_usage.add(chunk)
            yield chunk
        self._stream_done()

    def _stream_done(self) -> None:
        self.stream_ended = True
        self.usage = self.stream_usage.result() or self.usage

    def finish(self, exc: BaseException | None = None) -> UsageEvent | None:
        """Price and journal the call's usage and settle its reservation. Idempotent."""
        if self._finished or self.started_at is None:
            return self.event
        self._finished = True
        tracker = self.tracker
        try:
            if self.stream_usage is not None and self.usage is None:
                self.usage = self.stream_usage.result()
            try:
                self.event = self._build_event(exc)
            except Exception as error:  # never lose the call: keep what is known, ingestion lists it as failed
                log.exception("llmcost: could not build the usage event of call %s", self.attempt_id)
                raw = {"attempt_id": self.attempt_id, "use_case": self.use_case, "user_id": self.user_id,
                       "tenant_id": self.tenant_id, "estimated_tokens": self.estimated_tokens,
                       "ts": self.started_at.isoformat(), "error": f"{type(error).__name__}: {error}"}
                fallback.append(tracker.settings.fallback_log, raw, f"invalid usage event: {error}")
                raise
            tracker._journal_event(self.event, self.response)
        finally:
            actual = self.event
            if self.decision is not None:
                tracker.settle(self.decision, actual.total_tokens if actual else self.estimated_tokens,
                               actual.cost_usd if actual else Decimal(0))
            tracker._unregister(self)
        return self.event

    def _why_usage_is_missing(self) -> str:
        """Why a call that raised nothing has no usage, naming the fix."""
        if self.stream_usage is None:
            return ("no usage recorded for this call (call.record was not given a response with usage): "
                    "estimate used")
        if self.stream_ended:
            return ("the stream ended without usage, so the estimate was stored: OpenAI-style chat streams report "
                    "usage only when asked, pass stream_options={'include_usage': True} to create() "
                    "(a client wrapped by tracker.wrap adds it)")
        return "the stream was left before its end, so its usage never arrived: estimate used"

    def _build_event(self, exc: BaseException | None) -> UsageEvent:
        usage = self.usage
        estimated = usage is None
        if estimated:
            # The provider reported nothing: bill the estimate, never $0, since the provider may charge.
            streamed_output = math.ceil(self.stream_usage.text_chars / CHARS_PER_TOKEN) if self.stream_usage else 0
            output = max(self.estimated_tokens - self.estimated_input_tokens, streamed_output)
            usage = ExtractedUsage(input_tokens=self.estimated_input_tokens, output_tokens=output,
                                   provider=self.provider)
        error = None
        if exc is not None:
            error = f"{type(exc).__name__}: {exc}"[:10_000]
        elif estimated:
            error = self._why_usage_is_missing()
            self.metadata["usage_estimated_reason"] = error
            log.warning("llmcost: %s (use case %s, model %s)", error, self.use_case, self.model)
        provider = self.provider or usage.provider
        model = self.model or usage.model
        ts = self.started_at
        if usage.cost_usd is not None:
            cost, price_source = usage.cost_usd, "provider"
        else:
            price = self.tracker.pricer.price(
                provider=provider, model=model, ts=ts, input_tokens=usage.input_tokens,
                output_tokens=usage.output_tokens, cache_read_tokens=usage.cache_read_tokens,
                cache_write_tokens=usage.cache_write_tokens, reasoning_tokens=usage.reasoning_tokens,
                cache_write_1h_tokens=usage.cache_write_1h_tokens, response_model=usage.model,
                service_tier=usage.service_tier,
            )
            cost, price_source = price.cost_usd, price.price_source
        total = usage.input_tokens + usage.output_tokens
        if self.estimated_tokens and not estimated:
            ratio = Decimal(total) / Decimal(self.estimated_tokens)
            self.metadata["estimate_ratio"] = float(round(ratio, 4))
            if estimate_missed(ratio, self.tracker.settings.estimate_mismatch_ratio):
                self.metadata["estimate_mismatch"] = True
        return built_event(
            ts=ts, user_id=self.user_id, tenant_id=self.tenant_id, use_case=self.use_case,
            account_type=self.account_type, provider=provider, model=model,
            input_tokens=usage.input_tokens, output_tokens=usage.output_tokens,
            cache_read_tokens=usage.cache_read_tokens, cache_write_tokens=usage.cache_write_tokens,
            cache_write_1h_tokens=usage.cache_write_1h_tokens, response_model=usage.model,
            service_tier=usage.service_tier,
            reasoning_tokens=usage.reasoning_tokens, estimated_tokens=self.estimated_tokens,
            usage_estimated=estimated, latency_ms=round((time.perf_counter() - self._started_clock) * 1000, 3),
            status="error" if exc is not None else "ok", error=error, cost_usd=cost, price_source=price_source,
            attempt_id=self.attempt_id, source=self.tracker.source, metadata=self.metadata,
        )
