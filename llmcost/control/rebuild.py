"""The control state's figures from the store and journals, and the one "spend of a day" every surface shows.

`rebuild_day` refills a new control file's live spend with the tracker calls (events with an attempt_id)
in the store and in journal lines not ingested yet; `refresh_store_spend` copies the store's per-user
figures of a day into the control state (tracker calls and every other event, such as inbox files), which
`ingest` does after storing records and the tracker every `control_maintenance_seconds`; `day_spend` is the
system-wide figure admission, `llmcost check`, reports and the dashboard all use.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
from decimal import Decimal, InvalidOperation

from llmcost.config import Settings
from llmcost.control.backend import open_control
from llmcost.control.interface import Counter, is_day, month_days, period_key
from llmcost.control.policy import user_months_limited
from llmcost.errors import ControlStateError, LLMCostError
from llmcost.money import from_picodollars, local_day, today_in
from llmcost.store import store_exists

log = logging.getLogger("llmcost")


_STORE_SPEND = """
SELECT {name} AS name,
       COALESCE(sum(total_tokens) FILTER (WHERE attempt_id IS NOT NULL), 0)::BIGINT,
       COALESCE(sum(cost_usd) FILTER (WHERE attempt_id IS NOT NULL), 0),
       COALESCE(sum(total_tokens) FILTER (WHERE attempt_id IS NULL), 0)::BIGINT,
       COALESCE(sum(cost_usd) FILTER (WHERE attempt_id IS NULL), 0)
FROM usage_events WHERE day BETWEEN ? AND ? AND {name} IS NOT NULL GROUP BY 1
"""
# What names each scope's counters in the store and in journal records (constants: formatted into the SQL above).
_STORE_NAME = {"user": "user_id", "tenant": "tenant_id", "use_case": "use_case",
               "key": "json_extract_string(metadata, '$.service_key')"}
_RECORD_NAME = {"user": lambda r: r.get("user_id"), "tenant": lambda r: r.get("tenant_id"),
                "use_case": lambda r: r.get("use_case"),
                "key": lambda r: (r.get("metadata") or {}).get("service_key") if isinstance(r.get("metadata"), dict)
                else None}

StoreSpendRow = tuple[str, int, Decimal, int, Decimal]



@contextlib.contextmanager
def _reading_store(path, **options):
    """The store, read-only; None where there is none yet, found without loading DuckDB (a tracker on a
    host without a store never needs it)."""
    if not store_exists(path):
        yield None
        return
    from llmcost.store.connection import reading

    with reading(path, **options) as db:
        yield db


def period_days(period: str) -> tuple[dt.date, dt.date]:
    """The first and last day of a counter period (a day, or a `YYYY-MM` month)."""
    return (month_days(period) if len(period) == 7 else (dt.date.fromisoformat(period),) * 2)


def store_spend_rows(db, day: dt.date | str, scope: str = "user") -> list[StoreSpendRow]:
    """Per name of the scope (user by default): tokens and cost of the period's stored tracker calls, then of
    every other stored event. `day` is a date, or a period key (`2026-12-03`, `2026-12`)."""
    first, last = period_days(day if isinstance(day, str) else day.isoformat())
    sql = _STORE_SPEND.format(name=_STORE_NAME[scope])
    return [(name, int(tt), Decimal(tc), int(et), Decimal(ec)) for name, tt, tc, et, ec in
            db.execute(sql, [first, last]).fetchall()]


def _stored(settings: Settings, wanted: list[tuple[str, str]], timeout: float = 5
            ) -> tuple[dict[tuple[str, str], list[StoreSpendRow]], dict[str, int]]:
    """The store's rows of each (period, scope), and how far it read each file: one opening of the store."""
    with _reading_store(settings.db_path, timeout=timeout) as db:
        if db is None:
            return {key: [] for key in wanted}, {}
        rows = {(period, scope): store_spend_rows(db, period, scope) for period, scope in wanted}
        offsets = dict(db.execute("SELECT path, bytes_consumed FROM ingest_sources").fetchall())
    return rows, offsets


def _pending_rows(settings: Settings, day: dt.date | str, offsets: dict[str, int], scope: str = "user"
                  ) -> list[tuple[str, int, Decimal]]:
    """(name, tokens, cost) of the period's tracker calls in journal lines not ingested yet."""
    name_of = _RECORD_NAME[scope]
    return [(name_of(record), tokens, cost) for record, tokens, cost in _pending_calls(settings, day, offsets)
            if name_of(record)]


