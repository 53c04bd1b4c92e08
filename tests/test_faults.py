"""Fault injection: the store, the journal and the fallback log failing for real, while records keep coming.

Every test ends by counting what was lost: the records the writers wrote, against the rows in the store
plus the rows kept in failed_logs. That count must be 0. (The store locked for a whole run, kill -9 in the
middle of a batch, and journal plus fallback log both unwritable are in test_ingest.py and test_tracker.py.)
"""

from __future__ import annotations

import contextlib
import datetime as dt
import errno
import json
import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import pytest
from click.testing import CliRunner

from llmcost.cli import cli
from llmcost.config import load_settings
from llmcost.errors import StoreCorruptError
from llmcost.ingestion.run import ingest, pending
from llmcost.lines import encode_line
from llmcost.sdk import fallback
from llmcost.sdk.journal import Journal
from llmcost.sdk.tracker import Tracker
from llmcost.store import connection as store

DISK_FULL = "OSError: [Errno 28] No space left on device"


def usage(event_id: str, **extra) -> dict:
    record = {
        "event_id": event_id,
        "ts": (dt.datetime.now(dt.timezone.utc) - dt.timedelta(hours=1)).isoformat(),
        "user_id": "u1",
        "tenant_id": "t1",
        "use_case": "chat_tutor",
        "provider": "openai",
        "model": "gpt-4o-mini",
        "input_tokens": 300,
        "output_tokens": 40,
    }
    record.update(extra)
    return record


def make_calls(tracker: Tracker, count: int, tag: str) -> list:
    calls = []
    for n in range(count):
        with tracker.call(use_case="chat_tutor", user_id=f"{tag}-u{n % 5}", tenant_id="t1",
                          account_type="super_admin", provider="openai", model="gpt-4o-mini") as call:
            call.record(input_tokens=300, output_tokens=40)
        calls.append(call)
    return calls


@dataclass
class Tally:
    """What became of the records the writers wrote."""

    written: int
    stored: int
    kept_as_failed: int
    lost: list[str] = field(default_factory=list)
    duplicates: int = 0

    def __str__(self) -> str:
        return (f"written {self.written}, stored {self.stored}, kept as failed {self.kept_as_failed}, "
                f"lost {len(self.lost)}, duplicates {self.duplicates}")


def tally(settings, event_ids: Iterable[str], attempt_ids: Iterable[str] = ()) -> Tally:
    """Count written records found in the store, found only as raw text in failed_logs, or nowhere."""
    event_ids, attempt_ids = set(event_ids), set(attempt_ids)
    with store.reading(settings.db_path) as db:
        events = [r[0] for r in db.execute("SELECT event_id FROM usage_events").fetchall()]
        attempts = [r[0] for r in db.execute("SELECT attempt_id FROM call_attempts").fetchall()]
        raws = [r[0] or "" for r in db.execute("SELECT raw FROM failed_logs WHERE event_id IS NULL").fetchall()]
    stored = (event_ids & set(events)) | (attempt_ids & set(attempts))
    missing = (event_ids | attempt_ids) - stored
    kept = {record_id for record_id in missing if any(record_id in raw for raw in raws)}
    return Tally(
        written=len(event_ids | attempt_ids),
        stored=len(stored),
        kept_as_failed=len(kept),
        lost=sorted(missing - kept),
        duplicates=(len(events) - len(set(events))) + (len(attempts) - len(set(attempts))),
    )


def assert_nothing_lost(result: Tally) -> None:
    print(f"loss count: {result}")
    assert result.lost == [] and result.duplicates == 0, str(result)


def stored_event_ids(settings) -> list[str]:
    with store.reading(settings.db_path) as db:
        return sorted(r[0] for r in db.execute("SELECT event_id FROM usage_events").fetchall())


def failed_rows(settings, where: str = "true") -> list[tuple]:
    with store.reading(settings.db_path) as db:
        return db.execute(f"SELECT kind, error, raw, event_id, recovered FROM failed_logs WHERE {where}").fetchall()


def stored_count(settings) -> int | None:
    """Events in the store, or None while it is missing or being recreated."""
    try:
        with store.reading(settings.db_path, timeout=5) as db:
            return None if db is None else db.execute("SELECT count(*) FROM usage_events").fetchall()[0][0]
    except Exception:  # the file vanished or is half-created between our check and the open: look again later
        return None


