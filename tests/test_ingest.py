import json
import subprocess
import sys
import textwrap
from datetime import datetime
from decimal import Decimal

import pytest

from llmcost.errors import StoreLockedError
from llmcost.ingestion.run import ingest, pending
from llmcost.lines import encode_line
from llmcost.sdk import fallback
from llmcost.store import connection as store


def event(n, **extra):
    record = {
        "event_id": f"evt-{n}",
        "ts": "2026-11-20T10:00:00Z",
        "user_id": f"user-{n % 7}",
        "tenant_id": "tenant-a",
        "use_case": "chat_tutor",
        "provider": "openai",
        "model": "gpt-4o",
        "input_tokens": 1000,
        "output_tokens": 500,
    }
    record.update(extra)
    return record


def write_jsonl(path, records, mode="wb"):
    with open(path, mode) as f:
        for r in records:
            f.write(r if isinstance(r, bytes) else encode_line(r))


def query(settings, sql, params=()):
    with store.reading(settings.db_path) as db:
        return db.execute(sql, list(params)).fetchall()


def count(settings, table="usage_events"):
    return query(settings, f"SELECT count(*) FROM {table}")[0][0]


def test_ingest_is_idempotent_and_prices_exactly(settings, tmp_path):
    path = tmp_path / "events.jsonl"
    write_jsonl(path, [event(n) for n in range(50)])
    first = ingest(settings, [path])
    assert (first.read, first.stored, first.failed) == (50, 50, 0)
    again = ingest(settings, [path])
    assert (again.read, again.stored) == (0, 0)
    assert count(settings) == 50
    # gpt-4o: 1000 input at $2.50/MTok + 500 output at $10/MTok = $0.0025 + $0.005
    cost, source, day = query(settings, "SELECT cost_usd, price_source, day FROM usage_events WHERE event_id='evt-1'")[0]
    assert cost == Decimal("0.0075") and source == "price-table" and str(day) == "2026-11-20"


def test_a_file_that_grew_is_read_from_where_it_stopped(settings, tmp_path):
    path = tmp_path / "grow.jsonl"
    write_jsonl(path, [event(n) for n in range(10)])
    ingest(settings, [path])
    write_jsonl(path, [event(n) for n in range(10, 15)], mode="ab")
    result = ingest(settings, [path])
    assert (result.read, result.stored, result.duplicates) == (5, 5, 0)
    assert count(settings) == 15


def test_a_torn_last_line_waits_until_it_is_whole(settings, tmp_path):
    path = tmp_path / "torn.jsonl"
    line = encode_line(event(99))
    write_jsonl(path, [event(1), line[:30]])
    result = ingest(settings, [path])
    assert result.stored == 1 and result.failed == 0
    assert pending(settings) == {"journal": 0, "fallback": 0, "inbox": 0}  # an explicit file, not a configured source
    write_jsonl(path, [line[30:]], mode="ab")
    result = ingest(settings, [path])
    assert result.stored == 1 and result.failed == 0
    assert sorted(r[0] for r in query(settings, "SELECT event_id FROM usage_events")) == ["evt-1", "evt-99"]


def test_malformed_lines_are_kept_with_their_reason(settings, tmp_path):
    path = tmp_path / "mixed.jsonl"
    write_jsonl(path, [
        event(1),
        b"{not json\n",
        b"[1, 2]\n",
        encode_line(event(2, input_tokens=-5)),
        b"\xff\xfe bad bytes\n",
        encode_line(event(3, ts="not a time")),
        event(4),
    ])
    result = ingest(settings, [path])
    assert (result.read, result.stored, result.failed) == (7, 2, 5)
    reasons = [r[0] for r in query(settings, "SELECT error FROM failed_logs WHERE kind='invalid' ORDER BY logged_at, raw")]
    assert len(reasons) == 5
    joined = " | ".join(reasons)
    assert "not valid JSON" in joined
    assert "must be a JSON object" in joined
    assert "input_tokens: Input should be greater than or equal to 0" in joined
    assert "not valid UTF-8" in joined
    assert "ts:" in joined
    raws = [r[0] for r in query(settings, "SELECT raw FROM failed_logs")]
    assert "{not json" in raws


