"""The reports behind ``syncd status`` (:func:`status_report`), ``syncd activities``
(:func:`activity_report`), ``syncd tasks`` (:func:`task_report`), ``syncd mailbox list``
(:func:`mailbox_report`) and the metrics read from the CRM at each scrape
(:func:`metrics_report`). Their rows are typed (:class:`StatusRow`, :class:`ActivityRow`,
:class:`TaskRow`, :class:`MailboxRow`, :class:`MetricsReport`) and ``--json`` prints them
as they are; they hold what is stored, and the CLI masks what an error or a setting may
quote of a URL.

Read-only; ``syncd quarantine list`` reads :mod:`syncd.crm.quarantine`.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypedDict

from sqlalchemy import ColumnElement, Select, exists, func, or_, select
from sqlalchemy.orm import Session

from syncd.batching import chunked
from syncd.crm import quarantine as quarantine_store
from syncd.crm.models import (
    Account,
    AccountDomain,
    Activity,
    ActivityKind,
    ActivityStatus,
    Contact,
    ContactAddress,
    Link,
    LoggedFor,
    Mailbox,
    MailboxState,
    Opportunity,
    QuarantineEntry,
    Sighting,
    Task,
    TaskResolution,
    TaskRule,
    User,
    WriterState,
)
from syncd.items import Direction, LinkReason, LinkType, ParticipantRole, TaskStatus
from syncd.matching.addresses import normalize_address, normalize_domain

_SIGHTINGS_PER_QUERY = 5000  # ids per IN (...) list of the sightings read


class _WriterStatus(TypedDict):
    state: WriterState
    error: str | None
    updated_at: str | None


class WriterStatus(_WriterStatus, total=False):
    """A mailbox's task write-back, apart from its mail (``tasks`` in ``syncd status``).
    (``total=False`` rather than NotRequired: this module's annotations are strings, which
    Python 3.11's TypedDict cannot read NotRequired from.)"""

    fix: str  # what the admin does about it, when it is not ok (the CLI's words)


class StatusRow(TypedDict):
    """One mailbox in ``syncd status``."""

    mailbox: str
    kind: str  # the connector kind (syncd.connectors.registry)
    user: str
    state: MailboxState
    last_success: str | None
    last_attempt: str | None
    items: int
    error: str | None
    tasks: WriterStatus
    quarantined: int
    caught_up_at: str | None  # the start of the last pass that read everything
    lag_seconds: float | None  # see :func:`lags`; None before its first pass
    lease_owner: str | None  # the pass syncing it now (host:pid:id), while its lease holds


def status_report(session: Session, now: datetime | None = None) -> list[StatusRow]:
    """Every mailbox's state, its task write-back's, how many of its items are quarantined,
    its lag and who syncs it now (errors as stored: the CLI masks what they may quote of a
    URL)."""
    now = now or datetime.now(UTC)
    quarantined = quarantine_store.counts(session)
    rows = session.execute(select(Mailbox, User.email).join(User).order_by(Mailbox.name)).all()
    lag = lags(session, [m for m, _ in rows], now)
    return [
        {
            "mailbox": m.name,
            "kind": m.kind,
            "user": email,
            "state": m.state,
            "last_success": _iso(m.last_success),
            "last_attempt": _iso(m.last_attempt),
            "items": m.items_logged,
            "error": m.last_error,
            "tasks": {
                "state": m.writer_state or "ok",
                "error": m.writer_error,
                "updated_at": _iso(m.writer_at),
            },
            "quarantined": quarantined.get(m.name, 0),
            "caught_up_at": _iso(m.caught_up_at),
            "lag_seconds": lag.get(m.id),
            "lease_owner": (
                m.lease_owner if m.lease_until is not None and m.lease_until > now else None
            ),
        }
        for m, email in rows
    ]


def _iso(when: datetime | None) -> str | None:
    return when.isoformat() if when else None


def lags(session: Session, mailboxes: Sequence[Mailbox], now: datetime) -> dict[int, float]:
    """Mailbox id -> its lag in seconds: how long ago the last pass that read everything
    there was started (``caught_up_at``). A mailbox never caught up (a first import under
    way, or failing from the start) lags since its first attempt, as far as the CRM tells
    it: its first item seen or quarantined, else its last attempt; with none of these
    (never tried) it has none."""
    since = {m.id: m.caught_up_at for m in mailboxes if m.caught_up_at is not None}
    never = [m for m in mailboxes if m.caught_up_at is None]
    first = {m.id: m.last_attempt for m in never if m.last_attempt is not None}
    for chunk in chunked([m.id for m in never], _SIGHTINGS_PER_QUERY):
        for column, mailbox_column in (
            (Sighting.seen_at, Sighting.mailbox_id),
            (QuarantineEntry.created_at, QuarantineEntry.mailbox_id),
        ):
            for mailbox_id, when in session.execute(
                select(mailbox_column, func.min(column))
                .where(mailbox_column.in_(chunk))
                .group_by(mailbox_column)
            ):
                if when is not None:  # MIN keeps the column's type: aware, in UTC
                    first[mailbox_id] = min(first.get(mailbox_id, when), when)
    since.update(first)
    return {i: max((now - when).total_seconds(), 0.0) for i, when in since.items()}


@dataclass(frozen=True)
class MailboxMetrics:
    """One mailbox as the metrics show it."""

    name: str
    kind: str
    state: MailboxState
    last_success: datetime | None
    lag_seconds: float | None
    items_logged: int
    quarantined: int
    writer_failing: bool


@dataclass(frozen=True)
class MetricsReport:
    """What the metrics read from the CRM at each scrape: every mailbox, and the follow-up
    tasks not yet in a calendar: pending (not tried yet) and failing (refused last time)."""

    mailboxes: list[MailboxMetrics]
    tasks_pending: int
    tasks_failing: int


def metrics_report(session: Session, now: datetime) -> MetricsReport:
    mailboxes = list(session.scalars(select(Mailbox).order_by(Mailbox.name)))
    quarantined = quarantine_store.counts(session)
    lag = lags(session, mailboxes, now)
    unwritten = dict(
        session.execute(
            select(Task.write_error.is_not(None), func.count(Task.id))
            .where(Task.written_version < Task.version)
            .group_by(Task.write_error.is_not(None))
        ).all()
    )
    return MetricsReport(
        mailboxes=[
            MailboxMetrics(
                name=m.name,
                kind=m.kind,
                state=m.state,
                last_success=m.last_success,
                lag_seconds=lag.get(m.id),
                items_logged=m.items_logged or 0,
                quarantined=quarantined.get(m.name, 0),
                writer_failing=(m.writer_state or "ok") != "ok",
            )
            for m in mailboxes
        ],
        tasks_pending=int(unwritten.get(False, 0)),
        tasks_failing=int(unwritten.get(True, 0)),
    )


class MailboxRow(TypedDict):
    """One mailbox in ``syncd mailbox list``."""

    mailbox: str
    kind: str
    user: str
    settings: dict[str, Any]  # as stored (JSON); the CLI masks what a URL may hold


def mailbox_report(session: Session) -> list[MailboxRow]:
    """Every mailbox, by name, with its settings as stored."""
    return [
        {"mailbox": m.name, "kind": m.kind, "user": email, "settings": m.settings}
        for m, email in session.execute(
            select(Mailbox, User.email).join(User).order_by(Mailbox.name)
        )
    ]


class UnknownRecord(LookupError):
    """A report's filter names nothing stored: the message names the filter, the value and
    where to look (``syncd activities``, ``syncd tasks``: exit 2)."""


@dataclass(frozen=True)
class ActivityFilter:
    """What ``syncd activities`` keeps: each given filter narrows the timeline."""

    contact: str | None = None  # a contact's address
    account: str | None = None  # an account's domain or name
    opportunity: str | None = None  # a deal's external id
    user: str | None = None  # seen by a mailbox of this user (email)
    mailbox: str | None = None  # seen by this mailbox (name)
    since: datetime | None = None  # occurred at or after
    until: datetime | None = None  # occurred before
    ids: tuple[int, ...] = ()  # these activities only


def _found(value: int | None, what: str, given: str, fix: str) -> int:
    if value is None:
        raise UnknownRecord(f"no {what} {given!r}; {fix}")
    return value


def _activity_filter(session: Session, wanted: ActivityFilter) -> Select[Any]:
    """The activities the filter keeps; a filter that names nothing stored is an
    :class:`UnknownRecord` (an empty answer would read as "nothing was logged")."""
    query = select(Activity).order_by(Activity.occurred_at, Activity.id)
    targets: list[tuple[LinkType, int]] = []
    if wanted.contact:
        address = normalize_address(wanted.contact)
        contact_id = session.scalar(
            select(ContactAddress.contact_id).where(ContactAddress.address == address)
        )
        fix = "the address is on no CRM contact (load it: 'syncd crm load contacts FILE')"
        targets.append(("contact", _found(contact_id, "contact has the address", address, fix)))
    if wanted.account:
        account_id = session.scalar(
            select(AccountDomain.account_id).where(
                AccountDomain.domain == normalize_domain(wanted.account)
            )
        ) or session.scalar(select(Account.id).where(Account.name == wanted.account))
        fix = "give one of its domains or its exact name (load it: 'syncd crm load accounts FILE')"
        targets.append(("account", _found(account_id, "account", wanted.account, fix)))
    if wanted.opportunity:
        deal_id = session.scalar(
            select(Opportunity.id).where(Opportunity.external_id == wanted.opportunity)
        )
        fix = "give its external id as loaded (load it: 'syncd crm load opportunities FILE')"
        targets.append(("opportunity", _found(deal_id, "opportunity", wanted.opportunity, fix)))
    for type_, target in targets:
        query = query.where(
            exists().where(
                Link.activity_id == Activity.id, Link.type == type_, Link.target_id == target
            )
        )
    seen: list[ColumnElement[bool]] = []  # what one sighting of the activity must be
    if wanted.user:
        email = normalize_address(wanted.user)
        user_id = _found(
            session.scalar(select(User.id).where(User.email == email)),
            "user",
            email,
            "give a CRM user's email (see 'syncd mailbox list')",
        )
        # the user's own mailboxes' (never a dropbox's), and what dropboxes logged for them
        own = [
            m.id
            for m in session.scalars(select(Mailbox).where(Mailbox.user_id == user_id))
            if not (m.settings or {}).get("dropbox")
        ]
        by_them = exists().where(LoggedFor.activity_id == Activity.id, LoggedFor.user_id == user_id)
        query = query.where(
            or_(
                exists().where(
                    Sighting.activity_id == Activity.id, Sighting.mailbox_id.in_(own or [-1])
                ),
                by_them,
            )
        )
    if wanted.mailbox:
        mailbox_id = _found(
            session.scalar(select(Mailbox.id).where(Mailbox.name == wanted.mailbox)),
            "mailbox",
            wanted.mailbox,
            "see 'syncd mailbox list'",
        )
        seen.append(Sighting.mailbox_id == mailbox_id)
    if seen:
        query = query.where(exists().where(Sighting.activity_id == Activity.id, *seen))
    if wanted.since is not None:
        query = query.where(Activity.occurred_at >= wanted.since)
    if wanted.until is not None:
        query = query.where(Activity.occurred_at < wanted.until)
    if wanted.ids:
        known = set(session.scalars(select(Activity.id).where(Activity.id.in_(wanted.ids))))
        missing = sorted(set(wanted.ids) - known)
        if missing:
            raise UnknownRecord(
                f"no activity {', '.join(map(str, missing))}; see 'syncd activities' for the ids"
            )
        query = query.where(Activity.id.in_(wanted.ids))
    return query


class ParticipantRow(TypedDict):
    address: str
    name: str
    role: ParticipantRole


class LinkRow(TypedDict):
    type: LinkType
    id: int
    name: str
    reason: LinkReason


class ActivityRow(TypedDict):
    """One activity in ``syncd activities``: its participants, and each link with the
    reason it was made."""

    id: int
    key: str
    kind: ActivityKind
    subject: str
    occurred_at: str
    ends_at: str | None
    direction: Direction
    status: ActivityStatus
    participants: list[ParticipantRow]
    links: list[LinkRow]
    note: str | None
    mailboxes: list[str]
    snippet: str | None


def activity_report(
    session: Session,
    contact: str | None = None,
    account: str | None = None,
    opportunity: str | None = None,
    **more: Any,
) -> list[ActivityRow]:
    """The activities, oldest first: all, or those the :class:`ActivityFilter` of these
    arguments keeps (linked to the contact, account and deal given, seen by the user's or
    the mailbox's, in the time given, of the ids given). A filter that names nothing
    stored is an :class:`UnknownRecord`."""
    wanted = ActivityFilter(contact, account, opportunity, **more)
    activities = session.scalars(_activity_filter(session, wanted)).all()
    names = _link_names(session)
    sightings = _sighted_by(session, [a.id for a in activities])
    return [
        {
            "id": a.id,
            "key": a.key,
            "kind": a.kind,
            "subject": a.subject,
            "occurred_at": a.occurred_at.isoformat(),
            "ends_at": _iso(a.ends_at),
            "direction": a.direction,
            "status": a.status,
            "participants": [
                {"address": p.address, "name": p.name, "role": p.role} for p in a.participants
            ],
            "links": [
                {
                    "type": lk.type,
                    "id": lk.target_id,
                    "name": names[lk.type].get(lk.target_id, "?"),
                    "reason": lk.reason,
                }
                for lk in a.links
            ],
            "note": a.match_note,
            "mailboxes": sorted(sightings[a.id]),
            "snippet": a.snippet,
        }
        for a in activities
    ]


def _sighted_by(session: Session, ids: list[int]) -> dict[int, list[str]]:
    """Activity id -> the names of the mailboxes that saw it."""
    mailboxes = dict(session.execute(select(Mailbox.id, Mailbox.name)).all())
    sightings: dict[int, list[str]] = defaultdict(list)
    for chunk in chunked(ids, _SIGHTINGS_PER_QUERY):
        for activity_id, mailbox_id in session.execute(
            select(Sighting.activity_id, Sighting.mailbox_id).where(Sighting.activity_id.in_(chunk))
        ):
            sightings[activity_id].append(mailboxes.get(mailbox_id, "?"))
    return sightings


def _link_names(session: Session) -> dict[LinkType, dict[int, str]]:
    return {
        "contact": dict(session.execute(select(Contact.id, Contact.name)).all()),
        "account": dict(session.execute(select(Account.id, Account.name)).all()),
        "opportunity": {
            i: f"{e} {n}"
            for i, e, n in session.execute(
                select(Opportunity.id, Opportunity.external_id, Opportunity.name)
            )
        },
    }


class TaskRow(TypedDict):
    """One follow-up task in ``syncd tasks``."""

    uid: str
    title: str
    due: str
    user: str
    status: TaskStatus
    resolution: TaskResolution | None
    rule: TaskRule
    activity_id: int | None  # None: the activity was deleted (the task is cancelled)
    opportunity_id: int | None
    opportunity: str | None  # its external id
    in_calendar: bool
    write_error: str | None


def task_report(session: Session, user: str | None = None) -> list[TaskRow]:
    query = (
        select(Task, User.email, Opportunity.external_id)
        .join(User, Task.user_id == User.id)
        .outerjoin(Opportunity, Task.opportunity_id == Opportunity.id)
        .order_by(Task.due, Task.id)
    )
    if user:
        email = normalize_address(user)
        if session.scalar(select(User.id).where(User.email == email)) is None:
            raise UnknownRecord(f"no user {email!r}; give a CRM user's email")
        query = query.where(User.email == email)
    return [
        {
            "uid": t.uid,
            "title": t.title,
            "due": t.due.isoformat(),
            "user": email,
            "status": t.status,
            "resolution": t.resolution,
            "rule": t.rule,
            "activity_id": t.activity_id,
            "opportunity_id": t.opportunity_id,
            "opportunity": opp_external_id,
            "in_calendar": t.written_version >= t.version,
            "write_error": t.write_error,
        }
        for t, email, opp_external_id in session.execute(query)
    ]
