"""Settling finished calls off the caller's path: a background thread of this process applies them within
milliseconds, in batches of one transaction each.

Why a late settle keeps every promise: a call's usage is journaled before its settle is handed over (the journal
is the durable record). Until the settle is applied, the call's reservation still holds its estimate, exactly as
if the call had lasted a few milliseconds longer, so every budget holds as it does for calls in flight. If the
process dies first, the reservation expires by its TTL (`reservation_ttl_seconds`) and `llmcost control rebuild`
reads the journals.

What this process reads sees every settle it handed over: each operation of the control state other than the
settle path's own (`SETTLE_PATH`) first drains the pending settles of the same control state (`drain_pending`),
whichever object in this process reads it (the tracker's, `llmcost budgets`', the dashboard's). `close()` and
interpreter exit drain too. The tracker also drains before an admission when a pending settle would raise a
figure (its actual above its estimate), and before re-checking a refusal or a warning, so its own decisions are
those of an immediate settle.
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
import weakref
from collections.abc import Callable
from decimal import Decimal
from typing import Any

from llmcost.errors import ControlStateError

log = logging.getLogger("llmcost")

# The operations that never drain: the settle path itself, and the tracker's per-call steps (an admission judges
# pending settles as calls in flight; `Tracker.admit` drains where exactness needs it).
SETTLE_PATH = frozenset({"admit", "settle", "settle_many", "settle_many_where_open", "release", "open", "judge",
                         "data_version"})
RETRY_SECONDS = 0.5  # after a failing control state, how soon the background tries again
TICK_SECONDS = 0.1  # how often the background runs `tick` (the leases' retirement of idle and old leases)

_settlers: dict[str, weakref.WeakSet[Settler]] = {}
_settlers_lock = threading.Lock()


def drain_pending(place: str) -> None:
    """Apply every settle this process handed over for the control state at `place` (a file path, a URL)."""
    if not _settlers:
        return
    with _settlers_lock:
        found = list(_settlers.get(place, ()))
    for settler in found:
        settler.drain()


def _drain_all() -> None:
    with _settlers_lock:
        found = [settler for settlers in _settlers.values() for settler in settlers]
    for settler in found:
        settler.close()


def _after_fork_in_child() -> None:
    """A forked child has none of its parent's threads, and its parent settles what it handed over."""
    global _settlers_lock
    _settlers_lock = threading.Lock()
    for settlers in _settlers.values():
        for settler in settlers:
            settler._reset()


atexit.register(_drain_all)
os.register_at_fork(after_in_child=_after_fork_in_child)


def _raises(item: tuple[Any, int, Decimal]) -> int:
    """1 when a settle's actual figures exceed its reservation's estimate (applying it raises a figure)."""
    reservation, tokens, cost = item
    return int(tokens > reservation.tokens or cost > reservation.cost)


