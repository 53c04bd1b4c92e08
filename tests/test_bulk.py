"""The bulk (SQL) path must accept only records pydantic accepts unchanged, and type them identically."""

import json
from dataclasses import replace
from decimal import Decimal

import duckdb
import numpy as np
import pytest

from llmcost.events import UsageEvent
from llmcost.ingestion import bulk
from llmcost.ingestion.run import ingest
from llmcost.store import connection as store

BASE = {"event_id": "e1", "ts": "2026-11-20T10:00:00Z", "user_id": "u1", "tenant_id": "t1", "use_case": "chat_tutor",
        "provider": "openai", "model": "gpt-4o", "input_tokens": 1000, "output_tokens": 500}

CLEAN = [
    BASE,
    {**BASE, "ts": "2026-11-20 10:00:00.123456", "cache_read_tokens": 200, "reasoning_tokens": 100,
     "account_type": "student", "latency_ms": 812.5, "status": "error", "error": "Timeout: slow upstream",
     "usage_estimated": True, "estimated_tokens": 1400, "attempt_id": "a1", "metadata": {"lesson": 42}},
    {**BASE, "ts": "2026-11-20T12:00:00+02:00", "total_tokens": 1600, "provider": None, "model": None},
    {**BASE, "user_id": "u-ü-\u00e9\"quoted\"", "error": "line one\nline two \\ end ", "model": "gpt-4o"},  # escapes
    {**BASE, "cost_usd": "0.000123456789", "price_source": "price-table"},  # as the tracker journals it
    {**BASE, "cost_usd": "999999.999999999999"},                             # the provider's, at the limit
    {**BASE, "metadata": None, "input_tokens": None, "status": None, "event_id": None},  # null reads as absent
    {k: v for k, v in BASE.items() if k not in ("event_id", "input_tokens", "output_tokens")} | {"total_tokens": 1988},
]
NOT_CLEAN = [
    {**BASE, "user_id": " padded"},                    # pydantic strips whitespace
    {**BASE, "user_id": "u1\u00a0"},                    # a non-ASCII space at the edge
    {**BASE, "input_tokens": "1000"},                   # a string pydantic coerces
    {**BASE, "usage_estimated": "true"},
    {**BASE, "metadata": '{"lesson": 7}'},              # metadata as JSON text: pydantic's path parses it
    {**BASE, "user_id": 12345},                         # a number where a name belongs
    {**BASE, "user_id": True},
    {**BASE, "model": ["gpt-4o"]},
    {**BASE, "tenant_id": {"t": 1}},
    {**BASE, "input_tokens": True},
    {**BASE, "input_tokens": 12.5},
    {**BASE, "latency_ms": "inf"},
    {**BASE, "latency_ms": -1},
    {**BASE, "usage_estimated": 1},
    {**BASE, "metadata": "[1]"},
    {**BASE, "metadata": 5},
    {**BASE, "input_tokens": 1000.0},                   # a float pydantic coerces
    {**BASE, "input_tokens": -1},
    {**BASE, "input_tokens": 10**12},
    {**BASE, "cache_read_tokens": 2000},                # more cached than input
    {**BASE, "total_tokens": 10},                       # less than input + output
    {**BASE, "cost_usd": 0.01},                         # a cost as a number: pydantic's Decimal decides
    {**BASE, "cost_usd": "1e-3"},
    {**BASE, "cost_usd": "-0.5"},
    {**BASE, "cost_usd": "0.1234567890123"},            # 13 decimals
    {**BASE, "cost_usd": "1234567.5"},                  # 7 whole digits
    {**BASE, "cost_usd": "0.5", "price_source": "guess"},
    {**BASE, "status": "failed"},
    {**BASE, "ts": "2026-11-20"},                       # a date alone: pydantic decides
    {**BASE, "ts": "1999-01-01T00:00:00Z"},
    {**BASE, "unknown_key": 1},
    {**BASE, "user_id": "a\u0000b"},
    {k: v for k, v in BASE.items() if k != "user_id"},
    {"record": "attempt", "attempt_id": "a", "ts": "2026-11-20T10:00:00Z"},
    {"timestamp": "2026-11-20T10:00:00Z", "error": "disk full", "event": BASE},
]