def test_missing_identity_with_usage_is_counted_unattributed(settings, tmp_path):
    path = tmp_path / "anon.jsonl"
    record = event(1)
    del record["user_id"]
    record["tenant_id"] = "  "
    write_jsonl(path, [record, {"ts": "2026-11-20T10:00:00Z", "use_case": "x"}])
    result = ingest(settings, [path])
    assert result.stored == 1 and result.failed == 1
    row = query(settings, "SELECT user_id, tenant_id, cost_usd FROM usage_events")[0]
    assert row[:2] == ("(unattributed)", "(unattributed)") and row[2] > 0
    kinds = dict(query(settings, "SELECT kind, error FROM failed_logs"))
    assert "missing user_id, tenant_id" in kinds["unattributed"]
    assert "user_id" in kinds["invalid"]


def test_csv_files_are_ingested_and_follow_growth(settings, tmp_path):
    path = tmp_path / "usage.csv"
    path.write_text(
        "ts,user_id,tenant_id,use_case,provider,model,total_tokens\n"
        "2026-11-20T09:00:00Z,u1,t1,scaffolder,x-ai,grok-2,1988\n"
        "2026-11-20T09:05:00Z,u2,t1,scaffolder,,,1000\n"
    )
    first = ingest(settings, [path])
    assert first.stored == 2
    with path.open("a") as f:
        f.write("2026-11-20T09:06:00Z,u3,t1,scaffolder,openai,gpt-4o,10\n")
    assert ingest(settings, [path]).stored == 1
    rows = dict(query(settings, "SELECT user_id, price_source FROM usage_events"))
    assert rows == {"u1": "price-table", "u2": "default-rate", "u3": "price-table"}
    # 1000 tokens of an unknown model at the default $5.00 per million tokens
    assert query(settings, "SELECT cost_usd FROM usage_events WHERE user_id='u2'")[0][0] == Decimal("0.005")


def test_fallback_entries_are_stored_once_and_marked_recovered(settings):
    fallback.append(settings.fallback_log, event(1), "OSError: [Errno 28] No space left on device")
    fallback.append(settings.fallback_log, event(2, input_tokens="oops"), "OSError: [Errno 13] Permission denied")
    write_jsonl(settings.journal_dir / "j.jsonl", [event(1)])  # the same call also reached a journal later
    result = ingest(settings)
    assert result.stored == 1 and result.duplicates == 1
    rows = query(settings, "SELECT error, recovered, recovered_at IS NOT NULL FROM failed_logs ORDER BY error")
    assert rows[0][0].startswith("OSError: [Errno 13]") and "input_tokens" in rows[0][0] and rows[0][1] is False
    assert rows[1] == ("OSError: [Errno 28] No space left on device", True, True)
    assert ingest(settings).read == 0
    assert count(settings, "failed_logs") == 2


def test_a_replaced_file_is_read_again_without_duplicates(settings, tmp_path):
    path = tmp_path / "rotated.jsonl"
    write_jsonl(path, [event(n) for n in range(5)])
    ingest(settings, [path])
    write_jsonl(path, [event(n) for n in range(100, 103)] + [event(0)])
    result = ingest(settings, [path])
    assert (result.stored, result.duplicates) == (3, 1)
    assert count(settings) == 8


def test_pending_counts_records_waiting_in_configured_sources(settings):
    write_jsonl(settings.journal_dir / "a.jsonl", [event(n) for n in range(3)])
    fallback.append(settings.fallback_log, event(10), "disk full")
    assert pending(settings) == {"journal": 3, "fallback": 1, "inbox": 0}
    ingest(settings)
    assert pending(settings) == {"journal": 0, "fallback": 0, "inbox": 0}
    write_jsonl(settings.journal_dir / "a.jsonl", [event(5)], mode="ab")
    assert pending(settings) == {"journal": 1, "fallback": 0, "inbox": 0}


