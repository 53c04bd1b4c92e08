import datetime as dt
import json
import sqlite3
import subprocess
import sys
import threading
import time
from decimal import Decimal
from pathlib import Path

import pytest

from llmcost.control.state import ControlState, Reservation
from llmcost.errors import BudgetExceededError
from llmcost.money import from_picodollars, to_picodollars

DAY = dt.date(2025, 3, 14)
NEXT_DAY = dt.date(2025, 3, 15)


@pytest.fixture(autouse=True)
def _home(tmp_path, monkeypatch):
    monkeypatch.setenv("LLMCOST_HOME", str(tmp_path))


@pytest.fixture
def control_path(tmp_path) -> Path:
    return tmp_path / "control.sqlite"


@pytest.fixture
def control(control_path):
    with ControlState(control_path) as state:
        yield state


def reserve(control, cost, tokens=0, *, user="u1", day=DAY, limit_tokens=None, limit_cost=None, enforce=False, **kw):
    return control.reserve(day, user, "t1", "chat_tutor", tokens, Decimal(cost),
                           limit_tokens=limit_tokens, limit_cost=limit_cost, enforce=enforce, **kw)


def spend(control, cost, tokens=0, *, user="u1", day=DAY):
    reservation = reserve(control, cost, tokens, user=user, day=day)
    assert control.settle(reservation.id, tokens, Decimal(cost))


# -- file and money ------------------------------------------------------------------------------

def test_file_is_sqlite_in_wal_mode_and_reopens(control_path, control):
    spend(control, "0.25", 10)
    with sqlite3.connect(control_path) as raw:
        assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    with ControlState(control_path) as again:
        assert again.user_spend(DAY, "u1") == (10, Decimal("0.25"))
        assert not again.recreated


def test_picodollars_are_exact_and_estimates_round_up():
    assert to_picodollars(Decimal("0.000000000001")) == 1
    assert to_picodollars(Decimal("1234567.123456789012")) == 1234567123456789012
    assert from_picodollars(1234567123456789012) == Decimal("1234567.123456789012")
    assert to_picodollars(Decimal("0.0000000000001")) == 1  # below a picodollar: never under-reserve
    assert to_picodollars(3) == 3 * 10**12
    with pytest.raises(TypeError, match="Decimal"):
        to_picodollars(0.05)
    with pytest.raises(ValueError, match=">= 0"):
        to_picodollars(Decimal("-1"))


def test_sums_of_tiny_amounts_are_exact(control):
    for _ in range(1000):
        spend(control, "0.000000000001", 1)
    spend(control, "0.1")
    spend(control, "0.2")
    assert control.user_spend(DAY, "u1") == (1000, Decimal("0.300000001000"))
    assert control.system_spend(DAY) == Decimal("0.300000001")


def test_corrupt_file_is_set_aside_and_recreated(control_path):
    control_path.write_bytes(b"this is not sqlite at all" * 100)
    with ControlState(control_path) as control:
        assert control.recreated
        assert control.needs_rebuild(DAY)
        spend(control, "1")
        assert control.system_spend(DAY) == Decimal("1")
    assert list(control_path.parent.glob("control.sqlite.corrupt-*"))


# -- kill switches -------------------------------------------------------------------------------

def test_kill_switch_is_seen_by_another_state_on_the_same_file(control_path, control):
    other = ControlState(control_path)
    assert other.disabled_reason("chat_tutor") is None
    control.disable("chat_tutor", "runaway loop", by="ops@example.com")
    assert other.disabled_reason("chat_tutor") == "runaway loop"
    assert other.disabled_reason("scaffolder") is None
    info = other.disabled()["chat_tutor"]
    assert info["reason"] == "runaway loop" and info["disabled_by"] == "ops@example.com"
    assert dt.datetime.fromisoformat(info["disabled_at"]).tzinfo is not None
    assert other.enable("chat_tutor") is True
    assert control.disabled_reason("chat_tutor") is None
    assert control.enable("chat_tutor") is False
    other.close()


_WATCHER = """
import sys
from llmcost.control.state import ControlState
control = ControlState(sys.argv[1])
print("ready", flush=True)
sys.stdin.readline()  # the switch is set now
print(control.disabled_reason("chat_tutor"), flush=True)
"""


