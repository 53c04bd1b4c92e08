"""The tracker SDK: no LLM call goes unaccounted for.

Before a call: identity, kill switch, emergency shutdown and budget are checked (a refused call is never
made), the estimate is reserved, and a write-ahead attempt record is appended to the journal. After it:
usage is read from the provider's response (or stream), priced, and appended to the journal; the
reservation is settled with the actual figures. If the journal cannot take a record it goes to the
fallback log; only when neither can take it does the tracker raise.

    tracker = Tracker()
    with tracker.call(use_case="auto_populate", user_id=uid, tenant_id=tid,
                      provider="x-ai", model="grok-2", account_type="lesson_builder", prompt=text) as call:
        resp = client.chat.completions.create(...)
        call.record(resp)
"""

from __future__ import annotations

import atexit
import contextlib
import contextvars
import datetime as dt
import functools
import logging
import math
import os
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator, Mapping
from decimal import Decimal
from types import MappingProxyType
from typing import Any

from llmcost.config import Settings, load_settings
from llmcost.control.policy import BudgetDecision, check_before_call, release_after_refusal, settle_after_call
from llmcost.control.state import ControlState
from llmcost.errors import (
    BudgetExceededError,
    ControlStateError,
    MissingIdentityError,
    SpendingHaltedError,
    TrackingUnavailableError,
    UsageNotRecordedError,
)
from llmcost.events import UsageEvent
from llmcost.money import local_day
from llmcost.pricing.rates import Pricer
from llmcost.sdk import fallback
from llmcost.sdk.estimate import CHARS_PER_TOKEN, DEFAULT_EXPECTED_OUTPUT_TOKENS, estimate_missed, estimate_prompt_tokens
from llmcost.sdk.journal import Journal
from llmcost.sdk.usage import ExtractedUsage, StreamUsage, extract_usage

log = logging.getLogger("llmcost")


_identity: contextvars.ContextVar[Mapping[str, str]] = contextvars.ContextVar(
    "llmcost_identity", default=MappingProxyType({}))
_current_call: contextvars.ContextVar[TrackedCall | None] = contextvars.ContextVar("llmcost_call", default=None)


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


