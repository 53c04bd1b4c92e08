"""Journal lines into collector requests: each record keeps its id end to end, so one sent twice is stored once.

A record is sent byte for byte when it carries its id (the SDK writes `event_id` and `attempt_id` on every
record). A usage event without an `event_id` gets one derived from where it sits in its file (the file's
first line, its offset and its text), so sending it again gives it the same id; it is then re-encoded with
its numbers written exactly as they were (no float rounding of a cost). Lines that are no JSON object are
not sent: they are kept on this host with the reason, like any rejected record.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import pydantic_core

from llmcost.forward.state import Rejected
from llmcost.ingestion.sources import Source

FIRST_LINE_BYTES = 64 * 1024


@dataclass(frozen=True)
class Outgoing:
    offset: int
    line: bytes  # one NDJSON line, without its newline


def first_line(source: Source) -> bytes:
    """The start of a file's first line: with an offset, what makes a record's derived id its own."""
    with source.data.open("rb") as f:
        return f.read(FIRST_LINE_BYTES).split(b"\n", 1)[0]


def split_records(source: Source, lines: bytes | memoryview, start: int, head: bytes
                  ) -> tuple[list[Outgoing], list[Rejected]]:
    """The whole lines read from `start`: records to send (in file order) and lines kept as rejected."""
    outgoing: list[Outgoing] = []
    rejected: list[Rejected] = []
    offset = start
    for raw in bytes(lines).split(b"\n")[:-1]:
        here, offset = offset, offset + len(raw) + 1
        line = raw.rstrip(b"\r")
        if not line.strip():
            continue  # ingestion skips blank lines too
        try:
            record = pydantic_core.from_json(line, allow_inf_nan=False)
        except ValueError as error:
            rejected.append(Rejected(source.path, here, f"not valid JSON: {error}", line))
            continue
        if not isinstance(record, dict):
            rejected.append(Rejected(source.path, here,
                                     f"a record must be a JSON object, not {type(record).__name__}", line))
            continue
        target = record.get("event") if "event" in record and "error" in record else record
        if isinstance(target, dict) and target.get("record") != "attempt" and target.get("event_id") is None:
            line = _with_event_id(line, "fwd:" + _derived_id(head, here, line))
        elif b"\r" in line:
            line = _reencoded(json.loads(line, parse_float=Decimal))  # NDJSON splits at a bare CR
        outgoing.append(Outgoing(here, line))
    return outgoing, rejected


def _derived_id(head: bytes, offset: int, line: bytes) -> str:
    return hashlib.blake2b(head + b"\n" + str(offset).encode() + b"\n" + line, digest_size=16).hexdigest()


def _with_event_id(line: bytes, event_id: str) -> bytes:
    record = json.loads(line, parse_float=Decimal)
    target = record["event"] if "event" in record and "error" in record else record
    target["event_id"] = event_id
    return _reencoded(record)


def _reencoded(value: Any) -> bytes:
    """JSON with every number as written (Decimal keeps its digits), one line."""
    if isinstance(value, dict):
        return b"{" + b",".join(_reencoded(str(k)) + b":" + _reencoded(v) for k, v in value.items()) + b"}"
    if isinstance(value, list):
        return b"[" + b",".join(_reencoded(v) for v in value) + b"]"
    if isinstance(value, Decimal):
        return str(value).encode()
    return json.dumps(value).encode()  # ASCII escapes: a lone surrogate stays valid text
