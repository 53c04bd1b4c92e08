"""Ids for records that come without an `event_id`, derived from their content.

A record's id is a hash of its line (and, for CSV, of the header that names its cells) plus how many
identical lines came before it in the same file. So reading a file again, or a renamed or copied file,
gives every record the id it had, while a file rewritten with other records gives them other ids:
different contents never share an id. The count of identical lines carries over between the batches
of one file in the table `ingest_line_counts`.
"""

from __future__ import annotations

import hashlib

import duckdb
import pyarrow as pa


class LineIds:
    """The ids of one file's records, batch after batch; `save` keeps the counts in the batch's transaction."""

    def __init__(self, db: duckdb.DuckDBPyConnection, path: str, csv_header_line: bytes | None, fresh: bool):
        self.db = db
        self.path = path
        self.key = hashlib.blake2b(csv_header_line or b"", digest_size=8).digest()
        self.fresh = fresh  # the file is read from its start: counts of an earlier content are dropped
        self.seen: dict[str, int] | None = {} if fresh else None
        self.changed: set[str] = set()
        self.failed_ids: dict[int, str] = {}

    def _next(self, text: str, namespace: bytes) -> str:
        line_hash = hashlib.blake2b(namespace + self.key + text.encode("utf-8", "surrogatepass"),
                                    digest_size=12).hexdigest()
        if self.seen is None:
            self.seen = dict(self.db.execute(
                "SELECT line_hash, seen FROM ingest_line_counts WHERE path = ?", [self.path]).fetchall())
        count = self.seen.get(line_hash, 0) + 1
        self.seen[line_hash] = count
        self.changed.add(line_hash)
        return f"{line_hash}:{count}"

    def event_id(self, text: str) -> str:
        """The id of a usage event whose line (as `records._raw_text` gives it) is `text`."""
        return "g:" + self._next(text, b"event\n")

    def failed_id(self, offset: int, text: str) -> str:
        """The id of the failed_logs row of the line at `offset` (one per line, however often it fails)."""
        if offset not in self.failed_ids:
            self.failed_ids[offset] = "failed:" + self._next(text, b"failed\n")
        return self.failed_ids[offset]

    def save(self) -> None:
        """Keep the counts for the file's next batch (inside the caller's transaction)."""
        if self.fresh:
            self.db.execute("DELETE FROM ingest_line_counts WHERE path = ?", [self.path])
        if not self.changed:
            return
        counts = pa.table({"line_hash": list(self.changed), "seen": [self.seen[h] for h in self.changed]})
        self.db.register("line_counts_part", counts)
        try:
            self.db.execute("DELETE FROM ingest_line_counts WHERE path = ? AND line_hash IN "
                            "(SELECT line_hash FROM line_counts_part)", [self.path])
            self.db.execute("INSERT INTO ingest_line_counts SELECT ?, line_hash, seen FROM line_counts_part",
                            [self.path])
        finally:
            self.db.unregister("line_counts_part")
