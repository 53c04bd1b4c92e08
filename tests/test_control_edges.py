"""The live control state at its edges: dead callers' reservations, a replaced or corrupt file, a lock held
by another process, and one "today's spend" for every surface (issue 11, items 10-13)."""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
from decimal import Decimal
from pathlib import Path

import openai
import pytest

import llmcost
from llmcost.config import load_settings
from llmcost.control import audit as control_audit
from llmcost.control import file as control_file
from llmcost.control.migrations import MIGRATIONS
from llmcost.control.rebuild import day_spend
from llmcost.control.state import ControlState
from llmcost.dashboard import limits as dashboard_limits
from llmcost.errors import BudgetExceededError, ControlStateError, LLMCostError, SpendingHaltedError, UseCaseDisabledError
from llmcost.monitor import reports
from llmcost.sdk.tracker import Tracker
from llmcost.store import connection as store

DAY = dt.date(2025, 3, 14)


def cli(*args, check=True):
    result = subprocess.run([sys.executable, "-m", "llmcost", *args], capture_output=True, text=True, timeout=120,
                            env=os.environ.copy())
    if check and result.returncode != 0:
        raise AssertionError(f"llmcost {' '.join(args)} exited {result.returncode}: {result.stdout}{result.stderr}")
    return result


def today(settings):
    return dt.datetime.now(settings.tz).date()


class Child:
    """A Python process reading one command a line and answering one line each."""

    def __init__(self, code: str, *args: str):
        self.process = subprocess.Popen([sys.executable, "-c", textwrap.dedent(code), *args], stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, text=True, env=os.environ.copy())

    def ask(self, command: str = "") -> str:
        self.process.stdin.write(command + "\n")
        self.process.stdin.flush()
        line = self.process.stdout.readline().strip()
        assert line, f"the child process ended (exit code {self.process.poll()})"
        return line

    def close(self):
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(timeout=30)


# -- 10. reservations of dead processes, a bounded file, migrations --------------------------------

_BIG_CALL_THEN_HANG = """
import sys, time
from llmcost import Tracker
tracker = Tracker()
call = tracker.call(use_case="auto_populate", user_id="builder", tenant_id="t1", provider="openai",
                    model="gpt-4o-mini", account_type="lesson_builder", estimated_tokens=90_000)
call.start()
print("reserved", flush=True)
time.sleep(600)
"""


def test_a_killed_calls_reservation_no_longer_blocks_the_users_next_call(settings):
    child = subprocess.Popen([sys.executable, "-c", _BIG_CALL_THEN_HANG], stdout=subprocess.PIPE, text=True,
                             env=os.environ.copy())
    assert child.stdout.readline().strip() == "reserved"
    child.send_signal(signal.SIGKILL)  # kill -9 during the provider call: no finally, no atexit
    child.wait(timeout=30)
    with ControlState(settings.control_db) as control:
        assert control.in_flight() == 1  # the orphan is there...
        orphan_cost = control.system_spend(today(settings))
        assert orphan_cost > 0
    tracker = Tracker(settings)
    try:
        # ...but the next 20k call of the same user (100k hard limit) is admitted, not refused until midnight
        with tracker.call(use_case="auto_populate", user_id="builder", tenant_id="t1", provider="openai",
                          model="gpt-4o-mini", account_type="lesson_builder", estimated_tokens=20_000) as call:
            call.record(input_tokens=15_000, output_tokens=5_000)
        assert tracker.control.in_flight() == 0
        assert tracker.control.user_spend(today(settings), "builder")[0] == 20_000
        assert tracker.control.system_spend(today(settings)) < orphan_cost  # nor counts toward the shutdown
    finally:
        tracker.close()


def test_watch_releases_the_reservations_of_dead_processes(settings):
    child = subprocess.Popen([sys.executable, "-c", _BIG_CALL_THEN_HANG], stdout=subprocess.PIPE, text=True,
                             env=os.environ.copy())
    assert child.stdout.readline().strip() == "reserved"
    child.send_signal(signal.SIGKILL)
    child.wait(timeout=30)
    cli("watch", "--once")
    with ControlState(settings.control_db) as control:
        assert control.in_flight() == 0
        assert control.user_spend(today(settings), "builder") == (0, Decimal(0))


