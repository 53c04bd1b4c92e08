"""The DuckDB store: opening it safely from many processes.

DuckDB lets one process hold a file for writing, and a writer blocks readers in other processes. So:
ingestion (and the few commands that record results, such as alerts) opens a short write connection,
everyone else a short read-only one, and both wait with backoff while another process holds the lock,
then fail with `StoreLockedError` after a bounded wait.
"""

from __future__ import annotations

import contextlib
import random
import time
from collections.abc import Iterator
from pathlib import Path

import duckdb

from llmcost.errors import StoreCorruptError, StoreError, StoreLockedError
from llmcost.store import require_store, store_exists  # noqa: F401  (re-exported: store.connection.require_store)
from llmcost.store.migrations import migrate, refresh_id_keys

DEFAULT_LOCK_TIMEOUT = 30.0
_LOCK_MARKERS = ("could not set lock", "conflicting lock", "database is locked", "resource temporarily unavailable")
_SAME_PROCESS_MARKER = "different configuration than existing connections"
_CORRUPT_MARKERS = ("not a valid duckdb database", "is not a valid", "failed to read database header",
                    "corrupt", "invalid magic", "checksum", "could not read enough bytes")


def _error_text(error: Exception, path: Path) -> str:
    """The error's text without the store's path, which may itself contain a marker word."""
    return str(error).replace(str(path), "<store>").lower()


def _is_lock_error(error: Exception, path: Path) -> bool:
    return any(marker in _error_text(error, path) for marker in _LOCK_MARKERS)


def _is_corrupt_error(error: Exception, path: Path) -> bool:
    return any(marker in _error_text(error, path) for marker in _CORRUPT_MARKERS)


def connect(path: Path, *, read_only: bool = False, timeout: float = DEFAULT_LOCK_TIMEOUT) -> duckdb.DuckDBPyConnection:
    """Open the store, waiting with jittered backoff while another process holds its lock.

    A write connection creates the file and applies pending migrations. A read-only connection
    needs an existing, migrated file: use `store_exists` first.
    """
    path = Path(path)
    if not read_only:
        path.parent.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + timeout
    delay = 0.02
    while True:
        try:
            db = duckdb.connect(str(path), read_only=read_only)
            break
        except (duckdb.IOException, duckdb.Error) as error:
            if _is_lock_error(error, path):
                if time.monotonic() >= deadline:
                    raise StoreLockedError(
                        f"the store {path} stayed locked by another process for {timeout:.0f} s "
                        "(an ingest or another writer is running; try again when it ends)"
                    ) from error
                time.sleep(delay * (0.5 + random.random()))
                delay = min(delay * 2, 0.5)
                continue
            if _SAME_PROCESS_MARKER in _error_text(error, path):
                raise StoreError(
                    f"cannot open the store {path} {'read-only' if read_only else 'for writing'}: this process "
                    "already has it open the other way, and DuckDB refuses both in one process (write from a child "
                    "process, as the dashboard does: llmcost.dashboard.writes)"
                ) from error
            if _is_corrupt_error(error, path):
                raise StoreCorruptError(
                    f"the store {path} is not a readable DuckDB database ({error}); "
                    "run `llmcost rebuild` to recreate it from the journals and the fallback log"
                ) from error
            raise StoreError(
                f"cannot open the store {path}: {error} (check that the path is a file you can write, "
                "or point LLMCOST_DB / --db elsewhere; nothing is lost: the journals keep every record)"
            ) from error
    db.execute("SET TimeZone = 'UTC'")
    if not read_only:
        migrate(db)
        refresh_id_keys(db)
    return db


@contextlib.contextmanager
def writing(path: Path, timeout: float = DEFAULT_LOCK_TIMEOUT) -> Iterator[duckdb.DuckDBPyConnection]:
    """A short write connection, closed on exit so readers in other processes can get in."""
    db = connect(path, read_only=False, timeout=timeout)
    try:
        yield db
    finally:
        db.close()


@contextlib.contextmanager
def reading(path: Path, timeout: float = DEFAULT_LOCK_TIMEOUT) -> Iterator[duckdb.DuckDBPyConnection | None]:
    """A short read-only connection, or None when the store does not exist yet."""
    if not store_exists(path):
        yield None
        return
    db = connect(path, read_only=True, timeout=timeout)
    try:
        yield db
    finally:
        db.close()
