"""Graph JSON -> items: the pure parsing of the Microsoft kind, with no network and no msal.

A message resource (as message delta returns it) becomes a :class:`MailItem`
(:func:`mail_item`), an event resource (as calendarView delta returns it) a
:class:`MeetingItem` (:func:`meeting_item`). Both are held to the config's ``[limits]``
first (:func:`check_resource`) and raise ValueError (only) when nothing can be logged; the
unreadable resource is then kept as JSON (:func:`quarantined`, format ``graph-message`` or
``graph-event``) for the re-parsers :func:`reread_message` and :func:`reread_event`
(``syncd quarantine retry``). :func:`delta_query` is what a first message delta asks for
under each body policy.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

from syncd.config import LimitSettings
from syncd.connectors.base import Reread, RereadContext, json_object
from syncd.connectors.meetings import (
    PRIVATE_VISIBILITY,
    meeting_key,
    one_line,
    participants,
    recurrence_id,
)
from syncd.connectors.mime import bulk_signals, clean, identity, message_ids
from syncd.connectors.taskevents import is_task_uid
from syncd.items import MailItem, MeetingItem, Participant, ParticipantRole, Quarantined
from syncd.limits import check, limits_or_default, run_bounded
from syncd.matching.addresses import normalize_address

# what every body policy reads of a message; ``snippet`` adds bodyPreview (text, up to 255
# characters), ``full`` adds body, asked for as text (Prefer: outlook.body-content-type)
MESSAGE_FIELDS = (
    "internetMessageId",
    "conversationId",
    "subject",
    "from",
    "toRecipients",
    "ccRecipients",
    "bccRecipients",
    "sentDateTime",
    "receivedDateTime",
    "categories",
    "isDraft",
    "internetMessageHeaders",
)
BODY_FIELDS = {"metadata": (), "snippet": ("bodyPreview",), "full": ("body",)}
# a v1.0 message has no ``sensitivity`` property (only an event has one): it is the MAPI
# property PidTagSensitivity, read by expanding it on the delta request itself (message
# delta supports $select, $top and $expand [message-delta.md])
PID_TAG_SENSITIVITY = "Integer 0x0036"
EXPAND = f"singleValueExtendedProperties($filter=id eq '{PID_TAG_SENSITIVITY}')"
# PidTagSensitivity: 0 normal, 1 personal, 2 private, 3 confidential; as for the RFC 2156
# Sensitivity header (mime.py), Private and Company-Confidential keep an item out of the CRM
PRIVATE_SENSITIVITY = frozenset({2, 3})
PRIVATE_HEADER = frozenset({"private", "company-confidential", "confidential"})
_TAG_RE = re.compile(r"<[^<>]*>")  # never [^>]+: quadratic on a body of "<<<<..."
MAX_RAW = 10 << 20  # the largest item JSON kept in the quarantine (the recorder keeps as much)
MAIL_ROLES: tuple[tuple[str, ParticipantRole], ...] = (
    ("from", "from"),
    ("toRecipients", "to"),
    ("ccRecipients", "cc"),
    ("bccRecipients", "bcc"),
)
SERIES_MEMBERS = frozenset({"occurrence", "exception"})  # event types with a recurrence id

WINDOWS_ZONES = {
    "UTC": "UTC",
    "Coordinated Universal Time": "UTC",
    "Pacific Standard Time": "America/Los_Angeles",
    "Mountain Standard Time": "America/Denver",
    "Central Standard Time": "America/Chicago",
    "Eastern Standard Time": "America/New_York",
    "GMT Standard Time": "Europe/London",
    "W. Europe Standard Time": "Europe/Berlin",
    "Romance Standard Time": "Europe/Paris",
    "Central Europe Standard Time": "Europe/Budapest",
    "Tokyo Standard Time": "Asia/Tokyo",
    "India Standard Time": "Asia/Kolkata",
    "AUS Eastern Standard Time": "Australia/Sydney",
}


def delta_query(body_policy: str) -> dict[str, str]:
    """The query of a first message delta request for ``body_policy``."""
    fields = (*MESSAGE_FIELDS, *BODY_FIELDS.get(body_policy, BODY_FIELDS["snippet"]))
    return {"$select": ",".join(fields), "$expand": EXPAND}


SELECT = delta_query("snippet")["$select"]  # the default policy's $select (bench/)


def error_text(body: Any) -> tuple[str, str]:
    """(code, message) of a Graph or sign-in error body."""
    error = body.get("error", {}) if isinstance(body, dict) else {}
    if isinstance(error, dict):
        return str(error.get("code", "")), str(error.get("message", ""))
    return str(error), str(body.get("error_description", "")).split("\r\n")[0]


# --- limits and the quarantine ----------------------------------------------------------------


def json_size(value: Any, cap: int) -> int:
    """About the size of ``value`` written as JSON (characters, not bytes), counted only
    until it passes ``cap``: a walk of the parsed resource, never a copy of it."""
    total, stack = 0, [value]
    while stack and total <= cap:
        item = stack.pop()
        if isinstance(item, str):
            total += len(item) + 2
        elif isinstance(item, dict):
            total += 2 + sum(len(str(k)) + 4 for k in item)
            stack.extend(item.values())
        elif isinstance(item, list):
            total += 2 + len(item)
            stack.extend(item)
        else:
            total += 8
    return total


def check_resource(resource: dict[str, Any], limits: LimitSettings, what: str) -> None:
    """The limits a Graph resource is held to before it is read: its size as JSON
    (``message_bytes``) and its number of internet headers (``headers``)."""
    check(
        "message_bytes",
        json_size(resource, limits.message_bytes),
        limits.message_bytes,
        f"the {what} is over {{size}} as JSON",
    )
    headers = resource.get("internetMessageHeaders")
    if isinstance(headers, list):
        check("headers", len(headers), limits.headers, f"the {what} has {{n}} header fields")


def quarantined(resource: Any, reason: str, format: str) -> Quarantined:
    """An item that could not be read, with its JSON kept (``format`` graph-message or
    graph-event) so that ``syncd quarantine retry`` can parse it again; a private one, or
    one too large, is kept with its reason only."""
    if not isinstance(resource, dict):
        resource = {"value": resource}
    provider_id = str(resource.get("id", "?"))
    if is_private(resource) if format == "graph-message" else _event_private(resource):
        return Quarantined(provider_id, f"{reason} (marked private: its content is not kept)")
    raw = json.dumps(resource, ensure_ascii=False).encode("utf-8")
    if len(raw) > MAX_RAW:
        return Quarantined(provider_id, f"{reason} (too large to keep: {len(raw)} bytes)")
    return Quarantined(provider_id, reason, raw=raw, format=format)


def reread_message(data: bytes, ctx: RereadContext) -> Reread:
    """The ``graph-message`` re-parser: a kept Graph message resource read again."""
    message = json_object(data, "Graph message")
    if "@removed" in message or message.get("isDraft"):
        return Reread(())  # as the connector: a deletion or a draft is never logged
    return Reread((mail_item(message, ctx.body_policy, limits=ctx.limits),))


def reread_event(data: bytes, ctx: RereadContext) -> Reread:
    """The ``graph-event`` re-parser: a kept Graph event resource read again."""
    event = json_object(data, "Graph event")
    if "@removed" in event or is_task_uid(str(event.get("transactionId") or "")):
        return Reread(())  # as the connector: a removal or syncd's own task is no meeting
    return Reread((meeting_item(event, limits=ctx.limits),))


# --- messages ---------------------------------------------------------------------------------


def mail_item(
    message: dict[str, Any],
    body_policy: str = "snippet",
    *,
    limits: LimitSettings | None = None,
) -> MailItem:
    """A Graph message resource (as message delta returns it) -> :class:`MailItem`. Pure:
    ``body_policy`` (metadata, snippet, full) says which text goes into the item. Internet
    headers add threading, bulk and sensitivity signals; ``conversationId`` is the
    provider's thread key. Raises ValueError (only) when nothing can be logged, and
    :class:`syncd.limits.OverLimit` (a ValueError) when it is over ``limits`` (None: the
    defaults) or its reading takes over ``parse_seconds``."""
    lim = limits_or_default(limits)
    try:
        check_resource(message, lim, "message")
        return run_bounded(lim.parse_seconds, _mail_item, message, body_policy)
    except ValueError:
        raise
    except (KeyError, TypeError, AttributeError) as exc:
        raise ValueError(f"not a readable Graph message ({exc.__class__.__name__}: {exc})") from exc


def _mail_item(message: dict[str, Any], body_policy: str) -> MailItem:
    headers = _headers(message)
    people = _participants(message)
    if not people:
        raise ValueError("no From, To or Cc address that can be read")
    subject = " ".join(clean(str(message.get("subject") or "")).split())
    sent_at = _when(message.get("sentDateTime")) or _when(message.get("receivedDateTime"))
    if sent_at is None:
        raise ValueError(f"no usable date (sentDateTime {message.get('sentDateTime')!r})")
    ids = message_ids(message.get("internetMessageId") or headers.get("message-id"))
    message_id = ids[0] if ids else None
    key, thread_key, related = identity(
        message_id,
        message_ids(headers.get("in-reply-to")),
        message_ids(headers.get("references")),
        people,
        sent_at.isoformat(),
        subject,
    )
    return MailItem(
        key=key,
        provider_id=str(message["id"]),
        message_id=message_id,
        subject=subject,
        sent_at=sent_at.astimezone(UTC),
        participants=tuple(people),
        thread_key=thread_key,
        related_keys=related,
        provider_thread_id=message.get("conversationId"),
        body=_body_text(message, body_policy),
        **bulk_signals(headers),
        private=is_private(message),
        labels=tuple(str(c) for c in message.get("categories") or ()),
    )


def _body_text(message: dict[str, Any], body_policy: str) -> str:
    """The text the policy asked for, as the MIME connectors put it in MailItem.body: the
    matcher looks for [OPP-n] tags in it and the recorder stores its snippet (and, for
    ``full``, the text itself); a snippet is all the policy allows, and all that was read."""
    if body_policy == "snippet":
        return clean(str(message.get("bodyPreview") or ""))
    if body_policy != "full":
        return ""
    body = message.get("body") or {}
    text = clean(str(body.get("content") or ""))
    if str(body.get("contentType", "text")).lower() == "html":  # a server ignoring Prefer
        text = _TAG_RE.sub(" ", text)
    return text


def _participants(message: dict[str, Any]) -> list[Participant]:
    """From, To, Cc and Bcc as participants: addresses normalised, one per address and role."""
    people: list[Participant] = []
    seen: set[tuple[str, str]] = set()
    for key, role in MAIL_ROLES:
        value = message.get(key) or []
        for entry in [value] if isinstance(value, dict) else value:
            info = entry.get("emailAddress", {})
            address = normalize_address(clean(str(info.get("address", ""))))
            if address and (address, role) not in seen:
                seen.add((address, role))
                name = clean(str(info.get("name") or ""))
                people.append(Participant(address, "" if name == address else name, role))
    return people


def _when(value: str | None) -> datetime | None:
    if not value:
        return None
    try:
        stamp = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return stamp if stamp.tzinfo else stamp.replace(tzinfo=UTC)


def _sensitivity(message: dict[str, Any]) -> int | None:
    """PidTagSensitivity from the expanded single-value extended properties (Graph echoes
    the id normalised, e.g. ``Integer 0x36``; the value is a string)."""
    for prop in message.get("singleValueExtendedProperties") or []:
        kind, _, tag = str(prop.get("id", "")).strip().partition(" ")
        try:
            if kind.lower() == "integer" and int(tag.strip(), 16) == 0x36:
                return int(str(prop.get("value", "")).strip())
        except ValueError:
            continue
    return None


def _headers(message: dict[str, Any]) -> dict[str, str]:
    """Internet headers (present only on mail that came from outside), lower-cased names,
    first value of each."""
    headers: dict[str, str] = {}
    for header in message.get("internetMessageHeaders") or []:
        headers.setdefault(str(header.get("name", "")).lower(), clean(str(header.get("value", ""))))
    return headers


def is_private(message: dict[str, Any]) -> bool:
    """A message marked private or confidential, by PidTagSensitivity (Outlook's setting) or
    by the RFC 2156 ``Sensitivity`` header (mail from outside), as mime.py reads it. Never
    raises: it decides whether anything of an unreadable message may be kept."""
    try:
        if _sensitivity(message) in PRIVATE_SENSITIVITY:
            return True
        value = _headers(message).get("sensitivity", "")
        return " ".join(value.split()).lower() in PRIVATE_HEADER
    except (AttributeError, TypeError, ValueError):
        return False


# --- events -----------------------------------------------------------------------------------


def graph_time(value: dict[str, Any]) -> datetime:
    """A Graph dateTimeTimeZone (we ask for UTC, but a zone name is honoured) -> UTC."""
    zone_name = str(value.get("timeZone") or "UTC")
    try:
        zone = ZoneInfo(WINDOWS_ZONES.get(zone_name, zone_name))
    except (KeyError, ValueError):
        raise ValueError(f"unknown time zone {zone_name!r}") from None
    stamp = datetime.fromisoformat(str(value["dateTime"])[:26].rstrip("Z"))
    return (stamp if stamp.tzinfo else stamp.replace(tzinfo=zone)).astimezone(UTC)


def _event_private(event: dict[str, Any]) -> bool:
    """An event's own ``sensitivity`` (private or confidential keeps it out of the CRM)."""
    return str(event.get("sensitivity", "")).lower() in PRIVATE_VISIBILITY


def meeting_item(event: dict[str, Any], *, limits: LimitSettings | None = None) -> MeetingItem:
    """A Graph event resource (as calendarView delta returns it) -> :class:`MeetingItem`.
    Pure. Raises ValueError (only) when it cannot be read, or is over ``limits``
    (:class:`syncd.limits.OverLimit`; Graph expands recurring events itself, so only the
    size of one event and the time bound apply)."""
    lim = limits_or_default(limits)
    try:
        check_resource(event, lim, "event")
        return run_bounded(lim.parse_seconds, _meeting_item, event)
    except ValueError:
        raise
    except (KeyError, TypeError, AttributeError) as exc:
        raise ValueError(f"not a readable Graph event ({exc.__class__.__name__}: {exc})") from exc


def _meeting_item(event: dict[str, Any]) -> MeetingItem:
    uid = str(event.get("iCalUId") or event["id"])
    start, end = graph_time(event["start"]), graph_time(event["end"])
    rid = _recurrence(event, start)
    return MeetingItem(
        key=meeting_key(uid, rid),
        uid=uid,
        recurrence_id=rid,
        provider_id=str(event["id"]),
        subject=one_line(str(event.get("subject") or "")),
        start=start,
        end=end,
        participants=_event_participants(event),
        cancelled=bool(event.get("isCancelled")),
        private=_event_private(event),
        description=str(event.get("bodyPreview") or ""),
        labels=tuple(str(c) for c in event.get("categories") or ()),
    )


def _recurrence(event: dict[str, Any], start: datetime) -> str | None:
    """The recurrence id of one occurrence (or exception) of a series: its ``originalStart``,
    the start it had before it was moved (an ISO 8601 time, always UTC), else its start;
    None for a single event (or the series master, which calendarView never returns)."""
    if event.get("type") not in SERIES_MEMBERS:
        return None
    original = event.get("originalStart")
    if not original:
        return recurrence_id(start)
    try:
        return recurrence_id(datetime.fromisoformat(str(original)))
    except ValueError:
        raise ValueError(f"unreadable originalStart {original!r}") from None


def _event_participants(event: dict[str, Any]) -> tuple[Participant, ...]:
    organizer = _email_address(event.get("organizer", {}))
    return participants(organizer, (_email_address(a) for a in event.get("attendees") or []))


def _email_address(recipient: dict[str, Any]) -> tuple[str, str]:
    """(address, name) of a Graph recipient (``{"emailAddress": {"address", "name"}}``)."""
    info = recipient.get("emailAddress", {})
    return str(info.get("address") or ""), str(info.get("name") or "")
