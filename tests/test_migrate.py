from llmcost import store
from llmcost.migrations import MIGRATIONS, migrate


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
