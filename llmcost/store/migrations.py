"""The store's schema as an ordered registry of migrations, each run once inside a transaction.

Add a migration by appending a function named `mNNN_what_it_does` decorated with `@migration`;
never edit one that has shipped.
"""

from __future__ import annotations

from collections.abc import Callable

import duckdb

from llmcost.store import transaction

MIGRATIONS: list[Callable[[duckdb.DuckDBPyConnection], None]] = []


def migration(fn: Callable[[duckdb.DuckDBPyConnection], None]):
    MIGRATIONS.append(fn)
    return fn


@migration
def m001_initial(db: duckdb.DuckDBPyConnection) -> None:
    # Times are TIMESTAMP in UTC; `day` is the calendar day in the configured time zone.
    db.execute(
        """
        CREATE TABLE usage_events (
            event_id VARCHAR NOT NULL,
            ts TIMESTAMP NOT NULL,
            day DATE NOT NULL,
            user_id VARCHAR NOT NULL,
            tenant_id VARCHAR NOT NULL,
            use_case VARCHAR NOT NULL,
            account_type VARCHAR,
            provider VARCHAR,
            model VARCHAR,
            input_tokens BIGINT NOT NULL DEFAULT 0,
            output_tokens BIGINT NOT NULL DEFAULT 0,
            cache_read_tokens BIGINT NOT NULL DEFAULT 0,
            cache_write_tokens BIGINT NOT NULL DEFAULT 0,
            reasoning_tokens BIGINT NOT NULL DEFAULT 0,
            total_tokens BIGINT NOT NULL DEFAULT 0,
            estimated_tokens BIGINT,
            usage_estimated BOOLEAN NOT NULL DEFAULT false,
            latency_ms DOUBLE,
            status VARCHAR NOT NULL DEFAULT 'ok',
            error VARCHAR,
            cost_usd DECIMAL(18, 12) NOT NULL,
            price_source VARCHAR NOT NULL,
            attempt_id VARCHAR,
            source VARCHAR,
            metadata VARCHAR,
            ingested_at TIMESTAMP NOT NULL
        )
        """
    )
    db.execute(
        """
        CREATE TABLE failed_logs (
            failed_id VARCHAR NOT NULL,
            kind VARCHAR NOT NULL,          -- fallback | invalid | unattributed
            logged_at TIMESTAMP NOT NULL,   -- when the write failed (fallback) or the record was read
            use_case VARCHAR,
            estimated_tokens BIGINT,
            error VARCHAR NOT NULL,
            user_id VARCHAR,
            tenant_id VARCHAR,
            source VARCHAR NOT NULL,
            raw VARCHAR,
            event_id VARCHAR,
            recovered BOOLEAN NOT NULL DEFAULT false,
            recovered_at TIMESTAMP
        )
        """
    )
    db.execute(
        """
        CREATE TABLE ingest_sources (
            path VARCHAR NOT NULL PRIMARY KEY,
            kind VARCHAR NOT NULL,          -- journal | fallback | inbox | file
            file_key VARCHAR NOT NULL,      -- identity of the file's first bytes, to notice a replaced file
            bytes_consumed BIGINT NOT NULL,
            records_read BIGINT NOT NULL,
            last_synced_at TIMESTAMP NOT NULL
        )
        """
    )
    db.execute(
        """
        CREATE TABLE call_attempts (
            attempt_id VARCHAR NOT NULL,
            ts TIMESTAMP NOT NULL,
            day DATE NOT NULL,
            user_id VARCHAR,
            tenant_id VARCHAR,
            use_case VARCHAR,
            account_type VARCHAR,
            provider VARCHAR,
            model VARCHAR,
            estimated_tokens BIGINT,
            source VARCHAR,
            ingested_at TIMESTAMP NOT NULL
        )
        """
    )
    db.execute(
        """
        CREATE TABLE alerts (
            alert_id VARCHAR NOT NULL,
            raised_at TIMESTAMP NOT NULL,
            day DATE NOT NULL,
            level VARCHAR NOT NULL,         -- warning | critical | shutdown | info
            scope VARCHAR NOT NULL,         -- system | tenant | user | use_case | logging
            scope_id VARCHAR NOT NULL,
            metric VARCHAR NOT NULL,        -- cost_usd | tokens | failed_logs ...
            figure DECIMAL(24, 12),
            threshold DECIMAL(24, 12),
            message VARCHAR NOT NULL,
            notifier VARCHAR NOT NULL,      -- log | email | slack
            delivered BOOLEAN NOT NULL,
            attempts INTEGER NOT NULL,
            last_error VARCHAR
        )
        """
    )


# Each stored event (and call attempt) carries a 64-bit hash of its id. Telling whether a batch's ids
# are stored already then reads that one narrow column of the whole table, and compares the ids
# themselves only where a hash matches: checking the id strings of every stored row made each batch
# cost more as the store grew (0.3 s per batch of 250k events at 4M stored).
KEYED_TABLES = {"usage_events": ("event_key", "event_id"), "call_attempts": ("attempt_key", "attempt_id")}
KEY_PROBE = "llmcost key probe"


