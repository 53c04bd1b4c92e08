"""Source files known by their content, not their name: rewritten, renamed, copied, linked, encoded, foreign."""

import csv
import datetime as dt
import gzip
import io
import json
import os
import shutil
import subprocess
import sys
import time
from decimal import Decimal

import pytest

from llmcost.control.rebuild import spend_rows
from llmcost.ingestion.run import ingest, pending
from llmcost.lines import encode_line
from llmcost.store import connection as store

CSV_FIELDS = ["ts", "user_id", "tenant_id", "use_case", "provider", "model", "input_tokens", "output_tokens"]


def record(n, **extra):
    """A usage record as an export writes it: no event_id, so its id comes from its content."""
    row = {"ts": f"2026-11-20T10:{n // 60 % 60:02d}:{n % 60:02d}Z", "user_id": f"user-{n % 3}", "tenant_id": "tenant-a",
           "use_case": "chat_tutor", "provider": "openai", "model": "gpt-4o", "input_tokens": 1000 + n,
           "output_tokens": 500}
    row.update(extra)
    return row


def jsonl(records) -> bytes:
    return b"".join(encode_line(r) for r in records)


def csv_text(records, fields=CSV_FIELDS) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    writer.writerows(records)
    return out.getvalue()


def query(settings, sql, params=()):
    with store.reading(settings.db_path) as db:
        return db.execute(sql, list(params)).fetchall()


def stored(settings) -> tuple[int, int]:
    """(rows, distinct event ids) in usage_events."""
    return query(settings, "SELECT count(*), count(DISTINCT event_id) FROM usage_events")[0]


def llmcost(*args, check=True):
    result = subprocess.run([sys.executable, "-m", "llmcost", *map(str, args)], capture_output=True, text=True,
                            timeout=120)
    assert not check or result.returncode == 0, result.stderr + result.stdout
    return result


def age(path, seconds=3600):
    """Make a file look unchanged for a while, instead of waiting for it to settle."""
    then = time.time() - seconds
    os.utime(path, (then, then))


# 1 -------------------------------------------------------------------------------------------------

def test_a_csv_export_rewritten_under_the_same_name_stores_every_new_row(settings):
    export = settings.inbox_dir / "export.csv"
    export.write_text(csv_text([record(n) for n in range(10)]))
    ingest(settings)
    export.write_text(csv_text([record(n) for n in range(100, 106)]))  # smaller: the next day's export
    second = ingest(settings)
    assert (second.stored, second.duplicates) == (6, 0)
    export.write_text(csv_text([record(n) for n in range(200, 212)]))  # larger: read from its start, not mid-line
    third = ingest(settings)
    assert (third.stored, third.failed) == (12, 0)
    assert stored(settings) == (28, 28)


def test_a_json_lines_file_rewritten_keeping_its_first_line_stores_every_new_record(settings):
    path = settings.inbox_dir / "daily.jsonl"
    path.write_bytes(jsonl([record(0)] + [record(n) for n in range(1, 5)]))
    ingest(settings)
    path.write_bytes(jsonl([record(0)] + [record(n) for n in range(300, 306)]))
    result = ingest(settings)
    # The first line is the same record as before (a duplicate); the six others are new.
    assert (result.stored, result.duplicates, result.failed) == (6, 1, 0)
    assert stored(settings) == (11, 11)


def test_identical_lines_in_one_file_are_separate_records_and_ids_never_collide_across_contents(settings, tmp_path):
    path = tmp_path / "repeats.jsonl"
    path.write_bytes(jsonl([record(1), record(1), record(2)]))
    ingest(settings, [path])
    assert stored(settings) == (3, 3)
    path.write_bytes(jsonl([record(1), record(1), record(1), record(3)]))  # one more of the same, and a new one
    result = ingest(settings, [path])
    assert (result.stored, result.duplicates) == (2, 2)
    assert stored(settings) == (5, 5)


# 2 -------------------------------------------------------------------------------------------------

