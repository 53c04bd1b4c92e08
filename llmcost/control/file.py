"""The control file itself: opening it (creating and migrating), noticing it was deleted or replaced, setting a
corrupt one aside, and turning every SQLite failure into a `ControlStateError`. `ControlState` builds on it.

Opening, setting aside and recreating are serialized between processes by an advisory lock on
`control.sqlite.lock`, which also records which file (device, inode) the `-wal` and `-shm` files belong to:
SQLite would apply a deleted file's write-ahead log to the new file at the same path, so those are moved aside.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import functools
import itertools
import logging
import os
import sqlite3
import threading
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from llmcost.control import audit as control_audit
from llmcost.control import settler, wal_index
from llmcost.control.migrations import immediate, migrate
from llmcost.control.processes import current_pid
from llmcost.errors import ControlStateError

log = logging.getLogger("llmcost")

BUSY_TIMEOUT_SECONDS = 10.0
WAL_SIZE_LIMIT_BYTES = 4 * 1024 * 1024
# With checkpoints in the background: how often the write-ahead log is looked at, the size that starts a
# checkpoint, and the pages past which a caller still checkpoints itself (the background fell behind).
CHECKPOINT_INTERVAL_SECONDS = 0.1
CHECKPOINT_AT_BYTES = 1024 * 1024
BACKSTOP_CHECKPOINT_PAGES = 10_000
_connection_serials = itertools.count(1)
_CORRUPT_MARKERS = ("not a database", "malformed", "file is encrypted")
_LOCK_MARKERS = ("locked", "busy")
_SIDE_FILES = ("-wal", "-shm")

# The operators' actions, shared by ControlState and the replay of the audit log into a new file.
DISABLE = ("INSERT INTO kill_switch (use_case, reason, disabled_at, disabled_by) VALUES (?, ?, ?, ?) "
           "ON CONFLICT (use_case) DO UPDATE SET reason = excluded.reason, "
           "disabled_at = excluded.disabled_at, disabled_by = excluded.disabled_by")
ENABLE = "DELETE FROM kill_switch WHERE use_case = ?"
HALT = ("INSERT INTO halt (day, reason, halted_at, resumed_at) VALUES (?, ?, ?, NULL) "
        "ON CONFLICT (day) DO UPDATE SET reason = excluded.reason, halted_at = excluded.halted_at, resumed_at = NULL")
RESUME = ("INSERT INTO halt (day, reason, halted_at, resumed_at) VALUES (?, NULL, NULL, ?) "
          "ON CONFLICT (day) DO UPDATE SET resumed_at = excluded.resumed_at")


def day_key(day: dt.date | str) -> str:
    if isinstance(day, dt.datetime):
        raise TypeError("day must be a date, not a datetime (convert it in the configured time zone first)")
    if isinstance(day, dt.date):
        return day.isoformat()
    return dt.date.fromisoformat(day).isoformat()


def now_iso() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="milliseconds")


def _identity(path: Path) -> tuple[int, int] | None:
    try:
        stat = os.stat(path)
    except FileNotFoundError:
        return None
    return stat.st_dev, stat.st_ino


def _is_corrupt(error: Exception) -> bool:
    return any(marker in str(error).lower() for marker in _CORRUPT_MARKERS)


_every: weakref.WeakSet[ControlFile] = weakref.WeakSet()


def _unlock_in_forked_child() -> None:
    for control in list(_every):  # a lock held by a parent's thread at the fork is held for good in the child
        control._write_lock = threading.RLock()


os.register_at_fork(after_in_child=_unlock_in_forked_child)


# Operations only ever asked right after `open()` (a tracked call's admission opens first, then its lease asks
# whether anything changed and reads the gates again when it did, `llmcost.control.lease`): the file at the path
# was looked at a moment before, so they do not stat it again (one stat a call, not two or three).
ASKED_RIGHT_AFTER_OPEN = frozenset({"data_version", "judge"})
# Operations that use the file open now or none: the background settle, which must not create a file an operator
# deleted (a call opens the new one, with its checks and migrations).
NEVER_OPENS = frozenset({"settle_many_where_open"})


def guarded(method):
    """Use the file now at the path, and turn every SQLite or file error into a ControlStateError. Every operation
    but the settle path's first applies the settles this process handed over (`llmcost.control.settler`)."""
    drains = method.__name__ not in settler.SETTLE_PATH
    looks = method.__name__ not in ASKED_RIGHT_AFTER_OPEN
    opens = method.__name__ not in NEVER_OPENS

    @functools.wraps(method)
    def guarded(self, *args, **kwargs):
        if drains:
            settler.drain_pending(self.place)
        try:
            if opens and (looks or self._file is None):
                self._ready()
            return method(self, *args, **kwargs)
        except sqlite3.Error as error:
            raise self._state_error(error) from error
        except OSError as error:
            raise ControlStateError(f"cannot use the control file {self.path}: {error} (check the folder's "
                                    "permissions and free space, or point control_db elsewhere)") from error

    return guarded


