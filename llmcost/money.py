"""How every surface writes figures (money, counts, changes, times) and which calendar day it is.

Standard library only: the SDK imports it. "Today", a local day's UTC bounds and the money format live
here once, and the tracker, control state, alerts, reports, CLI and dashboard all call them.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from decimal import ROUND_CEILING, ROUND_HALF_UP, Decimal
from zoneinfo import ZoneInfo

CENT = Decimal("0.01")
# Below a cent we keep two significant digits, down to this many decimals.
MAX_DECIMALS = 8


def _as_decimal(value: Decimal | float | int) -> Decimal:
    return value if isinstance(value, Decimal) else Decimal(str(value))


def decimals_for(amount: Decimal | float | int) -> int:
    """How many decimals show an amount: cents, or enough for two significant digits below a cent."""
    amount = abs(_as_decimal(amount))
    if amount == 0 or amount >= CENT:
        return 2
    # adjusted() is the exponent of the first significant digit: 0.0042 -> -3, so 4 decimals.
    return min(MAX_DECIMALS, -amount.adjusted() + 1)


def money(value: Decimal | float | int | None, places: int | None = None) -> str:
    """Dollars with cents, and fractions of a cent where small: `$1,234.56`, `$0.0042`, `-$0.50`.

    `places` fixes the decimals (a table shows every amount with its `money_places`).
    """
    if value is None:
        return "—"
    amount = _as_decimal(value)
    places = decimals_for(amount) if places is None else places
    rounded = amount.quantize(Decimal(1).scaleb(-places), rounding=ROUND_HALF_UP)
    if rounded == 0 and amount != 0:
        return "<$" + format(Decimal(1).scaleb(-MAX_DECIMALS), f".{MAX_DECIMALS}f")
    sign = "-" if rounded < 0 else ""
    return f"{sign}${abs(rounded):,.{places}f}"


def money_against(figure: Decimal, threshold: Decimal) -> str:
    """`figure` in dollars, with enough decimals that it does not read as equal to a different `threshold`."""
    shown = money(figure)
    if figure == threshold or shown != money(threshold):
        return shown
    for places in (4, 6, 9, 12):
        precise = figure.quantize(Decimal(1).scaleb(-places), ROUND_HALF_UP)
        if precise != threshold:
            return f"${precise:,f}"
    return f"${figure:,f}"


def money_places(values: Iterable[Decimal | float | int | None]) -> int:
    """The decimals every amount of one table shows: cents, or as many as its smallest amount needs."""
    return max((decimals_for(v) for v in values if v is not None and v == v), default=2)


def money_column_format(values: Iterable[Decimal | float | int | None]) -> str:
    """A printf format for a table's money columns: cents, or as many decimals as its smallest amount needs."""
    return f"$%,.{money_places(values)}f"


def number(value: int | float | Decimal | None) -> str:
    """A whole number with thousands separators: `12,345,678`."""
    if value is None:
        return "—"
    return f"{int(value):,}"


def change(current: Decimal | int | float, previous: Decimal | int | float) -> str | None:
    """The relative change from `previous` to `current` as `+12.5%`; None when there is nothing to compare."""
    current, previous = _as_decimal(current), _as_decimal(previous)
    if previous == 0:
        return None
    ratio = (current - previous) / previous * 100
    return f"{ratio:+.1f}%"


def local_time(value: dt.datetime | None, timezone: str, *, seconds: bool = True) -> str:
    """A stored time (naive means UTC) in the configured time zone: `2025-03-04 10:15:00 CET`."""
    if value is None:
        return "never"
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.timezone.utc)
    return value.astimezone(ZoneInfo(timezone)).strftime("%Y-%m-%d %H:%M:%S %Z" if seconds else "%Y-%m-%d %H:%M %Z")


def _zone(timezone: str | dt.tzinfo) -> dt.tzinfo:
    return ZoneInfo(timezone) if isinstance(timezone, str) else timezone


def local_day(moment: dt.datetime, timezone: str | dt.tzinfo) -> dt.date:
    """The calendar day an instant falls on in the configured time zone (a naive instant is UTC)."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.timezone.utc)
    return moment.astimezone(_zone(timezone)).date()


def today_in(timezone: str | dt.tzinfo, now: dt.datetime | None = None) -> dt.date:
    """Today (or the day of `now`) in the configured time zone: the day every daily limit and report counts."""
    return local_day(now or dt.datetime.now(dt.timezone.utc), timezone)


def day_start_utc(day: dt.date, timezone: str | dt.tzinfo) -> dt.datetime:
    """The naive-UTC instant where the local day begins (23 or 25 hours after the previous one on DST days)."""
    local = dt.datetime.combine(day, dt.time(), tzinfo=_zone(timezone))
    return local.astimezone(dt.timezone.utc).replace(tzinfo=None)


def day_bounds_utc(start: dt.date, end: dt.date, timezone: str | dt.tzinfo) -> tuple[dt.datetime, dt.datetime]:
    """The naive-UTC instants where the local day `start` begins and the day after `end` begins."""
    return day_start_utc(start, timezone), day_start_utc(end + dt.timedelta(days=1), timezone)


# Live control state counts money in whole picodollars (1e-12 USD), exact in integers.
_PICO_EXPONENT = 12
_TWELVE_PLACES = Decimal(1).scaleb(-_PICO_EXPONENT)


def to_picodollars(amount: Decimal | int) -> int:
    """USD as whole picodollars; amounts finer than a picodollar (only estimates) round up, never down."""
    if isinstance(amount, bool) or not isinstance(amount, (Decimal, int)):
        raise TypeError(f"money must be a Decimal, not {type(amount).__name__} (use Decimal('0.05'), not 0.05)")
    amount = Decimal(amount)
    if not amount.is_finite() or amount < 0:
        raise ValueError(f"money must be a finite amount >= 0, got {amount}")
    return int(amount.scaleb(_PICO_EXPONENT).to_integral_value(rounding=ROUND_CEILING))


def from_picodollars(picodollars: int) -> Decimal:
    """Whole picodollars as USD with 12 decimal places (the store's DECIMAL(18, 12))."""
    return Decimal(picodollars).scaleb(-_PICO_EXPONENT).quantize(_TWELVE_PLACES)
