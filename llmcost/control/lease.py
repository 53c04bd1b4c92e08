"""Admission by lease: most tracked calls admitted without a write transaction on the control file.

The first call of a combination (day, user, tenant, use case, service key, account type) admits, through the one
admission (`control.admit`, the policy's request), a reservation of `CALLS_PER_LEASE` times its estimate: an
ordinary reservation, seen by every process. Following calls of that combination are admitted here while their
estimates fit in what is left of it, and settle their actuals against it here; the lease itself is settled (its
calls' actual total; the unused part released) through the settler when used up, idle, older than
`MAX_AGE_SECONDS`, or at a drain (every read of the control state in this process) or close.

Why no decision differs from admitting each call: a lease is used only while every limit that applies (the user's
day and month, tenant, use case, key, an alert level, the shutdown level) has room for `HEADROOM_LEASES` more
leases beyond what is spent, so no call admitted on it would have been refused or warned; near any limit the
combination is admitted per call for the rest of the day. Every hard limit holds whatever other processes do:
the lease's whole amount is held against it, and the calls admitted here stay within that amount. Kill switches,
halts, resumes and the shutdown level take effect on the very next call in every process: each call asks the
control state whether anything changed since (`LeaseControl.data_version`, no I/O to speak of), and when it did,
the gates are read again before the call is admitted here. The SQLite file answers whether any other connection
committed (the header of its write-ahead log index, which every commit rewrites: one pread, no statement); Redis,
whether its listener heard a gate change, which leaves a window of about one network hop
(`llmcost.control.redis_gates`).
"""

from __future__ import annotations

import os
import threading
import time
import weakref
from collections.abc import Hashable
from dataclasses import dataclass
from decimal import Decimal
from typing import Protocol

from llmcost.control.interface import AdmissionRequest, Admitted
from llmcost.control.policy import BudgetDecision, admission_request
from llmcost.money import to_picodollars

CALLS_PER_LEASE = 16  # a lease holds this many estimates of the call that opened it
HEADROOM_LEASES = 4  # leases are used only while every limit has room for this many more
MAX_AGE_SECONDS = 1.0  # a lease is settled this soon after it was admitted ...
IDLE_SECONDS = 0.25  # ... or after this long without a call


class LeaseControl(Protocol):
    """What leases need of a control state (`ControlState`, `RedisControlState`)."""

    generation: str  # names the state a reservation was made in: a lease of an earlier one is not used

    def data_version(self) -> Hashable:
        """Changes whenever a gate (kill switch, halt, resume, shutdown level) may have changed, in any process."""

    def judge(self, request: AdmissionRequest) -> Admitted:
        """What `admit` would decide now, reserving nothing."""

    def admit(self, request: AdmissionRequest) -> Admitted:
        """The one admission (kill switch, halt, shutdown level, every limit, and the reservation)."""

    def release(self, reservation) -> bool:
        """Drop a reservation without spend."""


@dataclass(eq=False)
class Lease:
    """One lease: its reservation, and its calls' figures (`used`: settled actuals plus estimates in flight)."""

    key: tuple
    request: AdmissionRequest
    reservation: object
    action: str
    opened: float
    last: float
    used_tokens: int = 0
    used_pico: int = 0
    actual_tokens: int = 0
    actual_cost: Decimal = Decimal(0)
    in_flight: int = 0
    closing: bool = False
    handed_over: bool = False


class Share:
    """One call admitted on a lease (a `BudgetDecision`'s `local`): settled or released through the lease."""

    __slots__ = ("leases", "lease", "tokens", "pico", "done")

    def __init__(self, leases: Leases, lease: Lease, tokens: int, pico: int):
        self.leases, self.lease, self.tokens, self.pico, self.done = leases, lease, tokens, pico, False

    def settle(self, tokens: int, cost: Decimal) -> bool:
        return self.leases.finish(self, tokens, cost)

    def release(self) -> bool:
        return self.leases.finish(self, None, None)


_every: weakref.WeakSet[Leases] = weakref.WeakSet()


