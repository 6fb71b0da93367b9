"""The CRM database: SQLAlchemy 2.0 typed models.

Terminology
-----------
user
    A CRM user, usually a salesperson. Owns mailboxes, opportunities and tasks.
account / contact / opportunity
    The CRM's company, person and deal. A contact has one or more addresses, an account one
    or more domains; an opportunity links contacts with a role.
activity
    One logged email or meeting, keyed by its item key (one row per Message-ID or iCalendar
    UID + RECURRENCE-ID), with its participants.
sighting
    One mailbox's copy of an activity, under that mailbox's provider id. An email seen in
    the sender's Sent folder and the recipient's INBOX is one activity with two sightings.
link
    Activity -> contact, account or opportunity, with the reason it was made.
cursor
    Where the last sync of one source of one mailbox stopped; written in the same
    transaction as the activities it covers.
task
    A follow-up for a user, decided by a rule; ``version`` counts its changes and
    ``written_version`` says which of them the user's calendar has.

The words a column may hold are typed (``Mapped[MailboxState]`` over a ``String(n)``
column): the CRM's own below, the ones the other stages share in :mod:`syncd.items`.
"""

from __future__ import annotations

from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any, Literal

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Date,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    Numeric,
    String,
    Text,
    UniqueConstraint,
    false,
    func,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship
from sqlalchemy.types import TypeDecorator

from syncd.items import (
    Direction,
    LinkReason,
    LinkType,
    OpportunityStatus,
    ParticipantRole,
    TaskStatus,
)

# a mailbox: syncing (ok), failing and retried with backoff, or parked until an admin acts
MailboxState = Literal["ok", "failing", "parked"]
# a mailbox's task write-back, apart from its mail: a calendar that refuses writes is failing
WriterState = Literal["ok", "failing"]
ActivityKind = Literal["email", "meeting"]
ActivityStatus = Literal["confirmed", "cancelled"]  # a meeting may be cancelled
# see syncd.followups; "call-list" is the day's call list (syncd.calllist)
TaskRule = Literal["no-reply", "meeting-notes", "call-list"]
# why a task is no longer open: a reply came, its meeting was cancelled, or the user closed
# it in their calendar; a call list: its day is over (expired), nothing is left on it
# (empty), or the call list was turned off for its user
TaskResolution = Literal[
    "replied", "meeting cancelled", "calendar", "activity deleted", "expired", "empty", "turned off"
]

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware datetimes stored as UTC; SQLite gives them back aware too."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value!r} cannot be stored; give it a time zone")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


ID = BigInteger().with_variant(Integer(), "sqlite")


class User(Base):
    __tablename__ = "users"
    id: Mapped[int] = mapped_column(ID, primary_key=True)
    email: Mapped[str] = mapped_column(String(320), unique=True)
    name: Mapped[str] = mapped_column(String(200))
    timezone: Mapped[str | None] = mapped_column(String(64))
    working_hours: Mapped[str | None] = mapped_column(String(11))
    holidays: Mapped[str | None] = mapped_column(String(20))  # "DE-BY": company.holidays
    call_list: Mapped[bool | None] = mapped_column(Boolean)  # None: call_list.enabled


class Account(Base):
    __tablename__ = "accounts"
    id: Mapped[int] = mapped_column(ID, primary_key=True)
    name: Mapped[str] = mapped_column(String(300), unique=True)
    external_id: Mapped[str | None] = mapped_column(String(100), unique=True)
    # the historical import that created it (``syncd import undo`` removes it), else None
    import_id: Mapped[str | None] = mapped_column(
        ForeignKey("imports.id", ondelete="SET NULL"), index=True
    )
    domains: Mapped[list[AccountDomain]] = relationship(
        back_populates="account", cascade="all, delete-orphan"
    )


class AccountDomain(Base):
    __tablename__ = "account_domains"
    id: Mapped[int] = mapped_column(ID, primary_key=True)
    domain: Mapped[str] = mapped_column(String(255), unique=True)
    account_id: Mapped[int] = mapped_column(
        ForeignKey("accounts.id", ondelete="CASCADE"), index=True
    )
    account: Mapped[Account] = relationship(back_populates="domains")


