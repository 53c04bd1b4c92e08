"""The SQL several places need: a day's spend per user, tenant or use case, open failed logs, last sync.

Each function takes an open connection (`llmcost.store.connection.reading` or `writing`) and returns
plain rows with money as exact Decimal. Single-use queries stay beside their one caller.
"""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import NamedTuple

from llmcost.events import UNATTRIBUTED
from llmcost.store.failed_logs import OPEN_FAILED

ZERO = Decimal(0)
# A user's account type over a period: the latest one their calls named (a call without one changes nothing).
USER_ACCOUNT_TYPE = "arg_max(account_type, ts) FILTER (WHERE account_type IS NOT NULL)"
SPEND_COLUMNS = {"tenant": "tenant_id", "use_case": "use_case", "user": "user_id"}  # constants, never user input


class UserDay(NamedTuple):
    user_id: str
    account_type: str | None
    calls: int
    tokens: int
    cost: Decimal


def in_tenants(tenants: tuple[str, ...] | None) -> tuple[str, list]:
    """An SQL condition (and its one bound parameter) limiting rows to a tenant scope; None: every tenant."""
    return ("list_contains(?, tenant_id)", [list(tenants)]) if tenants is not None else ("true", [])


def usage_by_user_on(db, day: dt.date, tenants: tuple[str, ...] | None = None) -> list[UserDay]:
    """Every attributed user's calls, tokens and cost on a day, unfiltered (daily limits count all their calls)
    but for a tenant scope, whose viewers see only their tenants' calls."""
    scope, scope_params = in_tenants(tenants)
    rows = db.execute(
        f"""
        SELECT user_id, {USER_ACCOUNT_TYPE} AS account_type, count(*), coalesce(sum(total_tokens), 0),
               coalesce(sum(cost_usd), 0)
        FROM usage_events WHERE day = ? AND user_id <> ? AND {scope}
        GROUP BY user_id ORDER BY 5 DESC, user_id
        """,
        [day, UNATTRIBUTED, *scope_params],
    ).fetchall()
    return [UserDay(user, account_type, int(calls), int(tokens), Decimal(cost))
            for user, account_type, calls, tokens, cost in rows]


def spend_by(db, scope: str, day: dt.date) -> list[tuple[str, Decimal]]:
    """A day's spend per tenant, use case or user (`scope`), by name."""
    column = SPEND_COLUMNS[scope]
    return [(name, Decimal(spend)) for name, spend in db.execute(
        f"SELECT {column}, SUM(cost_usd) FROM usage_events WHERE day = ? GROUP BY 1 ORDER BY 1", [day]
    ).fetchall()]


def stored_spend_on(db, day: dt.date) -> Decimal:
    """System-wide spend of a day as stored (without calls in flight: `control.rebuild.day_spend` has those)."""
    (cost,) = db.execute("SELECT sum(cost_usd) FROM usage_events WHERE day = ?", [day]).fetchall()[0]
    return cost or ZERO


def store_totals(db) -> tuple[int, Decimal]:
    """How many events the store holds, and their cost."""
    events, cost = db.execute("SELECT count(*), coalesce(sum(cost_usd), 0) FROM usage_events").fetchall()[0]
    return int(events), Decimal(cost)


def open_failed_count(db, tenants: tuple[str, ...] | None = None) -> int:
    """Failed logs still to deal with: neither recovered nor dismissed (in a tenant scope, when given)."""
    scope, params = in_tenants(tenants)
    return db.execute(f"SELECT count(*) FROM failed_logs WHERE {OPEN_FAILED} AND {scope}", params).fetchall()[0][0]


def open_failed_by_kind(db) -> list[tuple[str, int]]:
    return db.execute(
        f"SELECT kind, count(*) FROM failed_logs WHERE {OPEN_FAILED} GROUP BY kind ORDER BY kind"
    ).fetchall()


_OPEN_FAILED_BY_ERROR = f"""
SELECT error, kind, count(*) AS records, sum(estimated_tokens) AS estimated_tokens,
       min(logged_at) AS first_logged_at, max(logged_at) AS last_logged_at
FROM failed_logs WHERE {OPEN_FAILED} AND {{scope}}
GROUP BY error, kind ORDER BY records DESC, kind, error
"""


def open_failed_by_error(tenants: tuple[str, ...] | None = None) -> tuple[str, list]:
    """The open failed logs grouped by error and kind (in a tenant scope, when given): SQL and parameters."""
    scope, params = in_tenants(tenants)
    return _OPEN_FAILED_BY_ERROR.format(scope=scope), params


OPEN_FAILED_BY_ERROR = open_failed_by_error()[0]


def last_synced(db) -> dt.datetime | None:
    """When ingestion last read any of its sources (naive UTC)."""
    return db.execute("SELECT max(last_synced_at) FROM ingest_sources").fetchall()[0][0]
