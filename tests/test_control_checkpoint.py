"""The tracker's control file is checkpointed by a thread of its own, not inside tracked calls."""

import sqlite3
import time

from llmcost.control import file as control_file
from llmcost.sdk.tracker import Tracker


def tracked_calls(tracker, count):
    for n in range(count):
        with tracker.call(use_case="chat", user_id=f"user-{n % 5}", tenant_id="acme", provider="openai",
                          model="gpt-4o-mini", prompt="hello") as call:
            call.record(input_tokens=10, output_tokens=5)


def wait_for(condition, seconds=20.0):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return condition()


def test_callers_leave_checkpoints_to_the_background_thread(settings, monkeypatch):
    monkeypatch.setattr(control_file, "CHECKPOINT_AT_BYTES", 1)
    tracker = Tracker(settings)
    try:
        tracked_calls(tracker, 1)
        caller = tracker.control._connection()
        assert caller.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == control_file.BACKSTOP_CHECKPOINT_PAGES
        thread = tracker.control._checkpointer[1]
        assert thread.name == "llmcost-control-checkpoint" and thread.is_alive()
        tracked_calls(tracker, 20)
        # Callers never checkpoint below the backstop, so settled spend reaching the file itself (not only its
        # write-ahead log) was the background thread's doing.
        def in_main_file():
            copy = settings.control_db.parent / "copy.sqlite"
            copy.write_bytes(settings.control_db.read_bytes())  # the file alone, without its -wal
            with sqlite3.connect(copy) as db:
                try:
                    return db.execute("SELECT count(*) FROM spend").fetchone()[0] > 0
                except sqlite3.DatabaseError:
                    return False
        assert wait_for(in_main_file)
    finally:
        tracker.close()
    assert not thread.is_alive()


def test_background_checkpoint_never_recreates_a_deleted_control_file(settings, monkeypatch):
    monkeypatch.setattr(control_file, "CHECKPOINT_AT_BYTES", 1)
    tracker = Tracker(settings)
    try:
        tracked_calls(tracker, 3)
        settings.control_db.unlink()
        time.sleep(10 * control_file.CHECKPOINT_INTERVAL_SECONDS)
        assert not settings.control_db.exists()
        tracked_calls(tracker, 1)  # the next call opens a new file, as before
        assert settings.control_db.exists()
    finally:
        tracker.close()


def test_a_background_settle_racing_a_deletion_never_creates_the_file(settings, monkeypatch):
    # The file is deleted just after the background settle saw it open (the race the test above hit 1 run in
    # 6-12): the settle must not open, and so create, a new file at the path (only a call does that).
    from decimal import Decimal

    from llmcost.control import state as control_state

    state = control_state.ControlState(settings.control_db)
    try:
        seen_open = state._file
        monkeypatch.setattr(control_state, "_identity", lambda path: seen_open)  # the check, before the deletion
        settings.control_db.unlink()
        state.settle_many_where_open([("no-such-reservation", 10, Decimal("0.001"))])
        assert not settings.control_db.exists()
    finally:
        state.close()


def test_only_opening_the_control_file_creates_it(settings):
    # A thread's first connection to a file that is open (another thread opened it) never creates one that has
    # gone meanwhile: that is for opening the file, which checks and migrates it.
    import threading

    from llmcost.control.state import ControlState

    state = ControlState(settings.control_db)
    try:
        settings.control_db.unlink()
        outcome = []

        def connect():
            try:
                outcome.append(state._connection())
            except sqlite3.Error as error:
                outcome.append(error)

        thread = threading.Thread(target=connect)
        thread.start()
        thread.join()
        assert isinstance(outcome[0], sqlite3.OperationalError)
        assert not settings.control_db.exists()
    finally:
        state.close()