class Contact(Base):
    __tablename__ = "contacts"
    id: Mapped[int] = mapped_column(ID, primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    account_id: Mapped[int | None] = mapped_column(ForeignKey("accounts.id"), index=True)
    title: Mapped[str | None] = mapped_column(String(200))
    phone: Mapped[str | None] = mapped_column(String(50))
    # split from the name only where it is safe (syncd.harvest.names), else None
    first_name: Mapped[str | None] = mapped_column(String(100))
    last_name: Mapped[str | None] = mapped_column(String(100))
    import_id: Mapped[str | None] = mapped_column(
        ForeignKey("imports.id", ondelete="SET NULL"), index=True
    )
    # created from the mail by matching.create_contacts (syncd.crm.autocreate): its name
    # follows its mail until an admin loads it
    auto_created: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    addresses: Mapped[list[ContactAddress]] = relationship(
        back_populates="contact", cascade="all, delete-orphan"
    )


class ContactAddress(Base):
    __tablename__ = "contact_addresses"
    id: Mapped[int] = mapped_column(ID, primary_key=True)
    address: Mapped[str] = mapped_column(String(320), unique=True)
    contact_id: Mapped[int] = mapped_column(
        ForeignKey("contacts.id", ondelete="CASCADE"), index=True
    )
    import_id: Mapped[str | None] = mapped_column(
        ForeignKey("imports.id", ondelete="SET NULL"), index=True
    )
    contact: Mapped[Contact] = relationship(back_populates="addresses")


class Opportunity(Base):
    __tablename__ = "opportunities"
    # [OPP-n] tags are looked up case-blind, by key (syncd.crm.lookups)
    __table_args__ = (Index("ix_opportunities_external_id_lower", func.lower(text("external_id"))),)
    id: Mapped[int] = mapped_column(ID, primary_key=True)
    external_id: Mapped[str] = mapped_column(String(100), unique=True)
    name: Mapped[str] = mapped_column(String(300))
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id"), index=True)
    owner_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    stage: Mapped[str | None] = mapped_column(String(100))
    amount: Mapped[Decimal | None] = mapped_column(Numeric(18, 2))
    currency: Mapped[str | None] = mapped_column(String(3))
    close_date: Mapped[date | None] = mapped_column(Date)
    status: Mapped[OpportunityStatus] = mapped_column(String(10), default="open")
    # the time of its latest tagged activity: the evidence that ranks open deals (matcher)
    last_tagged_at: Mapped[datetime | None] = mapped_column(UTCDateTime, index=True)
    contacts: Mapped[list[OpportunityContact]] = relationship(cascade="all, delete-orphan")


class OpportunityContact(Base):
    __tablename__ = "opportunity_contacts"
    __table_args__ = (UniqueConstraint("opportunity_id", "contact_id"),)
    id: Mapped[int] = mapped_column(ID, primary_key=True)
    opportunity_id: Mapped[int] = mapped_column(ForeignKey("opportunities.id", ondelete="CASCADE"))
    # the deals a contact has a role in, by key (syncd.crm.lookups)
    contact_id: Mapped[int] = mapped_column(
        ForeignKey("contacts.id", ondelete="CASCADE"), index=True
    )
    role: Mapped[str | None] = mapped_column(String(100))


class Mailbox(Base):
    __tablename__ = "mailboxes"
    id: Mapped[int] = mapped_column(ID, primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    kind: Mapped[str] = mapped_column(String(20))
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    settings: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    secret: Mapped[str | None] = mapped_column(Text)  # Fernet token, never clear text
    state: Mapped[MailboxState] = mapped_column(String(10), default="ok")
    last_attempt: Mapped[datetime | None] = mapped_column(UTCDateTime)
    last_success: Mapped[datetime | None] = mapped_column(UTCDateTime)
    last_error: Mapped[str | None] = mapped_column(Text)
    failures: Mapped[int] = mapped_column(Integer, default=0)
    items_logged: Mapped[int] = mapped_column(BigInteger, default=0)
    followups_at: Mapped[datetime | None] = mapped_column(UTCDateTime)  # rules last evaluated
    # the task write-back has its own state: a calendar that refuses writes never stops the
    # mailbox's mail from being read and logged (its error names the fix)
    writer_state: Mapped[WriterState] = mapped_column(String(10), default="ok")
    writer_error: Mapped[str | None] = mapped_column(Text)
    writer_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # one pass at a time (syncd.crm.leases): who holds the mailbox, and until when unless
    # renewed; a holder that died is replaced once its lease runs out
    lease_owner: Mapped[str | None] = mapped_column(String(200))
    lease_until: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # the start of the last pass that read everything there was: the lag is counted from it
    caught_up_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    user: Mapped[User] = relationship()


class SourceCursor(Base):
    __tablename__ = "cursors"
    mailbox_id: Mapped[int] = mapped_column(
        ForeignKey("mailboxes.id", ondelete="CASCADE"), primary_key=True
    )
    source: Mapped[str] = mapped_column(String(200), primary_key=True)
    value: Mapped[str] = mapped_column(Text)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)


class Activity(Base):
    __tablename__ = "activities"
    id: Mapped[int] = mapped_column(ID, primary_key=True)
    key: Mapped[str] = mapped_column(String(512), unique=True)
    kind: Mapped[ActivityKind] = mapped_column(String(10))
    subject: Mapped[str] = mapped_column(Text)
    occurred_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    ends_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    direction: Mapped[Direction] = mapped_column(String(10))
    thread_key: Mapped[str] = mapped_column(String(512))  # looked up in thread_keys
    status: Mapped[ActivityStatus] = mapped_column(String(10), default="confirmed")
    snippet: Mapped[str | None] = mapped_column(Text)
    body: Mapped[str | None] = mapped_column(Text)
    match_note: Mapped[str | None] = mapped_column(Text)  # e.g. an ambiguous opportunity
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    participants: Mapped[list[ActivityParticipant]] = relationship(
        cascade="all, delete-orphan", order_by="ActivityParticipant.id"
    )
    links: Mapped[list[Link]] = relationship(cascade="all, delete-orphan", order_by="Link.id")


class ThreadKey(Base):
    """Every key under which another item of the same conversation may name this activity:
    its own key, its thread's root, the keys it refers to (In-Reply-To, References) and the
    provider's thread id (Gmail threadId, Graph conversationId). Two activities sharing a
    key are one thread, whatever order they arrived in, and after a restart too."""

    __tablename__ = "thread_keys"
    __table_args__ = (UniqueConstraint("activity_id", "key"),)
    id: Mapped[int] = mapped_column(ID, primary_key=True)
    activity_id: Mapped[int] = mapped_column(ForeignKey("activities.id", ondelete="CASCADE"))
    key: Mapped[str] = mapped_column(String(512), index=True)


class ActivityParticipant(Base):
    __tablename__ = "activity_participants"
    id: Mapped[int] = mapped_column(ID, primary_key=True)
    activity_id: Mapped[int] = mapped_column(
        ForeignKey("activities.id", ondelete="CASCADE"), index=True
    )
    address: Mapped[str] = mapped_column(String(320), index=True)
    name: Mapped[str] = mapped_column(String(200))
    role: Mapped[ParticipantRole] = mapped_column(String(10))
    contact_id: Mapped[int | None] = mapped_column(ForeignKey("contacts.id", ondelete="SET NULL"))
    user_id: Mapped[int | None] = mapped_column(
        ForeignKey("users.id", ondelete="SET NULL"), index=True
    )


class Sighting(Base):
    __tablename__ = "sightings"
    __table_args__ = (
        UniqueConstraint("activity_id", "mailbox_id"),
        # a mailbox's sightings, and those of some of its provider ids (syncd audit, explain)
        Index("ix_sightings_mailbox_provider", "mailbox_id", "provider_id"),
    )
    id: Mapped[int] = mapped_column(ID, primary_key=True)
    activity_id: Mapped[int] = mapped_column(ForeignKey("activities.id", ondelete="CASCADE"))
    mailbox_id: Mapped[int] = mapped_column(ForeignKey("mailboxes.id", ondelete="CASCADE"))
    source: Mapped[str] = mapped_column(String(200))
    provider_id: Mapped[str] = mapped_column(String(512))
    seen_at: Mapped[datetime] = mapped_column(UTCDateTime)


class LoggedFor(Base):
    """A salesperson on whose behalf a dropbox logged an activity (they BCC'd or forwarded
    it; ``syncd.dropbox``): it counts as theirs, never as the dropbox's own user's. Each
    who sent it is one row, whoever's copy came first."""

    __tablename__ = "logged_for"
    __table_args__ = (UniqueConstraint("activity_id", "user_id"),)
    id: Mapped[int] = mapped_column(ID, primary_key=True)
    activity_id: Mapped[int] = mapped_column(ForeignKey("activities.id", ondelete="CASCADE"))
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)


