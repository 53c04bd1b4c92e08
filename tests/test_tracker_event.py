"""The tracker builds its usage event without validating what it made itself (`llmcost.sdk.built_event`): the
journal line and the stored row are the same as through `UsageEvent(**fields)`, and every value validation
would change or refuse still goes through it."""

import datetime as dt
from dataclasses import replace
from decimal import Decimal

import pytest
from pydantic import ValidationError

from llmcost.events import UsageEvent
from llmcost.ingestion.run import ingest
from llmcost.lines import encode_line
from llmcost.sdk.built_event import built_event, journal_line
from llmcost.store import connection as store

NOW = dt.datetime.now(dt.timezone.utc).replace(microsecond=123456)
BASE = dict(
    ts=NOW, user_id="user-1", tenant_id="acme", use_case="chat", account_type="admin", provider="openai",
    model="gpt-4o-mini", input_tokens=120, output_tokens=30, cache_read_tokens=20, cache_write_tokens=0,
    cache_write_1h_tokens=0, response_model="gpt-4o-mini-2024-07-18", service_tier=None, reasoning_tokens=0,
    estimated_tokens=300, usage_estimated=False, latency_ms=0.512, status="ok", error=None,
    cost_usd=Decimal("0.000022500000"), price_source="price-table", attempt_id="3f0c", source="tracker",
    metadata={"estimate_ratio": 0.5, "nested": {"k": [1, "two"]}},
)
CASES = {
    "plain": {},
    "estimated, no usage": dict(usage_estimated=True, error="no usage recorded", response_model=None),
    "error status": dict(status="error", error="RuntimeError: boom\nsecond line"),
    "provider cost": dict(cost_usd=Decimal("0.0000001234"), price_source="provider"),
    "no model, no provider": dict(model=None, provider=None, response_model=None),
    "empty model": dict(model=""),
    "whitespace user": dict(user_id="  user-1 \t"),
    "whitespace model": dict(model=" gpt-4o-mini\n"),
    "non-breaking space tenant": dict(tenant_id="acme\u00a0"),
    "file separator use case": dict(use_case="chat\x1c"),
    "NUL user": dict(user_id="user\x00-1"),
    "NUL in error": dict(status="error", error="bad\x00"),
    "over-long user": dict(user_id="u" * 501),
    "longest user": dict(user_id="u" * 500),
    "over-long source": dict(source="s" * 1001),
    "empty tenant": dict(tenant_id=""),
    "blank use case": dict(use_case="   "),
    "provider alias": dict(provider="Claude", model="claude-3-5-haiku"),
    "provider upper case": dict(provider="OpenAI"),
    "unknown provider": dict(provider="my-gateway"),
    "cache over input": dict(cache_read_tokens=200),
    "reasoning over output": dict(reasoning_tokens=31),
    "1h writes over writes": dict(cache_write_tokens=5, cache_write_1h_tokens=6),
    "too many tokens": dict(input_tokens=10**9 + 1),
    "boolean tokens": dict(output_tokens=True),
    "negative cost": dict(cost_usd=Decimal("-1")),
    "cost finer than picodollars": dict(cost_usd=Decimal("0.0000000000001")),
    "cost too large": dict(cost_usd=Decimal("1000000")),
    "naive time": dict(ts=NOW.replace(tzinfo=None)),
    "other time zone": dict(ts=NOW.astimezone(dt.timezone(dt.timedelta(hours=2)))),
    "time before 2015": dict(ts=dt.datetime(2014, 1, 1, tzinfo=dt.timezone.utc)),
    "time in the future": dict(ts=NOW + dt.timedelta(days=3)),
    "non-string metadata key": dict(metadata={1: "x"}),
    "error too long": dict(status="error", error="e" * 10_001),
    "infinite latency": dict(latency_ms=float("inf")),
}


def validated(fields):
    """The old path: the event validated field by field."""
    return UsageEvent(**fields)


