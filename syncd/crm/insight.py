"""What managers and salespeople read out of the CRM: how hot each contact, account and
open deal is (``syncd contacts``, ``syncd opportunities``, the call list), and the reports
``syncd report activity`` and ``syncd report pipeline``.

Engagement is scored from the stored activities when asked (``syncd.engagement``), one
query a record type and chunk. The activity report counts, per salesperson (or account, or
deal), in a period: emails sent and received, meetings held, the contacts, accounts and
deals touched, follow-ups done and overdue, and the deals cooling down (open, owned, with no
touch for ``call_list.cooling_days``). Times are the caller's to show (``syncd.display``).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Literal

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from syncd.batching import chunked
from syncd.config import Settings
from syncd.crm.models import (
    Account,
    Activity,
    ActivityParticipant,
    Contact,
    ContactAddress,
    Link,
    LoggedFor,
    Opportunity,
    Task,
    User,
)
from syncd.crm.rows import LOOKUP_CHUNK, one_of
from syncd.engagement import Engagement, Touch, score, touch_kind
from syncd.items import LinkType

Grouping = Literal["user", "account", "opportunity"]


# --- engagement ------------------------------------------------------------------------------


def touches_of(
    session: Session, type_: LinkType, ids: Iterable[int] | None, since: datetime
) -> dict[int, list[Touch]]:
    """The touches (emails and meetings since ``since``, cancelled meetings left out) of
    each record of this type linked to them: all records, or those of ``ids``."""
    query = (
        select(Link.target_id, Activity.occurred_at, Activity.kind, Activity.direction)
        .join(Activity, Activity.id == Link.activity_id)
        .where(Link.type == type_, Activity.occurred_at >= since, Activity.status == "confirmed")
    )
    found: dict[int, list[Touch]] = defaultdict(list)
    chunks = [None] if ids is None else list(chunked(sorted(set(ids)), LOOKUP_CHUNK))
    for chunk in chunks:
        where = query if chunk is None else query.where(one_of(session, Link.target_id, chunk))
        for target, when, kind, direction in session.execute(where):
            touch = touch_kind(kind, direction)
            if touch is not None:
                found[target].append(Touch(when, touch))
    return found


def engagement(
    session: Session,
    settings: Settings,
    type_: LinkType,
    ids: Iterable[int] | None,
    now: datetime,
) -> dict[int, Engagement]:
    """The engagement of these records (all linked ones when ``ids`` is None); a record with
    no touch in the window is cold."""
    window = now - timedelta(days=settings.engagement.window_days)
    touches = touches_of(session, type_, ids, window)
    wanted = touches.keys() if ids is None else set(ids)
    return {i: score(touches.get(i, []), settings.engagement, now) for i in wanted}


@dataclass(frozen=True)
class ContactEngagement:
    id: int
    name: str
    address: str
    account: str | None
    engagement: Engagement


def contacts(
    session: Session, settings: Settings, now: datetime, account: str | None = None
) -> list[ContactEngagement]:
    """Every contact (of one account, named by a domain or its name), hottest first."""
    query = select(Contact.id, Contact.name, Account.name).outerjoin(
        Account, Account.id == Contact.account_id
    )
    if account is not None:
        found = _account_id(session, account)
        query = query.where(Contact.account_id == found)
    rows = session.execute(query).all()
    first: dict[int, str] = {}
    for contact_id, address in session.execute(
        select(ContactAddress.contact_id, ContactAddress.address).order_by(ContactAddress.id)
    ):
        first.setdefault(contact_id, address)
    scores = engagement(session, settings, "contact", [r[0] for r in rows], now)
    out = [
        ContactEngagement(cid, name, first.get(cid, ""), acc, scores[cid])
        for cid, name, acc in rows
    ]
    out.sort(key=lambda c: (-c.engagement.points, c.name, c.id))
    return out


@dataclass(frozen=True)
class AccountEngagement:
    id: int
    name: str
    domains: tuple[str, ...]
    engagement: Engagement


def accounts(session: Session, settings: Settings, now: datetime) -> list[AccountEngagement]:
    """Every account, hottest first, with its domains."""
    from syncd.crm.models import AccountDomain

    domains: dict[int, list[str]] = defaultdict(list)
    for account_id, domain in session.execute(
        select(AccountDomain.account_id, AccountDomain.domain).order_by(AccountDomain.domain)
    ):
        domains[account_id].append(domain)
    rows = session.execute(select(Account.id, Account.name)).all()
    scores = engagement(session, settings, "account", [r[0] for r in rows], now)
    out = [
        AccountEngagement(aid, name, tuple(domains.get(aid, ())), scores[aid]) for aid, name in rows
    ]
    out.sort(key=lambda a: (-a.engagement.points, a.name, a.id))
    return out


def _account_id(session: Session, value: str) -> int:
    from syncd.crm.models import AccountDomain
    from syncd.matching.addresses import normalize_domain

    found = session.scalar(
        select(AccountDomain.account_id).where(AccountDomain.domain == normalize_domain(value))
    ) or session.scalar(select(Account.id).where(Account.name == value))
    if found is None:
        raise LookupError(f"no account with domain or name {value!r}; see 'syncd crm load'")
    return found


@dataclass(frozen=True)
class DealEngagement:
    id: int
    external_id: str
    name: str
    account: str
    stage: str | None
    status: str
    owner: str
    owner_timezone: str | None
    amount: str | None
    close_date: str | None
    last_activity: datetime | None
    engagement: Engagement


def opportunities(
    session: Session, settings: Settings, now: datetime, include_closed: bool = False
) -> list[DealEngagement]:
    """The open deals (every deal with ``include_closed``), hottest first, each with its
    last activity of any time."""
    query = (
        select(Opportunity, Account.name, User.email, User.timezone)
        .join(Account, Account.id == Opportunity.account_id)
        .join(User, User.id == Opportunity.owner_id)
    )
    if not include_closed:
        query = query.where(Opportunity.status == "open")
    rows = session.execute(query).all()
    ids = [o.id for o, *_ in rows]
    scores = engagement(session, settings, "opportunity", ids, now)
    last = last_activity(session, "opportunity", ids, now)
    out = []
    for o, account, owner, tz in rows:
        amount = f"{o.amount:,.0f} {o.currency or ''}".strip() if o.amount is not None else None
        out.append(
            DealEngagement(
                o.id,
                o.external_id,
                o.name,
                account,
                o.stage,
                o.status,
                owner,
                tz,
                amount,
                o.close_date.isoformat() if o.close_date else None,
                last.get(o.id),
                scores[o.id],
            )
        )
    out.sort(key=lambda d: (-d.engagement.points, d.external_id))
    return out


def last_activity(
    session: Session, type_: LinkType, ids: list[int], now: datetime
) -> dict[int, datetime]:
    """The time of the latest activity (of any age, up to now: a meeting next week is no
    activity yet) linked to each record."""
    found: dict[int, datetime] = {}
    for chunk in chunked(sorted(ids), LOOKUP_CHUNK):
        for target, when in session.execute(
            select(Link.target_id, func.max(Activity.occurred_at))
            .join(Activity, Activity.id == Link.activity_id)
            .where(
                Link.type == type_,
                one_of(session, Link.target_id, chunk),
                Activity.occurred_at <= now,
                Activity.status == "confirmed",
            )
            .group_by(Link.target_id)
        ):
            found[target] = when
    return found


# --- the activity report --------------------------------------------------------------------


@dataclass
class ActivityCounts:
    """One row of ``syncd report activity``: a salesperson, an account or a deal."""

    key: str  # the user's email, the account's name, the deal's external id
    name: str
    emails_sent: int = 0
    emails_received: int = 0
    meetings: int = 0
    contacts: set[int] = field(default_factory=set)
    accounts: set[int] = field(default_factory=set)
    deals: set[int] = field(default_factory=set)
    followups_done: int = 0
    followups_overdue: int = 0
    deals_cooling: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "name": self.name,
            "emails_sent": self.emails_sent,
            "emails_received": self.emails_received,
            "meetings": self.meetings,
            "contacts_touched": len(self.contacts),
            "accounts_touched": len(self.accounts),
            "deals_touched": len(self.deals),
            "followups_done": self.followups_done,
            "followups_overdue": self.followups_overdue,
            "deals_cooling": self.deals_cooling,
        }


def activity_report(
    session: Session,
    settings: Settings,
    since: datetime,
    until: datetime,
    now: datetime,
    by: Grouping = "user",
) -> list[ActivityCounts]:
    """Counts of the period [since, until) per salesperson (or account, or deal): see the
    module's docstring. Meetings count once they have begun (up to ``now``)."""
    activities = {
        a.id: a
        for a in session.execute(
            select(Activity.id, Activity.kind, Activity.direction, Activity.occurred_at).where(
                Activity.occurred_at >= since,
                Activity.occurred_at < min(until, now),  # what has happened (a wrong Date)
                Activity.status == "confirmed",
            )
        )
    }
    links: dict[int, dict[str, set[int]]] = defaultdict(lambda: defaultdict(set))
    roles: dict[int, dict[int, set[str]]] = defaultdict(lambda: defaultdict(set))
    for chunk in chunked(sorted(activities), LOOKUP_CHUNK):
        for activity_id, type_, target in session.execute(
            select(Link.activity_id, Link.type, Link.target_id).where(
                one_of(session, Link.activity_id, chunk)
            )
        ):
            links[activity_id][type_].add(target)
        for activity_id, user_id, role in session.execute(
            select(
                ActivityParticipant.activity_id,
                ActivityParticipant.user_id,
                ActivityParticipant.role,
            ).where(
                one_of(session, ActivityParticipant.activity_id, chunk),
                ActivityParticipant.user_id.is_not(None),
            )
        ):
            if user_id is not None:
                roles[activity_id][user_id].add(role)
        for activity_id, user_id in session.execute(
            select(LoggedFor.activity_id, LoggedFor.user_id).where(
                one_of(session, LoggedFor.activity_id, chunk)
            )
        ):  # a dropbox logged it for them: theirs to have touched, if no mail of theirs
            roles[activity_id].setdefault(user_id, set())
    rows = _rows(session, by)
    for activity_id, a in activities.items():
        for key in _groups(by, links[activity_id], roles[activity_id]):
            row = rows.get(key)
            if row is None:
                continue
            users = roles[activity_id]
            mine = users.get(key, set()) if by == "user" else set().union(*users.values())
            if mine or by != "user":  # a mail or meeting of theirs (not only forwarded)
                _count(row, a.kind, a.direction, a.occurred_at, mine, now)
            row.contacts |= links[activity_id]["contact"]
            row.accounts |= links[activity_id]["account"]
            row.deals |= links[activity_id]["opportunity"]
    _tasks(session, by, rows, since, until, now)
    _cooling(session, settings, by, rows, now)
    return sorted(rows.values(), key=lambda r: (r.name.lower(), r.key))