def _forget_in_forked_child() -> None:
    """A forked child admits nothing on its parent's leases: the parent settles them."""
    for leases in list(_every):
        leases._lock = threading.Lock()
        leases._open, leases._seen, leases._gates = {}, {}, {}


os.register_at_fork(after_in_child=_forget_in_forked_child)


class Leases:
    """The leases of one tracker on a control state; thread-safe. Settled through `settler`, which
    retires idle and old leases (`tick`) and every lease before it drains (`before_drain`)."""

    def __init__(self, control: LeaseControl, settings, settler):
        self.control, self.settings, self.settler = control, settings, settler
        self._lock = threading.Lock()
        self._open: dict[tuple, Lease] = {}
        self._per_call: set[tuple] = set()  # combinations near a limit: admitted per call for the rest of the day
        self._seen: dict[int, tuple] = {}  # per thread: the data_version its connection showed last
        self._gates: dict[tuple, Admitted] = {}  # per (day, use case): the gates as read since that version
        settler.tick = self.retire_idle
        settler.before_drain = self.retire_all
        _every.add(self)

    def admit(self, *, day, user_id: str, tenant_id: str, use_case: str, account_type: str | None,
              estimated_tokens: int, estimated_cost: Decimal, service_key: str | None) -> BudgetDecision | None:
        """A call admitted on a lease, or None: admit it per call (near a limit, refused, or anything unusual)."""
        key = (day, user_id, tenant_id, use_case, service_key, account_type)
        if key in self._per_call or not isinstance(estimated_tokens, int) or estimated_tokens <= 0:
            return None
        pico = to_picodollars(estimated_cost)
        if pico <= 0:
            return None
        version = self.control.data_version()
        thread = threading.get_ident()
        with self._lock:
            if self._seen.get(thread) != version:  # something changed since: read the gates again
                self._gates.clear()
                self._seen[thread] = version
            lease = self._open.get(key)
            now = time.monotonic()
            if lease is not None and not self._usable(lease, estimated_tokens, pico, now):
                self._retire(lease)
                lease = None
            if lease is None:
                lease = self._lease(key, estimated_tokens, estimated_cost, now)
                if lease is None:
                    return None
            lease.used_tokens += estimated_tokens
            lease.used_pico += pico
            lease.in_flight += 1
            lease.last = now
            return BudgetDecision(True, lease.action, None, None, alert=False,
                                  local=Share(self, lease, estimated_tokens, pico))

    def _usable(self, lease: Lease, tokens: int, pico: int, now: float) -> bool:
        request = lease.request
        return (now - lease.opened < MAX_AGE_SECONDS
                and getattr(lease.reservation, "generation", None) == self.control.generation
                and lease.used_tokens + tokens <= request.tokens and lease.used_pico + pico <= request.cost_pico
                and self._gates_open(request))

    def _gates_open(self, request: AdmissionRequest) -> bool:
        """Kill switch, halt and the shutdown level (with room for the leases) as of the last commit anywhere."""
        gate_key = (request.day, request.use_case)
        gate = self._gates.get(gate_key)
        if gate is None:
            gate = self._gates[gate_key] = self.control.judge(AdmissionRequest(
                day=request.day, user_id=request.user_id, tenant_id=request.tenant_id, use_case=request.use_case,
                account_type=request.account_type, tokens=0, cost_pico=0, shutdown_pico=request.shutdown_pico,
                limits=(), counters=(), ttl_seconds=request.ttl_seconds))
        return gate.refused is None and not _near_shutdown(request, gate)

    def _lease(self, key: tuple, tokens: int, cost: Decimal, now: float) -> Lease | None:
        """Admit a lease through the one admission; None (and per call from now on, near a limit) when refused or
        without room for `HEADROOM_LEASES` more."""
        day, user_id, tenant_id, use_case, service_key, account_type = key
        request = admission_request(
            self.settings, day=day, user_id=user_id, tenant_id=tenant_id, use_case=use_case,
            account_type=account_type, estimated_tokens=tokens * CALLS_PER_LEASE,
            estimated_cost=cost * CALLS_PER_LEASE, service_key=service_key)
        if not self._gates_open(request):
            return None
        admitted = self.control.admit(request)
        if admitted.refused is not None:  # per call, which words the refusal (or admits the smaller estimate)
            if admitted.refused == "budget":
                self._per_call.add(key)
            return None
        if not self._room(request, admitted):
            self.control.release(admitted.reservation)
            self._per_call.add(key)
            return None
        lease = Lease(key, request, admitted.reservation, self.settings.limit_for(account_type).action, now, now)
        self._open[key] = lease
        self.settler.wake()  # its tick settles the lease once idle or old
        return lease

    def _room(self, request: AdmissionRequest, admitted: Admitted) -> bool:
        """Whether every limit (and the user's alert level, and the shutdown level) has room for
        `HEADROOM_LEASES` leases beyond what is spent: no call on the lease would be refused or warned."""
        extra_tokens, extra_pico = HEADROOM_LEASES * request.tokens, HEADROOM_LEASES * request.cost_pico
        for item, spent in zip(request.limits, admitted.spent):
            if item.tokens is not None and spent.tokens + extra_tokens > item.tokens:
                return False
            if item.cost_pico is not None and spent.cost_pico + extra_pico > item.cost_pico:
                return False
        alert = self.settings.limit_for(request.account_type).alert_above_usd
        if alert is not None and admitted.spent[0].cost_pico + extra_pico > to_picodollars(alert):
            return False
        return not _near_shutdown(request, admitted)

    def finish(self, share: Share, tokens: int | None, cost: Decimal | None) -> bool:
        """A call on a lease ended: its actuals (or nothing, when released) replace its estimate in the lease."""
        with self._lock:
            if share.done:
                return False
            share.done = True
            lease = share.lease
            lease.used_tokens -= share.tokens
            lease.used_pico -= share.pico
            lease.in_flight -= 1
            if tokens is not None:
                lease.used_tokens += tokens
                lease.used_pico += to_picodollars(cost)
                lease.actual_tokens += tokens
                lease.actual_cost += cost
            if lease.used_tokens > lease.request.tokens or lease.used_pico > lease.request.cost_pico:
                self._retire(lease)  # its calls took more than it holds: settled now, which the next admission drains
            elif lease.closing:
                self._retire(lease)
        return True

    def retire_idle(self) -> bool:
        """Settle the leases idle for `IDLE_SECONDS` or older than `MAX_AGE_SECONDS` (the settler's tick); whether
        any stay open."""
        now = time.monotonic()
        with self._lock:
            for lease in list(self._open.values()):
                if now - lease.last >= IDLE_SECONDS or now - lease.opened >= MAX_AGE_SECONDS:
                    self._retire(lease)
            return bool(self._open)

    def retire_all(self) -> None:
        """Settle every lease (its calls in flight first): before a drain, so a read sees the calls' actuals."""
        with self._lock:
            for lease in list(self._open.values()):
                self._retire(lease)

    def retire_sharing(self, counters) -> None:
        """Settle the leases held against any of these counters but the system's (whose figures a budget's
        refusal or warning judged)."""
        wanted = {counter for counter in counters if counter.scope != "system"}
        with self._lock:
            for lease in list(self._open.values()):
                if wanted.intersection(lease.request.counters):
                    self._retire(lease)

    def _retire(self, lease: Lease) -> None:
        if self._open.get(lease.key) is lease:
            del self._open[lease.key]
        if lease.in_flight == 0 and not lease.handed_over:
            lease.handed_over = True
            self._hand_over(lease)
        lease.closing = True

    def _hand_over(self, lease: Lease) -> None:
        self.settler.submit(lease.reservation, lease.actual_tokens, lease.actual_cost)


def _near_shutdown(request: AdmissionRequest, admitted: Admitted) -> bool:
    return request.shutdown_pico is not None and (
        admitted.system.cost_pico + HEADROOM_LEASES * request.cost_pico >= request.shutdown_pico)