class Link(Base):
    __tablename__ = "links"
    __table_args__ = (
        UniqueConstraint("activity_id", "type", "target_id"),
        Index("ix_links_target", "type", "target_id"),
    )
    id: Mapped[int] = mapped_column(ID, primary_key=True)
    activity_id: Mapped[int] = mapped_column(ForeignKey("activities.id", ondelete="CASCADE"))
    type: Mapped[LinkType] = mapped_column(String(12))
    target_id: Mapped[int] = mapped_column(ID)
    reason: Mapped[LinkReason] = mapped_column(String(40))


class ForgottenDigest(Base):
    """An address or domain an admin had forgotten (``syncd forget``), kept only as the
    SHA-256 digest of ``kind:value``: whoever has it is never logged or imported again,
    and the value itself is nowhere in the database."""

    __tablename__ = "forgotten"
    digest: Mapped[str] = mapped_column(String(64), primary_key=True)
    kind: Mapped[str] = mapped_column(String(10))  # address, domain
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)


class DroppedItem(Base):
    """An item an admin deleted from the CRM (``syncd activity delete``), by its key: never
    logged again, from any mailbox (skipped as "deleted")."""

    __tablename__ = "dropped_items"
    key: Mapped[str] = mapped_column(String(512), primary_key=True)
    dropped_at: Mapped[datetime] = mapped_column(UTCDateTime)
    subject: Mapped[str] = mapped_column(Text)  # what it was, for syncd explain
    # a conversation key a salesperson removed with #nocrm (syncd.dropbox): every item of
    # that conversation is skipped ("nocrm"), not only the one of this key
    whole_thread: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())