def wait_until(condition: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.1)
    return condition()


@contextlib.contextmanager
def running_watch(log_path):
    """`llmcost watch --interval 0.3` in its own process for the duration of the block; yields its log file."""
    with open(log_path, "wb") as log:
        watch = subprocess.Popen([sys.executable, "-m", "llmcost", "watch", "--interval", "0.3"],
                                 stdout=log, stderr=subprocess.STDOUT)
        try:
            yield log_path
        finally:
            watch.terminate()
            watch.wait(timeout=30)


def delete_store(settings) -> None:
    for path in (settings.db_path, settings.db_path.with_name(settings.db_path.name + ".wal")):
        path.unlink(missing_ok=True)


def rebuild_in_a_subprocess() -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "llmcost", "rebuild", "--yes"], capture_output=True, text=True,
                          timeout=120)


def record_files(settings) -> dict[str, bytes]:
    files = sorted(settings.journal_dir.glob("*.jsonl")) + [settings.fallback_log]
    return {path.name: path.read_bytes() for path in files if path.exists()}


# -- the store --------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_store_deleted_while_watch_runs_is_recreated_from_the_journals_with_every_event_once(settings, tmp_path):
    tracker = Tracker(settings)
    calls = []
    with running_watch(tmp_path / "watch.log") as watch_log:
        for round_number in range(3):
            calls += make_calls(tracker, 40, f"round{round_number}")
            expected = len(calls)
            assert wait_until(lambda: stored_count(settings) == expected, timeout=30), (  # noqa: B023 - called here
                f"the watch stored {stored_count(settings)} of {len(calls)} events")
            delete_store(settings)
        calls += make_calls(tracker, 40, "after")  # the tracker never needs the store: it keeps journaling
    tracker.close()
    events, attempts = [c.event.event_id for c in calls], [c.attempt_id for c in calls]

    ingest(settings)  # finishes what the watch had not reached before it stopped
    assert_nothing_lost(tally(settings, events, attempts))

    rebuilt = rebuild_in_a_subprocess()
    assert rebuilt.returncode == 0, rebuilt.stderr
    assert "Moved the old store to" in rebuilt.stdout and "stored 160" in rebuilt.stdout
    assert_nothing_lost(tally(settings, events, attempts))
    assert "Traceback" not in watch_log.read_text()


@pytest.mark.parametrize("blocker", ["the store's folder is a file", "the store path is a folder"])
def test_an_unusable_store_location_fails_naming_it_and_after_the_fix_everything_is_stored(
        blocker, settings, monkeypatch):
    journal = Journal(settings.journal_dir, fsync=False)
    journaled = [usage(f"journal-{n}") for n in range(30)]
    for record in journaled:
        journal.append(record)
    journal.close()
    rescued = [usage(f"fallback-{n}") for n in range(5)]
    for record in rescued:
        fallback.append(settings.fallback_log, record, DISK_FULL, fsync=False)

    if blocker == "the store's folder is a file":
        blocked = settings.home / "stores"
        blocked.write_text("a file where the store's folder should be")
        monkeypatch.setenv("LLMCOST_DB", str(blocked / "llmcost.duckdb"))
        fix = blocked.unlink
    else:
        blocked = settings.home / "llmcost-store.duckdb"
        blocked.mkdir()
        monkeypatch.setenv("LLMCOST_DB", str(blocked))
        fix = blocked.rmdir
    before = record_files(settings)

    failed_run = CliRunner().invoke(cli, ["ingest"])
    assert isinstance(failed_run.exception, SystemExit) and failed_run.exit_code == 1, (
        f"expected a clean CLI error, got {failed_run.exception!r}")
    assert str(blocked) in failed_run.output
    with pytest.raises(Exception) as library_error:
        ingest(load_settings())
    assert str(blocked) in str(library_error.value)
    assert record_files(settings) == before, "the journals and the fallback log must be left untouched"

    fix()
    fixed_run = CliRunner().invoke(cli, ["ingest"])
    assert fixed_run.exit_code == 0, fixed_run.output
    assert "stored 35" in fixed_run.output
    assert_nothing_lost(tally(load_settings(), [r["event_id"] for r in journaled + rescued]))


