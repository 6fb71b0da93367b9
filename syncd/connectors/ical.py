"""iCalendar -> :class:`MeetingItem`, and :class:`TaskItem` -> iCalendar (RFC 5545).

Uses ``icalendar`` to parse and write, ``recurring-ical-events`` to expand recurring events
into the occurrences that fall inside a window. syncd stamps every task it writes with the
``X-SYNCD-TASK`` property: read back, such a component is a task state, never a meeting.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, date, datetime, time, timedelta, tzinfo
from typing import Any

import icalendar
import recurring_ical_events

from syncd.items import MeetingItem, Participant, TaskItem, TaskState, TaskStatus
from syncd.matching.addresses import normalize_address

SYNCD_TASK_PROP = "X-SYNCD-TASK"
PRODID = "-//syncd//syncd follow-up tasks//EN"
_PRIVATE_CLASSES = {"PRIVATE", "CONFIDENTIAL"}
_TODO_STATUS: dict[str, TaskStatus] = {"COMPLETED": "done", "CANCELLED": "cancelled"}
_STATUS_TODO = {"open": "NEEDS-ACTION", "done": "COMPLETED", "cancelled": "CANCELLED"}


class UnreadableCalendar(ValueError):
    """The data is not iCalendar syncd can read."""


def _as_datetime(value: Any, default_tz: tzinfo) -> datetime:
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=default_tz)
    if isinstance(value, date):
        return datetime.combine(value, time(0), tzinfo=default_tz)
    raise UnreadableCalendar(f"not a date or date-time: {value!r}")


def _participant(value: Any, role: str) -> Participant | None:
    address = normalize_address(str(value).removeprefix("mailto:").removeprefix("MAILTO:"))
    if not address:
        return None
    name = str(getattr(value, "params", {}).get("CN", "")).strip()
    return Participant(address=address, name=name, role=role)  # type: ignore[arg-type]


def _participants(component: Any) -> tuple[Participant, ...]:
    found: list[Participant] = []
    organizer = component.get("ORGANIZER")
    if organizer is not None:
        p = _participant(organizer, "organizer")
        if p:
            found.append(p)
    attendees = component.get("ATTENDEE")
    if attendees is None:
        attendees = []
    elif not isinstance(attendees, list):
        attendees = [attendees]
    known = {p.address for p in found}
    for attendee in attendees:
        p = _participant(attendee, "attendee")
        if p and p.address not in known:
            known.add(p.address)
            found.append(p)
    return tuple(found)


def meeting_key(uid: str, recurrence_id: str | None) -> str:
    return f"ical:{uid}#{recurrence_id}" if recurrence_id else f"ical:{uid}"


def _meeting(
    component: Any, provider_id: str, default_tz: tzinfo, method: str | None, series: bool = True
) -> MeetingItem | None:
    uid = str(component.get("UID", "")).strip()
    if not uid or component.get(SYNCD_TASK_PROP) is not None:
        return None
    dtstart = component.get("DTSTART")
    if dtstart is None:
        return None
    start = _as_datetime(dtstart.dt, default_tz)
    dtend = component.get("DTEND")
    if dtend is not None:
        end = _as_datetime(dtend.dt, default_tz)
    elif component.get("DURATION") is not None:
        end = start + component.get("DURATION").dt
    else:
        end = start + (timedelta(days=1) if not isinstance(dtstart.dt, datetime) else timedelta())
    # recurring-ical-events stamps every occurrence; only a series' occurrences need one
    rid_prop = component.get("RECURRENCE-ID") if series else None
    recurrence_id = (
        _as_datetime(rid_prop.dt, default_tz).astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")
        if rid_prop is not None
        else None
    )
    status = str(component.get("STATUS", "")).upper()
    return MeetingItem(
        key=meeting_key(uid, recurrence_id),
        uid=uid,
        recurrence_id=recurrence_id,
        provider_id=provider_id,
        subject=" ".join(str(component.get("SUMMARY", "")).split()),
        start=start.astimezone(UTC),
        end=end.astimezone(UTC),
        participants=_participants(component),
        cancelled=status == "CANCELLED" or method == "CANCEL",
        private=str(component.get("CLASS", "")).upper() in _PRIVATE_CLASSES,
        description=str(component.get("DESCRIPTION", "")),
        location=str(component.get("LOCATION", "")),
        method=method,
    )


def _parse(data: bytes) -> Any:
    try:
        return icalendar.Calendar.from_ical(data)
    except Exception as exc:
        raise UnreadableCalendar(f"not valid iCalendar: {exc}") from exc


def invitations_from_ical(data: bytes, provider_id: str) -> list[MeetingItem]:
    """Meeting invitations carried by mail (iTIP, RFC 5546): REQUEST, REPLY, CANCEL.

    A recurring invitation yields its first occurrence, keyed as the calendar's copy is.
    Unreadable calendar parts are ignored: the mail around them is still an email.
    """
    try:
        cal = _parse(data)
    except UnreadableCalendar:
        return []
    method = str(cal.get("METHOD", "")).upper() or None
    items: list[MeetingItem] = []
    for component in cal.walk("VEVENT"):
        if component.get("RRULE") is not None and component.get("DTSTART") is not None:
            first = _as_datetime(component.get("DTSTART").dt, UTC)
            window = recurring_ical_events.of(cal).between(first, first + timedelta(days=1))
            occurrences = [c for c in window if str(c.get("UID")) == str(component.get("UID"))]
            component = occurrences[0] if occurrences else component
        item = _meeting(component, provider_id, UTC, method, component.get("RRULE") is None)
        if item is not None:
            items.append(item)
    return items


def read_calendar(
    data: bytes, provider_id: str, window: tuple[datetime, datetime], default_tz: tzinfo = UTC
) -> tuple[list[MeetingItem], list[TaskState], set[str]]:
    """One calendar object (a vdir ``.ics`` file, a CalDAV resource).

    Returns the meeting occurrences inside ``window``, the states of syncd's own tasks,
    and every UID the object holds (so that a later removal can be told apart).
    """
    cal = _parse(data)
    uids = {str(c.get("UID")) for c in cal.walk() if c.get("UID") is not None}
    states = []
    for component in cal.walk():
        if component.name in ("VTODO", "VEVENT") and component.get(SYNCD_TASK_PROP) is not None:
            status = _TODO_STATUS.get(str(component.get("STATUS", "")).upper(), "open")
            states.append(TaskState(uid=str(component.get(SYNCD_TASK_PROP)), status=status))
    series = {
        str(c.get("UID"))
        for c in cal.walk("VEVENT")
        if c.get("RRULE") is not None
        or c.get("RDATE") is not None
        or c.get("RECURRENCE-ID") is not None
    }
    meetings: list[MeetingItem] = []
    try:
        occurrences: Iterable[Any] = recurring_ical_events.of(cal).between(*window)
    except Exception as exc:
        raise UnreadableCalendar(f"cannot expand its events: {exc}") from exc
    for component in occurrences:
        series_uid = str(component.get("UID")) in series
        item = _meeting(component, provider_id, default_tz, None, series_uid)
        if item is not None:
            meetings.append(item)
    return meetings, states, uids


def task_to_ical(task: TaskItem, as_event: bool = False) -> bytes:
    """A follow-up task as a VTODO (or a short VEVENT where a calendar takes no VTODO)."""
    cal = icalendar.Calendar()
    cal.add("PRODID", PRODID)
    cal.add("VERSION", "2.0")
    component: Any = icalendar.Event() if as_event else icalendar.Todo()
    component.add("UID", task.uid)
    component.add("DTSTAMP", datetime.now(UTC))
    component.add("CREATED", task.created.astimezone(UTC))
    component.add("SUMMARY", task.title)
    component.add("DESCRIPTION", task.description)
    component.add("SEQUENCE", task.sequence)
    due = task.due.astimezone(UTC)
    if as_event:
        component.add("DTSTART", due)
        component.add("DTEND", due + timedelta(minutes=15))
        component.add("TRANSP", "TRANSPARENT")
        if task.status == "cancelled":
            component.add("STATUS", "CANCELLED")
    else:
        component.add("DUE", due)
        component.add("STATUS", _STATUS_TODO[task.status])
        if task.status == "done":
            component.add("COMPLETED", datetime.now(UTC))
    if task.categories:
        component.add("CATEGORIES", list(task.categories))
    component.add(SYNCD_TASK_PROP, task.uid)
    cal.add_component(component)
    return bytes(cal.to_ical())
