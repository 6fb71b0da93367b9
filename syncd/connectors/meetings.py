"""Meeting identity and participants: the conventions every calendar connector shares.

A meeting is the same meeting in every calendar that holds it, whichever provider serves
it: its key is its iCalendar UID and, for one occurrence of a series, that occurrence's
recurrence id, the *original* start of the occurrence in UTC as ``YYYYMMDDTHHMMSSZ``
(RFC 5545 RECURRENCE-ID in UTC form). Gmail (``iCalUID`` and ``originalStartTime``),
Graph (``iCalUId`` and ``originalStart``) and iCalendar (``UID`` and ``RECURRENCE-ID``)
all map to it, so the organiser's and the attendees' copies log one activity.

Participants: the organiser first, then each attendee once (by normalised address), an
attendee who is also the organiser only as the organiser.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime

from syncd.items import Participant
from syncd.matching.addresses import normalize_address

RECURRENCE_ID_FORMAT = "%Y%m%dT%H%M%SZ"
PRIVATE_VISIBILITY = frozenset({"private", "confidential"})  # iCalendar CLASS, Google, Graph


def recurrence_id(original_start: datetime) -> str:
    """The recurrence id of the occurrence that was to start at ``original_start``."""
    if original_start.tzinfo is None:
        original_start = original_start.replace(tzinfo=UTC)
    return original_start.astimezone(UTC).strftime(RECURRENCE_ID_FORMAT)


def meeting_key(uid: str, recurrence: str | None) -> str:
    """The key that makes the same meeting one activity across calendars and providers."""
    return f"ical:{uid}#{recurrence}" if recurrence else f"ical:{uid}"


def one_line(text: str) -> str:
    """A subject as logged: white space runs folded to one space, no NUL."""
    return " ".join(text.replace("\x00", "").split())


def participants(
    organizer: tuple[str, str] | None, attendees: Iterable[tuple[str, str]]
) -> tuple[Participant, ...]:
    """``(address, name)`` of the organiser and the attendees -> participants: addresses
    normalised, unusable ones dropped, each person once, the organiser first."""
    found: list[Participant] = []
    seen: set[str] = set()
    for (address, name), role in [
        *([(organizer, "organizer")] if organizer else []),
        *((a, "attendee") for a in attendees),
    ]:
        norm = normalize_address(str(address or "").removeprefix("mailto:").removeprefix("MAILTO:"))
        if norm and norm not in seen:
            seen.add(norm)
            shown = str(name or "").strip()
            found.append(Participant(norm, "" if shown.lower() == norm else shown, role))  # type: ignore[arg-type]
    return tuple(found)
