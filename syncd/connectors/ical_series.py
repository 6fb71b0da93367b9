"""Recurring events: the series of a calendar (``recurring-ical-events``) and their
occurrences inside a window, within ``limits.occurrences``.

Each series is expanded lazily, one occurrence at a time (dateutil's own ``between`` builds
a list of every occurrence, 31 million a year for ``FREQ=SECONDLY``): a series with more
than ``limits.occurrences`` occurrences in the window, or that repeats more than
:data:`STEPS_PER_OCCURRENCE` times that before the window ends, is left out whole and named
in the problems (the calendar object is quarantined with them, its other events read).
Whole, not its first N: a series that dense is no meeting with a customer (FREQ=SECONDLY,
MINUTELY, a daily one over a window of years), its first N would be a timeline that is
silently incomplete and changes as the window moves each day, and a quarantine entry says
what to raise to read it all. A calendar object whose series have more than
:data:`SERIES_PER_OBJECT` times the limit together (990 daily series in one file: 89,000
activities) is over it as a whole (:class:`OverLimit`).
"""

from __future__ import annotations

import itertools
from datetime import datetime
from typing import Any

import icalendar
import recurring_ical_events

from syncd.config import LimitSettings
from syncd.connectors.ical_events import text
from syncd.connectors.reasons import describe
from syncd.limits import OverLimit, check

# a series may repeat this many times its occurrence limit before the window ends (a daily
# meeting since 1970 is 20,000 repetitions); past that it is over limits.occurrences too
STEPS_PER_OCCURRENCE = 100
# and a calendar object (one file, one CalDAV resource: one series and its exceptions, by
# RFC 4791; an exported calendar holds many) may have this many times the occurrences of one
# series in the window; past that it is over limits.occurrences as a whole
SERIES_PER_OBJECT = 10


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


def series_uids(cal: Any) -> set[str]:
    """The UIDs of ``cal``'s events that belong to a series (a rule, extra dates, or an
    occurrence moved out of one): their occurrences are keyed by their recurrence id."""
    return {
        text(c, "UID")
        for c in cal.walk("VEVENT")
        if c.get("RRULE") is not None
        or c.get("RDATE") is not None
        or c.get("RECURRENCE-ID") is not None
    }


def series_of(cal: Any, problems: list[str]) -> list[Any]:
    """The series of ``cal``'s events (recurring-ical-events). When one cannot be built,
    each UID is tried on its own, so one broken series costs only itself."""
    try:
        return list(recurring_ical_events.of(cal).series)
    except Exception as exc:
        whole = exc
    return _series_one_by_one(cal, whole, problems)


def _series_one_by_one(cal: Any, whole: Exception, problems: list[str]) -> list[Any]:
    timezones = [c for c in cal.subcomponents if c.name == "VTIMEZONE"]
    by_uid: dict[str, list[Any]] = {}
    for component in cal.subcomponents:
        if component.name == "VEVENT":
            by_uid.setdefault(text(component, "UID"), []).append(component)
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


def recurring_by_uid(cal: Any) -> dict[str, list[Any]]:
    """The series of ``cal`` by UID, when it has a recurring event (an invitation's);
    a series that cannot be built is left out without a word."""
    found: dict[str, list[Any]] = {}
    if any(c.get("RRULE") is not None for c in cal.walk("VEVENT")):
        for one in series_of(cal, []):
            found.setdefault(str(getattr(one, "uid", "")), []).append(one)
    return found


def expand(
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


def occurrences(
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
    for series in series_of(cal, problems):
        found.extend(expand(series, window, limits, problems))
        if before + len(found) > cap:
            raise OverLimit(
                "occurrences",
                f"the calendar object has over {cap} occurrences between "
                f"{window[0]:%Y-%m-%d} and {window[1]:%Y-%m-%d}",
                f"{limits.occurrences} an event, {SERIES_PER_OBJECT} times that an object",
            )
    return found