def _rows(session: Session, by: Grouping) -> dict[int, ActivityCounts]:
    if by == "user":
        return {u.id: ActivityCounts(u.email, u.name) for u in session.scalars(select(User))}
    if by == "account":
        return {a.id: ActivityCounts(a.name, a.name) for a in session.scalars(select(Account))}
    return {
        o.id: ActivityCounts(o.external_id, o.name) for o in session.scalars(select(Opportunity))
    }


def _groups(by: Grouping, links: dict[str, set[int]], users: dict[int, set[str]]) -> set[int]:
    if by == "user":
        return set(users)
    return links["account" if by == "account" else "opportunity"]


def _count(
    row: ActivityCounts, kind: str, direction: str, when: datetime, roles: set[str], now: datetime
) -> None:
    if kind == "meeting":
        if when <= now:
            row.meetings += 1
    elif direction == "outbound" and "from" in roles:
        row.emails_sent += 1
    elif direction == "inbound" and roles & {"to", "cc", "bcc"}:
        row.emails_received += 1


def _tasks(
    session: Session,
    by: Grouping,
    rows: dict[int, ActivityCounts],
    since: datetime,
    until: datetime,
    now: datetime,
) -> None:
    """Follow-ups done in the period, and open ones overdue (due before now and the end of
    the period), by their owner (or their deal, or its account)."""
    query = select(Task.user_id, Task.opportunity_id, Task.status, Task.due, Task.updated_at)
    account_of = (
        dict(session.execute(select(Opportunity.id, Opportunity.account_id)).all())
        if by == "account"
        else {}
    )
    for user_id, deal, status, due, updated in session.execute(
        query.where(Task.rule.in_(("no-reply", "meeting-notes")))
    ):
        key = user_id if by == "user" else deal if by == "opportunity" else None
        if by == "account" and deal is not None:
            key = account_of.get(deal)
        row = rows.get(key) if key is not None else None
        if row is None:
            continue
        if status == "done" and updated is not None and since <= updated < until:
            row.followups_done += 1
        elif status == "open" and due < min(now, until):
            row.followups_overdue += 1


def _cooling(
    session: Session,
    settings: Settings,
    by: Grouping,
    rows: dict[int, ActivityCounts],
    now: datetime,
) -> None:
    """Open deals with no touch for ``call_list.cooling_days``, by owner (or deal, or
    account)."""
    deals = session.execute(
        select(Opportunity.id, Opportunity.owner_id, Opportunity.account_id).where(
            Opportunity.status == "open"
        )
    ).all()
    last = last_activity(session, "opportunity", [d.id for d in deals], now)
    floor = now - timedelta(days=settings.call_list.cooling_days)
    for deal_id, owner, account in deals:
        when = last.get(deal_id)
        if when is not None and when >= floor:
            continue
        key = owner if by == "user" else account if by == "account" else deal_id
        if key in rows:
            rows[key].deals_cooling += 1
