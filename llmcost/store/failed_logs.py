"""Dismissing failed logs: an operator says a failed entry needs nothing more (who, when and why are kept).

A dismissed entry stays in failed_logs, shown as dismissed; it leaves the banner, the alerts and the
counts of entries still to deal with. `OPEN_FAILED` is that rule, for every query that counts them.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

from llmcost.config import Settings
from llmcost.errors import DismissError
from llmcost.store import connection as store

OPEN_FAILED = "(NOT recovered AND dismissed_at IS NULL)"


def dismiss(settings: Settings, failed_ids: Sequence[str] = (), *, source: str | None = None, reason: str,
            by: str | None = None) -> int:
    """Dismiss the open failed logs with these ids, or from this source file; returns how many were dismissed."""
    if not reason or not reason.strip():
        raise DismissError("a dismissal needs a reason (pass --reason TEXT): it is kept with the entries")
    if not failed_ids and not source:
        raise DismissError("name the failed logs to dismiss: their ids, or --source PATH for all from one file")
    clauses, params = [OPEN_FAILED], [reason.strip(), (by or "").strip() or None,
                                      dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)]
    if failed_ids:
        clauses.append("list_contains(?, failed_id)")
        params.append(list(failed_ids))
    if source:
        clauses.append("source = ?")
        params.append(source)
    with store.writing(settings.db_path) as db:
        dismissed = db.execute(
            f"UPDATE failed_logs SET dismiss_reason = ?, dismissed_by = ?, dismissed_at = ? "
            f"WHERE {' AND '.join(clauses)} RETURNING failed_id",
            params,
        ).fetchall()
    return len(dismissed)
