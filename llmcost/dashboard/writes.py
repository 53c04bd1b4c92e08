"""Store writes from the dashboard: one at a time per server, each in a child process.

Every Streamlit session runs in the server's one process, and DuckDB refuses a read-only and a read-write
connection to one file in the same process (and two writers in it conflict). So the server process only
ever reads the store: an ingest (Refresh, Replay) or a dismissal runs in a child process, which the
sessions' readers wait for with the store's lock backoff (ingestion lets them in every few seconds), and
which waits for their reads in turn. One write runs at a time; another session asking meanwhile is told so.
"""

from __future__ import annotations

import datetime as dt
import pickle
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from llmcost.config import Settings
from llmcost.errors import LLMCostError

T = TypeVar("T")

_one_at_a_time = threading.Lock()
_running: dict[str, Any] = {}


class WriteRunningError(LLMCostError):
    """Another session's store write (a refresh, a dismissal) is still running in this server."""


def running() -> dict[str, Any] | None:
    """What store write runs now in this server (what, by whom, since when), or None."""
    return dict(_running) if _running else None


def in_child(what: str, by: str, function: Callable[..., T], *args: Any) -> T:
    """Run `function(*args)` in a child process, unless another write runs: then raise WriteRunningError."""
    if not _one_at_a_time.acquire(blocking=False):
        now = running() or {}
        since = now.get("since")
        raise WriteRunningError(
            f"a refresh is running ({now.get('what', 'a store write')} started by {now.get('by', 'someone')}"
            + (f" at {since:%H:%M:%S} UTC" if since else "")
            + "); the figures update when it ends, then try again if you still need to"
        )
    try:
        _running.update(what=what, by=by, since=dt.datetime.now(dt.timezone.utc))
        return _run_child(what, function, args)
    finally:
        _running.clear()
        _one_at_a_time.release()


def _run_child(what: str, function: Callable[..., T], args: tuple) -> T:
    # A fresh interpreter, not multiprocessing: Streamlit runs each page as `__main__`, which a spawned child
    # would run again, and a forked one would copy the server's threads mid-flight.
    with tempfile.TemporaryDirectory(prefix="llmcost-write-") as folder:
        outcome = Path(folder) / "outcome.pickle"
        done = subprocess.run([sys.executable, "-m", __name__, str(outcome)], input=pickle.dumps((function, args)),
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, check=False)
        if done.returncode != 0 or not outcome.is_file():
            last = done.stderr.decode("utf-8", "replace").strip().splitlines()[-1:] or ["no output"]
            raise LLMCostError(f"the {what} process ended without finishing (exit code {done.returncode}: {last[0]}); "
                               "nothing is lost: run it again, or run `llmcost ingest` to see the full error")
        finished, value = pickle.loads(outcome.read_bytes())
    if not finished:
        raise value
    return value


def _child_main(outcome: Path) -> None:
    function, args = pickle.loads(sys.stdin.buffer.read())
    try:
        result = (True, function(*args))
    except Exception as error:  # noqa: BLE001 - handed to the server, which shows it
        result = (False, error)
    outcome.write_bytes(pickle.dumps(result))


def ingest(settings: Settings, by: str, paths: Sequence[Path] | None = None):
    """Ingest (the configured sources, or `paths`) in a child process. Who ran it goes to the control audit
    log first, next to kill switches and resumes: an OSError there means the ingest did not run."""
    from llmcost.ingestion.run import ingest as run_ingest

    return in_child("refresh", by, _recorded, settings, by, list(paths) if paths else None, run_ingest)


def _recorded(settings: Settings, by: str, paths: list[Path] | None, run_ingest):
    from llmcost.control import audit

    audit.append(audit.audit_path_for(settings.control_db), "ingest", by=by,
                 paths=[str(p) for p in paths] if paths else "configured sources")
    return run_ingest(settings, paths)


def dismiss(settings: Settings, by: str, failed_ids: Sequence[str], reason: str) -> int:
    """Dismiss failed logs in a child process (`store.failed_logs.dismiss` keeps who, when and why)."""
    return in_child("dismissal", by, _dismiss, settings, list(failed_ids), reason, by)


def _dismiss(settings: Settings, failed_ids: list[str], reason: str, by: str) -> int:
    from llmcost.store.failed_logs import dismiss as run_dismiss

    return run_dismiss(settings, failed_ids, reason=reason, by=by)


if __name__ == "__main__":
    _child_main(Path(sys.argv[1]))
