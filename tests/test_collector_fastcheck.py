"""The collector's batch check (`llmcost.collector.fastcheck`) against the exact per-record path: the same
answers, the same journal lines, and the same stored rows and failed logs after `llmcost ingest`."""

from __future__ import annotations

import asyncio
import copy
import datetime as dt
import itertools
from pathlib import Path

import pytest
from pydantic import Field, model_validator

from llmcost.collector import intake
from llmcost.collector.auth import OPEN_GRANT, Grant
from llmcost.collector.fastcheck import PlainEvents, unknown_checks
from llmcost.config import load_settings
from llmcost.events import UsageEvent

from .collector_server import ingest, rows

NOW = dt.datetime.now(dt.timezone.utc).replace(microsecond=0)
TS = (NOW - dt.timedelta(minutes=5)).isoformat()


def event(n: int, **overrides):
    base = {"ts": TS, "user_id": f"u{n}", "tenant_id": "t1", "use_case": "chat_tutor", "provider": "openai",
            "model": "gpt-4o", "input_tokens": 100 + n, "output_tokens": 20}
    base.update(overrides)
    return base


def without(record: dict, *names: str) -> dict:
    return {k: v for k, v in record.items() if k not in names}


# (record, whether the batch check passes it as plain). Every other record takes the exact path.
MIXED = [
    (event(1), True),
    (event(2, event_id="given-2", account_type="teacher", response_model="gpt-4o-2024-08-06", service_tier="default",
           input_tokens=1000, cache_read_tokens=300, cache_write_tokens=200, cache_write_1h_tokens=50,
           output_tokens=400, reasoning_tokens=100, total_tokens=1400, estimated_tokens=900, usage_estimated=True,
           latency_ms=812.5, status="error", error="rate limited\n  retry later", cost_usd="0.004250000001",
           price_source="provider", attempt_id="attempt-2", source="worker-7",
           metadata={"route": "/chat", "nested": [1, {"a": None}]}), True),
    (event(3, model=None, latency_ms=None, total_tokens=None, event_id=None), True),  # null reads as absent
    (event(4, provider="Claude", model="claude-sonnet-4-5"), True),  # stored as 'anthropic' by ingestion
    (event(5, ts=(NOW - dt.timedelta(hours=1)).replace(tzinfo=None).isoformat()), True),  # naive: UTC
    (event(6, ts=(NOW - dt.timedelta(hours=2)).astimezone(dt.timezone(dt.timedelta(hours=5, minutes=30)))
           .isoformat()), True),
    (event(7, account_type=""), True),
    (event(8, event_id="dup-1"), True),
    (event(9, event_id="dup-1", input_tokens=999), True),
    (event(10, cost_usd="0"), True),
    (without(event(11), "user_id"), False),  # unattributed: its tokens were spent
    ({"ts": TS, "model": "gpt-4o"}, False),  # no identity, no usage: rejected
    (event(12, input_tokens="12"), False),  # coerced by the exact path
    (event(13, output_tokens=20.0), False),
    (event(14, user_id="  spaced  "), False),  # stripped by the exact path
    (event(15, usage_estimated="yes"), False),
    (event(16, cost_usd=0.002), False),
    (event(17, input_tokens=True), False),
    (event(18, unknown_key=1), False),
    (event(19, ts=(NOW + dt.timedelta(days=3)).isoformat()), False),
    (event(20, ts="2014-12-31T23:00:00+00:00"), False),
    (event(21, ts="2026-02-30T10:00:00Z"), False),
    (event(22, cache_read_tokens=500), False),  # cached tokens above input_tokens
    (event(23, reasoning_tokens=21), False),
    (event(24, cache_write_tokens=10, cache_write_1h_tokens=11), False),
    (event(25, total_tokens=5), False),
    (event(26, user_id="a\x00b"), False),
    (event(27, input_tokens=10**9 + 1), False),
    (event(28, latency_ms=-1), False),
    (event(29, status="OK"), False),
    (event(30, metadata=[1]), False),
    (event(31, event_id=""), False),
    (event(32, tenant_id="t2"), True),  # plain; a key tied to t1 sends it to the exact path, which refuses it
    (without(event(33), "tenant_id"), False),  # a key tied to t1 fills it in
    ({"record": "attempt", "attempt_id": "att-1", "ts": TS, "user_id": "u1", "tenant_id": "t1",
      "use_case": "chat_tutor", "model": "gpt-4o", "estimated_tokens": 50}, False),
    ({"timestamp": TS, "error": "journal unavailable", "event": event(34)}, False),
    ({"timestamp": TS, "error": "journal unavailable", "event": 5}, False),
    (7, False),
    ([event(35)], False),
]


def test_the_batch_check_passes_only_plain_events_and_each_is_one_usage_event_accepts():
    records = [copy.deepcopy(record) for record, _ in MIXED]
    plain = PlainEvents().judge(records)
    assert plain == [expected for _, expected in MIXED]
    for record, is_plain in zip(records, plain):
        if is_plain:
            UsageEvent.model_validate(record)


