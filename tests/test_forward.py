"""`llmcost forward`: host A's journals and fallback log reach host B's store through B's collector, exactly once.

Two data folders stand for two hosts. B runs a real `llmcost serve` subprocess on 127.0.0.1; A runs tracker
processes and `llmcost forward`; B's store is filled by `llmcost ingest`.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import httpx
import pytest

from llmcost.config import load_settings
from llmcost.forward import CollectorUnavailable, Forwarder, forward_status
from llmcost.forward.state import read_rejected, state_path
from llmcost.sdk import fallback
from llmcost.sdk.journal import Journal
from llmcost.store import connection as store

from .collector_server import free_port, ingest, running_collector, serve_command
from .test_faults import usage

WRITER = textwrap.dedent("""
    import sys, time
    from llmcost.sdk.tracker import Tracker
    tag, count = sys.argv[1], int(sys.argv[2])
    tracker = Tracker()
    for n in range(count):
        with tracker.call(use_case="chat_tutor", user_id=f"{tag}-u{n % 5}", tenant_id="t1",
                          account_type="super_admin", provider="openai", model="gpt-4o-mini") as call:
            call.record(input_tokens=300, output_tokens=40)
        time.sleep(0.004)
    tracker.close()
""")


def host(root: Path, name: str):
    home = root / name
    home.mkdir()
    settings = load_settings(home=home)
    settings.ensure_dirs()
    return settings


def env_for(settings, **extra) -> dict[str, str]:
    return {**os.environ, "LLMCOST_HOME": str(settings.home), **extra}


def rows(settings, sql):
    with store.reading(settings.db_path) as db:
        return db.execute(sql).fetchall()


def journal_ids(settings) -> tuple[set[str], set[str]]:
    events, attempts = set(), set()
    for path in settings.journal_dir.glob("*.jsonl"):
        for line in path.read_text().splitlines():
            record = json.loads(line)
            if record.get("record") == "attempt":
                attempts.add(record["attempt_id"])
            else:
                events.add(record["event_id"])
    return events, attempts


@contextlib.contextmanager
def collector_process(settings, port: int, log_path: Path):
    """`llmcost serve` on a given port (so a restarted collector is found at the same URL)."""
    with open(log_path, "ab") as log:
        process = subprocess.Popen(serve_command(port), env=env_for(settings), stdout=log, stderr=log)
    try:
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None, log_path.read_text()
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                    break
            assert time.monotonic() < deadline, log_path.read_text()
            time.sleep(0.1)
        yield process
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            process.wait(timeout=30)


def wait_until(condition, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.2)
    return condition()


def test_four_writers_and_a_collector_killed_twice_store_every_event_and_attempt_once(tmp_path):
    host_a, host_b = host(tmp_path, "a"), host(tmp_path, "b")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    collector_log = tmp_path / "collector.log"
    writers = [subprocess.Popen([sys.executable, "-c", WRITER, f"w{n}", "500"], env=env_for(host_a),
                                stderr=subprocess.PIPE) for n in range(4)]
    forward_log = open(tmp_path / "forward.log", "wb")  # noqa: SIM115 - closed below

    def start_forwarder() -> subprocess.Popen:
        return subprocess.Popen([sys.executable, "-m", "llmcost", "forward", "--to", url, "--interval", "0.2"],
                                env=env_for(host_a), stdout=forward_log, stderr=forward_log)

    forwarder = start_forwarder()
    kills = 0
    try:
        for round_number in range(2):
            with collector_process(host_b, port, collector_log) as collector:
                time.sleep(1.0)
                collector.kill()  # kill -9: no shutdown of any kind
                collector.wait()
                kills += 1
            if round_number == 0:  # the forwarder too, mid-retry: its saved offset is all it keeps
                forwarder.kill()
                forwarder.wait()
                forwarder = start_forwarder()
            time.sleep(0.5)  # down for a while: the forwarder retries
        with collector_process(host_b, port, collector_log):
            for writer in writers:
                assert writer.wait(timeout=300) == 0, writer.stderr.read().decode()
            events, attempts = journal_ids(host_a)
            assert (len(events), len(attempts)) == (2000, 2000)
            assert wait_until(lambda: sum(forward_status(host_a)["waiting"].values()) == 0, timeout=120), (
                forward_status(host_a), (tmp_path / "forward.log").read_text()[-2000:])
    finally:
        forwarder.send_signal(signal.SIGINT)
        forwarder.wait(timeout=30)
        forward_log.close()
    assert kills == 2
    log_text = (tmp_path / "forward.log").read_text()
    assert "retrying in" in log_text and "Traceback" not in log_text  # the collector was down while A forwarded

    ingest(host_b.home)
    stored_events = [r[0] for r in rows(host_b, "SELECT event_id FROM usage_events")]
    stored_attempts = [r[0] for r in rows(host_b, "SELECT attempt_id FROM call_attempts")]
    assert len(stored_events) == len(set(stored_events)) == 2000 and set(stored_events) == events
    assert len(stored_attempts) == len(set(stored_attempts)) == 2000 and set(stored_attempts) == attempts
    assert rows(host_b, "SELECT sum(input_tokens), sum(output_tokens) FROM usage_events") == [(600_000, 80_000)]
    assert read_rejected(host_a) == []


def test_a_fallback_log_record_on_a_reaches_b_like_a_local_one_and_a_rejected_record_is_kept(tmp_path):
    host_a, host_b = host(tmp_path, "a"), host(tmp_path, "b")
    journal = Journal(host_a.journal_dir, fsync=False)
    journal.append(usage("journal-1"))
    journal.append({"record": "attempt", "attempt_id": "attempt-1", "ts": usage("x")["ts"], "use_case": "chat_tutor"})
    journal.append(usage("bad-ts", ts="yesterday"))
    journal.journal_dir.joinpath("hand-written.jsonl").write_bytes(b'{"not json\n7\n')
    journal.close()
    fallback.append(host_a.fallback_log, usage("rescued-1"), "OSError: [Errno 28] No space left on device")
    fallback.append(host_a.fallback_log, {"record": "attempt", "attempt_id": "attempt-2", "ts": usage("x")["ts"],
                                          "use_case": "chat_tutor"}, "OSError: disk full")
    local = host(tmp_path, "local")  # the same fallback log ingested where it was written, for comparison
    local.fallback_log.write_bytes(host_a.fallback_log.read_bytes())
    ingest(local.home)

    with running_collector(host_b.home) as collector:
        forwarder = Forwarder(host_a, collector.url)
        result = forwarder.forward_round()
        again = forwarder.forward_round()
        forwarder.close()
    ingest(host_b.home)

    assert (result.acknowledged, result.rejected) == (4, 3) and (again.acknowledged, again.rejected) == (0, 0)
    assert sorted(r[0] for r in rows(host_b, "SELECT event_id FROM usage_events")) == ["journal-1", "rescued-1"]
    assert sorted(r[0] for r in rows(host_b, "SELECT attempt_id FROM call_attempts")) == ["attempt-1", "attempt-2"]
    failed_sql = "SELECT kind, error, event_id, recovered FROM failed_logs ORDER BY error"
    assert rows(host_b, failed_sql) == rows(local, failed_sql) == [
        ("fallback", "OSError: [Errno 28] No space left on device", "rescued-1", True),
        ("fallback", "OSError: disk full", None, True)]
    kept = read_rejected(host_a)
    assert sorted(Path(r["source"]).name for r in kept) == sorted(
        [next(host_a.journal_dir.glob("*-*-*.jsonl")).name] + ["hand-written.jsonl"] * 2)
    by_line = {r["line"]: r["reason"] for r in kept}
    assert "ts" in by_line[json.dumps(usage("bad-ts", ts="yesterday"), separators=(",", ":"))]
    assert by_line['{"not json'].startswith("not valid JSON") and "JSON object, not int" in by_line["7"]


def test_a_batch_sent_twice_is_stored_once_and_ids_are_derived_for_records_without_one(tmp_path):
    host_a, host_b = host(tmp_path, "a"), host(tmp_path, "b")
    journal = Journal(host_a.journal_dir, fsync=False)
    for n in range(50):
        journal.append(usage(f"e{n}"))
    journal.close()
    no_id = usage("x")
    del no_id["event_id"]
    with next(host_a.journal_dir.glob("*.jsonl")).open("ab") as f:  # a hand-written line: a number, no id
        f.write(json.dumps(no_id).encode()[:-1] + b', "cost_usd": 0.000123456789}\n7\n')
    with running_collector(host_b.home) as collector:
        Forwarder(host_a, collector.url).forward_round()
        state_path(host_a).unlink()  # as if A crashed after the 202, before saving its offset
        resent = Forwarder(host_a, collector.url).forward_round()
    assert (resent.acknowledged, resent.rejected) == (51, 1)
    assert [r["line"] for r in read_rejected(host_a)] == ["7"]  # kept once, though rejected twice
    ingest(host_b.home)
    assert rows(host_b, "SELECT count(*), count(DISTINCT event_id) FROM usage_events") == [(51, 51)]
    derived = rows(host_b, "SELECT event_id, cost_usd FROM usage_events WHERE event_id LIKE 'fwd:%'")
    assert len(derived) == 1 and str(derived[0][1]) == "0.000123456789"


def test_an_unreachable_collector_loses_nothing_and_status_shows_what_waits(tmp_path, monkeypatch):
    host_a, host_b = host(tmp_path, "a"), host(tmp_path, "b")
    journal = Journal(host_a.journal_dir, fsync=False)
    for n in range(20):
        journal.append(usage(f"e{n}"))
    journal.close()
    url = f"http://127.0.0.1:{free_port()}"  # nobody listens there
    with pytest.raises(CollectorUnavailable):
        Forwarder(host_a, url).forward_round()
    monkeypatch.setenv("LLMCOST_HOME", str(host_a.home))
    monkeypatch.setenv("LLMCOST_FORWARD_TO", url)
    status = subprocess.run([sys.executable, "-m", "llmcost", "status"], capture_output=True, text=True,
                            env={**os.environ})
    assert f"forward to:    {url}" in status.stdout
    assert "to forward:    20 journal and 0 fallback-log records" in status.stdout
    assert "last forward:  never" in status.stdout and "forward error:" in status.stdout
    assert f"No store on this host: its records are forwarded to {url}" in status.stdout
    once = subprocess.run([sys.executable, "-m", "llmcost", "forward", "--once"], capture_output=True, text=True)
    assert once.returncode == 1 and "did not answer" in once.stderr

    with running_collector(host_b.home) as collector:
        watch = subprocess.run([sys.executable, "-m", "llmcost", "watch", "--once"], capture_output=True, text=True,
                               env={**os.environ, "LLMCOST_FORWARD_TO": collector.url})
    assert watch.returncode == 0, watch.stderr
    assert "forwarding to" in watch.stderr and "forwarded 20 records" in watch.stderr
    assert not host_a.db_path.exists()  # the app host forwarded: it has no store of its own
    status = forward_status(host_a)
    assert status["waiting"] == {"journal": 0, "fallback": 0} and status["last_success"]
    ingest(host_b.home)
    assert rows(host_b, "SELECT count(*) FROM usage_events") == [(20,)]


def test_retention_deletes_only_old_journal_files_forwarded_in_whole(tmp_path):
    home = tmp_path / "a"
    home.mkdir()
    (tmp_path / "llmcost.toml").write_text(f'home = "{home}"\nforward_retention_days = 3\n')
    host_a = load_settings(config=tmp_path / "llmcost.toml")
    host_a.ensure_dirs()
    host_b = host(tmp_path, "b")
    old = time.time() - 5 * 86400
    files = {}
    for name, torn in (("old-forwarded", False), ("old-torn", True), ("recent", False)):
        path = host_a.journal_dir / f"{name}.jsonl"
        path.write_bytes(json.dumps(usage(name)).encode() + b"\n" + (b'{"event_id": "half' if torn else b""))
        files[name] = path
    for name in ("old-forwarded", "old-torn"):
        os.utime(files[name], (old, old))
    with running_collector(host_b.home) as collector:
        result = Forwarder(host_a, collector.url).forward_round()
    assert result.deleted == [str(files["old-forwarded"].resolve())]
    assert not files["old-forwarded"].exists() and files["old-torn"].exists() and files["recent"].exists()
    ingest(host_b.home)
    assert rows(host_b, "SELECT count(*) FROM usage_events") == [(3,)]


def test_forward_benchmark_runs_end_to_end_and_proves_exactly_once(tmp_path):
    out = tmp_path / "forward.json"
    bench = Path(__file__).resolve().parent.parent / "bench" / "forward.py"
    done = subprocess.run([sys.executable, str(bench), "--events", "1000", "--out", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    results = json.loads(out.read_text())
    assert results["benchmark"] == "forward" and "A journal to B store ev/s" in done.stdout
    (row,) = results["rows"]
    assert row["journal_lines"] == 2000 and row["exactly_once"] is True
    assert row["remote"] == row["local"] == {"events": 1000, "distinct_events": 1000, "attempts": 1000,
                                             "distinct_attempts": 1000}
    assert row["local_ingest_s"] > 0 and row["forward_s"] > 0 and row["end_to_end_events_per_s"] > 0
    assert [t["target"].split(" within")[0] for t in results["targets"]] == [
        "A's journal to B's store", "every event and call attempt in B's store exactly once"]


def test_forward_settings_come_from_the_file_or_the_environment_and_a_typo_names_the_key(tmp_path, monkeypatch):
    from llmcost.errors import ConfigError

    config = tmp_path / "llmcost.toml"
    config.write_text('forward_to = "http://b:8787"\nforward_key = "k1"\nforward_retention_days = 7\n')
    settings = load_settings(config=config)
    assert (settings.forward_to, settings.forward_key, settings.forward_retention_days) == ("http://b:8787", "k1", 7)
    monkeypatch.setenv("LLMCOST_FORWARD_TO", "http://c:8787")
    monkeypatch.setenv("LLMCOST_FORWARD_KEY", "k2")
    assert (load_settings(config=config).forward_to, load_settings(config=config).forward_key) == (
        "http://c:8787", "k2")
    config.write_text('forward_too = "http://b:8787"\n')
    with pytest.raises(ConfigError, match="did you mean 'forward_to'"):
        load_settings(config=config)
    config.write_text('forward_retention_days = "soon"\n')
    with pytest.raises(ConfigError, match="forward_retention_days"):
        load_settings(config=config)


def test_the_collector_checks_attempts_and_fallback_entries_by_ingestion_rules_and_a_tenant_key():
    from llmcost.collector.auth import Grant
    from llmcost.collector.intake import check_records

    ts = usage("x")["ts"]
    records = [
        {"record": "attempt", "attempt_id": "a1", "ts": ts, "use_case": "chat_tutor"},
        {"record": "attempt", "attempt_id": "a2", "ts": ts, "tenant_id": "other"},
        {"record": "attempt", "ts": ts},
        {"timestamp": ts, "error": "disk full", "event": usage("f1", tenant_id=None)},
        {"timestamp": ts, "error": "disk full", "event": usage("f2", tenant_id="other")},
        {"timestamp": ts, "error": "disk full", "event": 7},
    ]
    checked = check_records(records, Grant(tenant_id="t1"), source="collector:usage")
    assert [r["index"] for r in checked.rejected] == [1, 2, 4, 5]
    assert "attempt_id" in checked.rejected[1]["error"] and "tenant 'other'" in checked.rejected[2]["error"]
    assert [r.get("attempt_id") or r["event"]["event_id"] for r in checked.accepted] == ["a1", "f1"]
    assert checked.accepted[1]["event"]["tenant_id"] == "t1"  # a tenant's key speaks for that tenant
    assert "event_id" not in checked.accepted[0] and checked.events == []  # spend counts plain events only


def test_a_line_longer_than_any_request_is_kept_on_a_and_the_records_around_it_go_on(tmp_path):
    host_a, host_b = host(tmp_path, "a"), host(tmp_path, "b")
    journal = host_a.journal_dir / "long.jsonl"
    overlong = b'{"event_id": "huge", "metadata": {"note": "' + b"x" * (9 * 1024 * 1024) + b'"}}'
    journal.write_bytes(b"\n".join([json.dumps(usage("before")).encode(), overlong,
                                    json.dumps(usage("after")).encode(), b""]))
    with running_collector(host_b.home) as collector:
        result = Forwarder(host_a, collector.url).forward_round()
    assert (result.acknowledged, result.rejected) == (2, 1)
    (kept,) = read_rejected(host_a)
    assert "longer than a record may be" in kept["reason"] and kept["line"].startswith('{"event_id": "huge"')
    ingest(host_b.home)
    assert sorted(r[0] for r in rows(host_b, "SELECT event_id FROM usage_events")) == ["after", "before"]


def test_a_collector_taking_small_bodies_gets_smaller_batches_and_a_record_too_big_for_it_is_kept(tmp_path):
    host_a, host_b = host(tmp_path, "a"), host(tmp_path, "b")
    journal = Journal(host_a.journal_dir, fsync=False)
    for n in range(20):
        journal.append(usage(f"e{n}"))
    journal.append(usage("big", metadata={"note": "y" * 3000}))
    journal.close()
    with running_collector(host_b.home, "--max-body-bytes", "2048") as collector:
        result = Forwarder(host_a, collector.url).forward_round()
    assert (result.acknowledged, result.rejected) == (20, 1)
    (kept,) = read_rejected(host_a)
    assert kept["reason"].startswith("collector answered 413") and '"big"' in kept["line"]
    ingest(host_b.home)
    assert rows(host_b, "SELECT count(DISTINCT event_id), count(*) FROM usage_events") == [(20, 20)]