def test_a_reservation_older_than_the_ttl_is_released_even_when_its_process_lives(tmp_path):
    with ControlState(tmp_path / "control.sqlite") as control:
        held = control.reserve(DAY, "u1", "t1", "x", 500, Decimal("0.5"), limit_tokens=None, limit_cost=None,
                               enforce=False)
        assert control.maintain(DAY, reservation_ttl_seconds=3600) == 0  # alive and young: kept
        with sqlite3.connect(tmp_path / "control.sqlite") as raw:  # make it two hours old
            raw.execute("UPDATE reservation SET created_at = created_at - 7200")
        assert control.maintain(DAY, reservation_ttl_seconds=3600) == 1
        assert control.user_spend(DAY, "u1") == (0, Decimal(0))
        assert control.settle(held, 400, Decimal("0.4")) is True  # the call did end: its actuals count, once
        assert control.user_spend(DAY, "u1") == (400, Decimal("0.4"))


CALLS = 100_000
USERS = 500
CALLS_PER_DAY = 20_000
# The bound README states: a few hundred bytes per user per kept day (today and yesterday) plus the
# write-ahead log's size limit, whatever the number of calls.
SIZE_BOUND = 2 * USERS * 400 + control_file.WAL_SIZE_LIMIT_BYTES + 512 * 1024


def control_file_size(path: Path) -> int:
    return sum(p.stat().st_size for p in (path, Path(f"{path}-wal")) if p.exists())


def test_a_tracked_calls_settle_leaves_no_marker_behind(tmp_path):
    # Only a shared reservation (made with details, by the collector) is remembered after its settle; SQLite 3.40
    # answered `RETURNING details IS NOT NULL` with 1 for a NULL on the WITHOUT ROWID table, remembering every one.
    path = tmp_path / "control.sqlite"
    with ControlState(path) as control:
        plain = control.reserve(DAY, "user-1", "t1", "chat_tutor", 120, Decimal("0.0001"),
                                limit_tokens=None, limit_cost=None, enforce=False)
        assert control.settle(plain, 100, Decimal("0.00008"))
        assert not control.settled(plain.id)
        assert not control.settle(plain, 100, Decimal("0.00008"))  # a second settle is still refused
    with sqlite3.connect(path) as raw:
        assert raw.execute("SELECT count(*) FROM finished_reservation").fetchone()[0] == 0


