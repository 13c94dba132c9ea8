"""FHIR date, dateTime, instant and Period values as UTC ranges, for indexing and searching.

A partial date covers its whole span: '1950' is 1950-01-01T00:00 up to the end of 1950.
Values without a time zone are taken as UTC.
"""

from __future__ import annotations

import calendar
import re
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from typing import Any

_DATE = re.compile(
    r"^(?P<y>\d{4})(?:-(?P<m>\d{2})(?:-(?P<d>\d{2})"
    r"(?:T(?P<H>\d{2}):(?P<M>\d{2})(?::(?P<S>\d{2})(?:\.(?P<f>\d+))?)?"
    r"(?P<tz>Z|[+-]\d{2}:\d{2})?)?)?)?$"
)
MIN = datetime(1, 1, 1, tzinfo=UTC)
MAX = datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC)


@lru_cache(maxsize=4096)  # a message repeats its dates (each result's time, the report's)
def parse_range(text: str) -> tuple[datetime, datetime] | None:
    match = _DATE.match(text.strip())
    if not match:
        return None
    g = match.groupdict()
    try:
        year = int(g["y"])
        if g["m"] is None:
            return _utc(datetime(year, 1, 1)), _utc(datetime(year, 12, 31, 23, 59, 59, 999999))
        month = int(g["m"])
        if g["d"] is None:
            last = calendar.monthrange(year, month)[1]
            return (
                _utc(datetime(year, month, 1)),
                _utc(datetime(year, month, last, 23, 59, 59, 999999)),
            )
        day = int(g["d"])
        if g["H"] is None:
            return (
                _utc(datetime(year, month, day)),
                _utc(datetime(year, month, day, 23, 59, 59, 999999)),
            )
        tz = _tz(g["tz"])
        fraction = (g["f"] or "0")[:6].ljust(6, "0")
        start = datetime(
            year, month, day, int(g["H"]), int(g["M"]), int(g["S"] or 0), int(fraction), tzinfo=tz
        ).astimezone(UTC)
        if g["S"] is None:
            return start, start + timedelta(minutes=1) - timedelta(microseconds=1)
        if g["f"] is None:
            return start, start + timedelta(seconds=1) - timedelta(microseconds=1)
        return start, start
    except ValueError:
        return None


def value_range(value: Any) -> tuple[datetime, datetime] | None:
    """A date/dateTime/instant string or a Period dict."""
    if isinstance(value, str):
        return parse_range(value)
    if isinstance(value, dict) and ("start" in value or "end" in value):
        start = parse_range(value["start"]) if isinstance(value.get("start"), str) else None
        end = parse_range(value["end"]) if isinstance(value.get("end"), str) else None
        return (start[0] if start else MIN, end[1] if end else MAX)
    return None


def _tz(text: str | None):  # type: ignore[no-untyped-def]
    from datetime import timezone

    if text is None or text == "Z":
        return UTC
    sign = 1 if text[0] == "+" else -1
    hours, minutes = int(text[1:3]), int(text[4:6])
    return timezone(sign * timedelta(hours=hours, minutes=minutes))


def _utc(naive: datetime) -> datetime:
    return naive.replace(tzinfo=UTC)


def now() -> datetime:
    return datetime.now(UTC)


def as_utc(value: datetime) -> datetime:
    """Database drivers may hand back naive datetimes (SQLite): they are UTC."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def instant(value: datetime) -> str:
    """FHIR instant text with millisecond precision."""
    return (
        as_utc(value).strftime("%Y-%m-%dT%H:%M:%S.") + f"{as_utc(value).microsecond // 1000:03d}Z"
    )
