"""Live control state shared by every process on the host: kill switches, halts, today's spend.

It lives in its own SQLite file (`settings.control_db`, WAL mode) rather than the DuckDB store, because
DuckDB lets one process write at a time and a writer blocks readers elsewhere, while every tracked
call must read this state and most must write it. Each check is a plain query, so a kill switch or halt
set by any process is seen by the next call everywhere.

Budgets are enforced by reservation: `reserve` reads a user's spend plus in-flight estimates for the day
and records the call's estimate in one `BEGIN IMMEDIATE` transaction, so concurrent calls (threads or
processes) are serialized and cannot all slip under a limit; `settle` swaps the estimate for the actual
figures. Recorded spend can therefore exceed a hard limit only by the estimation error of calls in flight.

A day's spend is one rule (`_USER_SPEND`, `_SYSTEM_SPEND`): per user, the larger of what trackers settled
live and what the store holds of tracker calls (events with an attempt_id), plus the store's other events
(inbox files, exports: kept here by `set_store_spend`), plus the estimates in flight. A tracker event is in
both the live and the stored figure, so taking the larger never counts it twice.

Money is stored as INTEGER picodollars (1e-12 USD), the precision of recorded costs, so sums are exact;
SQLite's 64-bit integers hold up to about $9.2 million per row.

Size: kill switches and halts, one spend row per user per day for today and yesterday (`prune`), one row
per call in flight, and released-as-stale rows until their day is pruned: it grows with users and
concurrency, not with the number of calls. The write-ahead log is truncated to `WAL_SIZE_LIMIT_BYTES`.

The file's identity (device, inode) is checked before each operation: a deleted or replaced file is
noticed and the file now at the path is used. A new file gets the kill switches and halts back from the
audit log (`llmcost.control.audit`); a corrupt one is moved aside with an ERROR and an audit entry, which
`llmcost check` turns into an alert; spend is refilled by `rebuild` from the store and journals.
Every failure is a `ControlStateError`.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import sqlite3
import time
import uuid
from collections.abc import Iterable
from dataclasses import replace
from decimal import Decimal
from pathlib import Path

from llmcost.control import audit as control_audit
from llmcost.control import sqlite_admission
from llmcost.control.file import (  # noqa: F401  (re-exported)
    BUSY_TIMEOUT_SECONDS,
    DISABLE,
    ENABLE,
    HALT,
    RESUME,
    WAL_SIZE_LIMIT_BYTES,
    ControlFile,
    _identity,
    day_key,
    guarded,
    now_iso,
)
from llmcost.control.interface import (
    AdmissionRequest,
    Admitted,
    Counter,
    Reservation,
    ScopeLimit,
    Spend,
    summed_by_name,
    whole_tokens,
)
from llmcost.control.policy import halt_reason, refusal
from llmcost.control.processes import host_and_namespace, is_running, process_started
from llmcost.money import from_picodollars, to_picodollars

# Per user: max(settled live, stored tracker events) + stored other events + live estimates in flight.
_USER_SPEND = """
SELECT
    max(COALESCE(s.tokens, 0), COALESCE(st.tracked_tokens, 0)) + COALESCE(st.external_tokens, 0) + r.tokens,
    max(COALESCE(s.cost_pico, 0), COALESCE(st.tracked_cost_pico, 0)) + COALESCE(st.external_cost_pico, 0) + r.cost_pico
FROM (SELECT COALESCE(SUM(tokens), 0) AS tokens, COALESCE(SUM(cost_pico), 0) AS cost_pico FROM reservation
      WHERE day = :day AND user_id = :user AND released_at IS NULL) r
LEFT JOIN spend s ON s.day = :day AND s.user_id = :user
LEFT JOIN store_spend st ON st.day = :day AND st.user_id = :user
"""
_SYSTEM_SPEND = """
SELECT COALESCE((SELECT cost_pico FROM day_total WHERE day = :day), 0)
     + COALESCE((SELECT SUM(cost_pico) FROM reservation WHERE day = :day AND released_at IS NULL), 0)
