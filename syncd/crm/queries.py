"""Reads of the CRM database that the follow-up rules start from
(:func:`followup_candidates`, :func:`task_status_by_uid`, :func:`task_deal_by_uid`), and
what the day's call list shows (:func:`call_list_facts`, :func:`call_lists`).

The matcher's index is filled per batch by :mod:`syncd.crm.lookups`;
the stored conversations the matcher settles are read by :mod:`syncd.crm.conversations`;
the reports behind ``syncd status``, ``syncd activities``, ``syncd tasks`` and ``syncd
mailbox list`` are in :mod:`syncd.crm.reports`.
"""

from __future__ import annotations

import bisect
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import NamedTuple

from sqlalchemy import and_, exists, func, or_, select
from sqlalchemy.orm import Session

from syncd.batching import chunked
from syncd.config import Settings
from syncd.crm import insight
from syncd.crm.conversations import thread_keys_of
from syncd.crm.lookups import company_domains
from syncd.crm.models import (
    Account,
    Activity,
    ActivityKind,
    ActivityParticipant,
    ActivityStatus,
    Contact,
    Link,
    Opportunity,
    OpportunityContact,
    Task,
    ThreadKey,
)
from syncd.crm.rows import IN_LIMIT, LOOKUP_CHUNK, one_of
from syncd.engagement import Engagement
from syncd.items import Direction, TaskStatus
from syncd.matching.addresses import domain_of
from syncd.matching.matcher import parents

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


# activities planned at a time: a pass holds the lookback's ids, and the rows of one chunk
# only (a first import of a busy mailbox has tens of thousands in its last fortnight); as
# many as one look-up's list holds (syncd.crm.rows.LOOKUP_CHUNK)
FOLLOWUP_CHUNK = LOOKUP_CHUNK


class _Followable(NamedTuple):
    """What the rules read of an activity (its columns, not the ORM object with its body)."""

    id: int
    key: str
    kind: ActivityKind
    subject: str
    occurred_at: datetime
    ends_at: datetime | None
    status: ActivityStatus
    direction: Direction
    thread_key: str


def followup_candidates(
    session: Session, user_id: int, since: datetime
) -> Iterator[list[Candidate]]:
    """This user's outbound emails and meetings since ``since`` that involve a contact, a
    chunk at a time (:data:`FOLLOWUP_CHUNK`, by id; each chunk by time). A rule decides on
    each candidate alone, so the chunks are planned one by one and memory does not grow with
    the mail of the lookback (bench/import_local.py).

    Plain indexed look-ups joined here rather than one query with correlated subqueries:
    the database plans those badly right after a large import, before it has statistics.
    """
    sent = _involving(session, user_id, _window(session, since))
    for ids in chunked(sorted(sent), FOLLOWUP_CHUNK):
        activities = _followable(session, ids, sent)
        if activities:
            yield _candidates(session, user_id, activities)


def _candidates(session: Session, user_id: int, activities: list[_Followable]) -> list[Candidate]:
    replies = _inbound_replies(session, [a for a in activities if a.kind == "email"])
    ids = [a.id for a in activities]
    contacts = _contacts_of(session, ids)
    deals = _deals_of(session, ids)
    owners = _meeting_owners(session, [a.id for a in activities if a.kind == "meeting"])
    out = []
    for a in activities:
        deal_id, deal = deals.get(a.id, (None, None))
        out.append(
            Candidate(
                activity_id=a.id,
                activity_key=a.key,
                kind=a.kind,
                subject=a.subject,
                occurred_at=a.occurred_at,
                ends_at=a.ends_at,
                status=a.status,
                direction=a.direction,
                owner_id=user_id if a.kind == "email" else owners.get(a.id),
                contacts=tuple(contacts[a.id]),
                opportunity_id=deal_id,
                opportunity=deal,
                replied_at=_first_reply(a, replies),
            )
        )
    return out


def _window(session: Session, since: datetime) -> set[int]:
    """The activities since ``since`` (by its index), plus the few older ones whose task is
    still open."""
    window = set(session.scalars(select(Activity.id).where(Activity.occurred_at >= since)))
    window.update(
        session.scalars(
            select(Task.activity_id).where(Task.status == "open", Task.activity_id.is_not(None))
        )
    )
    return window


def _followable(session: Session, ids: list[int], sent: dict[int, bool]) -> list[_Followable]:
    """The activities of these ids that a rule may follow up: an email the user sent, a
    meeting; by time."""
    columns = [getattr(Activity, name) for name in _Followable._fields]
    followable = or_(
        and_(Activity.kind == "email", Activity.direction == "outbound"),
        Activity.kind == "meeting",
    )
    query = select(*columns).where(one_of(session, Activity.id, ids), followable)
    activities = [
        a
        for a in map(_Followable._make, session.execute(query))
        if a.kind == "meeting" or sent[a.id]
    ]
    activities.sort(key=lambda a: (a.occurred_at, a.id))
    return activities