class RematchRequest(Base):
    """What ``syncd crm load`` changed (a contact's or user's address, an account's domain,
    a deal's id), waiting for the daemon to re-match the activities it touches
    (``syncd.crm.rematch``); removed in the transaction that re-matches them."""

    __tablename__ = "rematch_queue"
    id: Mapped[int] = mapped_column(ID, primary_key=True)
    kind: Mapped[str] = mapped_column(String(12))  # address, domain, opportunity
    value: Mapped[str] = mapped_column(String(320))
    queued_at: Mapped[datetime] = mapped_column(UTCDateTime)


class LinkVeto(Base):
    """A link an admin removed (``syncd unlink``): never made again for that activity, by
    a later copy of it, a conversation's settling or a re-match."""

    __tablename__ = "link_vetoes"
    __table_args__ = (UniqueConstraint("activity_id", "type", "target_id"),)
    id: Mapped[int] = mapped_column(ID, primary_key=True)
    activity_id: Mapped[int] = mapped_column(ForeignKey("activities.id", ondelete="CASCADE"))
    type: Mapped[LinkType] = mapped_column(String(12))
    target_id: Mapped[int] = mapped_column(ID)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)


class Task(Base):
    __tablename__ = "tasks"
    id: Mapped[int] = mapped_column(ID, primary_key=True)
    uid: Mapped[str] = mapped_column(String(200), unique=True)
    rule: Mapped[TaskRule] = mapped_column(String(40))
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    mailbox_id: Mapped[int | None] = mapped_column(ForeignKey("mailboxes.id", ondelete="SET NULL"))
    # None: its activity was deleted by an admin (the task stays, cancelled, until the
    # calendar has the cancellation)
    activity_id: Mapped[int | None] = mapped_column(
        ForeignKey("activities.id", ondelete="SET NULL"), index=True
    )
    contact_id: Mapped[int | None] = mapped_column(
        ForeignKey("contacts.id", ondelete="SET NULL"), index=True
    )
    opportunity_id: Mapped[int | None] = mapped_column(
        ForeignKey("opportunities.id", ondelete="SET NULL"), index=True
    )
    title: Mapped[str] = mapped_column(Text)
    description: Mapped[str] = mapped_column(Text)
    due: Mapped[datetime] = mapped_column(UTCDateTime)
    status: Mapped[TaskStatus] = mapped_column(String(10), default="open")
    resolution: Mapped[TaskResolution | None] = mapped_column(String(40))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)
    version: Mapped[int] = mapped_column(Integer, default=1)
    written_version: Mapped[int] = mapped_column(Integer, default=0)
    calendar_ref: Mapped[str | None] = mapped_column(String(512))
    write_error: Mapped[str | None] = mapped_column(Text)