@pytest.mark.parametrize("case", CASES)
def test_built_event_writes_the_journal_line_validation_would(case):
    fields = {**BASE, **CASES[case]}
    try:
        old = validated(fields)
    except ValidationError as error:
        with pytest.raises(ValidationError) as raised:
            built_event(**fields)
        assert str(raised.value) == str(error)
        return
    new = built_event(**fields)
    new_record = new.model_dump(mode="json", exclude_none=True)
    old_record = old.model_dump(mode="json", exclude_none=True)
    assert new_record.pop("event_id") and old_record.pop("event_id")
    assert encode_line(new_record) == encode_line(old_record)
    assert new.model_fields_set == old.model_fields_set
    assert new == old.model_copy(update={"event_id": new.event_id})
    assert new.model_dump() == {**old.model_dump(), "event_id": new.event_id}


def test_built_event_skips_validation_only_for_values_it_would_keep(monkeypatch):
    calls = []
    real_init = UsageEvent.__init__

    def counting_init(self, **data):
        calls.append(data)
        real_init(self, **data)

    monkeypatch.setattr(UsageEvent, "__init__", counting_init)
    built_event(**BASE)
    assert calls == []
    built_event(**{**BASE, "user_id": " user-1"})
    assert len(calls) == 1


def test_stored_rows_are_the_same_through_either_path(settings, tmp_path):
    """Both lines ingested: every column of the stored row agrees (odd identities included)."""
    cases = ["plain", "estimated, no usage", "error status", "provider cost", "whitespace user", "provider alias",
             "longest user", "unknown provider"]
    journal = tmp_path / "journals"
    journal.mkdir()
    lines = {"old": b"", "new": b""}
    for case in cases:
        fields = {**BASE, **CASES[case], "attempt_id": case.replace(" ", "-").replace(",", "")}
        new = built_event(**fields)
        old = validated(fields).model_copy(update={"event_id": new.event_id})
        lines["new"] += encode_line(new.model_dump(mode="json", exclude_none=True))
        lines["old"] += encode_line(old.model_dump(mode="json", exclude_none=True))
    rows = {}
    for path_name, data in lines.items():
        folder = tmp_path / path_name
        folder.mkdir()
        (folder / "events.jsonl").write_bytes(data)
        own = replace(settings, db_path=tmp_path / f"{path_name}.duckdb")
        result = ingest(own, [folder])
        assert result.failed == 0
        with store.connect(own.db_path, read_only=True) as db:
            cursor = db.execute("SELECT * FROM usage_events ORDER BY event_id")
            names = [column[0] for column in cursor.description]
            rows[path_name] = [dict(zip(names, row)) for row in cursor.fetchall()]
    assert len(rows["new"]) == len(cases)
    skip = {"ingested_at", "source_file", "source_offset", "inserted_at", "ingest_id"}
    for new_row, old_row in zip(rows["new"], rows["old"]):
        assert {k: v for k, v in new_row.items() if k not in skip} == {k: v for k, v in old_row.items() if k not in skip}


TEXTS = ["plain", "ünïcode ✓ 𝄞 漢字", "quote \" backslash \\ slash /", "controls \x01\x1f\x7f\n\t\r\b\f",
         "line separators \u2028\u2029", "</script><b>", ""]


@pytest.mark.parametrize("text", TEXTS)
def test_journal_line_is_the_line_encode_line_writes(text):
    """The tracker's one-step line (pydantic-core's serializer) and the dict-then-json.dumps line agree byte for
    byte, on whatever text a caller puts in the error and the metadata."""
    metadata = {"note": text, "estimate_ratio": 0.5837, "whole": 10**20, "flag": True, "none": None, "ratio": 1.0}
    event = built_event(**{**BASE, "status": "error", "error": text or None, "metadata": metadata})
    assert journal_line(event) == encode_line(event.model_dump(mode="json", exclude_none=True))


def test_journal_line_leaves_other_metadata_to_the_dict_path():
    """Values whose JSON text json.dumps and pydantic write differently (NaN: `NaN` against `null`), or that are not
    plain, take the old path (None), so the journal line stays the one it was."""
    for value in (float("nan"), float("inf"), {"k": [1]}, [1, 2], Decimal("1.5"), dt.date(2026, 1, 1)):
        assert journal_line(built_event(**{**BASE, "metadata": {"x": value}})) is None
    assert journal_line(built_event(**{**BASE, "metadata": {"x": 1e-05}})) is not None  # same number, maybe 1e-5
