"""Live control state shared by every process on the host: kill switches, halts, today's spend.

It lives in its own SQLite file (`settings.control_db`, WAL mode) rather than the DuckDB store, because
DuckDB lets one process write at a time and a writer blocks readers elsewhere, while every tracked
call must read this state and most must write it. Each check is a plain query, so a kill switch or halt
set by any process is seen by the next call everywhere.

Budgets are enforced by reservation: `reserve` reads a user's settled plus in-flight spend for the day
and records the call's estimate in one `BEGIN IMMEDIATE` transaction, so concurrent calls (threads or
processes) are serialized and cannot all slip under a limit; `settle` swaps the estimate for the actual
figures. Recorded spend can therefore exceed a hard limit only by the estimation error of calls in flight.

Money is stored as INTEGER picodollars (1e-12 USD), the precision of recorded costs, so sums are exact;
SQLite's 64-bit integers hold up to about $9.2 million per row.

If the file is lost or corrupt it is recreated empty; the tracker refills a day with `rebuild` from the
store and journals (`needs_rebuild` says when). Kill switches and manual halts are not in the journals
and are lost with the file.
"""

from __future__ import annotations

import datetime as dt
import os
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from decimal import ROUND_CEILING, Decimal
from pathlib import Path

from .errors import BudgetExceededError

BUSY_TIMEOUT_SECONDS = 10.0
_PICO_EXPONENT = 12
_TWELVE_PLACES = Decimal(1).scaleb(-_PICO_EXPONENT)
_CORRUPT_MARKERS = ("not a database", "malformed")

SCHEMA = """
CREATE TABLE IF NOT EXISTS kill_switch (
    use_case TEXT PRIMARY KEY,
    reason TEXT NOT NULL,
    disabled_at TEXT NOT NULL,
    disabled_by TEXT
);
CREATE TABLE IF NOT EXISTS halt (
    day TEXT PRIMARY KEY,
    reason TEXT,
    halted_at TEXT,
    resumed_at TEXT
);
CREATE TABLE IF NOT EXISTS spend (
    day TEXT NOT NULL,
    user_id TEXT NOT NULL,
    tokens INTEGER NOT NULL,
    cost_pico INTEGER NOT NULL,
    PRIMARY KEY (day, user_id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS reservation (
    id TEXT PRIMARY KEY,
    day TEXT NOT NULL,
    user_id TEXT NOT NULL,
    tenant_id TEXT NOT NULL,
    use_case TEXT NOT NULL,
    tokens INTEGER NOT NULL,
    cost_pico INTEGER NOT NULL,
    created_at REAL NOT NULL,
    pid INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS reservation_by_day_user ON reservation (day, user_id);
CREATE TABLE IF NOT EXISTS finished_reservation (
    id TEXT PRIMARY KEY,
    day TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS rebuilt_day (
    day TEXT PRIMARY KEY,
    rebuilt_at TEXT NOT NULL
);
"""

_USER_SPEND = """
SELECT
    COALESCE((SELECT tokens FROM spend WHERE day = :day AND user_id = :user), 0)
      + COALESCE((SELECT SUM(tokens) FROM reservation WHERE day = :day AND user_id = :user), 0),
    COALESCE((SELECT cost_pico FROM spend WHERE day = :day AND user_id = :user), 0)
      + COALESCE((SELECT SUM(cost_pico) FROM reservation WHERE day = :day AND user_id = :user), 0)
"""
_SYSTEM_SPEND = """
SELECT COALESCE((SELECT SUM(cost_pico) FROM spend WHERE day = :day), 0)
     + COALESCE((SELECT SUM(cost_pico) FROM reservation WHERE day = :day), 0)
"""
_ADD_SPEND = """
INSERT INTO spend (day, user_id, tokens, cost_pico) VALUES (?, ?, ?, ?)
ON CONFLICT (day, user_id) DO UPDATE SET tokens = tokens + excluded.tokens, cost_pico = cost_pico + excluded.cost_pico
"""


def to_picodollars(amount: Decimal | int) -> int:
    """USD as whole picodollars; amounts finer than a picodollar (only estimates) round up, never down."""
    if isinstance(amount, bool) or not isinstance(amount, (Decimal, int)):
        raise TypeError(f"money must be a Decimal, not {type(amount).__name__} (use Decimal('0.05'), not 0.05)")
    amount = Decimal(amount)
    if not amount.is_finite() or amount < 0:
        raise ValueError(f"money must be a finite amount >= 0, got {amount}")
    return int(amount.scaleb(_PICO_EXPONENT).to_integral_value(rounding=ROUND_CEILING))


def from_picodollars(picodollars: int) -> Decimal:
    """Whole picodollars as USD with 12 decimal places (the store's DECIMAL(18, 12))."""
    return Decimal(picodollars).scaleb(-_PICO_EXPONENT).quantize(_TWELVE_PLACES)