CORRUPTIONS = {
    "garbage over the whole file": lambda data: os.urandom(len(data)),
    "garbage after the file header": lambda data: data[:12288] + os.urandom(len(data) - 12288),
    "truncated": lambda data: data[:5000],
}


@pytest.mark.parametrize("corruption", CORRUPTIONS)
def test_a_damaged_store_names_llmcost_rebuild_and_rebuild_restores_every_event(corruption, settings):
    # (Not "corrupted" in the name: it would be in tmp_path, and store.py looks for "corrupt" in the error text.)
    tracker = Tracker(settings)
    calls = make_calls(tracker, 20, "before")
    tracker.close()
    rescued = [usage(f"fallback-{n}") for n in range(5)]
    for record in rescued:
        fallback.append(settings.fallback_log, record, DISK_FULL, fsync=False)
    assert ingest(settings).stored == 25

    garbage = CORRUPTIONS[corruption](settings.db_path.read_bytes())
    settings.db_path.write_bytes(garbage)
    with pytest.raises(Exception) as ingest_error:
        ingest(settings)
    with pytest.raises(Exception) as read_error:
        with store.reading(settings.db_path) as db:
            db.execute("SELECT count(*) FROM usage_events").fetchall()

    for caught in (ingest_error, read_error):
        assert isinstance(caught.value, StoreCorruptError), repr(caught.value)
        assert "llmcost rebuild" in str(caught.value) and str(settings.db_path) in str(caught.value)

    rebuilt = rebuild_in_a_subprocess()
    assert rebuilt.returncode == 0, rebuilt.stderr
    assert "stored 25" in rebuilt.stdout
    kept_aside = list(settings.db_path.parent.glob(settings.db_path.name + ".*.old"))
    assert len(kept_aside) == 1 and kept_aside[0].read_bytes() == garbage, "the damaged file must be kept aside"
    events = [c.event.event_id for c in calls] + [r["event_id"] for r in rescued]
    assert_nothing_lost(tally(settings, events, [c.attempt_id for c in calls]))


# -- the journal and the fallback log ---------------------------------------------------------------------

DISK_FULL_TRACKER = textwrap.dedent("""
    import datetime as dt, json, logging, resource, sys
    # A bug that reads /dev/full without end must fail here with MemoryError, not exhaust the machine.
    resource.setrlimit(resource.RLIMIT_AS, (2 * 1024**3, resource.RLIM_INFINITY))
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    from llmcost.sdk.tracker import Tracker
    tracker = Tracker()
    tracker.ensure_control_rebuilt(dt.datetime.now(tracker.settings.tz).date())  # before the disk fills up
    journal_path = tracker.journal.path_for(dt.datetime.now(dt.timezone.utc).date())
    journal_path.symlink_to("/dev/full")   # from now on every journal write fails with a real ENOSPC
    calls = []
    for n in range(int(sys.argv[1])):
        with tracker.call(use_case="chat_tutor", user_id=f"u{n % 4}", tenant_id="t1", account_type="admin",
                          provider="openai", model="gpt-4o-mini") as call:
            call.record(input_tokens=200, output_tokens=20)
        calls.append(call)
    tracker.close()
    print(json.dumps({"journal": str(journal_path), "events": [c.event.event_id for c in calls],
                      "attempts": [c.attempt_id for c in calls]}))
""")


def test_journal_disk_full_sends_records_to_the_fallback_log_and_ingest_stores_them_once(settings):
    count = 12
    run = subprocess.run([sys.executable, "-c", DISK_FULL_TRACKER, str(count)], capture_output=True, text=True,
                         timeout=120)
    assert run.returncode == 0, run.stderr[-3000:]
    written = json.loads(run.stdout.splitlines()[-1])
    assert "ERROR llmcost: journal write failed" in run.stderr and "No space left on device" in run.stderr

    entries = [json.loads(line) for line in settings.fallback_log.read_bytes().splitlines()]
    assert len(entries) == 2 * count  # an attempt and a usage record per call
    assert all("No space left on device" in entry["error"] for entry in entries)
    assert {e["event"].get("event_id") for e in entries} >= set(written["events"])

    os.unlink(written["journal"])  # the disk has room again
    result = ingest(settings)
    assert (result.stored, result.attempts, result.failed) == (count, count, 0)
    assert ingest(settings).read == 0
    assert_nothing_lost(tally(settings, written["events"], written["attempts"]))
    recovered = failed_rows(settings, "kind = 'fallback' AND event_id IS NOT NULL AND recovered")
    assert sorted(r[3] for r in recovered) == sorted(written["events"])
    assert failed_rows(settings, "NOT recovered") == []


