"""How the dashboard writes figures: money, counts, changes and times."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from decimal import ROUND_HALF_UP, Decimal
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


def money(value: Decimal | float | int | None) -> str:
    """Dollars with cents, and fractions of a cent where small: `$1,234.56`, `$0.0042`, `-$0.50`."""
    if value is None:
        return "—"
    amount = _as_decimal(value)
    places = decimals_for(amount)
    rounded = amount.quantize(Decimal(1).scaleb(-places), rounding=ROUND_HALF_UP)
    if rounded == 0 and amount != 0:
        return "<$" + format(Decimal(1).scaleb(-MAX_DECIMALS), f".{MAX_DECIMALS}f")
    sign = "-" if rounded < 0 else ""
    return f"{sign}${abs(rounded):,.{places}f}"


def money_column_format(values: Iterable[Decimal | float | int | None]) -> str:
    """A printf format for a table's money column: cents, or as many decimals as its smallest amount needs."""
    places = max((decimals_for(v) for v in values if v is not None), default=2)
    return f"$%,.{places}f"


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
