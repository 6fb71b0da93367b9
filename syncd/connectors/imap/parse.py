"""What the IMAP and CalDAV servers send, read without a network: pure functions and data.

IMAP: the FETCH items a body policy asks for and a FETCH answer read as a mail item
(:func:`mail_item`), whether it may hold an invitation it does not show
(:func:`needs_structure`) and whether a BODYSTRUCTURE holds one (:func:`has_calendar_part`),
a LIST answer as the folders to read (:func:`chosen_folders`), and the IDLE answers that
announce new mail (:func:`announces_mail`). CalDAV: the objects of one sync-collection
report (RFC 6578) read as meetings, task states and removals (:class:`CalendarDelta`).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from syncd.config import LimitSettings
from syncd.connectors.base import ConnectorError, too_large
from syncd.connectors.ical import UnreadableCalendar, read_calendar
from syncd.connectors.mime import read_message
from syncd.connectors.reasons import describe, quarantined
from syncd.connectors.taskevents import is_task_uid
from syncd.items import EARLIEST, MailItem, MeetingItem, Quarantined, TaskState

SENT_NAMES = ("Sent", "Sent Items", "Sent Messages", "INBOX.Sent", "INBOX/Sent", "Sent Mail")
SNIPPET_BYTES = 16384
HEADER_BYTES = 32 * 1024  # of a header, asked with the first FETCH; a longer one after it
# the time a message is first read with: one whose date comes out as this has no usable Date
# or Received header of its own, and is read again with its INTERNALDATE, asked for it then
UNDATED = EARLIEST

# --- IMAP ---------------------------------------------------------------------------------------


def fetch_attributes(policy: str, headers_only: bool = False) -> list[bytes]:
    """The FETCH items a body policy needs, always ``BODY.PEEK`` (a message stays unread):
    the whole message (``full``, asked once its RFC822.SIZE is known to be within the
    limit), or the size with at most :data:`HEADER_BYTES` of the header (``metadata``) and
    the start of the text (``snippet``), bounded before anything is known of the message.
    No BODYSTRUCTURE: it is asked after, only for the messages whose answer cannot rule out
    an invitation (:func:`needs_structure`); no INTERNALDATE: it is asked after, only for the
    messages without a date of their own (:data:`UNDATED`).

    ``headers_only`` (a reader of some header fields alone: the historical import's
    digest): at most :data:`HEADER_BYTES` of the header and nothing else, no size either:
    nothing more of a message is fetched but the rest of a cut header. (Not the fields
    alone, ``HEADER.FIELDS``: imapclient reads the field list the server echoes in each
    answer a character at a time, which costs more than the header's other fields.)"""
    if headers_only:
        return [f"BODY.PEEK[HEADER]<0.{HEADER_BYTES}>".encode()]
    if policy == "full":
        return [b"BODY.PEEK[]"]
    header = [b"RFC822.SIZE", f"BODY.PEEK[HEADER]<0.{HEADER_BYTES}>".encode()]
    if policy == "snippet":
        return [*header, f"BODY.PEEK[TEXT]<0.{SNIPPET_BYTES}>".encode()]
    return header


# a header's Content-Type fields, with their folded lines (RFC 5322 2.2.3)
_CONTENT_TYPE = re.compile(
    rb"^content-type[ \t]*:(.*(?:\r?\n[ \t].*)*)", re.IGNORECASE | re.MULTILINE
)
# what the MIME parser reads invitations from (syncd.connectors.mime): a multipart message
# or a calendar one
_MAY_HOLD_INVITATION = re.compile(rb"multipart|calendar", re.IGNORECASE)


def needs_structure(data: Mapping[bytes, Any], policy: str) -> bool:
    """Whether a message's first FETCH answer (:func:`fetch_attributes`) leaves open that it
    holds an invitation the answer does not show, so that its BODYSTRUCTURE must be asked
    (:func:`has_calendar_part`). Not when its header's Content-Type is neither multipart nor
    calendar (no Content-Type is text/plain, RFC 2045 5.2), nor when the ``snippet`` answer
    holds the whole text (shorter than the cut: every part is there to be read); always
    when the answer has no header to tell."""
    if policy == "full":
        return False
    header = data.get(b"BODY[HEADER]")
    if not isinstance(header, (bytes, bytearray)):
        return True
    if not any(_MAY_HOLD_INVITATION.search(v) for v in _CONTENT_TYPE.findall(header)):
        return False
    if policy == "snippet":
        text = data.get(b"BODY[TEXT]<0>")
        return not (isinstance(text, (bytes, bytearray)) and len(text) < SNIPPET_BYTES)
    return True


def has_calendar_part(structure: Any) -> bool:
    """Whether a BODYSTRUCTURE (RFC 3501 §7.4.2), as imapclient parses it, holds a
    ``text/calendar`` part at any depth."""
    if not isinstance(structure, (list, tuple)):
        return False
    if (
        len(structure) >= 2
        and isinstance(structure[0], bytes)
        and isinstance(structure[1], bytes)
        and structure[0].lower() == b"text"
        and structure[1].lower() == b"calendar"
    ):
        return True
    return any(has_calendar_part(part) for part in structure)


def provider_id(folder: str, uidvalidity: int, uid: int) -> str:
    """A message's id: its folder, UIDVALIDITY and UID (unique for as long as it is there)."""
    return f"{folder}/{uidvalidity}/{uid}"


def _message_bytes(data: Mapping[bytes, Any]) -> bytes | bytearray:
    raw = data.get(b"BODY[]")
    if raw is None:
        raw = (data.get(b"BODY[HEADER]") or b"") + (data.get(b"BODY[TEXT]<0>") or b"")
    if not isinstance(raw, (bytes, bytearray)):
        raise TypeError(f"the message is a {type(raw).__name__}, not bytes")
    return raw


def _internal_date(data: Mapping[bytes, Any]) -> datetime:
    """The INTERNALDATE (the day it arrived), in UTC where the server gave no zone; now where
    the server gave none at all; :data:`UNDATED` where it was not asked yet."""
    if b"INTERNALDATE" not in data:
        return UNDATED
    when = data[b"INTERNALDATE"]
    if not isinstance(when, datetime):
        return datetime.now(UTC)
    return when.replace(tzinfo=UTC) if when.tzinfo is None else when


def undated(item: MailItem | Quarantined, data: Mapping[bytes, Any]) -> bool:
    """Whether a message was read without its INTERNALDATE and needs it (no date of its
    own): it is read again once the server gave it."""
    return isinstance(item, MailItem) and item.sent_at == UNDATED and b"INTERNALDATE" not in data


def mail_item(pid: str, data: Mapping[bytes, Any], limits: LimitSettings) -> MailItem | Quarantined:
    """One message's FETCH answer as a mail item: the whole message, or its header and the
    start of its text. A message larger than ``limits.message_bytes`` (larger than its
    RFC822.SIZE said), an answer of an unexpected shape, or a message the MIME parser cannot
    read is quarantined: this message only."""
    try:
        raw = _message_bytes(data)
        if len(raw) > limits.message_bytes:
            return Quarantined(pid, too_large(len(raw), limits.message_bytes))
        when = _internal_date(data)
    except Exception as exc:  # a FETCH answer of an unexpected shape: this message only
        return Quarantined(pid, f"unexpected FETCH response: {describe(exc)}")
    return read_message(bytes(raw), pid, when, limits=limits)


Listed = tuple[Sequence[bytes], Any, str]  # a LIST answer's line: flags, delimiter, name


def sent_folder(listed: Sequence[Listed]) -> str | None:
    """The Sent folder: the one flagged ``\\Sent`` (RFC 6154), else one of the common names."""
    flagged = next((name for flags, _sep, name in listed if b"\\Sent" in flags), None)
    if flagged is not None:
        return flagged
    names = {name for _flags, _sep, name in listed}
    return next((name for name in SENT_NAMES if name in names), None)


def chosen_folders(
    listed: Iterable[Listed], extras: Sequence[str], excluded: Iterable[str], mailbox: str
) -> list[str]:
    """The folders to read, from a LIST answer: INBOX, the Sent folder and the mailbox's
    extras, each once; an excluded one (any case) is left out, INBOX never. An extra the
    server does not have is a :class:`ConnectorError` naming the folders it has."""
    lines = list(listed)
    names = {name for _flags, _sep, name in lines}
    for extra in extras:
        if extra not in names:
            raise ConnectorError(
                f"mailbox {mailbox!r}: folder {extra!r} does not exist on the server; "
                f"folders there: {', '.join(sorted(names))}"
            )
    sent = sent_folder(lines)
    wanted = ["INBOX", *([sent] if sent else []), *extras]
    left_out = {f.lower() for f in excluded}
    return [f for f in dict.fromkeys(wanted) if f == "INBOX" or f.lower() not in left_out]


def announces_mail(responses: Iterable[Any]) -> bool:
    """Whether IDLE answers (RFC 2177), as imapclient parses them (``(n, b"EXISTS")``),
    announce new mail: an EXISTS or a RECENT."""
    return any(
        r[1] in (b"EXISTS", b"RECENT") for r in responses if isinstance(r, tuple) and len(r) > 1
    )


# --- CalDAV -------------------------------------------------------------------------------------


@dataclass
class CalendarDelta:
    """What a calendar's changes hold, object by object: the meetings and task states of the
    objects read, the objects quarantined, and the meeting UIDs removed. ``uids`` maps each
    object's href to the UIDs it held (stored in the cursor, so that a removal names them);
    it is updated as objects are read and removed."""

    uids: dict[str, list[str]]
    window: tuple[datetime, datetime]
    limits: LimitSettings
    meetings: list[MeetingItem] = field(default_factory=list)
    task_states: list[TaskState] = field(default_factory=list)
    quarantined: list[Quarantined] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        return not (self.meetings or self.task_states or self.removed or self.quarantined)

    def unloadable(self, href: str, exc: BaseException) -> None:
        """An object the library could not load: quarantined, with nothing kept."""
        self.quarantined.append(Quarantined(href, f"cannot read the object: {describe(exc)}"))

    def read(self, href: str, raw: bytes | bytearray | None) -> None:
        """One object's bytes: its meetings within the window and its task states. An empty
        one is skipped; one over ``limits.message_bytes`` is quarantined without its bytes,
        one that cannot be read with them; the events of an object that could be read are
        kept even when some others of it could not (it is quarantined with their problems)."""
        if not raw:
            return
        limit = self.limits.message_bytes
        if len(raw) > limit:  # in memory already, but nothing keeps it
            self.quarantined.append(Quarantined(href, too_large(len(raw), limit)))
            return
        data = bytes(raw)
        try:
            found = read_calendar(data, href, self.window, limits=self.limits)
        except Exception as exc:  # UnreadableCalendar, or whatever a parser raised
            reason = str(exc) if isinstance(exc, UnreadableCalendar) else describe(exc)
            self.quarantined.append(quarantined(href, reason, data, "ical"))
            return
        if found.problems:
            self.quarantined.append(quarantined(href, "; ".join(found.problems), data, "ical"))
        self.meetings.extend(found.meetings)
        self.task_states.extend(found.task_states)
        self.uids[href] = sorted(found.uids)

    def deleted(self, href: str) -> None:
        """An object the server reports deleted: its meetings are removed, and syncd's own
        tasks in it cancelled."""
        for uid in self.uids.pop(href, []):
            if is_task_uid(uid):
                self.task_states.append(TaskState(uid, "cancelled"))
            else:
                self.removed.append(uid)

    def missing(self, seen: Iterable[str]) -> None:
        """After a full read: the objects not sent again were deleted; their meetings are
        removed (syncd's own tasks in them are left as they are)."""
        kept = set(seen)
        for href in [h for h in self.uids if h not in kept]:
            self.removed.extend(u for u in self.uids.pop(href) if not is_task_uid(u))
