"""`llmcost serve`: a real collector subprocess, real HTTP (httpx), then `llmcost ingest` into a real store."""

from __future__ import annotations

import datetime as dt
import gzip
import json
import os
import signal
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from pathlib import Path

import httpx
import pytest

from llmcost.collector.auth import hash_key
from llmcost.config import load_settings
from llmcost.control.state import ControlState
from llmcost.pricing.rates import Pricer

from .collector_server import free_port, ingest, rows, running_collector, serve_command

BENCH = Path(__file__).resolve().parent.parent / "bench" / "collector.py"
NOW = dt.datetime.now(dt.timezone.utc).replace(microsecond=0)


def event(n: int, **overrides):
    base = {"ts": (NOW - dt.timedelta(minutes=5)).isoformat(), "user_id": f"u{n % 3}", "tenant_id": "t1",
            "use_case": "chat_tutor", "provider": "openai", "model": "gpt-4o", "input_tokens": 100 + n,
            "output_tokens": 20}
    base.update(overrides)
    return base


@pytest.mark.slow
def test_usage_single_array_and_ndjson_are_validated_per_record_and_ingested_once(settings, isolated_home):
    with running_collector(isolated_home) as c:
        single = httpx.post(c.url + "/v1/usage", json=event(1, event_id="single-1"))
        batch = httpx.post(c.url + "/v1/usage", json=[event(2), {"ts": "yesterday"}, event(3), 7])
        lines = b"\n".join([json.dumps(event(4)).encode(), b"{not json", json.dumps(event(5)).encode(), b""])
        ndjson = httpx.post(c.url + "/v1/usage", content=lines, headers={"content-type": "application/x-ndjson"})
        unattributed = httpx.post(c.url + "/v1/usage", json={"ts": NOW.isoformat(), "use_case": "chat_tutor",
                                                              "model": "gpt-4o", "input_tokens": 50})
        no_usage_no_identity = httpx.post(c.url + "/v1/usage", json={"ts": NOW.isoformat(), "model": "gpt-4o"})
    assert single.status_code == 202 and single.json() == {"accepted": 1, "rejected": []}
    assert batch.status_code == 202 and batch.json()["accepted"] == 2
    assert [r["index"] for r in batch.json()["rejected"]] == [1, 3]
    assert "ts" in batch.json()["rejected"][0]["error"] and "user_id" in batch.json()["rejected"][0]["error"]
    assert "JSON object, not int" in batch.json()["rejected"][1]["error"]
    assert ndjson.json()["accepted"] == 2 and ndjson.json()["rejected"][0]["index"] == 1
    assert "not valid JSON" in ndjson.json()["rejected"][0]["error"]
    assert unattributed.json() == {"accepted": 1, "rejected": []}
    assert no_usage_no_identity.json()["accepted"] == 0

    ingest(isolated_home)
    ingest(isolated_home)  # a second run takes nothing twice
    stored = rows(settings, "SELECT user_id, input_tokens, cost_usd, price_source FROM usage_events ORDER BY input_tokens")
    assert [r[1] for r in stored] == [50, 101, 102, 103, 104, 105]
    expected = Pricer.from_settings(settings).price(provider="openai", model="gpt-4o", ts=NOW, input_tokens=101,
                                                     output_tokens=20).cost_usd
    assert stored[1][2] == expected and stored[1][3] == "price-table"
    assert stored[0][0] == "(unattributed)"
    failed = rows(settings, "SELECT kind, error FROM failed_logs")
    assert [f[0] for f in failed] == ["unattributed"] and "user_id" in failed[0][1]
    assert rows(settings, "SELECT count(*) FROM usage_events WHERE event_id = 'single-1'") == [(1,)]


