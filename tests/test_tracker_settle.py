"""A finished call's settle leaves the caller's path (`llmcost.control.settler`), and every read still sees it."""

from __future__ import annotations

import json
import logging
import sqlite3
import subprocess
import sys
import time
from decimal import Decimal

from llmcost.control.state import ControlState
from llmcost.money import local_day
from llmcost.sdk.tracker import Tracker

COMMON = dict(use_case="scaffolder", tenant_id="t", provider="openai", model="gpt-4o-mini")


def journaled(settings) -> list[dict]:
    return [json.loads(line) for path in sorted(settings.journal_dir.glob("*.jsonl"))
            for line in path.read_text().splitlines() if '"attempt"' not in line]


def locked(settings) -> sqlite3.Connection:
    """Another connection holding the control file's write lock (as an operator's `sqlite3` shell could)."""
    blocker = sqlite3.connect(settings.control_db, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")
    return blocker


def test_a_call_ends_while_the_control_file_is_locked_and_its_spend_is_seen_once_the_lock_goes(tracker, settings,
                                                                                                caplog):
    # Before: the call's end waited out the file's busy timeout (10 s) for its settle, which then failed
    # ("its spend is not yet in the control state"), and a read after the lock went still saw the estimate.
    with caplog.at_level(logging.ERROR, logger="llmcost"):
        with tracker.call(user_id="builder", account_type="lesson_builder", estimated_tokens=5_000, **COMMON) as call:
            call.record(input_tokens=900, output_tokens=100)
            blocker = locked(settings)
        assert [event["total_tokens"] for event in journaled(settings)] == [1_000]  # the durable record
        blocker.execute("ROLLBACK")
        blocker.close()
    day = local_day(call.started_at, settings.tz)
    assert tracker.control.user_spend(day, "builder") == (1_000, call.event.cost_usd)
    assert tracker.control.in_flight() == 0
    assert not [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]


def test_every_read_in_this_process_sees_each_finished_call(tracker, settings):
    operator = ControlState(settings.control_db)  # another handle on the file, as `llmcost budgets` opens
    tokens, cost = 0, Decimal(0)
    for n in range(30):
        with tracker.call(user_id="builder", account_type="lesson_builder", estimated_tokens=2_000, **COMMON) as call:
            call.record(input_tokens=10 + n, output_tokens=5)
        tokens, cost = tokens + 15 + n, cost + call.event.cost_usd
        day = local_day(call.started_at, settings.tz)
        assert operator.user_spend(day, "builder") == (tokens, cost)
        assert operator.in_flight() == 0
    operator.close()


def test_close_applies_pending_settles_so_another_process_sees_them(settings):
    tracker = Tracker(settings)
    with tracker.call(user_id="builder", account_type="lesson_builder", estimated_tokens=5_000, **COMMON) as call:
        call.record(input_tokens=400, output_tokens=100)
        blocker = locked(settings)
    blocker.execute("ROLLBACK")
    blocker.close()
    tracker.close()
    day = local_day(call.started_at, settings.tz)
    read = ("import sys; from llmcost.control.state import ControlState; "
            "c = ControlState(sys.argv[1]); print(c.user_spend(sys.argv[2], 'builder')[0], c.in_flight())")
    out = subprocess.run([sys.executable, "-c", read, str(settings.control_db), day.isoformat()], check=True,
                         capture_output=True, text=True).stdout.split()
    assert out == ["500", "0"]


def test_a_call_right_after_one_that_used_less_than_its_estimate_is_judged_on_the_actual(tracker, settings, caplog):
    # lesson_builder: hard limit of 100,000 tokens a day. The first call holds 90,000 until its settle is applied;
    # the next one fits only beside its actual 1,000, and must neither be refused nor warned.
    with tracker.call(user_id="builder", account_type="lesson_builder", estimated_tokens=90_000, **COMMON) as call:
        call.record(input_tokens=900, output_tokens=100)
        blocker = locked(settings)
    blocker.execute("ROLLBACK")
    blocker.close()
    with tracker.call(user_id="builder", account_type="lesson_builder", estimated_tokens=50_000, **COMMON) as second:
        second.record(input_tokens=900, output_tokens=100)
    assert "budget" not in second.event.metadata
    day = local_day(call.started_at, settings.tz)
    assert tracker.control.user_spend(day, "builder")[0] == 2_000


def test_a_wake_while_the_background_waits_idle_starts_the_ticks_again():
    # The background had stopped ticking (nothing to retire) and waits for settles with no timeout; a lease made
    # then wakes it, and its ticks (which retire the lease once idle) must start with no settle queued.
    import threading as threads_module

    from llmcost.control.settler import TICK_SECONDS, Settler

    ticks, wanted = threads_module.Semaphore(0), [False]

    def tick():
        ticks.release()
        return wanted[0]

    settler = Settler(lambda batch: [True] * len(batch), "test-a-wake-while-idle")
    settler.tick = tick
    try:
        settler.wake()
        assert ticks.acquire(timeout=5)  # the first tick finds nothing: the ticks stop
        time.sleep(5 * TICK_SECONDS)  # the background now waits for settles alone
        wanted[0] = True
        settler.wake()
        assert ticks.acquire(timeout=5)
    finally:
        settler.close()
