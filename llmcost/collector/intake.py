"""From request bodies to durable journal lines: parse, validate each record, write, fsync, then answer.

Records are validated with the event model ingestion uses (`UsageEvent`) and the same identity rule: a
record without user, tenant or use case but with usage is accepted as unattributed (its tokens were
spent) and ingestion lists it in failed logs. The tracker's call attempts (`{"record": "attempt", ...}`) and
fallback-log entries (`{"timestamp", "error", "event"}`, as `llmcost forward` ships them) are accepted too,
checked by the rules ingestion applies to them, and written as they came. Accepted records go to this
process's own journal file in the journal folder (`<day>-<host>-<pid>-collector.jsonl`), so `llmcost ingest`
takes them exactly once like any journal. Concurrent requests share one write and one fsync (group commit)
and nobody is answered before the fsync covering their lines returned.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import itertools
import os
import threading
import uuid
from dataclasses import dataclass, field
from functools import partial
from itertools import repeat
from operator import attrgetter, ne
from pathlib import Path
from typing import Any, Callable

import pydantic_core
from msgspec import UNSET
from pydantic import ValidationError

from llmcost.collector.auth import Grant
from llmcost.collector.fastcheck import PlainEvents
from llmcost.collector.typedread import LINES, read_plain
from llmcost.events import IDENTITY_FIELDS, UNATTRIBUTED, AttemptRecord, UsageEvent, describe_validation_error, has_usage
from llmcost.lines import append_line, encode_line
from llmcost.sdk import fallback
from llmcost.sdk.journal import Journal


class BadBody(Exception):
    """A request body that cannot be read at all (400)."""


class NotDurable(Exception):
    """Neither the journal nor the fallback log could take a batch (503): nothing was acknowledged."""


def _is_ndjson(content_type: str | None) -> bool:
    return "ndjson" in (content_type or "") or "jsonl" in (content_type or "")


def parse_body(body: bytes, content_type: str | None) -> list[Any]:
    """The records of a body: one JSON object, a JSON array, or NDJSON (a bad NDJSON line is one bad record)."""
    if not body.strip():
        raise BadBody("the request body is empty: send one JSON event, a JSON array of events, or NDJSON lines")
    if _is_ndjson(content_type):
        return [_ndjson_line(line) for line in body.splitlines() if line.strip()]
    try:
        value = pydantic_core.from_json(body, allow_inf_nan=False)
    except ValueError as error:
        raise BadBody(f"the request body is not valid JSON ({error}); send one JSON event, a JSON array of "
                      "events, or NDJSON with Content-Type: application/x-ndjson") from None
    return value if isinstance(value, list) else [value]


class _BadLine:
    def __init__(self, error: str):
        self.error = error


def _ndjson_line(line: bytes) -> Any:
    try:
        return pydantic_core.from_json(line, allow_inf_nan=False)
    except ValueError as error:
        return _BadLine(f"not valid JSON: {error}")


@dataclass
class Checked:
    """The outcome of validating a batch: records to write, and the rejected ones with their reasons."""

    # Dicts, or `typedread`'s records for the usual body read straight from its bytes.
    accepted: list[Any] = field(default_factory=list)
    events: list[Any] = field(default_factory=list)  # the accepted usage events (not attempts)
    rejected: list[dict[str, Any]] = field(default_factory=list)
    unattributed: int = 0
    refused_tenant: int = 0
    lines: bytes | None = None  # the accepted records' journal lines, when the reading wrote them (typedread's)


_ID_PREFIX = uuid.uuid4().hex  # unique to this process: ids are the prefix and a counter, cheaper than a uuid each
_id_counter = itertools.count(1)


_PLAIN_EVENTS = PlainEvents()


def check_records(records: list[Any], grant: Grant, source: str) -> Checked:
    """Validate each record on its own; never refuse a batch for one bad record.

    The plain usage events of the batch are judged at once (`fastcheck`); every other record takes the
    exact path, one `UsageEvent` (or `AttemptRecord`) validation each, which says why it is refused."""
    plain = _PLAIN_EVENTS.judge(records)
    if grant.tenant_id is None and all(plain):
        return _all_plain(records, source)
    checked = Checked()
    for index, record in enumerate(records):
        if plain[index] and (grant.tenant_id is None or record["tenant_id"] == grant.tenant_id):
            if record.get("event_id") is None:
                record["event_id"] = _new_event_id()
            record.setdefault("source", source)
            checked.accepted.append(record)
            checked.events.append(record)
        else:
            _check_exactly(checked, index, record, grant, source)
    return checked


def check_plain_body(body: bytes, content_type: str | None, grant: Grant, source: str) -> Checked | None:
    """The usual body, a JSON event or array of them that are all plain usage events, read and judged straight
    from its bytes (`typedread`, else `fastcheck`); None for any other body, which `parse_body` and `check_records` take."""
    if _is_ndjson(content_type):
        return None
    typed = read_plain(body, _PLAIN_EVENTS, partial(_complete_typed, grant), source)
    if typed is not None:
        records, lines = typed
        return Checked(accepted=records, events=records, lines=lines)
    records = _PLAIN_EVENTS.read_json(body)
    if records is None or (grant.tenant_id is not None
                           and any(record["tenant_id"] != grant.tenant_id for record in records)):
        return None
    return _all_plain(records, source)


_TENANT_OF = attrgetter("tenant_id")


def _all_plain(records: list[dict[str, Any]], source: str) -> Checked:
    """A batch of plain usage events, all accepted: one tight loop, no per-record branching."""
    for record in records:
        if record.get("event_id") is None:
            record["event_id"] = _new_event_id()
        record.setdefault("source", source)
    return Checked(accepted=records, events=records)


def _complete_typed(grant: Grant, records: list[Any]) -> bool:
    """`_all_plain` for `typedread`'s records (a field not given reads UNSET; the source not given was read as
    this endpoint's); False, leaving the body to the usual path, when a record names a tenant this key is not for."""
    if grant.tenant_id is not None and any(map(ne, map(_TENANT_OF, records), repeat(grant.tenant_id))):
        return False
    for record in records:
        if record.event_id is None or record.event_id is UNSET:
            record.event_id = _new_event_id()
    return True


