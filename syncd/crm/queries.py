"""Reads of the CRM database: the matcher's index, follow-up candidates, and the reports
behind ``syncd status``, ``syncd activities``, ``syncd tasks`` and ``syncd mailbox list``
(their rows are typed: :class:`StatusRow`, :class:`ActivityRow`, :class:`TaskRow`,
:class:`MailboxRow`; ``--json`` prints them as they are)."""

from __future__ import annotations

import bisect
import logging
from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypedDict

from sqlalchemy import Select, and_, exists, func, select
from sqlalchemy.orm import Session

from syncd.config import Settings
from syncd.crm import quarantine as quarantine_store
from syncd.crm.models import (
    Account,
    AccountDomain,
    Activity,
    ActivityKind,
    ActivityParticipant,
    ActivityStatus,
    Contact,
    ContactAddress,
    Link,
    Mailbox,
    MailboxState,
    Opportunity,
    OpportunityContact,
    Sighting,
    Task,
    TaskResolution,
    TaskRule,
    ThreadKey,
    User,
    WriterState,
)
from syncd.items import Direction, LinkReason, LinkType, ParticipantRole, TaskStatus
from syncd.matching.addresses import domain_of, normalize_address, normalize_domain
from syncd.matching.matcher import (
    AccountRef,
    ContactRef,
    CrmIndex,
    OpportunityRef,
    ThreadNode,
    UserRef,
)

log = logging.getLogger("syncd.crm")


def company_domains(session: Session, settings: Settings) -> set[str]:
    """The configured domains, else the domains of the CRM users' addresses."""
    if settings.company.domains:
        return set(settings.company.domains)
    return {domain_of(e) for e in session.scalars(select(User.email))}


def load_index(session: Session, settings: Settings) -> CrmIndex:
    users = {u.email: UserRef(u.id, u.email, u.name) for u in session.scalars(select(User))}
    contacts = {
        address: ContactRef(cid, name, account_id)
        for address, cid, name, account_id in session.execute(
            select(ContactAddress.address, Contact.id, Contact.name, Contact.account_id).join(
                Contact
            )
        )
    }
    accounts = {a.id: AccountRef(a.id, a.name) for a in session.scalars(select(Account))}
    domains = dict(session.execute(select(AccountDomain.domain, AccountDomain.account_id)).all())
    roles: dict[int, set[int]] = defaultdict(set)
    for opp_id, contact_id in session.execute(
        select(OpportunityContact.opportunity_id, OpportunityContact.contact_id)
    ):
        roles[opp_id].add(contact_id)
    opportunities = {
        o.id: OpportunityRef(
            o.id, o.external_id, o.name, o.account_id, o.status, frozenset(roles[o.id])
        )
        for o in session.scalars(select(Opportunity))
    }
    tag_links = (
        select(Link.target_id, func.max(Activity.occurred_at))
        .join(Activity, Link.activity_id == Activity.id)
        .where(Link.type == "opportunity", Link.reason == "tag")
        .group_by(Link.target_id)
    )
    index = CrmIndex(
        company_domains=company_domains(session, settings),
        users=users,
        contacts=contacts,
        accounts=accounts,
        account_domains=domains,
        opportunities=opportunities,
        blocked_addresses=set(settings.exclusions.addresses),
        blocked_domains=set(settings.exclusions.domains),
        tag_prefix=settings.matching.opportunity_tag_prefix,
    )
    for opp_id, occurred_at in session.execute(tag_links):
        index.remember(opp_id, occurred_at)
    return index


# --- conversations ----------------------------------------------------------------------

THREAD_SIZE = 10_000  # activities of one conversation settled at most (a safe bound)