def test_a_dropped_in_file_without_a_final_newline_stores_its_last_record_once_it_settles(settings):
    path = settings.inbox_dir / "joined.jsonl"
    path.write_text("\n".join(json.dumps(record(n)) for n in range(3)))
    first = ingest(settings)
    assert first.stored == 2  # just written: the last line may still be growing
    assert pending(settings)["inbox"] == 1
    assert "1 inbox records" in llmcost("status").stdout
    age(path)
    second = ingest(settings)
    assert (second.stored, second.failed) == (1, 0)
    assert stored(settings) == (3, 3) and pending(settings)["inbox"] == 0
    assert ingest(settings).read == 0


def test_the_settle_time_is_a_setting(settings, tmp_path):
    (tmp_path / "llmcost.toml").write_text("inbox_settle_seconds = 0\n")
    path = settings.inbox_dir / "joined.csv"
    path.write_text(csv_text([record(n) for n in range(4)]).rstrip("\n"))
    result = llmcost("ingest")
    assert "stored 4" in result.stdout
    assert stored(settings) == (4, 4)


# 3 -------------------------------------------------------------------------------------------------

def test_a_rotated_file_and_a_copy_are_not_counted_twice(settings):
    path = settings.inbox_dir / "x.jsonl"
    path.write_bytes(jsonl([record(n) for n in range(3)]))
    ingest(settings)
    path.rename(settings.inbox_dir / "x-20261202.jsonl")  # logrotate, then the writer starts a new file
    path.write_bytes(jsonl([record(n) for n in range(10, 13)]))
    ingest(settings)
    shutil.copy(settings.inbox_dir / "x-20261202.jsonl", settings.inbox_dir / "x (1).jsonl")
    result = ingest(settings)
    assert (result.stored, result.duplicates) == (0, 3)
    assert stored(settings) == (6, 6)
    total = query(settings, "SELECT sum(cost_usd) FROM usage_events")[0][0]
    assert total == sum(Decimal(1000 + n) * Decimal("0.0000025") + Decimal("0.005") for n in (0, 1, 2, 10, 11, 12))


# 4 -------------------------------------------------------------------------------------------------

def test_an_inbox_folder_that_is_a_link_is_read_once_by_schedule_and_by_path(settings, tmp_path):
    real = tmp_path / "shared-exports"
    real.mkdir()
    settings.inbox_dir.rmdir()
    settings.inbox_dir.symlink_to(real, target_is_directory=True)
    (real / "calls.jsonl").write_bytes(jsonl([record(n) for n in range(5)]))
    ingest(settings)
    again = ingest(settings, [real])
    assert (again.stored, again.read) == (0, 0)
    ingest(settings, [settings.inbox_dir / "calls.jsonl"])
    assert stored(settings) == (5, 5)


def test_a_journal_folder_that_is_a_link_does_not_make_the_spend_rebuild_read_stored_lines(settings, tmp_path):
    real = tmp_path / "journal-disk"
    real.mkdir()
    settings.journal_dir.rmdir()
    settings.journal_dir.symlink_to(real, target_is_directory=True)
    today = dt.datetime.now(settings.tz)
    # tracker calls (with their attempt ids): the ones the spend rebuild reads from journals
    events = [record(n, event_id=f"call-{n}", attempt_id=f"attempt-{n}", ts=today.isoformat(), user_id="u",
                     input_tokens=8000, output_tokens=2000) for n in range(5)]
    (real / "app.jsonl").write_bytes(jsonl(events))
    ingest(settings)
    tokens = sum(t for user, t, _ in spend_rows(settings, today.date()) if user == "u")
    assert tokens == 50_000


# 5 -------------------------------------------------------------------------------------------------

