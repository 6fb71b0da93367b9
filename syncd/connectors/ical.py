"""iCalendar (RFC 5545) -> :class:`MeetingItem`: a calendar object (a vdir ``.ics`` file, a
CalDAV resource) read as meetings and task states, and invitations carried by mail (iTIP).

Uses ``icalendar`` to parse. The parts live beside this module: one event as a meeting in
:mod:`.ical_events`, recurring events and their occurrences in :mod:`.ical_series`,
syncd's own tasks (written as VTODOs stamped ``X-SYNCD-TASK``, read back as task states,
never as meetings) in :mod:`.ical_tasks`, quarantine reasons in :mod:`.reasons`. The names
other modules import from here stay importable from here (``UnreadableCalendar``,
``task_to_ical``, ``SYNCD_TASK_PROP``, ``describe``, ``quarantined``, ``meeting_key``).

Limits (:mod:`syncd.limits`): a calendar object's size and its number of components
(``BEGIN:`` lines, counted before icalendar parses it) are checked first; the parse runs
under the ``parse_seconds`` bound; each series is expanded lazily within
``limits.occurrences`` (:mod:`.ical_series`). The window is kept within 1970 and five
years from now.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, tzinfo
from typing import Any

import icalendar

from syncd.config import LimitSettings
from syncd.connectors.base import Reread, RereadContext
from syncd.connectors.ical_events import UnreadableCalendar as UnreadableCalendar
from syncd.connectors.ical_events import as_datetime, clean_events, meeting, text, utc
from syncd.connectors.ical_series import (
    expand,
    occurrences,
    recurring_by_uid,
    series_uids,
)
from syncd.connectors.ical_tasks import SYNCD_TASK_PROP as SYNCD_TASK_PROP
from syncd.connectors.ical_tasks import task_state
from syncd.connectors.ical_tasks import task_to_ical as task_to_ical
from syncd.connectors.meetings import meeting_key as meeting_key
from syncd.connectors.reasons import describe as describe
from syncd.connectors.reasons import quarantined as quarantined
from syncd.connectors.reasons import short
from syncd.items import EARLIEST, MeetingItem, TaskState, latest
from syncd.limits import OverLimit, check, limits_or_default, run_bounded

log = logging.getLogger("syncd.ical")

_FOLD = re.compile(rb"\r?\n[ \t]")
_BEGIN = re.compile(rb"(?im)^begin[:;]")


class CalendarOverLimit(UnreadableCalendar):
    """A calendar object over one of the ``[limits]``; ``limit`` names it."""

    def __init__(self, over: OverLimit) -> None:
        super().__init__(str(over))
        self.limit = over.limit


def check_calendar(data: bytes, limits: LimitSettings) -> None:
    """The limits a calendar object is held to before icalendar parses it: its size and its
    number of components. Raises :class:`OverLimit`."""
    check("message_bytes", len(data), limits.message_bytes, "the calendar object is {size}")
    unfolded = _FOLD.sub(b"", data)  # BEGIN may be folded over two lines
    check(
        "calendar_objects",
        len(_BEGIN.findall(unfolded)),
        limits.calendar_objects,
        "it holds {n} components (BEGIN: lines)",
    )


def _parse(data: bytes) -> list[Any]:
    """The VCALENDARs of one calendar object: a file holding several (seen in the wild) is
    read as all of them; a bare VEVENT is read as a calendar holding it."""
    try:
        found = [icalendar.Calendar.from_ical(data)]
    except Exception as exc:
        try:
            found = list(icalendar.Calendar.from_ical(data, multiple=True))
        except Exception:
            found = []
        if not found:
            raise UnreadableCalendar(f"not valid iCalendar: {describe(exc)}") from exc
    calendars = []
    for component in found:
        if component.name == "VCALENDAR":
            calendars.append(component)
        elif component.name in ("VEVENT", "VTODO"):
            cal = icalendar.Calendar()
            cal.add_component(component)
            calendars.append(cal)
    if not calendars:
        raise UnreadableCalendar(f"no VCALENDAR in it (found {found[0].name or 'nothing'})")
    return calendars


# --- invitations carried by mail ------------------------------------------------------------


def invitations_from_ical(
    data: bytes, provider_id: str, *, limits: LimitSettings | None = None
) -> list[MeetingItem]:
    """Meeting invitations carried by mail (iTIP, RFC 5546): REQUEST, REPLY, CANCEL.

    A recurring invitation yields its first occurrence, keyed as the calendar's copy is.
    Unreadable calendar parts, and events that cannot be read (no start, a start before
    1970 or more than five years ahead), are ignored: the mail around them is still an
    email. So is a calendar part over ``limits`` (its size or number of components), and
    a series with more than ``limits.occurrences`` occurrences on its first day (the
    calendar's copy would be quarantined for it). Never raises :class:`Exception`.
    """
    lim = limits_or_default(limits)
    try:
        check_calendar(data, lim)
        calendars = _parse(data)
    except OverLimit as exc:
        log.warning("%s: its invitation is left out, the mail is logged: %s", provider_id, exc)
        return []
    except Exception:
        return []
    return [item for cal in calendars for item in _invitations_of(cal, provider_id, lim)]


def _invitations_of(cal: Any, provider_id: str, limits: LimitSettings) -> list[MeetingItem]:
    """The invitations of one VCALENDAR; an event that cannot be read is left out."""
    try:
        method = text(cal, "METHOD").upper() or None
        clean_events(cal, [])
        series = recurring_by_uid(cal)
    except Exception:
        return []
    items: list[MeetingItem] = []
    for component in cal.walk("VEVENT"):
        try:
            item = _invitation(component, series, provider_id, method, limits)
        except Exception:
            continue
        if item is not None:
            items.append(item)
    return items


def _invitation(
    component: Any,
    series: dict[str, list[Any]],
    provider_id: str,
    method: str | None,
    limits: LimitSettings,
) -> MeetingItem | None:
    if component.get("RRULE") is not None:
        component = _first_occurrence(component, series, provider_id, limits)
        if component is None:
            return None
    try:
        return meeting(component, provider_id, UTC, method, component.get("RRULE") is None)
    except UnreadableCalendar:
        return None


def _first_occurrence(
    component: Any, series: dict[str, list[Any]], provider_id: str, limits: LimitSettings
) -> Any | None:
    """A recurring invitation's first occurrence (the event itself when it has none in its
    first day); None when it starts out of range or is over ``limits.occurrences``."""
    first = utc(as_datetime(component.get("DTSTART").dt, UTC))
    if not EARLIEST <= first <= latest():
        return None
    uid = text(component, "UID")
    problems: list[str] = []
    found = [
        occurrence
        for one in series.get(uid, [])
        for occurrence in expand(one, (first, first + timedelta(days=1)), limits, problems, True)
        if text(occurrence, "UID") == uid
    ]
    over = [p for p in problems if p.startswith("over limits.")]
    if over:
        log.warning("%s: an invitation is left out, the mail is logged: %s", provider_id, over[0])
        return None
    return found[0] if found else component


# --- calendar objects -------------------------------------------------------------------------


@dataclass(frozen=True)
class CalendarObject:
    """What one calendar object (a vdir ``.ics`` file, a CalDAV resource) holds."""

    meetings: list[MeetingItem]
    task_states: list[TaskState]
    uids: set[str]  # every UID it holds, so that a later removal can be told apart
    problems: list[str] = field(default_factory=list)  # events that could not be read


def read_calendar(
    data: bytes,
    provider_id: str,
    window: tuple[datetime, datetime],
    default_tz: tzinfo = UTC,
    *,
    limits: LimitSettings | None = None,
) -> CalendarObject:
    """One calendar object: the meeting occurrences inside ``window``, the states of
    syncd's own tasks, and every UID it holds.

    Raises :class:`UnreadableCalendar` when it is not iCalendar at all, and
    :class:`CalendarOverLimit` (one) when it is over ``limits`` (None: the defaults): its
    size, its number of components, or ``parse_seconds``. An event that cannot be read, or
    a series with more occurrences than ``limits.occurrences``, is left out and named in
    ``problems`` (the caller quarantines the object with them); the other events are read.
    ``window`` is kept within 1970 and five years from now.
    """
    lim = limits_or_default(limits)
    start, end = window
    window = (max(start, EARLIEST), min(end, latest()))
    try:
        check_calendar(data, lim)
        return run_bounded(
            lim.parse_seconds, _read_calendar, data, provider_id, window, default_tz, lim
        )
    except OverLimit as exc:
        raise CalendarOverLimit(exc) from None


def _read_calendar(
    data: bytes,
    provider_id: str,
    window: tuple[datetime, datetime],
    default_tz: tzinfo,
    limits: LimitSettings,
) -> CalendarObject:
    uids: set[str] = set()
    states: list[TaskState] = []
    meetings: list[MeetingItem] = []
    problems: list[str] = []
    expanded = 0  # occurrences of the whole object
    for cal in _parse(data):
        uids.update(_uids(cal))
        states.extend(_task_states(cal))
        clean_events(cal, problems)
        recurring = series_uids(cal)
        found = occurrences(cal, window, limits, problems, expanded)
        expanded += len(found)
        for component in found:
            item = _meeting_or_problem(component, provider_id, default_tz, recurring, problems)
            if item is not None:
                meetings.append(item)
    return CalendarObject(meetings, states, uids, list(dict.fromkeys(problems)))


def _uids(cal: Any) -> set[str]:
    """Every UID in ``cal``, a component's second UID too."""
    found: set[str] = set()
    for component in cal.walk():
        uid = component.get("UID")
        if uid is not None:
            found.update(str(u) for u in (uid if isinstance(uid, list) else [uid]))
    return found


