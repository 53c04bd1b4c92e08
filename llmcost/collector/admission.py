"""The tracker's admission over HTTP: reserve before an LLM call, settle after, for apps in any language.

A reservation is a started `TrackedCall` of this process's `Tracker` (kill switch, halt, budget and the
write-ahead attempt record are the tracker's own code); settling it records the usage and swaps the
estimate for the actual figures. Reservations live in this collector process, so a settle must reach the
process that reserved (one collector, or sticky routing); one never settled is finished with its
estimate after `RESERVATION_TTL_SECONDS`, as the tracker bills a call that reported no usage.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any

from llmcost.errors import (
    BudgetExceededError,
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


class Admission:
    """Reservations held by this collector process."""

    def __init__(self, tracker: Tracker):
        self.tracker = tracker
        self._lock = threading.Lock()
        self._pending: dict[str, tuple[float, TrackedCall]] = {}

    def reserve(self, identity: dict[str, str | None], body: dict[str, Any]) -> dict[str, Any]:
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
        try:
            call.start()
        except UseCaseDisabledError as error:
            raise Refusal(403, "use_case_disabled", {"error": str(error), "use_case": call.use_case}) from None
        except SpendingHaltedError as error:
            raise Refusal(403, "spending_halted", {"error": str(error), **self._system_figures(call)}) from None
        except BudgetExceededError as error:
            raise Refusal(429, "budget_exceeded", {"error": str(error), **self._user_figures(call)}) from None
        except TrackingUnavailableError as error:
            raise Refusal(503, "not_recorded", {"error": str(error)}) from None
        with self._lock:
            self._pending[call.attempt_id] = (time.monotonic(), call)
        return {"reservation_id": call.attempt_id, "estimated_tokens": call.estimated_tokens,
                "budget_warning": call.decision.reason if call.decision else None}

    def settle(self, body: dict[str, Any], tenant_id: str | None = None) -> dict[str, Any]:
        """Record a reserved call's usage and settle its reservation. Raises Refusal (400/403/404/503).

        With `tenant_id` (a tenant's service key), only that tenant's reservations may be settled.
        """
        reservation_id = _text_field(body, "reservation_id", required=True)
        counts = {name: _int_field(body, name) for name in TOKEN_FIELDS}  # checked before the reservation is taken
        model = _text_field(body, "model")
        with self._lock:
            entry = self._pending.get(reservation_id)
            if entry is not None and tenant_id is not None and entry[1].tenant_id != tenant_id:
                raise Refusal(403, "tenant_not_allowed", {
                    "error": "this reservation belongs to a tenant this service key is not allowed to settle for"})
            self._pending.pop(reservation_id, None)
        if entry is None:
            raise Refusal(404, "unknown_reservation", {
                "error": f"reservation {reservation_id!r} is not open in this collector process (already settled, "
                         f"expired after {RESERVATION_TTL_SECONDS}s, or reserved at another collector: send settle "
                         "to the collector that reserved)"})
        call = entry[1]
        if body.get("response") is not None:
            call.record(body["response"])
        if counts["input_tokens"] is not None or counts["output_tokens"] is not None:
            call.record(**{name: value or 0 for name, value in counts.items()}, model=model)
        failed = body.get("status") == "error"
        try:
            event = call.finish(CallReportedError(_text_field(body, "error") or "the call failed") if failed else None)
        except UsageNotRecordedError as error:
            raise Refusal(503, "not_recorded", {"error": str(error), "event": error.event.model_dump(mode="json")
                                                if error.event else None}) from None
        except LLMCostError as error:
            raise Refusal(400, "invalid_usage", {"error": str(error)}) from None
        except ValueError as error:  # the usage did not make a valid event (the fallback log kept it)
            raise Refusal(400, "invalid_usage", {"error": str(error)}) from None
        return {"event_id": event.event_id, "total_tokens": event.total_tokens, "cost_usd": str(event.cost_usd),
                "price_source": event.price_source, "usage_estimated": event.usage_estimated}

    def expire(self, now: float | None = None) -> int:
        """Finish reservations never settled, billing their estimate; returns how many."""
        now = time.monotonic() if now is None else now
        with self._lock:
            old = [key for key, (created, _) in self._pending.items() if now - created > RESERVATION_TTL_SECONDS]
            calls = [self._pending.pop(key)[1] for key in old]
        for call in calls:
            try:
                call.finish(CallReportedError(f"never settled within {RESERVATION_TTL_SECONDS}s: estimate billed"))
            except LLMCostError:
                pass  # the tracker logged it critically and the record is attached to its error
        return len(calls)

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