def test_unreadable_bodies_are_refused_naming_the_problem(isolated_home):
    with running_collector(isolated_home, "--max-body-bytes", "2048") as c:
        not_json = httpx.post(c.url + "/v1/usage", content=b"<html>hello</html>")
        empty = httpx.post(c.url + "/v1/usage", content=b"")
        too_large = httpx.post(c.url + "/v1/usage", json=[event(n) for n in range(40)])
        chunked_too_large = httpx.post(c.url + "/v1/usage", content=iter([b"[" + b" " * 1500, b" " * 1500 + b"]"]))
        gzip_bomb = httpx.post(c.url + "/v1/usage", content=gzip.compress(b"[" + b" " * 1_000_000 + b"]"),
                               headers={"content-encoding": "gzip"})
        gzipped = httpx.post(c.url + "/v1/usage", content=gzip.compress(json.dumps(event(1)).encode()),
                             headers={"content-encoding": "gzip"})
        unknown = httpx.get(c.url + "/nope")
        wrong_method = httpx.get(c.url + "/v1/usage")  # the plain ASGI route leaves it to the router
        brotli = httpx.post(c.url + "/v1/usage", content=b"x", headers={"content-encoding": "br"})
    assert wrong_method.status_code == 405 and wrong_method.headers["content-type"].startswith("application/json")
    assert brotli.status_code == 400 and "send gzip" in brotli.json()["error"]
    assert not_json.status_code == 400 and "not valid JSON" in not_json.json()["error"]
    assert "<html>" not in not_json.text
    assert empty.status_code == 400 and "empty" in empty.json()["error"]
    assert too_large.status_code == 413 and "2048 bytes" in too_large.json()["error"]
    assert chunked_too_large.status_code == 413
    assert gzip_bomb.status_code == 413 and gzipped.json() == {"accepted": 1, "rejected": []}
    assert unknown.status_code == 404 and unknown.headers["content-type"].startswith("application/json")
    journaled = [line for p in (isolated_home / "journal").glob("*-collector.jsonl") for line in p.open()]
    assert len(journaled) == 1  # only the gzipped event


@pytest.mark.slow
def test_kill_9_right_after_a_202_loses_no_acknowledged_record(settings, isolated_home):
    acknowledged = 0
    with running_collector(isolated_home) as c:
        def send(batch_no: int) -> int:
            records = [event(batch_no * 10 + i, event_id=f"b{batch_no}-{i}") for i in range(10)]
            response = httpx.post(c.url + "/v1/usage", json=records, timeout=30)
            return response.json()["accepted"] if response.status_code == 202 else 0

        with ThreadPoolExecutor(8) as pool:
            acknowledged = sum(pool.map(send, range(40)))
        last = httpx.post(c.url + "/v1/usage", json=[event(999, event_id="last")])
        c.process.send_signal(signal.SIGKILL)  # right after the 202: no shutdown hook runs
        c.process.wait()
        acknowledged += last.json()["accepted"]
    assert acknowledged == 401
    ingest(isolated_home)
    assert rows(settings, "SELECT count(*) FROM usage_events") == [(401,)]
    assert rows(settings, "SELECT count(*) FROM usage_events WHERE event_id = 'last'") == [(1,)]


def test_journal_failure_goes_to_the_fallback_log_and_neither_means_503(settings, isolated_home, tmp_path):
    journal_dir, fallback_log = tmp_path / "journal", tmp_path / "fallback.jsonl"
    config = tmp_path / "llmcost.toml"
    config.write_text(f'journal_dir = "{journal_dir}"\nfallback_log = "{fallback_log}"\n'
                      f'db = "{settings.db_path}"\n')
    with running_collector(isolated_home, env={"LLMCOST_CONFIG": str(config)}) as c:
        journal_dir.rmdir()
        journal_dir.write_text("a file where the journal folder should be")  # the journal cannot be opened
        to_fallback = httpx.post(c.url + "/v1/usage", json=[event(1, event_id="fb-1"), event(2, event_id="fb-2")])
        fallback_log.rename(tmp_path / "saved.jsonl")
        fallback_log.mkdir()  # now the fallback log cannot be written either
        refused = httpx.post(c.url + "/v1/usage", json=[event(3, event_id="lost-3")])
        fallback_log.rmdir()
        (tmp_path / "saved.jsonl").rename(fallback_log)
    assert to_fallback.status_code == 202 and to_fallback.json()["accepted"] == 2
    assert refused.status_code == 503 and "nothing was recorded" in refused.json()["error"]
    kept = [json.loads(line) for line in fallback_log.read_text().splitlines()]
    assert [k["event"]["event_id"] for k in kept] == ["fb-1", "fb-2"]
    assert "Error" in kept[0]["error"]
    journal_dir.unlink()
    subprocess.run([sys.executable, "-m", "llmcost", "ingest"], check=True, capture_output=True,
                   env={**os.environ, "LLMCOST_HOME": str(isolated_home), "LLMCOST_CONFIG": str(config)})
    assert rows(settings, "SELECT event_id FROM usage_events ORDER BY event_id") == [("fb-1",), ("fb-2",)]
    assert rows(settings, "SELECT kind, count(*) FROM failed_logs GROUP BY kind") == [("fallback", 2)]