def test_call_attempts_recovered_from_the_fallback_log_are_marked_recovered(settings):
    now = dt.datetime.now(dt.timezone.utc).isoformat()
    attempt = {"record": "attempt", "attempt_id": "attempt-1", "ts": now, "user_id": "u1", "tenant_id": "t1",
               "use_case": "chat_tutor", "estimated_tokens": 300}
    fallback.append(settings.fallback_log, attempt, DISK_FULL, fsync=False)
    fallback.append(settings.fallback_log, usage("event-1", attempt_id="attempt-1"), DISK_FULL, fsync=False)
    result = ingest(settings)
    assert (result.stored, result.attempts) == (1, 1)
    assert_nothing_lost(tally(settings, ["event-1"], ["attempt-1"]))
    assert failed_rows(settings, "NOT recovered") == []


KILLED_MID_WRITE = textwrap.dedent("""
    import fcntl, os, signal, sys
    # Appends as fallback.append does (under the lock, in one write), but dies halfway through the line.
    line, cut = sys.stdin.buffer.read(), int(sys.argv[2])
    fd = os.open(sys.argv[1], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    fcntl.flock(fd, fcntl.LOCK_EX)
    os.write(fd, line[:cut])
    os.kill(os.getpid(), signal.SIGKILL)
""")


def kill_a_writer_mid_line(path, record: dict) -> tuple[bytes, int]:
    """Append part of a fallback-log line from a process killed mid-write; return the whole line and the cut."""
    line = encode_line(fallback.wrap(record, DISK_FULL))
    cut = line.index(record["event_id"].encode()) + len(record["event_id"]) + 5  # the fragment names the event
    writer = subprocess.run([sys.executable, "-c", KILLED_MID_WRITE, str(path), str(cut)], input=line, timeout=60)
    assert writer.returncode == -9
    assert path.read_bytes().endswith(line[:cut])
    return line, cut


def test_a_fallback_line_torn_by_a_killed_writer_waits_and_is_stored_once_when_completed(settings):
    whole = [usage(f"whole-{n}") for n in range(3)]
    for record in whole:
        fallback.append(settings.fallback_log, record, DISK_FULL, fsync=False)
    line, cut = kill_a_writer_mid_line(settings.fallback_log, usage("torn-0"))

    first = ingest(settings)
    assert (first.read, first.stored, first.failed) == (3, 3, 0)
    assert pending(settings) == {"journal": 0, "fallback": 0, "inbox": 0}
    assert ingest(settings).read == 0  # a second look does not half-parse it either
    assert stored_event_ids(settings) == ["whole-0", "whole-1", "whole-2"]
    assert not [row for row in failed_rows(settings) if "torn-0" in row[2]]

    with settings.fallback_log.open("ab") as f:
        f.write(line[cut:])
    second = ingest(settings)
    assert (second.read, second.stored, second.failed) == (1, 1, 0)
    assert failed_rows(settings, "kind = 'invalid'") == []
    assert_nothing_lost(tally(settings, [r["event_id"] for r in whole] + ["torn-0"]))


def test_a_record_appended_after_a_torn_fallback_line_is_stored(settings):
    fallback.append(settings.fallback_log, usage("before"), DISK_FULL, fsync=False)
    kill_a_writer_mid_line(settings.fallback_log, usage("torn-0"))
    later = [usage(f"later-{n}") for n in range(2)]
    for record in later:  # other processes keep writing after the killed one
        fallback.append(settings.fallback_log, record, DISK_FULL, fsync=False)

    ingest(settings)
    assert_nothing_lost(tally(settings, ["before", "torn-0", "later-0", "later-1"]))
    assert stored_event_ids(settings) == ["before", "later-0", "later-1"]
    kept = failed_rows(settings, "kind = 'invalid'")
    assert len(kept) == 1 and "torn-0" in kept[0][2] and "later-" not in kept[0][2]