@migration
def m002_id_keys(db: duckdb.DuckDBPyConnection) -> None:
    for table, (key, id_column) in KEYED_TABLES.items():
        db.execute(f"ALTER TABLE {table} ADD COLUMN {key} UBIGINT")
        db.execute(f"UPDATE {table} SET {key} = hash({id_column})")
    db.execute("CREATE TABLE _llmcost_key_hash (probe UBIGINT NOT NULL)")
    db.execute("INSERT INTO _llmcost_key_hash VALUES (hash(?))", [KEY_PROBE])


# Each stored event keeps a 64-bit hash of what it says (who, when, which model, tokens, cost), so a
# record that repeats a stored event_id is told apart cheaply: the same content is a plain duplicate,
# other content a conflict kept in failed_logs. The source, metadata and timing are not part of it: the
# same call journaled and also written to the fallback log differs only there.
EVENT_CONTENT_COLUMNS = {
    "ts": "TIMESTAMP", "user_id": "VARCHAR", "tenant_id": "VARCHAR", "use_case": "VARCHAR",
    "account_type": "VARCHAR", "provider": "VARCHAR", "model": "VARCHAR", "input_tokens": "BIGINT",
    "output_tokens": "BIGINT", "cache_read_tokens": "BIGINT", "cache_write_tokens": "BIGINT",
    "reasoning_tokens": "BIGINT", "total_tokens": "BIGINT", "status": "VARCHAR", "cost_usd": "DECIMAL(18, 12)",
}


def event_content_hash(cost_usd: str = "cost_usd") -> str:
    """SQL for an event's content hash; `cost_usd` is the SQL of its cost (a batch holds it in picodollars)."""
    values = ", ".join(f"CAST({cost_usd if name == 'cost_usd' else name} AS {kind})"
                       for name, kind in EVENT_CONTENT_COLUMNS.items())
    return f"hash({values})"


EVENT_CONTENT_HASH = event_content_hash()


@migration
def m003_source_identity_conflicts_dismissals(db: duckdb.DuckDBPyConnection) -> None:
    db.execute("ALTER TABLE usage_events ADD COLUMN content_key UBIGINT")
    db.execute(f"UPDATE usage_events SET content_key = {EVENT_CONTENT_HASH}")
    # How many identical lines of a file were read so far, for ids derived from content (llmcost.ingestion.content_ids).
    db.execute("CREATE TABLE ingest_line_counts (path VARCHAR NOT NULL, line_hash VARCHAR NOT NULL, "
               "seen INTEGER NOT NULL)")
    db.execute("ALTER TABLE failed_logs ADD COLUMN dismissed_at TIMESTAMP")
    db.execute("ALTER TABLE failed_logs ADD COLUMN dismissed_by VARCHAR")
    db.execute("ALTER TABLE failed_logs ADD COLUMN dismiss_reason VARCHAR")


@migration
def m004_pricing_quirks(db: duckdb.DuckDBPyConnection) -> None:
    """The 1-hour cache writes (inside cache_write_tokens), the model the response names and its service tier."""
    db.execute("ALTER TABLE usage_events ADD COLUMN cache_write_1h_tokens BIGINT NOT NULL DEFAULT 0")
    db.execute("ALTER TABLE usage_events ADD COLUMN response_model VARCHAR")
    db.execute("ALTER TABLE usage_events ADD COLUMN service_tier VARCHAR")


def refresh_id_keys(db: duckdb.DuckDBPyConnection) -> None:
    """Give every row its id key: rows written without one (by name, by an older version), and all
    rows when this DuckDB hashes differently from the one that wrote the keys."""
    if db.execute("SELECT probe = hash(?) FROM _llmcost_key_hash", [KEY_PROBE]).fetchall() != [(True,)]:
        with transaction(db):
            for table, (key, id_column) in KEYED_TABLES.items():
                db.execute(f"UPDATE {table} SET {key} = hash({id_column})")
            db.execute(f"UPDATE usage_events SET content_key = {EVENT_CONTENT_HASH}")
            db.execute("DELETE FROM _llmcost_key_hash")
            db.execute("INSERT INTO _llmcost_key_hash VALUES (hash(?))", [KEY_PROBE])
        return
    for table, (key, id_column) in KEYED_TABLES.items():
        db.execute(f"UPDATE {table} SET {key} = hash({id_column}) WHERE {key} IS NULL")
    db.execute(f"UPDATE usage_events SET content_key = {EVENT_CONTENT_HASH} WHERE content_key IS NULL")


def applied(db: duckdb.DuckDBPyConnection) -> set[str]:
    db.execute("CREATE TABLE IF NOT EXISTS _llmcost_migrations (name VARCHAR PRIMARY KEY, applied_at TIMESTAMP)")
    return {row[0] for row in db.execute("SELECT name FROM _llmcost_migrations").fetchall()}


def migrate(db: duckdb.DuckDBPyConnection) -> list[str]:
    """Apply every migration not yet recorded; return the names applied now."""
    done = applied(db)
    ran = []
    for fn in MIGRATIONS:
        if fn.__name__ in done:
            continue
        with transaction(db):
            fn(db)
            db.execute(
                "INSERT INTO _llmcost_migrations VALUES (?, now()::TIMESTAMP)", [fn.__name__]
            )
        ran.append(fn.__name__)
    return ran
