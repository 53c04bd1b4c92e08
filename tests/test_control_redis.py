"""Budgets that hold across hosts: two data folders ("hosts") in separate processes sharing one real Redis."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import textwrap
import time

import pytest

from llmcost.config import load_settings
from llmcost.control.backend import open_control
from llmcost.errors import ControlStateError, SpendingHaltedError, UseCaseDisabledError
from llmcost.ingestion.run import ingest
from llmcost.money import today_in
from llmcost.sdk.tracker import Tracker

from .collector_server import rows

ESTIMATE, ERROR = 1_000, 200  # every call's actual tokens are within ERROR of its estimate
USER_LIMIT, TENANT_LIMIT = 100_000, 300_000
PROCESSES, THREADS = 4, 8
CONFIG = f"""
[tenant_budgets."northside-high"]
tokens = {TENANT_LIMIT}
period = "month"
action = "hard"
"""

# One "host" process: THREADS threads race until each was refused 3 times; prints the tokens it got through.
WORKER = """
import json, random, sys, threading
from llmcost.config import load_settings
from llmcost.errors import BudgetExceededError
from llmcost.sdk.tracker import Tracker

home, config, seed = sys.argv[1], sys.argv[2], int(sys.argv[3])
tracker = Tracker(load_settings(home=home, config=config))
spent = {"builder": 0, "tenant": 0, "refused": 0}
lock = threading.Lock()

def race(n):
    rng = random.Random(seed * 100 + n)
    user, account = ("builder", "lesson_builder") if n % 2 == 0 else (f"teacher-{seed}-{n}", "super_admin")
    refused = 0
    while refused < 3:
        try:
            with tracker.call(use_case="auto_populate", user_id=user, tenant_id="northside-high",
                              account_type=account, provider="openai", model="gpt-4o-mini",
                              estimated_tokens=@ESTIMATE) as call:
                actual = @ESTIMATE + rng.randint(-@ERROR, @ERROR)
                call.record(input_tokens=actual - 100, output_tokens=100)
        except BudgetExceededError:
            refused += 1
            continue
        with lock:
            spent["tenant"] += actual
            if user == "builder":
                spent["builder"] += actual

