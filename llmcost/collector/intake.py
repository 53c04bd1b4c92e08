"""From request bodies to durable journal lines: parse, validate each record, write, fsync, then answer.

Records are validated with the event model ingestion uses (`UsageEvent`) and the same identity rule: a
record without user, tenant or use case but with usage is accepted as unattributed (its tokens were
spent) and ingestion lists it in failed logs. Accepted records go to this process's own journal file in
the journal folder (`<day>-<host>-<pid>-collector.jsonl`), so `llmcost ingest` takes them exactly once
like any journal. A batch is one write; concurrent requests share one fsync (group commit) and nobody is
answered before the fsync covering their lines returned.
"""

from __future__ import annotations

import datetime as dt
import os
import threading
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pydantic_core
from pydantic import ValidationError

from .. import fallback
from ..events import UNATTRIBUTED, UsageEvent, describe_validation_error
from ..journal import Journal, append_line, encode_line
from ..records import IDENTITY_FIELDS, _has_usage
from .auth import Grant


class BadBody(Exception):
    """A request body that cannot be read at all (400)."""


class NotDurable(Exception):
    """Neither the journal nor the fallback log could take a batch (503): nothing was acknowledged."""


def parse_body(body: bytes, content_type: str | None) -> list[Any]:
    """The records of a body: one JSON object, a JSON array, or NDJSON (a bad NDJSON line is one bad record)."""
    if not body.strip():
        raise BadBody("the request body is empty: send one JSON event, a JSON array of events, or NDJSON lines")
    if "ndjson" in (content_type or "") or "jsonl" in (content_type or ""):
        return [_ndjson_line(line) for line in body.splitlines() if line.strip()]
    try:
        value = pydantic_core.from_json(body)
    except ValueError as error:
        raise BadBody(f"the request body is not valid JSON ({error}); send one JSON event, a JSON array of "
                      "events, or NDJSON with Content-Type: application/x-ndjson") from None
    return value if isinstance(value, list) else [value]


class _BadLine:
    def __init__(self, error: str):
        self.error = error


def _ndjson_line(line: bytes) -> Any:
    try:
        return pydantic_core.from_json(line)
    except ValueError as error:
        return _BadLine(f"not valid JSON: {error}")


@dataclass
class Checked:
    """The outcome of validating a batch: records to write, and the rejected ones with their reasons."""

    accepted: list[dict[str, Any]] = field(default_factory=list)
    rejected: list[dict[str, Any]] = field(default_factory=list)
    unattributed: int = 0
    refused_tenant: int = 0


def check_records(records: list[Any], grant: Grant, source: str) -> Checked:
    """Validate each record on its own; never refuse a batch for one bad record."""
    checked = Checked()
    for index, record in enumerate(records):
        error, unattributed = _check_one(record, grant)
        if error is not None:
            if error.startswith("tenant "):
                checked.refused_tenant += 1
            checked.rejected.append({"index": index, "error": error})
            continue
        if grant.tenant_id is not None and not str(record.get("tenant_id") or "").strip():
            record["tenant_id"] = grant.tenant_id  # a tenant's key speaks for that tenant
        if record.get("event_id") is None:
            # An id of its own, so a batch that reached both the journal and the fallback log counts once.
            record["event_id"] = uuid.uuid4().hex
        record.setdefault("source", source)
        checked.accepted.append(record)
        checked.unattributed += unattributed
    return checked


def _check_one(record: Any, grant: Grant) -> tuple[str | None, bool]:
    if isinstance(record, _BadLine):
        return record.error, False
    if not isinstance(record, dict):
        return f"a record must be a JSON object, not {type(record).__name__}", False
    tenant = str(record.get("tenant_id") or "").strip()
    if grant.tenant_id is not None and tenant and tenant != grant.tenant_id:
        return f"tenant {tenant!r} is not allowed for this service key (it is tied to another tenant)", False
    candidate = dict(record)
    if grant.tenant_id is not None and not tenant:
        candidate["tenant_id"] = grant.tenant_id
    missing = [name for name in IDENTITY_FIELDS if not str(candidate.get(name) or "").strip()]
    unattributed = bool(missing) and _has_usage(candidate)
    if unattributed:
        candidate.update(dict.fromkeys(missing, UNATTRIBUTED))
    try:
        UsageEvent.model_validate(candidate)
    except ValidationError as error:
        return describe_validation_error(error), False
    except (ValueError, TypeError, OverflowError, RecursionError) as error:
        return f"record: {error}", False
    return None, unattributed


class CollectorJournal(Journal):
    """This collector process's journal file, apart from the tracker's (both in the journal folder)."""

    def path_for(self, day: dt.date) -> Path:
        tracker_path = super().path_for(day)
        return tracker_path.with_name(f"{tracker_path.stem}-collector.jsonl")


class GroupCommit:
    """fsync shared by concurrent writers: each waits until an fsync that began after its write returned."""

    def __init__(self):
        self._cond = threading.Condition()
        self._written = 0
        self._synced = 0
        self._syncing = False
        self._dirty: set[Path] = set()

    def wait_durable(self, path: Path) -> None:
        with self._cond:
            self._written += 1
            mine = self._written
            self._dirty.add(path)
            while self._synced < mine:
                if self._syncing:
                    self._cond.wait()
                    continue
                self._syncing = True
                target, paths, self._dirty = self._written, self._dirty, set()
                self._cond.release()
                try:
                    for dirty in paths:
                        _fsync_path(dirty)
                except OSError:
                    with_error = True
                    raise
                else:
                    with_error = False
                finally:
                    self._cond.acquire()
                    self._syncing = False
                    if with_error:
                        self._dirty |= paths
                    else:
                        self._synced = max(self._synced, target)
                    self._cond.notify_all()


def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)  # flushes the file's data whichever descriptor wrote it
    finally:
        os.close(fd)


class DurableWriter:
    """Writes a batch to the journal (group-committed fsync), else to the fallback log, else raises NotDurable."""

    def __init__(self, journal_dir: Path, fallback_log: Path):
        self.journal = CollectorJournal(journal_dir, fsync=False)
        self.fallback_log = Path(fallback_log)
        self._commit = GroupCommit()

    def write(self, records: list[dict[str, Any]]) -> str:
        """Make records durable; returns 'journal' or 'fallback'."""
        if not records:
            return "journal"
        try:
            path = self.journal.append_many(records)
            self._commit.wait_durable(path)
            return "journal"
        except OSError as error:
            journal_error = f"{type(error).__name__}: {error}"
        try:
            self.fallback_log.parent.mkdir(parents=True, exist_ok=True)
            lines = b"".join(encode_line(fallback.wrap(record, journal_error)) for record in records)
            append_line(self.fallback_log, lines, fsync=True, lock=True)
            return "fallback"
        except OSError as error:
            raise NotDurable(f"journal ({journal_error}) and fallback log {self.fallback_log} ({error}) both "
                             "failed; nothing was recorded: retry later") from error

    def close(self) -> None:
        self.journal.close()