def thread_components(session: Session, keys: Iterable[str]) -> list[list[ThreadNode]]:
    """The stored conversations that share a thread key with ``keys``: every activity
    reachable through shared keys (its own, its root, its references, the provider's thread
    id), however many hops, grouped into connected conversations, each activity as
    :class:`ThreadNode`. A conversation past THREAD_SIZE activities is not returned at all:
    settling a part of it as if it were the whole would depend on where it was cut."""
    frontier = set(keys)
    seen_keys: set[str] = set()
    edges: dict[int, set[str]] = defaultdict(set)
    while frontier:
        frontier -= seen_keys
        if not frontier:
            break
        if len(edges) >= THREAD_SIZE:
            log.warning(
                "a conversation of over %d activities is left as it is (keys %s...)",
                THREAD_SIZE,
                sorted(frontier)[:3],
            )
            return []
        seen_keys |= frontier
        found: set[int] = set()
        for chunk in _chunked(sorted(frontier)):
            found.update(
                session.scalars(select(ThreadKey.activity_id).where(ThreadKey.key.in_(chunk)))
            )
        new = found - set(edges)
        frontier = set()
        for chunk in _chunked(sorted(new)):
            for activity_id, key in session.execute(
                select(ThreadKey.activity_id, ThreadKey.key).where(ThreadKey.activity_id.in_(chunk))
            ):
                edges[activity_id].add(key)
                frontier.add(key)
    if not edges:
        return []
    nodes = _thread_nodes(session, sorted(edges))
    # connected components over shared keys (union-find on activity ids)
    parent = {a: a for a in edges}

    def root(a: int) -> int:
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    owner: dict[str, int] = {}
    for activity_id in sorted(edges):
        for key in edges[activity_id]:
            if key in owner:
                parent[root(activity_id)] = root(owner[key])
            else:
                owner[key] = activity_id
    groups: dict[int, list[ThreadNode]] = defaultdict(list)
    for activity_id, node in nodes.items():
        groups[root(activity_id)].append(node)
    return [groups[g] for g in sorted(groups)]


def conversation_keys_of_candidates(
    session: Session, index: CrmIndex, opportunity_ids: Iterable[int]
) -> set[str]:
    """The conversation keys of every activity that may choose one of these deals by a
    weaker rule: those linked to the deal's account or to a contact with a role in it."""
    accounts: set[int] = set()
    contacts: set[int] = set()
    for opp_id in opportunity_ids:
        opp = index.opportunities.get(opp_id)
        if opp is not None:
            accounts.add(opp.account_id)
            contacts.update(opp.contact_ids)
    activity_ids: set[int] = set()
    linked: tuple[tuple[LinkType, set[int]], ...] = (("account", accounts), ("contact", contacts))
    for type_, targets in linked:
        for chunk in _chunked(sorted(targets)):
            activity_ids.update(
                session.scalars(
                    select(Link.activity_id).where(Link.type == type_, Link.target_id.in_(chunk))
                )
            )
    keys: set[str] = set()
    for chunk in _chunked(sorted(activity_ids)):
        keys.update(session.scalars(select(ThreadKey.key).where(ThreadKey.activity_id.in_(chunk))))
    return keys


def _thread_nodes(session: Session, ids: list[int]) -> dict[int, ThreadNode]:
    base: dict[int, tuple[str, datetime, str | None]] = {}
    links: dict[int, list[tuple[LinkType, int, LinkReason]]] = defaultdict(list)
    for chunk in _chunked(ids):
        for activity_id, key, when, note in session.execute(
            select(Activity.id, Activity.key, Activity.occurred_at, Activity.match_note).where(
                Activity.id.in_(chunk)
            )
        ):
            base[activity_id] = (key, when, note)
        for activity_id, type_, target, reason in session.execute(
            select(Link.activity_id, Link.type, Link.target_id, Link.reason)
            .where(Link.activity_id.in_(chunk))
            .order_by(Link.id)
        ):
            links[activity_id].append((type_, target, reason))
    nodes = {}
    for activity_id, (key, when, note) in base.items():
        own = links[activity_id]
        deal = next(((t, r) for k, t, r in own if k == "opportunity" and r != "tag"), None)
        nodes[activity_id] = ThreadNode(
            id=activity_id,
            key=key,
            when=when,
            tags=tuple(t for k, t, r in own if k == "opportunity" and r == "tag"),
            contact_ids=tuple(t for k, t, _ in own if k == "contact"),
            account_ids=tuple(t for k, t, _ in own if k == "account"),
            opportunity=deal,
            note=note,
        )
    return nodes


# --- follow-up candidates ---------------------------------------------------------------


@dataclass(frozen=True)
class Candidate:
    """An activity a follow-up rule may act on, with what the rule needs to know."""

    activity_id: int
    activity_key: str
    kind: ActivityKind
    subject: str
    occurred_at: datetime
    ends_at: datetime | None
    status: ActivityStatus
    direction: Direction
    owner_id: int | None  # the user the task would be for
    contacts: tuple[tuple[int, str], ...]  # (id, name) of matched contacts
    opportunity_id: int | None
    opportunity: str | None  # "OPP-42 Acme renewal"
    replied_at: datetime | None  # first later inbound email of the same thread