def test_service_keys_hashed_at_rest_and_tied_to_a_tenant(settings, isolated_home, tmp_path):
    keys_file = tmp_path / "keys.txt"
    keys_file.write_text(f"# collector keys\n{hash_key('tenant-a-secret')}@tenant-a\n")
    env = {"LLMCOST_COLLECTOR_KEYS": hash_key("admin-secret")}
    assert "admin-secret" not in keys_file.read_text() + env["LLMCOST_COLLECTOR_KEYS"]
    with running_collector(isolated_home, "--keys-file", str(keys_file), env=env) as c:
        anonymous = httpx.post(c.url + "/v1/usage", json=event(1))
        wrong = httpx.post(c.url + "/v1/usage", json=event(1), headers={"authorization": "Bearer guess"})
        admin = httpx.post(c.url + "/v1/usage", json=event(1, tenant_id="t9"),
                           headers={"authorization": "Bearer admin-secret"})
        tenant_key = {"authorization": "Bearer tenant-a-secret"}
        other_tenant = httpx.post(c.url + "/v1/usage", json=event(2, tenant_id="t9"), headers=tenant_key)
        mixed = httpx.post(c.url + "/v1/usage", headers=tenant_key,
                           json=[event(3, tenant_id="tenant-a"), event(4, tenant_id="t9"), event(5, tenant_id=None)])
        reserve_other = httpx.post(c.url + "/v1/reserve", json={"use_case": "chat_tutor"},
                                   headers={**tenant_key, "x-user-id": "u1", "x-tenant-id": "t9"})
        admin_reserved = httpx.post(c.url + "/v1/reserve", json={"use_case": "chat_tutor", "estimated_tokens": 10},
                                    headers={"authorization": "Bearer admin-secret", "x-user-id": "u1",
                                             "x-tenant-id": "t9"}).json()["reservation_id"]
        settle_other = httpx.post(c.url + "/v1/settle", headers=tenant_key,
                                  json={"reservation_id": admin_reserved, "input_tokens": 5})
        settle_admin = httpx.post(c.url + "/v1/settle", headers={"authorization": "Bearer admin-secret"},
                                  json={"reservation_id": admin_reserved, "input_tokens": 5})
        metrics_anonymous = httpx.get(c.url + "/metrics")
    assert anonymous.status_code == 401 and "Authorization: Bearer" in anonymous.json()["error"]
    assert wrong.status_code == 401
    assert admin.status_code == 202 and admin.json()["accepted"] == 1
    assert other_tenant.status_code == 403
    assert mixed.status_code == 202 and mixed.json()["accepted"] == 2
    assert [r["index"] for r in mixed.json()["rejected"]] == [1]
    assert reserve_other.status_code == 403
    assert settle_other.status_code == 403 and settle_admin.status_code == 200  # the refusal left it open
    assert metrics_anonymous.status_code == 401
    ingest(isolated_home)
    assert rows(settings, "SELECT tenant_id, count(*) FROM usage_events GROUP BY 1 ORDER BY 1") == [
        ("t9", 2), ("tenant-a", 2)]