"""
# day_total from scratch: the same rule as _USER_SPEND, summed over the day's users (without estimates in flight).
_DAY_TOTAL = """
INSERT INTO day_total (day, cost_pico)
SELECT :day, COALESCE(SUM(max(live, tracked) + external), 0) FROM (
    SELECT user_id, SUM(live) AS live, SUM(tracked) AS tracked, SUM(external) AS external FROM (
        SELECT user_id, cost_pico AS live, 0 AS tracked, 0 AS external FROM spend WHERE day = :day
        UNION ALL
        SELECT user_id, 0, tracked_cost_pico, external_cost_pico FROM store_spend WHERE day = :day
    ) GROUP BY user_id
) WHERE true  -- SQLite needs a WHERE before ON CONFLICT in INSERT ... SELECT
ON CONFLICT (day) DO UPDATE SET cost_pico = excluded.cost_pico
"""
# A settled call's effect on the day's total, read before its spend is added: per user the larger of live and
# stored tracker spend counts, so the total grows only by what the larger one grows.
_ADD_DAY_TOTAL = """
INSERT INTO day_total (day, cost_pico)
SELECT :day, max(live + :cost, tracked) - max(live, tracked) FROM (
    SELECT COALESCE((SELECT cost_pico FROM spend WHERE day = :day AND user_id = :user), 0) AS live,
           COALESCE((SELECT tracked_cost_pico FROM store_spend WHERE day = :day AND user_id = :user), 0) AS tracked)
