import json
import subprocess
import sys
import textwrap
import threading
from decimal import Decimal

import anthropic
import openai
import pytest

from llmcost.control.state import ControlState
from llmcost.errors import (
    BudgetExceededError,
    MissingIdentityError,
    SpendingHaltedError,
    TrackingUnavailableError,
    UsageNotRecordedError,
    UseCaseDisabledError,
)
from llmcost.ingestion.run import ingest
from llmcost.sdk.tracker import Tracker
from llmcost.store import connection as store


def openai_client(provider):
    return openai.OpenAI(base_url=provider.url + "/v1", api_key="test-key", max_retries=0)


def journal_records(settings):
    records = []
    for path in sorted(settings.journal_dir.glob("*.jsonl")):
        records.extend(json.loads(line) for line in path.read_bytes().splitlines())
    return records


def usage_records(settings):
    return [r for r in journal_records(settings) if r.get("record") != "attempt"]


def stored(settings, sql="SELECT count(*) FROM usage_events", params=()):
    with store.reading(settings.db_path) as db:
        return db.execute(sql, list(params)).fetchall()


def test_context_manager_records_priced_usage_after_a_write_ahead_attempt(tracker, settings, provider):
    client = openai_client(provider)
    with tracker.call(use_case="auto_populate", user_id="u1", tenant_id="t1", provider="openai", model="gpt-4o",
                      account_type="admin", prompt="Summarise this lesson " * 50) as call:
        call.record(client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}]))
    attempt, event = journal_records(settings)
    assert attempt["record"] == "attempt" and attempt["attempt_id"] == event["attempt_id"]
    assert attempt["estimated_tokens"] == 275 + 256  # 1,100 characters / 4, plus the default expected output
    # gpt-4o: 800 uncached input at $2.50/MTok + 200 cached at $1.25/MTok + 500 output at $10/MTok
    assert Decimal(event["cost_usd"]) == Decimal("0.00725")
    assert (event["input_tokens"], event["output_tokens"], event["cache_read_tokens"]) == (1000, 500, 200)
    assert event["price_source"] == "price-table" and event["status"] == "ok"
    assert event["metadata"]["estimate_mismatch"] is True  # 1,500 actual against 531 estimated
    assert tracker.in_flight() == []


@pytest.mark.parametrize("missing, kwargs", [
    (["user_id"], {"tenant_id": "t"}),
    (["tenant_id"], {"user_id": "u"}),
    (["user_id", "tenant_id"], {"user_id": "  "}),
])
def test_missing_identity_refuses_the_call_naming_every_field(tracker, settings, missing, kwargs):
    made = []
    with pytest.raises(MissingIdentityError) as caught:
        with tracker.call(use_case="chat_tutor", **kwargs):
            made.append(True)
    assert made == [] and caught.value.missing == missing
    assert all(name in str(caught.value) for name in missing) and "tracker.identity" in str(caught.value)
    assert journal_records(settings) == []


def test_a_disabled_use_case_is_refused_until_enabled_from_another_process(tracker, settings):
    subprocess.run([sys.executable, "-m", "llmcost", "disable", "chat_tutor", "--reason", "runaway loop"], check=True,
                   capture_output=True)
    with pytest.raises(UseCaseDisabledError, match="runaway loop.*llmcost enable chat_tutor"):
        with tracker.call(use_case="chat_tutor", user_id="u", tenant_id="t"):
            pytest.fail("the call must not be made")
    subprocess.run([sys.executable, "-m", "llmcost", "enable", "chat_tutor"], check=True, capture_output=True)
    with tracker.call(use_case="chat_tutor", user_id="u", tenant_id="t") as call:
        call.record(input_tokens=10, output_tokens=5)
    assert len(usage_records(settings)) == 1


def test_spending_halts_at_the_shutdown_level_until_resumed(tracker, settings, provider):
    with tracker.call(use_case="chat_tutor", user_id="big", tenant_id="t", account_type="super_admin",
                      provider="openai", model="gpt-4o") as call:
        call.record(input_tokens=0, output_tokens=20_000_000)  # $200.00 of gpt-4o output
    with pytest.raises(SpendingHaltedError, match="halted.*llmcost resume"):
        with tracker.call(use_case="chat_tutor", user_id="other", tenant_id="t"):
            pytest.fail("the call must not be made")
    subprocess.run([sys.executable, "-m", "llmcost", "resume"], check=True, capture_output=True)
    with tracker.call(use_case="chat_tutor", user_id="other", tenant_id="t") as call:
        call.record(input_tokens=1, output_tokens=1)


