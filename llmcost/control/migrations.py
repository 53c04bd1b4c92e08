"""The control file's schema as an ordered registry of migrations, each applied once inside a transaction.

Like the store's (`llmcost.store.migrations`): add a migration by appending a function `mNNN_what_it_does`
decorated with `@migration`; never edit one that has shipped. Applied names are recorded in
`_llmcost_migrations`, and `PRAGMA user_version` holds their count so opening a current file costs one read.
A file written before migrations existed has the tables of `m001_initial` already: it is adopted as it is.
"""

from __future__ import annotations

import sqlite3
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from llmcost.errors import ControlStateError

MIGRATIONS: list[Callable[[sqlite3.Connection], None]] = []


def migration(fn: Callable[[sqlite3.Connection], None]):
    MIGRATIONS.append(fn)
    return fn


def _script(conn: sqlite3.Connection, sql: str) -> None:
    for statement in sql.split(";"):
        if statement.strip():
            conn.execute(statement)


@migration
def m001_initial(conn: sqlite3.Connection) -> None:
    # IF NOT EXISTS: a file from before migrations existed already has exactly these tables.
    _script(conn, """
    CREATE TABLE IF NOT EXISTS kill_switch (
        use_case TEXT PRIMARY KEY, reason TEXT NOT NULL, disabled_at TEXT NOT NULL, disabled_by TEXT
    );
    CREATE TABLE IF NOT EXISTS halt (day TEXT PRIMARY KEY, reason TEXT, halted_at TEXT, resumed_at TEXT);
    CREATE TABLE IF NOT EXISTS spend (
        day TEXT NOT NULL, user_id TEXT NOT NULL, tokens INTEGER NOT NULL, cost_pico INTEGER NOT NULL,
        PRIMARY KEY (day, user_id)
    ) WITHOUT ROWID;
    CREATE TABLE IF NOT EXISTS reservation (
        id TEXT PRIMARY KEY, day TEXT NOT NULL, user_id TEXT NOT NULL, tenant_id TEXT NOT NULL,
        use_case TEXT NOT NULL, tokens INTEGER NOT NULL, cost_pico INTEGER NOT NULL,
        created_at REAL NOT NULL, pid INTEGER NOT NULL
    );
    CREATE INDEX IF NOT EXISTS reservation_by_day_user ON reservation (day, user_id);
    CREATE TABLE IF NOT EXISTS finished_reservation (id TEXT PRIMARY KEY, day TEXT NOT NULL);
    CREATE TABLE IF NOT EXISTS rebuilt_day (day TEXT PRIMARY KEY, rebuilt_at TEXT NOT NULL)
    """)


@migration
def m002_owners_store_spend_generation(conn: sqlite3.Connection) -> None:
    # owner: host and pid namespace of the reserving process, so liveness is judged only where its pid means
    # something; day_total: the day's system-wide settled figure, kept up to date so admission reads one row;
    # released_at: released as stale (no longer counted, still settled if its call ends); a reservation is never
    # "finished" by a row any more (settle deletes it), so
    # finished_reservation only keeps settles of reservations made in an earlier file (see ControlState.settle).
    _script(conn, """
    ALTER TABLE reservation ADD COLUMN owner TEXT NOT NULL DEFAULT '';
    ALTER TABLE reservation ADD COLUMN pid_started TEXT;
    ALTER TABLE reservation ADD COLUMN released_at REAL;
    CREATE TABLE store_spend (
        day TEXT NOT NULL, user_id TEXT NOT NULL,
        tracked_tokens INTEGER NOT NULL, tracked_cost_pico INTEGER NOT NULL,
        external_tokens INTEGER NOT NULL, external_cost_pico INTEGER NOT NULL,
        PRIMARY KEY (day, user_id)
    ) WITHOUT ROWID;
    CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
    CREATE TABLE day_total (day TEXT PRIMARY KEY, cost_pico INTEGER NOT NULL);
    INSERT INTO day_total (day, cost_pico) SELECT day, SUM(cost_pico) FROM spend GROUP BY day;
    DELETE FROM finished_reservation
    """)
    conn.execute("INSERT INTO meta (key, value) VALUES ('generation', ?)", (uuid.uuid4().hex,))
    # Spend rebuilt by older versions mixed in events from inbox files; rebuild it by the current rule.
    conn.execute("DELETE FROM rebuilt_day")