WHERE max(live + :cost, tracked) > max(live, tracked)
ON CONFLICT (day) DO UPDATE SET cost_pico = cost_pico + excluded.cost_pico
"""
_ADD_SPEND = """
INSERT INTO spend (day, user_id, tokens, cost_pico) VALUES (?, ?, ?, ?)
ON CONFLICT (day, user_id) DO UPDATE SET tokens = tokens + excluded.tokens, cost_pico = cost_pico + excluded.cost_pico
"""

class ControlState(ControlFile):
    """The control file's state: open it once per process and share it between threads."""

    rebuild_interval_seconds = None  # one file per host: rebuilt when new, its store figures refreshed in upkeep

    def __init__(self, path: Path | str, *, busy_timeout: float | None = None, audit_path: Path | None = None,
                 lazy: bool = False):
        self._owner = host_and_namespace()
        self._started: tuple[int, str | None] | None = None  # (pid, its start time): read once per process
        super().__init__(path, busy_timeout=busy_timeout, audit_path=audit_path, lazy=lazy)

    def __enter__(self) -> ControlState:
        return self

    # -- kill switches -----------------------------------------------------------------------

    @guarded
    def disable(self, use_case: str, reason: str, by: str | None = None) -> None:
        """Switch a use case off for every process until `enable` (journaled in the audit log)."""
        if not use_case:
            raise ValueError("use_case must not be empty")
        reason, by = reason or "no reason given", by or control_audit.default_actor()
        with self._transaction() as conn:
            conn.execute(DISABLE, (use_case, reason, now_iso(), by))
            self._audit("disable", use_case=use_case, reason=reason, by=by)

    @guarded
    def enable(self, use_case: str, by: str | None = None, reason: str | None = None) -> bool:
        """Switch a use case back on; False when it was not disabled."""
        with self._transaction() as conn:
            changed = conn.execute(ENABLE, (use_case,)).rowcount > 0
            if changed:
                self._audit("enable", use_case=use_case, reason=reason, by=by)
        return changed

    @guarded
    def disabled(self) -> dict[str, dict]:
        """Every disabled use case with its reason, disabled_at and disabled_by."""
        rows = self._connection().execute(
            "SELECT use_case, reason, disabled_at, disabled_by FROM kill_switch ORDER BY use_case"
        ).fetchall()
        return {row[0]: {"reason": row[1], "disabled_at": row[2], "disabled_by": row[3]} for row in rows}

    @guarded
    def disabled_reason(self, use_case: str) -> str | None:
        row = self._connection().execute("SELECT reason FROM kill_switch WHERE use_case = ?", (use_case,)).fetchone()
        return row[0] if row else None

    # -- emergency shutdown ------------------------------------------------------------------

    @guarded
    def halt(self, day: dt.date | str, reason: str, by: str | None = None) -> None:
        """Refuse every call for the day until `resume` (also re-arms the automatic halt after a resume)."""
        key, reason = day_key(day), reason or "halted by an operator"
        with self._transaction() as conn:
            conn.execute(HALT, (key, reason, now_iso()))
            self._audit("halt", day=key, reason=reason, by=by)

    @guarded
    def resume(self, day: dt.date | str, by: str | None = None, reason: str | None = None) -> None:
        """Lift the day's halt entirely: the manual one, and the automatic one even as spend keeps growing."""
        key = day_key(day)
        with self._transaction() as conn:
            conn.execute(RESUME, (key, now_iso()))
            self._audit("resume", day=key, reason=reason, by=by)

    @guarded
    def halt_reason(self, day: dt.date | str, shutdown_usd: Decimal | None) -> str | None:
        """Why calls are refused for the day (a manual halt, or system spend at the shutdown level), else None."""
        key = day_key(day)
        row = self._connection().execute("SELECT reason, resumed_at FROM halt WHERE day = ?", (key,)).fetchone()
        reason, resumed_at = row if row is not None else (None, None)
        return halt_reason(key, reason, resumed_at is not None, shutdown_usd, lambda: self.system_spend(day))

    # -- spend and reservations --------------------------------------------------------------

    @guarded
    def admit(self, request: AdmissionRequest) -> Admitted:
        """Kill switch, halt, shutdown level, every limit of the request and the reservation: one transaction."""
        pid = os.getpid()
        if self._started is None or self._started[0] != pid:
            self._started = (pid, process_started(pid))
        reservation_id = request.reservation_id or uuid.uuid4().hex
        with self._transaction() as conn:
            admitted = sqlite_admission.admit(
                conn, request, reservation_id=reservation_id, pid=pid, owner=self._owner, started=self._started[1],
                user_spend_sql=_USER_SPEND, system_spend_sql=_SYSTEM_SPEND)
        if admitted.refused is not None:
            return admitted
        user = admitted.spent[0] if admitted.spent else Spend()
        return replace(admitted, reservation=Reservation(
            reservation_id, request.day, request.user_id, request.tokens, from_picodollars(request.cost_pico),
            user.tokens, from_picodollars(user.cost_pico), self._generation, request.counters))

    @guarded
    def judge(self, request: AdmissionRequest) -> Admitted:
        """What `admit` would decide on the figures as they are, reserving nothing (one read). Asked right after
        `open()`, which looked at the file at the path (`ASKED_RIGHT_AFTER_OPEN`)."""
        return sqlite_admission.judge(self._connection(), request, user_spend_sql=_USER_SPEND,
                                      system_spend_sql=_SYSTEM_SPEND)

    @guarded
    def data_version(self) -> tuple[int, bytes | int]:
        """Changes whenever any connection committed to the file (an operator's switch, another process's admission):
        (this thread's connection, its `wal_index_header`, else SQLite's `PRAGMA data_version`). No table is read, no
        statement run; asked right after `open()`, which looked at the file at the path (`ASKED_RIGHT_AFTER_OPEN`)."""
        conn = self._connection()
        header = self.wal_index_header(conn)
        return self._local.serial, conn.execute("PRAGMA data_version").fetchone()[0] if header is None else header

    def reserve(self, day: dt.date | str, user_id: str, tenant_id: str, use_case: str, tokens: int, cost: Decimal, *,
                limit_tokens: int | None, limit_cost: Decimal | None, enforce: bool,
                account_type: str | None = None) -> Reservation:
        """Hold a call's estimate against the user's day alone (no shutdown level or other scope); with
        `enforce`, raise BudgetExceededError past a limit and record nothing."""
        day = dt.date.fromisoformat(day_key(day))
        user = Counter(day.isoformat(), "user", user_id)
        limit = ScopeLimit(user, limit_tokens, to_picodollars(limit_cost) if limit_cost is not None else None,
                           "hard" if enforce else "soft")
        request = AdmissionRequest(day=day, user_id=user_id, tenant_id=tenant_id, use_case=use_case,
                                   account_type=account_type or "", tokens=whole_tokens(tokens, "estimated tokens"),
                                   cost_pico=to_picodollars(cost), shutdown_pico=None, limits=(limit,),
                                   counters=(user,), ttl_seconds=0)
        admitted = self.admit(request)
        if admitted.refused is not None:
            raise refusal(request, admitted)
        return admitted.reservation

    @guarded
    def settle(self, reservation: Reservation | str, actual_tokens: int, actual_cost: Decimal) -> bool:
        """Replace a reservation's estimate with the actual figures; False when it was already settled or released.

        A reservation released as stale is still settled (its call did end). Given the Reservation itself
        (not only its id), the actuals are recorded once even when it was made in a control file that has
        since been deleted or replaced.
        """
        with self._transaction() as conn:
            return self._settle_in(conn, reservation, actual_tokens, actual_cost)

    @guarded
    def settle_many(self, settles: list[tuple[Reservation | str, int, Decimal]]) -> list[bool]:
        """`settle` of each (reservation, actual tokens, actual cost) in one transaction (one commit for a batch)."""
        return self._settle_all(settles)

    @guarded
    def settle_many_where_open(self, settles: list[tuple[Reservation | str, int, Decimal]]) -> list[bool] | None:
        """`settle_many` on the file open now, else None (`NEVER_OPENS`): a background settle never opens, nor creates,
        a file deleted or replaced meanwhile. The next call opens the new one and rebuilds it from the journals,
        these settles included (and those that went into a file deleted after this looked)."""
        if self._file is None or _identity(self.path) != self._file:
            return None
        try:
            return self._settle_all(settles)
        except sqlite3.OperationalError:
            if _identity(self.path) != self._file:  # gone meanwhile: this thread had no connection to it yet
                return None
            raise

    def _settle_all(self, settles: list[tuple[Reservation | str, int, Decimal]]) -> list[bool]:
        with self._transaction() as conn:
            return [self._settle_in(conn, *item) for item in settles]

    def _settle_in(self, conn, reservation: Reservation | str, actual_tokens: int, actual_cost: Decimal) -> bool:
        reservation_id = reservation.id if isinstance(reservation, Reservation) else reservation
        tokens = whole_tokens(actual_tokens, "actual tokens")
        cost_pico = to_picodollars(actual_cost)
        # `details` itself, judged here: SQLite 3.40 answers `RETURNING details IS NOT NULL` with 1 for a NULL
        # on a WITHOUT ROWID table, which remembered every settle as a shared one.
        row = conn.execute("DELETE FROM reservation WHERE id = ? RETURNING day, user_id, details",
                           (reservation_id,)).fetchone()
        counters = reservation.counters if isinstance(reservation, Reservation) else None
        if row is not None and row[2] is not None:  # shared (a collector's): remembered, so a retry hears it was
            conn.execute("INSERT INTO finished_reservation (id, day) VALUES (?, ?) ON CONFLICT (id) DO NOTHING",
                         (reservation_id, row[0]))
        if row is None:
            if not isinstance(reservation, Reservation) or reservation.generation == self._generation:
                return False  # settled or released in this file already
            row = (reservation.day.isoformat(), reservation.user_id)
            # Made in an earlier file: remember it was settled here, so a second settle is refused.
            if not conn.execute("INSERT INTO finished_reservation (id, day) VALUES (?, ?) ON CONFLICT (id) DO NOTHING",
                                (reservation_id, row[0])).rowcount:
                return False
        _add_spend(conn, row[0], row[1], tokens, cost_pico)
        sqlite_admission.settle_scopes(conn, reservation_id, tokens, cost_pico, counters)
        return True

    @guarded
    def settled(self, reservation_id: str) -> bool:
        """Whether a shared reservation (one made with details) was settled here today or yesterday."""
        return self._connection().execute("SELECT 1 FROM finished_reservation WHERE id = ?",
                                          (reservation_id,)).fetchone() is not None

    @guarded
    def release(self, reservation: Reservation | str) -> bool:
        """Drop a reservation without spend (the call never happened); False when already settled or released."""
        reservation_id = reservation.id if isinstance(reservation, Reservation) else reservation
        with self._transaction() as conn:
            conn.execute("DELETE FROM reservation_scope WHERE reservation_id = ?", (reservation_id,))
            return conn.execute("DELETE FROM reservation WHERE id = ? AND released_at IS NULL",
                                (reservation_id,)).rowcount > 0

    @guarded
    def release_stale(self, older_than_seconds: float | None = None) -> int:
        """Release reservations of processes that have exited, and any older than the given age; return how many.

        A pid is checked only on the host and pid namespace that made the reservation (elsewhere the age
        alone decides), and a pid reused by a newer process counts as exited. Released reservations stop
        counting; a call that does end later still settles its actual figures.
        """
        now = time.time()
        cutoff = now - older_than_seconds if older_than_seconds is not None else None
        rows = self._connection().execute(
            "SELECT id, pid, created_at, owner, pid_started FROM reservation WHERE released_at IS NULL").fetchall()
        stale = [rid for rid, pid, created_at, owner, started in rows
                 if (cutoff is not None and created_at < cutoff)
                 or (owner in (self._owner, "") and not is_running(pid, started))]
        if not stale:
            return 0
        with self._transaction() as conn:
            return sum(conn.execute("UPDATE reservation SET released_at = ? WHERE id = ? AND released_at IS NULL",
                                    (now, rid)).rowcount for rid in stale)

    @guarded
    def maintain(self, today: dt.date, *, reservation_ttl_seconds: float | None) -> int:
        """Release stale reservations and forget days before yesterday; return how many reservations were released."""
        released = self.release_stale(reservation_ttl_seconds)
        self.prune(today - dt.timedelta(days=1))
        return released

    @guarded
    def user_spend(self, day: dt.date | str, user_id: str) -> tuple[int, Decimal]:
        """The user's tokens and cost for the day: tracker calls (settled and in flight) and other stored events."""
        tokens, pico = self._connection().execute(_USER_SPEND, {"day": day_key(day), "user": user_id}).fetchone()
        return tokens, from_picodollars(pico)

    @guarded
    def system_spend(self, day: dt.date | str) -> Decimal:
        """Everyone's cost for the day, by the same rule as `user_spend`."""
        (pico,) = self._connection().execute(_SYSTEM_SPEND, {"day": day_key(day)}).fetchone()
        return from_picodollars(pico)

    @guarded
    def in_flight(self, day: dt.date | str | None = None) -> int:
        """How many reservations are open (for the day, when given)."""
        sql = "SELECT COUNT(*) FROM reservation WHERE released_at IS NULL"
        if day is None:
            return self._connection().execute(sql).fetchone()[0]
        return self._connection().execute(sql + " AND day = ?", (day_key(day),)).fetchone()[0]

    @guarded
    def set_store_spend(self, day: dt.date | str, rows: Iterable[tuple[str, int, Decimal, int, Decimal]]) -> None:
        """Keep the store's figures of the day: (user_id, tracker tokens, tracker cost, other tokens, other cost)."""
        key = day_key(day)
        values = [(key, user, whole_tokens(tt, "tokens"), to_picodollars(tc), whole_tokens(et, "tokens"), to_picodollars(ec))
                  for user, tt, tc, et, ec in rows]
        with self._transaction() as conn:
            conn.execute("DELETE FROM store_spend WHERE day = ?", (key,))
            conn.executemany("INSERT INTO store_spend VALUES (?, ?, ?, ?, ?, ?)", values)
            conn.execute(_DAY_TOTAL, {"day": key})

    @guarded
    def counter_spend(self, counter: Counter) -> Spend:
        """One counter's tokens and picodollars by the one rule (settled, stored and in flight)."""
        return sqlite_admission.counter_spend(self._connection(), counter, _USER_SPEND, _SYSTEM_SPEND)

    @guarded
    def set_store_scope_spend(self, period: str, scope: str, rows: Iterable[tuple[str, int, Decimal, int, Decimal]]
                              ) -> None:
        """Keep the store's figures of a scope's period: (name, tracker tokens, tracker cost, other tokens, other cost)."""
        values = [(name, whole_tokens(tt, "tokens"), to_picodollars(tc), whole_tokens(et, "tokens"), to_picodollars(ec))
                  for name, tt, tc, et, ec in rows]
        with self._transaction() as conn:
            sqlite_admission.set_store_scope_spend(conn, period, scope, values)

    @guarded
    def rebuild_scope(self, period: str, scope: str, rows: Iterable[tuple[str, int, Decimal]]) -> None:
        """Replace a scope's settled spend of a period with (name, tokens, cost) rows of tracker calls."""
        with self._transaction() as conn:
            sqlite_admission.rebuild_scope(conn, period, scope, summed_by_name(rows))

    @guarded
    def reservation_details(self, reservation_id: str) -> dict | None:
        """What a reservation's admission recorded for its settle (None when it is not open)."""
        row = self._connection().execute("SELECT details FROM reservation WHERE id = ?", (reservation_id,)).fetchone()
        return None if row is None else json.loads(row[0] or "{}")

    # -- recovery ----------------------------------------------------------------------------

    @guarded
    def needs_rebuild(self, day: dt.date | str) -> bool:
        """True until `rebuild` has filled this day's spend in this file (a new or recreated file needs it)."""
        row = self._connection().execute("SELECT 1 FROM rebuilt_day WHERE day = ?", (day_key(day),)).fetchone()
        return row is None

    @guarded
    def rebuild(
        self, day: dt.date | str, rows: Iterable[tuple[str, int, Decimal]], *, only_if_needed: bool = False
    ) -> bool:
        """Replace the day's settled spend with (user_id, tokens, cost) rows of tracker calls read from the store
        and journals.

        Rows for the same user are summed. With `only_if_needed`, do nothing (and return False) when another
        process rebuilt the day first, so a settle recorded after that rebuild is never overwritten.
        In-flight reservations are kept.
        """
        key = day_key(day)
        totals = summed_by_name(rows)
        with self._transaction() as conn:
            if only_if_needed and conn.execute("SELECT 1 FROM rebuilt_day WHERE day = ?", (key,)).fetchone():
                return False
            conn.execute("DELETE FROM spend WHERE day = ?", (key,))
            conn.executemany(_ADD_SPEND, [(key, user, tokens, pico) for user, (tokens, pico) in totals.items()])
            conn.execute(_DAY_TOTAL, {"day": key})
            conn.execute("INSERT INTO rebuilt_day (day, rebuilt_at) VALUES (?, ?) "
                         "ON CONFLICT (day) DO UPDATE SET rebuilt_at = excluded.rebuilt_at", (key, now_iso()))
        return True

    @guarded
    def prune(self, before_day: dt.date | str) -> None:
        """Forget spend, reservations and bookkeeping of days before the given one."""
        key = day_key(before_day)
        with self._transaction() as conn:
            for table in ("spend", "store_spend", "day_total", "reservation", "finished_reservation", "rebuilt_day",
                          "halt"):
                conn.execute(f"DELETE FROM {table} WHERE day < ?", (key,))  # table names are constants
            sqlite_admission.prune_scopes(conn, key)


def _add_spend(conn, day: str, user_id: str, tokens: int, cost_pico: int) -> None:
    """Add a settled call to the user's live spend, and its effect on the day's total (`_ADD_DAY_TOTAL`)."""
    conn.execute(_ADD_DAY_TOTAL, {"day": day, "user": user_id, "cost": cost_pico})
    conn.execute(_ADD_SPEND, (day, user_id, tokens, cost_pico))