def split(records, tz="UTC"):
    """(clean rows as dicts, sorted by idx; idx of the other lines)."""
    chunk = b"".join(json.dumps(r).encode() + b"\n" for r in records)
    db = duckdb.connect()
    db.execute("SET TimeZone = 'UTC'")
    lines = bulk.lines_table(chunk, 100)
    clean_idx = bulk.stage_json(db, lines, source_label="file:x.jsonl", timezone=tz)
    clean = db.sql(f"SELECT * FROM {bulk.CLEAN_ROWS} ORDER BY idx").to_arrow_table().to_pylist()
    return clean, sorted(set(range(lines.num_rows)) - set(clean_idx.tolist()))


def test_clean_records_take_the_bulk_path_with_pydantics_values():
    clean, others = split(CLEAN, tz="America/New_York")
    assert others == [] and len(clean) == len(CLEAN)
    for record, row in zip(CLEAN, clean):
        # A record without an event_id is staged without one: llmcost.ingestion.content_ids gives it one from its line.
        event = UsageEvent.model_validate({**record, "event_id": record.get("event_id") or "(none)",
                                           "source": "file:x.jsonl"})
        expected = event.model_dump()
        assert row["ts"] == expected["ts"].replace(tzinfo=None)
        assert row["day"] == expected["ts"].astimezone(__import__("zoneinfo").ZoneInfo("America/New_York")).date()
        for name in ("event_id", "user_id", "tenant_id", "use_case", "account_type", "provider", "model",
                     "input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens", "reasoning_tokens",
                     "total_tokens", "estimated_tokens", "usage_estimated", "latency_ms", "status", "error",
                     "attempt_id", "source"):
            assert row[name] == (expected[name] if name != "event_id" else record.get("event_id")), name
        assert (json.loads(row["metadata"]) if row["metadata"] else {}) == expected["metadata"]
        reported = None if expected["cost_usd"] is None else int(expected["cost_usd"].scaleb(12))
        assert (row["reported_pico"], row["reported_source"]) == (reported, expected["price_source"])


def test_strings_in_raw_utf8_keep_every_character_on_the_bulk_path():
    # Written without escapes, a string's text between its quotes is its value: a combining mark just after the
    # opening quote belongs to the value, though it joins the quote into one grapheme.
    record = {**BASE, "error": "\u0301 starts with a combining mark, é, 日本 \U0001F600", "model": "gpt-e\u0301-4o"}
    db = duckdb.connect()
    lines = bulk.lines_table(json.dumps(record, ensure_ascii=False).encode() + b"\n", 0)
    assert bulk.stage_json(db, lines, source_label="file:x.jsonl", timezone="UTC").tolist() == [0]
    assert db.execute(f"SELECT error, model FROM {bulk.CLEAN_ROWS}").fetchall() == [(record["error"], record["model"])]


