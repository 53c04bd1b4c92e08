"""Live control state on Redis, shared by every host: the same operations as the SQLite `ControlState`.

Admission is one Lua script (`redis_lua.ADMIT`): kill switch, halt, shutdown level, every limit and the
reservation, atomically, in one round trip; settle and release are a second one. A tracker settles in the
background (`settle_many`: one round trip for a batch, through `llmcost.control.settler`, so every other
operation of this state in the process first applies the settles pending), and admits most calls on a lease
(`llmcost.control.lease`), which asks `data_version()` on each call whether a gate may have changed: answered by
a listener of the gates channel, without a round trip (`llmcost.control.redis_gates` says the window this leaves).

Keys carry the period in the configured time zone (`llmcost:c:2026-12-03:user:<id>`,
`llmcost:c:2026-12:tenant:<id>`) and expire on their own. Counters are rebuilt from the store and journals at a
tracker's start, every `control_rebuild_seconds`, and by `llmcost control rebuild`; a Redis that lost its data gets
a new `generation`, which makes every tracker rebuild. Redis down or unreachable is a `ControlStateError`, which
`on_control_error` turns into a refusal (the default) or an unchecked call, as for a failing SQLite file.

Run Redis with `appendonly yes` and `maxmemory-policy noeviction`: an evicted or lost counter lets spend
through until the next rebuild. Not for Redis Cluster (the scripts touch keys named in the reservation).
"""

from __future__ import annotations

import datetime as dt
import functools
import json
import logging
import threading
import uuid
from collections.abc import Callable, Iterable
from dataclasses import replace
from decimal import Decimal
from pathlib import Path

from llmcost.control import audit as control_audit
from llmcost.control import redis_lua, settler
from llmcost.control.file import day_key, now_iso
from llmcost.control.interface import AdmissionRequest, Admitted, Counter, Reservation, Spend, summed_by_name, whole_tokens
from llmcost.control.policy import halt_reason
from llmcost.control.redis_gates import GateWatch
from llmcost.errors import ControlStateError
from llmcost.money import from_picodollars, to_picodollars

log = logging.getLogger("llmcost")

PREFIX = "llmcost:"
COUNTER_TTL_SECONDS = 70 * 86400  # a month's counter outlives its month; a day's is small
SOCKET_TIMEOUT_SECONDS = 2.0


def _spend(v: list) -> Spend:
    lt, lc, tt, tc, et, ec, ft, fc = (int(x) for x in v)
    return Spend(max(lt, tt) + et + ft, max(lc, tc) + ec + fc)


def counter_key(counter: Counter) -> str:
    return f"{PREFIX}c:{counter.period}:{counter.scope}:{counter.name}"


def _reachable(method):
    """Turn every Redis failure into a ControlStateError naming the server and the fix. Every operation but the
    settle path's first applies the settles this process handed over (`llmcost.control.settler`)."""
    drains = method.__name__ not in settler.SETTLE_PATH

    @functools.wraps(method)
    def reachable(self, *args, **kwargs):
        import redis

        if drains:
            settler.drain_pending(self.place)
        try:
            self._ready()
            return method(self, *args, **kwargs)
        except redis.RedisError as error:
            self._generation_seen = None
            raise ControlStateError(
                f"the control state on Redis {self.where} failed: {type(error).__name__}: {error} (start Redis or "
                "fix redis_url; until then calls are refused, or allowed unchecked with on_control_error = "
                "\"allow\")") from error

    return reachable