def test_another_process_sees_a_kill_switch_at_its_next_check(control_path, control):
    watcher = subprocess.Popen([sys.executable, "-c", _WATCHER, str(control_path)], stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE, text=True)
    assert watcher.stdout.readline().strip() == "ready"
    control.disable("chat_tutor", "incident 42")
    watcher.stdin.write("go\n")
    watcher.stdin.flush()
    assert watcher.stdout.readline().strip() == "incident 42"
    watcher.wait(timeout=10)


# -- emergency shutdown --------------------------------------------------------------------------

def test_automatic_halt_at_the_shutdown_level_and_not_below(control):
    level = Decimal("200")
    spend(control, "199.999999999999", user="a")
    assert control.halt_reason(DAY, level) is None
    reservation = reserve(control, "0.000000000001", user="b")  # in-flight spend counts too
    reason = control.halt_reason(DAY, level)
    assert reason is not None and "$200.00" in reason and "2025-03-14" in reason
    control.release(reservation)
    assert control.halt_reason(DAY, level) is None
    spend(control, "0.000000000001", user="b")
    assert control.halt_reason(DAY, level) is not None
    assert control.halt_reason(NEXT_DAY, level) is None
    assert control.halt_reason(DAY, None) is None


def test_resume_lifts_the_day_and_halt_rearms_it(control):
    spend(control, "250")
    assert control.halt_reason(DAY, Decimal("200")) is not None
    control.resume(DAY)
    assert control.halt_reason(DAY, Decimal("200")) is None
    spend(control, "100")
    assert control.halt_reason(DAY, Decimal("200")) is None  # resume lifts the day entirely
    control.halt(DAY, "provider outage")
    assert control.halt_reason(DAY, Decimal("1000")) == "provider outage"
    assert control.halt_reason(NEXT_DAY, Decimal("1000")) is None
    control.resume(DAY.isoformat())
    assert control.halt_reason(DAY, Decimal("1000")) is None


# -- reservations --------------------------------------------------------------------------------

def test_hard_limit_refuses_and_records_nothing(control):
    spend(control, "0.48", 900)
    with pytest.raises(BudgetExceededError) as refused:
        reserve(control, "0.03", 10, limit_cost=Decimal("0.50"), limit_tokens=1000, enforce=True,
                account_type="lesson_builder")
    message = str(refused.value)
    for part in ("'u1'", "'lesson_builder'", "$0.50 limit", "$0.48 spent", "[limits.lesson_builder]",
                 "llmcost.toml", "tomorrow"):
        assert part in message
    assert control.user_spend(DAY, "u1") == (900, Decimal("0.48"))
    assert control.in_flight() == 0

    with pytest.raises(BudgetExceededError, match="1,000 tokens limit, 900 used"):
        reserve(control, "0", 101, limit_tokens=1000, limit_cost=None, enforce=True)
    exactly_at_limit = reserve(control, "0.02", 100, limit_cost=Decimal("0.50"), limit_tokens=1000, enforce=True)
    assert exactly_at_limit.spent_cost_before == Decimal("0.48")
    with pytest.raises(BudgetExceededError):  # the first reservation is still in flight
        reserve(control, "0.000000000001", 0, limit_cost=Decimal("0.50"), enforce=True)
    other_user = reserve(control, "0.50", 0, user="u2", limit_cost=Decimal("0.50"), enforce=True)
    assert other_user.spent_cost_before == 0


def test_unenforced_limits_record_the_call_and_report_spend_before(control):
    spend(control, "0.04", 9_000)
    reservation = reserve(control, "0.02", 3_000, limit_tokens=10_000, limit_cost=Decimal("0.05"), enforce=False)
    assert isinstance(reservation, Reservation)
    assert (reservation.spent_tokens_before, reservation.spent_cost_before) == (9_000, Decimal("0.04"))
    assert reservation.day == DAY
    assert control.user_spend(DAY, "u1") == (12_000, Decimal("0.06"))
    assert control.system_spend(DAY) == Decimal("0.06")