@pytest.mark.parametrize("newline", [b"\n", b"\r\n"])
def test_lines_that_are_not_json_are_left_to_pydantic_and_their_neighbours_stay_in_bulk(newline):
    # A torn line (no closing brace, read by json_valid) and one that ends like an object but is not JSON
    # (read by the JSON functions, which raise, under TRY), each between clean lines, in one chunk.
    good = json.dumps(BASE).encode()
    bad = [good[: len(good) // 2], b'{"user_id": tru}', b'{"user_id": "u1",}']
    chunk = newline.join([good, *(line for b in bad for line in (b, good))]) + newline
    db = duckdb.connect()
    staged = bulk.stage_json(db, bulk.lines_table(chunk, 0), source_label="file:x.jsonl", timezone="UTC")
    assert sorted(staged.tolist()) == [0, 2, 4, 6]


@pytest.mark.parametrize("record", NOT_CLEAN, ids=lambda r: json.dumps(r)[:60])
def test_anything_unusual_is_left_to_pydantic(record):
    clean, others = split([record])
    assert clean == [] and others == [0]


def test_mixed_file_stores_the_same_as_pydantic_alone(settings, tmp_path):
    path = tmp_path / "mixed.jsonl"
    records = [{**r, "event_id": f"c{n}"} for n, r in enumerate(CLEAN)] + [
        {**BASE, "event_id": "n1", "user_id": " padded"}, {**BASE, "event_id": "n2", "input_tokens": "1000"},
        {**BASE, "event_id": "n3", "cost_usd": "0.5"}]
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    result = ingest(settings, [path])
    assert (result.stored, result.failed) == (len(records), 0)
    with store.reading(settings.db_path) as db:
        rows = dict(db.execute("SELECT event_id, user_id || '|' || input_tokens || '|' || cost_usd || '|' || price_source "
                               "FROM usage_events").fetchall())
    assert rows["n1"] == "padded|1000|0.007500000000|price-table"
    assert rows["n2"] == "u1|1000|0.007500000000|price-table"
    assert rows["n3"] == "u1|1000|0.500000000000|provider"
    assert rows["c0"] == rows["n2"]


def test_a_cost_beyond_the_column_is_kept_as_failed_not_crashing(settings, tmp_path):
    path = tmp_path / "huge.jsonl"
    huge = {**BASE, "event_id": "big", "model": "in-house-xl", "provider": "self", "output_tokens": 1_000_000_000,
            "input_tokens": 1_000_000_000}
    slow_path_twin = {**huge, "event_id": "big2", "input_tokens": "1000000000"}
    path.write_text("".join(json.dumps(r) + "\n" for r in (huge, slow_path_twin, {**BASE, "event_id": "fine"})))
    # 2e9 tokens at $1,000 per million tokens is $2M: more than a DECIMAL(18, 12) holds
    result = ingest(replace(settings, default_rate_per_mtok=Decimal("1000")), [path])
    assert (result.stored, result.failed) == (1, 2)
    with store.reading(settings.db_path) as db:
        errors = [r[0] for r in db.execute("SELECT error FROM failed_logs").fetchall()]
    assert len(errors) == 2 and all("beyond what the store holds" in e for e in errors)


def test_csv_rows_split_by_duckdb_fall_back_to_pydantic_when_unusual(settings, tmp_path):
    path = tmp_path / "usage.csv"
    path.write_text(
        "event_id,ts,user_id,tenant_id,use_case,provider,model,input_tokens,output_tokens,cost_usd,metadata\n"
        'a,2026-11-20T10:00:00Z,u1,t1,chat_tutor,openai,gpt-4o,1000,500,,"{""lesson"": 4}"\n'
        "\n"
        "b,2026-11-20T10:00:00Z,u1,t1,chat_tutor,openai,gpt-4o,1000,500,0.25,\n"
        "c,2026-11-20T10:00:00Z, u1 ,t1,chat_tutor,openai,gpt-4o,1000,500,,\n"
        "d,2026-11-20T10:00:00Z,u1,t1,chat_tutor,openai,gpt-4o,-4,500,,\n"
    )
    result = ingest(settings, [path])
    assert (result.read, result.stored, result.failed) == (4, 3, 1)
    with store.reading(settings.db_path) as db:
        rows = {r[0]: r[1:] for r in db.execute(
            "SELECT event_id, user_id, cost_usd, price_source, metadata FROM usage_events").fetchall()}
        reason = db.execute("SELECT error FROM failed_logs").fetchall()[0][0]
    assert rows["a"] == ("u1", Decimal("0.0075"), "price-table", '{"lesson":4}')
    assert rows["b"] == ("u1", Decimal("0.25"), "provider", None)
    assert rows["c"][0] == "u1"  # stripped by pydantic, as on the bulk path
    assert "input_tokens" in reason

    ragged = tmp_path / "ragged.csv"
    ragged.write_text("event_id,ts,user_id,tenant_id,use_case,input_tokens\n"
                      'e,2026-11-20T10:00:00Z,u1,t1,"chat\ntutor",5\n'
                      "f,2026-11-20T10:00:00Z,u1,t1,chat_tutor,5,extra\n"
                      "g,2026-11-20T10:00:00Z,u1,t1,chat_tutor,5\n")
    result = ingest(settings, [ragged])
    assert result.stored >= 1 and result.stored + result.failed == result.read
    with store.reading(settings.db_path) as db:
        assert db.execute("SELECT count(*) FROM usage_events WHERE event_id = 'g'").fetchall()[0][0] == 1
        reasons = " ".join(r[0] for r in db.execute("SELECT error FROM failed_logs").fetchall())
    assert "CSV row has 7 cells, the header 6" in reasons


ATTEMPT = {"record": "attempt", "attempt_id": "a1", "ts": "2026-11-20T10:00:00.5Z", "user_id": "u1", "tenant_id": "t1",
           "use_case": "chat_tutor", "account_type": None, "provider": "openai", "model": "gpt-4o",
           "estimated_tokens": 1400, "source": "svc"}  # as the tracker journals it
CLEAN_ATTEMPTS = [
    ATTEMPT,
    {**ATTEMPT, "source": None, "estimated_tokens": None, "ts": "2026-11-20T05:00:00-05:00"},
    {k: v for k, v in ATTEMPT.items() if k not in ("user_id", "model", "source")},
    {**ATTEMPT, "source": ""},  # an empty source reads as none: the file's label
]
OTHER_ATTEMPTS = [
    {**ATTEMPT, "extra": 1},                  # pydantic ignores it; the bulk path leaves it to pydantic
    {**ATTEMPT, "attempt_id": " padded "},
    {**ATTEMPT, "estimated_tokens": "12"},
    {**ATTEMPT, "attempt_id": 5},
    {**ATTEMPT, "record": "attempts"},
    {**ATTEMPT, "ts": "yesterday"},
    {**ATTEMPT, "user_id": ["u1"]},
    {**ATTEMPT, "attempt_id": ""},
]


def test_clean_call_attempts_take_the_bulk_path_with_pydantics_values():
    from llmcost.events import AttemptRecord

    records = [{**r, "attempt_id": f"{r['attempt_id']}-{n}"} for n, r in enumerate(CLEAN_ATTEMPTS)] + OTHER_ATTEMPTS + [BASE]
    chunk = b"".join(json.dumps(r).encode() + b"\n" for r in records)
    db = duckdb.connect()
    db.execute("SET TimeZone = 'UTC'")
    lines = bulk.lines_table(chunk, 0)
    events = bulk.stage_json(db, lines, source_label="file:x.jsonl", timezone="America/New_York")
    left = [n for n in range(len(records)) if n not in set(events.tolist())]
    attempts = bulk.stage_attempts(db, lines, np.array(left), source_label="file:x.jsonl",
                                   timezone="America/New_York")
    assert events.tolist() == [len(records) - 1]
    assert sorted(attempts.tolist()) == list(range(len(CLEAN_ATTEMPTS)))
    rows = db.sql(f"SELECT * FROM {bulk.CLEAN_ATTEMPTS} ORDER BY idx").to_arrow_table().to_pylist()
    for record, row in zip(records, rows):
        expected = AttemptRecord.model_validate(record).model_dump()
        assert row["ts"] == expected["ts"].astimezone(__import__("datetime").timezone.utc).replace(tzinfo=None)
        assert row["day"] == expected["ts"].astimezone(__import__("zoneinfo").ZoneInfo("America/New_York")).date()
        assert row["source"] == (expected["source"] or "file:x.jsonl")
        for name in ("attempt_id", "user_id", "tenant_id", "use_case", "account_type", "provider", "model",
                     "estimated_tokens"):
            assert row[name] == (expected[name] if name != "event_id" else record.get("event_id")), name


def test_call_attempts_store_alike_on_both_paths(settings, tmp_path):
    # The same attempts as journal lines (the bulk path, where clean) and in fallback-log entries
    # (always pydantic's path) must leave the same rows in call_attempts.
    records = [{**r, "attempt_id": f"{r['attempt_id']}-{n}"} if r["attempt_id"] and isinstance(r["attempt_id"], str)
               else r for n, r in enumerate(CLEAN_ATTEMPTS + OTHER_ATTEMPTS)]
    direct = tmp_path / "journal-like.jsonl"
    direct.write_text("".join(json.dumps(r) + "\n" for r in records))
    ingest(settings, [direct])
    with store.reading(settings.db_path) as db:
        from_lines = db.execute("SELECT * EXCLUDE (ingested_at, source) FROM call_attempts ORDER BY attempt_id").fetchall()
    settings.db_path.unlink()
    wrapped = tmp_path / "fallback-like.jsonl"
    wrapped.write_text("".join(json.dumps({"timestamp": "2026-11-20T10:00:00Z", "error": "disk full", "event": r}) + "\n"
                               for r in records))
    ingest(settings, [wrapped])
    with store.reading(settings.db_path) as db:
        from_fallback = db.execute(
            "SELECT * EXCLUDE (ingested_at, source) FROM call_attempts ORDER BY attempt_id").fetchall()
    assert len(from_lines) == len(CLEAN_ATTEMPTS) + 3  # extra key, padded id and "12" are pydantic's to accept
    assert from_lines == from_fallback


def test_csv_rows_duckdb_rejects_go_to_pydantic_and_the_rest_stay_in_bulk(settings, tmp_path, monkeypatch):
    import llmcost.ingestion.csv as csv_module

    bulk_rows = []
    original = csv_module.cells

    def spy(*args):
        cells, slow = original(*args)
        bulk_rows.append(0 if cells is None else cells.num_rows)
        return cells, slow

    monkeypatch.setattr(csv_module, "cells", spy)
    good = "{n},2026-11-20T10:00:00Z,u{n},t1,chat_tutor,openai,gpt-4o,1000,500"
    path = tmp_path / "usage.csv"
    path.write_bytes(b"\n".join([
        b"event_id,ts,user_id,tenant_id,use_case,provider,model,input_tokens,output_tokens",
        *(good.format(n=n).encode() for n in range(3)),
        b"short,2026-11-20T10:00:00Z,u1",                                          # too few cells
        b"",
        good.format(n=3).encode() + b",extra",                                     # too many
        b"   ",
        good.format(n=9).encode(),
        b"",
        good.format(n=4).encode().replace(b"chat_tutor", b"chat_\xfftutor"),      # not UTF-8
        *(good.format(n=n).encode() for n in range(5, 9)),
    ]) + b"\n")
    result = ingest(settings, [path])
    assert bulk_rows == [8]  # the 8 good rows were split by DuckDB, the bad ones left to pydantic
    assert (result.read, result.stored, result.failed) == (11, 8, 3)
    with store.reading(settings.db_path) as db:
        stored = {r[0]: r[1] for r in db.execute("SELECT event_id, user_id FROM usage_events").fetchall()}
        reasons = sorted(r[0] for r in db.execute("SELECT error FROM failed_logs").fetchall())
    assert stored == {str(n): f"u{n}" for n in (0, 1, 2, 5, 6, 7, 8, 9)}
    assert len(reasons) == 3 and "CSV row has 10 cells, the header 9" in reasons
    assert any("not valid UTF-8" in r for r in reasons) and any("user_id" in r or "tenant_id" in r for r in reasons)


def test_pick_reads_the_values_at_any_positions_across_chunks():
    lines = bulk.lines_table(b"".join(b'{"n": %d}\n' % n for n in range(3 * bulk.SCAN_BATCH_ROWS)), 0)
    assert lines.column("line").num_chunks == 3
    for idx in ([], [0], [5, bulk.SCAN_BATCH_ROWS, 2 * bulk.SCAN_BATCH_ROWS + 7], [9, 2, 20_000, 2]):
        assert bulk.pick(lines.column("line"), idx) == ['{"n": %d}\n' % n for n in idx]