def _involving(session: Session, user_id: int, window: set[int]) -> dict[int, bool]:
    """Activity id -> whether this user sent it, for the activities of the window that
    involve this user and are linked to a contact."""
    sent: dict[int, bool] = {}
    for chunk in chunked(sorted(window), LOOKUP_CHUNK):
        linked = set(
            session.scalars(
                select(Link.activity_id).where(
                    one_of(session, Link.activity_id, chunk), Link.type == "contact"
                )
            )
        )
        for activity_id, role in session.execute(
            select(ActivityParticipant.activity_id, ActivityParticipant.role).where(
                one_of(session, ActivityParticipant.activity_id, chunk),
                ActivityParticipant.user_id == user_id,
            )
        ):
            if activity_id in linked:
                sent[activity_id] = sent.get(activity_id, False) or role == "from"
    return sent


def _inbound_replies(session: Session, emails: list[_Followable]) -> dict[int, list[datetime]]:
    """For each email, the sorted times of the inbound emails of its conversation: those
    sharing a conversation key with it (its thread's root, its own Message-ID named in
    In-Reply-To or References, the provider's thread id: a reply Gmail threads by subject
    closes the follow-up too)."""
    keys: dict[int, set[str]] = defaultdict(set)
    for activity_id, key in thread_keys_of(session, [a.id for a in emails]):
        keys[activity_id].add(key)
    for a in emails:  # rows stored before conversation keys were kept
        keys[a.id].update((a.key, a.thread_key))
    inbound_by_key = _inbound_by_key(session, set().union(*keys.values()) if keys else set())
    replies: dict[int, list[datetime]] = {}
    for a in emails:
        found = set().union(*(inbound_by_key.get(k, set()) for k in keys[a.id]))
        replies[a.id] = sorted(t for activity_id, t in found if activity_id != a.id)
    return replies


def _inbound_by_key(session: Session, keys: set[str]) -> dict[str, set[tuple[int, datetime]]]:
    """Conversation key -> (id, time) of the inbound emails filed under it."""
    inbound: dict[str, set[tuple[int, datetime]]] = defaultdict(set)
    for chunk in chunked(sorted(keys), IN_LIMIT):
        for key, activity_id, occurred_at in session.execute(
            select(ThreadKey.key, Activity.id, Activity.occurred_at)
            .join(Activity, Activity.id == ThreadKey.activity_id)
            .where(
                ThreadKey.key.in_(chunk),
                Activity.kind == "email",
                Activity.direction == "inbound",
            )
        ):
            inbound[key].add((activity_id, occurred_at))
    return inbound


def _first_reply(activity: _Followable, replies: dict[int, list[datetime]]) -> datetime | None:
    """The first inbound email of an email's conversation after it (a meeting has none)."""
    if activity.kind != "email":
        return None
    times = replies.get(activity.id, [])
    i = bisect.bisect_right(times, activity.occurred_at)
    return times[i] if i < len(times) else None


def _contacts_of(session: Session, ids: list[int]) -> dict[int, list[tuple[int, str]]]:
    """Activity id -> (id, name) of the contacts it is linked to, in the order linked."""
    contacts: dict[int, list[tuple[int, str]]] = defaultdict(list)
    for chunk in chunked(ids, IN_LIMIT):
        for activity_id, cid, name in session.execute(
            select(Link.activity_id, Contact.id, Contact.name)
            .join(Contact, and_(Link.type == "contact", Link.target_id == Contact.id))
            .where(Link.activity_id.in_(chunk))
            .order_by(Link.id)
        ):
            contacts[activity_id].append((cid, name))
    return contacts


def _deals_of(session: Session, ids: list[int]) -> dict[int, tuple[int, str]]:
    """Activity id -> (id, "OPP-42 Acme renewal") of the deal it is linked to: with several
    (tags, or matching.opportunity = all-open), the one a tag or an admin named, else the
    lowest id, so a task names the same deal whatever order the rows come in."""
    rank = {"tag": 0, "manual": 0}
    found: dict[int, tuple[int, int, str]] = {}
    for chunk in chunked(ids, IN_LIMIT):
        for activity_id, reason, opp_id, external_id, name in session.execute(
            select(
                Link.activity_id,
                Link.reason,
                Opportunity.id,
                Opportunity.external_id,
                Opportunity.name,
            )
            .join(Opportunity, and_(Link.type == "opportunity", Link.target_id == Opportunity.id))
            .where(Link.activity_id.in_(chunk))
        ):
            this = (rank.get(reason, 1), opp_id, f"{external_id} {name}")
            if activity_id not in found or this < found[activity_id]:
                found[activity_id] = this
    return {activity_id: (opp_id, label) for activity_id, (_, opp_id, label) in found.items()}