def _inbound_replies(session: Session, emails: list[Activity]) -> dict[int, list[datetime]]:
    """For each email, the sorted times of the inbound emails of its conversation: those
    sharing a conversation key with it (its thread's root, its own Message-ID named in
    In-Reply-To or References, the provider's thread id: a reply Gmail threads by subject
    closes the follow-up too)."""
    keys: dict[int, set[str]] = defaultdict(set)
    for chunk in _chunked([a.id for a in emails]):
        for activity_id, key in session.execute(
            select(ThreadKey.activity_id, ThreadKey.key).where(ThreadKey.activity_id.in_(chunk))
        ):
            keys[activity_id].add(key)
    for a in emails:  # rows stored before conversation keys were kept
        keys[a.id].update((a.key, a.thread_key))
    inbound_by_key: dict[str, set[tuple[int, datetime]]] = defaultdict(set)
    for chunk in _chunked(sorted(set().union(*keys.values()) if keys else set())):
        for key, activity_id, occurred_at in session.execute(
            select(ThreadKey.key, Activity.id, Activity.occurred_at)
            .join(Activity, Activity.id == ThreadKey.activity_id)
            .where(
                ThreadKey.key.in_(chunk),
                Activity.kind == "email",
                Activity.direction == "inbound",
            )
        ):
            inbound_by_key[key].add((activity_id, occurred_at))
    replies: dict[int, list[datetime]] = {}
    for a in emails:
        found = set().union(*(inbound_by_key.get(k, set()) for k in keys[a.id]))
        replies[a.id] = sorted(t for activity_id, t in found if activity_id != a.id)
    return replies


def _chunked(values: Iterable[Any], size: int = 500) -> Iterator[list[Any]]:
    values = list(values)
    for i in range(0, len(values), size):
        yield values[i : i + size]


def followup_candidates(session: Session, user_id: int, since: datetime) -> list[Candidate]:
    """This user's outbound emails and meetings since ``since`` that involve a contact.

    Plain indexed look-ups joined here rather than one query with correlated subqueries:
    the database plans those badly right after a large import, before it has statistics.
    """
    # the window by its index, plus the few older activities whose task is still open
    window = set(session.scalars(select(Activity.id).where(Activity.occurred_at >= since)))
    window.update(session.scalars(select(Task.activity_id).where(Task.status == "open")))
    roles: dict[int, set[ParticipantRole]] = defaultdict(set)
    with_contact: set[int] = set()
    for chunk in _chunked(sorted(window)):
        for activity_id, role in session.execute(
            select(ActivityParticipant.activity_id, ActivityParticipant.role).where(
                ActivityParticipant.activity_id.in_(chunk),
                ActivityParticipant.user_id == user_id,
            )
        ):
            roles[activity_id].add(role)
        with_contact.update(
            session.scalars(
                select(Link.activity_id).where(Link.activity_id.in_(chunk), Link.type == "contact")
            )
        )
    activities = [
        a
        for chunk in _chunked(sorted(set(roles) & with_contact))
        for a in session.scalars(select(Activity).where(Activity.id.in_(chunk)))
        if (a.kind == "email" and a.direction == "outbound" and roles[a.id] & {"from"})
        or a.kind == "meeting"
    ]
    activities.sort(key=lambda a: (a.occurred_at, a.id))
    replies = _inbound_replies(session, [a for a in activities if a.kind == "email"])

    def first_reply(a: Activity) -> datetime | None:
        times = replies.get(a.id, [])
        i = bisect.bisect_right(times, a.occurred_at)
        return times[i] if a.kind == "email" and i < len(times) else None

    rows = [(a, first_reply(a)) for a in activities]
    if not rows:
        return []
    ids = [a.id for a, _ in rows]
    contacts: dict[int, list[tuple[int, str]]] = defaultdict(list)
    for activity_id, cid, name in session.execute(
        select(Link.activity_id, Contact.id, Contact.name)
        .join(Contact, and_(Link.type == "contact", Link.target_id == Contact.id))
        .where(Link.activity_id.in_(ids))
        .order_by(Link.id)
    ):
        contacts[activity_id].append((cid, name))
    opps = {
        activity_id: (opp_id, f"{external_id} {name}")
        for activity_id, opp_id, external_id, name in session.execute(
            select(Link.activity_id, Opportunity.id, Opportunity.external_id, Opportunity.name)
            .join(Opportunity, and_(Link.type == "opportunity", Link.target_id == Opportunity.id))
            .where(Link.activity_id.in_(ids))
        )
    }
    owners = _meeting_owners(session, [a.id for a, _ in rows if a.kind == "meeting"])
    out = []
    for activity, replied_at in rows:
        owner = user_id if activity.kind == "email" else owners.get(activity.id)
        out.append(
            Candidate(
                activity_id=activity.id,
                activity_key=activity.key,
                kind=activity.kind,
                subject=activity.subject,
                occurred_at=activity.occurred_at,
                ends_at=activity.ends_at,
                status=activity.status,
                direction=activity.direction,
                owner_id=owner,
                contacts=tuple(contacts[activity.id]),
                opportunity_id=opps[activity.id][0] if activity.id in opps else None,
                opportunity=opps[activity.id][1] if activity.id in opps else None,
                replied_at=replied_at,
            )
        )
    return out