@pytest.mark.slow
def test_the_control_file_stays_small_over_100000_calls(tmp_path):
    path = tmp_path / "control.sqlite"
    sizes = []
    with ControlState(path) as control:
        for n in range(CALLS):
            day = DAY + dt.timedelta(days=n // CALLS_PER_DAY)
            if n % CALLS_PER_DAY == 0:
                control.maintain(day, reservation_ttl_seconds=3600)  # what each tracker does as time passes
            reservation = control.reserve(day, f"user-{n % USERS}", "t1", "chat_tutor", 120, Decimal("0.0001"),
                                          limit_tokens=None, limit_cost=None, enforce=False)
            assert control.settle(reservation, 100, Decimal("0.00008"))
            if n % 10_000 == 9_999:
                sizes.append(control_file_size(path))
        assert control.user_spend(DAY + dt.timedelta(days=4), "user-0") == (4_000, Decimal("0.0032"))
    with sqlite3.connect(path) as raw:
        counts = {table: raw.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
                  for table in ("reservation", "finished_reservation", "spend")}
    assert counts == {"reservation": 0, "finished_reservation": 0, "spend": 2 * USERS}  # today and yesterday
    assert max(sizes) <= SIZE_BOUND, sizes
    assert sizes[-1] <= sizes[1] + 64 * 1024, sizes  # no growth with the number of calls


OLD_SCHEMA = """
CREATE TABLE IF NOT EXISTS kill_switch (use_case TEXT PRIMARY KEY, reason TEXT NOT NULL, disabled_at TEXT NOT NULL,
    disabled_by TEXT);
CREATE TABLE IF NOT EXISTS halt (day TEXT PRIMARY KEY, reason TEXT, halted_at TEXT, resumed_at TEXT);
CREATE TABLE IF NOT EXISTS spend (day TEXT NOT NULL, user_id TEXT NOT NULL, tokens INTEGER NOT NULL,
    cost_pico INTEGER NOT NULL, PRIMARY KEY (day, user_id)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS reservation (id TEXT PRIMARY KEY, day TEXT NOT NULL, user_id TEXT NOT NULL,
    tenant_id TEXT NOT NULL, use_case TEXT NOT NULL, tokens INTEGER NOT NULL, cost_pico INTEGER NOT NULL,
    created_at REAL NOT NULL, pid INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS reservation_by_day_user ON reservation (day, user_id);
CREATE TABLE IF NOT EXISTS finished_reservation (id TEXT PRIMARY KEY, day TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS rebuilt_day (day TEXT PRIMARY KEY, rebuilt_at TEXT NOT NULL);
"""


def schema_of(path: Path) -> dict[str, list[str]]:
    with sqlite3.connect(path) as raw:
        tables = [row[0] for row in raw.execute("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")]
        return {table: [row[1] for row in raw.execute(f"PRAGMA table_info({table})")] for table in tables}


def migrations_of(path: Path) -> list[str]:
    with sqlite3.connect(path) as raw:
        return [row[0] for row in raw.execute("SELECT name FROM _llmcost_migrations ORDER BY name")]


def test_a_blank_file_is_migrated_to_the_current_schema(tmp_path):
    path = tmp_path / "control.sqlite"
    ControlState(path).close()
    names = [fn.__name__ for fn in MIGRATIONS]
    assert migrations_of(path) == names
    with sqlite3.connect(path) as raw:
        assert raw.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)
    schema = schema_of(path)
    assert {"kill_switch", "halt", "spend", "reservation", "store_spend", "meta", "_llmcost_migrations"} <= set(schema)
    assert {"owner", "pid_started", "released_at"} <= set(schema["reservation"])
    with sqlite3.connect(path) as raw:  # keyed by their primary key alone: one b-tree less to write per call
        for table in ("reservation", "day_total", "spend"):
            with pytest.raises(sqlite3.OperationalError, match="rowid"):
                raw.execute(f"SELECT rowid FROM {table}")
    ControlState(path).close()
    assert migrations_of(path) == names  # reopening applies nothing twice


def test_an_old_format_file_is_migrated_with_its_state_kept(tmp_path):
    path = tmp_path / "control.sqlite"
    with sqlite3.connect(path) as raw:
        raw.executescript(OLD_SCHEMA)
        raw.execute("INSERT INTO kill_switch VALUES ('chat_tutor', 'runaway loop', '2025-03-14T09:00:00+00:00', 'ops')")
        raw.execute("INSERT INTO halt VALUES ('2025-03-14', 'incident 7', '2025-03-14T10:00:00+00:00', NULL)")
        raw.execute("INSERT INTO spend VALUES ('2025-03-14', 'u1', 1000, 2000000000000)")
        raw.execute("INSERT INTO reservation VALUES ('r1', '2025-03-14', 'u1', 't1', 'x', 10, 1000000000000, 1, 1)")
        raw.execute("INSERT INTO finished_reservation VALUES ('old', '2025-03-14')")
        raw.execute("INSERT INTO rebuilt_day VALUES ('2025-03-14', '2025-03-14T08:00:00+00:00')")
    with ControlState(path) as control:
        assert control.disabled_reason("chat_tutor") == "runaway loop"
        assert control.halt_reason(DAY, None) == "incident 7"
        assert control.user_spend(DAY, "u1") == (1010, Decimal(3))
        assert control.system_spend(DAY) == Decimal(3)  # day_total and the reservation kept through m002 and m004
        assert control.settle("r1", 8, Decimal("0.5")) is True
        assert control.user_spend(DAY, "u1") == (1008, Decimal("2.5"))
        assert control.needs_rebuild(DAY)  # spend rebuilt by the old rule is rebuilt by the current one
    assert migrations_of(path) == [fn.__name__ for fn in MIGRATIONS]


# -- 11. a deleted, replaced or corrupt control file -------------------------------------------------

