"""Calls admitted on a lease over Redis (`llmcost.control.lease`, `llmcost.control.redis_gates`): no round trip per
call, budgets held across trackers, settles that land, and switches from any client taking effect on the next call
once their message arrived."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import threading
import time

import pytest
import redis

from llmcost.config import AccountLimit
from llmcost.control.interface import Counter
from llmcost.control.redis_state import PREFIX, counter_key
from llmcost.errors import BudgetExceededError, SpendingHaltedError, UseCaseDisabledError
from llmcost.money import local_day
from llmcost.sdk.tracker import Tracker

from .test_tracker_lease import call, call_in_forked_child, lasting_leases  # noqa: F401  (a fixture)

HEARD_WITHIN_SECONDS = 10  # a bound for a loaded machine; the message takes about one network hop


@pytest.fixture
def settings(settings, redis_server):
    """Every test here on Redis (conftest's `tracker` then admits through it)."""
    return dataclasses.replace(settings, control_backend="redis", redis_url=redis_server.url)


@pytest.fixture
def raw(redis_server):
    """A plain client: reads through the control state would first apply this process's pending settles."""
    client = redis.Redis.from_url(redis_server.url, decode_responses=True)
    yield client
    client.close()


def other_client(settings, code: str) -> None:
    """Run `code` with a RedisControlState `c` in another process (an operator's CLI elsewhere)."""
    script = ("import sys; from llmcost.control.redis_state import RedisControlState; "
              f"c = RedisControlState(sys.argv[1]); {code}; c.close()")
    subprocess.run([sys.executable, "-c", script, settings.redis_url], check=True, capture_output=True)


def heard(tracker, before) -> bool:
    """Wait (bounded) until the tracker's listener heard a gate change since `before` (its data version then)."""
    deadline = time.monotonic() + HEARD_WITHIN_SECONDS
    while time.monotonic() < deadline:
        if tracker.control.data_version() != before:
            return True
        time.sleep(0.001)
    return False


def listening(tracker) -> int:
    """The tracker's data version once its listener is subscribed (it then stays put until a change)."""
    deadline = time.monotonic() + HEARD_WITHIN_SECONDS
    while time.monotonic() < deadline:
        first = tracker.control.data_version()
        if tracker.control.data_version() == first:
            return first
        time.sleep(0.001)
    raise AssertionError("the tracker never subscribed to the gates channel")


def live_tokens(raw, day, user: str) -> int:
    return int(raw.hget(counter_key(Counter(day.isoformat(), "user", user)), "lt") or 0)


def test_calls_on_a_lease_make_no_round_trip(tracker, settings, raw, lasting_leases):  # noqa: F811
    first = call(tracker)
    listening(tracker)
    call(tracker)  # judges the gates once more: the subscription's confirmation changed the version
    before = raw.info("stats")["total_commands_processed"]
    for _ in range(10):
        call(tracker)
    # Only the raw client's own INFO: the tracker sent nothing for its ten calls.
    assert raw.info("stats")["total_commands_processed"] - before == 1
    tracker.flush()
    assert live_tokens(raw, local_day(first.started_at, settings.tz), "builder") == 12 * 120


def test_another_clients_switch_refuses_this_trackers_next_call_once_heard(tracker, settings, lasting_leases):  # noqa: F811
    first = call(tracker)
    day = local_day(first.started_at, settings.tz).isoformat()
    for change, refusal, match in (("c.disable('scaffolder', 'runaway loop', by='ops')", UseCaseDisabledError,
                                    "runaway loop"),
                                   (f"c.halt('{day}', 'operator halt')", SpendingHaltedError, "operator halt")):
        before = listening(tracker)
        other_client(settings, change)
        assert heard(tracker, before)
        with pytest.raises(refusal, match=match):
            call(tracker)
        before = listening(tracker)
        other_client(settings, "c.enable('scaffolder')" if refusal is UseCaseDisabledError else f"c.resume('{day}')")
        assert heard(tracker, before)
        call(tracker)
    tracker.flush()
    assert tracker.control.user_spend(day, "builder")[0] == 3 * 120


def test_a_switch_in_this_process_refuses_the_very_next_call(tracker, settings, lasting_leases):  # noqa: F811
    call(tracker)
    listening(tracker)
    tracker.control.disable("scaffolder", "runaway loop")
    with pytest.raises(UseCaseDisabledError, match="runaway loop"):
        call(tracker)


def test_another_trackers_spend_reaching_the_shutdown_level_halts_this_trackers_leases(settings, tmp_path,
                                                                                        lasting_leases):  # noqa: F811
    ours = Tracker(settings)
    theirs = Tracker(dataclasses.replace(settings, home=tmp_path / "other-host"))
    try:
        call(ours)
        call(theirs, user="boss", account_type="super_admin")  # (its first call rebuilds figures, which also tells)
        listening(ours)
        call(ours)  # judges the gates as they are now
        before = ours.control.data_version()
        with theirs.call(user_id="boss", account_type="super_admin", estimated_tokens=10, use_case="scaffolder",
                         tenant_id="t", provider="openai", model="gpt-4o-mini") as tracked:
            tracked.record(input_tokens=5, output_tokens=5, cost_usd=settings.system.shutdown_usd)
        theirs.flush()
        assert heard(ours, before)
        with pytest.raises(SpendingHaltedError, match="emergency shutdown"):
            call(ours)
    finally:
        ours.close()
        theirs.close()


def test_two_trackers_race_a_hard_limit_on_leases_and_every_settle_lands(settings, tmp_path, raw):
    # 200,000 tokens a day; calls estimated at 1,000 use 1,000. Both trackers admit on leases (16 calls each) while
    # the limit has room for 4 more; near it, per call. The limit holds exactly: no call's actual exceeds its
    # estimate, so the reservations held what was spent.
    limits = dict(settings.limits, builder=AccountLimit("builder", 200_000, None, "hard"))
    trackers = [Tracker(dataclasses.replace(settings, limits=limits, home=tmp_path / name)) for name in "ab"]
    admitted, refused = [], []

    def race(tracker):
        while True:
            try:
                admitted.append(call(tracker, account_type="builder", estimated=1_000, used=(900, 100)))
            except BudgetExceededError:
                refused.append(tracker)
                return

    threads = [threading.Thread(target=race, args=(t,)) for t in trackers for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for tracker in trackers:
        tracker.close()  # settles every lease
    day = local_day(admitted[0].started_at, settings.tz)
    assert len(refused) == 6
    assert live_tokens(raw, day, "builder") == len(admitted) * 1_000 == 200_000
    assert raw.zcard(f"{PREFIX}inflight") == 0


def test_flush_settles_every_lease_and_an_idle_lease_settles_without_a_read(tracker, settings, raw):
    first = call(tracker)
    for _ in range(4):
        call(tracker)
    day = local_day(first.started_at, settings.tz)
    tracker.flush()
    assert live_tokens(raw, day, "builder") == 5 * 120
    assert raw.zcard(f"{PREFIX}inflight") == 0
    call(tracker)  # a new lease: settled by the settler once idle (0.25 s), with no read in this process
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and (live_tokens(raw, day, "builder"), raw.zcard(f"{PREFIX}inflight")) != (
            6 * 120, 0):
        time.sleep(0.05)
    assert (live_tokens(raw, day, "builder"), raw.zcard(f"{PREFIX}inflight")) == (6 * 120, 0)


def test_a_forked_child_admits_nothing_on_its_parents_lease(tracker, settings, raw, lasting_leases):  # noqa: F811
    first = call(tracker)
    call_in_forked_child(tracker)
    day = local_day(first.started_at, settings.tz)
    assert live_tokens(raw, day, "builder") == 120  # the child's call; the parent's lease is still open
    call(tracker)
    tracker.flush()
    assert live_tokens(raw, day, "builder") == 3 * 120
    assert raw.zcard(f"{PREFIX}inflight") == 0