def test_the_same_event_id_with_other_content_is_kept_as_a_conflict(settings, tmp_path):
    first = tmp_path / "first.jsonl"
    first.write_bytes(jsonl([record(1, event_id="req-1")]))
    ingest(settings, [first])
    second = tmp_path / "second.jsonl"
    big = record(1, event_id="req-1", input_tokens=150_000)
    second.write_bytes(jsonl([big, record(1, event_id="req-1")]))
    result = ingest(settings, [second])
    assert (result.stored, result.duplicates, result.failed) == (0, 1, 1)
    assert query(settings, "SELECT input_tokens FROM usage_events WHERE event_id = 'req-1'") == [(1001,)]
    rows = query(settings, "SELECT kind, event_id, raw, recovered FROM failed_logs")
    assert len(rows) == 1
    kind, event_id, raw, recovered = rows[0]
    assert (kind, event_id, recovered) == ("conflict", "req-1", False) and json.loads(raw) == big
    assert ingest(settings, [second]).read == 0
    assert "1 not recovered" in llmcost("status").stdout


# 6 -------------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_rebuild_replays_files_ingested_by_path_and_names_the_gone_ones(settings, tmp_path):
    kept = tmp_path / "october.jsonl"
    kept.write_bytes(jsonl([record(n) for n in range(4)]))
    gone = tmp_path / "november.csv"
    gone.write_text(csv_text([record(n) for n in range(50, 52)]))
    llmcost("ingest", kept, gone)
    before = query(settings, "SELECT count(*), sum(cost_usd) FROM usage_events")[0]
    gone.unlink()
    result = llmcost("rebuild", "--yes")
    assert f"gone: {gone}" in result.stdout
    after = query(settings, "SELECT count(*), sum(cost_usd) FROM usage_events")[0]
    assert after[0] == 4 and before[0] == 6
    assert after[1] == sum(Decimal(1000 + n) * Decimal("0.0000025") + Decimal("0.005") for n in range(4))


# 7 -------------------------------------------------------------------------------------------------

def test_a_utf8_byte_order_mark_is_skipped_in_csv_and_json_lines(settings):
    (settings.inbox_dir / "excel.csv").write_bytes(csv_text([record(n) for n in range(3)]).encode("utf-8-sig"))
    (settings.inbox_dir / "bom.jsonl").write_bytes(b"\xef\xbb\xbf" + jsonl([record(n) for n in range(10, 13)]))
    result = ingest(settings)
    assert (result.stored, result.failed) == (6, 0)


def test_gzip_files_are_read(settings):
    with gzip.open(settings.inbox_dir / "calls.jsonl.gz", "wb") as f:
        f.write(jsonl([record(n) for n in range(3)]))
    with gzip.open(settings.inbox_dir / "export.csv.gz", "wt") as f:
        f.write(csv_text([record(n) for n in range(10, 12)]))
    result = ingest(settings)
    assert (result.stored, result.failed) == (5, 0)
    assert ingest(settings).stored == 0
    assert stored(settings) == (5, 5)
    # A newer export under the same name is read again: its new records are stored, the old ones are duplicates.
    with gzip.open(settings.inbox_dir / "calls.jsonl.gz", "wb") as f:
        f.write(jsonl([record(n) for n in range(4)]))
    assert (ingest(settings).stored, stored(settings)) == (1, (6, 6))


def test_utf16_is_refused_once_with_a_clear_reason(settings):
    (settings.inbox_dir / "excel.csv").write_bytes(csv_text([record(n) for n in range(3)]).encode("utf-16"))
    result = ingest(settings)
    assert (result.stored, result.failed) == (0, 1)
    assert ingest(settings).failed == 0
    [(kind, error)] = query(settings, "SELECT kind, error FROM failed_logs")
    assert kind == "refused" and error.startswith("UTF-16: convert to UTF-8")


# 8 -------------------------------------------------------------------------------------------------

def test_an_inbox_link_to_a_file_outside_the_data_folder_is_refused_unread(settings, tmp_path):
    secret = tmp_path / "llmcost-secrets.toml"
    secret.write_text('[email]\npassword = "hunter2"\n[slack]\nwebhook_url = "https://hooks.example/T0"\n')
    (settings.inbox_dir / "usage.jsonl").symlink_to(secret)
    output = llmcost("ingest").stdout
    assert "outside the data folder" in output
    rows = query(settings, "SELECT kind, error, raw FROM failed_logs")
    assert len(rows) == 1 and rows[0][0] == "refused" and rows[0][2] is None
    assert not query(settings, "SELECT 1 FROM failed_logs WHERE contains(coalesce(raw, '') || error, 'hunter2')")
    llmcost("ingest")
    assert query(settings, "SELECT count(*) FROM failed_logs") == [(1,)]