class RedisControlState:
    """One process's handle on the shared control state (thread-safe: redis-py pools its connections)."""

    # Rebuild counters from the store and journals this often (drift cure): raising only, so it is safe
    # while other hosts settle calls this host's files do not hold.
    rebuild_interval_seconds = 300

    def __init__(self, url: str, *, audit_path: Path | None = None, lazy: bool = False):
        import redis

        self.url = url
        self.where = f"at {self._safe_url(url)}"
        self.audit_path = Path(audit_path) if audit_path else None
        self.path = None  # no file: surfaces that name the file name the URL instead
        self.place = f"redis:{self._safe_url(url)}"  # names this state for the settles pending in this process
        self.recreated = False
        self._client = redis.Redis.from_url(url, socket_timeout=SOCKET_TIMEOUT_SECONDS,
                                            socket_connect_timeout=SOCKET_TIMEOUT_SECONDS, decode_responses=True)
        self._scripts = {name: self._client.register_script(getattr(redis_lua, name))
                         for name in ("ADMIT", "JUDGE", "FINISH", "SWEEP", "SET_FIGURES")}
        self._gates = GateWatch(url, f"{PREFIX}gates", socket_timeout=SOCKET_TIMEOUT_SECONDS)
        self._generation_seen: str | None = None
        self._lock = threading.Lock()
        if not lazy:
            self.open()

    @staticmethod
    def _safe_url(url: str) -> str:
        """The URL without a password."""
        scheme, _, rest = url.partition("://")
        return f"{scheme}://{rest.rsplit('@', 1)[-1]}" if rest else url

    def _ready(self) -> None:
        if self._generation_seen is None:
            with self._lock:
                self._generation_seen = self._load_generation()

    def _load_generation(self) -> str:
        self._client.set(f"{PREFIX}generation", uuid.uuid4().hex, nx=True)
        return self._client.get(f"{PREFIX}generation")

    @_reachable
    def open(self) -> None:
        """Connect now (without a round trip once connected: `maintain` notices a Redis that lost its data)."""

    @property
    def generation(self) -> str:
        return self._generation_seen or ""

    def close(self) -> None:
        self._gates.close()
        self._client.close()

    def __enter__(self) -> RedisControlState:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def _audit(self, action: str, **fields) -> None:
        if self.audit_path is None:
            return
        try:
            control_audit.append(self.audit_path, action, **fields)
        except OSError as error:
            log.error("llmcost: %s done, but the control audit log %s cannot take it (%s)", action, self.audit_path, error)

    # -- kill switches and halts -------------------------------------------------------------

    @_reachable
    def disable(self, use_case: str, reason: str, by: str | None = None) -> None:
        if not use_case:
            raise ValueError("use_case must not be empty")
        reason, by = reason or "no reason given", by or control_audit.default_actor()
        self._change_gates(lambda pipe: pipe.hset(f"{PREFIX}disabled", use_case, json.dumps(
            {"reason": reason, "disabled_at": now_iso(), "disabled_by": by})))
        self._audit("disable", use_case=use_case, reason=reason, by=by)

    @_reachable
    def enable(self, use_case: str, by: str | None = None, reason: str | None = None) -> bool:
        changed = self._change_gates(lambda pipe: pipe.hdel(f"{PREFIX}disabled", use_case))[0] > 0
        if changed:
            self._audit("enable", use_case=use_case, reason=reason, by=by)
        return changed

    @_reachable
    def disabled(self) -> dict[str, dict]:
        found = self._client.hgetall(f"{PREFIX}disabled")
        return {name: json.loads(found[name]) for name in sorted(found)}

    @_reachable
    def disabled_reason(self, use_case: str) -> str | None:
        found = self._client.hget(f"{PREFIX}disabled", use_case)
        return json.loads(found)["reason"] if found else None

    def _change_gates(self, change: Callable) -> list:
        """The commands `change` adds to a pipeline, run as one transaction with a message on the gates channel, so
        that leases in every process judge the gates again (`data_version`); the commands' answers."""
        with self._client.pipeline(transaction=True) as pipe:
            change(pipe)
            pipe.publish(f"{PREFIX}gates", "changed")
            answers = pipe.execute()
        self._gates.changed()
        return answers

    def data_version(self) -> int:
        """Changes whenever a gate may have changed (kill switch, halt, resume, shutdown level, rebuilt figures), as
        heard by this process's listener of the gates channel: no round trip (`llmcost.control.redis_gates`)."""
        return self._gates.version()

    def _halt_key(self, day) -> str:
        return f"{PREFIX}halt:{day_key(day)}"

    @_reachable
    def halt(self, day: dt.date | str, reason: str, by: str | None = None) -> None:
        key, reason = self._halt_key(day), reason or "halted by an operator"
        self._change_gates(lambda pipe: pipe.hdel(key, "resumed_at").hset(
            key, mapping={"reason": reason, "halted_at": now_iso()}).expire(key, 3 * 86400))
        self._audit("halt", day=day_key(day), reason=reason, by=by)

    @_reachable
    def resume(self, day: dt.date | str, by: str | None = None, reason: str | None = None) -> None:
        key = self._halt_key(day)
        self._change_gates(lambda pipe: pipe.hset(key, "resumed_at", now_iso()).expire(key, 3 * 86400))
        self._audit("resume", day=day_key(day), reason=reason, by=by)

    @_reachable
    def halt_reason(self, day: dt.date | str, shutdown_usd: Decimal | None) -> str | None:
        reason, resumed = self._client.hmget(self._halt_key(day), "reason", "resumed_at")
        return halt_reason(day_key(day), reason, resumed is not None, shutdown_usd, lambda: self.system_spend(day))

    # -- admission ---------------------------------------------------------------------------

    @_reachable
    def admit(self, request: AdmissionRequest) -> Admitted:
        """Kill switch, halt, shutdown level, every limit of the request and the reservation: one script."""
        return self._decide("ADMIT", request, request.reservation_id or uuid.uuid4().hex)

    @_reachable
    def judge(self, request: AdmissionRequest) -> Admitted:
        """What `admit` would decide on the figures as they are, reserving nothing (one round trip)."""
        return self._decide("JUDGE", request, "")

    def _decide(self, script: str, request: AdmissionRequest, reservation_id: str) -> Admitted:
        day = request.day.isoformat()
        keys = [f"{PREFIX}disabled", self._halt_key(day), counter_key(Counter(day, "system", "")),
                f"{PREFIX}inflight", f"{PREFIX}r:{reservation_id}", *(counter_key(i.counter) for i in request.limits)]
        args = [PREFIX, request.use_case, request.tokens, request.cost_pico,
                "" if request.shutdown_pico is None else request.shutdown_pico, request.ttl_seconds,
                json.dumps(request.details), day, request.user_id, COUNTER_TTL_SECONDS, len(request.limits)]
        for item in request.limits:
            args += ["" if item.tokens is None else item.tokens, "" if item.cost_pico is None else item.cost_pico,
                     1 if item.action == "hard" else 0]
        out = self._scripts[script](keys=keys, args=args)
        status, reason, system = out[0], out[1] or None, _spend(out[2:10])
        spent = tuple(_spend(out[10 + 8 * i:18 + 8 * i]) for i in range((len(out) - 11) // 8))
        if status == "disabled":
            return Admitted("disabled", json.loads(reason)["reason"], system, ())
        if status == "halted":
            return Admitted("halted", reason, system, ())
        if status == "budget":
            return Admitted("budget", None, system, spent, over=int(out[-1]) - 1)
        if not reservation_id:
            return Admitted(None, None, system, spent)
        user = spent[0] if spent else Spend()
        return replace(Admitted(None, None, system, spent), reservation=Reservation(
            reservation_id, request.day, request.user_id, request.tokens, from_picodollars(request.cost_pico),
            user.tokens, from_picodollars(user.cost_pico), self.generation, request.counters))

    @staticmethod
    def _finish_keys_and_args(reservation, tokens: int, cost_pico: int, settle: bool) -> tuple[list, list]:
        reservation_id = reservation.id if isinstance(reservation, Reservation) else reservation
        return ([f"{PREFIX}r:{reservation_id}", f"{PREFIX}inflight", f"{PREFIX}settled:{reservation_id}"],
                [PREFIX, tokens, cost_pico, 1 if settle else 0])

    def _finish(self, reservation, tokens: int, cost_pico: int, settle: bool) -> bool:
        keys, args = self._finish_keys_and_args(reservation, tokens, cost_pico, settle)
        return bool(self._scripts["FINISH"](keys=keys, args=args))

    @_reachable
    def settle(self, reservation: Reservation | str, actual_tokens: int, actual_cost: Decimal) -> bool:
        """Swap the estimate for the actual figures once (from any host); False when already settled."""
        return self._finish(reservation, whole_tokens(actual_tokens, "actual tokens"), to_picodollars(actual_cost), True)

    @_reachable
    def settle_many(self, settles: list[tuple[Reservation | str, int, Decimal]]) -> list[bool]:
        """`settle` of each (reservation, actual tokens, actual cost) in one round trip (a pipeline). Not one
        transaction, and needs none: a settle applied before a failure is not applied again by the retry."""
        import redis

        calls = [self._finish_keys_and_args(reservation, whole_tokens(tokens, "actual tokens"), to_picodollars(cost),
                                            True) for reservation, tokens, cost in settles]
        finish = self._scripts["FINISH"]
        for _ in range(2):  # (by its digest: redis-py's own script pipeline asks the server for the script first)
            with self._client.pipeline(transaction=False) as pipe:
                for keys, args in calls:
                    pipe.evalsha(finish.sha, len(keys), *keys, *args)
                try:
                    return [bool(answer) for answer in pipe.execute()]
                except redis.exceptions.NoScriptError:  # a restarted Redis: not one of them ran
                    self._client.script_load(finish.script)
        raise ControlStateError(f"the control state on Redis {self.where} keeps losing its scripts")

    def settle_many_where_open(self, settles: list[tuple[Reservation | str, int, Decimal]]) -> list[bool]:
        """`settle_many` (the settler's background path; a file backend declines a file replaced meanwhile)."""
        return self.settle_many(settles)

    @_reachable
    def settled(self, reservation_id: str) -> bool:
        """Whether a shared reservation (one made with details) was settled in the last day."""
        return bool(self._client.exists(f"{PREFIX}settled:{reservation_id}"))

    @_reachable
    def release(self, reservation: Reservation | str) -> bool:
        return self._finish(reservation, 0, 0, False)

    @_reachable
    def release_stale(self, older_than_seconds: float | None = None) -> int:
        """Release reservations past their TTL (and any older than the given age); return how many."""
        return int(self._scripts["SWEEP"](keys=[f"{PREFIX}inflight"], args=[
            PREFIX, "" if older_than_seconds is None else int(older_than_seconds)]))

    @_reachable
    def maintain(self, today: dt.date, *, reservation_ttl_seconds: float | None) -> int:
        """Release expired reservations (old keys expire by themselves), and notice a Redis that lost its data:
        its new generation makes the trackers rebuild."""
        self._generation_seen = self._load_generation()
        return self.release_stale()

    @_reachable
    def reservation_details(self, reservation_id: str) -> dict | None:
        details = self._client.hget(f"{PREFIX}r:{reservation_id}", "details")
        return None if details is None else json.loads(details or "{}")

    # -- figures -----------------------------------------------------------------------------

    @_reachable
    def counter_spend(self, counter: Counter) -> Spend:
        found = self._client.hmget(counter_key(counter), "lt", "lc", "tt", "tc", "et", "ec", "ft", "fc")
        return _spend([x or 0 for x in found])

    def user_spend(self, day: dt.date | str, user_id: str) -> tuple[int, Decimal]:
        spend = self.counter_spend(Counter(day_key(day), "user", user_id))
        return spend.tokens, from_picodollars(spend.cost_pico)

    def system_spend(self, day: dt.date | str) -> Decimal:
        return from_picodollars(self.counter_spend(Counter(day_key(day), "system", "")).cost_pico)

    @_reachable
    def in_flight(self, day: dt.date | str | None = None) -> int:
        return int(self._client.zcard(f"{PREFIX}inflight"))

    def _set(self, entries: list[tuple[str, list]]) -> None:
        if not entries:
            return
        args = [PREFIX, COUNTER_TTL_SECONDS]
        for _, values in entries:
            args += values
        self._scripts["SET_FIGURES"](keys=[key for key, _ in entries], args=args)
        self._gates.changed()  # (it also told every process: the system's spend may have reached the shutdown level)

    @_reachable
    def set_store_spend(self, day: dt.date | str, rows: Iterable[tuple[str, int, Decimal, int, Decimal]]) -> None:
        """Keep the store's figures of the day per user and for the system: (user, tracker tokens, tracker cost,
        other tokens, other cost)."""
        self._store_figures(day_key(day), "user", rows, system=True)

    @_reachable
    def set_store_scope_spend(self, period: str, scope: str, rows) -> None:
        self._store_figures(period, scope, rows, system=False)

    def _store_figures(self, period: str, scope: str, rows, system: bool) -> None:
        entries, totals = [], [0, 0, 0, 0]
        for name, tt, tc, et, ec in rows:
            figures = [whole_tokens(tt, "tokens"), to_picodollars(tc), whole_tokens(et, "tokens"), to_picodollars(ec)]
            totals = [a + b for a, b in zip(totals, figures)]
            entries.append((counter_key(Counter(period, scope, name)), ["s", *figures]))
        if system:
            entries.append((counter_key(Counter(period, "system", "")), ["s", *totals]))
        self._set(entries)

    @_reachable
    def needs_rebuild(self, day: dt.date | str) -> bool:
        return not self._client.exists(f"{PREFIX}rebuilt:{day_key(day)}:{self.generation}")

    @_reachable
    def rebuild(self, day: dt.date | str, rows: Iterable[tuple[str, int, Decimal]], *, only_if_needed: bool = False
                ) -> bool:
        """Raise the day's live spend per user (and the system's) to at least the rows of tracker calls read from
        the store and journals; never lowered, since other hosts' calls may be missing from this host's files."""
        key = day_key(day)
        marker = f"{PREFIX}rebuilt:{key}:{self.generation}"
        if not self._client.set(marker, now_iso(), nx=True, ex=3 * 86400) and only_if_needed:
            return False
        self._raise_live(key, "user", rows, system=True)
        return True

    @_reachable
    def rebuild_scope(self, period: str, scope: str, rows: Iterable[tuple[str, int, Decimal]]) -> None:
        self._raise_live(period, scope, rows, system=False)

    def _raise_live(self, period: str, scope: str, rows, system: bool) -> None:
        totals = summed_by_name(rows)
        entries = [(counter_key(Counter(period, scope, name)), ["l", t, c]) for name, (t, c) in totals.items()]
        if system:
            entries.append((counter_key(Counter(period, "system", "")),
                            ["l", sum(t for t, _ in totals.values()), sum(c for _, c in totals.values())]))
        self._set(entries)

    def prune(self, before_day: dt.date | str) -> None:
        """Nothing to do: every key expires by itself."""
