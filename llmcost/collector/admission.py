"""The tracker's admission over HTTP: reserve before an LLM call, settle after, for apps in any language.

A reservation is a started `TrackedCall` of this process's `Tracker` (kill switch, halt, budget and the
write-ahead attempt record are the tracker's own code); settling it records the usage and swaps the
estimate for the actual figures. The reservation lives in the shared control state with what its settle
needs (identity, use case, provider, model, estimate), so any collector instance sharing that state (Redis,
or the same SQLite file on one host) can settle it, exactly once: the settle journals the event under an id
derived from the reservation id, then claims the reservation (`TrackedCall.finish_once`), so a collector
killed in between loses nothing and the retried settle is stored once; a settle of a reservation already
settled is refused (409). One never settled is finished with its
estimate by the instance that reserved it after `RESERVATION_TTL_SECONDS`, as the tracker bills a call that
reported no usage (unless another instance settled it first).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any

from llmcost.errors import (
    BudgetExceededError,
    ControlStateError,
    LLMCostError,
    SpendingHaltedError,
    TrackingUnavailableError,
    UsageNotRecordedError,
    UseCaseDisabledError,
)
from llmcost.events import TOKEN_FIELDS
from llmcost.money import local_day
from llmcost.sdk.call import TrackedCall
from llmcost.sdk.tracker import Tracker

RESERVATION_TTL_SECONDS = 3600
IDENTITY_HEADERS = {"user_id": "x-user-id", "tenant_id": "x-tenant-id"}


@dataclass(eq=False)  # an exception stays hashable
class Refusal(Exception):
    """A reserve or settle that cannot proceed: HTTP status, reason code and the body to answer with."""

    status: int
    reason: str
    body: dict[str, Any]


class CallReportedError(Exception):
    """The application's LLM call failed (it said so in the settle request)."""


def identity_from_headers(headers) -> dict[str, str | None]:
    """user_id, tenant_id and account_type from the x-* headers; Refusal(400) naming any missing one."""
    found = {name: (headers.get(header) or "").strip() or None for name, header in IDENTITY_HEADERS.items()}
    missing = [header for name, header in IDENTITY_HEADERS.items() if found[name] is None]
    if missing:
        raise Refusal(400, "missing_identity", {
            "error": f"Missing required identity: {', '.join(missing)} (send the {' and '.join(missing)} "
                     "header(s) with the user's and tenant's ids)",
            "missing": missing})
    found["account_type"] = (headers.get("x-account-type") or "").strip() or None
    return found


def _int_field(body: dict[str, Any], name: str) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise Refusal(400, "invalid_body", {"error": f"{name} must be a whole number >= 0"})
    return value


def _text_field(body: dict[str, Any], name: str, required: bool = False) -> str | None:
    value = body.get(name)
    if value is None or (isinstance(value, str) and not value.strip()):
        if required:
            raise Refusal(400, "invalid_body", {"error": f"{name} is required (a non-empty string)"})
        return None
    if not isinstance(value, str):
        raise Refusal(400, "invalid_body", {"error": f"{name} must be a string"})
    return value.strip()


def _already_settled(reservation_id: str) -> Refusal:
    return Refusal(409, "already_settled", {
        "error": f"reservation {reservation_id!r} was already settled (its usage is recorded once)"})