@migration
def m003_scope_budgets(conn: sqlite3.Connection) -> None:
    # Tenant, use case and service key counters per day or month (period `2026-12-03` or `2026-12`);
    # details: what a settle at another process needs to record the call (the collector's reservations).
    _script(conn, """
    CREATE TABLE scope_spend (
        period TEXT NOT NULL, scope TEXT NOT NULL, name TEXT NOT NULL,
        tokens INTEGER NOT NULL, cost_pico INTEGER NOT NULL, PRIMARY KEY (period, scope, name)
    ) WITHOUT ROWID;
    CREATE TABLE scope_store_spend (
        period TEXT NOT NULL, scope TEXT NOT NULL, name TEXT NOT NULL,
        tracked_tokens INTEGER NOT NULL, tracked_cost_pico INTEGER NOT NULL,
        external_tokens INTEGER NOT NULL, external_cost_pico INTEGER NOT NULL, PRIMARY KEY (period, scope, name)
    ) WITHOUT ROWID;
    CREATE TABLE reservation_scope (
        reservation_id TEXT NOT NULL, period TEXT NOT NULL, scope TEXT NOT NULL, name TEXT NOT NULL,
        tokens INTEGER NOT NULL, cost_pico INTEGER NOT NULL, PRIMARY KEY (reservation_id, period, scope, name)
    ) WITHOUT ROWID;
    CREATE INDEX reservation_scope_by_counter ON reservation_scope (period, scope, name);
    ALTER TABLE reservation ADD COLUMN details TEXT
    """)


@migration
def m004_reservation_and_day_total_without_rowid(conn: sqlite3.Connection) -> None:
    # Keyed by their primary key alone (as spend already is): a rowid table with a TEXT primary key keeps a
    # second b-tree for the key, so every admission and settle wrote one more page to the write-ahead log for
    # reservation, and every settle one more for day_total (10 -> 7 pages a tracked call).
    _script(conn, """
    CREATE TABLE reservation_keyed (
        id TEXT PRIMARY KEY, day TEXT NOT NULL, user_id TEXT NOT NULL, tenant_id TEXT NOT NULL,
        use_case TEXT NOT NULL, tokens INTEGER NOT NULL, cost_pico INTEGER NOT NULL,
        created_at REAL NOT NULL, pid INTEGER NOT NULL, owner TEXT NOT NULL DEFAULT '', pid_started TEXT,
        released_at REAL, details TEXT
    ) WITHOUT ROWID;
    INSERT INTO reservation_keyed (id, day, user_id, tenant_id, use_case, tokens, cost_pico, created_at, pid, owner,
                                   pid_started, released_at, details)
        SELECT id, day, user_id, tenant_id, use_case, tokens, cost_pico, created_at, pid, owner, pid_started,
               released_at, details FROM reservation;
    DROP TABLE reservation;
    ALTER TABLE reservation_keyed RENAME TO reservation;
    CREATE INDEX reservation_by_day_user ON reservation (day, user_id);
    CREATE TABLE day_total_keyed (day TEXT PRIMARY KEY, cost_pico INTEGER NOT NULL) WITHOUT ROWID;
    INSERT INTO day_total_keyed (day, cost_pico) SELECT day, cost_pico FROM day_total;
    DROP TABLE day_total;
    ALTER TABLE day_total_keyed RENAME TO day_total
    """)


@contextmanager
def immediate(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """One IMMEDIATE transaction on the control file (the write lock taken at its start, so a decision read
    inside it stays true until it commits); rolled back when the block raises."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def migrate(conn: sqlite3.Connection, on_new_file: Callable[[sqlite3.Connection], None] | None = None) -> list[str]:
    """Apply every migration not yet recorded (in one IMMEDIATE transaction); return the names applied now.

    `on_new_file` runs in the same transaction when the file had no tables yet, so no other process sees
    the new file before it is filled (with the kill switches and halts of the audit log).
    """
    if conn.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS):
        return []
    with immediate(conn):  # other processes opening the same new file wait here, then find it done
        conn.execute("CREATE TABLE IF NOT EXISTS _llmcost_migrations (name TEXT PRIMARY KEY, applied_at REAL NOT NULL)")
        done = {row[0] for row in conn.execute("SELECT name FROM _llmcost_migrations")}
        known = {fn.__name__ for fn in MIGRATIONS}
        if done - known:
            raise ControlStateError(
                f"the control file was written by a newer llmcost (migrations {', '.join(sorted(done - known))}); "
                "upgrade llmcost in this environment")
        new_file = not conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'kill_switch'").fetchone()
        ran = []
        for fn in MIGRATIONS:
            if fn.__name__ not in done:
                fn(conn)
                conn.execute("INSERT INTO _llmcost_migrations (name, applied_at) VALUES (?, ?)", (fn.__name__, time.time()))
                ran.append(fn.__name__)
        if new_file and on_new_file is not None:
            on_new_file(conn)
        conn.execute(f"PRAGMA user_version = {len(MIGRATIONS)}")  # an int from len(): no user text
    return ran