def test_a_hard_budget_refuses_the_call_and_soft_or_alert_limits_allow_it_with_the_reason(tracker, settings):
    common = dict(use_case="scaffolder", tenant_id="t", provider="openai", model="gpt-4o")
    with tracker.call(user_id="builder", account_type="lesson_builder", **common) as call:
        call.record(input_tokens=90_000, output_tokens=5_000)
    with pytest.raises(BudgetExceededError, match="builder.*lesson_builder") as caught:
        with tracker.call(user_id="builder", account_type="lesson_builder", estimated_tokens=10_000, **common):
            pytest.fail("the call must not be made")
    assert "limits" in str(caught.value)
    for user, account_type, word in (("kid", "student", "soft"), ("boss", "admin", "alert")):
        for _ in range(2):  # the first call goes past the limit, the second starts above it
            with tracker.call(user_id=user, account_type=account_type, **common) as call:
                call.record(input_tokens=600_000, output_tokens=1_000)
        first, second = usage_records(settings)[-2:]
        assert "budget" not in first["metadata"]
        assert second["user_id"] == user and word in second["metadata"]["budget"]


def test_a_call_that_raises_is_recorded_with_its_estimate_never_as_zero(tracker, settings, provider):
    provider.mode = "error"
    client = tracker.wrap(openai_client(provider), use_case="chat_tutor")
    with tracker.identity(user_id="u", tenant_id="t"):
        with pytest.raises(openai.InternalServerError):
            client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "x" * 4000}])
    event = usage_records(settings)[0]
    assert event["status"] == "error" and "upstream exploded" in event["error"]
    assert event["usage_estimated"] is True and event["input_tokens"] >= 1000
    assert Decimal(event["cost_usd"]) > 0


def test_a_stream_cut_off_midway_is_recorded_with_nonzero_estimated_usage(tracker, settings, provider):
    provider.mode = "cut"
    client = tracker.wrap(openai_client(provider), use_case="chat_tutor")
    received = []
    with tracker.identity(user_id="u", tenant_id="t"):
        stream = client.chat.completions.create(model="gpt-4o", stream=True,
                                                messages=[{"role": "user", "content": "tell me a story"}])
        with pytest.raises(openai.APIConnectionError):  # the SDK's error for a dropped connection
            for chunk in stream:
                received.append(chunk)
    assert len(received) == 8
    event = usage_records(settings)[0]
    assert event["status"] == "error" and event["usage_estimated"] is True
    assert event["output_tokens"] > 0 and Decimal(event["cost_usd"]) > 0


def test_a_whole_stream_records_usage_from_its_final_chunk(tracker, settings, provider):
    client = tracker.wrap(openai_client(provider), use_case="chat_tutor")
    with tracker.identity(user_id="u", tenant_id="t"):
        text = "".join(c.choices[0].delta.content or "" for c in client.chat.completions.create(
            model="gpt-4o", stream=True, messages=[{"role": "user", "content": "hi"}]) if c.choices)
    assert text.startswith("word0 ")
    assert provider.requests[-1]["body"]["stream_options"] == {"include_usage": True}
    event = usage_records(settings)[0]
    assert (event["input_tokens"], event["output_tokens"], event["status"]) == (120, 20, "ok")
    assert event["usage_estimated"] is False


def test_wrapped_anthropic_client_reads_cache_tokens(tracker, settings, provider):
    client = tracker.wrap(anthropic.Anthropic(base_url=provider.url, api_key="k", max_retries=0))
    client.messages.create(model="claude-sonnet-4-5", max_tokens=1024, messages=[{"role": "user", "content": "hi"}],
                           llmcost={"use_case": "content_analyzer", "user_id": "u", "tenant_id": "t"})
    assert "llmcost" not in provider.requests[-1]["body"]
    event = usage_records(settings)[0]
    assert (event["provider"], event["input_tokens"], event["cache_read_tokens"], event["cache_write_tokens"]) == (
        "anthropic", 1000, 200, 100)
    # 700 input at $3 + 200 cache read at $0.30 + 100 cache write at $3.75 + 500 output at $15, per MTok
    assert Decimal(event["cost_usd"]) == Decimal("0.010035")


def test_decorator_takes_identity_from_the_function_arguments(tracker, settings, provider):
    client = openai_client(provider)

    @tracker.track(use_case="interaction_generator", provider="openai", model="gpt-4o")
    def generate(prompt, user_id, tenant_id):
        return client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": prompt}])

    generate("make a quiz", user_id="teacher-7", tenant_id="school-2")
    event = usage_records(settings)[0]
    assert (event["user_id"], event["tenant_id"], event["use_case"]) == ("teacher-7", "school-2", "interaction_generator")
    assert event["input_tokens"] == 1000
    with pytest.raises(MissingIdentityError):
        generate("no identity", user_id=None, tenant_id="school-2")


