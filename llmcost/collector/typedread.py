"""The usual body's plain usage events read and checked in one typed pass (msgspec), then their text as a column.

Parsing into dicts and then checking them (`fastcheck`) walks each record twice; msgspec decodes the body
straight into a record type built here from the same field declarations (`fastcheck.FIELDS`, read from
`UsageEvent`): JSON types, integer ranges, text lengths, the allowed words, no unknown key. Its text
patterns would run Python's `re` once per value, so the text rules (nothing to strip, no NUL, the time's
form) are checked once over the batch's journal lines, as msgspec writes them (else over its joined
texts), and once over its joined times instead, and a time's bounds by the same validator `fastcheck`
uses. The records stay typed: the collector writes them and sums their spend as they are, never as dicts.
This is only a fast path: a body it does not pass whole goes to `fastcheck` and then the exact per-record
path, so it never answers differently from them (the equivalence test feeds all three the same hostile
bodies).
"""

from __future__ import annotations

import functools
import re
from itertools import chain
from operator import attrgetter, itemgetter
from typing import Annotated, Any, Callable, Literal

import msgspec
from msgspec import UNSET, Meta, UnsetType

from llmcost import events
from llmcost.collector.fastcheck import COST_TEXT, FIELDS, PlainEvents
from llmcost.events import MAX_TOKENS_PER_CALL, PRICE_SOURCES
from llmcost.ingestion.bulk import ISO_TS, Field

# The largest finite float: msgspec reads 1e308 and refuses 1e400, but a bound keeps infinity out whatever it reads.
_FLOAT_MAX = 1.7976931348623157e308
# Texts joined by NUL, which none of them may hold: each empty or printable ASCII at both ends, as
# fastcheck.STRIPPED_TEXT has it (its alternatives spelt out, which Python's re runs 3-4 times faster).
STRIPPED_COLUMN = re.compile(r"(?:[!-~][^\x00]*[!-~]\x00|[!-~]\x00|\x00)*(?:[!-~][^\x00]*[!-~]|[!-~])?")
# A column of times joined by newlines; ISO_TS's groups made non-capturing, which Python's re runs faster.
_ISO_TS_UNCAPTURED = ISO_TS.replace("(", "(?:")
TIMES_COLUMN = re.compile(rf"(?:{_ISO_TS_UNCAPTURED}\n)*{_ISO_TS_UNCAPTURED}")


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


def record_type(source: str | None = None) -> type[msgspec.Struct]:
    """A plain record: the identity and the time given, every other field absent (UNSET), null or plain; with
    `source`, a record that gives none reads that source (as the collector completes it), set while decoding
    rather than record by record after."""
    fields = [(f.name, _value_type(f)) if f.required
              else (f.name, _value_type(f) | None | UnsetType, source if f.name == "source" and source else UNSET)
              for f in FIELDS]
    fields.sort(key=len)  # msgspec wants the fields without a default first
    # Records read from JSON hold no cycles: the garbage collector need not track them.
    return msgspec.defstruct("PlainRecord", fields, forbid_unknown_fields=True, gc=False)


@functools.cache
def _decoder(source: str | None) -> msgspec.json.Decoder:
    """A decoder of a JSON array of plain records (`record_type(source)`), one per source."""
    return msgspec.json.Decoder(list[record_type(source)])


_MANY = _decoder(None)


def _texts_of(stripped: bool) -> Callable[[Any], tuple]:
    """A record's texts of one kind (stripped or free) as a tuple, absent (UNSET) and null ones included."""
    names = [f.name for f in FIELDS if f.kind == "str" and f.stripped == stripped]
    return attrgetter(*names, names[0]) if len(names) == 1 else attrgetter(*names)


_STRIPPED_TEXTS = _texts_of(stripped=True)
_FREE_TEXTS = _texts_of(stripped=False)


def _texts_plain(records: list[Any]) -> bool:
    """fastcheck's text patterns over the batch's distinct texts at once (most repeat: users, use cases,
    models): the stripped ones printable ASCII at both ends, none with a NUL (joined by NUL, a text holding
    one shows as one text more)."""
    stripped = set(chain.from_iterable(map(_STRIPPED_TEXTS, records)))
    stripped.discard(None)
    stripped.discard(UNSET)
    joined = "\x00".join(stripped)
    if STRIPPED_COLUMN.fullmatch(joined) is None or joined.count("\x00") != max(len(stripped) - 1, 0):
        return False
    free = set(chain.from_iterable(map(_FREE_TEXTS, records)))
    free.discard(None)
    free.discard(UNSET)
    return "\x00" not in "".join(free)


