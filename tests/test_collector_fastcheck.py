"""The collector's batch check (`llmcost.collector.fastcheck`) against the exact per-record path: the same
answers, the same journal lines, and the same stored rows and failed logs after `llmcost ingest`."""

from __future__ import annotations

import asyncio
import copy
import datetime as dt
import itertools
import json
from pathlib import Path

import msgspec
import pydantic_core
import pytest
from pydantic import Field, model_validator

from llmcost import events
from llmcost.collector import intake, typedread
from llmcost.collector.auth import OPEN_GRANT, Grant
from llmcost.collector.fastcheck import PlainEvents, unknown_checks
from llmcost.collector.typedread import read_plain
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


def _plain_text(**overrides) -> bytes:
    return json.dumps(event(1, **overrides)).encode()


def _with(raw: str) -> bytes:
    """A plain record's text with raw JSON members spliced in before its closing brace."""
    return _plain_text()[:-1] + b", " + raw.encode() + b"}"


SOON = (NOW + dt.timedelta(hours=20)).replace(tzinfo=None).isoformat()
HOSTILE = [
    # wrong types
    _with('"cache_read_tokens": "12"'), _with('"cache_read_tokens": 12.0'), _with('"cache_read_tokens": 1e1'),
    _with('"cache_read_tokens": true'), _with('"cache_read_tokens": -0'), _with('"latency_ms": 812'),
    _with('"latency_ms": 812.0'), _with('"latency_ms": "812"'), _with('"usage_estimated": 1'),
    _with('"status": 1'), _with('"metadata": "x"'), _with('"account_type": 5'), _with('"cost_usd": 0.5'),
    _plain_text(ts=1_700_000_000), _plain_text(ts="2026-02-30T10:00:00Z"), _plain_text(ts=TS.replace("T", "t")),
    _plain_text(ts=TS.replace("+00:00", ".1234567Z")), _plain_text(ts=SOON + "-14:59"),
    _plain_text(ts=SOON + "+14:59"), _plain_text(ts=SOON),
    # times of the usual form whose values only the bounds' validator or the offset's hour refuse
    _plain_text(ts=SOON + "+15:00"), _plain_text(ts=SOON + "-19:00"), _plain_text(ts=SOON + "+23:59"),
    _plain_text(ts="2026-12-01T10:00:60Z"), _plain_text(ts="2026-12-01T24:00:00Z"),
    _plain_text(ts="2026-12-01 10:00:00Z"), _plain_text(ts=TS.replace("0", "\u0660", 1)),
    _plain_text(ts=TS.replace("T", "\n")), _plain_text(ts=TS + "\n" + TS),
    b"[" + _plain_text(ts=SOON + "+15:00") + b"," + _plain_text(ts=SOON + "+15:00") + b"]",
    b"[" + _plain_text(ts=SOON + "+14:00") + b"," + _plain_text(ts=SOON + "+15:00") + b"]",
    # a source given, or given as null (the collector's is written only where none is given)
    _plain_text(source="app:given"), _plain_text(source=None),
    # unknown keys
    _with('"unknown": 1'), _with('"Latency_ms": 1'),
    # repeated keys, either value first
    _with('"cache_read_tokens": "x", "cache_read_tokens": 5'), _with('"cache_read_tokens": 5, "cache_read_tokens": "x"'),
    _with('"cache_read_tokens": 5, "cache_read_tokens": 7'), _with('"user_id": "u2"'), _with('"user_id": ""'),
    _with('"ts": "2014-01-01T00:00:00Z"'), _with(f'"ts": "2014-01-01T00:00:00Z", "ts": "{TS}"'),
    _with('"metadata": {"a": 1, "a": [2]}'), _with('"event_id": null, "event_id": "given"'),
    # huge numbers
    _with(f'"cache_read_tokens": {10**30}'), _with(f'"cache_read_tokens": -{10**30}'),
    _with(f'"metadata": {{"n": {10**30}}}'), _with(f'"latency_ms": {10**30}'), _with(f'"latency_ms": {10**400}'),
    _with('"metadata": {"n": 1e400}'), _with('"latency_ms": 1e400'), _with('"latency_ms": 1e-400'),
    # NaN and infinities, and the words inside strings
    _with('"latency_ms": NaN'), _with('"metadata": {"x": NaN}'), _with('"metadata": {"x": Infinity}'),
    _with('"metadata": {"x": -Infinity}'), _plain_text(model="NaN-Infinity"),
    # text that is not UTF-8, escapes, NUL
    _plain_text()[:-1] + b', "metadata": {"x": "\xff"}}', _plain_text()[:-1] + b', "error": "\xc3"}',
    _with(r'"error": "\ud800"'), _with(r'"error": "\ud83d\ude00 \u00e9"'), _with(r'"error": "a\u0000b"'),
    _with(r'"account_type": "a\u0000"'), _with(r'"account_type": " a"'), _with('"account_type": "\\t"'),
    # framing
    b"\xef\xbb\xbf" + _plain_text(), b" \n\t" + _plain_text() + b"\r\n ", b"\x0c" + _plain_text(),
    _plain_text() + b" x", _plain_text() + _plain_text(), b"[]", b"", b"   ", b"null", b"[null]", b"[[]]",
    b"[" + _plain_text() + b",]", b"[" + _plain_text() + b"," + _with('"unknown": 1') + b"]",
    _with('"metadata": ' + "[" * 3000 + "]" * 3000), _with('"metadata": {"a": ' + "[" * 100 + "]" * 100 + "}"),
]
BODIES = [
    *(json.dumps(record).encode() for record, _ in MIXED),
    *(json.dumps([record]).encode() for record, _ in MIXED),
    json.dumps([record for record, _ in MIXED]).encode(),
    json.dumps(PLAIN).encode(),
    *HOSTILE,
    *(b"[" + body + b"," + _plain_text() + b"]" for body in HOSTILE if body.strip()),
]