class ControlFile:
    """One process's handle on the control file, shared between threads (each has its own connection)."""

    def __init__(self, path: Path | str, *, busy_timeout: float | None = None, audit_path: Path | None = None,
                 lazy: bool = False):
        self.path = Path(path)
        self.place = os.path.abspath(self.path)  # names this file for the settles pending in this process
        self.audit_path = Path(audit_path) if audit_path else control_audit.audit_path_for(self.path)
        self.busy_timeout = busy_timeout
        self._local = threading.local()
        self._connections: list[sqlite3.Connection] = []
        self._wal_indexes: list[int] = []  # the descriptors `wal_index_header` opened, closed with the connections
        self._connections_lock = threading.Lock()
        self._open_lock = threading.Lock()
        self._write_lock = threading.RLock()
        _every.add(self)
        self._epoch = 0
        self._file: tuple[int, int] | None = None
        self._generation = ""
        self.recreated = False
        self._checkpointer: tuple[int, threading.Thread, threading.Event] | None = None  # (pid, thread, stop)
        self._checkpoint_in_background = False
        self.set_aside: Path | None = None
        if not lazy:
            self.open()

    # -- the file ----------------------------------------------------------------------------

    @guarded
    def open(self) -> None:
        """Open (creating and migrating when needed) now rather than at the first operation."""

    @property
    def generation(self) -> str:
        return self._generation

    def _timeout(self) -> float:
        return BUSY_TIMEOUT_SECONDS if self.busy_timeout is None else self.busy_timeout

    def _ready(self) -> None:
        """Switch to the file at the path when it is not the one open (deleted, replaced, or never opened)."""
        if self._file is not None and _identity(self.path) == self._file:
            return
        with self._open_lock:
            if self._file is not None and _identity(self.path) == self._file:
                return
            if self._file is not None:
                log.warning("llmcost: the control file %s was deleted or replaced while in use; "
                            "switching to the file now at that path", self.path)
            self._open_file()

    def _open_file(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._file_lock():
            self._drop_foreign_side_files()
            self._epoch += 1
            try:
                conn = self._connection(create=True)
                self._check_and_migrate(conn)
            except sqlite3.DatabaseError as error:
                if not _is_corrupt(error):
                    raise
                self._set_aside_corrupt_file(error)
                conn = self._connection(create=True)
                self._check_and_migrate(conn)
            self._file = _identity(self.path)
            self._record_side_file_owner()
            self._generation = conn.execute("SELECT value FROM meta WHERE key = 'generation'").fetchone()[0]

    def _check_and_migrate(self, conn: sqlite3.Connection) -> None:
        if conn.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
            conn.execute("PRAGMA journal_mode = WAL")
        verdict = conn.execute("PRAGMA quick_check").fetchone()[0]
        if verdict != "ok":
            raise sqlite3.DatabaseError(f"database disk image is malformed (quick_check: {verdict})")
        migrate(conn, on_new_file=self._restore_from_audit)

    @contextmanager
    def _file_lock(self) -> Iterator[None]:
        """Serialize opening, setting aside and recreating the file between processes."""
        fd = os.open(f"{self.path}.lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def _side_owner_path(self) -> Path:
        return Path(f"{self.path}.lock")

    def _drop_foreign_side_files(self) -> None:
        """Move aside -wal/-shm files left by a file that was deleted or replaced: SQLite would apply them to
        the new file. The lock file records which file (device, inode) they belong to."""
        recorded = self._side_owner_path().read_text().strip() if self._side_owner_path().exists() else ""
        current = _identity(self.path)
        if not recorded or recorded == repr(current):
            return
        stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%S%f")
        for suffix in _SIDE_FILES:
            source = Path(f"{self.path}{suffix}")
            if source.exists():
                source.rename(Path(f"{self.path}.orphan-{stamp}{suffix}"))

    def _record_side_file_owner(self) -> None:
        self._side_owner_path().write_text(repr(self._file))

    def _set_aside_corrupt_file(self, error: Exception) -> None:
        self._close_connections()
        stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%S%f")
        target = Path(f"{self.path}.corrupt-{stamp}")
        for suffix in ("", *_SIDE_FILES):
            source = Path(f"{self.path}{suffix}")
            if source.exists():
                source.rename(Path(f"{target}{suffix}"))
        self._side_owner_path().write_text("")
        self.recreated = True
        self.set_aside = target
        self._epoch += 1
        log.error("llmcost: the control file %s is corrupt (%s); moved it to %s and started a new one: kill "
                  "switches and halts come back from the audit log %s, today's spend from the store and journals",
                  self.path, error, target, self.audit_path)
        try:
            control_audit.append(self.audit_path, "control_file_set_aside", control_file=str(self.path),
                                 moved_to=str(target), reason=str(error), by="llmcost")
        except OSError as audit_error:
            log.error("llmcost: could not record the corrupt control file in the audit log %s: %s",
                      self.audit_path, audit_error)

    def _restore_from_audit(self, conn: sqlite3.Connection) -> None:
        """Replay the audit log's kill switches, halts and resumes into a new file, in their order."""
        restored = 0
        for entry in control_audit.entries(self.audit_path):
            action, at = entry["action"], entry.get("at") or now_iso()
            try:
                if action == "disable":
                    conn.execute(DISABLE, (entry["use_case"], entry.get("reason") or "no reason given", at, entry.get("by")))
                elif action == "enable":
                    conn.execute(ENABLE, (entry["use_case"],))
                elif action == "halt":
                    conn.execute(HALT, (day_key(entry["day"]), entry.get("reason") or "halted by an operator", at))
                elif action == "resume":
                    conn.execute(RESUME, (day_key(entry["day"]), at))
                else:
                    continue
            except (KeyError, TypeError, ValueError):
                log.warning("llmcost: audit entry skipped while restoring the control file: %s", entry)
                continue
            restored += 1
        if restored:
            log.warning("llmcost: new control file %s: restored %d kill switch, halt and resume entries from %s",
                        self.path, restored, self.audit_path)

    def _state_error(self, error: sqlite3.Error) -> ControlStateError:
        text = str(error).lower()
        if any(marker in text for marker in _LOCK_MARKERS):
            return ControlStateError(
                f"the control file {self.path} stayed locked by another process for {self._timeout():g} s ({error}); "
                "a process holds a long write transaction on it (an `sqlite3` shell, a backup tool): end it")
        if _is_corrupt(error):
            self._file = None  # the next operation reopens the file, which sets a corrupt one aside
            return ControlStateError(f"the control file {self.path} is unreadable ({error}); "
                                     "it is moved aside and recreated at the next call")
        return ControlStateError(f"the control file {self.path} failed: {error}")

    # -- connections -------------------------------------------------------------------------

    def _connection(self, create: bool = False) -> sqlite3.Connection:
        """This thread's connection to the file open now. Only opening the file (`_open_file`, which checks and
        migrates it) may `create` it: any other first connection of a thread, the background settler's say, to a
        file deleted meanwhile fails instead of leaving an empty file at the path."""
        conn = getattr(self._local, "conn", None)
        pid = current_pid()
        if conn is not None and self._local.key == (pid, self._epoch):
            return conn
        if conn is not None and self._local.key[0] == pid:
            self._forget(conn)  # this thread's connection to a file no longer at the path
        timeout = self._timeout()
        # isolation_level=None: we issue BEGIN IMMEDIATE ourselves so the read and the write are one lock.
        conn = sqlite3.connect(f"{self.path.resolve().as_uri()}?mode={'rwc' if create else 'rw'}", uri=True,
                               timeout=timeout, isolation_level=None, check_same_thread=False)
        conn.execute(f"PRAGMA busy_timeout = {int(timeout * 1000)}")
        # NORMAL in WAL survives a process crash; a power cut may drop the last commits, which `rebuild` restores.
        # It adds no fsync to a call's commits: traced over 100 tracked calls with fsync on, the caller made the
        # journal's 200 fsyncs and 2 of the write-ahead log's header (synced when the log starts over after a
        # checkpoint); the checkpoint's own syncs run in its background thread.
        conn.execute("PRAGMA synchronous = NORMAL")
        conn.execute(f"PRAGMA journal_size_limit = {WAL_SIZE_LIMIT_BYTES}")
        if self._checkpoint_in_background:
            conn.execute(f"PRAGMA wal_autocheckpoint = {BACKSTOP_CHECKPOINT_PAGES}")
            self._start_checkpointer()
        self._local.conn = conn
        self._local.key = (pid, self._epoch)
        self._local.serial = next(_connection_serials)  # names it for `data_version` (an id() may be reused)
        self._local.wal_index = None  # opened at the first `wal_index_header` of this connection
        with self._connections_lock:
            self._connections.append(conn)
        return conn

    def _forget(self, conn: sqlite3.Connection) -> None:
        with self._connections_lock:
            if conn in self._connections:
                self._connections.remove(conn)
            index = getattr(self._local, "wal_index", None)
            if index is not None and index in self._wal_indexes:
                self._wal_indexes.remove(index)
                os.close(index)
        conn.close()

    def wal_index_header(self, conn: sqlite3.Connection) -> bytes | None:
        """The write-ahead log index's header now (`llmcost.control.wal_index`) for this thread's connection `conn`,
        or None where there is none to read; its descriptor is opened once per connection, closed with it."""
        index = self._local.wal_index
        if index is None:
            index = wal_index.open_index(conn)
            if index is not None:
                with self._connections_lock:
                    self._wal_indexes.append(index)
            self._local.wal_index = -1 if index is None else index
        return None if self._local.wal_index < 0 else wal_index.read_header(self._local.wal_index)

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """One IMMEDIATE transaction; this process's threads (the callers, the settler) take turns on a lock first,
        which wakes the next one at once, where SQLite's busy handler would sleep 1 ms or more between retries."""
        conn = self._connection()
        with self._write_lock, immediate(conn):
            yield conn

    def _close_connections(self) -> None:
        with self._connections_lock:
            connections, self._connections = self._connections, []
            indexes, self._wal_indexes = self._wal_indexes, []
        for conn in connections:
            conn.close()
        for index in indexes:
            os.close(index)
        self._local = threading.local()

    def checkpoint_in_background(self) -> None:
        """Copy the write-ahead log into the file from a thread of this process rather than in the operation that
        fills it (SQLite's automatic checkpoint, which made every ~60th tracked call several times slower)."""
        self._checkpoint_in_background = True
        with self._connections_lock:
            for conn in self._connections:  # opened before: in this thread, so only this thread's may be changed
                if conn is getattr(self._local, "conn", None):
                    conn.execute(f"PRAGMA wal_autocheckpoint = {BACKSTOP_CHECKPOINT_PAGES}")

    def _start_checkpointer(self) -> None:
        pid = os.getpid()
        with self._connections_lock:
            if self._checkpointer is not None and self._checkpointer[0] == pid:
                return  # a forked child has none of its parent's threads: it starts its own
            stop = threading.Event()
            thread = threading.Thread(target=self._checkpoint_while_open, args=(stop,), daemon=True,
                                      name="llmcost-control-checkpoint")
            self._checkpointer = (pid, thread, stop)
        thread.start()

    def _checkpoint_while_open(self, stop: threading.Event) -> None:
        """Checkpoint the file the callers use while the log is large. Its own connection opens only an existing
        file (mode=rw), and only while the file at the path is the one open: it never creates a file, nor applies
        a deleted file's log to a new one (see `_drop_foreign_side_files`)."""
        wal, conn, opened_for = f"{self.path}-wal", None, None
        try:
            while not stop.wait(CHECKPOINT_INTERVAL_SECONDS):
                try:
                    current = self._file
                    if current is None or os.stat(wal).st_size < CHECKPOINT_AT_BYTES or _identity(self.path) != current:
                        continue
                    if conn is None or opened_for != current:
                        if conn is not None:
                            conn.close()
                        conn = sqlite3.connect(f"{self.path.resolve().as_uri()}?mode=rw", uri=True, timeout=0,
                                               isolation_level=None, check_same_thread=False)
                        opened_for = current
                    conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
                except (OSError, sqlite3.Error) as error:  # the callers' own operations report a failing file
                    log.debug("llmcost: background checkpoint of %s skipped: %s", self.path, error)
        finally:
            if conn is not None:
                conn.close()

    def _stop_checkpointer(self) -> None:
        checkpointer, self._checkpointer = self._checkpointer, None
        if checkpointer is not None and checkpointer[0] == os.getpid():
            checkpointer[2].set()
            checkpointer[1].join(timeout=5)

    def close(self) -> None:
        """Close every connection this object opened (in any thread)."""
        self._stop_checkpointer()
        self._close_connections()
        self._file = None

    def __enter__(self):
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def _audit(self, action: str, **fields) -> None:
        """Journal an operator's action; the action stands even when the audit log cannot take it."""
        try:
            control_audit.append(self.audit_path, action, **fields)
        except OSError as error:
            log.error("llmcost: %s done, but the control audit log %s cannot take it (%s): it would not survive "
                      "the loss of %s", action, self.audit_path, error, self.path)
