import duckdb

from llmcost.events import UsageEvent
from llmcost.ingestion.bulk import ATTEMPT_FIELDS, FIELDS
from llmcost.store import connection as store
from llmcost.store.migrations import KEY_PROBE, MIGRATIONS, applied, m001_initial, migrate


def columns(db, table):
    return [r[0] for r in db.execute(
        "SELECT column_name FROM information_schema.columns WHERE table_name = ? ORDER BY ordinal_position", [table]
    ).fetchall()]


def test_blank_file_migrates_to_the_documented_schema(tmp_path):
    path = tmp_path / "blank.duckdb"
    with store.writing(path) as db:
        tables = {r[0] for r in db.execute("SELECT table_name FROM information_schema.tables").fetchall()}
        assert {"usage_events", "failed_logs", "ingest_sources", "call_attempts", "alerts", "_llmcost_migrations"} <= tables
        assert columns(db, "usage_events")[:6] == ["event_id", "ts", "day", "user_id", "tenant_id", "use_case"]
        assert "ingested_at" in columns(db, "usage_events")
        assert {"logged_at", "use_case", "estimated_tokens", "error", "user_id", "tenant_id", "source", "raw",
                "recovered", "recovered_at"} <= set(columns(db, "failed_logs"))
        assert {"bytes_consumed", "last_synced_at"} <= set(columns(db, "ingest_sources"))
        cost_type = db.execute(
            "SELECT data_type FROM information_schema.columns WHERE table_name='usage_events' AND column_name='cost_usd'"
        ).fetchall()[0][0]
        assert cost_type == "DECIMAL(18,12)"
        applied = [r[0] for r in db.execute("SELECT name FROM _llmcost_migrations ORDER BY name").fetchall()]
        assert applied == [fn.__name__ for fn in MIGRATIONS]


def test_the_store_has_a_column_of_each_record_field_of_the_kind_the_models_declare(tmp_path):
    """The event schema is declared once (llmcost.events); the migrated store must hold every field of it."""
    kinds = {"str": "VARCHAR", "int": "BIGINT", "float": "DOUBLE", "bool": "BOOLEAN", "ts": "TIMESTAMP",
             "status": "VARCHAR", "cost": "DECIMAL(18,12)", "price_source": "VARCHAR",
             "object": "VARCHAR"}  # metadata is stored as its JSON text
    with store.writing(tmp_path / "blank.duckdb") as db:
        for table, fields in (("usage_events", FIELDS), ("call_attempts", ATTEMPT_FIELDS)):
            declared = dict(db.execute(
                "SELECT column_name, data_type FROM information_schema.columns WHERE table_name = ?", [table]
            ).fetchall())
            for field in fields:
                assert field.name in declared, f"{table} lacks {field.name}: add a migration"
                assert declared[field.name] == kinds[field.kind], (table, field.name, declared[field.name])
    assert [f.name for f in FIELDS] == list(UsageEvent.model_fields)


def test_migrating_again_is_a_no_op(tmp_path):
    path = tmp_path / "again.duckdb"
    with store.writing(path):
        pass
    with store.writing(path) as db:
        assert migrate(db) == []
        assert db.execute("SELECT count(*) FROM _llmcost_migrations").fetchall()[0][0] == len(MIGRATIONS)


def test_reading_a_missing_store_yields_none(tmp_path):
    with store.reading(tmp_path / "missing.duckdb") as db:
        assert db is None
    assert not (tmp_path / "missing.duckdb").exists()


def _keys(db, table, key, id_column):
    return db.execute(f"SELECT {key} = hash({id_column}) AS right, count(*) FROM {table} GROUP BY ALL").fetchall()


def test_a_store_from_before_id_keys_gets_them(tmp_path):
    path = tmp_path / "old.duckdb"
    db = duckdb.connect(str(path))
    applied(db)
    m001_initial(db)
    db.execute("INSERT INTO _llmcost_migrations VALUES ('m001_initial', now()::TIMESTAMP)")
    db.execute("INSERT INTO usage_events (event_id, ts, day, user_id, tenant_id, use_case, cost_usd, price_source, "
               "ingested_at) SELECT 'evt-' || i, now(), today(), 'u', 't', 'c', 0, 'price-table', now() "
               "FROM range(1000) r(i)")
    db.execute("INSERT INTO call_attempts (attempt_id, ts, day, ingested_at) VALUES ('att-1', now(), today(), now())")
    db.close()

    with store.writing(path) as db:
        assert "event_key" in columns(db, "usage_events") and "attempt_key" in columns(db, "call_attempts")
        assert _keys(db, "usage_events", "event_key", "event_id") == [(True, 1000)]
        assert _keys(db, "call_attempts", "attempt_key", "attempt_id") == [(True, 1)]


def test_keys_are_given_to_rows_written_without_them_and_redone_when_hashing_changes(tmp_path):
    path = tmp_path / "keys.duckdb"
    with store.writing(path) as db:
        db.execute("INSERT INTO usage_events (event_id, ts, day, user_id, tenant_id, use_case, cost_usd, "
                   "price_source, ingested_at) VALUES ('by-name', now(), today(), 'u', 't', 'c', 0, 'override', now())")
        assert _keys(db, "usage_events", "event_key", "event_id") == [(None, 1)]
    with store.writing(path) as db:
        assert _keys(db, "usage_events", "event_key", "event_id") == [(True, 1)]
        # As if another DuckDB version had written the keys with another hash function.
        db.execute("UPDATE usage_events SET event_key = 42")
        db.execute("UPDATE _llmcost_key_hash SET probe = 42")
    with store.writing(path) as db:
        assert _keys(db, "usage_events", "event_key", "event_id") == [(True, 1)]
        assert db.execute("SELECT probe = hash(?) FROM _llmcost_key_hash", [KEY_PROBE]).fetchall() == [(True,)]


def test_a_store_from_before_content_identity_gets_content_keys_and_dismissal_columns(tmp_path):
    from llmcost.store.migrations import EVENT_CONTENT_HASH, m002_id_keys

    path = tmp_path / "m002.duckdb"
    db = duckdb.connect(str(path))
    applied(db)
    m001_initial(db)
    m002_id_keys(db)
    db.execute("INSERT INTO _llmcost_migrations VALUES ('m001_initial', now()::TIMESTAMP), "
               "('m002_id_keys', now()::TIMESTAMP)")
    db.execute("INSERT INTO usage_events (event_id, ts, day, user_id, tenant_id, use_case, input_tokens, cost_usd, "
               "price_source, ingested_at, event_key) SELECT 'evt-' || i, now(), today(), 'u', 't', 'c', i, 0.5, "
               "'price-table', now(), hash('evt-' || i) FROM range(10) r(i)")
    db.close()
    with store.writing(path) as db:
        assert db.execute(f"SELECT count(*) FILTER (content_key = {EVENT_CONTENT_HASH}), "
                          "count(DISTINCT content_key) FROM usage_events").fetchall() == [(10, 10)]
        assert {"dismissed_at", "dismissed_by", "dismiss_reason"} <= set(columns(db, "failed_logs"))
        assert columns(db, "ingest_line_counts") == ["path", "line_hash", "seen"]
