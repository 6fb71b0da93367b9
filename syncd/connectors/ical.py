"""iCalendar -> :class:`MeetingItem`, and :class:`TaskItem` -> iCalendar (RFC 5545).

Uses ``icalendar`` to parse and write, ``recurring-ical-events`` to expand recurring events
into the occurrences that fall inside a window. syncd stamps every task it writes with the
``X-SYNCD-TASK`` property: read back, such a component is a task state, never a meeting.

Limits (:mod:`syncd.limits`): a calendar object's size and its number of components
(``BEGIN:`` lines, counted before icalendar parses it) are checked first; the parse runs
under the ``parse_seconds`` bound; and each series is expanded lazily, one occurrence at a
time (dateutil's own ``between`` builds a list of every occurrence, 31 million a year for
``FREQ=SECONDLY``): a series with more than ``limits.occurrences`` occurrences in the window,
or that repeats more than :data:`STEPS_PER_OCCURRENCE` times that before the window ends,
is left out whole and named in the problems (the file is quarantined with them, its other
events read). Whole, not its first N: a series that dense is no meeting with a customer
(FREQ=SECONDLY, MINUTELY, a daily one over a window of years), its first N would be a
timeline that is silently incomplete and changes as the window moves each day, and a
quarantine entry says what to raise to read it all. A calendar object whose series have
more than :data:`SERIES_PER_OBJECT` times the limit together (990 daily series in one file:
89,000 activities) is over it as a whole. The window itself is kept within 1970 and five
years from now.
"""

from __future__ import annotations

import itertools
import logging
import re
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta, tzinfo
from typing import Any

import icalendar
import recurring_ical_events

from syncd.config import LimitSettings
from syncd.connectors.base import Reread, RereadContext
from syncd.items import (
    EARLIEST,
    RAW_KEPT,
    MeetingItem,
    Participant,
    Quarantined,
    TaskItem,
    TaskState,
    TaskStatus,
    latest,
)
from syncd.limits import OverLimit, check, limits_or_default, run_bounded
from syncd.matching.addresses import normalize_address

SYNCD_TASK_PROP = "X-SYNCD-TASK"
PRODID = "-//syncd//syncd follow-up tasks//EN"
_PRIVATE_CLASSES = {"PRIVATE", "CONFIDENTIAL"}
_TODO_STATUS: dict[str, TaskStatus] = {"COMPLETED": "done", "CANCELLED": "cancelled"}
_STATUS_TODO = {"open": "NEEDS-ACTION", "done": "COMPLETED", "cancelled": "CANCELLED"}


class UnreadableCalendar(ValueError):
    """The data is not iCalendar syncd can read."""


class CalendarOverLimit(UnreadableCalendar):
    """A calendar object over one of the ``[limits]``; ``limit`` names it."""

    def __init__(self, over: OverLimit) -> None:
        super().__init__(str(over))
        self.limit = over.limit


log = logging.getLogger("syncd.ical")

# a series may repeat this many times its occurrence limit before the window ends (a daily
# meeting since 1970 is 20,000 repetitions); past that it is over limits.occurrences too
STEPS_PER_OCCURRENCE = 100
# and a calendar object (one file, one CalDAV resource: one series and its exceptions, by
# RFC 4791; an exported calendar holds many) may have this many times the occurrences of one
# series in the window; past that it is over limits.occurrences as a whole
SERIES_PER_OBJECT = 10
_FOLD = re.compile(rb"\r?\n[ \t]")
_BEGIN = re.compile(rb"(?im)^begin[:;]")


REASON_CHARS = 300
# properties a component holds once; a second copy (seen in real calendars) is ignored
_SINGLE = ("UID", "DTSTART", "DTEND", "DURATION", "RECURRENCE-ID", "SUMMARY", "STATUS", "CLASS")


def short(reason: str) -> str:
    """A reason fit for the quarantine: one line, bounded (a parser's message may quote
    the whole input)."""
    reason = " ".join(reason.split())
    return reason if len(reason) <= REASON_CHARS else reason[: REASON_CHARS - 1] + "…"


def describe(exc: BaseException) -> str:
    text = str(exc)
    return short(f"{exc.__class__.__name__}: {text}" if text else exc.__class__.__name__)