def test_in_flight_lists_calls_until_they_finish(tracker):
    with tracker.call(use_case="chat_tutor", user_id="u", tenant_id="t") as call:
        flying = tracker.in_flight()
        assert [f["attempt_id"] for f in flying] == [call.attempt_id]
        call.record(input_tokens=1, output_tokens=1)
    assert tracker.in_flight() == []


def test_journal_unwritable_sends_records_to_the_fallback_log_and_ingest_stores_them(settings, caplog):
    settings.journal_dir.rmdir()
    settings.journal_dir.write_text("not a folder")  # every journal write now fails, even as root
    tracker = Tracker(settings)
    for n in range(5):
        with tracker.call(use_case="chat_tutor", user_id=f"u{n}", tenant_id="t", provider="openai",
                          model="gpt-4o") as call:
            call.record(input_tokens=100, output_tokens=10)
    assert "record kept in the fallback log" in caplog.text
    lines = [json.loads(line) for line in settings.fallback_log.read_bytes().splitlines()]
    assert len(lines) == 10 and all("error" in line and "event" in line for line in lines)
    result = ingest(settings, [settings.fallback_log])
    assert (result.stored, result.attempts, result.failed) == (5, 5, 0)
    assert stored(settings, "SELECT count(*) FROM failed_logs WHERE recovered")[0][0] == 10  # 5 attempts, 5 events


def test_strict_mode_reraises_after_the_record_is_safe(settings):
    settings.journal_dir.rmdir()
    settings.journal_dir.write_text("not a folder")
    tracker = Tracker(settings, strict=True)
    with pytest.raises(OSError):
        with tracker.call(use_case="chat_tutor", user_id="u", tenant_id="t") as call:
            call.record(input_tokens=100, output_tokens=10)
    events = [json.loads(l)["event"] for l in settings.fallback_log.read_bytes().splitlines()]
    assert [e.get("record", "usage") for e in events] == ["attempt", "usage"]


def test_nowhere_to_write_refuses_the_call_or_raises_usage_not_recorded(settings):
    tracker = Tracker(settings)
    with tracker.call(use_case="chat_tutor", user_id="u", tenant_id="t") as call:
        settings.journal_dir.rename(settings.home / "journal-moved")
        settings.journal_dir.write_text("blocked")
        settings.fallback_log.mkdir()  # a folder where the fallback file should be
        tracker.journal.close()
        call.record(input_tokens=100, output_tokens=10, model="gpt-4o")
        with pytest.raises(UsageNotRecordedError, match="neither to the journal nor to the fallback log") as caught:
            call.finish()
    assert caught.value.event.total_tokens == 110
    with pytest.raises(TrackingUnavailableError, match="the call was not made"):
        with tracker.call(use_case="chat_tutor", user_id="u", tenant_id="t"):
            pytest.fail("the call must not be made")