class QuarantineEntry(Base):
    __tablename__ = "quarantine"
    __table_args__ = (
        UniqueConstraint("mailbox_id", "source", "provider_id"),
        Index("ix_quarantine_mailbox_provider", "mailbox_id", "provider_id"),  # syncd audit
    )
    id: Mapped[int] = mapped_column(ID, primary_key=True)
    mailbox_id: Mapped[int] = mapped_column(ForeignKey("mailboxes.id", ondelete="CASCADE"))
    source: Mapped[str] = mapped_column(String(200))
    provider_id: Mapped[str] = mapped_column(String(512))
    reason: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    # what was read (up to the message size limit) and which parser reads it again
    raw: Mapped[bytes | None] = mapped_column(LargeBinary)
    format: Mapped[str | None] = mapped_column(String(20))
    attempts: Mapped[int] = mapped_column(Integer, default=1)
    updated_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class SkippedItem(Base):
    """An item a pass read and did not log, with why (an exclusion rule, or a copy of an
    activity this mailbox logged from another folder): with the sightings and the
    quarantine, what ``syncd audit`` counts as seen."""

    __tablename__ = "skips"
    __table_args__ = (
        UniqueConstraint("mailbox_id", "source", "provider_id"),
        Index("ix_skips_mailbox_provider", "mailbox_id", "provider_id"),  # syncd audit
    )
    id: Mapped[int] = mapped_column(ID, primary_key=True)
    mailbox_id: Mapped[int] = mapped_column(ForeignKey("mailboxes.id", ondelete="CASCADE"))
    source: Mapped[str] = mapped_column(String(200))
    provider_id: Mapped[str] = mapped_column(String(512))
    reason: Mapped[str] = mapped_column(String(200))
    seen_at: Mapped[datetime] = mapped_column(UTCDateTime)
    # the item's key (mid:<Message-ID>, ical:<UID>): what syncd explain finds it by (None:
    # skipped before syncd kept it)
    key: Mapped[str | None] = mapped_column(String(512), index=True)


class AuditResult(Base):
    """The last gap audit of one source of a mailbox (``syncd audit``): what the provider
    held up to the cursor, what syncd saw of it, and the first ids it did not."""

    __tablename__ = "audits"
    mailbox_id: Mapped[int] = mapped_column(
        ForeignKey("mailboxes.id", ondelete="CASCADE"), primary_key=True
    )
    source: Mapped[str] = mapped_column(String(200), primary_key=True)
    audited_at: Mapped[datetime] = mapped_column(UTCDateTime)
    held: Mapped[int] = mapped_column(Integer)
    logged: Mapped[int] = mapped_column(Integer)
    skipped: Mapped[int] = mapped_column(Integer)
    quarantined: Mapped[int] = mapped_column(Integer)
    missing: Mapped[int] = mapped_column(Integer)
    missing_ids: Mapped[list[str]] = mapped_column(JSON, default=list)


class Import(Base):
    """One historical import (``syncd import contacts``): its options, where it is, and what
    it did. What it created carries its id."""

    __tablename__ = "imports"
    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    kind: Mapped[str] = mapped_column(String(10))  # "contacts"
    # harvesting, applying, done, undone, or expired (a cursor the provider no longer takes)
    state: Mapped[str] = mapped_column(String(10))
    options: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    summary: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class ImportCursor(Base):
    """How far an import read one source of one mailbox (a resumed import goes on from it)."""

    __tablename__ = "import_cursors"
    import_id: Mapped[str] = mapped_column(
        ForeignKey("imports.id", ondelete="CASCADE"), primary_key=True
    )
    mailbox: Mapped[str] = mapped_column(String(200), primary_key=True)
    source: Mapped[str] = mapped_column(String(200), primary_key=True)
    value: Mapped[str | None] = mapped_column(Text)
    done: Mapped[bool] = mapped_column(Boolean, default=False)
    items: Mapped[int] = mapped_column(BigInteger, default=0)


class ImportPerson(Base):
    """What one mailbox (or file) of an import knows of one person: the harvest, committed
    with the cursor after it (``syncd.harvest.store``)."""

    __tablename__ = "import_people"
    __table_args__ = (UniqueConstraint("import_id", "mailbox", "key"),)
    id: Mapped[int] = mapped_column(ID, primary_key=True)
    import_id: Mapped[str] = mapped_column(ForeignKey("imports.id", ondelete="CASCADE"))
    mailbox: Mapped[str] = mapped_column(String(200))
    key: Mapped[str] = mapped_column(String(320))
    data: Mapped[dict[str, Any]] = mapped_column(JSON)


class ContactKnowledge(Base):
    """What one mailbox knows of one contact, as its last import counted it: first and last
    seen, messages each way and meetings. A contact's totals add up its mailboxes."""

    __tablename__ = "contact_knowledge"
    contact_id: Mapped[int] = mapped_column(
        ForeignKey("contacts.id", ondelete="CASCADE"), primary_key=True
    )
    mailbox: Mapped[str] = mapped_column(String(200), primary_key=True)
    first_seen: Mapped[datetime | None] = mapped_column(UTCDateTime)
    last_seen: Mapped[datetime | None] = mapped_column(UTCDateTime)
    sent: Mapped[int] = mapped_column(Integer, default=0)
    received: Mapped[int] = mapped_column(Integer, default=0)
    meetings: Mapped[int] = mapped_column(Integer, default=0)
    import_id: Mapped[str | None] = mapped_column(ForeignKey("imports.id", ondelete="SET NULL"))