def _new_event_id() -> str:
    return f"{_ID_PREFIX}-{next(_id_counter)}"


def _check_exactly(checked: Checked, index: int, record: Any, grant: Grant, source: str) -> None:
    inner = _wrapped(record)
    if inner is not None and not isinstance(inner, dict):
        checked.rejected.append({"index": index, "error": "a fallback-log entry's event must be a JSON object"})
        return
    target = record if inner is None else inner
    if isinstance(target, dict) and target.get("event_id") is None and not _is_attempt(target):
        # An id of its own, so a batch that reached both the journal and the fallback log counts once.
        target["event_id"] = _new_event_id()
    error, unattributed = _check_one(target, grant)
    if error is not None:
        if error.startswith("tenant "):
            checked.refused_tenant += 1
        checked.rejected.append({"index": index, "error": error})
        return
    if grant.tenant_id is not None and not str(target.get("tenant_id") or "").strip():
        target["tenant_id"] = grant.tenant_id  # a tenant's key speaks for that tenant
    target.setdefault("source", source)
    checked.accepted.append(record)
    if inner is None and not _is_attempt(record):
        checked.events.append(record)
    checked.unattributed += unattributed


def _is_attempt(record: Any) -> bool:
    return isinstance(record, dict) and record.get("record") == "attempt"


def _wrapped(record: Any) -> Any:
    """The event (or call attempt) inside a fallback-log entry, or None when the record is no such entry."""
    if isinstance(record, dict) and "event" in record and "error" in record:
        return record["event"]
    return None


def _blank(value: Any) -> bool:
    return not str(value or "").strip()