KILL_MID_TRANSACTION = textwrap.dedent("""
    import os, signal, sys
    import llmcost.ingestion.run as ingest_module
    from llmcost.config import load_settings
    ingest_module.BATCH_BYTES = 64 * 1024
    original = ingest_module._touch_source
    calls = {"n": 0}
    def touch_then_die(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 4:   # inside the 4th batch's transaction, before COMMIT
            os.kill(os.getpid(), signal.SIGKILL)
        return original(*args, **kwargs)
    ingest_module._touch_source = touch_then_die
    ingest_module.ingest(load_settings(), [sys.argv[1]])
""")


def test_an_ingest_killed_mid_transaction_resumes_exactly_once(settings, tmp_path):
    path = tmp_path / "big.jsonl"
    write_jsonl(path, [event(n) for n in range(3000)])
    proc = subprocess.run([sys.executable, "-c", KILL_MID_TRANSACTION, str(path)], capture_output=True)
    assert proc.returncode == -9, proc.stderr.decode()[-2000:]
    partial = count(settings)
    assert 0 < partial < 3000
    ingest(settings, [path])
    assert count(settings) == 3000
    assert query(settings, "SELECT count(DISTINCT event_id) FROM usage_events")[0][0] == 3000


HOLD_LOCK = textwrap.dedent("""
    import sys, time, duckdb
    db = duckdb.connect(sys.argv[1])
    print("locked", flush=True)
    time.sleep(float(sys.argv[2]))
    db.close()
""")


def hold_store_lock(settings, seconds):
    with store.writing(settings.db_path):
        pass
    proc = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(settings.db_path), str(seconds)],
                            stdout=subprocess.PIPE)
    assert proc.stdout.readline().strip() == b"locked"
    return proc


@pytest.mark.slow
def test_ingest_and_a_reader_wait_for_another_process_holding_the_lock(settings, tmp_path):
    path = tmp_path / "wait.jsonl"
    write_jsonl(path, [event(n) for n in range(20)])
    holder = hold_store_lock(settings, 1.5)
    try:
        result = ingest(settings, [path], lock_timeout=30)
        assert result.stored == 20
    finally:
        holder.wait(timeout=30)
    holder = hold_store_lock(settings, 1.5)
    try:
        with store.reading(settings.db_path, timeout=30) as db:
            assert db.execute("SELECT count(*) FROM usage_events").fetchall()[0][0] == 20
    finally:
        holder.wait(timeout=30)


@pytest.mark.slow
def test_a_lock_held_too_long_gives_a_clear_error_and_loses_nothing(settings, tmp_path):
    path = tmp_path / "late.jsonl"
    write_jsonl(path, [event(n) for n in range(5)])
    holder = hold_store_lock(settings, 3)
    try:
        with pytest.raises(StoreLockedError, match="stayed locked by another process"):
            ingest(settings, [path], lock_timeout=0.5)
    finally:
        holder.wait(timeout=30)
    assert ingest(settings, [path]).stored == 5


APPENDER = textwrap.dedent("""
    import sys
    from pathlib import Path
    from llmcost.sdk import fallback
    from llmcost.sdk.journal import Journal
    worker, count, home = int(sys.argv[1]), int(sys.argv[2]), Path(sys.argv[3])
    journal = Journal(home / "journal", fsync=False)
    pad = "x" * (worker * 900)   # lines of different sizes, up to ~7 KB, to expose interleaving
    for n in range(count):
        record = {"event_id": f"w{worker}-{n}", "ts": "2026-11-20T10:00:00Z", "user_id": "u", "tenant_id": "t",
                  "use_case": "chat_tutor", "input_tokens": 10, "output_tokens": 5, "metadata": {"pad": pad}}
        journal.append(record)
        fallback.append(home / "emergency-token-usage.jsonl", dict(record, event_id=f"f{worker}-{n}"),
                        "simulated", fsync=False)
""")


