"""Times people can read: in the user's own time zone, with the zone named.

Every time syncd shows in a table or writes into a calendar entry's text is in the time
zone of the user it is about (their ``timezone`` in users.csv, else ``company.timezone``),
to the minute, with the zone's abbreviation: ``2026-12-01 09:30 CET``. JSON output keeps
ISO 8601 with the offset (``2026-12-01T09:30:00+01:00``), never a bare UTC time a reader has
to convert.
"""

from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo

from syncd.config import Settings


def zone(settings: Settings, user_timezone: str | None = None) -> ZoneInfo:
    """The zone a user reads times in: their own, else the company's."""
    return ZoneInfo(user_timezone or settings.company.timezone)


def shown(when: datetime | None, tz: ZoneInfo, empty: str = "-") -> str:
    """``2026-12-01 09:30 CET``: to the minute, in ``tz``, the zone named."""
    if when is None:
        return empty
    local = when.astimezone(tz)
    return f"{local:%Y-%m-%d %H:%M} {local.tzname()}"


def iso(when: datetime | None, tz: ZoneInfo) -> str | None:
    """ISO 8601 with the offset of ``tz`` (JSON)."""
    return when.astimezone(tz).isoformat() if when is not None else None