threads = [threading.Thread(target=race, args=(n,)) for n in range(@THREADS)]
for t in threads: t.start()
for t in threads: t.join()
tracker.close()
print(json.dumps(spent))
""".replace("@ESTIMATE", str(ESTIMATE)).replace("@ERROR", str(ERROR)).replace("@THREADS", str(THREADS))


@pytest.fixture
def hosts(tmp_path, redis_server, monkeypatch):
    """Two data folders sharing the Redis control state (the environment every subprocess inherits)."""
    monkeypatch.setenv("LLMCOST_CONTROL_BACKEND", "redis")
    monkeypatch.setenv("LLMCOST_REDIS_URL", redis_server.url)
    config = tmp_path / "llmcost.toml"
    config.write_text(CONFIG)
    folders = [tmp_path / "host-a", tmp_path / "host-b"]
    return config, [load_settings(home=folder, config=config) for folder in folders]


def cli(settings, *args):
    return subprocess.run([sys.executable, "-m", "llmcost", *args, "--config", str(settings.config_file)],
                          capture_output=True, text=True, timeout=120,
                          env={**os.environ, "LLMCOST_HOME": str(settings.home)})


@pytest.mark.slow
def test_two_hosts_race_a_user_limit_and_a_tenant_month_budget(hosts):
    config, (host_a, host_b) = hosts
    workers = [subprocess.Popen([sys.executable, "-c", textwrap.dedent(WORKER), str(home), str(config), str(n)],
                                stdout=subprocess.PIPE, text=True)
               for n, home in enumerate([host_a.home, host_a.home, host_b.home, host_b.home])]
    results = [json.loads(worker.communicate(timeout=300)[0]) for worker in workers]
    assert all(worker.returncode == 0 for worker in workers)
    builder, tenant = sum(r["builder"] for r in results), sum(r["tenant"] for r in results)
    in_flight_error = PROCESSES * THREADS * ERROR  # the most the estimates of calls in flight can be off by
    print(f"builder {builder:,} of {USER_LIMIT:,} tokens (overshoot {builder - USER_LIMIT:+,}); "
          f"tenant {tenant:,} of {TENANT_LIMIT:,} (overshoot {tenant - TENANT_LIMIT:+,}); bound {in_flight_error:,}")
    assert USER_LIMIT - PROCESSES * THREADS * (ESTIMATE + ERROR) <= builder <= USER_LIMIT + in_flight_error
    assert TENANT_LIMIT - PROCESSES * THREADS * (ESTIMATE + ERROR) <= tenant <= TENANT_LIMIT + in_flight_error
    with open_control(host_a) as control:  # the shared counters hold exactly what the hosts recorded
        today = today_in(host_a.tz)
        assert control.user_spend(today, "builder")[0] == builder
        assert control.in_flight() == 0
    for host in (host_a, host_b):  # and the hosts' journals hold every call
        ingest(host)
    # A host whose every call was refused (the other host spent the budgets first) journaled nothing: no store.
    stored = sum(rows(h, "SELECT sum(total_tokens) FROM usage_events WHERE user_id = 'builder'")[0][0] or 0
                 for h in (host_a, host_b) if h.db_path.exists())
    assert stored == builder


@pytest.mark.slow
def test_kill_switch_and_shutdown_on_one_host_refuse_on_the_other(hosts):
    _, (host_a, host_b) = hosts
    tracker_b = Tracker(host_b)
    with tracker_b.call(use_case="chat_tutor", user_id="u1", tenant_id="t1", estimated_tokens=10) as call:
        call.record(input_tokens=5, output_tokens=5)
    result = cli(host_a, "disable", "chat_tutor", "--reason", "runaway loop")
    assert result.returncode == 0, result.stderr
    with pytest.raises(UseCaseDisabledError, match="runaway loop"):
        tracker_b.call(use_case="chat_tutor", user_id="u1", tenant_id="t1").start()
    assert cli(host_a, "enable", "chat_tutor").returncode == 0
    tracker_a = Tracker(host_a)
    with tracker_a.call(use_case="chat_tutor", user_id="boss", tenant_id="t1", account_type="super_admin",
                        estimated_tokens=10) as call:
        call.record(input_tokens=5, output_tokens=5, cost_usd=host_a.system.shutdown_usd)
    with pytest.raises(SpendingHaltedError, match="emergency shutdown"):
        tracker_b.call(use_case="chat_tutor", user_id="u1", tenant_id="t1").start()
    result = cli(host_b, "resume")
    assert result.returncode == 0 and "resumed" in result.stdout, result.stdout + result.stderr
    with tracker_b.call(use_case="chat_tutor", user_id="u1", tenant_id="t1", estimated_tokens=10) as call:
        call.record(input_tokens=5, output_tokens=5)
    tracker_a.close()
    tracker_b.close()


@pytest.mark.slow
def test_redis_killed_mid_run_refuses_or_allows_then_rebuilds_to_the_store(hosts, redis_server):
    _, (host, _) = hosts
    tracker = Tracker(host)
    allowing = Tracker(dataclasses.replace(host, on_control_error="allow"))

    def one(t, tokens):
        with t.call(use_case="chat_tutor", user_id="u1", tenant_id="northside-high", estimated_tokens=tokens) as call:
            call.record(input_tokens=tokens, output_tokens=0)

    for _ in range(5):
        one(tracker, 100)
    before = tracker.control.data_version()
    redis_server.stop()
    # Calls on a lease go on until the tracker's listener hears its connection closed (one network hop), as they do
    # for any other change of the gates (llmcost.control.redis_gates).
    deadline = time.monotonic() + 10
    while tracker.control.data_version() == before and time.monotonic() < deadline:
        time.sleep(0.001)
    with pytest.raises(ControlStateError, match="call refused.*Redis.*on_control_error"):
        one(tracker, 100)
    one(allowing, 300)  # allowed unchecked and recorded
    redis_server.start()  # empty: it kept nothing (no persistence in this test)
    ingest(host)
    one(tracker, 1_000)  # the new generation makes the tracker rebuild the counters first
    today = today_in(host.tz)
    with open_control(host) as control:
        assert control.user_spend(today, "u1")[0] == 500 + 300 + 1_000
    ingest(host)
    stored = rows(host, "SELECT count(*), sum(total_tokens), count(*) FILTER (WHERE metadata LIKE '%control_error%') "
                        "FROM usage_events")
    assert stored == [(7, 1_800, 1)]  # nothing lost, the unchecked call marked
    result = cli(host, "control", "rebuild")
    assert result.returncode == 0, result.stderr
    with open_control(host) as control:
        assert control.user_spend(today, "u1")[0] == 1_800
        assert control.counter_spend(control_counter(today)).tokens == 1_800
    tracker.close()
    allowing.close()


def control_counter(today):
    from llmcost.control.interface import Counter

    return Counter(f"{today:%Y-%m}", "tenant", "northside-high")


def test_budgets_command_shows_limit_spend_and_remaining(hosts):
    _, (host, _) = hosts
    tracker = Tracker(host)
    with tracker.call(use_case="chat_tutor", user_id="u1", tenant_id="northside-high", estimated_tokens=10) as call:
        call.record(input_tokens=1_000, output_tokens=500)
    tracker.close()
    result = cli(host, "budgets")
    assert result.returncode == 0, result.stderr
    line = next(line for line in result.stdout.splitlines() if "northside-high" in line)
    assert f"{today_in(host.tz):%Y-%m}" in line and "300,000 tok" in line and "1,500 tok" in line
    assert "298,500 tok" in line


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["redis", "sqlite"])
def test_a_reservation_made_at_one_collector_settles_once_at_another(backend, tmp_path, redis_server):
    import httpx

    from .collector_server import ingest as ingest_cli
    from .collector_server import running_collector

    home = tmp_path / "collectors"
    home.mkdir()
    env = {"LLMCOST_CONTROL_BACKEND": backend, "LLMCOST_REDIS_URL": redis_server.url}
    headers = {"x-user-id": "u1", "x-tenant-id": "t1"}
    with running_collector(home, env=env) as first, running_collector(home, env=env) as second:
        reserved = httpx.post(first.url + "/v1/reserve", headers=headers, timeout=30, json={
            "use_case": "chat_tutor", "provider": "openai", "model": "gpt-4o-mini", "estimated_tokens": 500})
        assert reserved.status_code == 200, reserved.text
        reservation = reserved.json()["reservation_id"]
        settle = {"reservation_id": reservation, "input_tokens": 300, "output_tokens": 40}
        settled = httpx.post(second.url + "/v1/settle", json=settle, timeout=30)
        assert settled.status_code == 200, settled.text + second.log()
        again = [httpx.post(c.url + "/v1/settle", json=settle, timeout=30) for c in (first, second)]
        assert [r.status_code for r in again] == [409, 409]  # settled, at either: never recorded twice
    ingest_cli(home)
    settings = load_settings(home=home)
    stored = rows(settings, "SELECT attempt_id, user_id, tenant_id, use_case, model, input_tokens, output_tokens "
                            "FROM usage_events")
    assert stored == [(reservation, "u1", "t1", "chat_tutor", "gpt-4o-mini", 300, 40)]


def test_lua_money_sums_and_comparisons_are_exact_over_64_bits(redis_server):
    """The scripts' two-part whole numbers (`redis_lua.big`) against Python's integers, around 2^53 and below 0."""
    import random

    import redis

    from llmcost.control import redis_lua

    script = redis_lua._EXPIRE + """
