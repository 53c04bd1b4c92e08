"""Calls admitted on a lease (`llmcost.control.lease`): no write transaction per call, and no decision that
differs from admitting each call; switches from any process still take effect on the very next call."""

from __future__ import annotations

import dataclasses
import os
import sqlite3
import subprocess
import sys
import threading
import time

import pytest

from llmcost.config import AccountLimit
from llmcost.control import lease
from llmcost.errors import BudgetExceededError, SpendingHaltedError, UseCaseDisabledError
from llmcost.money import local_day
from llmcost.sdk.tracker import Tracker

COMMON = dict(use_case="scaffolder", tenant_id="t", provider="openai", model="gpt-4o-mini")


@pytest.fixture
def lasting_leases(monkeypatch):
    """Leases that stay open for the whole test (they are otherwise settled within a second, which on a loaded
    machine could leave a test admitting per call without noticing)."""
    monkeypatch.setattr(lease, "MAX_AGE_SECONDS", 600)
    monkeypatch.setattr(lease, "IDLE_SECONDS", 600)


def call(tracker, user="builder", account_type="admin", estimated=2_000, used=(100, 20)):
    with tracker.call(user_id=user, account_type=account_type, estimated_tokens=estimated, **COMMON) as tracked:
        tracked.record(input_tokens=used[0], output_tokens=used[1])
    return tracked


def control_cli(settings, code: str) -> None:
    script = f"import sys; from llmcost.control.state import ControlState; c = ControlState(sys.argv[1]); {code}"
    subprocess.run([sys.executable, "-c", script, str(settings.control_db)], check=True, capture_output=True)


def test_calls_on_a_lease_go_on_while_another_connection_holds_the_write_lock(tracker, settings, lasting_leases):
    # Before: each call's admission was a write transaction, which waited out the busy timeout (10 s) and refused
    # the call ("call refused: the control file ... stayed locked").
    first = call(tracker)
    blocker = sqlite3.connect(settings.control_db, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")
    try:
        calls = [call(tracker) for _ in range(5)]
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    day = local_day(first.started_at, settings.tz)
    assert tracker.control.user_spend(day, "builder") == (6 * 120, sum((c.event.cost_usd for c in [first, *calls])))
    assert tracker.control.in_flight() == 0


def test_a_switch_from_another_process_takes_effect_on_the_very_next_call(tracker, settings, lasting_leases):
    first = call(tracker)
    day = local_day(first.started_at, settings.tz).isoformat()
    control_cli(settings, "c.disable('scaffolder', 'runaway loop', by='ops')")
    with pytest.raises(UseCaseDisabledError, match="runaway loop"):
        call(tracker)
    control_cli(settings, "c.enable('scaffolder')")
    call(tracker)
    control_cli(settings, f"c.halt('{day}', 'operator halt')")
    with pytest.raises(SpendingHaltedError, match="operator halt"):
        call(tracker)
    control_cli(settings, f"c.resume('{day}')")
    call(tracker)
    assert tracker.control.user_spend(day, "builder")[0] == 3 * 120


@pytest.fixture(params=["sqlite", "redis"])
def either_backend(request, settings):
    """The settings on the SQLite file, then on a real Redis: both admit through the same leases."""
    if request.param == "sqlite":
        return settings
    redis_server = request.getfixturevalue("redis_server")
    return dataclasses.replace(settings, control_backend="redis", redis_url=redis_server.url)


@pytest.mark.parametrize("action", ["hard", "soft"])
def test_near_a_limit_every_decision_is_the_one_of_admitting_each_call(either_backend, action):
    # 1,000,000 tokens a day; each call is estimated at 5,000 and uses 1,000. Admitted one by one, the calls
    # numbered 0..995 fit (995 x 1,000 + 5,000 = 1,000,000) and call 996 goes past the limit: refused (hard),
    # or allowed with a warning (soft).
    settings = either_backend
    limits = dict(settings.limits, builder=AccountLimit("builder", 1_000_000, None, action))
    tracker = Tracker(dataclasses.replace(settings, limits=limits))
    try:
        warned = []
        for n in range(996):
            tracked = call(tracker, account_type="builder", estimated=5_000, used=(900, 100))
            if "budget" in tracked.event.metadata:
                warned.append(n)
        assert warned == []
        if action == "hard":
            with pytest.raises(BudgetExceededError, match="1,000,000 tokens limit, 996,000 used"):
                call(tracker, account_type="builder", estimated=5_000)
        else:
            tracked = call(tracker, account_type="builder", estimated=5_000, used=(900, 100))
            assert "soft limit exceeded" in tracked.event.metadata["budget"]
        day = local_day(tracked.started_at, settings.tz)
        assert tracker.control.user_spend(day, "builder")[0] == (996 if action == "hard" else 997) * 1_000
    finally:
        tracker.close()


def test_calls_of_many_threads_on_leases_are_each_counted_once(tracker, settings):
    ended = []

    def work():
        for _ in range(50):
            ended.append(call(tracker, used=(90, 10)))

    threads = [threading.Thread(target=work) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    day = local_day(ended[0].started_at, settings.tz)
    assert tracker.control.user_spend(day, "builder")[0] == 8 * 50 * 100
    assert tracker.control.in_flight() == 0


def test_an_idle_lease_is_settled_without_any_read_in_its_process(tracker, settings):
    # Another process sees the calls' actuals once the lease is idle (0.25 s), not at the tracker's close only.
    # Read with plain SQLite: a ControlState in this process would apply the lease itself before reading.
    first = call(tracker)
    day = local_day(first.started_at, settings.tz).isoformat()
    reader = sqlite3.connect(settings.control_db)
    deadline = time.monotonic() + 30
    seen = None
    while time.monotonic() < deadline:
        seen = reader.execute("SELECT (SELECT tokens FROM spend WHERE day = ? AND user_id = 'builder'), "
                              "(SELECT COUNT(*) FROM reservation)", (day,)).fetchone()
        if seen == (120, 0):
            break
        time.sleep(0.05)
    reader.close()
    assert seen == (120, 0)


def call_in_forked_child(tracker) -> None:
    """One call in a forked child of this process, which closes its tracker: its own lease (and, on Redis, its own
    listener), settled at its close; the parent's lease stays the parent's."""
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            call(tracker)
            tracker.close()
            code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0


def test_a_forked_child_admits_nothing_on_its_parents_lease(tracker, settings, lasting_leases):
    first = call(tracker)
    call_in_forked_child(tracker)
    call(tracker)
    day = local_day(first.started_at, settings.tz)
    assert tracker.control.user_spend(day, "builder")[0] == 3 * 120
    assert tracker.control.in_flight() == 0