_CALLER = """
import sys
from llmcost import Tracker, LLMCostError
tracker = Tracker()
for line in sys.stdin:
    try:
        with tracker.call(use_case="chat_tutor", user_id="u1", tenant_id="t1", provider="openai",
                          model="gpt-4o-mini", estimated_tokens=10) as call:
            call.record(input_tokens=5, output_tokens=5)
        print("allowed", flush=True)
    except LLMCostError as error:
        print("refused: " + str(error).replace("\\n", " "), flush=True)
"""


@pytest.mark.parametrize("how", ["deleted", "replaced"])
def test_a_running_process_obeys_a_kill_switch_set_in_a_new_control_file(settings, how):
    caller = Child(_CALLER)
    try:
        assert caller.ask() == "allowed"
        path = settings.control_db
        if how == "deleted":
            for suffix in ("", "-wal", "-shm"):
                Path(f"{path}{suffix}").unlink(missing_ok=True)
        else:
            ControlState(settings.control_db.with_name("restored.sqlite")).close()
            os.replace(settings.control_db.with_name("restored.sqlite"), path)
        with ControlState(path) as operator:
            operator.disable("chat_tutor", "runaway loop", by="ops")
        answer = caller.ask()
        assert answer.startswith("refused:") and "runaway loop" in answer
    finally:
        caller.close()


def test_kill_switches_halts_and_resumes_survive_a_deleted_control_file_and_are_audited(settings):
    cli("disable", "chat_tutor", "--reason", "runaway loop", "--by", "ops@example.com")
    cli("disable", "scaffolder", "--reason", "cost spike")
    cli("enable", "scaffolder")
    with ControlState(settings.control_db) as control:
        control.halt(DAY, "incident 7", by="oncall")
        control.halt(DAY + dt.timedelta(days=1), "incident 8")
        control.resume(DAY + dt.timedelta(days=1), by="oncall")
    for suffix in ("", "-wal", "-shm"):
        Path(f"{settings.control_db}{suffix}").unlink(missing_ok=True)
    with ControlState(settings.control_db) as fresh:
        assert fresh.disabled_reason("chat_tutor") == "runaway loop"
        assert fresh.disabled()["chat_tutor"]["disabled_by"] == "ops@example.com"
        assert fresh.disabled_reason("scaffolder") is None
        assert fresh.halt_reason(DAY, None) == "incident 7"
        assert fresh.halt_reason(DAY + dt.timedelta(days=1), Decimal(0)) is None  # resumed, even the automatic halt
    trail = [json.loads(line) for line in control_audit.audit_path_for(settings.control_db).read_text().splitlines()]
    assert [(e["action"], e.get("use_case") or e.get("day")) for e in trail] == [
        ("disable", "chat_tutor"), ("disable", "scaffolder"), ("enable", "scaffolder"),
        ("halt", "2025-03-14"), ("halt", "2025-03-15"), ("resume", "2025-03-15")]
    assert trail[0]["by"] == "ops@example.com" and trail[0]["reason"] == "runaway loop"
    assert all(e["at"] and e["by"] and e["host"] for e in trail)
    assert not list(settings.journal_dir.glob("*audit*"))  # not in the usage journal ingestion reads


def test_a_corrupt_control_file_is_set_aside_loudly_and_its_kill_switch_kept(settings, caplog):
    with ControlState(settings.control_db) as control:
        control.disable("chat_tutor", "runaway loop", by="ops")
    settings.control_db.write_bytes(b"this is not sqlite at all" * 100)
    tracker = Tracker(settings)
    try:
        with caplog.at_level(logging.ERROR, logger="llmcost"):
            with pytest.raises(UseCaseDisabledError, match="runaway loop"):
                with tracker.call(use_case="chat_tutor", user_id="u1", tenant_id="t1", estimated_tokens=10):
                    pass
        assert any(r.levelno == logging.ERROR and "corrupt" in r.getMessage() for r in caplog.records)
        assert tracker.control.set_aside is not None and tracker.control.set_aside.exists()
    finally:
        tracker.close()
    with store.writing(settings.db_path):  # check reads a store; an empty one is enough here
        pass
    check = cli("check", "--format", "json", check=False)
    assert check.returncode == 2, check.stdout + check.stderr
    alerts = json.loads(check.stdout)["alerts"]
    assert any(a["scope_id"] == "control_file" and a["level"] == "critical" and "corrupt" in a["message"]
               for a in alerts)