local out = {}
for i = 1, #ARGV, 9 do
  local v = {ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3], ARGV[i + 4], ARGV[i + 5], ARGV[i + 6], ARGV[i + 7]}
  local tokens, cost = spent(v)
  local limit = big(ARGV[i + 8])
  out[#out + 1] = string.format('%d %06d %d', cost[1], cost[2], above(cost, limit) and 1 or 0)
end
return out
"""
    rng = random.Random(53)
    cases = []
    for _ in range(300):
        figures = [rng.choice([0, rng.randrange(2**62), 2**53 + rng.randrange(-5, 5), rng.randrange(10**7)])
                   for _ in range(8)]
        figures[7] = rng.choice([figures[7], -rng.randrange(10**7)])  # in flight may dip below 0 mid-release
        cost = max(figures[1], figures[3]) + figures[5] + figures[7]
        cases.append((figures, rng.choice([cost, cost - 1, cost + 1])))
    client = redis.Redis.from_url(redis_server.url, decode_responses=True)
    args = [str(x) for figures, limit in cases for x in (*figures, limit)]
    answers = client.eval(script, 0, *args)
    for (figures, limit), answer in zip(cases, answers, strict=True):
        millions, remainder, over = answer.split()
        cost = max(figures[1], figures[3]) + figures[5] + figures[7]
        assert int(millions) * 10**6 + int(remainder) == cost
        assert over == ("1" if cost > limit else "0")


# Test-only fault: the collector process is killed (SIGKILL) at the control state's settle (the claim), before
# it runs or right after it committed, whichever backend holds the state.
CRASH_AT_CLAIM = """
import os, signal
from llmcost.control.redis_state import RedisControlState
from llmcost.control.state import ControlState

def crashing(settle):
    def crash(self, *args, **kwargs):
        if os.environ["CRASH_AT_CLAIM"] == "before":
            os.kill(os.getpid(), signal.SIGKILL)
        settle(self, *args, **kwargs)
        os.kill(os.getpid(), signal.SIGKILL)
    return crash

for backend in (ControlState, RedisControlState):
    backend.settle = crashing(backend.settle)
"""


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["redis", "sqlite"])
@pytest.mark.parametrize("crash", ["before", "after"])
def test_a_collector_killed_at_the_settle_loses_nothing_and_a_retry_counts_it_once(backend, crash, tmp_path,
                                                                                    redis_server):
    import httpx

    from .collector_server import ingest as ingest_cli
    from .collector_server import running_collector

    home = tmp_path / "collectors"
    home.mkdir()
    env = {"LLMCOST_CONTROL_BACKEND": backend, "LLMCOST_REDIS_URL": redis_server.url}
    headers = {"x-user-id": "u1", "x-tenant-id": "t1"}
    with running_collector(home, env={**env, "CRASH_AT_CLAIM": crash}, prelude=CRASH_AT_CLAIM) as crashing:
        reserved = httpx.post(crashing.url + "/v1/reserve", headers=headers, timeout=30, json={
            "use_case": "chat_tutor", "provider": "openai", "model": "gpt-4o-mini", "estimated_tokens": 500})
        assert reserved.status_code == 200, reserved.text
        reservation = reserved.json()["reservation_id"]
        settle = {"reservation_id": reservation, "input_tokens": 300, "output_tokens": 40}
        with pytest.raises(httpx.TransportError):  # killed mid-settle: no answer
            httpx.post(crashing.url + "/v1/settle", json=settle, timeout=30)
        assert crashing.process.wait(timeout=30) == -9
    with running_collector(home, env=env) as restarted:
        retried = httpx.post(restarted.url + "/v1/settle", json=settle, timeout=30)
        if crash == "before":  # not claimed yet: the retry records and settles it
            assert retried.status_code == 200, retried.text
        else:  # claimed (and journaled) before the crash: the retry is told so
            assert (retried.status_code, retried.json()["reason"]) == (409, "already_settled"), retried.text
        again = httpx.post(restarted.url + "/v1/settle", json=settle, timeout=30)
        assert (again.status_code, again.json()["reason"]) == (409, "already_settled")
    ingest_cli(home)
    settings = dataclasses.replace(load_settings(home=home), control_backend=backend, redis_url=redis_server.url)
    stored = rows(settings, "SELECT attempt_id, input_tokens, output_tokens FROM usage_events")
    assert stored == [(reservation, 300, 40)]
    assert rows(settings, "SELECT count(*) FROM failed_logs") == [(0,)]
    with open_control(settings) as control:  # settled once in the live counters too
        assert control.user_spend(today_in(settings.tz), "u1")[0] == 340