@pytest.mark.slow
def test_journal_and_fallback_appends_from_several_processes_stay_whole(settings):
    workers, per_worker = 8, 250
    procs = [subprocess.Popen([sys.executable, "-c", APPENDER, str(w), str(per_worker), str(settings.home)])
             for w in range(workers)]
    assert all(p.wait(timeout=120) == 0 for p in procs)
    fallback_lines = settings.fallback_log.read_bytes().splitlines()
    assert len(fallback_lines) == workers * per_worker
    assert all(json.loads(line)["event"]["use_case"] == "chat_tutor" for line in fallback_lines)
    journal_files = list(settings.journal_dir.glob("*.jsonl"))
    assert len(journal_files) == workers
    result = ingest(settings)
    assert (result.stored, result.failed) == (2 * workers * per_worker, 0)
    assert query(settings, "SELECT count(DISTINCT event_id) FROM usage_events")[0][0] == 2 * workers * per_worker


@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
def test_batches_cut_at_whole_row_groups_store_every_record_once(settings, tmp_path, monkeypatch, fmt):
    # A batch keeps whole row groups of clean rows and leaves the lines after the last one for the
    # next batch; with tiny groups and batches, every file below is cut many times over.
    import llmcost.ingestion.bulk as bulk_module
    import llmcost.ingestion.parse as records_module
    import llmcost.ingestion.run as ingest_module

    cuts = []
    original_cut = records_module._whole_row_groups

    def counting_cut(*args):
        kept, cut = original_cut(*args)
        cuts.append(cut)
        return kept, cut

    monkeypatch.setattr(records_module, "_whole_row_groups", counting_cut)
    monkeypatch.setattr(bulk_module, "ROW_GROUP_ROWS", 7)
    monkeypatch.setattr(ingest_module, "BATCH_BYTES", 4096)
    monkeypatch.setattr(ingest_module, "CSV_BATCH_BYTES", 2048)
    monkeypatch.setattr(ingest_module, "MIN_BATCH_BYTES", 1024)
    monkeypatch.setattr(ingest_module, "MAX_BATCH_BYTES", 8192)
    records = []
    for n in range(300):
        records.append(event(n, **({"user_id": f" padded-{n}"} if n % 17 == 0 else {})))  # pydantic's path
        if n % 23 == 0:
            records.append(None)  # an invalid line
        if n % 31 == 0:
            records.append("")  # a blank line
    path = tmp_path / f"events.{fmt}"
    if fmt == "jsonl":
        path.write_bytes(b"".join(b"not json\n" if r is None else b"\n" if r == "" else encode_line(r)
                                  for r in records))
    else:
        columns = list(event(0))
        broken = event(0, event_id="broken", ts="not a time")  # whole CSV, so the chunk still parses as CSV
        rows = [",".join(columns)] + ["" if r == "" else ",".join(str((r or broken)[c]) for c in columns)
                                      for r in records]
        path.write_text("\n".join(rows) + "\n")

    result = ingest(settings, [path])
    assert sum(cut is not None for cut in cuts) >= 10
    invalid = sum(r is None for r in records)
    assert (result.stored, result.failed, result.duplicates) == (300, invalid, 0)
    assert result.read == 300 + invalid
    assert query(settings, "SELECT count(*), count(DISTINCT event_id) FROM usage_events")[0] == (300, 300)
    assert count(settings, "failed_logs") == invalid
    assert query(settings, "SELECT bytes_consumed FROM ingest_sources")[0][0] == path.stat().st_size
    assert query(settings, "SELECT count(*) FROM usage_events WHERE user_id LIKE 'padded-%'")[0][0] == 18
    again = ingest(settings, [path])
    assert (again.read, again.stored) == (0, 0)


def test_an_event_stored_by_another_writer_is_a_duplicate_when_a_file_brings_it_again(settings, tmp_path):
    # Rows written by name (by a tool, or a version before id keys) get their key when a writer next opens the store.
    with store.writing(settings.db_path) as db:
        db.execute("INSERT INTO usage_events (event_id, ts, day, user_id, tenant_id, use_case, cost_usd, "
                   "price_source, ingested_at) VALUES ('evt-3', now(), today(), 'u', 't', 'c', 0, 'override', now())")
    path = tmp_path / "again.jsonl"
    write_jsonl(path, [event(n) for n in range(5)] + [event(3)])
    result = ingest(settings, [path])
    # The stored evt-3 says other things (user u, no tokens) than the file's: a conflict, kept in failed_logs once.
    assert (result.read, result.stored, result.duplicates, result.failed) == (6, 4, 0, 2)
    assert query(settings, "SELECT kind, event_id FROM failed_logs") == [("conflict", "evt-3")]
    assert query(settings, "SELECT count(*), count(DISTINCT event_id), count(*) FILTER (event_key = hash(event_id)) "
                           "FROM usage_events") == [(5, 5, 5)]


