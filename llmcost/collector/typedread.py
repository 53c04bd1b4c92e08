"""The usual body's plain usage events read and checked in one typed pass (msgspec), then their text as a column.

Parsing into dicts and then checking them (`fastcheck`) walks each record twice; msgspec decodes the body
straight into a record type built here from the same field declarations (`fastcheck.FIELDS`, read from
`UsageEvent`): JSON types, integer ranges, text lengths, the allowed words, no unknown key. Its text
patterns would run Python's `re` once per value, so the text rules (nothing to strip, no NUL, the time's
form) are checked once per column over the joined values instead, and a time's bounds by the same
validator `fastcheck` uses. This is only a fast path: a body it does not pass whole goes to `fastcheck`
and then the exact per-record path, so it never answers differently from them (the equivalence test feeds
all three the same hostile bodies).
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

import msgspec
from msgspec import UNSET, Meta, UnsetType

from llmcost import events
from llmcost.collector.fastcheck import COST_TEXT, FIELDS, PlainEvents
from llmcost.events import MAX_TOKENS_PER_CALL, PRICE_SOURCES
from llmcost.ingestion.bulk import ISO_TS, Field

# The largest finite float: msgspec reads 1e308 and refuses 1e400, but a bound keeps infinity out whatever it reads.
_FLOAT_MAX = 1.7976931348623157e308
_STRIPPED_ONE = r"(?:[!-~](?:[^\x00]*[!-~])?)?"  # fastcheck.STRIPPED_TEXT without its anchors
# A column of texts joined by NUL, which none of them may hold: each text printable ASCII at both ends.
STRIPPED_COLUMN = re.compile(rf"(?:{_STRIPPED_ONE}\x00)*{_STRIPPED_ONE}")
TIMES_COLUMN = re.compile(rf"(?:{ISO_TS}\n)*{ISO_TS}")  # a column of times joined by newlines


def _value_type(f: Field) -> Any:
    """The JSON type and bounds of a field's plain value, as fastcheck's strict schema has them."""
    if f.kind == "str":
        return Annotated[str, Meta(min_length=f.min_length or None, max_length=f.max_length or None)]
    if f.kind == "int":
        return Annotated[int, Meta(ge=0, le=MAX_TOKENS_PER_CALL)]
    if f.kind == "float":  # an int stays an int, as fastcheck keeps what was sent; larger ones go to fastcheck
        return Annotated[int, Meta(ge=0, le=2**53)] | Annotated[float, Meta(ge=0, le=_FLOAT_MAX)]
    return {
        "ts": str,
        "bool": bool,
        "status": Literal["ok", "error"],
        "price_source": Literal[tuple(PRICE_SOURCES)],
        "cost": Annotated[str, Meta(pattern=COST_TEXT[:-1] + r"\Z")],  # Python's $ passes a last newline
        "object": dict[str, Any],
    }[f.kind]


def record_type() -> type[msgspec.Struct]:
    """A plain record: the identity and the time given, every other field absent (UNSET), null or plain."""
    fields = [(f.name, _value_type(f)) if f.required else (f.name, _value_type(f) | None | UnsetType, UNSET)
              for f in FIELDS]
    fields.sort(key=len)  # msgspec wants the fields without a default first
    return msgspec.defstruct("PlainRecord", fields, forbid_unknown_fields=True)


_RECORD = record_type()
_ONE = msgspec.json.Decoder(_RECORD)
_MANY = msgspec.json.Decoder(list[_RECORD])
_TEXT_FIELDS = [f for f in FIELDS if f.kind == "str"]


def _texts_plain(records: list[Any]) -> bool:
    """fastcheck's text patterns, column by column: stripped texts printable at both ends, no NUL anywhere."""
    for f in _TEXT_FIELDS:
        texts = [text for text in map(getattr, records, [f.name] * len(records)) if type(text) is str]
        if not texts:
            continue
        joined = "\x00".join(texts)
        if f.stripped:
            if STRIPPED_COLUMN.fullmatch(joined) is None or joined.count("\x00") != len(texts) - 1:
                return False
        elif "\x00" in joined:
            return False
    return True


def read_plain(body: bytes, judge: PlainEvents) -> list[dict[str, Any]] | None:
    """The records of a JSON body (one object or an array) when every one is a plain usage event, as dicts
    with the keys sent (in the field order of the event format); None for any other body, which the
    caller reads as usual."""
    start = body.lstrip()[:1]
    try:
        records = _MANY.decode(body) if start == b"[" else [_ONE.decode(body)] if start == b"{" else None
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError):
        return None
    if not records or not _texts_plain(records):
        return None
    times = [record.ts for record in records]
    joined = "\n".join(times)
    if (TIMES_COLUMN.fullmatch(joined) is None or joined.count("\n") != len(times) - 1
            or not judge.times_in_bounds(times)):
        return None
    plain = msgspec.to_builtins(records)
    if events.any_token_totals_problem(plain):
        return None
    return plain
