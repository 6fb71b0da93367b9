"""How hot a contact, account or open deal is: hot, warm or cold. Pure: touches in, a level
with its reason out.

Every email and meeting linked to the record in the last ``engagement.window_days`` is a
*touch*, scoring its weight (``engagement`` in the config): their mail to us (a reply)
weighs more than ours to them (``inbound_email`` over ``outbound_email``), a meeting more
than mail (``meeting``). A touch's points halve every ``half_life_days``, so recency,
frequency and two-way-ness all count: three replies this week make a contact hot, one mail
sent last month leaves it cold. ``hot`` and ``warm`` are the points at or above which the
record is hot or warm; below ``warm`` it is cold.

The score is computed from the stored activities whenever it is asked for, so it is
always current: a new reply counts at once, and a quiet week cools it by itself. The
reason says what made it ("3 replies and 1 meeting in 14 days; last touch 2 days ago").
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal

from syncd.config import EngagementSettings

Level = Literal["hot", "warm", "cold"]
TouchKind = Literal["reply", "sent", "meeting"]
RECENT_DAYS = 14  # the span the reason counts in (the default half-life)


@dataclass(frozen=True)
class Touch:
    """One email or meeting with the record: ``kind`` is ``reply`` (their mail to us),
    ``sent`` (ours to them) or ``meeting``."""

    when: datetime
    kind: TouchKind


@dataclass(frozen=True)
class Engagement:
    level: Level
    points: float
    last_touch: datetime | None
    reason: str


def touch_kind(activity_kind: str, direction: str) -> TouchKind | None:
    """What an activity is to the record: a reply (inbound mail), a sent mail (outbound),
    a meeting; None for what is no touch (internal mail)."""
    if activity_kind == "meeting":
        return "meeting"
    return {"inbound": "reply", "outbound": "sent"}.get(direction)  # type: ignore[return-value]


def score(touches: Iterable[Touch], settings: EngagementSettings, now: datetime) -> Engagement:
    """The level, points and reason of a record from its touches (those after ``now`` or
    before the window count for nothing: a meeting next week is no touch yet)."""
    weights = {
        "reply": settings.inbound_email,
        "sent": settings.outbound_email,
        "meeting": settings.meeting,
    }
    floor = now - timedelta(days=settings.window_days)
    points = 0.0
    last: datetime | None = None
    counted = [t for t in touches if floor <= t.when <= now]
    for t in counted:
        age = (now - t.when).total_seconds() / 86400
        points += weights[t.kind] * 0.5 ** (age / settings.half_life_days)
        last = t.when if last is None or t.when > last else last
    level: Level = "cold"
    if points >= settings.hot:
        level = "hot"
    elif points >= settings.warm:
        level = "warm"
    # points unrounded: a ranking by them never meets a tie that rounding made
    return Engagement(level, points, last, _reason(counted, now, settings))


def _reason(touches: list[Touch], now: datetime, settings: EngagementSettings) -> str:
    """What made the score, as people say it."""
    if not touches:
        return f"no email or meeting in {settings.window_days} days"
    span = RECENT_DAYS
    recent = [t for t in touches if now - t.when <= timedelta(days=span)]
    if not recent:
        recent, span = touches, settings.window_days
    counts = {k: sum(1 for t in recent if t.kind == k) for k in ("reply", "meeting", "sent")}
    words = {
        "reply": ("reply", "replies"),
        "meeting": ("meeting", "meetings"),
        "sent": ("email sent", "emails sent"),
    }
    parts = [f"{n} {words[k][n != 1]}" for k, n in counts.items() if n]
    said = parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]
    elapsed = now - max(t.when for t in touches)
    hours = int(elapsed.total_seconds() // 3600)
    if hours < 24:
        ago = "within the hour" if hours == 0 else f"{hours} hour{'s' * (hours != 1)} ago"
    else:
        ago = "a day ago" if elapsed.days == 1 else f"{elapsed.days} days ago"
    return f"{said} in {span} days; last touch {ago}"