def test_settle_replaces_the_estimate_once(control):
    reservation = reserve(control, "0.10", 1000)
    assert control.user_spend(DAY, "u1") == (1000, Decimal("0.10"))
    assert control.settle(reservation.id, 800, Decimal("0.07")) is True
    assert control.settle(reservation.id, 800, Decimal("0.07")) is False
    assert control.settle(reservation, 800, Decimal("0.07")) is False
    assert control.user_spend(DAY, "u1") == (800, Decimal("0.07"))
    assert control.release(reservation) is False
    assert control.in_flight() == 0


def test_release_drops_the_estimate_and_blocks_a_later_settle(control):
    reservation = reserve(control, "0.10", 1000)
    assert control.release(reservation.id) is True
    assert control.release(reservation.id) is False
    assert control.settle(reservation, 1000, Decimal("0.10")) is False
    assert control.user_spend(DAY, "u1") == (0, Decimal("0"))


def test_settle_records_actuals_even_when_the_file_was_lost(control_path):
    with ControlState(control_path) as first:
        reservation = reserve(first, "0.10", 100)
    for path in control_path.parent.glob("control.sqlite*"):
        path.unlink()
    with ControlState(control_path) as fresh:
        assert fresh.settle(reservation.id, 90, Decimal("0.09")) is False  # an id alone names nothing now
        assert fresh.settle(reservation, 90, Decimal("0.09")) is True
        assert fresh.settle(reservation, 90, Decimal("0.09")) is False
        assert fresh.user_spend(DAY, "u1") == (90, Decimal("0.09"))


_RESERVE_AND_EXIT = """
import sys, datetime as dt
from decimal import Decimal
from llmcost.control.state import ControlState
ControlState(sys.argv[1]).reserve(dt.date(2025, 3, 14), "u1", "t1", "chat_tutor", 10, Decimal("1"),
                                  limit_tokens=None, limit_cost=None, enforce=False)
"""


def test_release_stale_frees_reservations_of_exited_processes_and_old_ones(control_path, control):
    subprocess.run([sys.executable, "-c", _RESERVE_AND_EXIT, str(control_path)], check=True)
    mine = reserve(control, "2", 5)
    assert control.user_spend(DAY, "u1") == (15, Decimal("3"))
    assert control.release_stale() == 1
    assert control.user_spend(DAY, "u1") == (5, Decimal("2"))
    assert control.release_stale(older_than_seconds=3600) == 0
    time.sleep(0.05)
    assert control.release_stale(older_than_seconds=0.01) == 1
    assert control.user_spend(DAY, "u1") == (0, Decimal("0"))
    # Released as stale, not forgotten: a call that does end late still records what it spent, once.
    assert control.settle(mine, 5, Decimal("2")) is True
    assert control.settle(mine, 5, Decimal("2")) is False
    assert control.user_spend(DAY, "u1") == (5, Decimal("2"))


# -- rebuild and pruning -------------------------------------------------------------------------

def test_rebuild_replaces_the_day_and_keeps_in_flight_calls(control):
    assert control.needs_rebuild(DAY)
    spend(control, "5", 50, user="u1")
    spend(control, "7", 70, user="gone")
    spend(control, "1", 10, user="u1", day=NEXT_DAY)
    in_flight = reserve(control, "0.5", 5, user="u1")
    rows = [("u1", 20, Decimal("0.000000000001")), ("u1", 30, Decimal("2")), ("u2", 1, Decimal("3"))]
    assert control.rebuild(DAY, rows) is True
    assert control.user_spend(DAY, "u1") == (55, Decimal("2.500000000001"))
    assert control.user_spend(DAY, "u2") == (1, Decimal("3"))
    assert control.user_spend(DAY, "gone") == (0, Decimal("0"))
    assert control.user_spend(NEXT_DAY, "u1") == (10, Decimal("1"))
    assert not control.needs_rebuild(DAY) and control.needs_rebuild(NEXT_DAY)
    assert control.rebuild(DAY, [("u1", 1, Decimal("1"))], only_if_needed=True) is False
    assert control.user_spend(DAY, "u2") == (1, Decimal("3"))
    control.settle(in_flight, 5, Decimal("0.5"))
    assert control.system_spend(DAY) == Decimal("5.500000000001")