def _check_one(record: Any, grant: Grant) -> tuple[str | None, bool]:
    if isinstance(record, _BadLine):
        return record.error, False
    if not isinstance(record, dict):
        return f"a record must be a JSON object, not {type(record).__name__}", False
    if _is_attempt(record):
        return _check_attempt(record, grant), False
    candidate = record
    if grant.tenant_id is not None:
        tenant = str(record.get("tenant_id") or "").strip()
        if tenant and tenant != grant.tenant_id:
            return f"tenant {tenant!r} is not allowed for this service key (it is tied to another tenant)", False
        if not tenant:
            candidate = {**record, "tenant_id": grant.tenant_id}
    missing = [name for name in IDENTITY_FIELDS if _blank(candidate.get(name))]
    unattributed = bool(missing) and has_usage(candidate)
    if unattributed:  # ingestion's rule: spent tokens are kept under (unattributed) and listed in failed logs
        candidate = {**candidate, **dict.fromkeys(missing, UNATTRIBUTED)}
    try:
        UsageEvent.model_validate(candidate)
    except ValidationError as error:
        return describe_validation_error(error), False
    except (ValueError, TypeError, OverflowError, RecursionError) as error:
        return f"record: {error}", False
    return None, unattributed


def _check_attempt(record: dict[str, Any], grant: Grant) -> str | None:
    """A call attempt is checked as ingestion checks it (`AttemptRecord`), and against a tenant's key."""
    tenant = str(record.get("tenant_id") or "").strip()
    if grant.tenant_id is not None and tenant and tenant != grant.tenant_id:
        return f"tenant {tenant!r} is not allowed for this service key (it is tied to another tenant)"
    try:
        AttemptRecord.model_validate(record)
    except ValidationError as error:
        return f"call attempt: {describe_validation_error(error)}"
    return None


class CollectorJournal(Journal):
    """This collector process's journal file, apart from the tracker's (both in the journal folder)."""

    def path_for(self, day: dt.date) -> Path:
        tracker_path = super().path_for(day)
        return tracker_path.with_name(f"{tracker_path.stem}-collector.jsonl")


class GroupCommit:
    """One thread writes and fsyncs for every waiting request (group commit): it takes all batches queued,
    writes each with one write, fsyncs once, then resolves their futures. The event loop never touches the
    file, so it never waits behind an fsync, and concurrent requests share one."""

    def __init__(self, journal: Journal, on_sync: Callable[[], None] = lambda: None):
        self.journal = journal
        self.on_sync = on_sync  # told of each fsync of the journal, so a group's size can be watched
        self._cond = threading.Condition()
        self._waiting: list[tuple[asyncio.AbstractEventLoop, asyncio.Future, bytes]] = []
        self._thread: threading.Thread | None = None
        self._closed = False
        self._entries_synced: set[Path] = set()

    async def append(self, lines: bytes) -> Path:
        """Write the lines and return once they are fsynced; raises OSError when they could not be."""
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        with self._cond:
            if self._closed:
                raise OSError("the collector is shutting down")
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="llmcost-collector-journal", daemon=True)
                self._thread.start()
            self._waiting.append((loop, future, lines))
            self._cond.notify()
        return await future

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._waiting and not self._closed:
                    self._cond.wait()
                if not self._waiting:
                    return
                group, self._waiting = self._waiting, []
            outcomes: dict[asyncio.AbstractEventLoop, list] = {}
            written = self._write(group, outcomes)
            errors: dict[Path, OSError] = {}
            for path in {path for _, _, path in written}:
                try:
                    _fsync_path(path)
                    self.on_sync()
                    if path not in self._entries_synced:  # a new file: its folder entry must survive power loss too
                        _fsync_path(path.parent)
                        self._entries_synced.add(path)
                except OSError as error:
                    errors[path] = error
            for loop, future, path in written:
                outcomes.setdefault(loop, []).append((future, path, errors.get(path)))
            for loop, resolved in outcomes.items():  # one wake-up of each loop for the whole group
                loop.call_soon_threadsafe(_resolve_all, resolved)

    def _write(self, group: list, outcomes: dict) -> list:
        """The group's batches in one write (each batch's lines stay whole); should that fail, batch by batch,
        so a batch that does not fit fails alone and the others may still go in."""
        if len(group) > 1:
            try:
                path = self.journal.append_lines(b"".join(lines for _, _, lines in group))
                return [(loop, future, path) for loop, future, _ in group]
            except OSError:
                pass  # nothing was written (a short write is undone): try each batch on its own
        written = []
        for loop, future, lines in group:
            try:
                written.append((loop, future, self.journal.append_lines(lines)))
            except OSError as error:  # this batch only: the next may still fit
                outcomes.setdefault(loop, []).append((future, None, error))
        return written

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify()
        if self._thread is not None:
            self._thread.join(timeout=30)