def _meeting_owners(session: Session, activity_ids: list[int]) -> dict[int, int]:
    """A meeting's follow-up goes to its organizer if a user, else its first user attendee."""
    owners: dict[int, int] = {}
    for chunk in chunked(activity_ids, IN_LIMIT):
        for activity_id, user_id, role in session.execute(
            select(
                ActivityParticipant.activity_id,
                ActivityParticipant.user_id,
                ActivityParticipant.role,
            )
            .where(
                ActivityParticipant.activity_id.in_(chunk),
                ActivityParticipant.user_id.is_not(None),
            )
            .order_by(ActivityParticipant.id)
        ):
            if user_id is not None and (role == "organizer" or activity_id not in owners):
                owners[activity_id] = user_id
    return owners


def task_status_by_uid(session: Session, uids: list[str]) -> dict[str, TaskStatus]:
    """The stored status of each of these tasks (those stored)."""
    found: dict[str, TaskStatus] = {}
    for chunk in chunked(uids, IN_LIMIT):
        found.update(
            session.execute(select(Task.uid, Task.status).where(Task.uid.in_(chunk))).all()
        )
    return found


def task_deal_by_uid(session: Session, uids: list[str]) -> dict[str, int | None]:
    """The deal each of these stored tasks is about (None: none)."""
    found: dict[str, int | None] = {}
    for chunk in chunked(uids, IN_LIMIT):
        found.update(
            session.execute(select(Task.uid, Task.opportunity_id).where(Task.uid.in_(chunk))).all()
        )
    return found


# --- the day's call list ----------------------------------------------------------------


@dataclass(frozen=True)
class DueFollowUp:
    """An open follow-up task of the user, due before the end of the day."""

    title: str
    due: datetime


@dataclass(frozen=True)
class CoolingDeal:
    """An open deal the user owns with no touch for ``call_list.cooling_days``."""

    external_id: str
    name: str
    account: str
    stage: str | None
    last_touch: datetime | None  # None: never touched
    engagement: Engagement


@dataclass(frozen=True)
class MeetingPerson:
    """An external participant of a meeting: their last touch before it, their open deals
    (those they have a role in, and their account's)."""

    name: str
    address: str
    account: str | None
    known: bool  # a CRM contact
    last_touch: datetime | None
    deals: tuple[str, ...]  # "OPP-42 Acme renewal"


@dataclass(frozen=True)
class DayMeeting:
    subject: str
    starts_at: datetime
    people: tuple[MeetingPerson, ...]


@dataclass(frozen=True)
class CallListFacts:
    """What a user's call list of one day is made of (see syncd.calllist)."""

    followups: tuple[DueFollowUp, ...]  # by due time
    cooling: tuple[CoolingDeal, ...]  # in no order: the call list ranks them
    meetings: tuple[DayMeeting, ...]  # by start


def call_list_facts(
    session: Session,
    settings: Settings,
    user_id: int,
    day: tuple[datetime, datetime],
    now: datetime,
) -> CallListFacts:
    """The user's open follow-ups due before the end of ``day`` (its start and end), their
    cooling deals as of ``now``, and the meetings of ``day`` they take part in."""
    followups = tuple(
        DueFollowUp(title, due)
        for title, due in session.execute(
            select(Task.title, Task.due)
            .where(
                Task.user_id == user_id,
                Task.rule != "call-list",
                Task.status == "open",
                Task.due < day[1],
            )
            .order_by(Task.due, Task.id)
        )
    )
    return CallListFacts(
        followups,
        _cooling_deals(session, settings, user_id, now),
        _day_meetings(session, settings, user_id, day, now),
    )


def _cooling_deals(
    session: Session, settings: Settings, user_id: int, now: datetime
) -> tuple[CoolingDeal, ...]:
    """The open deals the user owns untouched since ``call_list.cooling_days`` before now."""
    deals = session.execute(
        select(Opportunity, Account.name)
        .join(Account, Account.id == Opportunity.account_id)
        .where(Opportunity.owner_id == user_id, Opportunity.status == "open")
    ).all()
    last = insight.last_activity(session, "opportunity", [o.id for o, _ in deals], now)
    floor = now - timedelta(days=settings.call_list.cooling_days)
    cooling = [(o, account) for o, account in deals if o.id not in last or last[o.id] < floor]
    scores = insight.engagement(session, settings, "opportunity", [o.id for o, _ in cooling], now)
    return tuple(
        CoolingDeal(o.external_id, o.name, account, o.stage, last.get(o.id), scores[o.id])
        for o, account in cooling
    )