# -- 12. a locked control file -----------------------------------------------------------------------

_LOCK_HOLDER = """
import sqlite3, sys
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
for line in sys.stdin:
    if line.strip() == "lock":
        conn.execute("BEGIN IMMEDIATE")  # holds the write lock, as a backup tool or an `sqlite3` shell can
    else:
        conn.execute("ROLLBACK")
    print("done", flush=True)
"""


@pytest.fixture
def short_lock_wait(monkeypatch):
    monkeypatch.setattr(control_file, "BUSY_TIMEOUT_SECONDS", 0.2)


def openai_client(provider):
    return openai.OpenAI(base_url=provider.url + "/v1", api_key="test-key", max_retries=0)


def journal_events(settings):
    lines = [json.loads(line) for path in sorted(settings.journal_dir.glob("*.jsonl"))
             for line in path.read_bytes().splitlines()]
    return [line for line in lines if line.get("record") != "attempt"]


def test_a_locked_control_file_refuses_the_call_with_an_llmcost_error(settings, short_lock_wait, provider):
    tracker = Tracker(settings)
    holder = Child(_LOCK_HOLDER, str(settings.control_db))
    try:
        with tracker.call(use_case="chat_tutor", user_id="u1", tenant_id="t1", estimated_tokens=10) as call:
            call.record(input_tokens=5, output_tokens=5)  # the file exists and the day is rebuilt
        assert holder.ask("lock") == "done"
        client = tracker.wrap(openai_client(provider), use_case="chat_tutor", user_id="u1", tenant_id="t1")
        with pytest.raises(ControlStateError, match="locked") as refused:
            client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
        assert isinstance(refused.value, LLMCostError)
        assert provider.requests == []  # refused before the call: nothing paid
    finally:
        holder.close()
        tracker.close()


def test_on_control_error_allow_makes_the_call_and_records_why(settings, short_lock_wait, provider, tmp_path):
    config = tmp_path / "llmcost.toml"
    config.write_text('on_control_error = "allow"\n')
    allowing = load_settings(config=config)
    tracker = Tracker(allowing)
    holder = Child(_LOCK_HOLDER, str(allowing.control_db))
    try:
        with tracker.call(use_case="chat_tutor", user_id="u1", tenant_id="t1", estimated_tokens=10) as call:
            call.record(input_tokens=5, output_tokens=5)  # the file exists and the day is rebuilt
        assert holder.ask("lock") == "done"
        client = tracker.wrap(openai_client(provider), use_case="chat_tutor", user_id="u1", tenant_id="t1")
        response = client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
        assert response.usage.total_tokens == 1500
        event = journal_events(allowing)[-1]
        assert "locked" in event["metadata"]["control_error"] and event["total_tokens"] == 1500
    finally:
        holder.close()
        tracker.close()


def test_a_lock_during_the_provider_call_still_returns_the_response_and_settles_later(settings, short_lock_wait,
                                                                                     provider):
    tracker = Tracker(settings)
    holder = Child(_LOCK_HOLDER, str(settings.control_db))
    client = openai_client(provider)
    try:
        with tracker.call(use_case="chat_tutor", user_id="u1", tenant_id="t1", provider="openai", model="gpt-4o",
                          account_type="admin", estimated_tokens=100) as call:
            response = client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
            assert holder.ask("lock") == "done"  # locked while the provider answered
            call.record(response)
        # __exit__ did not raise: the caller has the response it paid for, and the usage is journaled
        assert response.usage.total_tokens == 1500
        (event,) = journal_events(settings)
        assert event["total_tokens"] == 1500
        assert holder.ask("unlock") == "done"
        with tracker.call(use_case="chat_tutor", user_id="u1", tenant_id="t1", provider="openai", model="gpt-4o",
                          account_type="admin", estimated_tokens=100) as call:
            call.record(input_tokens=60, output_tokens=40)
        # repaired at the next call: both calls' actual figures, no estimate left in flight
        assert tracker.control.in_flight() == 0
        assert tracker.control.user_spend(today(settings), "u1")[0] == 1600
    finally:
        holder.close()
        tracker.close()