def test_serve_refuses_a_public_address_without_keys(isolated_home):
    result = subprocess.run(serve_command(free_port())[:-4] + ["--host", "0.0.0.0", "--port", str(free_port())],
                            env={**os.environ, "LLMCOST_HOME": str(isolated_home)}, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode != 0
    assert "without service keys" in result.stderr and "--allow-unauthenticated" in result.stderr


def test_hash_key_prints_the_at_rest_form():
    result = subprocess.run([sys.executable, "-m", "llmcost", "serve", "--hash-key"], input="s3cret\n",
                            capture_output=True, text=True, timeout=60)
    assert result.stdout.strip() == hash_key("s3cret") and len(result.stdout.strip()) == len("sha256:") + 64


def test_reserve_and_settle_use_the_trackers_admission(settings, isolated_home):
    ids = {"x-user-id": "u1", "x-tenant-id": "t1"}
    with running_collector(isolated_home) as c:
        no_identity = httpx.post(c.url + "/v1/reserve", json={"use_case": "chat_tutor"}, headers={"x-user-id": "u1"})
        reserved = httpx.post(c.url + "/v1/reserve", headers={**ids, "x-account-type": "lesson_builder"},
                              json={"use_case": "chat_tutor", "provider": "openai", "model": "gpt-4o",
                                    "estimated_tokens": 1000})
        reservation = reserved.json()["reservation_id"]
        in_flight = ControlState(settings.control_db).in_flight()
        bad_settle = httpx.post(c.url + "/v1/settle", json={"reservation_id": reservation, "input_tokens": -5})
        settled = httpx.post(c.url + "/v1/settle", json={"reservation_id": reservation, "input_tokens": 900,
                                                          "output_tokens": 150, "cache_read_tokens": 100})
        again = httpx.post(c.url + "/v1/settle", json={"reservation_id": reservation, "input_tokens": 1})
        unknown = httpx.post(c.url + "/v1/settle", json={"reservation_id": "never-made", "input_tokens": 1})
        over_budget = httpx.post(c.url + "/v1/reserve", headers={**ids, "x-account-type": "lesson_builder"},
                                 json={"use_case": "chat_tutor", "model": "gpt-4o", "estimated_tokens": 200_000})
        subprocess.run([sys.executable, "-m", "llmcost", "disable", "scaffolder", "--reason", "runaway loop"],
                       env={**os.environ, "LLMCOST_HOME": str(isolated_home)}, check=True, capture_output=True)
        disabled = httpx.post(c.url + "/v1/reserve", headers=ids, json={"use_case": "scaffolder"})
        with ControlState(settings.control_db) as control:
            control.halt(dt.datetime.now(settings.tz).date(), "test halt")
        halted = httpx.post(c.url + "/v1/reserve", headers=ids, json={"use_case": "chat_tutor"})
    assert no_identity.status_code == 400
    assert no_identity.json()["missing"] == ["x-tenant-id"] and "x-tenant-id" in no_identity.json()["error"]
    assert reserved.status_code == 200 and in_flight == 1
    assert bad_settle.status_code == 400 and "input_tokens" in bad_settle.json()["error"]
    assert settled.status_code == 200 and settled.json()["total_tokens"] == 1050  # the bad settle kept it open
    assert (again.status_code, again.json()["reason"]) == (409, "already_settled")
    assert (unknown.status_code, unknown.json()["reason"]) == (404, "unknown_reservation")
    assert over_budget.status_code == 429 and over_budget.json()["reason"] == "budget_exceeded"
    figures = over_budget.json()
    assert figures["limit_tokens"] == 100_000 and figures["spent_tokens"] == 1050
    assert figures["estimated_tokens"] == 200_000
    assert disabled.status_code == 403 and disabled.json()["reason"] == "use_case_disabled"
    assert "runaway loop" in disabled.json()["error"]
    assert halted.status_code == 403 and halted.json()["reason"] == "spending_halted"
    ingest(isolated_home)
    stored = rows(settings, "SELECT attempt_id, input_tokens, cache_read_tokens, cost_usd FROM usage_events")
    assert [(r[0], r[1], r[2]) for r in stored] == [(reservation, 900, 100)]
    assert Decimal(settled.json()["cost_usd"]) == stored[0][3]
    assert rows(settings, "SELECT count(*) FROM call_attempts WHERE attempt_id = ?", [reservation]) == [(1,)]


def test_a_refusal_by_a_tenants_month_reports_that_budgets_figures(isolated_home):
    # The 429's figures are the refused budget's (here the tenant's month), not the user's day beside it.
    config = isolated_home / "llmcost.toml"
    config.write_text('[tenant_budgets."t1"]\ntokens = 5000\ncost_usd = "2"\nperiod = "month"\naction = "hard"\n')
    with running_collector(isolated_home, env={"LLMCOST_CONFIG": str(config)}) as c:
        refused = httpx.post(c.url + "/v1/reserve", headers={"x-user-id": "u1", "x-tenant-id": "t1"},
                             json={"use_case": "chat_tutor", "model": "gpt-4o", "estimated_tokens": 6000})
    body = refused.json()
    assert (refused.status_code, body.get("reason")) == (429, "budget_exceeded"), body
    assert "tenant 't1'" in body["error"] and "tenant_budgets" in body["error"]
    assert (body["scope"], body["name"], body["user_id"]) == ("tenant", "t1", "u1")
    assert body["period"] == dt.datetime.now(load_settings(config).tz).strftime("%Y-%m")
    assert (body["limit_tokens"], body["spent_tokens"], body["estimated_tokens"]) == (5000, 0, 6000)
    assert Decimal(body["limit_usd"]) == Decimal("2") and Decimal(body["spent_usd"]) == 0


def test_metrics_count_records_and_price_todays_spend(isolated_home):
    with running_collector(isolated_home) as c:
        httpx.post(c.url + "/v1/usage", json=[event(1, ts=NOW.isoformat()), {"bad": 1}])
        httpx.post(c.url + "/v1/usage", json={"ts": NOW.isoformat(), "use_case": "chat_tutor", "model": "gpt-4o",
                                              "input_tokens": 10})
        text = httpx.get(c.url + "/metrics").text
    assert 'llmcost_collector_records_total{endpoint="usage",outcome="accepted"} 2.0' in text
    assert 'llmcost_collector_records_total{endpoint="usage",outcome="rejected"} 1.0' in text
    assert 'llmcost_collector_records_total{endpoint="usage",outcome="unattributed"} 1.0' in text
    assert "llmcost_collector_journal_write_seconds_count 2.0" in text
    assert "llmcost_collector_journal_syncs_total 2.0" in text  # one request after the other: a fsync each
    spend = [line for line in text.splitlines()
             if line.startswith('llmcost_collector_spend_today_usd{use_case="chat_tutor"}')]
    assert spend and float(spend[0].split()[-1]) > 0


def _spend_record_by_record(records: list[dict]) -> tuple[dict, dict]:
    """The spend metric's sums worked out one record at a time: given costs by use case, else token counts
    by (use case, provider, model)."""
    from llmcost.events import TOKEN_FIELDS, UNATTRIBUTED, UsageEvent

    tokens, given = {}, {}
    for record in records:
        use_case = record.get("use_case") or UNATTRIBUTED
        if record.get("cost_usd") is not None:
            given[use_case] = given.get(use_case, Decimal(0)) + Decimal(str(record["cost_usd"]))
            continue
        totals = tokens.setdefault((use_case, record.get("provider"), record.get("model")), [0] * len(TOKEN_FIELDS))
        for i, name in enumerate(TOKEN_FIELDS):
            totals[i] += UsageEvent.model_validate({**record, "user_id": "u", "tenant_id": "t", "use_case": "c",
                                                    "ts": NOW}).model_dump()[name]
    return tokens, given


MIXED_SPEND = [
    event(1), event(2, model="gpt-4o-mini", cache_read_tokens=40, reasoning_tokens=5),
    event(3, use_case="search", provider=None, model=None), {**event(4, use_case="search"), "provider": None},
    event(5, cost_usd="0.25"), event(6, use_case="search", cost_usd="0"), event(7, cache_write_tokens=9),
    {key: value for key, value in event(8).items() if key not in ("provider", "model")}]
SPEND_BATCHES = {  # small batches are summed record by record, large ones with one key column by column
    "one record": [event(1, cache_read_tokens=7)],
    "one model, small": [event(n) for n in range(5)],
    "one model, large": [event(n, cache_read_tokens=n % 3) for n in range(40)],
    "models, providers and given costs": MIXED_SPEND,
    "models, providers and given costs, large": MIXED_SPEND * 3,
    "one model but a given cost, large": [*(event(n) for n in range(20)), event(20, cost_usd="1.5")],
}


@pytest.mark.parametrize("name", SPEND_BATCHES)
def test_a_batchs_spend_is_each_records_whether_read_as_dicts_or_typed(name):
    # The request path sums a batch column by column, from dicts or from typedread's records; the sums must be
    # the record-by-record ones. Exact-path dicts may lack the identity or give a count as text.
    from llmcost.collector.fastcheck import PlainEvents
    from llmcost.collector.metrics import BatchSpend
    from llmcost.collector.typedread import read_plain

    records = SPEND_BATCHES[name]
    typed, _ = read_plain(json.dumps(records).encode(), PlainEvents())
    expected = _spend_record_by_record(records)
    for spend in (BatchSpend(records), BatchSpend(typed)):
        assert (spend.tokens, spend.given_cost) == expected
    loose = [*records, {"input_tokens": "12", "output_tokens": 3.0}, {"use_case": "", "input_tokens": " 7 "},
             {"input_tokens": "12.0", "cache_read_tokens": 2}]
    spend = BatchSpend(loose)
    assert (spend.tokens, spend.given_cost) == _spend_record_by_record(loose)
    counts_as_text = [{**record, "input_tokens": f" {record['input_tokens']} "} for record in records]
    spend = BatchSpend(counts_as_text)
    assert (spend.tokens, spend.given_cost) == _spend_record_by_record(counts_as_text)


@pytest.mark.parametrize("zone", ["UTC", "America/Los_Angeles", "Pacific/Kiritimati", "Asia/Kathmandu"])
def test_the_spend_metric_keeps_todays_day_until_the_local_midnight(zone):
    # The day is worked out once and kept until it ends; it must end exactly at the zone's next midnight.
    from llmcost.collector.metrics import _TodaySpend
    from llmcost.money import today_in

    spend = _TodaySpend(pricer=None, tz=zone)
    today = spend._today_in_zone()
    assert today == today_in(zone)
    ends = dt.datetime.fromtimestamp(spend._today_ends, dt.timezone.utc)
    assert dt.datetime.now(dt.timezone.utc) < ends <= dt.datetime.now(dt.timezone.utc) + dt.timedelta(hours=25)
    assert today_in(zone, now=ends - dt.timedelta(microseconds=1)) == today
    assert today_in(zone, now=ends) == today + dt.timedelta(days=1)


@pytest.mark.slow
def test_bench_collector_runs_and_every_acknowledged_event_is_journaled(tmp_path):
    out = tmp_path / "collector.json"
    done = subprocess.run([sys.executable, str(BENCH), "--seconds", "0.5", "--connections", "4", "--out", str(out)],
                          capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr
    result = json.loads(out.read_text())
    assert [row["batch"] for row in result["rows"]] == [1, 100] and result["fsync"] is True
    for row in result["rows"]:
        assert row["collector"]["requests"] > 0 and row["baseline"]["requests"] > 0 and row["ratio"] > 0
    assert result["targets"][-1]["met"], result["targets"][-1]
    assert "bare Starlette ev/s" in done.stdout