def test_prune_forgets_earlier_days(control):
    spend(control, "1", day=DAY)
    spend(control, "2", day=NEXT_DAY)
    control.halt(DAY, "x")
    control.prune(NEXT_DAY)
    assert control.system_spend(DAY) == 0
    assert control.halt_reason(DAY, None) is None
    assert control.system_spend(NEXT_DAY) == Decimal("2")


# -- races ---------------------------------------------------------------------------------------

def race_threads(control, *, threads, attempts, estimate, actual, limit):
    allowed = []
    barrier = threading.Barrier(threads)

    def worker():
        barrier.wait()
        for _ in range(attempts):
            try:
                reservation = reserve(control, estimate, limit_cost=limit, enforce=True)
            except BudgetExceededError:
                continue
            time.sleep(0.001)  # the provider call: keeps several reservations in flight at once
            control.settle(reservation, 0, actual)
            allowed.append(reservation.id)

    workers = [threading.Thread(target=worker) for _ in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    return len(allowed)


def test_32_threads_admit_exactly_what_the_hard_limit_permits(control):
    allowed = race_threads(control, threads=32, attempts=3, estimate="0.03", actual=Decimal("0.03"),
                           limit=Decimal("1.00"))
    assert allowed == 33
    assert control.user_spend(DAY, "u1") == (0, Decimal("0.99"))
    assert control.in_flight() == 0


def test_32_threads_overshoot_only_by_the_estimation_error_in_flight(control):
    error = Decimal("0.01")
    limit = Decimal("1.00")
    allowed = race_threads(control, threads=32, attempts=3, estimate="0.03", actual=Decimal("0.03") + error,
                           limit=limit)
    spent = control.user_spend(DAY, "u1")[1]
    assert spent == allowed * Decimal("0.04")
    # A refusal means settled + in flight + 0.03 passed the limit, and every attempt after the 33rd is refused.
    assert limit - Decimal("0.03") < spent <= limit + 32 * error
    assert control.in_flight() == 0


_RACER = """
import json, sys, time, datetime as dt
from decimal import Decimal
from llmcost.control.state import ControlState
from llmcost.errors import BudgetExceededError
path, attempts = sys.argv[1], int(sys.argv[2])
estimate, actual, limit = Decimal(sys.argv[3]), Decimal(sys.argv[4]), Decimal(sys.argv[5])
control = ControlState(path)
print("ready", flush=True)
sys.stdin.readline()
allowed = 0
for _ in range(attempts):
    try:
        reservation = control.reserve(dt.date(2025, 3, 14), "u1", "t1", "chat_tutor", 0, estimate,
                                      limit_tokens=None, limit_cost=limit, enforce=True)
    except BudgetExceededError:
        continue
    time.sleep(0.001)
    control.settle(reservation, 0, actual)
    allowed += 1
print(json.dumps(allowed), flush=True)
"""


def race_processes(control_path, *, processes, attempts, estimate, actual, limit):
    args = [str(control_path), str(attempts), estimate, actual, limit]
    racers = [subprocess.Popen([sys.executable, "-c", _RACER, *args], stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE, text=True) for _ in range(processes)]
    for racer in racers:
        assert racer.stdout.readline().strip() == "ready"
    for racer in racers:
        racer.stdin.write("go\n")
        racer.stdin.flush()
    allowed = [json.loads(racer.communicate(timeout=30)[0]) for racer in racers]
    assert all(racer.returncode == 0 for racer in racers)
    return allowed


def test_4_processes_admit_exactly_what_the_hard_limit_permits(control_path, control):
    allowed = race_processes(control_path, processes=4, attempts=20, estimate="0.03", actual="0.03", limit="1.00")
    assert sum(allowed) == 33
    assert control.user_spend(DAY, "u1") == (0, Decimal("0.99"))
    assert control.in_flight() == 0


def test_4_processes_overshoot_only_by_the_estimation_error_in_flight(control_path, control):
    allowed = race_processes(control_path, processes=4, attempts=20, estimate="0.03", actual="0.04", limit="1.00")
    spent = control.user_spend(DAY, "u1")[1]
    assert spent == sum(allowed) * Decimal("0.04")
    assert Decimal("0.97") < spent <= Decimal("1.00") + 4 * Decimal("0.01")
