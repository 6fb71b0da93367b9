"""Google's JSON read into syncd's items: pure functions, no network, no google-auth.

Owns what a Gmail message resource, a history record, a label listing and a Calendar event
mean to syncd: a message's size check and its raw bytes (``format=raw``), the messages a
history record asks to read, a user label's name, an event as a :class:`MeetingItem`
(identity and participants by :mod:`syncd.connectors.meetings`), what an event says of one
of syncd's own tasks, and a task as the event written for it (its id chosen in advance).
Field names are those of ``gmail.v1.json`` and ``calendar.v3.json`` (the discovery
documents the client library is built from).
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
from collections.abc import Callable, Iterator, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from syncd.config import LimitSettings, ReadLimits
from syncd.connectors.meetings import (
    PRIVATE_VISIBILITY,
    meeting_key,
    one_line,
    participants,
    recurrence_id,
)
from syncd.connectors.mime import UnreadableMessage, parse_message
from syncd.connectors.taskevents import EVENT_MINUTES, event_title, read_back
from syncd.items import MailItem, MeetingItem, Quarantined, TaskItem, TaskState
from syncd.limits import OverLimit, check

NEVER_READ = frozenset({"SPAM", "TRASH", "CHAT", "DRAFT"})
RESTORED = frozenset({"SPAM", "TRASH"})  # a message taken out of these is read like a new one
TASK_PROPERTY = "syncdTask"  # the private extended property stamping syncd's task events


def reason(exc: BaseException) -> str:
    """An exception as a quarantine reason."""
    return f"{exc.__class__.__name__}: {exc}"


# --- mail -------------------------------------------------------------------------------------


def labels_by_id(response: Mapping[str, Any]) -> dict[str, tuple[str, bool]]:
    """``users.labels.list`` -> label id -> (its name, whether it is a user label)."""
    labels: dict[str, tuple[str, bool]] = {}
    for label in response.get("labels", []):
        labels[str(label["id"])] = (
            str(label.get("name") or label["id"]),
            label.get("type") == "user",
        )
    return labels


def never_read(message: Mapping[str, Any]) -> bool:
    """A message in Spam, Trash, Chat or the drafts: never read."""
    return bool(NEVER_READ & set(message.get("labelIds", [])))


def to_read(record: Mapping[str, Any], is_user_label: Callable[[str], bool]) -> Iterator[str]:
    """The messages one history record asks to read (a record may change several messages
    in several ways [History in gmail.v1.json]): new ones, those taken out of Spam or Trash,
    and those given a label of the user's. Their labels are checked again when they are
    read (a message moved from Spam to Trash stays unread)."""
    for added in record.get("messagesAdded", []):
        yield str(added["message"]["id"])
    for removed in record.get("labelsRemoved", []):
        if RESTORED & set(removed.get("labelIds", [])):
            yield str(removed["message"]["id"])
    for labelled in record.get("labelsAdded", []):
        if any(is_user_label(i) for i in labelled.get("labelIds", [])):
            yield str(labelled["message"]["id"])


def over_size(message: Mapping[str, Any], length: int, limits: LimitSettings) -> str | None:
    """Why a message is not read, when it is over ``limits.message_bytes``: by its raw
    length (before it is decoded), else by Gmail's ``sizeEstimate``."""
    try:
        size = length or int(message.get("sizeEstimate") or 0)
        check("message_bytes", size, limits.message_bytes, "the message is {size}")
    except OverLimit as exc:
        return str(exc)
    except (TypeError, ValueError):
        return None
    return None


def unbase64(value: str) -> bytes:
    """Gmail's ``raw``: base64url, with or without its padding."""
    return base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))


def raw_length(encoded: object) -> int:
    """The bytes a message's base64 ``raw`` decodes to, about (0 without one)."""
    return len(encoded) * 3 // 4 if isinstance(encoded, str) else 0


def received(message: Mapping[str, Any]) -> datetime:
    """A message's ``internalDate`` (milliseconds since the epoch), in UTC."""
    return datetime.fromtimestamp(int(message.get("internalDate", "0")) / 1000, UTC)