# 9 -------------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_a_file_that_is_no_usage_file_is_refused_whole_and_can_be_dismissed(settings, tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("# llmcost\n\n" + "\n".join(f"Line {n} of prose, not a record." for n in range(300)) + "\n")
    result = llmcost("ingest", readme)
    assert "failed 1" in result.stdout and "not a usage file" in result.stdout
    [(failed_id, kind, error)] = query(settings, "SELECT failed_id, kind, error FROM failed_logs")
    assert kind == "refused" and error.startswith("not a usage file")
    assert "1 LLM calls failed to log" in llmcost("check", check=False).stdout

    missing_reason = llmcost("failed", "dismiss", failed_id, check=False)
    assert missing_reason.returncode != 0 and "--reason" in missing_reason.stderr
    done = llmcost("failed", "dismiss", failed_id, "--reason", "ingested README.md by mistake", "--by", "ops")
    assert "Dismissed 1" in done.stdout
    [(reason, by, at)] = query(settings, "SELECT dismiss_reason, dismissed_by, dismissed_at FROM failed_logs")
    assert (reason, by) == ("ingested README.md by mistake", "ops") and at is not None
    assert "0 not recovered" in llmcost("status").stdout
    assert "0 unrecovered failed logs" in llmcost("check", check=False).stdout


def test_failed_logs_of_one_source_are_dismissed_by_filter(settings, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"ts": "not a time"}\n{"user_id": 3}\n')
    other = tmp_path / "other.jsonl"
    other.write_text('{"ts": "nope"}\n')
    ingest(settings, [bad, other])
    assert query(settings, "SELECT count(*) FROM failed_logs") == [(3,)]
    assert "Dismissed 2" in llmcost("failed", "dismiss", "--source", bad, "--reason", "test data").stdout
    assert query(settings, "SELECT source FROM failed_logs WHERE dismissed_at IS NULL") == [(str(other.resolve()),)]


def test_a_file_read_by_an_earlier_version_resumes_where_it_stopped(settings, tmp_path):
    import hashlib

    path = tmp_path / "old.jsonl"
    path.write_bytes(jsonl([record(n) for n in range(3)]))
    ingest(settings, [path])
    # The fingerprint earlier versions kept: the path and the first line. Their ids for records without
    # an event_id differ from today's, so reading such a file again from its start would count it twice.
    legacy = hashlib.sha1(str(path.resolve()).encode() + b"\n" + path.read_bytes().split(b"\n")[0] + b"\n").hexdigest()
    with store.writing(settings.db_path) as db:
        db.execute("UPDATE ingest_sources SET file_key = ?", [legacy])
    assert ingest(settings, [path]).read == 0
    with path.open("ab") as f:
        f.write(jsonl([record(7)]))
    assert (ingest(settings, [path]).stored, stored(settings)) == (1, (4, 4))


def test_a_file_whose_first_line_is_no_record_and_whose_next_is_long_is_read_not_refused(settings, tmp_path):
    # The sniff sees whole lines within its first megabyte only: one line that is no object must not
    # stand for the file when the next line does not end within that window (its record would be lost).
    path = tmp_path / "long-second-line.jsonl"
    long_record = {"event_id": "long", "ts": "2026-11-20T10:00:00Z", "user_id": "u1", "tenant_id": "t1",
              "use_case": "chat_tutor", "input_tokens": 5, "metadata": {"note": "x" * 2_000_000}}
    path.write_text('["not a record"]\n' + json.dumps(long_record) + "\n")
    result = ingest(settings, [path])
    assert (result.read, result.stored, result.failed) == (2, 1, 1)
    [(error,)] = query(settings, "SELECT error FROM failed_logs")
    assert "must be a JSON object" in error
