"""The tracker's journal lines are the bytes `encode_line` writes for the same record, however their values
look: the attempt line comes from its call site's identity encoded once (`llmcost.sdk.call.attempt_line`)."""

import datetime as dt
import json
import os

import pytest

from llmcost.lines import encode_line
from llmcost.sdk.call import attempt_line

NAMES = ["user-1", "用户-ü", 'quote"d', "back\\slash", "emoji-😀", " padded ", "tab\tname", "line\nbreak", "ctl\x1f",
         "del\x7f", "x" * 600, "", "\u2028sep", "nul\x00"]
NOT_TEXT = [None, 1, 1.0, True, 0, ["list"], {"k": "v"}]


def attempt(**changes):
    record = {"record": "attempt", "attempt_id": "3f0c5e0a-8a7e-4d4b-9a55-1f2e3d4c5b6a",
              "ts": "2026-12-03T13:00:00.123456+00:00", "user_id": "user-1", "tenant_id": "acme", "use_case": "chat",
              "account_type": "admin", "provider": "openai", "model": "gpt-4o-mini", "estimated_tokens": 300,
              "source": "tracker"}
    record.update(changes)
    return record


@pytest.mark.parametrize("field", ["user_id", "tenant_id", "use_case", "account_type", "provider", "model", "source",
                                   "attempt_id", "ts"])
def test_attempt_line_is_encode_lines_for_any_value(field):
    for value in [*NAMES, *NOT_TEXT]:
        for _ in range(2):  # the second time from the call site's cached identity
            record = attempt(**{field: value})
            assert attempt_line(record) == encode_line(record), (field, value)


def test_attempt_line_keeps_equal_values_of_other_types_apart():
    for value in (1, True, 1.0, "1", (1,), (True,)):
        record = attempt(user_id=value, estimated_tokens=value if not isinstance(value, str) else 7)
        assert attempt_line(record) == encode_line(record), value
        assert json.loads(attempt_line(record))["user_id"] == (list(value) if isinstance(value, tuple) else value)


def test_attempt_line_of_unencodable_text_raises_what_encode_line_raises():
    record = attempt(user_id="lone \ud800 surrogate")
    with pytest.raises(UnicodeEncodeError) as expected:
        encode_line(record)
    for _ in range(2):
        with pytest.raises(UnicodeEncodeError) as raised:
            attempt_line(record)
        assert str(raised.value) == str(expected.value)


def test_attempt_line_of_a_value_json_cannot_write_raises_what_encode_line_raises():
    record = attempt(model=object())
    with pytest.raises(TypeError, match="cannot write object to a journal"):
        attempt_line(record)


def test_attempt_lines_of_many_call_sites_match():
    now = dt.datetime(2026, 12, 3, 13, tzinfo=dt.timezone.utc)
    for n in range(5000):
        record = attempt(attempt_id=f"id-{n}", ts=(now + dt.timedelta(microseconds=n * 997)).isoformat(),
                         user_id=NAMES[n % len(NAMES)] + str(n % 37), tenant_id=NAMES[(n // 3) % len(NAMES)],
                         estimated_tokens=n * 31, model=None if n % 5 == 0 else f"model-{n % 7}")
        assert attempt_line(record) == encode_line(record)


def test_new_ids_are_random_version_4_uuids():
    import uuid

    from llmcost.events import new_id

    ids = [new_id() for _ in range(5_000)]
    assert len(set(ids)) == len(ids)
    for text in ids:
        parsed = uuid.UUID(text)
        assert (str(parsed), parsed.version, parsed.variant) == (text, 4, uuid.RFC_4122)
    # every one of the 122 random bits takes both values
    assert {bit for text in ids for bit in range(128) if uuid.UUID(text).int >> bit & 1} == set(range(128)) - {
        76, 77, 79, 62}


def test_a_forked_child_journals_to_its_own_file(tmp_path):
    import os

    from llmcost.sdk.journal import Journal

    journal = Journal(tmp_path, fsync=False)
    parent_file = journal.append({"who": "parent"})
    pid = os.fork()
    if pid == 0:  # the child: its record must go to a file of its own
        try:
            code = 0 if journal.append({"who": "child"}) != parent_file else 1
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert journal.append({"who": "parent again"}) == parent_file
    lines = {path.name: path.read_text().splitlines() for path in tmp_path.glob("*.jsonl")}
    assert sorted(lines.values()) == [['{"who":"child"}'], ['{"who":"parent"}', '{"who":"parent again"}']]


def _bench_module(name):
    import importlib.util
    from pathlib import Path

    path = Path(__file__).parent.parent / "bench" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_journal_lines_of_varied_calls_are_the_lines_of_their_validated_records(settings, tmp_path):
    """Every provider shape, streams, failures, estimates, hand-given counts, unicode and escapes in names, the
    wrapped client and the decorator: each attempt line is encode_line's for its record, each event line the one
    the validating path (`UsageEvent(**record)`) writes, and ingestion stores every event once."""
    from dataclasses import replace

    from llmcost.events import UsageEvent
    from llmcost.ingestion.run import ingest
    from llmcost.sdk.built_event import journal_line
    from llmcost.sdk.tracker import Tracker
    from llmcost.store import connection as store

    tracker = Tracker(replace(settings, fsync=False))
    _bench_module("tracker_journal_lines").varied_calls(tracker)
    tracker.close()
    lines = [line for path in settings.journal_dir.glob("*.jsonl") for line in path.read_bytes().splitlines(True)]
    attempts = [line for line in lines if line.startswith(b'{"record":"attempt"')]
    events = [line for line in lines if not line.startswith(b'{"record":"attempt"')]
    assert len(attempts) == len(events) == 10 * 3 * 16 + 3 * 2 + 4
    for line in attempts:
        assert encode_line(json.loads(line)) == line
    providers = set()
    for line in events:
        record = json.loads(line)
        validated = UsageEvent(**record)
        assert (journal_line(validated) or encode_line(validated.model_dump(mode="json", exclude_none=True))) == line
        providers.add(record.get("provider"))
    assert providers >= {"openai", "anthropic", "x-ai", "google", "my-gateway", None}
    result = ingest(settings, [settings.journal_dir])
    assert result.failed == 0
    with store.connect(settings.db_path, read_only=True) as db:
        assert db.execute("SELECT count(DISTINCT event_id) FROM usage_events").fetchone()[0] == len(events)


def test_new_ids_of_threads_and_of_a_forked_child_never_repeat():
    import threading

    from llmcost.events import new_id

    drawn: list[list[str]] = [[] for _ in range(8)]
    threads = [threading.Thread(target=lambda out=out: out.extend(new_id() for _ in range(2_000))) for out in drawn]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    every = [text for out in drawn for text in out]
    assert len(set(every)) == len(every) == 16_000

    new_id()  # the parent holds random bytes not yet used, which the child must not use too
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its next ids, then out at once
        os.close(read_end)
        os.write(write_end, "\n".join(new_id() for _ in range(100)).encode())
        os._exit(0)
    os.close(write_end)
    parents = {new_id() for _ in range(100)}
    with os.fdopen(read_end, "rb") as pipe:
        childs = set(pipe.read().decode().split("\n"))
    os.waitpid(pid, 0)
    assert len(childs) == 100 and not parents & childs
