"""What every control-state backend (SQLite per host, Redis shared by hosts) takes and answers, and the input
rules both apply; `llmcost.control.backend.open_control` opens the configured one.

The limit rules live in `llmcost.control.policy`, which is pure: it turns the settings into an
`AdmissionRequest` (every limit that applies to a call, as whole tokens and picodollars), and a backend
applies that request atomically in one step (one SQLite transaction, one Redis Lua script): kill switch,
halt, emergency shutdown, each limit, and the reservation. The backend answers with the figures it
decided on (`Admitted`); the policy words the refusal or the warning.

A spend counter is named by its period (`2026-12-03`, or `2026-12` for a calendar month in the configured
time zone), its scope (`user`, `tenant`, `use_case`, `key`, and `system` with an empty name) and a name.
Its spend is one rule on both backends: the larger of what trackers settled live and what the store holds
of tracker calls, plus the store's other events, plus the estimates in flight.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from llmcost.money import to_picodollars

SCOPES = ("user", "tenant", "use_case", "key", "system")


def period_key(period: str, day: dt.date) -> str:
    """The counter period a day falls in: the day itself, or its calendar month."""
    if period == "day":
        return day.isoformat()
    if period == "month":
        return f"{day:%Y-%m}"
    raise ValueError(f"unknown budget period {period!r} (day or month)")


def is_day(key: str) -> bool:
    """Whether a counter period is a day (`2026-12-03`), not a calendar month (`2026-12`)."""
    return len(key) == 10


def month_days(key: str) -> tuple[dt.date, dt.date]:
    """The first and last day of a `YYYY-MM` period."""
    first = dt.date.fromisoformat(f"{key}-01")
    following = (first.replace(day=28) + dt.timedelta(days=4)).replace(day=1)
    return first, following - dt.timedelta(days=1)


@dataclass(frozen=True)
class Counter:
    """One spend counter: period key, scope and name (see the module docstring)."""

    period: str
    scope: str
    name: str


@dataclass(frozen=True)
class ScopeLimit:
    """A limit that applies to a call: its counter, whole-number limits, and its action (soft, hard, alert)."""

    counter: Counter
    tokens: int | None
    cost_pico: int | None
    action: str
    label: str = ""  # how messages name it, e.g. "tenant 'northside-high' (month 2026-12)"


@dataclass(frozen=True)
class Spend:
    """Whole tokens and picodollars of one counter."""

    tokens: int = 0
    cost_pico: int = 0


@dataclass(frozen=True)
class AdmissionRequest:
    """Everything one admission decides on; the backend applies it in one atomic step.

    `limits` holds the user's limit first when the account type has one, then the other scopes';
    `counters` names every counter the reservation is held against (those of `limits` and the system's).
    `details` is what a settle elsewhere needs to record the call (provider, model, identity, estimate).
    """

    day: dt.date
    user_id: str
    tenant_id: str
    use_case: str
    account_type: str
    tokens: int
    cost_pico: int
    shutdown_pico: int | None
    limits: tuple[ScopeLimit, ...]
    counters: tuple[Counter, ...]
    ttl_seconds: int
    details: dict[str, Any] = field(default_factory=dict)
    reservation_id: str | None = None


@dataclass(frozen=True)
class Admitted:
    """A backend's answer to an AdmissionRequest.

    `refused` is None (reserved), `disabled` (reason: the kill switch's), `halted` (reason: the manual
    halt's, or None when system spend reached the shutdown level) or `budget` (`over`: the index into the
    request's limits of the first hard limit exceeded). Figures are before this call.
    """

    refused: str | None
    reason: str | None
    system: Spend
    spent: tuple[Spend, ...]
    over: int | None = None
    reservation: Reservation | None = None  # when reserved


@dataclass(frozen=True)
class Reservation:
    """A call's estimate held against a user's day until `settle` or `release`.

    `spent_*_before` are the user's figures for the day before this reservation (see `user_spend`);
    `generation` names the control file it was made in.
    """

    id: str
    day: dt.date
    user_id: str
    tokens: int
    cost: Decimal
    spent_tokens_before: int
    spent_cost_before: Decimal
    generation: str = ""
    counters: tuple[Counter, ...] = ()


def whole_tokens(value: int, name: str) -> int:
    """A token count as given to a backend: a whole number >= 0, else ValueError naming it."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{name} must be a whole number >= 0, got {value!r}")
    return value


def summed_by_name(rows: Iterable[tuple[str, int, Decimal]]) -> dict[str, list[int]]:
    """(name, tokens, cost) rows summed per name, in whole tokens and picodollars."""
    totals: dict[str, list[int]] = {}
    for name, tokens, cost in rows:
        total = totals.setdefault(name, [0, 0])
        total[0] += whole_tokens(tokens, "tokens")
        total[1] += to_picodollars(cost)
    return totals