def _check(records: list, grant: Grant, monkeypatch, *, exact_only: bool) -> intake.Checked:
    monkeypatch.setattr(intake, "_id_counter", itertools.count(1))  # the same generated ids in both runs
    if exact_only:
        monkeypatch.setattr(intake, "_PLAIN_EVENTS", _NothingPlain())
    else:
        monkeypatch.setattr(intake, "_PLAIN_EVENTS", PlainEvents())
    return intake.check_records(records, grant, source="collector:usage")


class _NothingPlain:
    def judge(self, records):
        return [False] * len(records)


def _journal(home: Path, accepted: list) -> Path:
    home.mkdir()
    settings = load_settings(home=home)
    settings.ensure_dirs()

    async def write():
        writer = intake.DurableWriter(settings.journal_dir, settings.fallback_log)
        try:
            assert await writer.write(accepted) == "journal"
        finally:
            writer.close()

    asyncio.run(write())
    return settings


USAGE_COLUMNS = ("event_id, ts, day, user_id, tenant_id, use_case, account_type, provider, model, response_model, "
                 "service_tier, input_tokens, output_tokens, cache_read_tokens, cache_write_tokens, reasoning_tokens, "
                 "cache_write_1h_tokens, total_tokens, estimated_tokens, usage_estimated, latency_ms, status, error, "
                 "cost_usd, price_source, attempt_id, source, metadata")


@pytest.mark.slow
@pytest.mark.parametrize("grant", [OPEN_GRANT, Grant(tenant_id="t1")], ids=["open-key", "key-tied-to-t1"])
def test_a_mixed_batch_stores_the_same_rows_and_failed_logs_through_either_path(grant, tmp_path, monkeypatch):
    fast = _check([copy.deepcopy(record) for record, _ in MIXED], grant, monkeypatch, exact_only=False)
    exact = _check([copy.deepcopy(record) for record, _ in MIXED], grant, monkeypatch, exact_only=True)
    assert fast == exact
    assert intake.encode_records(fast.accepted) == intake.encode_records(exact.accepted)
    assert (len(fast.accepted), len(fast.rejected)) == ((19, 20) if grant.tenant_id else (20, 19))
    refused = [r["index"] for r in fast.rejected if r["error"].startswith("tenant ")]
    assert refused == ([32] if grant.tenant_id else [])

    stored = {}
    for name, checked in (("fast", fast), ("exact", exact)):
        settings = _journal(tmp_path / name, checked.accepted)
        ingest(settings.home)
        stored[name] = (
            rows(settings, f"SELECT {USAGE_COLUMNS} FROM usage_events ORDER BY event_id, input_tokens"),
            rows(settings, "SELECT kind, use_case, estimated_tokens, error, user_id, tenant_id, raw, event_id "
                           "FROM failed_logs ORDER BY raw"),
        )
    assert stored["fast"] == stored["exact"]
    usage, failed = stored["fast"]
    assert len(usage) == len(fast.accepted) - 2  # the call attempt is no usage event; dup-1 is stored once
    assert {row[7] for row in usage} >= {"openai", "anthropic"}
    # dup-1 twice with other counts; the forwarded fallback entry; no user (and, with an open key, no tenant)
    unattributed = ["unattributed"] * (1 if grant.tenant_id else 2)
    assert sorted(row[0] for row in failed) == ["conflict", "fallback", *unattributed]


PLAIN = [record for record, is_plain in MIXED if is_plain]


@pytest.mark.parametrize("grant", [OPEN_GRANT, Grant(tenant_id="t1")], ids=["open-key", "key-tied-to-t1"])
def test_an_all_plain_batch_gives_the_exact_paths_answer_and_journal_lines(grant, monkeypatch):
    # The usual batch (every record plain) takes one tight loop; it must add the same ids and source.
    fast = _check([copy.deepcopy(record) for record in PLAIN], grant, monkeypatch, exact_only=False)
    exact = _check([copy.deepcopy(record) for record in PLAIN], grant, monkeypatch, exact_only=True)
    assert fast == exact
    assert intake.encode_records(fast.accepted) == intake.encode_records(exact.accepted)
    assert len(fast.accepted) == len(PLAIN) - (1 if grant.tenant_id else 0)  # t2's record, under t1's key
    assert all(record["event_id"] and record["source"] for record in fast.accepted)


def test_a_check_usage_event_gains_that_the_batch_check_does_not_mirror_is_named():
    class StricterEvent(UsageEvent):
        model: str | None = Field(default=None, max_length=500, pattern="^gpt-")

        @model_validator(mode="after")
        def _only_weekdays(self):
            return self

    found = unknown_checks(StricterEvent)
    assert any(item.startswith("model:") for item in found)
    assert "validator _only_weekdays" in found
    assert unknown_checks(UsageEvent) == []