def _day_meetings(
    session: Session,
    settings: Settings,
    user_id: int,
    day: tuple[datetime, datetime],
    now: datetime,
) -> tuple[DayMeeting, ...]:
    """The confirmed meetings of ``day`` the user takes part in, with their external
    participants (the company's own domains left out)."""
    mine = exists().where(
        ActivityParticipant.activity_id == Activity.id, ActivityParticipant.user_id == user_id
    )
    meetings = session.scalars(  # the day's meetings by time (an index), then whether hers
        select(Activity)
        .where(
            Activity.occurred_at >= day[0],
            Activity.occurred_at < day[1],
            Activity.kind == "meeting",
            Activity.status == "confirmed",
            mine,
        )
        .order_by(Activity.occurred_at, Activity.id)
    ).all()
    internal = company_domains(session, settings)
    out = []
    for m in meetings:
        seen: dict[str, ActivityParticipant] = {}
        for p in m.participants:
            ours = any(d in internal for d in parents(domain_of(p.address)))
            if p.user_id is None and not ours:
                seen.setdefault(p.address, p)
        out.append(DayMeeting(m.subject, m.occurred_at, _people(session, m, [*seen.values()], now)))
    return tuple(out)


def _people(
    session: Session, meeting: Activity, people: list[ActivityParticipant], now: datetime
) -> tuple[MeetingPerson, ...]:
    """A meeting's external participants, each with their last touch before the meeting
    (and before now: a touch since it began changes nothing) and their open deals."""
    ids = sorted({p.contact_id for p in people if p.contact_id is not None})
    contacts = {
        c.id: (c, account)
        for c, account in session.execute(
            select(Contact, Account.name)
            .outerjoin(Account, Account.id == Contact.account_id)
            .where(Contact.id.in_(ids))
        )
    }
    before = min(meeting.occurred_at, now)
    last = dict(
        session.execute(
            select(Link.target_id, func.max(Activity.occurred_at))
            .join(Activity, Activity.id == Link.activity_id)
            .where(
                Link.type == "contact",
                Link.target_id.in_(ids),
                Activity.occurred_at < before,
                Activity.status == "confirmed",
                Activity.id != meeting.id,
            )
            .group_by(Link.target_id)
        ).all()
    )
    deals = _open_deals(session, [c for c, _ in contacts.values()])
    out = []
    for p in people:
        found = contacts.get(p.contact_id) if p.contact_id is not None else None
        if found is None:
            out.append(MeetingPerson(p.name or p.address, p.address, None, False, None, ()))
            continue
        contact, account = found
        out.append(
            MeetingPerson(
                contact.name,
                p.address,
                account,
                True,
                last.get(contact.id),
                deals.get(contact.id, ()),
            )
        )
    return tuple(out)


def _open_deals(session: Session, contacts: list[Contact]) -> dict[int, tuple[str, ...]]:
    """Contact id -> the open deals they have a role in, then their account's, by id."""
    if not contacts:
        return {}
    accounts = {c.account_id for c in contacts if c.account_id is not None}
    with_role = select(OpportunityContact.opportunity_id).where(
        OpportunityContact.contact_id.in_([c.id for c in contacts])
    )
    deals = session.scalars(
        select(Opportunity)
        .where(
            Opportunity.status == "open",
            or_(Opportunity.id.in_(with_role), Opportunity.account_id.in_(accounts)),
        )
        .order_by(Opportunity.external_id)
    ).all()
    roles: dict[int, set[int]] = defaultdict(set)
    for opp_id, contact_id in session.execute(
        select(OpportunityContact.opportunity_id, OpportunityContact.contact_id).where(
            OpportunityContact.contact_id.in_([c.id for c in contacts])
        )
    ):
        roles[contact_id].add(opp_id)
    return {
        c.id: tuple(
            f"{d.external_id} {d.name}"
            for d in sorted(deals, key=lambda d: (d.id not in roles[c.id], d.external_id))
            if d.id in roles[c.id] or d.account_id == c.account_id
        )
        for c in contacts
    }


def call_lists(session: Session, user_id: int, today: str) -> dict[str, TaskStatus]:
    """The user's open call lists (of any day), and today's (uid ``today``) whatever its
    status: uid -> status."""
    return dict(
        session.execute(
            select(Task.uid, Task.status).where(
                Task.user_id == user_id,
                Task.rule == "call-list",
                or_(Task.status == "open", Task.uid == today),
            )
        ).all()
    )