def _pending_calls(settings: Settings, day: dt.date | str, offsets: dict[str, int]):
    """(record, tokens, cost) of the period's tracker calls in the journals and fallback log after `offsets`."""
    paths = sorted(settings.journal_dir.glob("*.jsonl"))
    if settings.fallback_log.is_file():
        paths.append(settings.fallback_log)
    # By real path, once each: a journal folder reached through a link is the folder ingestion records.
    real_paths = dict.fromkeys(path.resolve() for path in paths if path.is_file())
    for path in real_paths:  # (not a device or a folder where a journal should be: nothing to read there)
        try:
            yield from list(_calls_of_period(path, offsets.get(str(path), 0), settings, day))
        except OSError:
            continue


def _calls_of_period(path, offset: int, settings: Settings, day: dt.date | str):
    """(record, tokens, cost) of the tracker calls of a day or month in a file after `offset`, line by line."""
    first, last = period_days(day if isinstance(day, str) else day.isoformat())
    with path.open("rb") as f:
        f.seek(offset)
        for line in f:
            try:
                record = json.loads(line)
                if isinstance(record.get("event"), dict):
                    record = record["event"]
                # Only tracker calls (with an attempt_id) are live spend; other lines count once stored.
                if record.get("record") == "attempt" or not record.get("user_id") or not record.get("attempt_id"):
                    continue
                ts = dt.datetime.fromisoformat(record["ts"])
                ts = ts if ts.tzinfo else ts.replace(tzinfo=dt.timezone.utc)
                if not first <= local_day(ts, settings.tz) <= last:
                    continue
                tokens = int(record.get("total_tokens") or 0) or int(record.get("input_tokens") or 0) + int(
                    record.get("output_tokens") or 0)
                yield record, tokens, Decimal(str(record.get("cost_usd") or 0))
            except (ValueError, TypeError, KeyError, AttributeError, InvalidOperation, OverflowError):
                continue  # ingestion keeps bad lines in failed_logs; they carry no reliable spend


def month_users(settings: Settings, month: str) -> dict[str, str | None]:
    """Every user with spend in a `YYYY-MM` month, with their latest account type: the store's, then journal lines
    not ingested yet (newer)."""
    from llmcost.store.queries import USER_ACCOUNT_TYPE  # (loads DuckDB: not at a tracker's import)

    first, last = month_days(month)
    users, offsets = {}, {}
    with _reading_store(settings.db_path) as db:
        if db is not None:
            users = dict(db.execute(f"SELECT user_id, {USER_ACCOUNT_TYPE} FROM usage_events WHERE day BETWEEN ? AND ? "
                                    "AND user_id IS NOT NULL GROUP BY 1", [first, last]).fetchall())
            offsets = dict(db.execute("SELECT path, bytes_consumed FROM ingest_sources").fetchall())
    for record, _, _ in sorted(_pending_calls(settings, month, offsets), key=lambda call: str(call[0].get("ts"))):
        user = str(record["user_id"])
        if record.get("account_type") or user not in users:
            users[user] = record.get("account_type") or None
    return users


def spend_rows(settings: Settings, day: dt.date | str, scope: str = "user") -> list[tuple[str, int, Decimal]]:
    """(name, tokens, cost) rows of a period's tracker calls per name of the scope (user by default): stored ones
    plus journal lines not ingested yet."""
    key = (day if isinstance(day, str) else day.isoformat(), scope)
    try:
        stored, offsets = _stored(settings, [key])
    except LLMCostError as error:
        log.warning("llmcost: rebuilding live spend without the store (%s); journals only", error)
        stored, offsets = {key: []}, {}
    return _tracked(settings, key, stored[key], offsets)


def _tracked(settings: Settings, key: tuple[str, str], stored: list[StoreSpendRow], offsets: dict[str, int]):
    period, scope = key
    return [(name, tokens, cost) for name, tokens, cost, _, _ in stored] + _pending_rows(settings, period, offsets, scope)


def budget_periods(settings: Settings, day: dt.date) -> list[tuple[str, str]]:
    """The (period key, scope) of every configured tenant, use case and key budget on a day, and the users' month
    when an account type has a monthly limit."""
    periods = {(period_key(b.period, day), b.scope) for b in settings.budgets()}
    if user_months_limited(settings):
        periods.add((period_key("month", day), "user"))
    return sorted(periods)