SHORT_JOURNAL_WRITE = textwrap.dedent("""
    import datetime as dt, json, resource, signal
    from llmcost.sdk.tracker import Tracker
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the size limit returns short, as on a full disk
    tracker = Tracker()
    def call(user):
        with tracker.call(use_case="chat_tutor", user_id=user, tenant_id="t1", account_type="admin",
                          provider="openai", model="gpt-4o-mini") as call:
            call.record(input_tokens=200, output_tokens=20)
        return call
    first = call("u1")
    journal = tracker.journal.path_for(dt.datetime.now(dt.timezone.utc).date())
    limit = journal.stat().st_size + 40
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.RLIM_INFINITY))   # the disk fills up
    squeezed = {"event_id": "squeezed", "ts": dt.datetime.now(dt.timezone.utc).isoformat(), "user_id": "u2",
                "tenant_id": "t1", "use_case": "chat_tutor", "input_tokens": 5}
    journal_error = tracker.write(squeezed)   # 40 bytes reach the journal, the record goes to the fallback log
    resource.setrlimit(resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))  # room again
    last = call("u3")
    tracker.close()
    print(json.dumps({"journal_errno": journal_error.errno, "events": [first.event.event_id, "squeezed",
                      last.event.event_id], "attempts": [first.attempt_id, last.attempt_id]}))
""")


def test_a_journal_line_torn_by_a_full_disk_does_not_swallow_the_next_record(settings):
    run = subprocess.run([sys.executable, "-c", SHORT_JOURNAL_WRITE], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-3000:]
    written = json.loads(run.stdout.splitlines()[-1])
    assert written["journal_errno"] == errno.ENOSPC

    ingest(settings)
    result = tally(settings, written["events"], written["attempts"])
    assert_nothing_lost(result)
    assert result.stored == result.written, f"valid records left as raw text in failed_logs: {result}"


APPENDER = textwrap.dedent("""
    import sys
    from pathlib import Path
    from llmcost.sdk import fallback
    from llmcost.sdk.journal import Journal
    worker, count, home = int(sys.argv[1]), int(sys.argv[2]), Path(sys.argv[3])
    journal = Journal(home / "journal", fsync=False)
    for n in range(count):
        pad = "x" * ((worker * 997 + n * 131) % 9000)   # lines up to ~9 KB, past PIPE_BUF, to expose interleaving
        record = {"event_id": f"w{worker}-{n}", "ts": sys.argv[4], "user_id": f"u{worker}", "tenant_id": "t1",
                  "use_case": "chat_tutor", "input_tokens": 10, "output_tokens": 5, "metadata": {"pad": pad}}
        if n % 3 == 2:
            fallback.append(home / "emergency-token-usage.jsonl", record, "OSError: [Errno 28] disk full", fsync=False)
        else:
            journal.append(record)
""")


@pytest.mark.slow
def test_eight_writers_with_watch_running_store_every_line_whole_and_once(settings, tmp_path):
    started = time.monotonic()
    writers, per_writer = 8, 150
    expected = writers * per_writer
    ts = (dt.datetime.now(dt.timezone.utc) - dt.timedelta(hours=1)).isoformat()
    with running_watch(tmp_path / "watch.log") as watch_log:
        procs = [subprocess.Popen([sys.executable, "-c", APPENDER, str(w), str(per_writer), str(settings.home), ts])
                 for w in range(writers)]
        assert [p.wait(timeout=60) for p in procs] == [0] * writers
        caught_up = wait_until(lambda: stored_count(settings) == expected, timeout=30)
    assert caught_up, f"the watch stored {stored_count(settings)} of {expected} events"
    assert ingest(settings).stored == 0  # the watch left nothing behind

    lines = []
    for path in [*settings.journal_dir.glob("*.jsonl"), settings.fallback_log]:
        lines += [json.loads(line) for line in path.read_bytes().splitlines()]  # every line whole
    ids = [line["event"]["event_id"] if "event" in line else line["event_id"] for line in lines]
    assert sorted(ids) == sorted(f"w{w}-{n}" for w in range(writers) for n in range(per_writer))
    assert failed_rows(settings, "kind = 'invalid'") == []
    assert_nothing_lost(tally(settings, ids))
    assert "Traceback" not in watch_log.read_text()
    assert time.monotonic() - started < 60