def test_32_threads_racing_a_hard_limit_never_exceed_it_by_more_than_the_estimation_error(settings):
    tracker = Tracker(settings)
    limit = settings.limit_for("lesson_builder")
    refused, errors = [], []

    def worker():
        for _ in range(10):
            try:
                with tracker.call(use_case="scaffolder", user_id="racer", tenant_id="t", account_type="lesson_builder",
                                  estimated_tokens=5_000) as call:
                    call.record(input_tokens=4_000, output_tokens=1_500)  # actual 5,500: 10% above the estimate
            except BudgetExceededError:
                refused.append(1)
            except Exception as error:  # pragma: no cover - reported by the assertion below
                errors.append(error)

    threads = [threading.Thread(target=worker) for _ in range(32)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    total = sum(r["total_tokens"] for r in usage_records(settings))
    # Every admitted call fitted by its estimate; each may overrun it by 500 tokens, at most 32 at once.
    assert limit.tokens - 5_000 < total <= limit.tokens + 32 * 500
    assert refused and len(usage_records(settings)) == 320 - len(refused)


RACER = textwrap.dedent("""
    import sys
    from llmcost.errors import BudgetExceededError
    from llmcost.sdk.tracker import Tracker
    tracker = Tracker()
    for _ in range(40):
        try:
            with tracker.call(use_case="scaffolder", user_id="racer", tenant_id="t", account_type="lesson_builder",
                              estimated_tokens=5_000) as call:
                call.record(input_tokens=4_000, output_tokens=1_500)
        except BudgetExceededError:
            pass
""")


def test_4_processes_racing_a_hard_limit_hold_the_same_bound(settings):
    procs = [subprocess.Popen([sys.executable, "-c", RACER]) for _ in range(4)]
    assert all(p.wait(timeout=120) == 0 for p in procs)
    total = sum(r["total_tokens"] for r in usage_records(settings))
    assert settings.limit_for("lesson_builder").tokens - 5_000 < total <= 100_000 + 4 * 500


@pytest.mark.slow
def test_store_locked_for_the_whole_run_loses_nothing(settings):
    with store.writing(settings.db_path):
        pass
    holder = subprocess.Popen([sys.executable, "-c", "import duckdb,sys,time; db=duckdb.connect(sys.argv[1]); "
                               "print('locked', flush=True); sys.stdin.read()", str(settings.db_path)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert holder.stdout.readline().strip() == b"locked"
    tracker = Tracker(settings)
    try:
        for n in range(100):
            with tracker.call(use_case="chat_tutor", user_id=f"u{n % 9}", tenant_id="t", account_type="admin") as call:
                call.record(input_tokens=50, output_tokens=5)
        assert len(usage_records(settings)) == 100
    finally:
        holder.stdin.close()
        holder.wait(timeout=30)
    run = subprocess.run([sys.executable, "-m", "llmcost", "ingest"], capture_output=True, text=True, check=True)
    assert "stored 100" in run.stdout
    assert stored(settings)[0][0] == 100
    assert stored(settings, "SELECT count(DISTINCT event_id) FROM usage_events")[0][0] == 100


CALLER = textwrap.dedent("""
    import sys
    from llmcost.sdk.tracker import Tracker
    tracker = Tracker()
    worker = sys.argv[1]
    for n in range(500):
        with tracker.call(use_case="chat_tutor", user_id=f"{worker}-{n % 20}", tenant_id="t",
                          account_type="super_admin", provider="openai", model="gpt-4o-mini") as call:
            call.record(input_tokens=300, output_tokens=40)
""")
READER = textwrap.dedent("""
    import sys, time
    from llmcost.store import connection as store
    from llmcost.config import load_settings
    settings = load_settings()
    reads = 0
    while True:
        try:
            with store.reading(settings.db_path, timeout=10) as db:
                if db is not None:
                    db.execute("SELECT count(*), sum(cost_usd) FROM usage_events").fetchall()
                    reads += 1
        except Exception as error:
            print("reader error", error, file=sys.stderr)
            sys.exit(1)
        time.sleep(0.1)
""")


@pytest.mark.slow
def test_four_processes_with_watch_and_a_reader_store_exactly_2000_events(settings):
    watch = subprocess.Popen([sys.executable, "-m", "llmcost", "watch", "--interval", "0.3"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    reader = subprocess.Popen([sys.executable, "-c", READER], stderr=subprocess.PIPE)
    try:
        callers = [subprocess.Popen([sys.executable, "-c", CALLER, f"w{n}"]) for n in range(4)]
        assert all(p.wait(timeout=300) == 0 for p in callers)
        assert reader.poll() is None, reader.stderr.read().decode()
    finally:
        for proc in (watch, reader):
            proc.terminate()
            proc.wait(timeout=30)
    ingest(settings)  # whatever the watcher had not reached yet
    assert stored(settings)[0][0] == 2000
    assert stored(settings, "SELECT count(DISTINCT event_id) FROM usage_events")[0][0] == 2000
    assert stored(settings, "SELECT count(*) FROM call_attempts")[0][0] == 2000


def test_control_state_lost_is_rebuilt_from_store_and_journal(settings):
    tracker = Tracker(settings)
    with tracker.call(use_case="scaffolder", user_id="builder", tenant_id="t", account_type="lesson_builder") as call:
        call.record(input_tokens=60_000, output_tokens=0)
    ingest(settings)
    with tracker.call(use_case="scaffolder", user_id="builder", tenant_id="t", account_type="lesson_builder") as call:
        call.record(input_tokens=30_000, output_tokens=0)  # still only in the journal
    tracker.close()
    for suffix in ("", "-wal", "-shm"):
        path = settings.control_db.with_name(settings.control_db.name + suffix)
        if path.exists():
            path.unlink()
    fresh = Tracker(settings)
    with pytest.raises(BudgetExceededError):
        with fresh.call(use_case="scaffolder", user_id="builder", tenant_id="t", account_type="lesson_builder",
                        estimated_tokens=20_000):
            pytest.fail("the rebuilt state must know the 90,000 tokens already spent")
    assert ControlState(settings.control_db).user_spend(
        __import__("datetime").datetime.now(settings.tz).date(), "builder")[0] == 90_000


def test_context_manager_stream_form_records_usage_from_the_final_chunk(tracker, settings, provider):
    client = openai_client(provider)
    with tracker.call(use_case="chat_tutor", user_id="u", tenant_id="t", provider="openai", model="gpt-4o") as call:
        stream = client.chat.completions.create(model="gpt-4o", stream=True, stream_options={"include_usage": True},
                                                messages=[{"role": "user", "content": "hi"}])
        chunks = list(call.stream(stream))
    assert len(chunks) == 22  # 20 words, the stop chunk, the usage chunk
    event = usage_records(settings)[0]
    assert (event["input_tokens"], event["output_tokens"], event["usage_estimated"]) == (120, 20, False)