def test_an_id_whose_key_a_stored_row_shares_is_stored_and_its_repeat_is_a_duplicate(settings, tmp_path):
    # Ids are told stored by their 64-bit key first, then compared. Two ids with one key are too rare to find,
    # so the collision is forged: another stored event carries evt-2's key.
    with store.writing(settings.db_path) as db:
        db.execute("INSERT INTO usage_events (event_id, ts, day, user_id, tenant_id, use_case, cost_usd, "
                   "price_source, ingested_at, event_key) VALUES ('other', now(), today(), 'u', 't', 'c', 0, "
                   "'override', now(), hash('evt-2'))")
    path = tmp_path / "events.jsonl"
    write_jsonl(path, [event(n) for n in range(5)] + [event(2)])
    result = ingest(settings, [path])
    assert (result.read, result.stored, result.duplicates, result.failed) == (6, 5, 1, 0)
    assert query(settings, "SELECT count(*) FROM usage_events WHERE event_id = 'evt-2'") == [(1,)]
    assert count(settings) == 6


@pytest.mark.parametrize("keys_collide", [False, True])
def test_bulk_rows_are_priced_as_each_event_alone_even_when_group_keys_collide(settings, tmp_path, monkeypatch,
                                                                                 keys_collide):
    # Bulk rows are priced per group of rows one price serves, told apart by a 64-bit key; should two
    # groups share one, they are priced by their names (forced here by giving every group the same key).
    import llmcost.ingestion.parse as parse_module
    from llmcost.pricing.rates import Pricer

    calls = []
    for name in ("price_groups_pico", "price_columns_pico"):
        original = getattr(parse_module, name)
        monkeypatch.setattr(parse_module, name,
                            lambda *args, _original=original, _name=name, **kwargs: calls.append(_name)
                            or _original(*args, **kwargs))
    if keys_collide:
        monkeypatch.setattr(parse_module, "_GROUP_KEY", "CAST(7 AS UBIGINT)")
    kinds = [("openai", "gpt-4o", {}), ("openai", "gpt-4o-mini", {"service_tier": "flex"}),
             ("anthropic", "claude-3-5-sonnet-20241022", {"cache_read_tokens": 300}),
             ("openai", "gpt-4o", {"response_model": "gpt-4o-2024-05-13"}), ("acme", "mystery-model", {}),
             ("openai", "gpt-4o", {"cost_usd": "0.25"})]
    records = [event(n, provider=provider, model=model, ts=f"2026-11-{10 + n % 3}T{n % 24:02d}:30:00Z", **extra)
               for n, (provider, model, extra) in ((n, kinds[n % len(kinds)]) for n in range(90))]
    path = tmp_path / "events.jsonl"
    write_jsonl(path, records)
    assert ingest(settings, [path]).stored == 90
    assert calls == ["price_columns_pico" if keys_collide else "price_groups_pico"]

    pricer = Pricer.from_settings(settings)
    stored = dict((event_id, (cost, source)) for event_id, cost, source in
                  query(settings, "SELECT event_id, cost_usd, price_source FROM usage_events"))
    for record in records:
        if "cost_usd" in record:
            expected = (Decimal(record["cost_usd"]), "provider")
        else:
            price = pricer.price(
                provider=record["provider"], model=record["model"],
                ts=datetime.fromisoformat(record["ts"].replace("Z", "+00:00")),
                **{name: record[name] for name in ("input_tokens", "output_tokens", "cache_read_tokens",
                                                   "response_model", "service_tier") if name in record})
            expected = (price.cost_usd, price.price_source)
        assert stored[record["event_id"]] == expected, record
    assert {source for _, source in stored.values()} == {"price-table", "default-rate", "provider"}