def _resolve_all(outcomes: list[tuple[asyncio.Future, Path | None, OSError | None]]) -> None:
    for future, path, error in outcomes:
        if future.done():
            continue
        if error is None:
            future.set_result(path)
        else:
            future.set_exception(error)


def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)  # flushes the file's data whichever descriptor wrote it
    finally:
        os.close(fd)


def journal_lines(checked: Checked) -> bytes:
    """The journal lines of a checked batch's accepted records."""
    return checked.lines if checked.lines is not None else encode_records(checked.accepted)


def encode_records(records: list[Any], finite: bool = False) -> bytes:
    """Journal lines of records parsed from JSON (only JSON types, newlines escaped). Records whose every
    number is known finite (`typedread`'s) may be written by msgspec, in a fifth of pydantic's time; msgspec
    would write an infinity (a number like 1e400 read by the exact path) as null, so others go to pydantic."""
    if finite or not records:
        return LINES.encode_lines(records)
    return b"\n".join(map(pydantic_core.to_json, records)) + b"\n"


def records_of(lines: bytes) -> list[Any]:
    """The records of journal lines (`encode_records`'), as JSON reads them back."""
    return [pydantic_core.from_json(line) for line in lines.split(b"\n") if line]


class DurableWriter:
    """Writes a batch to the journal (group-committed fsync), else to the fallback log, else raises NotDurable."""

    def __init__(self, journal_dir: Path, fallback_log: Path, on_sync: Callable[[], None] = lambda: None):
        self.journal = CollectorJournal(journal_dir, fsync=False)  # GroupCommit fsyncs
        self.fallback_log = Path(fallback_log)
        self._commit = GroupCommit(self.journal, on_sync)

    async def write(self, records: list[Any], finite: bool = False) -> str:
        """Make records durable (`finite` as `encode_records` takes it); returns 'journal' or 'fallback'."""
        return await self.write_lines(encode_records(records, finite))

    async def write_lines(self, lines: bytes) -> str:
        """Make journal lines durable (`encode_records`'); returns 'journal' or 'fallback'. Only the lines wait
        for the fsync: the records they came from need not be kept meanwhile."""
        if not lines:
            return "journal"
        try:
            await self._commit.append(lines)
            return "journal"
        except OSError as error:
            journal_error = f"{type(error).__name__}: {error}"
        try:
            await asyncio.to_thread(self._to_fallback, lines, journal_error)
            return "fallback"
        except OSError as error:
            raise NotDurable(f"journal ({journal_error}) and fallback log {self.fallback_log} ({error}) both "
                             "failed; nothing was recorded: retry later") from error

    def _to_fallback(self, lines: bytes, journal_error: str) -> None:
        self.fallback_log.parent.mkdir(parents=True, exist_ok=True)
        # A fallback-log entry (forwarded from another host) stays one entry, not wrapped again.
        entries = b"".join(encode_line(record if _wrapped(record) is not None else fallback.wrap(record, journal_error))
                           for record in records_of(lines))
        append_line(self.fallback_log, entries, fsync=True, lock=True)

    def close(self) -> None:
        self._commit.close()
        self.journal.close()
