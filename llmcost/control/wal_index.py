"""The header of a SQLite file's write-ahead log index: what tells, in one read, whether anyone committed.

The write-ahead log's index (the `-shm` file) opens with its header, which every commit to the file rewrites: a
change counter, the frame count, salts and a checksum (https://www.sqlite.org/walformat.html, "The WAL-Index
Header"). SQLite's `PRAGMA data_version` in WAL mode answers whether that header changed since the connection last
read it; reading the header ourselves is one pread, where the PRAGMA is a statement and a read transaction (two
fcntl locks) run right after the journal's fsync, when every instruction costs most (issue 17).
"""

from __future__ import annotations

import os
import sqlite3

HEADER_BYTES = 48


def open_index(conn: sqlite3.Connection) -> int | None:
    """A read-only descriptor of the `-shm` file of the database `conn` has open, or None when there is none to read
    (not in WAL mode, no os.pread, or the file cannot be opened: then the PRAGMA answers, as before).

    Opened once the connection has read, so SQLite has the file open and mapped: that `-shm` file stays the
    connection's while it is open, since SQLite starts a new one only when no connection holds it."""
    if not hasattr(os, "pread") or conn.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
        return None
    conn.execute("PRAGMA data_version").fetchone()  # a read
    database = next((row[2] for row in conn.execute("PRAGMA database_list") if row[1] == "main"), "")
    if not database:
        return None
    try:
        return os.open(f"{database}-shm", os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    except OSError:
        return None


def read_header(index: int) -> bytes:
    """The header as it is now (it changes with every commit to the file, by any connection)."""
    return os.pread(index, HEADER_BYTES, 0)
