"""One iCalendar event (VEVENT) as syncd reads it: its properties read the lenient way, the
reason an event cannot be a meeting, and the :class:`MeetingItem` it is.

Real calendars repeat properties that a component holds once (a second DTSTART, SUMMARY):
the first copy is read. An unreadable DTEND or DURATION is dropped (the meeting ends when it
starts); an event without a readable DTSTART, or without a UID, is no meeting and is named
in the problems. Identity and participants follow :mod:`syncd.connectors.meetings`, as
every calendar connector does.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta, tzinfo
from typing import Any

from syncd.connectors.ical_tasks import SYNCD_TASK_PROP
from syncd.connectors.meetings import (
    PRIVATE_VISIBILITY,
    meeting_key,
    one_line,
    participants,
    recurrence_id,
)
from syncd.connectors.reasons import describe
from syncd.items import EARLIEST, MeetingItem, Participant, latest

# properties a component holds once; a second copy (seen in real calendars) is ignored
_SINGLE = ("UID", "DTSTART", "DTEND", "DURATION", "RECURRENCE-ID", "SUMMARY", "STATUS", "CLASS")


class UnreadableCalendar(ValueError):
    """The data is not iCalendar syncd can read."""


def text(component: Any, name: str) -> str:
    """A property's text: the first of several copies, "" when absent, without NULs."""
    value = component.get(name, "")
    if isinstance(value, list):
        value = value[0] if value else ""
    return str(value).replace("\x00", "")


def as_datetime(value: Any, default_tz: tzinfo) -> datetime:
    """A DATE or DATE-TIME value as an aware datetime (a DATE at midnight, a floating time
    in ``default_tz``)."""
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=default_tz)
    if isinstance(value, date):
        return datetime.combine(value, time(0), tzinfo=default_tz)
    raise UnreadableCalendar(f"not a date or date-time: {value!r}")


def utc(value: datetime) -> datetime:
    try:
        return value.astimezone(UTC)
    except (OverflowError, ValueError) as exc:
        raise UnreadableCalendar(f"date out of range: {value!r}") from exc


# --- events that cannot be meetings ------------------------------------------------------


def _keep_first_copies(component: Any) -> None:
    """A property a component holds once, given twice: the first copy is kept."""
    for name in _SINGLE:
        value = component.get(name)
        if isinstance(value, list):
            component.pop(name)
            if value:
                component[name] = value[0]


def _start_problem(component: Any) -> str | None:
    uid = text(component, "UID") or "without UID"
    dtstart = component.get("DTSTART")
    if dtstart is None:
        return f"event {uid}: no DTSTART"
    try:
        as_datetime(dtstart.dt, UTC)
    except Exception as exc:
        return f"event {uid}: DTSTART {describe(exc)}"
    return None


def _check_end(name: str, value: Any) -> None:
    if name == "DTEND":
        as_datetime(value, UTC)
    elif not isinstance(value, timedelta):
        raise UnreadableCalendar(f"not a duration: {value!r}")


def _drop_unreadable_end(component: Any) -> None:
    for name in ("DTEND", "DURATION"):
        if component.get(name) is not None:
            try:
                _check_end(name, component.get(name).dt)
            except Exception:
                component.pop(name)


def event_problem(component: Any) -> str | None:
    """Why an event cannot be a meeting, after dropping what can be read without: a
    second DTSTART, an unreadable DTEND or DURATION (the meeting then ends when it starts)."""
    _keep_first_copies(component)
    problem = _start_problem(component)
    if problem is not None:
        return problem
    if not text(component, "UID").strip() and component.get(SYNCD_TASK_PROP) is None:
        return "event without UID: it cannot be told apart from others"
    _drop_unreadable_end(component)
    return None


def clean_events(cal: Any, problems: list[str]) -> None:
    """Drop the events that can never be meetings from ``cal``, saying why in ``problems``."""
    for parent in cal.walk():
        keep = []
        for sub in parent.subcomponents:
            if sub.name == "VEVENT":
                try:
                    problem = event_problem(sub)
                except Exception as exc:
                    problem = f"event {text(sub, 'UID') or 'without UID'}: {describe(exc)}"
                if problem:
                    problems.append(problem)
                    continue
            keep.append(sub)
        parent.subcomponents[:] = keep


# --- an event as a meeting ------------------------------------------------------------------


def _person(value: Any) -> tuple[str, str]:
    """An ORGANIZER or ATTENDEE: (its calendar address, its common name)."""
    return str(value), str(getattr(value, "params", {}).get("CN", ""))


def _participants(component: Any) -> tuple[Participant, ...]:
    organizer = component.get("ORGANIZER")
    if isinstance(organizer, list):
        organizer = organizer[0] if organizer else None
    attendees = component.get("ATTENDEE")
    if attendees is None:
        attendees = []
    elif not isinstance(attendees, list):
        attendees = [attendees]
    return participants(
        _person(organizer) if organizer is not None else None, map(_person, attendees)
    )


def _end(component: Any, start: datetime, all_day: bool, default_tz: tzinfo) -> datetime:
    """DTEND, else DTSTART + DURATION, else the start (a whole day for a DATE): never
    before the start, nor after "latest"."""
    dtend = component.get("DTEND")
    if dtend is not None:
        end = utc(as_datetime(dtend.dt, default_tz))
    elif component.get("DURATION") is not None:
        end = utc(start + component.get("DURATION").dt)
    else:
        end = start + (timedelta(days=1) if all_day else timedelta())
    return min(max(end, start), max(latest(), start))


def _recurrence_id(component: Any, default_tz: tzinfo) -> str | None:
    prop = component.get("RECURRENCE-ID")
    return None if prop is None else recurrence_id(utc(as_datetime(prop.dt, default_tz)))


def meeting(
    component: Any, provider_id: str, default_tz: tzinfo, method: str | None, series: bool = True
) -> MeetingItem | None:
    """The meeting a VEVENT is; None for one without UID or DTSTART, or one of syncd's own
    tasks. ``series``: the event belongs to a series, so its RECURRENCE-ID is part of its
    key (recurring-ical-events stamps every occurrence with one; only a series' need it).
    Raises :class:`UnreadableCalendar` for a date out of range."""
    uid = text(component, "UID").strip()
    dtstart = component.get("DTSTART")
    if not uid or component.get(SYNCD_TASK_PROP) is not None or dtstart is None:
        return None
    start = utc(as_datetime(dtstart.dt, default_tz))
    if not EARLIEST <= start <= latest():
        raise UnreadableCalendar(f"event {uid!r} starts out of range: {start:%Y-%m-%d}")
    end = _end(component, start, not isinstance(dtstart.dt, datetime), default_tz)
    rid = _recurrence_id(component, default_tz) if series else None
    status = text(component, "STATUS").upper()
    return MeetingItem(
        key=meeting_key(uid, rid),
        uid=uid,
        recurrence_id=rid,
        provider_id=provider_id,
        subject=one_line(text(component, "SUMMARY")),
        start=start,
        end=end,
        participants=_participants(component),
        cancelled=status == "CANCELLED" or method == "CANCEL",
        private=text(component, "CLASS").lower() in PRIVATE_VISIBILITY,
        description=text(component, "DESCRIPTION"),
        method=method,
    )