def _task_states(cal: Any) -> list[TaskState]:
    """The states of syncd's own tasks in ``cal`` (a VTODO, or a VEVENT where a calendar
    takes no VTODO, stamped ``X-SYNCD-TASK``)."""
    return [
        task_state(
            text(component, SYNCD_TASK_PROP),
            text(component, "STATUS"),
            text(component, "SUMMARY"),
            event=component.name == "VEVENT",
        )
        for component in cal.walk()
        if component.name in ("VTODO", "VEVENT") and component.get(SYNCD_TASK_PROP) is not None
    ]


def _meeting_or_problem(
    component: Any, provider_id: str, default_tz: tzinfo, recurring: set[str], problems: list[str]
) -> MeetingItem | None:
    uid = text(component, "UID")
    try:
        return meeting(component, provider_id, default_tz, None, uid in recurring)
    except Exception as exc:
        problems.append(short(f"event {uid or 'without UID'}: {describe(exc)}"))
        return None


def reread(data: bytes, ctx: RereadContext) -> Reread:
    """The ``ical`` re-parser (``syncd quarantine retry``): a kept calendar object read
    again; the events it still cannot read stay quarantined with their problem."""
    found = read_calendar(data, ctx.provider_id, ctx.window, limits=ctx.limits)
    problems = list(found.problems)
    return Reread(tuple(found.meetings), "; ".join(problems) if problems else None)