def quarantined(provider_id: str, reason: str, raw: bytes | None, fmt: str) -> Quarantined:
    """A quarantine entry for one item, with what was read when it is small enough to keep."""
    keep = raw if raw is not None and len(raw) <= RAW_KEPT else None
    return Quarantined(provider_id, short(reason), keep, fmt if keep is not None else None)


def _as_datetime(value: Any, default_tz: tzinfo) -> datetime:
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=default_tz)
    if isinstance(value, date):
        return datetime.combine(value, time(0), tzinfo=default_tz)
    raise UnreadableCalendar(f"not a date or date-time: {value!r}")


def _utc(value: datetime) -> datetime:
    try:
        return value.astimezone(UTC)
    except (OverflowError, ValueError) as exc:
        raise UnreadableCalendar(f"date out of range: {value!r}") from exc


def _participant(value: Any, role: str) -> Participant | None:
    address = normalize_address(str(value).removeprefix("mailto:").removeprefix("MAILTO:"))
    if not address:
        return None
    name = str(getattr(value, "params", {}).get("CN", "")).strip()
    return Participant(address=address, name=name, role=role)  # type: ignore[arg-type]


def _participants(component: Any) -> tuple[Participant, ...]:
    found: list[Participant] = []
    organizer = component.get("ORGANIZER")
    if isinstance(organizer, list):
        organizer = organizer[0] if organizer else None
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


def _text(component: Any, name: str) -> str:
    value = component.get(name, "")
    if isinstance(value, list):
        value = value[0] if value else ""
    return str(value).replace("\x00", "")


