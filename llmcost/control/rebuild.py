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
from llmcost.control.state import ControlState
from llmcost.errors import ControlStateError, LLMCostError
from llmcost.money import local_day, today_in
from llmcost.store import store_exists

log = logging.getLogger("llmcost")


_STORE_SPEND = """
SELECT user_id,
       COALESCE(sum(total_tokens) FILTER (WHERE attempt_id IS NOT NULL), 0)::BIGINT,
       COALESCE(sum(cost_usd) FILTER (WHERE attempt_id IS NOT NULL), 0),
       COALESCE(sum(total_tokens) FILTER (WHERE attempt_id IS NULL), 0)::BIGINT,
       COALESCE(sum(cost_usd) FILTER (WHERE attempt_id IS NULL), 0)
FROM usage_events WHERE day = ? GROUP BY user_id
"""

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


def store_spend_rows(db, day: dt.date) -> list[StoreSpendRow]:
    """Per user: tokens and cost of the day's stored tracker calls, then of every other stored event."""
    return [(user, int(tt), Decimal(tc), int(et), Decimal(ec)) for user, tt, tc, et, ec in
            db.execute(_STORE_SPEND, [day]).fetchall()]


def _stored_rows(settings: Settings, day: dt.date, timeout: float = 5) -> tuple[list[StoreSpendRow], dict[str, int]]:
    with _reading_store(settings.db_path, timeout=timeout) as db:
        if db is None:
            return [], {}
        rows = store_spend_rows(db, day)
        offsets = dict(db.execute("SELECT path, bytes_consumed FROM ingest_sources").fetchall())
    return rows, offsets


def _pending_rows(settings: Settings, day: dt.date, offsets: dict[str, int]) -> list[tuple[str, int, Decimal]]:
    rows = []
    paths = sorted(settings.journal_dir.glob("*.jsonl"))
    if settings.fallback_log.is_file():
        paths.append(settings.fallback_log)
    # By real path, once each: a journal folder reached through a link is the folder ingestion records.
    real_paths = dict.fromkeys(path.resolve() for path in paths if path.is_file())
    for path in real_paths:  # (not a device or a folder where a journal should be: nothing to read there)
        try:
            rows.extend(_rows_of_day(path, offsets.get(str(path), 0), settings, day))
        except OSError:
            continue
    return rows


def _rows_of_day(path, offset: int, settings: Settings, day: dt.date):
    """(user_id, tokens, cost) of the usage records of `day` in a file after `offset`, read line by line."""
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
                if local_day(ts, settings.tz) != day:
                    continue
                tokens = int(record.get("total_tokens") or 0) or int(record.get("input_tokens") or 0) + int(
                    record.get("output_tokens") or 0)
                yield record["user_id"], tokens, Decimal(str(record.get("cost_usd") or 0))
            except (ValueError, TypeError, KeyError, AttributeError, InvalidOperation, OverflowError):
                continue  # ingestion keeps bad lines in failed_logs; they carry no reliable spend


def spend_rows(settings: Settings, day: dt.date) -> list[tuple[str, int, Decimal]]:
    """(user_id, tokens, cost) rows of the day's tracker calls: stored ones plus journal lines not ingested yet."""
    try:
        stored, offsets = _stored_rows(settings, day)
    except LLMCostError as error:
        log.warning("llmcost: rebuilding live spend without the store (%s); journals only", error)
        stored, offsets = [], {}
    return [(user, tokens, cost) for user, tokens, cost, _, _ in stored] + _pending_rows(settings, day, offsets)


def rebuild_day(control: ControlState, settings: Settings, day: dt.date) -> None:
    """Fill the day's live spend and store figures when this control file has not done it yet."""
    if control.needs_rebuild(day):
        refresh_store_spend(control, settings, day)
        control.rebuild(day, spend_rows(settings, day), only_if_needed=True)


def refresh_store_spend(control: ControlState, settings: Settings, day: dt.date, *, timeout: float = 5) -> bool:
    """Copy the store's figures of the day into the control state; False when the store could not be read."""
    try:
        with _reading_store(settings.db_path, timeout=timeout) as db:
            rows = store_spend_rows(db, day) if db is not None else []
    except LLMCostError as error:
        log.warning("llmcost: today's spend not refreshed from the store (%s); the last figures stay", error)
        return False
    control.set_store_spend(day, rows)
    return True


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
        with ControlState(settings.control_db) as control:
            rebuild_day(control, settings, day)
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
    if not settings.control_db.is_file():
        return
    today = today_in(settings.tz)
    try:
        with ControlState(settings.control_db) as control:
            control.maintain(today, reservation_ttl_seconds=settings.reservation_ttl_seconds)
            if not control.needs_rebuild(today):  # a day not rebuilt yet gets its figures at its rebuild
                refresh_store_spend(control, settings, today)
    except LLMCostError as error:
        log.error("llmcost: control state not updated after ingest: %s", error)