# -- 13. one "today's spend" -------------------------------------------------------------------------

@pytest.mark.slow
def test_an_ingested_inbox_file_halts_the_tracker_as_check_says(settings):
    tracker = Tracker(settings)
    try:
        with tracker.call(use_case="chat_tutor", user_id="u1", tenant_id="t1", provider="openai",
                          model="gpt-4o-mini", estimated_tokens=10) as call:
            call.record(input_tokens=5, output_tokens=5)
        now = dt.datetime.now(dt.timezone.utc).isoformat()
        lines = [json.dumps({"event_id": f"export-{n}", "ts": now, "user_id": f"batch-{n}", "tenant_id": "t9",
                             "use_case": "bulk_import", "provider": "openai", "model": "gpt-4o",
                             "input_tokens": 1000, "output_tokens": 1000, "cost_usd": "50"}) for n in range(5)]
        (settings.inbox_dir / "export.jsonl").write_text("\n".join(lines) + "\n")
        cli("ingest")
        check = cli("check", "--format", "json", check=False)
        assert check.returncode == 2
        system = [a for a in json.loads(check.stdout)["alerts"] if a["scope"] == "system"]
        assert system[0]["level"] == "shutdown"
        figure = Decimal(system[0]["figure"])
        assert Decimal(250) < figure < Decimal("250.01")
        # the tracker agrees: it refuses the next call, as `check` says it does
        with pytest.raises(SpendingHaltedError, match="emergency shutdown"):
            with tracker.call(use_case="chat_tutor", user_id="u2", tenant_id="t1", estimated_tokens=10):
                pass
        day = today(settings)
        assert tracker.control.system_spend(day) == figure
        assert day_spend(settings, day) == figure
        assert dashboard_limits.system_spend_today(settings, day) == dashboard_limits.SystemSpend(
            figure, "shutdown", settings.system.shutdown_usd)
        assert reports.daily(settings, day).days[0]["level"] == "shutdown"
    finally:
        tracker.close()


def test_todays_spend_counts_a_tracker_call_once_before_and_after_ingest(settings):
    tracker = Tracker(settings)
    try:
        with tracker.call(use_case="chat_tutor", user_id="u1", tenant_id="t1", provider="openai",
                          model="gpt-4o", estimated_tokens=10) as call:
            call.record(input_tokens=1000, output_tokens=500)
        day = today(settings)
        live = day_spend(settings, day)
        assert live == Decimal("0.0075")  # 1,000 in at $2.50/MTok + 500 out at $10/MTok, not yet ingested
        cli("ingest")
        assert day_spend(settings, day) == live  # journaled, stored and settled live: counted once
        assert tracker.control.system_spend(day) == live
    finally:
        tracker.close()


def test_control_state_error_is_exported():
    assert llmcost.ControlStateError is ControlStateError and issubclass(ControlStateError, LLMCostError)
    assert BudgetExceededError is llmcost.BudgetExceededError


@pytest.mark.parametrize("wal_index", ["read", "missing"])
def test_data_version_changes_with_each_commit_of_another_process_and_only_then(tmp_path, monkeypatch, wal_index):
    # Read from the write-ahead log index's header; where it cannot be read (no os.pread), SQLite's PRAGMA answers.
    if wal_index == "missing":
        monkeypatch.delattr(os, "pread")
    control = ControlState(tmp_path / "control.sqlite")
    try:
        before = control.data_version()
        assert control.data_version() == before
        assert isinstance(before[1], bytes if wal_index == "read" else int)
        for step in ("c.disable('scaffolder', 'runaway loop')", "c.enable('scaffolder')"):
            subprocess.run([sys.executable, "-c", "import sys; from llmcost.control.state import ControlState; "
                            f"c = ControlState(sys.argv[1]); {step}", str(control.path)], check=True, timeout=60)
            after = control.data_version()
            assert after != before and control.data_version() == after
            before = after
        assert (wal_index == "read") == bool(control._wal_indexes)
    finally:
        control.close()
    assert control._wal_indexes == []