def _day_key(day: dt.date | str) -> str:
    if isinstance(day, dt.datetime):
        raise TypeError("day must be a date, not a datetime (convert it in the configured time zone first)")
    if isinstance(day, dt.date):
        return day.isoformat()
    return dt.date.fromisoformat(day).isoformat()


def _tokens(value: int, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{name} must be a whole number >= 0, got {value!r}")
    return value


def _now_iso() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="milliseconds")


def format_usd(amount: Decimal) -> str:
    """Dollars for messages: cents when that is exact enough, otherwise up to 12 places."""
    cents = amount.quantize(Decimal("0.01"))
    if cents == amount or amount >= 1:
        return f"${cents:,}"
    return "$" + format(amount.normalize(), "f")


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@dataclass(frozen=True)
class Reservation:
    """A call's estimate held against a user's day until `settle` or `release`.

    `spent_*_before` are the user's settled plus in-flight figures for the day before this reservation.
    """

    id: str
    day: dt.date
    user_id: str
    tokens: int
    cost: Decimal
    spent_tokens_before: int
    spent_cost_before: Decimal


class ControlState:
    """The control file: open it once per process and share it between threads."""

    def __init__(self, path: Path | str):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        self._connections: list[sqlite3.Connection] = []
        self._connections_lock = threading.Lock()
        self.recreated = False
        try:
            self._create_schema()
        except sqlite3.DatabaseError as e:
            if not any(marker in str(e).lower() for marker in _CORRUPT_MARKERS):
                raise
            self._set_aside_corrupt_file()
            self._create_schema()

    # -- connections -------------------------------------------------------------------------

    def _connection(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is not None and self._local.pid == os.getpid():
            return conn
        # isolation_level=None: we issue BEGIN IMMEDIATE ourselves so the read and the write are one lock.
        conn = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_SECONDS, isolation_level=None, check_same_thread=False)
        conn.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_SECONDS * 1000)}")
        # NORMAL in WAL survives a process crash; a power cut may drop the last commits, which `rebuild` restores.
        conn.execute("PRAGMA synchronous = NORMAL")
        self._local.conn = conn
        self._local.pid = os.getpid()
        with self._connections_lock:
            self._connections.append(conn)
        return conn

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        conn = self._connection()
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    def _create_schema(self) -> None:
        conn = self._connection()
        if conn.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
            conn.execute("PRAGMA journal_mode = WAL")
        with self._transaction() as conn:
            for statement in SCHEMA.split(";"):
                if statement.strip():
                    conn.execute(statement)

    def _set_aside_corrupt_file(self) -> None:
        self.close()
        stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%S")
        for suffix in ("", "-wal", "-shm"):
            source = Path(f"{self.path}{suffix}")
            if source.exists():
                source.rename(Path(f"{self.path}.corrupt-{stamp}{suffix}"))
        self.recreated = True

    def close(self) -> None:
        """Close every connection this object opened (in any thread)."""
        with self._connections_lock:
            connections, self._connections = self._connections, []
        for conn in connections:
            conn.close()
        self._local = threading.local()

    def __enter__(self) -> ControlState:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    # -- kill switches -----------------------------------------------------------------------

    def disable(self, use_case: str, reason: str, by: str | None = None) -> None:
        """Switch a use case off for every process until `enable`."""
        if not use_case:
            raise ValueError("use_case must not be empty")
        self._connection().execute(
            "INSERT INTO kill_switch (use_case, reason, disabled_at, disabled_by) VALUES (?, ?, ?, ?) "
            "ON CONFLICT (use_case) DO UPDATE SET reason = excluded.reason, "
            "disabled_at = excluded.disabled_at, disabled_by = excluded.disabled_by",
            (use_case, reason or "no reason given", _now_iso(), by),
        )

    def enable(self, use_case: str) -> bool:
        """Switch a use case back on; False when it was not disabled."""
        return self._connection().execute("DELETE FROM kill_switch WHERE use_case = ?", (use_case,)).rowcount > 0

    def disabled(self) -> dict[str, dict]:
        """Every disabled use case with its reason, disabled_at and disabled_by."""
        rows = self._connection().execute(
            "SELECT use_case, reason, disabled_at, disabled_by FROM kill_switch ORDER BY use_case"
        ).fetchall()
        return {row[0]: {"reason": row[1], "disabled_at": row[2], "disabled_by": row[3]} for row in rows}

    def disabled_reason(self, use_case: str) -> str | None:
        row = self._connection().execute("SELECT reason FROM kill_switch WHERE use_case = ?", (use_case,)).fetchone()
        return row[0] if row else None

    # -- emergency shutdown ------------------------------------------------------------------

    def halt(self, day: dt.date | str, reason: str) -> None:
        """Refuse every call for the day until `resume` (also re-arms the automatic halt after a resume)."""
        self._connection().execute(
            "INSERT INTO halt (day, reason, halted_at, resumed_at) VALUES (?, ?, ?, NULL) "
            "ON CONFLICT (day) DO UPDATE SET reason = excluded.reason, halted_at = excluded.halted_at, resumed_at = NULL",
            (_day_key(day), reason or "halted by an operator", _now_iso()),
        )

    def resume(self, day: dt.date | str) -> None:
        """Lift the day's halt entirely: the manual one, and the automatic one even as spend keeps growing."""
        self._connection().execute(
            "INSERT INTO halt (day, reason, halted_at, resumed_at) VALUES (?, NULL, NULL, ?) "
            "ON CONFLICT (day) DO UPDATE SET resumed_at = excluded.resumed_at",
            (_day_key(day), _now_iso()),
        )

    def halt_reason(self, day: dt.date | str, shutdown_usd: Decimal | None) -> str | None:
        """Why calls are refused for the day (a manual halt, or system spend at the shutdown level), else None."""
        key = _day_key(day)
        row = self._connection().execute("SELECT reason, resumed_at FROM halt WHERE day = ?", (key,)).fetchone()
        if row is not None:
            reason, resumed_at = row
            if resumed_at is not None:
                return None
            if reason is not None:
                return reason
        if shutdown_usd is None:
            return None
        spent = self.system_spend(day)
        if spent >= shutdown_usd:
            return (f"system-wide spend on {key} is {format_usd(spent)}, "
                    f"at or above the emergency shutdown level of {format_usd(shutdown_usd)}")
        return None

    # -- spend and reservations --------------------------------------------------------------

    def reserve(
        self,
        day: dt.date | str,
        user_id: str,
        tenant_id: str,
        use_case: str,
        tokens: int,
        cost: Decimal,
        *,
        limit_tokens: int | None,
        limit_cost: Decimal | None,
        enforce: bool,
        account_type: str | None = None,
    ) -> Reservation:
        """Hold a call's estimate against the user's day; with `enforce`, refuse it past a limit.

        Raises BudgetExceededError when `enforce` is set and settled + in-flight + this estimate would
        exceed `limit_tokens` or `limit_cost`; nothing is recorded then.
        """
        key = _day_key(day)
        tokens = _tokens(tokens, "estimated tokens")
        cost_pico = to_picodollars(cost)
        reservation_id = uuid.uuid4().hex
        with self._transaction() as conn:
            spent_tokens, spent_pico = conn.execute(_USER_SPEND, {"day": key, "user": user_id}).fetchone()
            if enforce:
                over = []
                if limit_tokens is not None and spent_tokens + tokens > limit_tokens:
                    over.append(f"{limit_tokens:,} tokens limit, {spent_tokens:,} used today, this call needs ~{tokens:,}")
                if limit_cost is not None and spent_pico + cost_pico > to_picodollars(limit_cost):
                    over.append(f"{format_usd(limit_cost)} limit, {format_usd(from_picodollars(spent_pico))} spent today, "
                                f"this call needs ~{format_usd(from_picodollars(cost_pico))}")
                if over:
                    raise BudgetExceededError(_budget_message(key, user_id, account_type, over))
            conn.execute(
                "INSERT INTO reservation (id, day, user_id, tenant_id, use_case, tokens, cost_pico, created_at, pid) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (reservation_id, key, user_id, tenant_id, use_case, tokens, cost_pico, time.time(), os.getpid()),
            )
        return Reservation(
            reservation_id, dt.date.fromisoformat(key), user_id, tokens, from_picodollars(cost_pico),
            spent_tokens, from_picodollars(spent_pico),
        )

    def settle(self, reservation: Reservation | str, actual_tokens: int, actual_cost: Decimal) -> bool:
        """Replace a reservation's estimate with the actual figures; False when it was already settled or released.

        Given the Reservation itself (not only its id), the actuals are recorded even if the reservation
        row was lost with a recreated control file.
        """
        reservation_id = reservation.id if isinstance(reservation, Reservation) else reservation
        tokens = _tokens(actual_tokens, "actual tokens")
        cost_pico = to_picodollars(actual_cost)
        with self._transaction() as conn:
            if isinstance(reservation, Reservation):  # it names its day and user: no need to look them up
                row = (reservation.day.isoformat(), reservation.user_id)
            else:
                row = conn.execute("SELECT day, user_id FROM reservation WHERE id = ?", (reservation_id,)).fetchone()
                if row is None:
                    return False
            finished = conn.execute(
                "INSERT INTO finished_reservation (id, day) VALUES (?, ?) ON CONFLICT (id) DO NOTHING", (reservation_id, row[0])
            ).rowcount
            if not finished:
                return False
            conn.execute("DELETE FROM reservation WHERE id = ?", (reservation_id,))
            conn.execute(_ADD_SPEND, (row[0], row[1], tokens, cost_pico))
        return True

    def release(self, reservation: Reservation | str) -> bool:
        """Drop a reservation without spend (the call never happened); False when already settled or released."""
        reservation_id = reservation.id if isinstance(reservation, Reservation) else reservation
        with self._transaction() as conn:
            row = conn.execute("SELECT day FROM reservation WHERE id = ?", (reservation_id,)).fetchone()
            if row is None:
                return False
            conn.execute("DELETE FROM reservation WHERE id = ?", (reservation_id,))
            conn.execute("INSERT INTO finished_reservation (id, day) VALUES (?, ?) ON CONFLICT (id) DO NOTHING",
                         (reservation_id, row[0]))
        return True

    def release_stale(self, older_than_seconds: float | None = None) -> int:
        """Release reservations of processes that have exited, and any older than the given age; return how many."""
        conn = self._connection()
        rows = conn.execute("SELECT id, pid, created_at FROM reservation").fetchall()
        cutoff = time.time() - older_than_seconds if older_than_seconds is not None else None
        stale = [rid for rid, pid, created_at in rows
                 if not _process_alive(pid) or (cutoff is not None and created_at < cutoff)]
        return sum(self.release(rid) for rid in stale)

    def user_spend(self, day: dt.date | str, user_id: str) -> tuple[int, Decimal]:
        """The user's tokens and cost for the day, settled plus in flight."""
        tokens, pico = self._connection().execute(_USER_SPEND, {"day": _day_key(day), "user": user_id}).fetchone()
        return tokens, from_picodollars(pico)

    def system_spend(self, day: dt.date | str) -> Decimal:
        """Everyone's cost for the day, settled plus in flight."""
        (pico,) = self._connection().execute(_SYSTEM_SPEND, {"day": _day_key(day)}).fetchone()
        return from_picodollars(pico)

    def in_flight(self, day: dt.date | str | None = None) -> int:
        """How many reservations are open (for the day, when given)."""
        if day is None:
            return self._connection().execute("SELECT COUNT(*) FROM reservation").fetchone()[0]
        return self._connection().execute("SELECT COUNT(*) FROM reservation WHERE day = ?", (_day_key(day),)).fetchone()[0]

    # -- recovery ----------------------------------------------------------------------------

    def needs_rebuild(self, day: dt.date | str) -> bool:
        """True until `rebuild` has filled this day's spend in this file (a new or recreated file needs it)."""
        row = self._connection().execute("SELECT 1 FROM rebuilt_day WHERE day = ?", (_day_key(day),)).fetchone()
        return row is None

    def rebuild(
        self, day: dt.date | str, rows: Iterable[tuple[str, int, Decimal]], *, only_if_needed: bool = False
    ) -> bool:
        """Replace the day's settled spend with (user_id, tokens, cost) rows read from the store and journals.

        Rows for the same user are summed. With `only_if_needed`, do nothing (and return False) when another
        process rebuilt the day first, so a settle recorded after that rebuild is never overwritten.
        In-flight reservations are kept.
        """
        key = _day_key(day)
        totals: dict[str, list[int]] = {}
        for user_id, tokens, cost in rows:
            total = totals.setdefault(user_id, [0, 0])
            total[0] += _tokens(tokens, "tokens")
            total[1] += to_picodollars(cost)
        with self._transaction() as conn:
            if only_if_needed and conn.execute("SELECT 1 FROM rebuilt_day WHERE day = ?", (key,)).fetchone():
                return False
            conn.execute("DELETE FROM spend WHERE day = ?", (key,))
            conn.executemany(_ADD_SPEND, [(key, user, tokens, pico) for user, (tokens, pico) in totals.items()])
            conn.execute("INSERT INTO rebuilt_day (day, rebuilt_at) VALUES (?, ?) "
                         "ON CONFLICT (day) DO UPDATE SET rebuilt_at = excluded.rebuilt_at", (key, _now_iso()))
        return True

    def prune(self, before_day: dt.date | str) -> None:
        """Forget spend, reservations and bookkeeping of days before the given one."""
        key = _day_key(before_day)
        with self._transaction() as conn:
            for table in ("spend", "reservation", "finished_reservation", "rebuilt_day", "halt"):
                conn.execute(f"DELETE FROM {table} WHERE day < ?", (key,))  # table names are constants


def _budget_message(day: str, user_id: str, account_type: str | None, over: list[str]) -> str:
    who = f"user {user_id!r}" + (f" (account type {account_type!r})" if account_type else "")
    fix = f"raise [limits.{account_type}] in llmcost.toml" if account_type else "raise the limit in llmcost.toml"
    return f"daily budget exceeded for {who} on {day}: {'; '.join(over)} ({fix} or wait until tomorrow)"

