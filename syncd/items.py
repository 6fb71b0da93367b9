"""What connectors yield and the sync job passes on: provider-neutral, immutable.

Terminology
-----------
item
    One message (:class:`MailItem`) or one meeting occurrence (:class:`MeetingItem`),
    as read from a provider, before anything is decided about it.
key
    The item's identity across mailboxes and providers: ``mid:<message-id>`` for
    mail (or ``hash:<digest>`` when it has no Message-ID), ``ical:<uid>[#<recurrence-id>]``
    for meetings. One key is one activity, however many mailboxes see it.
provider id
    Where one mailbox keeps the item (a Maildir file name, an IMAP UID, a Gmail id).
cursor
    An opaque string a source hands back with each batch; stored after the batch.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Generic, Literal, TypeVar

SNIPPET_CHARS = 280  # what the recorder keeps of a text as the activity's snippet

# --- the words the stages share (connectors, matcher, recorder, CLI), each defined once ---
# (the CRM's own states, kinds and rules are in syncd.crm.models)

ParticipantRole = Literal["from", "to", "cc", "bcc", "organizer", "attendee", "reply-to"]
TaskStatus = Literal["open", "done", "cancelled"]
# who an item is from: an external participant (inbound), a user or the company (outbound),
# or nobody from outside at all (internal, never logged)
Direction = Literal["inbound", "outbound", "internal"]
OpportunityStatus = Literal["open", "won", "lost"]
LinkType = Literal["contact", "account", "opportunity"]
# why a link was made, strongest first (see syncd.matching.matcher)
LinkReason = Literal[
    "address", "contact", "domain", "tag", "thread", "contact-role", "account", "manual"
]  # manual: an admin's (syncd link), kept by every settling and re-match
# why an item was not logged, as ``syncd sync`` counts it (see syncd.matching.exclusions)
ExclusionReason = Literal[
    "excluded label",
    "bulk",
    "auto-reply",
    "private",
    "blocklisted",
    "internal-only",
    "no CRM participant",
    "invitation-reply",
    "outside the window",  # older than the mailbox's --since (local, imap: kept per pass)
    "deleted",  # an admin deleted it from the CRM (syncd activity delete): never again
    "nocrm",  # a salesperson removed its conversation (#nocrm to a dropbox): never again
    "refused",  # a dropbox's message from someone who is not a CRM user
    "forwarded",  # a forward to a dropbox: its originals are logged, never the forward
]


@dataclass(frozen=True)
class Participant:
    address: str  # normalised (see syncd.matching.addresses.normalize_address)
    name: str
    role: ParticipantRole


@dataclass(frozen=True)
class MeetingItem:
    key: str
    uid: str
    recurrence_id: str | None
    provider_id: str
    subject: str
    start: datetime
    end: datetime
    participants: tuple[Participant, ...]
    cancelled: bool = False
    private: bool = False
    description: str = ""
    method: str | None = None  # iTIP method when it came by mail: REQUEST, REPLY, CANCEL
    labels: tuple[str, ...] = ()  # provider categories (Outlook)

    @property
    def organizer(self) -> Participant | None:
        return next((p for p in self.participants if p.role == "organizer"), None)


@dataclass(frozen=True)
class MailItem:
    key: str
    provider_id: str
    message_id: str | None
    subject: str
    sent_at: datetime
    participants: tuple[Participant, ...]
    thread_key: str  # the thread's root Message-ID (or the item's own key)
    related_keys: tuple[str, ...] = ()  # In-Reply-To and References, as keys
    provider_thread_id: str | None = None  # e.g. Gmail threadId, a second thread key
    body: str = ""
    list_id: str | None = None
    list_unsubscribe: bool = False  # a List-Unsubscribe header (bulk to the harvest only)
    precedence: str | None = None
    auto_submitted: str | None = None
    autoreply_header: str | None = None  # X-Autoreply, X-Autorespond, ...
    private: bool = False  # Sensitivity: private/company-confidential
    labels: tuple[str, ...] = ()  # provider labels/folders (Takeout X-Gmail-Labels)
    invitations: tuple[MeetingItem, ...] = ()
    # Reply-To, read by the historical import (syncd.harvest) only: never a participant
    reply_to: tuple[Participant, ...] = ()
    # the message's bytes, kept only for a dropbox mailbox (syncd.dropbox unpacks forwards)
    raw: bytes | None = field(default=None, repr=False, compare=False)

    @property
    def sender(self) -> Participant | None:
        return next((p for p in self.participants if p.role == "from"), None)


Item = MailItem | MeetingItem
T = TypeVar("T", MailItem, MeetingItem)


# mail and meetings are believed only between these times: a date outside them is broken or
# hostile, and no rule (follow-ups, calendar windows) ever works from it
EARLIEST = datetime(1970, 1, 1, tzinfo=UTC)
FUTURE_YEARS = 5


def latest(now: datetime | None = None) -> datetime:
    """The latest date syncd believes: now + FUTURE_YEARS."""
    return (now or datetime.now(UTC)) + timedelta(days=365 * FUTURE_YEARS + 1)


# a quarantined item's bytes are kept up to this size, so `syncd quarantine retry` can read
# them again
RAW_KEPT = 10 * 1024 * 1024
KEY_LENGTH = 512  # the CRM's key columns
ADDRESS_LENGTH = 320


def fit(value: str, limit: int = KEY_LENGTH) -> str:
    """A key or id as every database stores it: one too long or holding a control character
    becomes a stable hash of itself (never a truncation, which could collide)."""
    if len(value) <= limit and value.isprintable():
        return value
    return "hash:" + hashlib.sha256(value.encode("utf-8", "surrogatepass")).hexdigest()


def conversation_keys(item: Item) -> list[str]:
    """Every key under which another item of the same conversation may name this one: its
    own key, its thread's root, what it refers to, and the provider's thread id. Two items
    sharing one of these keys are one conversation (see ``syncd.matching.matcher.settle``)."""
    if isinstance(item, MeetingItem):
        return [fit(f"ical:{item.uid}")]
    keys = [item.key, item.thread_key, *item.related_keys]
    if item.provider_thread_id:
        keys.append(f"provider-thread:{item.provider_thread_id}")
    return list(dict.fromkeys(fit(k) for k in keys))


def thread_mark(key: str) -> str:
    """How a conversation key removed with ``#nocrm`` (``syncd.dropbox``) is kept among the
    dropped items' keys: its digest (a Message-ID names its sender's domain, which
    ``syncd forget`` may be asked to forget), and every item of that conversation is
    skipped from then on."""
    return "thread:" + hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()


@dataclass(frozen=True)
class Quarantined:
    """An item a connector could not read; stored with its reason, never dropped silently."""

    provider_id: str
    reason: str
    # what was read, when it is small enough to keep, so ``syncd quarantine retry`` can parse
    # it again after an upgrade; ``format`` names the parser: rfc822, ical, graph-message, ...
    raw: bytes | None = None
    format: str | None = None


# the uids of syncd's own follow-up tasks start with this (syncd.followups makes them):
# a calendar entry with such a uid is a task, never a meeting
TASK_UID_PREFIX = "syncd-"


@dataclass(frozen=True)
class TaskState:
    """A syncd task as the user's calendar shows it now (read back from the calendar)."""

    uid: str
    status: TaskStatus
    ref: str | None = None  # the provider's id, when only that came back (a tombstone)


@dataclass(frozen=True)
class Cursor:
    value: str


@dataclass(frozen=True)
class Batch(Generic[T]):
    items: tuple[T, ...]
    cursor: Cursor
    quarantined: tuple[Quarantined, ...] = ()
    removed: tuple[str, ...] = ()  # meeting UIDs whose calendar entry is gone
    task_states: tuple[TaskState, ...] = ()
    # what a digest made of the batch's mail items, which are then not given (a source's
    # digested(), syncd.connectors.base.Digests); None: no digest was asked
    digest: Any = None


@dataclass(frozen=True)
class TaskItem:
    """A follow-up task as a connector writes it into a calendar."""

    uid: str
    title: str
    description: str
    due: datetime  # timezone-aware, in the user's zone
    status: TaskStatus
    created: datetime
    sequence: int = 0
    categories: Sequence[str] = field(default_factory=tuple)