def read_message(
    message_id: str, message: dict[str, Any], limits: LimitSettings
) -> tuple[MailItem | Quarantined, int]:
    """A ``messages.get format=raw`` resource -> (the item, or why it is quarantined; the
    raw length read). ``raw`` is taken out of ``message``, so its text is let go once it
    is decoded. One over ``limits.message_bytes`` is not decoded; one that cannot be read
    is quarantined with its bytes, as ``rfc822``. The item carries Gmail's threadId as a
    second thread key; its labels are the caller's (they need the label listing)."""
    encoded = message.pop("raw", None)
    length = raw_length(encoded)
    over = over_size(message, length, limits)
    if over is not None:
        return Quarantined(message_id, over), length
    data: bytes | None = None
    try:  # no message can stop the mailbox: what cannot be read is quarantined
        if not isinstance(encoded, str):
            raise KeyError("raw")
        data, encoded = unbase64(encoded), None
        item = parse_message(data, message_id, received(message), limits=limits)
    except Exception as exc:
        why = str(exc) if isinstance(exc, UnreadableMessage) else reason(exc)
        return Quarantined(message_id, why, data, "rfc822" if data is not None else None), length
    raw = data if isinstance(limits, ReadLimits) and limits.keep_raw else None  # a dropbox's
    return dataclasses.replace(item, provider_thread_id=message.get("threadId"), raw=raw), length


# --- calendar ---------------------------------------------------------------------------------


def google_time(value: Mapping[str, Any]) -> datetime:
    """An EventDateTime: ``dateTime`` (RFC 3339, with its offset) in UTC, or an all-day
    ``date`` as midnight UTC."""
    if "dateTime" in value:
        return datetime.fromisoformat(value["dateTime"].replace("Z", "+00:00")).astimezone(UTC)
    return datetime.fromisoformat(value["date"]).replace(tzinfo=UTC)


def rfc3339(when: datetime) -> str:
    """A time as ``timeMin``/``timeMax`` take it (UTC, with its ``Z``)."""
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def occurrence(event: Mapping[str, Any]) -> str | None:
    """The recurrence id of one occurrence of a series: its ``originalStartTime``."""
    if event.get("recurringEventId") and event.get("originalStartTime"):
        return recurrence_id(google_time(event["originalStartTime"]))
    return None


def _person(value: Mapping[str, Any]) -> tuple[str, str]:
    return str(value.get("email") or ""), str(value.get("displayName") or "")


def meeting_item(event: Mapping[str, Any]) -> MeetingItem | None:
    """A Calendar event -> a meeting keyed by its iCalUID (and the occurrence); None for
    an event without a start or an end (a tombstone carries its id only)."""
    if "start" not in event or "end" not in event:
        return None
    uid = str(event.get("iCalUID") or event.get("id", ""))
    rid = occurrence(event)
    organizer = event.get("organizer") or {}
    return MeetingItem(
        key=meeting_key(uid, rid),
        uid=uid,
        recurrence_id=rid,
        provider_id=str(event["id"]),
        subject=one_line(str(event.get("summary", ""))),
        start=google_time(event["start"]),
        end=google_time(event["end"]),
        participants=participants(
            _person(organizer) if organizer.get("email") else None,
            (_person(a) for a in event.get("attendees", [])),
        ),
        cancelled=event.get("status") == "cancelled",
        private=event.get("visibility") in PRIVATE_VISIBILITY,
        description=str(event.get("description", "")),
    )


def is_tombstone(event: Mapping[str, Any]) -> bool:
    """A deleted event as a sync token returns it: cancelled, its id only."""
    return event.get("status") == "cancelled" and "start" not in event


def task_uid(event: Mapping[str, Any]) -> str | None:
    """The uid of the syncd task an event was written for; None for any other event."""
    uid = (event.get("extendedProperties") or {}).get("private", {}).get(TASK_PROPERTY)
    return str(uid) if uid else None


def task_state(event: Mapping[str, Any]) -> TaskState | None:
    """What the user did to one of syncd's task events: deleted it (cancelled), or ticked
    it off by its title (done); None when neither, or when it is no task of syncd's."""
    uid = task_uid(event)
    if uid is None:
        return None
    return read_back(
        uid, str(event.get("summary", "")), cancelled=event.get("status") == "cancelled"
    )


def event_id(task_uid: str) -> str:
    """A Calendar event id chosen before the write (base32hex), so a retry cannot duplicate."""
    return (
        base64.b32hexencode(hashlib.sha256(task_uid.encode()).digest())
        .decode()
        .lower()
        .rstrip("=")[:40]
    )


def task_event(task: TaskItem) -> dict[str, Any]:
    """A follow-up task as a short, transparent event stamped with the task's uid (its
    ``id`` is :func:`event_id`, given on insert)."""
    due = task.due.astimezone(UTC)
    return {
        "summary": event_title(task),
        "description": task.description,
        "start": {"dateTime": rfc3339(due)},
        "end": {"dateTime": rfc3339(due + timedelta(minutes=EVENT_MINUTES))},
        "transparency": "transparent",
        "status": "cancelled" if task.status == "cancelled" else "confirmed",
        "extendedProperties": {"private": {TASK_PROPERTY: task.uid}},
    }
