"""The DuckDB store: opening it safely from many processes.

DuckDB lets one process hold a file for writing, and a writer blocks readers in other processes. So:
ingestion (and the few commands that record results, such as alerts) opens a short write connection,
everyone else a short read-only one, and both wait with backoff while another process holds the lock,
then fail with `StoreLockedError` after a bounded wait.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
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
    waiting: int | None = None  # a reader's mark that it waits (see `let_readers_in`)
    try:
        while True:
            try:
                db = duckdb.connect(str(path), read_only=read_only)
                break
            except (duckdb.IOException, duckdb.Error) as error:
                if not _is_lock_error(error, path):
                    raise _open_error(error, path, read_only) from error
                if time.monotonic() >= deadline:
                    raise StoreLockedError(
                        f"the store {path} stayed locked by another process for {timeout:.0f} s "
                        "(an ingest or another writer is running; try again when it ends)"
                    ) from error
                if read_only and waiting is None:
                    waiting = _mark_waiting(path)
                time.sleep(delay * (0.5 + random.random()))
                delay = min(delay * 2, 0.5)
    finally:
        if waiting is not None:
            os.close(waiting)  # closing releases the lock
    db.execute("SET TimeZone = 'UTC'")
    if not read_only:
        migrate(db)
        refresh_id_keys(db)
    return db


def _open_error(error: Exception, path: Path, read_only: bool) -> StoreError:
    """The error for a store that cannot be opened for a reason other than another process's lock."""
    if _SAME_PROCESS_MARKER in _error_text(error, path):
        return StoreError(
            f"cannot open the store {path} {'read-only' if read_only else 'for writing'}: this process already "
            "has it open the other way, and DuckDB refuses both in one process (write from a child process, as "
            "the dashboard does: llmcost.dashboard.writes)")
    if _is_corrupt_error(error, path):
        return StoreCorruptError(
            f"the store {path} is not a readable DuckDB database ({error}); "
            "run `llmcost rebuild` to recreate it from the journals and the fallback log")
    return StoreError(
        f"cannot open the store {path}: {error} (check that the path is a file you can write, "
        "or point LLMCOST_DB / --db elsewhere; nothing is lost: the journals keep every record)")


# A writer that closes and at once reopens the store (ingestion, between batches) would otherwise keep out
# readers polling with backoff for as long as it runs: a reader that finds the store locked holds a shared
# lock on `<store>.readers` while it waits, and the writer, between two connections, waits for it to get in.
def _waiting_path(path: Path) -> Path:
    return path.with_name(path.name + ".readers")


def _mark_waiting(path: Path) -> int | None:
    try:
        fd = os.open(_waiting_path(path), os.O_RDWR | os.O_CREAT, 0o644)
    except OSError:
        return None  # a folder we cannot write: the reader just polls
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return None  # a writer is checking this instant: mark on the next round
    return fd


def let_readers_in(path: Path, longest: float = 2.0) -> None:
    """Between two write connections: wait, at most `longest` seconds, while readers wait for the store."""
    try:
        fd = os.open(_waiting_path(Path(path)), os.O_RDWR | os.O_CREAT, 0o644)
    except OSError:
        return
    try:
        deadline = time.monotonic() + longest
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return  # no reader waits
            except OSError:
                if time.monotonic() >= deadline:
                    return
                time.sleep(0.02)
    finally:
        os.close(fd)


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


@contextlib.contextmanager
def held_open(path: Path) -> Iterator[None]:
    """Keep the store open read-only meanwhile, so this process's `reading` calls reuse the opened database
    (DuckDB shares it between one process's connections to a file) instead of opening it again (the demo
    store: 17-18 ms of CPU and ~30 ms each, 0.2 ms then). Nothing is held when there is no store yet or it
    cannot be opened at once (another process writing): each `reading` then waits and opens as before, and
    says what went wrong."""
    db = None
    if store_exists(path):
        with contextlib.suppress(StoreError):
            db = connect(path, read_only=True, timeout=0)
    try:
        yield
    finally:
        if db is not None:
            db.close()
