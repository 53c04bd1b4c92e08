"""Whether any gate may have changed on Redis, answered without a round trip: a listener thread subscribed to the
gates channel (`<prefix>gates`).

Every change of a gate publishes on that channel in the same round trip as the change itself: kill switch on or
off, halt, resume (`RedisControlState`), the system's spend at the shutdown level (the Lua scripts, at most once
a second), and figures raised by a rebuild. The listener bumps a version on each message; `version()` reads it, and a
lease (`llmcost.control.lease`) judges the gates again whenever it differs from the one it judged them at.

The window this leaves: a change takes effect in this process on the next call after its message arrived, about
one network hop after the change returned to whoever made it (plus the moment the listener thread waits for the
interpreter). Nothing is missed while the listener is not subscribed: until the server confirmed the subscription,
and from any failure of its connection until a new one is confirmed, `version()` answers a new number on every
call, so every call judges the gates (a round trip, which fails with the usual `ControlStateError` while Redis is
down); and the version changes again once subscribed, so a change made before the subscription is judged too.
"""

from __future__ import annotations

import logging
import os
import threading
import weakref

log = logging.getLogger("llmcost")

RETRY_SECONDS = 0.5  # after a failed connection, how soon the listener tries again
HEALTH_CHECK_SECONDS = 5  # an idle subscription is pinged this often, so a silently dead connection is noticed

_every: weakref.WeakSet[GateWatch] = weakref.WeakSet()


def _forget_in_forked_child() -> None:
    """A forked child has none of its parent's threads: its watch subscribes again at its first call."""
    for watch in list(_every):
        watch._lock = threading.Lock()
        watch._thread, watch._listening = None, False


os.register_at_fork(after_in_child=_forget_in_forked_child)


class GateWatch:
    """A version of the gates of the Redis at `url`, bumped by every message on `channel` (thread-safe)."""

    def __init__(self, url: str, channel: str, *, socket_timeout: float):
        self.url, self.channel, self.socket_timeout = url, channel, socket_timeout
        self._lock = threading.Lock()
        self._version = 0
        self._listening = False
        self._thread: threading.Thread | None = None
        self._stopped = threading.Event()
        _every.add(self)

    def version(self) -> int:
        """Changes whenever a gate may have changed since (no I/O once subscribed; see the module docstring)."""
        if self._listening:
            return self._version
        with self._lock:
            if self._thread is None and not self._stopped.is_set():
                self._thread = threading.Thread(target=self._listen, name="llmcost-redis-gates", daemon=True)
                self._thread.start()
            self._version += 1
            return self._version

    def changed(self) -> None:
        """A gate changed in this process: its next call judges the gates (without waiting for the message)."""
        with self._lock:
            self._version += 1

    def close(self) -> None:
        """Stop listening (the thread ends within its next second of waiting; not joined, so a close is quick)."""
        self._stopped.set()

    def _heard(self, *, listening: bool) -> None:
        with self._lock:
            self._version += 1
            self._listening = listening

    def _listen(self) -> None:
        import redis
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        while not self._stopped.is_set():
            # No retries inside redis-py: a reconnection there would resubscribe without telling, and the messages
            # of the gap would be lost unnoticed.
            client = redis.Redis.from_url(self.url, socket_timeout=self.socket_timeout,
                                          socket_connect_timeout=self.socket_timeout, retry=Retry(NoBackoff(), 0),
                                          health_check_interval=HEALTH_CHECK_SECONDS)
            subscription = client.pubsub()
            try:
                subscription.subscribe(self.channel)
                while not self._stopped.is_set():
                    message = subscription.get_message(timeout=1.0)
                    if message is not None and message["type"] in ("subscribe", "message"):
                        self._heard(listening=True)
            except Exception as error:  # (Redis down, or a connection lost): every call judges the gates meanwhile
                self._heard(listening=False)
                log.debug("llmcost: not listening to gate changes on Redis (%s); every call reads the gates", error)
                self._stopped.wait(RETRY_SECONDS)
            finally:
                self._heard(listening=False)
                subscription.close()
                client.close()