def _usual_reading(body: bytes):
    """The usual path: the body parsed, then judged; None when it cannot be read at all (a 400)."""
    try:
        records = intake.parse_body(body, "application/json")
    except intake.BadBody:
        return None
    return records, all(PlainEvents().judge(copy.deepcopy(records)))


def _typed(records: list) -> list:
    """Records with every value's type showing (1 and 1.0 differ), in no particular key order; `typedread`'s
    records as the keys they were given."""
    return [sorted((key, repr(value)) for key, value in _as_dict(record).items()) for record in records]


def _as_dict(record) -> dict:
    return record if isinstance(record, dict) else msgspec.to_builtins(record)


@pytest.mark.parametrize("body", BODIES, ids=range(len(BODIES)))
def test_reading_plain_events_from_the_bytes_agrees_with_parsing_then_judging(body):
    usual = _usual_reading(body)
    straight = PlainEvents().read_json(body)
    if b"NaN" in body or b"Infinity" in body:
        assert straight is None  # left to the usual reading, which refuses NaN (inside strings only slower)
    elif usual is not None and usual[1]:
        assert straight is not None and _typed(straight) == _typed(usual[0])
    else:
        assert straight is None


@pytest.mark.parametrize("body", BODIES, ids=range(len(BODIES)))
def test_the_typed_reading_passes_only_bodies_the_usual_reading_finds_all_plain_and_gives_its_records(body):
    usual = _usual_reading(body)
    typed = read_plain(body, PlainEvents())
    if typed is not None:
        records, lines = typed
        assert usual is not None and usual[1] and _typed(records) == _typed(usual[0])
        assert _typed(list(map(pydantic_core.from_json, lines.splitlines()))) == _typed(usual[0])


TEXTS = ["", "u1", "a b", " a", "a ", " ", "\t", "a\tb", "a\x00", "\x00", "\x7f", "a\x7f", "é", "aé", "a\\", "\\",
         '"', 'a"', 'a"b', "a\nb", "\u2028", "x" * 300, "(unattributed)"]


@pytest.mark.parametrize("field", ["user_id", "model", "error"])
def test_the_quick_look_at_written_texts_passes_only_texts_the_text_rules_pass(field):
    # The typed reading first looks at its records' texts as msgspec writes them; whatever that look passes,
    # the text rules checked text by text (as fastcheck's patterns have them) must pass too.
    passed = []
    for text in TEXTS:
        try:
            records = typedread._MANY.decode(json.dumps([event(1, **{field: text})]).encode())
        except msgspec.ValidationError:
            continue  # the typed reading refuses it before any text rule (an empty user_id)
        if typedread._texts_plain_as_written(typedread.LINES.encode_lines(records)):
            assert typedread._texts_plain(records), text
            passed.append(text)
    assert {"u1", "a b", "x" * 300} <= set(passed) and not {" a", "a ", "a\x00", "é"} & set(passed)
    plain = typedread._MANY.decode(json.dumps(PLAIN[:1] + [event(2, error="rate limited, retry")]).encode())
    assert typedread._texts_plain_as_written(typedread.LINES.encode_lines(plain))


