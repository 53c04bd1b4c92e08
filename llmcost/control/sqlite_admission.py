"""The SQLite backend's admission in one transaction, and its spend counters beyond users' days (tenant, use case,
key, and every month).

`admit` runs inside the caller's IMMEDIATE transaction: kill switch, halt, shutdown level, every limit of the
request, then the reservation, so concurrent processes on the host are serialized. A scope counter's spend
is the interface's one rule: max(settled live, stored tracker calls) + stored other events + in flight.
"""

from __future__ import annotations

import functools
import json
import re
import sqlite3
import time

from llmcost.control.interface import AdmissionRequest, Admitted, Counter, Spend, is_day

_GATE = """
SELECT (SELECT reason FROM kill_switch WHERE use_case = :use_case),
       (SELECT reason FROM halt WHERE day = :day),
       (SELECT resumed_at IS NOT NULL FROM halt WHERE day = :day)
"""
SCOPE_SPEND = """
SELECT max(COALESCE(s.tokens, 0), COALESCE(st.tracked_tokens, 0)) + COALESCE(st.external_tokens, 0) + r.tokens,
       max(COALESCE(s.cost_pico, 0), COALESCE(st.tracked_cost_pico, 0)) + COALESCE(st.external_cost_pico, 0) + r.cost_pico
FROM (SELECT COALESCE(SUM(f.tokens), 0) AS tokens, COALESCE(SUM(f.cost_pico), 0) AS cost_pico
      FROM reservation_scope f JOIN reservation r ON r.id = f.reservation_id
      WHERE f.period = :period AND f.scope = :scope AND f.name = :name AND r.released_at IS NULL) r
LEFT JOIN scope_spend s ON s.period = :period AND s.scope = :scope AND s.name = :name
LEFT JOIN scope_store_spend st ON st.period = :period AND st.scope = :scope AND st.name = :name
"""
_ADD_SCOPE_SPEND = """
INSERT INTO scope_spend (period, scope, name, tokens, cost_pico) VALUES (?, ?, ?, ?, ?)
ON CONFLICT (period, scope, name) DO UPDATE SET tokens = tokens + excluded.tokens,
                                               cost_pico = cost_pico + excluded.cost_pico
"""
_INSERT_RESERVATION = (
    "INSERT INTO reservation (id, day, user_id, tenant_id, use_case, tokens, cost_pico, created_at, pid, owner, "
    "pid_started, details) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)")
LIVE_SCOPES = ("user", "system")  # their days are kept by the user tables (spend, store_spend, day_total)


def kept_in(counter: Counter) -> str:
    """Which tables keep a counter: `user` or `system` (a user's or everyone's day, the user tables), else
    `scope` (the scope tables: tenants, use cases, keys, and every month, a user's month included)."""
    return counter.scope if counter.scope in LIVE_SCOPES and is_day(counter.period) else "scope"


def counter_spend(conn: sqlite3.Connection, counter: Counter, user_spend_sql: str, system_spend_sql: str) -> Spend:
    """One counter's spend by the one rule (users' and the system's days by their own tables)."""
    if kept_in(counter) == "user":
        tokens, pico = conn.execute(user_spend_sql, {"day": counter.period, "user": counter.name}).fetchone()
        return Spend(tokens, pico)
    if kept_in(counter) == "system":
        return Spend(0, conn.execute(system_spend_sql, {"day": counter.period}).fetchone()[0])
    tokens, pico = conn.execute(SCOPE_SPEND, {"period": counter.period, "scope": counter.scope,
                                              "name": counter.name}).fetchone()
    return Spend(tokens, pico)


@functools.lru_cache(maxsize=64)
def _figures_sql(tables: tuple[str, ...], user_spend_sql: str, system_spend_sql: str) -> str:
    """One statement reading the gate, the system's spend and each limit's counter (the same queries as
    `counter_spend`, each a one-row subquery with its parameters suffixed by its position)."""
    def numbered(sql: str, index: int) -> str:
        return re.sub(r":(\w+)", rf":\1_{index}", sql)

    parts = [f"({_GATE}) g", f"({numbered(system_spend_sql, 's')}) s"]
    for index, table in enumerate(tables):
        sql = user_spend_sql if table == "user" else system_spend_sql if table == "system" else SCOPE_SPEND
        parts.append(f"({numbered(sql, index)}) l{index}")
    return "SELECT * FROM " + ", ".join(parts)


def _figures_parameters(request: AdmissionRequest, day: str) -> dict[str, str]:
    values = {"use_case": request.use_case, "day": day, "day_s": day}
    for index, item in enumerate(request.limits):
        counter = item.counter
        if kept_in(counter) == "user":
            values[f"day_{index}"], values[f"user_{index}"] = counter.period, counter.name
        elif kept_in(counter) == "system":
            values[f"day_{index}"] = counter.period
        else:
            values.update({f"period_{index}": counter.period, f"scope_{index}": counter.scope,
                           f"name_{index}": counter.name})
    return values