class Settler:
    """Settles (reservation, actual tokens, actual cost) in the background through `apply` (a control state's
    `settle_many`), registered under `place` so that every read of that control state in this process drains it."""

    def __init__(self, apply: Callable[[list[tuple[Any, int, Decimal]]], list[bool]], place: str, *,
                 apply_in_background: Callable[[list[tuple[Any, int, Decimal]]], list[bool] | None] | None = None):
        self._apply = apply
        self._apply_in_background = apply_in_background or apply  # None from it: not now (kept, tried again)
        self.place = place
        self._condition = threading.Condition()
        self._queue: list[tuple[Any, int, Decimal]] = []
        self._applying = 0  # settles taken by a thread and not yet applied
        self._raising = 0  # queued settles whose actuals exceed their estimates
        self.applied = 0  # settles applied so far: whether any was applied while a decision was being taken
        self._thread: threading.Thread | None = None
        self._closed = False
        self._failing = False
        self.tick: Callable[[], bool] | None = None  # run by the background every TICK_SECONDS while it says True
        self._ticking = False
        self._wakes = 0  # (a wake during a tick that found nothing keeps the ticks going)
        self.before_drain: Callable[[], None] | None = None  # hands over what a drain must apply too
        with _settlers_lock:
            _settlers.setdefault(place, weakref.WeakSet()).add(self)

    def submit(self, reservation, tokens: int, cost: Decimal) -> None:
        """Hand a finished call's settle over; applied within milliseconds (or by the next drain)."""
        if self._closed:  # after close: at once, as nothing would apply it later
            self._settle([(reservation, tokens, cost)], taken=False)
            return
        with self._condition:
            self._queue.append((reservation, tokens, cost))
            self._raising += _raises((reservation, tokens, cost))
            self._start()
            self._condition.notify()

    def wake(self) -> None:
        """Run `tick` every TICK_SECONDS from now on, until it returns False."""
        with self._condition:
            self._wakes += 1
            if not self._ticking:
                self._ticking = True
                self._start()
                self._condition.notify()

    def _start(self) -> None:
        if self._thread is None and not self._closed:
            self._thread = threading.Thread(target=self._run, name="llmcost-settler", daemon=True)
            self._thread.start()

    @property
    def pending(self) -> int:
        """Settles handed over and not yet applied."""
        with self._condition:
            return len(self._queue) + self._applying

    @property
    def raising(self) -> bool:
        """Whether a pending settle would raise a figure (so an admission now could pass where it would not).
        Read without the lock: a settle handed over by another thread may be missed, as if it had not ended yet."""
        return self._raising > 0

    def drain(self, *, everything: bool = True) -> bool:
        """Apply every pending settle now (in this thread) and wait for those the background is applying;
        True when there were any. Never raises: settles that fail stay pending, and are retried. `everything`:
        with what `before_drain` hands over (every lease)."""
        if everything and self.before_drain is not None:
            self.before_drain()
        with self._condition:
            had = bool(self._queue or self._applying)
            batch, self._queue = self._queue, []
            self._applying += len(batch)
        if batch:
            self._settle(batch)
        with self._condition:
            self._condition.wait_for(lambda: self._applying == 0, timeout=30)
        return had

    def close(self) -> None:
        """Drain, then stop the background thread (at `Tracker.close` and at interpreter exit)."""
        self.drain()
        with self._condition:
            self._closed = True
            thread, self._thread = self._thread, None
            self._condition.notify_all()
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=5)
        with self._condition:
            left = len(self._queue)
        if left:
            log.error("llmcost: %d finished calls are journaled but not settled in the control state (it failed); "
                      "their reservations expire after reservation_ttl_seconds, and `llmcost control rebuild` "
                      "counts them from the journals", left)

    def _reset(self) -> None:  # (in a forked child)
        self._condition = threading.Condition()
        self._queue, self._applying, self._raising, self._thread, self._ticking = [], 0, 0, None, False

    def _run(self) -> None:
        while True:
            with self._condition:
                # Idle (not ticking), it waits for settles alone, and also for a `wake`, which must start the
                # ticks then: a lease made now is retired by them, with no settle to wake this otherwise.
                ticking = self._ticking
                self._condition.wait_for(lambda was=ticking: self._queue or self._closed or (self._ticking and not was),
                                         timeout=TICK_SECONDS if ticking else None)
                if self._closed and not self._queue:
                    return
                batch, self._queue = self._queue, []
                self._applying += len(batch)
            if batch and not self._settle(batch, apply=self._apply_in_background):
                with self._condition:
                    self._condition.wait(RETRY_SECONDS)
            if self._ticking and self.tick is not None:
                wakes, still = self._wakes, True
                try:
                    still = self.tick()
                except Exception:  # the next tick, a drain or close tries again
                    log.exception("llmcost: retiring idle leases failed")
                with self._condition:
                    if not still and wakes == self._wakes:
                        self._ticking = False

    def _settle(self, batch: list[tuple[Any, int, Decimal]], taken: bool = True, apply=None) -> bool:
        """Apply a batch in one transaction; what fails is put back for a retry (False then)."""
        failed: list[tuple[Any, int, Decimal]] = []
        try:
            if (apply or self._apply)(batch) is None:
                failed = batch
        except ControlStateError as error:
            failed = batch
            if not self._failing:
                log.error("llmcost: finished calls are journaled but not yet settled in the control state (%s); "
                          "retried in the background and before the next read", error)
        except Exception:  # a settle the control state refuses (bad figures): one by one, so the others go in
            for item in batch:
                try:
                    self._apply([item])
                except ControlStateError:
                    failed.append(item)
                except Exception:
                    log.exception("llmcost: settle of %r refused by the control state; its journaled usage counts "
                                  "once ingested", item)
        self._failing = bool(failed)
        with self._condition:
            self.applied += len(batch) - len(failed)
            if taken:
                self._applying -= len(batch)
                self._raising -= sum(map(_raises, batch)) - sum(map(_raises, failed))
            if failed:
                self._queue[:0] = failed
            self._condition.notify_all()
        return not failed