def rebuild_day(control, settings: Settings, day: dt.date, *, force: bool = False) -> bool:
    """Fill the day's live spend and store figures (users, and the scopes' day and month counters) from one
    reading of the store and the journals' lines not ingested yet, when this control state has not done it yet,
    or always with `force`; True when it did."""
    if not (force or control.needs_rebuild(day)):
        return False
    wanted = [(day.isoformat(), "user"), *budget_periods(settings, day)]
    try:
        stored, offsets = _stored(settings, wanted)
        _set_store_figures(control, stored)
    except LLMCostError as error:
        log.warning("llmcost: rebuilding live spend without the store (%s); journals only", error)
        stored, offsets = {key: [] for key in wanted}, {}
    if not control.rebuild(day, _tracked(settings, wanted[0], stored[wanted[0]], offsets), only_if_needed=not force):
        return False
    for key in wanted[1:]:
        control.rebuild_scope(*key, _tracked(settings, key, stored[key], offsets))
    return True


def _set_store_figures(control, stored: dict[tuple[str, str], list[StoreSpendRow]]) -> None:
    for (period, scope), rows in stored.items():
        if scope == "user" and is_day(period):
            control.set_store_spend(period, rows)
        else:
            control.set_store_scope_spend(period, scope, rows)


def refresh_store_spend(control, settings: Settings, day: dt.date, *, timeout: float = 5) -> bool:
    """Copy the store's figures of the day (and of the budgets' periods) into the control state; False when the
    store could not be read."""
    try:
        stored, _ = _stored(settings, [(day.isoformat(), "user"), *budget_periods(settings, day)], timeout)
    except LLMCostError as error:
        log.warning("llmcost: today's spend not refreshed from the store (%s); the last figures stay", error)
        return False
    _set_store_figures(control, stored)
    return True


def period_spends(settings: Settings, counters: list[Counter]) -> dict[Counter, tuple[int, Decimal]]:
    """Tokens and cost of scope counters (a day, or a `YYYY-MM` month) by the one rule of `day_spend`: the control
    state's figures (settled, stored and in flight), else the store's alone."""
    try:
        with open_control(settings) as control:
            today = today_in(settings.tz)
            if not rebuild_day(control, settings, today):
                refresh_store_spend(control, settings, today)
            found = {counter: control.counter_spend(counter) for counter in counters}
            return {counter: (spend.tokens, from_picodollars(spend.cost_pico)) for counter, spend in found.items()}
    except ControlStateError as error:
        log.warning("llmcost: budgets' spend from the store alone: %s", error)
    result = {}
    with _reading_store(settings.db_path) as db:
        for counter in counters:
            rows = [r for r in store_spend_rows(db, counter.period, counter.scope) if r[0] == counter.name] if db else []
            result[counter] = (sum(tt + et for _, tt, _, et, _ in rows), sum((tc + ec for _, _, tc, _, ec in rows),
                                                                             Decimal(0)))
    return result


def day_spend(settings: Settings, day: dt.date) -> Decimal:
    """System-wide spend of a day: what admission's emergency shutdown compares with its level.

    Tracker calls settled or in flight (the control state), the store's other events, and stored tracker
    calls the control state does not know (another host's, a pruned day's), each counted once.
    Without a usable control file, and for days it no longer keeps, the store's figures alone.
    """
    kept = day >= today_in(settings.tz) - dt.timedelta(days=1)
    try:
        if not kept:
            raise ControlStateError(f"the control state keeps today and yesterday only, not {day}")
        with open_control(settings) as control:
            if not rebuild_day(control, settings, day):  # a rebuild read the store already
                refresh_store_spend(control, settings, day)
            return control.system_spend(day)
    except ControlStateError as error:
        if kept:
            log.warning("llmcost: spend of %s from the store alone: %s", day, error)
    with _reading_store(settings.db_path) as db:
        rows = store_spend_rows(db, day) if db is not None else []
    return sum((tc + ec for _, _, tc, _, ec in rows), Decimal(0))


def after_ingest(settings: Settings) -> None:
    """Bring the control state up to date after an ingest: today's stored figures, stale reservations released.

    Does nothing where no tracker has created a control file; never raises (ingestion must go on).
    """
    if settings.control_backend == "sqlite" and not settings.control_db.is_file():
        return
    today = today_in(settings.tz)
    try:
        with open_control(settings) as control:
            control.maintain(today, reservation_ttl_seconds=settings.reservation_ttl_seconds)
            if not control.needs_rebuild(today):  # a day not rebuilt yet gets its figures at its rebuild
                refresh_store_spend(control, settings, today)
    except LLMCostError as error:
        log.error("llmcost: control state not updated after ingest: %s", error)