def judge(conn: sqlite3.Connection, request: AdmissionRequest, *, user_spend_sql: str, system_spend_sql: str
          ) -> Admitted:
    """The admission's decision on the figures as they are (one statement reads every figure), reserving nothing:
    inside `admit`'s transaction, or alone (a lease's re-check, `llmcost.control.lease`)."""
    day = request.day.isoformat()
    sql = _figures_sql(tuple(kept_in(item.counter) for item in request.limits), user_spend_sql, system_spend_sql)
    row = conn.execute(sql, _figures_parameters(request, day)).fetchone()
    disabled, halt_reason, resumed = row[:3]
    if disabled is not None:
        return Admitted("disabled", disabled, Spend(), ())
    system = Spend(0, row[3])
    if not resumed:
        if halt_reason is not None:
            return Admitted("halted", halt_reason, system, ())
        if request.shutdown_pico is not None and system.cost_pico >= request.shutdown_pico:
            return Admitted("halted", None, system, ())
    figures, offset = [], 4
    for item in request.limits:
        if kept_in(item.counter) == "system":
            figures.append(Spend(0, row[offset]))
            offset += 1
        else:
            figures.append(Spend(row[offset], row[offset + 1]))
            offset += 2
    spent = tuple(figures)
    for index, (item, figures) in enumerate(zip(request.limits, spent)):
        if item.action == "hard" and (
                (item.tokens is not None and figures.tokens + request.tokens > item.tokens)
                or (item.cost_pico is not None and figures.cost_pico + request.cost_pico > item.cost_pico)):
            return Admitted("budget", None, system, spent, over=index)
    return Admitted(None, None, system, spent)


def admit(conn: sqlite3.Connection, request: AdmissionRequest, *, reservation_id: str, pid: int, owner: str,
          started: str | None, user_spend_sql: str, system_spend_sql: str) -> Admitted:
    """Decide and reserve inside the caller's IMMEDIATE transaction (see the module docstring): one statement
    reads every figure (`judge`), one records the reservation (and one its scope counters, when it has any)."""
    admitted = judge(conn, request, user_spend_sql=user_spend_sql, system_spend_sql=system_spend_sql)
    if admitted.refused is not None:
        return admitted
    conn.execute(_INSERT_RESERVATION, (
        reservation_id, request.day.isoformat(), request.user_id, request.tenant_id, request.use_case, request.tokens,
        request.cost_pico, time.time(), pid, owner, started, json.dumps(request.details) if request.details else None))
    scoped = [(reservation_id, c.period, c.scope, c.name, request.tokens, request.cost_pico)
              for c in request.counters if kept_in(c) == "scope"]
    if scoped:
        conn.executemany("INSERT INTO reservation_scope VALUES (?, ?, ?, ?, ?, ?)", scoped)
    return admitted


def settle_scopes(conn: sqlite3.Connection, reservation_id: str, tokens: int, cost_pico: int,
                  counters: tuple[Counter, ...] | None) -> None:
    """Move a finished reservation's scope counters from in flight to settled (the reservation's own rows, or
    the given counters for a reservation made in an earlier file)."""
    if counters and all(kept_in(c) != "scope" for c in counters):
        return  # admitted without scope counters: no reservation_scope rows were written for it
    rows = conn.execute("DELETE FROM reservation_scope WHERE reservation_id = ? RETURNING period, scope, name",
                        (reservation_id,)).fetchall()
    if not rows and counters:
        rows = [(c.period, c.scope, c.name) for c in counters if kept_in(c) == "scope"]
    conn.executemany(_ADD_SCOPE_SPEND, [(period, scope, name, tokens, cost_pico) for period, scope, name in rows])


def set_store_scope_spend(conn: sqlite3.Connection, period: str, scope: str, rows) -> None:
    conn.execute("DELETE FROM scope_store_spend WHERE period = ? AND scope = ?", (period, scope))
    conn.executemany("INSERT INTO scope_store_spend VALUES (?, ?, ?, ?, ?, ?, ?)",
                     [(period, scope, *row) for row in rows])


def rebuild_scope(conn: sqlite3.Connection, period: str, scope: str, totals: dict[str, list[int]]) -> None:
    conn.execute("DELETE FROM scope_spend WHERE period = ? AND scope = ?", (period, scope))
    conn.executemany(_ADD_SCOPE_SPEND, [(period, scope, name, t, c) for name, (t, c) in totals.items()])


def prune_scopes(conn: sqlite3.Connection, before_day: str) -> None:
    """Forget scope figures of days before `before_day` and of months before its month."""
    month = before_day[:7]
    for table in ("scope_spend", "scope_store_spend"):  # constant names
        conn.execute(f"DELETE FROM {table} WHERE (length(period) = 10 AND period < ?) "
                     "OR (length(period) = 7 AND period < ?)", (before_day, month))
    conn.execute("DELETE FROM reservation_scope WHERE reservation_id NOT IN (SELECT id FROM reservation)")
