"""`llmcost forward`: an app host's journals and fallback log to a collector (`llmcost serve`), exactly once.

The files are read as ingestion reads them (`llmcost.ingestion.sources`: saved offset, the fingerprint of
the bytes before it, whole lines only, so a torn last line waits), posted in file order as NDJSON to the
collector's `/v1/usage`, and the saved offset moves only after the collector's 202, which it answers once
the batch is fsynced in its own journal. A batch is sent again until acknowledged; records keep their ids,
so one that arrives twice (a crash between the 202 and saving the offset) is stored once by ingestion.
Records the collector rejects are kept on this host with the reason (`forward-rejected.jsonl`).
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from llmcost.config import Settings
from llmcost.errors import LLMCostError
from llmcost.forward.client import Answer, CollectorClient, CollectorUnavailable
from llmcost.forward.records import Outgoing, first_line, split_records
from llmcost.forward.state import ForwardState, Rejected, exclusive, keep_rejected, rejected_count
from llmcost.ingestion import sources
from llmcost.ingestion.sources import Source

__all__ = ["CollectorUnavailable", "ForwardResult", "Forwarder", "forward_sources", "forward_status"]

log = logging.getLogger("llmcost")

BATCH_BYTES = 1024 * 1024
MAX_LINE_BYTES = 8 * 1024 * 1024  # a longer line fits no request the collector takes by default
FIRST_BACKOFF_SECONDS = 0.5
MAX_BACKOFF_SECONDS = 30.0


@dataclass
class ForwardResult:
    files: int = 0
    sent: int = 0
    acknowledged: int = 0
    rejected: int = 0
    deleted: list[str] = field(default_factory=list)

    def summary(self) -> str:
        text = f"forwarded {self.acknowledged:,} records from {self.files:,} file(s)"
        if self.rejected:
            text += f", rejected {self.rejected:,} (kept in forward-rejected.jsonl with the reason)"
        if self.deleted:
            text += f", deleted {len(self.deleted):,} forwarded journal file(s) past retention"
        return text


def forward_sources(settings: Settings) -> list[Source]:
    """The host's own records: its journal files and the fallback log (not the inbox, which is the store's)."""
    return [s for s in sources.configured_sources(settings) if s.kind in ("journal", "fallback")]


class Forwarder:
    """Forwards the sources of one data folder to one collector."""

    def __init__(self, settings: Settings, url: str | None = None, key: str | None = None,
                 timeout: float = 30.0):
        url = url or settings.forward_to
        if not url:
            raise LLMCostError("no collector to forward to: pass --to URL, or set forward_to in llmcost.toml "
                               "(or LLMCOST_FORWARD_TO)")
        self.settings = settings
        self.client = CollectorClient(url, key if key is not None else settings.forward_key, timeout)

    def close(self) -> None:
        self.client.close()

    def forward_round(self) -> ForwardResult:
        """Forward everything whole that waits; raises CollectorUnavailable at the first batch not acknowledged
        (what was acknowledged before it is saved)."""
        result = ForwardResult()
        with exclusive(self.settings):
            state = ForwardState(self.settings)
            try:
                try:
                    for source in forward_sources(self.settings):
                        if self._forward_source(state, source, result):
                            result.files += 1
                except CollectorUnavailable as error:
                    state.note("error", str(error))
                    raise
                state.note("success")
                result.deleted = self._apply_retention(state)
            finally:
                state.close()
        return result

    def run(self, interval: float, *, once: bool = False, stop: Callable[[], bool] = lambda: False,
            report: Callable[[str], None] = log.info) -> None:
        """Forward every `interval` seconds; when the collector does not acknowledge, retry with growing pauses."""
        backoff = FIRST_BACKOFF_SECONDS
        while not stop():
            try:
                result = self.forward_round()
                backoff = FIRST_BACKOFF_SECONDS
                if result.acknowledged or result.rejected or result.deleted:
                    report(result.summary())
                if once:
                    return
                pause = interval
            except CollectorUnavailable as error:
                if once:
                    raise
                report(f"{error}; nothing was lost, retrying in {backoff:g} s")
                pause, backoff = backoff, min(backoff * 2, MAX_BACKOFF_SECONDS)
            _sleep(pause, stop)

    def _forward_source(self, state: ForwardState, source: Source, result: ForwardResult) -> bool:
        try:
            size = source.data.stat().st_size
        except OSError:
            return False  # gone since it was listed
        begin = sources.content_start(source.data) if size else 0
        saved = sources.saved_offset(source, state.known(source.path), size)
        offset = begin if saved is None else max(saved, begin)
        records = 0 if saved is None else state.records(source.path)
        head = first_line(source)
        touched = False
        while offset < size:
            lines, at_end = sources.whole_lines(source.data, offset, BATCH_BYTES, whole=False)
            if not lines and not at_end:  # a line longer than a batch: alone, if any request can carry it
                lines, at_end = sources.whole_lines(source.data, offset, MAX_LINE_BYTES, whole=False)
            if lines:
                outgoing, rejected = split_records(source, lines, offset, head)
                end = offset + len(lines)
            elif at_end:
                break  # the last line is still being written
            else:
                end = _line_end(source, offset)
                if end is None:
                    break
                outgoing, rejected = [], [Rejected(source.path, offset, (
                    f"a line of {end - offset:,} bytes is longer than a record may be ({MAX_LINE_BYTES:,} bytes); "
                    "its first bytes are kept here"), lines.obj[:1_000_000])]
            rejected += self._send(source, outgoing, result)
            keep_rejected(self.settings, rejected)
            result.rejected += len(rejected)
            records += len(outgoing) + len(rejected)
            state.acknowledge(source.path, source.kind, sources.fingerprint(source.data, end), end, records)
            offset, touched = end, True
        return touched

    def _send(self, source: Source, outgoing: list[Outgoing], result: ForwardResult) -> list[Rejected]:
        """Post records until the collector acknowledged each; returns those it rejected, with the reason."""
        if not outgoing:
            return []
        result.sent += len(outgoing)
        answer = self.client.post([o.line for o in outgoing])
        if answer.status == 202 or (answer.status == 403 and "rejected" in answer.body):
            reasons = {r.get("index"): str(r.get("error")) for r in answer.body.get("rejected", [])
                       if isinstance(r, dict)}
            result.acknowledged += len(outgoing) - len(reasons)
            return [Rejected(source.path, o.offset, f"collector: {reasons[i]}", o.line)
                    for i, o in enumerate(outgoing) if i in reasons]
        if answer.status in (400, 413):  # the batch as a whole: halves tell which record it is
            if len(outgoing) == 1:
                return [Rejected(source.path, outgoing[0].offset,
                                 f"collector answered {answer.status}: {_reason(answer)}", outgoing[0].line)]
            half = len(outgoing) // 2
            return self._send(source, outgoing[:half], result) + self._send(source, outgoing[half:], result)
        raise CollectorUnavailable(f"collector {self.client.url} answered {answer.status}: {_reason(answer)}")

    def _apply_retention(self, state: ForwardState) -> list[str]:
        """Delete journal files older than the retention whose every byte was acknowledged."""
        days = self.settings.forward_retention_days
        if not days:
            return []
        cutoff = time.time() - days * 86400
        deleted = []
        for source in forward_sources(self.settings):
            if source.kind != "journal":
                continue  # the fallback log is shared by every process of the host: kept
            try:
                stat = source.data.stat()
                saved = sources.saved_offset(source, state.known(source.path), stat.st_size)
                if saved == stat.st_size and stat.st_mtime < cutoff:
                    source.path.unlink()
                    state.forget(source.path)
                    deleted.append(str(source.path))
            except OSError as error:
                log.warning("llmcost forward: could not delete %s: %s", source.path, error)
        return deleted


def _line_end(source: Source, offset: int) -> int | None:
    with source.data.open("rb") as f:
        f.seek(offset)
        position = offset
        while block := f.read(1 << 20):
            found = block.find(b"\n")
            if found >= 0:
                return position + found + 1
            position += len(block)
    return None


def _reason(answer: Answer) -> str:
    return str(answer.body.get("error") or answer.text or "no reason given")[:500]


def _sleep(seconds: float, stop: Callable[[], bool]) -> None:
    until = time.monotonic() + seconds
    while not stop() and time.monotonic() < until:
        time.sleep(min(0.2, max(0.0, until - time.monotonic())))


def forward_status(settings: Settings) -> dict:
    """What waits to be forwarded (records per kind), when forwarding last succeeded or failed, rejected kept."""
    state = ForwardState(settings)
    try:
        waiting = {"journal": 0, "fallback": 0}
        for source in forward_sources(settings):
            try:
                waiting[source.kind] += sources.waiting_records(source, state.known(source.path))
            except OSError:
                continue
        meta = state.meta()
    finally:
        state.close()
    return {"to": settings.forward_to, "waiting": waiting, "last_success": meta.get("last_success"),
            "last_error": meta.get("last_error"), "last_error_reason": meta.get("last_error_reason"),
            "rejected": rejected_count(settings), "checked_at": dt.datetime.now(dt.timezone.utc)}
