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
import os
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from decimal import Decimal
from types import MappingProxyType
from typing import Any

from llmcost.config import Settings, load_settings
from llmcost.control.backend import open_control
from llmcost.control.lease import Leases
from llmcost.control.policy import (
    BudgetDecision,
    admission_request,
    check_before_call,
    release_after_refusal,
    settle_after_call,
)
from llmcost.control.settler import Settler
from llmcost.errors import (
    BudgetExceededError,
    SpendingHaltedError,
    UsageNotRecordedError,
)
from llmcost.events import UsageEvent
from llmcost.pricing.rates import Pricer
from llmcost.sdk import fallback, wrappers
from llmcost.sdk.built_event import journal_line
from llmcost.sdk.call import TrackedCall, _current_call, _utcnow
from llmcost.sdk.journal import Journal

log = logging.getLogger("llmcost")


_identity: contextvars.ContextVar[Mapping[str, str]] = contextvars.ContextVar(
    "llmcost_identity", default=MappingProxyType({}))


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
        # lazy: an unusable control state is met at the first call, and handled by `on_control_error` there
        self.control = open_control(self.settings, lazy=True)
        if hasattr(self.control, "checkpoint_in_background"):  # the SQLite file: keep checkpoints off the calls
            self.control.checkpoint_in_background()
        # Settled off the caller's path (see llmcost.control.settler for why budgets still hold) ...
        self._settler = Settler(self.control.settle_many, self.control.place,
                                apply_in_background=self.control.settle_many_where_open)
        # ... and most calls admitted on a lease, without a write transaction on the SQLite file or a round trip to
        # Redis (llmcost.control.lease says why no decision differs).
        self._leases = Leases(self.control, self.settings, self._settler)
        self.pricer = Pricer.from_settings(self.settings)
        self._lock = threading.Lock()
        self._in_flight: dict[str, TrackedCall] = {}
        self._rebuilt_days: set[tuple[str, dt.date]] = set()
        self._next_maintenance = 0.0
        self._next_rebuild = time.monotonic() + (self.control.rebuild_interval_seconds or 0)
        self._store_seen: tuple | None = None
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
        return wrappers.track(self, use_case, **call_options)

    def wrap(self, client, **call_options):
        """Wrap an OpenAI- or Anthropic-style client so every `create` through it is tracked."""
        return wrappers.wrap_client(self, client, **call_options)

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
    def write(self, record: dict[str, Any], line: bytes | None = None) -> OSError | None:
        """Journal a record (given as its encoded `line` when known), or the fallback log when the journal
        cannot take it.

        Returns None, or the journal's error when the record went to the fallback log instead.
        Raises OSError when neither could take it.
        """
        return self._write(lambda: record, line)

    def _write(self, record_of: Callable[[], dict[str, Any]], line: bytes | None = None) -> OSError | None:
        """`write` of the record `record_of()` returns, given as its encoded `line` when known (the record is then
        built only for the fallback log)."""
        try:
            if line is None:
                self.journal.append(record_of())
            else:
                self.journal.append_lines(line)
            return None
        except OSError as journal_error:
            error = journal_error
        record = record_of()
        fallback.append(self.settings.fallback_log, record, f"{type(error).__name__}: {error}",
                        fsync=self.settings.fsync)
        log.error("llmcost: journal write failed (%s); record kept in the fallback log %s: %s tokens, use case %s, "
                  "user %s, tenant %s", error, self.settings.fallback_log,
                  record.get("total_tokens", record.get("estimated_tokens")), record.get("use_case"),
                  record.get("user_id"), record.get("tenant_id"))
        return error

    def _journal_event(self, event: UsageEvent, response: Any) -> None:
        dumped: list[dict[str, Any]] = []  # the record, built once if at all (only the fallback log needs it)

        def record_of() -> dict[str, Any]:
            if not dumped:
                dumped.append(event.model_dump(mode="json", exclude_none=True))
            return dumped[0]

        try:
            journal_error = self._write(record_of, journal_line(event))
        except OSError as error:
            log.critical("llmcost: usage NOT RECORDED anywhere: %s", record_of())
            raise UsageNotRecordedError(
                f"usage of call {event.attempt_id} ({event.total_tokens} tokens, ${event.cost_usd}) could be written "
                f"neither to the journal nor to the fallback log ({error}); the record is attached to this error",
                response=response, event=event,
            ) from error
        if journal_error is not None and self.strict:
            raise journal_error  # strict: the record is safe in the fallback log, and the caller asked to know

    # -- the control state: admission and settling ---------------------------------------------
    def admit(self, *, day: dt.date, user_id: str, tenant_id: str, use_case: str, account_type: str | None,
              estimated_tokens: int, estimated_cost: Decimal, service_key: str | None = None,
              details: dict | None = None, reservation_id: str | None = None) -> BudgetDecision:
        """Kill switch, shutdown and budget for one call, after the control state's upkeep.

        A refusal is checked once more after releasing stale reservations, so a call is never refused
        for the estimate of a call whose process died, or of a call whose settle is pending in this process
        (also drained first when a pending settle would raise a figure: the decision is that of an immediate
        settle). `details` and `reservation_id` keep the reservation
        settleable by any process sharing the control state (`TrackedCall.resumed`). Raises ControlStateError
        when the control state is unusable.
        """
        self.ensure_control_rebuilt(day)
        self._upkeep(day)
        settler = self._settler
        if settler.raising:  # (a lease whose calls took more than it holds is handed over)
            settler.drain(everything=False)
        if details is None and reservation_id is None:
            leased = self._leases.admit(day=day, user_id=user_id, tenant_id=tenant_id, use_case=use_case,
                                        account_type=account_type, estimated_tokens=estimated_tokens,
                                        estimated_cost=estimated_cost, service_key=service_key)
            if leased is not None:
                return leased
        check = functools.partial(
            check_before_call, self.control, self.settings, day=day, user_id=user_id, tenant_id=tenant_id,
            use_case=use_case, account_type=account_type, estimated_tokens=estimated_tokens,
            estimated_cost=estimated_cost, service_key=service_key, details=details, reservation_id=reservation_id)
        applied = settler.applied  # (the background may apply one mid-check)
        try:
            decision = check()
        except (BudgetExceededError, SpendingHaltedError) as refused:
            drained = self._drain_for(refused, day=day, user_id=user_id, tenant_id=tenant_id, use_case=use_case,
                                      account_type=account_type, service_key=service_key) or settler.applied != applied
            if not (self.control.release_stale(self.settings.reservation_ttl_seconds) or drained):
                raise
            return check()
        if decision.reason and (
                self._drain_for(None, counters=decision.reservation.counters) or settler.applied != applied):
            release_after_refusal(self.control, decision)  # judged with finished calls' estimates
            return check()
        return decision

    def _drain_for(self, refused: Exception | None, *, counters=None, **identity) -> bool:
        """Apply the settles pending in this process that a refusal or warning may have judged (the leases held
        against the same budgets; every lease for a halt); True when there were any."""
        if isinstance(refused, SpendingHaltedError):
            self._leases.retire_all()
        else:
            if counters is None:
                counters = admission_request(self.settings, estimated_tokens=0, estimated_cost=Decimal(0),
                                             **identity).counters
            self._leases.retire_sharing(counters)
        return self._settler.drain(everything=False)

    def settle(self, decision: BudgetDecision, tokens: int, cost: Decimal) -> None:
        """Settle a finished call (journaled already); never raises: a failure is logged and retried (in the
        background)."""
        if decision.local is not None:
            settle_after_call(self.control, decision, tokens, cost)  # on its lease: no I/O
            return
        if decision.reservation is not None:
            self._settler.submit(decision.reservation, tokens, cost)

    def _upkeep(self, day: dt.date) -> None:
        now = time.monotonic()
        if now < self._next_maintenance:
            return
        self._next_maintenance = now + self.settings.control_maintenance_seconds
        self.control.maintain(day, reservation_ttl_seconds=self.settings.reservation_ttl_seconds)
        interval = self.control.rebuild_interval_seconds
        if interval and now >= self._next_rebuild:  # drift cure of a shared state (see its backend)
            from llmcost.control.rebuild import rebuild_day

            self._next_rebuild = now + interval
            rebuild_day(self.control, self.settings, day, force=True)
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

    def flush(self) -> None:
        """Apply every settle this tracker handed over to the control state (reads in this process do it first)."""
        self._settler.drain()

    def close(self) -> None:
        self._settler.close()
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