class TrackedCall:
    """One tracked LLM call: a context manager, or `start()` / `finish()` for a stream that outlives a block."""

    def __init__(self, tracker: Tracker, *, use_case: str, user_id: str | None, tenant_id: str | None,
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
        self.attempt_id = str(uuid.uuid4())
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

    # -- before the call -------------------------------------------------------------------------
    def start(self) -> TrackedCall:
        """Check identity, kill switch, shutdown and budget, reserve the estimate, write the attempt record."""
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
            )
        except ControlStateError as error:
            if tracker.settings.on_control_error != "allow":
                raise ControlStateError(f"call refused: {error} (set on_control_error = \"allow\" in llmcost.toml "
                                        "to make calls unchecked while the control file is unusable)") from error
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
            tracker.write(attempt)  # in the fallback log is good enough for an attempt, even when strict
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
        return UsageEvent(
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


class Tracker:
    """Tracks LLM calls. Settings (paths, limits, prices) come from `llmcost.load_settings()` unless given.

    strict: re-raise the journal's error after a record went to the fallback log.
    auto_ingest: for a single script, ingest the journal into the store in the background and on exit.
    """

    def __init__(self, settings: Settings | None = None, *, strict: bool = False, auto_ingest: bool = False,
                 auto_ingest_interval: float = 5.0, source: str = "tracker"):
        self.settings = settings or load_settings()
        for problem in self.settings.ensure_dirs(strict=False):
            log.error("llmcost: data folder unusable (%s); records will go to the fallback log", problem)
        self.strict = strict
        self.source = source
        self.journal = Journal(self.settings.journal_dir, fsync=self.settings.fsync)
        # lazy: an unusable control file is met at the first call, and handled by `on_control_error` there
        self.control = ControlState(self.settings.control_db, lazy=True)
        self.pricer = Pricer.from_settings(self.settings)
        self._lock = threading.Lock()
        self._in_flight: dict[str, TrackedCall] = {}
        self._rebuilt_days: set[tuple[str, dt.date]] = set()
        self._next_maintenance = 0.0
        self._store_seen: tuple | None = None
        self._unsettled: list[tuple[BudgetDecision, int, Decimal]] = []
        self._warned: set[tuple] = set()
        self._auto_ingest: _AutoIngest | None = None
        if auto_ingest:
            self._auto_ingest = _AutoIngest(self, auto_ingest_interval)

    # -- the three forms -------------------------------------------------------------------------
    def call(self, *, use_case: str, user_id: str | None = None, tenant_id: str | None = None,
             provider: str | None = None, model: str | None = None, account_type: str | None = None,
             prompt: Any = None, estimated_tokens: int | None = None, expected_output_tokens: int | None = None,
             metadata: dict | None = None) -> TrackedCall:
        """A tracked call (use as a context manager). Identity not given here comes from `tracker.identity()`."""
        context = _identity.get()
        return TrackedCall(
            self, use_case=use_case, user_id=user_id or context.get("user_id"),
            tenant_id=tenant_id or context.get("tenant_id"), provider=provider, model=model,
            account_type=account_type or context.get("account_type"), prompt=prompt,
            estimated_tokens=estimated_tokens, expected_output_tokens=expected_output_tokens, metadata=metadata,
        )

    def track(self, use_case: str, **call_options):
        """Decorator form; see `llmcost.sdk.wrappers.track`."""
        from llmcost.sdk.wrappers import track

        return track(self, use_case, **call_options)

    def wrap(self, client, **call_options):
        """Wrap an OpenAI- or Anthropic-style client so every `create` through it is tracked."""
        from llmcost.sdk.wrappers import wrap_client

        return wrap_client(self, client, **call_options)

    @contextlib.contextmanager
    def identity(self, *, user_id: str | None = None, tenant_id: str | None = None,
                 account_type: str | None = None) -> Iterator[None]:
        """Identity for every call tracked inside the block (per thread and per asyncio task)."""
        merged = dict(_identity.get())
        merged.update({k: v for k, v in (("user_id", user_id), ("tenant_id", tenant_id),
                                         ("account_type", account_type)) if v is not None})
        token = _identity.set(merged)
        try:
            yield
        finally:
            _identity.reset(token)

    @staticmethod
    def current_call() -> TrackedCall | None:
        """The call being tracked in this context (inside `tracker.call` or a `@tracker.track` function)."""
        return _current_call.get()

    def in_flight(self) -> list[dict[str, Any]]:
        """Calls started in this process and not yet finished."""
        now = _utcnow()
        with self._lock:
            calls = list(self._in_flight.values())
        return [
            {"attempt_id": c.attempt_id, "use_case": c.use_case, "user_id": c.user_id, "tenant_id": c.tenant_id,
             "model": c.model, "started_at": c.started_at, "age_seconds": (now - c.started_at).total_seconds()}
            for c in calls
        ]

    # -- records ---------------------------------------------------------------------------------
    def write(self, record: dict[str, Any]) -> OSError | None:
        """Journal a record, or the fallback log when the journal cannot take it.

        Returns None, or the journal's error when the record went to the fallback log instead.
        Raises OSError when neither could take it.
        """
        try:
            self.journal.append(record)
            return None
        except OSError as journal_error:
            error = journal_error
        fallback.append(self.settings.fallback_log, record, f"{type(error).__name__}: {error}",
                        fsync=self.settings.fsync)
        log.error("llmcost: journal write failed (%s); record kept in the fallback log %s: %s tokens, use case %s, "
                  "user %s, tenant %s", error, self.settings.fallback_log,
                  record.get("total_tokens", record.get("estimated_tokens")), record.get("use_case"),
                  record.get("user_id"), record.get("tenant_id"))
        return error

    def _journal_event(self, event: UsageEvent, response: Any) -> None:
        record = event.model_dump(mode="json", exclude_none=True)
        try:
            journal_error = self.write(record)
        except OSError as error:
            log.critical("llmcost: usage NOT RECORDED anywhere: %s", record)
            raise UsageNotRecordedError(
                f"usage of call {event.attempt_id} ({event.total_tokens} tokens, ${event.cost_usd}) could be written "
                f"neither to the journal nor to the fallback log ({error}); the record is attached to this error",
                response=response, event=event,
            ) from error
        if journal_error is not None and self.strict:
            raise journal_error  # strict: the record is safe in the fallback log, and the caller asked to know

    # -- the control state: admission and settling ---------------------------------------------
    def admit(self, *, day: dt.date, user_id: str, tenant_id: str, use_case: str, account_type: str | None,
              estimated_tokens: int, estimated_cost: Decimal) -> BudgetDecision:
        """Kill switch, shutdown and budget for one call, after the control state's upkeep.

        A refusal is checked once more after releasing stale reservations, so a call is never refused
        for the estimate of a call whose process died. Raises ControlStateError when the file is unusable.
        """
        self.ensure_control_rebuilt(day)
        self._upkeep(day)
        check = functools.partial(
            check_before_call, self.control, self.settings, day=day, user_id=user_id, tenant_id=tenant_id,
            use_case=use_case, account_type=account_type, estimated_tokens=estimated_tokens,
            estimated_cost=estimated_cost)
        try:
            return check()
        except (BudgetExceededError, SpendingHaltedError):
            if not self.control.release_stale(self.settings.reservation_ttl_seconds):
                raise
            return check()

    def settle(self, decision: BudgetDecision, tokens: int, cost: Decimal) -> None:
        """Settle a finished call; never raises: a failure is logged and retried before the next call."""
        try:
            settle_after_call(self.control, decision, tokens, cost)
        except ControlStateError as error:
            log.error("llmcost: a call's usage is journaled but its spend is not yet in the control state (%s); "
                      "settled at the next call, or counted once the journal is ingested", error)
            with self._lock:
                self._unsettled.append((decision, tokens, cost))

    def _upkeep(self, day: dt.date) -> None:
        with self._lock:
            unsettled, self._unsettled = self._unsettled, []
        try:
            while unsettled:
                settle_after_call(self.control, *unsettled[0])
                unsettled.pop(0)
        finally:
            with self._lock:
                self._unsettled[:0] = unsettled
        now = time.monotonic()
        if now < self._next_maintenance:
            return
        self._next_maintenance = now + self.settings.control_maintenance_seconds
        self.control.maintain(day, reservation_ttl_seconds=self.settings.reservation_ttl_seconds)
        seen = _file_state(self.settings.db_path)
        if seen != self._store_seen:  # the store changed: ingested records may count towards today
            from llmcost.control.rebuild import refresh_store_spend

            if refresh_store_spend(self.control, self.settings, day, timeout=0.5):
                self._store_seen = seen

    def ensure_control_rebuilt(self, day: dt.date) -> None:
        """Fill the day's live spend from the store and journals when the control state was lost or is new."""
        self.control.open()  # notices a replaced file, whose generation differs
        key = (self.control.generation, day)
        if key in self._rebuilt_days:
            return
        from llmcost.control.rebuild import rebuild_day

        rebuild_day(self.control, self.settings, day)
        self._rebuilt_days.add(key)

    def warn_once(self, key: tuple, message: str, *args: Any) -> None:
        """Log a warning once per key (e.g. per user, day and limit), not on every call."""
        with self._lock:
            if key in self._warned:
                return
            self._warned.add(key)
        log.warning(message, *args)

    def _register(self, call: TrackedCall) -> None:
        with self._lock:
            self._in_flight[call.attempt_id] = call

    def _unregister(self, call: TrackedCall) -> None:
        with self._lock:
            self._in_flight.pop(call.attempt_id, None)

    def close(self) -> None:
        if self._auto_ingest is not None:
            self._auto_ingest.stop()
        self.journal.close()
        self.control.close()


def _file_state(path) -> tuple:
    """A DuckDB file's and its WAL's size and change time: whether the store changed since last looked at."""
    state = []
    for name in (str(path), f"{path}.wal"):
        try:
            stat = os.stat(name)
            state.append((stat.st_size, stat.st_mtime_ns))
        except OSError:
            state.append(None)
    return tuple(state)


class _AutoIngest:
    """Flushes the journal into the store every few seconds and once more at exit (for single scripts)."""

    def __init__(self, tracker: Tracker, interval: float):
        # Ingestion (DuckDB, pyarrow) is loaded now, not at exit: a first import during interpreter shutdown
        # fails ("can't register atexit after shutdown"). A script that asks for auto_ingest wants it anyway.
        from llmcost.ingestion.run import ingest

        self._ingest = ingest
        self.tracker = tracker
        self.interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="llmcost-auto-ingest", daemon=True)
        self._thread.start()
        atexit.register(self.stop)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.flush()

    def flush(self) -> None:
        try:
            self._ingest(self.tracker.settings, [self.tracker.journal.journal_dir], lock_timeout=10)
        except Exception as error:  # the journal keeps the records; the next flush or `llmcost ingest` stores them
            log.warning("llmcost: background ingest failed, records stay in the journal: %s", error)

    def stop(self) -> None:
        if not self._stop.is_set():
            self._stop.set()
            self._thread.join(timeout=self.interval + 5)
            self.flush()