def _meeting_owners(session: Session, activity_ids: list[int]) -> dict[int, int]:
    """A meeting's follow-up goes to its organizer if a user, else its first user attendee."""
    owners: dict[int, int] = {}
    if not activity_ids:
        return owners
    rows = session.execute(
        select(
            ActivityParticipant.activity_id, ActivityParticipant.user_id, ActivityParticipant.role
        )
        .where(
            ActivityParticipant.activity_id.in_(activity_ids),
            ActivityParticipant.user_id.is_not(None),
        )
        .order_by(ActivityParticipant.id)
    )
    for activity_id, user_id, role in rows:
        if user_id is not None and (role == "organizer" or activity_id not in owners):
            owners[activity_id] = user_id
    return owners


def task_status_by_uid(session: Session, uids: list[str]) -> dict[str, TaskStatus]:
    found: dict[str, TaskStatus] = {}
    for i in range(0, len(uids), 500):
        found.update(
            session.execute(
                select(Task.uid, Task.status).where(Task.uid.in_(uids[i : i + 500]))
            ).all()
        )
    return found


def task_deal_by_uid(session: Session, uids: list[str]) -> dict[str, int | None]:
    found: dict[str, int | None] = {}
    for chunk in _chunked(uids):
        found.update(
            session.execute(select(Task.uid, Task.opportunity_id).where(Task.uid.in_(chunk))).all()
        )
    return found


# --- reports ----------------------------------------------------------------------------


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


def status_report(session: Session) -> list[StatusRow]:
    """Every mailbox's state, its task write-back's, and how many of its items are
    quarantined (errors as stored: the CLI masks what they may quote of a URL)."""
    quarantined = quarantine_store.counts(session)
    rows = session.execute(select(Mailbox, User.email).join(User).order_by(Mailbox.name))
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
        }
        for m, email in rows
    ]


def _iso(when: datetime | None) -> str | None:
    return when.isoformat() if when else None


class MailboxRow(TypedDict):
    """One mailbox in ``syncd mailbox list``."""

    mailbox: str
    kind: str
    user: str
    settings: dict[str, Any]  # as stored (JSON); the CLI masks what a URL may hold


def mailbox_report(session: Session) -> list[MailboxRow]:
    return [
        {"mailbox": m.name, "kind": m.kind, "user": email, "settings": m.settings}
        for m, email in session.execute(
            select(Mailbox, User.email).join(User).order_by(Mailbox.name)
        )
    ]


def _timeline_filter(
    session: Session, contact: str | None, account: str | None, opportunity: str | None
) -> Select[Any]:
    query = select(Activity).order_by(Activity.occurred_at, Activity.id)
    targets: list[tuple[LinkType, int | None]] = []
    if contact:
        targets.append(
            (
                "contact",
                session.scalar(
                    select(ContactAddress.contact_id).where(
                        ContactAddress.address == normalize_address(contact)
                    )
                ),
            )
        )
    if account:
        account_id = session.scalar(
            select(AccountDomain.account_id).where(
                AccountDomain.domain == normalize_domain(account)
            )
        ) or session.scalar(select(Account.id).where(Account.name == account))
        targets.append(("account", account_id))
    if opportunity:
        targets.append(
            (
                "opportunity",
                session.scalar(
                    select(Opportunity.id).where(Opportunity.external_id == opportunity)
                ),
            )
        )
    for type_, target in targets:
        query = query.where(
            exists().where(
                Link.activity_id == Activity.id,
                Link.type == type_,
                Link.target_id == (target or -1),
            )
        )
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


def timeline(
    session: Session,
    contact: str | None = None,
    account: str | None = None,
    opportunity: str | None = None,
) -> list[ActivityRow]:
    activities = session.scalars(_timeline_filter(session, contact, account, opportunity)).all()
    names = _link_names(session)
    mailboxes = dict(session.execute(select(Mailbox.id, Mailbox.name)).all())
    sightings: dict[int, list[str]] = defaultdict(list)
    ids = [a.id for a in activities]
    for chunk in (ids[i : i + 5000] for i in range(0, len(ids), 5000)):
        for activity_id, mailbox_id in session.execute(
            select(Sighting.activity_id, Sighting.mailbox_id).where(Sighting.activity_id.in_(chunk))
        ):
            sightings[activity_id].append(mailboxes.get(mailbox_id, "?"))
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
    activity_id: int
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
        query = query.where(User.email == normalize_address(user))
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