class Admission:
    """Reserve and settle through the shared control state; remembers the reservations it made, to bill
    those never settled."""

    def __init__(self, tracker: Tracker):
        self.tracker = tracker
        self._lock = threading.Lock()
        self._pending: dict[str, float] = {}  # reservation id -> when reserved (monotonic)

    def reserve(self, identity: dict[str, str | None], body: dict[str, Any],
                service_key: str | None = None) -> dict[str, Any]:
        """Start a tracked call; its attempt id is the reservation id. Raises Refusal (403/429/503)."""
        self.expire()
        metadata = body.get("metadata")
        call = self.tracker.call(
            use_case=_text_field(body, "use_case", required=True), user_id=identity["user_id"],
            tenant_id=identity["tenant_id"], account_type=identity["account_type"],
            provider=_text_field(body, "provider"), model=_text_field(body, "model"), prompt=body.get("prompt"),
            estimated_tokens=_int_field(body, "estimated_tokens"),
            expected_output_tokens=_int_field(body, "expected_output_tokens"),
            metadata=metadata if isinstance(metadata, dict) else None,
        )
        call.service_key, call.shared = service_key, True
        if service_key:  # stored with the event, so the store's figures of key budgets find it
            call.metadata["service_key"] = service_key
        try:
            call.start()
        except ControlStateError as error:
            raise Refusal(503, "control_state_unavailable", {"error": str(error)}) from None
        except UseCaseDisabledError as error:
            raise Refusal(403, "use_case_disabled", {"error": str(error), "use_case": call.use_case}) from None
        except SpendingHaltedError as error:
            raise Refusal(403, "spending_halted", {"error": str(error), **self._system_figures(call)}) from None
        except BudgetExceededError as error:
            # the refused budget's own figures (a month, a tenant...) over the user's day
            figures = {**self._user_figures(call), **error.figures}
            raise Refusal(429, "budget_exceeded", {"error": str(error), **figures}) from None
        except TrackingUnavailableError as error:
            raise Refusal(503, "not_recorded", {"error": str(error)}) from None
        with self._lock:
            self._pending[call.attempt_id] = time.monotonic()
        return {"reservation_id": call.attempt_id, "estimated_tokens": call.estimated_tokens,
                "budget_warning": call.decision.reason if call.decision else None}

    def settle(self, body: dict[str, Any], tenant_id: str | None = None) -> dict[str, Any]:
        """Record a reserved call's usage and settle its reservation. Raises Refusal (400/403/404/409/503).

        With `tenant_id` (a tenant's service key), only that tenant's reservations may be settled.
        """
        reservation_id = _text_field(body, "reservation_id", required=True)
        counts = {name: _int_field(body, name) for name in TOKEN_FIELDS}  # checked before the reservation is taken
        model = _text_field(body, "model")
        call = self._resumed(reservation_id)
        if tenant_id is not None and call.tenant_id != tenant_id:
            raise Refusal(403, "tenant_not_allowed", {
                "error": "this reservation belongs to a tenant this service key is not allowed to settle for"})
        if body.get("response") is not None:
            call.record(body["response"])
        if counts["input_tokens"] is not None or counts["output_tokens"] is not None:
            call.record(**{name: value or 0 for name, value in counts.items()}, model=model)
        failed = body.get("status") == "error"
        event = self._finish(call, CallReportedError(_text_field(body, "error") or "the call failed") if failed else None)
        return {"event_id": event.event_id, "total_tokens": event.total_tokens, "cost_usd": str(event.cost_usd),
                "price_source": event.price_source, "usage_estimated": event.usage_estimated}

    def _resumed(self, reservation_id: str) -> TrackedCall:
        """The reserved call as any instance sharing the control state sees it; Refusal(404) when not open."""
        try:
            details = self.tracker.control.reservation_details(reservation_id)
        except ControlStateError as error:
            raise Refusal(503, "control_state_unavailable", {"error": str(error)}) from None
        if not details:
            if self._settled(reservation_id):
                raise _already_settled(reservation_id)
            raise Refusal(404, "unknown_reservation", {
                "error": f"reservation {reservation_id!r} is not open (already settled, never made, or made more than "
                         f"a day ago)"})
        return TrackedCall.resumed(self.tracker, reservation_id, details)

    def _finish(self, call: TrackedCall, exc: BaseException | None):
        """Claim and record the call once; Refusal(409) when another settle claimed it first."""
        try:
            event = call.finish_once(exc)
        except UsageNotRecordedError as error:
            raise Refusal(503, "not_recorded", {"error": str(error), "event": error.event.model_dump(mode="json")
                                                if error.event else None}) from None
        except ControlStateError as error:
            raise Refusal(503, "control_state_unavailable", {"error": str(error)}) from None
        except LLMCostError as error:
            raise Refusal(400, "invalid_usage", {"error": str(error)}) from None
        except ValueError as error:  # the usage did not make a valid event
            raise Refusal(400, "invalid_usage", {"error": str(error)}) from None
        finally:
            with self._lock:
                self._pending.pop(call.attempt_id, None)
        if event is None:
            raise _already_settled(call.attempt_id)
        return event

    def _settled(self, reservation_id: str) -> bool:
        try:
            return self.tracker.control.settled(reservation_id)
        except ControlStateError as error:
            raise Refusal(503, "control_state_unavailable", {"error": str(error)}) from None

    def expire(self, now: float | None = None) -> int:
        """Bill the estimate of reservations made here and never settled; returns how many were billed here."""
        now = time.monotonic() if now is None else now
        with self._lock:
            old = [key for key, created in self._pending.items() if now - created > RESERVATION_TTL_SECONDS]
        billed = 0
        for reservation_id in old:
            try:
                call = self._resumed(reservation_id)
                self._finish(call, CallReportedError(f"never settled within {RESERVATION_TTL_SECONDS}s: estimate billed"))
                billed += 1
            except Refusal:
                with self._lock:  # settled elsewhere, or the control state is gone: nothing more to do here
                    self._pending.pop(reservation_id, None)
        return billed

    def close(self) -> None:
        self.expire(now=float("inf"))

    def _user_figures(self, call: TrackedCall) -> dict[str, Any]:
        settings = self.tracker.settings
        day = local_day(call.started_at, settings.tz)
        tokens, cost = self.tracker.control.user_spend(day, call.user_id)
        limit = settings.limit_for(call.account_type)
        return {"user_id": call.user_id, "account_type": limit.account_type, "day": day.isoformat(),
                "spent_tokens": tokens, "spent_usd": str(cost), "estimated_tokens": call.estimated_tokens,
                "limit_tokens": limit.tokens, "limit_usd": str(limit.cost_usd) if limit.cost_usd is not None else None}

    def _system_figures(self, call: TrackedCall) -> dict[str, Any]:
        settings = self.tracker.settings
        day = local_day(call.started_at, settings.tz)
        shutdown = settings.system.shutdown_usd
        return {"day": day.isoformat(), "system_spent_usd": str(self.tracker.control.system_spend(day)),
                "shutdown_usd": str(shutdown) if shutdown is not None else None}