def _meeting(
    component: Any, provider_id: str, default_tz: tzinfo, method: str | None, series: bool = True
) -> MeetingItem | None:
    uid = _text(component, "UID").strip()
    if not uid or component.get(SYNCD_TASK_PROP) is not None:
        return None
    dtstart = component.get("DTSTART")
    if dtstart is None:
        return None
    start = _utc(_as_datetime(dtstart.dt, default_tz))
    if not EARLIEST <= start <= latest():
        raise UnreadableCalendar(f"event {uid!r} starts out of range: {start:%Y-%m-%d}")
    dtend = component.get("DTEND")
    if dtend is not None:
        end = _utc(_as_datetime(dtend.dt, default_tz))
    elif component.get("DURATION") is not None:
        end = _utc(start + component.get("DURATION").dt)
    else:
        end = start + (timedelta(days=1) if not isinstance(dtstart.dt, datetime) else timedelta())
    end = min(max(end, start), max(latest(), start))  # never before it starts, nor after "latest"
    # recurring-ical-events stamps every occurrence; only a series' occurrences need one
    rid_prop = component.get("RECURRENCE-ID") if series else None
    recurrence_id = (
        _utc(_as_datetime(rid_prop.dt, default_tz)).strftime("%Y%m%dT%H%M%SZ")
        if rid_prop is not None
        else None
    )
    status = _text(component, "STATUS").upper()
    return MeetingItem(
        key=meeting_key(uid, recurrence_id),
        uid=uid,
        recurrence_id=recurrence_id,
        provider_id=provider_id,
        subject=" ".join(_text(component, "SUMMARY").split()),
        start=start,
        end=end,
        participants=_participants(component),
        cancelled=status == "CANCELLED" or method == "CANCEL",
        private=_text(component, "CLASS").upper() in _PRIVATE_CLASSES,
        description=_text(component, "DESCRIPTION"),
        location=_text(component, "LOCATION"),
        method=method,
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


def _event_problem(component: Any) -> str | None:
    """Why an event cannot be a meeting, after dropping what can be read without: a
    second DTSTART, an unreadable DTEND or DURATION (the meeting then ends when it starts)."""
    for name in _SINGLE:
        value = component.get(name)
        if isinstance(value, list):
            component.pop(name)
            if value:
                component[name] = value[0]
    uid = _text(component, "UID") or "without UID"
    dtstart = component.get("DTSTART")
    if dtstart is None:
        return f"event {uid}: no DTSTART"
    try:
        _as_datetime(dtstart.dt, UTC)
    except Exception as exc:
        return f"event {uid}: DTSTART {describe(exc)}"
    if not _text(component, "UID").strip() and component.get(SYNCD_TASK_PROP) is None:
        return "event without UID: it cannot be told apart from others"
    for name in ("DTEND", "DURATION"):
        if component.get(name) is not None:
            try:
                value = component.get(name).dt
                if name == "DTEND":
                    _as_datetime(value, UTC)
                elif not isinstance(value, timedelta):
                    raise UnreadableCalendar(f"not a duration: {value!r}")
            except Exception:
                component.pop(name)
    return None


def _clean_events(cal: Any, problems: list[str]) -> None:
    """Drop the events that can never be meetings from ``cal``, saying why in ``problems``."""
    for parent in cal.walk():
        keep = []
        for sub in parent.subcomponents:
            if sub.name == "VEVENT":
                try:
                    problem = _event_problem(sub)
                except Exception as exc:
                    problem = f"event {_text(sub, 'UID') or 'without UID'}: {describe(exc)}"
                if problem:
                    problems.append(problem)
                    continue
            keep.append(sub)
        parent.subcomponents[:] = keep


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


class _LazyRule:
    """A dateutil rule (or rule set) whose ``between`` yields one occurrence at a time and
    stops past a number of steps, where dateutil's builds the list of all of them."""

    def __init__(self, rule: Any, steps: list[int], cap: int, uid: str) -> None:
        self.rule = rule
        self.until = getattr(rule, "until", None)  # recurring-ical-events reads it
        self.steps, self.cap, self.uid = steps, cap, uid

    def between(self, after: Any, before: Any, inc: bool = False, count: int = 1) -> Any:
        for when in self.rule:
            self.steps[0] += 1
            if self.steps[0] > self.cap:
                raise OverLimit(
                    "occurrences",
                    f"event {self.uid} repeats over {self.cap} times before the window ends",
                    f"{self.cap // STEPS_PER_OCCURRENCE}, and {STEPS_PER_OCCURRENCE} times that "
                    "before the window",
                )
            if when > before or (not inc and when == before):
                return
            if when > after or (inc and when == after):
                yield when


def _lazy(series: Any, uid: str, limits: LimitSettings) -> None:
    """Make one series of recurring-ical-events expand lazily, within a number of steps."""
    recurrence = getattr(series, "recurrence", None)
    if not getattr(recurrence, "has_core", False):
        return  # no rule: its occurrences are its components
    rules = recurrence.rrules  # type: ignore[union-attr]
    steps = [0]
    cap = limits.occurrences * STEPS_PER_OCCURRENCE
    rules[:] = [r if isinstance(r, _LazyRule) else _LazyRule(r, steps, cap, uid) for r in rules]


def _series_of(cal: Any, problems: list[str]) -> list[Any]:
    """The series of ``cal``'s events (recurring-ical-events). When one cannot be built,
    each UID is tried on its own, so one broken series costs only itself."""
    try:
        return list(recurring_ical_events.of(cal).series)
    except Exception as exc:
        whole = exc
    timezones = [c for c in cal.subcomponents if c.name == "VTIMEZONE"]
    by_uid: dict[str, list[Any]] = {}
    for component in cal.subcomponents:
        if component.name == "VEVENT":
            by_uid.setdefault(_text(component, "UID"), []).append(component)
    if len(by_uid) < 2:
        problems.append(f"cannot expand its events: {describe(whole)}")
        return []
    found: list[Any] = []
    for uid, components in by_uid.items():
        one = icalendar.Calendar()
        for component in [*timezones, *components]:
            one.add_component(component)
        try:
            found.extend(recurring_ical_events.of(one).series)
        except Exception as exc:
            problems.append(f"event {uid or 'without UID'}: cannot expand: {describe(exc)}")
    return found


def _expand(
    series: Any,
    window: tuple[datetime, datetime],
    limits: LimitSettings,
    problems: list[str],
    first: bool = False,
) -> list[Any]:
    """The occurrences of one series inside ``window``, as components (only the first one
    with ``first``); none, and a problem naming the limit, when there are more than
    ``limits.occurrences``."""
    uid = str(getattr(series, "uid", "") or "") or "without UID"
    try:
        _lazy(series, uid, limits)
        found = list(itertools.islice(series.between(*window), limits.occurrences + 1))
        check(
            "occurrences",
            len(found),
            limits.occurrences,
            f"event {uid} has more than {limits.occurrences} occurrences between "
            f"{window[0]:%Y-%m-%d} and {window[1]:%Y-%m-%d}",
        )
        return [occurrence.as_component(False) for occurrence in found[: 1 if first else None]]
    except OverLimit as exc:
        problems.append(str(exc))
    except Exception as exc:
        problems.append(f"event {uid}: cannot expand: {describe(exc)}")
    return []


def _occurrences(
    cal: Any,
    window: tuple[datetime, datetime],
    limits: LimitSettings,
    problems: list[str],
    before: int = 0,
) -> list[Any]:
    """The occurrences of ``cal``'s events inside ``window``, series by series. With the
    ``before`` of earlier calendars of the object, they are held to
    :data:`SERIES_PER_OBJECT` times the limit of one series (else :class:`OverLimit`)."""
    found: list[Any] = []
    cap = limits.occurrences * SERIES_PER_OBJECT
    for series in _series_of(cal, problems):
        found.extend(_expand(series, window, limits, problems))
        if before + len(found) > cap:
            raise OverLimit(
                "occurrences",
                f"the calendar object has over {cap} occurrences between "
                f"{window[0]:%Y-%m-%d} and {window[1]:%Y-%m-%d}",
                f"{limits.occurrences} an event, {SERIES_PER_OBJECT} times that an object",
            )
    return found


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
    items: list[MeetingItem] = []
    for cal in calendars:
        try:
            method = _text(cal, "METHOD").upper() or None
            _clean_events(cal, [])
            series: dict[str, list[Any]] = {}
            if any(c.get("RRULE") is not None for c in cal.walk("VEVENT")):
                for one in _series_of(cal, []):
                    series.setdefault(str(getattr(one, "uid", "")), []).append(one)
        except Exception:
            continue
        for component in cal.walk("VEVENT"):
            try:
                item = _invitation(component, series, provider_id, method, lim)
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
        first = _utc(_as_datetime(component.get("DTSTART").dt, UTC))
        if not EARLIEST <= first <= latest():
            return None
        uid = _text(component, "UID")
        problems: list[str] = []
        occurrences = [
            occurrence
            for one in series.get(uid, [])
            for occurrence in _expand(
                one, (first, first + timedelta(days=1)), limits, problems, True
            )
            if _text(occurrence, "UID") == uid
        ]
        over = [p for p in problems if p.startswith("over limits.")]
        if over:
            log.warning(
                "%s: an invitation is left out, the mail is logged: %s", provider_id, over[0]
            )
            return None
        component = occurrences[0] if occurrences else component
    try:
        return _meeting(component, provider_id, UTC, method, component.get("RRULE") is None)
    except UnreadableCalendar:
        return None


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
    calendars = _parse(data)
    uids: set[str] = set()
    states: list[TaskState] = []
    meetings: list[MeetingItem] = []
    problems: list[str] = []
    expanded = 0  # occurrences of the whole object
    for cal in calendars:
        for component in cal.walk():
            uid = component.get("UID")
            if uid is not None:
                uids.update(str(u) for u in (uid if isinstance(uid, list) else [uid]))
            if component.name in ("VTODO", "VEVENT") and component.get(SYNCD_TASK_PROP) is not None:
                status = _TODO_STATUS.get(_text(component, "STATUS").upper(), "open")
                task_uid = _text(component, SYNCD_TASK_PROP)
                states.append(TaskState(uid=task_uid, status=status))
        _clean_events(cal, problems)
        series = {
            _text(c, "UID")
            for c in cal.walk("VEVENT")
            if c.get("RRULE") is not None
            or c.get("RDATE") is not None
            or c.get("RECURRENCE-ID") is not None
        }
        occurrences = _occurrences(cal, window, limits, problems, expanded)
        expanded += len(occurrences)
        for component in occurrences:
            uid = _text(component, "UID")
            try:
                item = _meeting(component, provider_id, default_tz, None, uid in series)
            except Exception as exc:
                problems.append(short(f"event {uid or 'without UID'}: {describe(exc)}"))
                continue
            if item is not None:
                meetings.append(item)
    return CalendarObject(meetings, states, uids, list(dict.fromkeys(problems)))


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


def reread(data: bytes, ctx: RereadContext) -> Reread:
    """The ``ical`` re-parser (``syncd quarantine retry``): a kept calendar object read
    again; the events it still cannot read stay quarantined with their problem."""
    found = read_calendar(data, ctx.provider_id, ctx.window, limits=ctx.limits)
    problems = list(found.problems)
    return Reread(tuple(found.meetings), "; ".join(problems) if problems else None)