def test_the_typed_reading_takes_the_usual_plain_bodies():
    assert _typed(read_plain(json.dumps(PLAIN).encode(), PlainEvents())[0]) == _typed(PLAIN)
    assert _typed(read_plain(json.dumps(PLAIN[:1]).encode(), PlainEvents())[0]) == _typed(PLAIN[:1])


@pytest.mark.parametrize("counts", [
    {}, {"total_tokens": 0}, {"total_tokens": None}, {"total_tokens": 120}, {"total_tokens": 119},
    {"cache_read_tokens": 101}, {"cache_read_tokens": 100}, {"cache_write_tokens": 60, "cache_read_tokens": 50},
    {"cache_write_tokens": 10, "cache_write_1h_tokens": 11}, {"cache_write_1h_tokens": 1},
    {"reasoning_tokens": 21}, {"reasoning_tokens": 20}, {"input_tokens": 0, "cache_read_tokens": 5},
    {"output_tokens": 0, "reasoning_tokens": 5}, {"input_tokens": 0, "output_tokens": 0, "total_tokens": 0},
])
def test_a_batch_has_a_token_totals_problem_exactly_when_one_of_its_records_has(counts):
    fine = [{"input_tokens": 100, "output_tokens": 20}, {"input_tokens": 7}]
    for batch in ([{"input_tokens": 100, "output_tokens": 20, **counts}], [*fine, {"input_tokens": 100, "output_tokens": 20,
                                                                                   **counts}]):
        assert events.any_token_totals_problem(batch) == any(map(events.token_totals_problem, batch))
    assert events.any_token_totals_problem(fine) is False


def test_a_plain_body_read_from_its_bytes_is_checked_and_journaled_as_the_usual_path_would(monkeypatch):
    body = json.dumps(PLAIN).encode()
    usual = _check(intake.parse_body(body, "application/json"), OPEN_GRANT, monkeypatch, exact_only=True)
    _check([], OPEN_GRANT, monkeypatch, exact_only=False)  # the batch check back, the ids counted from 1 again
    straight = intake.check_plain_body(body, "application/json", OPEN_GRANT, "collector:usage")
    assert straight is not None and len(straight.accepted) == len(PLAIN)
    assert _typed(straight.accepted) == _typed(usual.accepted)
    assert (straight.rejected, straight.unattributed, straight.refused_tenant) == ([], 0, 0)
    # NDJSON, and a key tied to a tenant some record is not of, take the usual path
    assert intake.check_plain_body(body, "application/x-ndjson", OPEN_GRANT, "collector:usage") is None
    assert intake.check_plain_body(body, "application/json", Grant(tenant_id="t1"), "collector:usage") is None


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


@pytest.mark.parametrize("body", BODIES, ids=range(len(BODIES)))
def test_journal_lines_of_a_body_read_straight_from_its_bytes_are_the_usual_paths(body, monkeypatch):
    # The usual body's records are written as read (typedread's, else fastcheck's); read back as ingestion
    # reads them, the lines give what the usual path accepts, generated ids and source included.
    usual = _usual_reading(body)
    monkeypatch.setattr(intake, "_id_counter", itertools.count(1))
    straight = intake.check_plain_body(body, "application/json", OPEN_GRANT, "collector:usage")
    if straight is None:
        return
    assert usual is not None and usual[1]
    exact = _check(usual[0], OPEN_GRANT, monkeypatch, exact_only=True)
    lines = intake.journal_lines(straight)
    assert _typed(list(map(pydantic_core.from_json, lines.splitlines()))) == _typed(exact.accepted)
    assert intake.records_of(lines) == list(map(pydantic_core.from_json, lines.splitlines()))


@pytest.mark.parametrize("body", BODIES, ids=range(len(BODIES)))
def test_journal_lines_read_back_as_the_records_accepted(body):
    # Read back as ingestion reads them, the lines give the accepted records, value types included:
    # msgspec's for a body the typed reading passes, pydantic's for any other.
    usual = _usual_reading(body)
    if usual is None:
        return
    accepted = intake.check_records(usual[0], OPEN_GRANT, "collector:usage").accepted
    for finite in (False, True) if read_plain(body, PlainEvents()) is not None else (False,):
        lines = intake.encode_records(accepted, finite) if accepted else b""
        assert lines.count(b"\n") == len(accepted)
        assert _typed(list(map(pydantic_core.from_json, lines.splitlines()))) == _typed(accepted)