def _texts_plain_as_written(lines: bytes) -> bool:
    """True when the records' texts, seen in their compact JSON lines (msgspec's: no space outside a text), keep
    both text rules (False says only that this look cannot tell). With no escape there is no NUL and no quote
    inside a text; with only ASCII and no DEL, each character of a text is printable or a space; and a text
    that starts or ends with a space shows as '" ' or ' "'. Every text is held to the stripped rule here."""
    if not lines.isascii() or b"\\" in lines or b"\x7f" in lines:
        return False
    return b" " not in lines or (b'" ' not in lines and b' "' not in lines)


LINES = msgspec.json.Encoder()  # journal lines: compact JSON, a record a line


def read_plain(body: bytes, judge: PlainEvents, complete: Callable[[list[Any]], bool] | None = None,
               source: str | None = None) -> tuple[list[Any], bytes] | None:
    """The records of a JSON array when every one is a plain usage event, as typed records (a field absent
    reads UNSET; msgspec writes them back with the keys sent), and their lines as msgspec writes them; None
    for any other body, which the caller reads as usual. `complete` adds to the records what the caller
    writes with them (ids) before they are written, or returns False to leave the body to the usual reading;
    `source` is what a record that gives no source reads (`record_type`)."""
    if body.lstrip()[:1] != b"[":
        return None  # one record: fastcheck's single call costs less than this pass's per-batch checks
    try:
        records = _decoder(source).decode(body)
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError):
        return None
    if not records:
        return None
    times = list(map(_TS, records))
    if not (_times_of_one_form(times) and judge.times_in_bounds(times)):
        return None
    if _token_totals_problem(records):
        return None
    if complete is not None and not complete(records):
        return None
    lines = LINES.encode_lines(records)  # what the caller adds passes the text rules like any text
    if not (_texts_plain_as_written(lines) or _texts_plain(records)):
        return None
    return records, lines


_TS = attrgetter("ts")
# A time's form with every digit written 0: ISO_TS where a value's ranges are left to the bounds' validator
# (`times_in_bounds` refuses month 13, day 32, hour 24, minute or second 60, an offset's minute 60, as ISO_TS
# does), except an offset's hour (at most 14 in ISO_TS, 23 to the validator), checked on its own.
_TS_FORM = re.compile(rb"0000-00-00[T ]00:00:00(?:\.0{1,6})?(Z|[+-]00:00)?")
_DIGITS_AS_ZERO = bytes.maketrans(b"123456789", b"000000000")
_OFFSET_HOURS = {f"{hour:02d}" for hour in range(15)}


def _times_of_one_form(times: list[str]) -> bool:
    """Whether every time has ISO_TS's form (its bounds are `times_in_bounds`'). The usual batch writes all its
    times in one form: then the column with its digits as 0 is that form repeated, one comparison in C, and
    only the offsets' hours are looked at; any other column is matched by TIMES_COLUMN."""
    column = "\n".join(times).encode("ascii", "replace")  # a non-ASCII digit is no digit of ISO_TS: "?"
    form = column[:len(times[0])].translate(_DIGITS_AS_ZERO)
    shape = _TS_FORM.fullmatch(form)
    if shape is not None and (form + b"\n") * len(times) == column.translate(_DIGITS_AS_ZERO) + b"\n":
        return shape.group(1) in (None, b"Z") or set(map(itemgetter(slice(-5, -3)), times)) <= _OFFSET_HOURS
    joined = "\n".join(times)
    return TIMES_COLUMN.fullmatch(joined) is not None and joined.count("\n") == len(times) - 1
_TOTAL_TOKENS = attrgetter("total_tokens")
_COUNTS_BOUND_BY_OTHERS = [attrgetter(name) for name in events.COUNTS_BOUND_BY_OTHERS]


def _token_totals_problem(records: list[Any]) -> bool:
    """`events.any_token_totals_problem` over typed records: column by column, as it does; only a batch that
    gives a count the rules bind is turned into dicts for it."""
    if set(map(_TOTAL_TOKENS, records)) <= {UNSET, None} and not any(
            any(map(count, records)) for count in _COUNTS_BOUND_BY_OTHERS):
        return False
    return events.any_token_totals_problem(msgspec.to_builtins(records))
