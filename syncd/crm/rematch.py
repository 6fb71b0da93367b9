"""Re-matching: the links of stored activities decided again under today's CRM and rules.

A deal created after its emails were logged never got them; a contact added since was never
linked; a deal closed since still holds the mail that chose it as the most recent open deal;
an admin changed the deal policy. :func:`rematch` runs each chosen activity through the
matcher again, as a pass would today, from what the CRM stored of it (participants, subject
and body), then settles the deals of its whole conversation (``syncd.settle``):

- contact and account links, and the deals an activity names by tag, are made or removed to
  match what the matcher finds today (a contact's link moves to the contact that now has the
  address; a tag that named no deal then names the deal created since);
- the deal links chosen by weaker rules (thread, contact role, account) are settled for the
  conversation, as after a sync;
- a manual link (``syncd link``) is never removed, and a link an admin removed
  (``syncd unlink``) is never made again;
- an activity that would not be logged today (its participant is now blocklisted, it has no
  CRM participant any more) keeps its record and is reported: removing logged mail is the
  admin's decision (``syncd activity delete``, ``syncd forget``).

What changed is returned as :class:`Change` rows (activity, link type, old and new link with
their reasons), which ``syncd rematch --dry-run`` prints after rolling the transaction back:
the dry run does the same work as the real one, so its diff is the real run's.

``syncd crm load`` queues what it changed (:func:`queue`: the addresses of the contacts and
users it loaded, the domains of the accounts, the deals); the daemon re-matches the
activities they touch (:func:`run_queued`) in one transaction with the removal of the queue
rows, so a crash re-matches them again rather than never.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from sqlalchemy import delete, func, or_, select, update
from sqlalchemy.orm import Session, sessionmaker

from syncd.batching import chunked
from syncd.config import Settings
from syncd.crm import conversations, lookups
from syncd.crm.models import (
    Account,
    Activity,
    ActivityParticipant,
    Contact,
    Link,
    Opportunity,
    OpportunityContact,
    RematchRequest,
)
from syncd.crm.rows import LOOKUP_CHUNK, insert_rows, one_of
from syncd.items import Item, LinkReason, LinkType, MailItem, MeetingItem, Participant
from syncd.matching.exclusions import exclusion
from syncd.matching.matcher import CrmIndex, Match, item_facts, match
from syncd.settle import settle_keys

log = logging.getLogger("syncd.rematch")

# How long after a CRM change was queued an activity may still have been decided against
# the CRM as it was before, with a wide margin: a pass's CRM index is at most
# ``lookups.VIEW_SECONDS`` old when it decides a batch; deciding it, waiting for the turn to
# write it (on SQLite at most the busy timeout, 30 s by default), the load's own commit
# after its requests are queued, and the clock skew between the hosts of ``syncd worker``
# all take far less than the rest. An activity's time is its batch's (``created_at``).
FRESH_AFTER = timedelta(minutes=10)

CHUNK = 500  # activities matched at a time (their CRM records looked up together)


@dataclass(frozen=True)
class Change:
    """One link of one activity that the re-match changed: ``old`` and ``new`` say what it
    pointed to and why ("OPP-7 Acme rollout (account)"); None where there was, or is, none."""

    activity_id: int
    when: datetime
    subject: str
    type: LinkType
    old: str | None
    new: str | None


@dataclass
class Rematched:
    """What a re-match did: the activities it decided again, the link changes, and the
    activities that would not be logged today (id, reason)."""

    examined: int = 0
    changes: list[Change] = field(default_factory=list)
    excluded_now: list[tuple[int, str]] = field(default_factory=list)

    @property
    def activities_changed(self) -> int:
        return len({c.activity_id for c in self.changes})


# --- which activities ---------------------------------------------------------------------


def chosen(
    session: Session,
    settings: Settings,
    *,
    since: datetime | None = None,
    opportunity: str | None = None,
) -> list[int]:
    """The activities ``syncd rematch`` decides again: every one (since a date), or those a
    deal may concern: linked to it, to its account or to a contact with a role in it, or
    naming it by tag in their subject. Raises LookupError for an unknown deal."""
    query = select(Activity.id)
    if since is not None:
        query = query.where(Activity.occurred_at >= since)
    if opportunity is None:
        return list(session.scalars(query.order_by(Activity.id)))
    opp = session.scalar(
        select(Opportunity).where(func.lower(Opportunity.external_id) == opportunity.lower())
    )
    if opp is None:
        raise LookupError(
            f"no opportunity with external id {opportunity!r}; see the CRM's deals, or load "
            "it with 'syncd crm load opportunities FILE'"
        )
    found: set[int] = set()
    for chunk in chunked(sorted(_concerning(session, settings, [opp.id])), LOOKUP_CHUNK):
        found.update(session.scalars(query.where(one_of(session, Activity.id, chunk))))
    return sorted(found)


def _concerning(session: Session, settings: Settings, opportunity_ids: list[int]) -> set[int]:
    """Activities linked to these deals, their accounts or their contacts with a role, or
    whose subject names one of them by tag."""
    found: set[int] = set()
    for chunk in chunked(opportunity_ids, LOOKUP_CHUNK):
        opps = session.execute(
            select(Opportunity.id, Opportunity.external_id, Opportunity.account_id).where(
                Opportunity.id.in_(chunk)
            )
        ).all()
        contacts = set(
            session.scalars(
                select(OpportunityContact.contact_id).where(
                    OpportunityContact.opportunity_id.in_(chunk)
                )
            )
        )
        targets: list[tuple[LinkType, set[int]]] = [
            ("opportunity", {o.id for o in opps}),
            ("account", {o.account_id for o in opps}),
            ("contact", contacts),
        ]
        for type_, ids in targets:
            for part in chunked(sorted(ids), LOOKUP_CHUNK):
                found.update(
                    session.scalars(
                        select(Link.activity_id).where(Link.type == type_, Link.target_id.in_(part))
                    )
                )
        prefix = settings.matching.opportunity_tag_prefix
        for o in opps:
            bare = o.external_id.removeprefix(prefix)
            tags = {f"[{prefix}{bare}]", f"[{o.external_id}]"}
            like = [Activity.subject.ilike(f"%{_literal(t)}%", escape="\\") for t in tags]
            found.update(session.scalars(select(Activity.id).where(or_(*like))))
    return found


def _literal(value: str) -> str:
    """A value inside a LIKE pattern, its ``%``, ``_`` and ``\\`` taken literally."""
    return value.replace("\\", "\\\\").replace("_", "\\_").replace("%", "\\%")


def touched(session: Session, addresses: Iterable[str], domains: Iterable[str]) -> set[int]:
    """The activities a CRM change may concern: with a participant at one of these
    addresses, or at one of these domains or below them."""
    found: set[int] = set()
    for chunk in chunked(sorted(set(addresses)), LOOKUP_CHUNK):
        found.update(
            session.scalars(
                select(ActivityParticipant.activity_id).where(
                    one_of(session, ActivityParticipant.address, chunk)
                )
            )
        )
    for chunk in chunked(sorted(set(domains)), 50):  # a scan: few ORs at a time
        clauses = [
            ActivityParticipant.address.like(f"%{sep}{_literal(domain)}", escape="\\")
            for domain in chunk
            for sep in ("@", ".")
        ]
        found.update(session.scalars(select(ActivityParticipant.activity_id).where(or_(*clauses))))
    return found


# --- deciding again ------------------------------------------------------------------------


def rematch(session: Session, settings: Settings, activity_ids: Sequence[int]) -> Rematched:
    """Decide the links of these activities again (see the module's docstring), in the
    caller's transaction; returns what changed, for these activities and for the other
    activities of their conversations that the settling relinked."""
    done = Rematched(examined=len(activity_ids))
    if not activity_ids:
        return done
    index = lookups.base_index(session, settings)
    keys = {key for _, key in conversations.thread_keys_of(session, activity_ids)}
    members = sorted(
        {n.id for component in conversations.thread_components(session, keys) for n in component}
        | set(activity_ids)
    )
    before = _links_of(session, members)
    tagged: set[int] = set()  # deals whose tag links changed
    for chunk in chunked(sorted(activity_ids), CHUNK):
        tagged |= _rematch_chunk(session, index, chunk, done)
    session.flush()
    if tagged:  # their latest tagged activity ranks them against other deals (settle)
        lookups.load_opportunities(session, index, tagged)
        for opp_id, when in lookups.restate_tagged(session, sorted(tagged)).items():
            index.set_last_activity(opp_id, when)
    settle_keys(session, index, keys)
    session.flush()
    after = _links_of(session, members)
    done.changes = _diff(session, before, after)
    return done


def _rematch_chunk(session: Session, index: CrmIndex, ids: list[int], done: Rematched) -> set[int]:
    """Re-match these activities' contact, account and tag links; returns the deals whose
    tag links changed."""
    stored, whole = _stored_items(session, ids)
    lookups.fill(session, index, list(stored.values()))
    tagged: set[int] = set()
    vetoed = conversations.vetoes(session, ids)
    have = _links_of(session, ids)
    add: list[dict[str, object]] = []
    for activity_id, item in stored.items():
        m = match(item, index)
        excluded = exclusion(item, m, index, forced=True)  # what no label or dropbox lets in
        if excluded is not None:
            done.excluded_now.append((activity_id, str(excluded)))
        wanted = {
            (lk.type, lk.target_id): lk.reason
            for lk in m.links
            if lk.type != "opportunity" or lk.reason == "tag"
        }
        current = have.get(activity_id, {})
        for (type_, target), reason in current.items():
            if reason == "manual" or (type_ == "opportunity" and reason != "tag"):
                continue  # an admin's, or a deal the settling decides
            if type_ == "opportunity" and activity_id not in whole:
                continue  # the tag may be in the part of the body the CRM did not keep
            if (type_, target) not in wanted:
                if type_ == "opportunity":
                    tagged.add(target)
                session.execute(
                    delete(Link).where(
                        Link.activity_id == activity_id,
                        Link.type == type_,
                        Link.target_id == target,
                    )
                )
        for (type_, target), reason in wanted.items():
            known = current.get((type_, target))
            if (activity_id, type_, target) in vetoed or known == "manual" or known == reason:
                continue
            if type_ == "opportunity":
                tagged.add(target)
            if known is None:
                row = {"activity_id": activity_id, "type": type_, "target_id": target}
                add.append({**row, "reason": reason})
            else:  # the same record, found another way (a tag for a deal chosen by thread)
                session.execute(
                    update(Link)
                    .where(
                        Link.activity_id == activity_id,
                        Link.type == type_,
                        Link.target_id == target,
                    )
                    .values(reason=reason)
                )
        _restate(session, activity_id, m)
    insert_rows(session, Link, add)
    return tagged


def _restate(session: Session, activity_id: int, m: Match) -> None:
    """The activity's participants' contacts and users, its direction, and the parts of its
    note that are facts of the item (a tag naming no deal), as matched today; the settling
    adds the notes about its deal."""
    session.execute(
        update(Activity)
        .where(Activity.id == activity_id)
        .values(direction=m.direction, match_note=item_facts(m.note))
    )
    for p in m.participants:
        session.execute(
            update(ActivityParticipant)
            .where(
                ActivityParticipant.activity_id == activity_id,
                ActivityParticipant.address == p.address,
                ActivityParticipant.role == p.role,
            )
            .values(contact_id=p.contact_id, user_id=p.user_id)
        )


def _stored_items(session: Session, ids: list[int]) -> tuple[dict[int, Item], set[int]]:
    """The activities as the matcher reads items: participants, subject and body (or the
    snippet, when the body policy kept no more), their time and conversation; and which of
    them have their whole text (the body policy ``full``: a tag not found is not there)."""
    people: dict[int, list[Participant]] = defaultdict(list)
    for activity_id, address, name, role in session.execute(
        select(
            ActivityParticipant.activity_id,
            ActivityParticipant.address,
            ActivityParticipant.name,
            ActivityParticipant.role,
        )
        .where(one_of(session, ActivityParticipant.activity_id, ids))
        .order_by(ActivityParticipant.id)
    ):
        people[activity_id].append(Participant(address, name, role))
    items: dict[int, Item] = {}
    whole: set[int] = set()
    for a in session.scalars(select(Activity).where(one_of(session, Activity.id, ids))):
        if a.body is not None:
            whole.add(a.id)
        text = a.body or a.snippet or ""
        who = tuple(people[a.id])
        item: Item
        if a.kind == "meeting":
            item = MeetingItem(
                key=a.key,
                uid=a.key,
                recurrence_id=None,
                provider_id="",
                subject=a.subject,
                start=a.occurred_at,
                end=a.ends_at or a.occurred_at,
                participants=who,
                cancelled=a.status == "cancelled",
                description=text,
            )
        else:
            item = MailItem(
                key=a.key,
                provider_id="",
                message_id=None,
                subject=a.subject,
                sent_at=a.occurred_at,
                participants=who,
                thread_key=a.thread_key,
                body=text,
            )
        items[a.id] = item
    return items, whole


Links = dict[int, dict[tuple[LinkType, int], LinkReason]]  # activity -> (type, target) -> why


def _links_of(session: Session, ids: Sequence[int]) -> Links:
    found: Links = defaultdict(dict)
    for chunk in chunked(sorted(ids), LOOKUP_CHUNK):
        for activity_id, type_, target, reason in session.execute(
            select(Link.activity_id, Link.type, Link.target_id, Link.reason).where(
                one_of(session, Link.activity_id, chunk)
            )
        ):
            found[activity_id][(type_, target)] = reason
    return found


def _diff(
    session: Session,
    before: Links,
    after: Links,
) -> list[Change]:
    """The link changes, one row a link: a link whose reason changed is one row (old and
    new); a deal replaced by another is one row too (the old deal and the new)."""
    names = _Names(session)
    rows: list[tuple[int, LinkType, str | None, str | None]] = []
    for activity_id in sorted(set(before) | set(after)):
        old, new = before.get(activity_id, {}), after.get(activity_id, {})
        if old == new:
            continue
        for type_ in ("contact", "account", "opportunity"):
            gone = _only(old, new, type_)
            came = _only(new, old, type_)
            for i in range(max(len(gone), len(came))):
                was = names.of(type_, *gone[i]) if i < len(gone) else None
                now = names.of(type_, *came[i]) if i < len(came) else None
                rows.append((activity_id, type_, was, now))
    if not rows:
        return []
    shown: dict[int, tuple[datetime, str]] = {}
    for chunk in chunked(sorted({r[0] for r in rows}), LOOKUP_CHUNK):
        for a in session.execute(
            select(Activity.id, Activity.occurred_at, Activity.subject).where(
                one_of(session, Activity.id, chunk)
            )
        ):
            shown[a.id] = (a.occurred_at, a.subject)
    return [Change(a, shown[a][0], shown[a][1], t, old, new) for a, t, old, new in rows]


def _only(
    these: dict[tuple[LinkType, int], LinkReason],
    other: dict[tuple[LinkType, int], LinkReason],
    type_: str,
) -> list[tuple[int, LinkReason]]:
    """The links of one type in ``these`` that ``other`` lacks or has for another reason."""
    return sorted((t, r) for (y, t), r in these.items() if y == type_ and other.get((y, t)) != r)


class _Names:
    """Links as people read them: ``OPP-7 Acme rollout (tag)``, ``carla@acme.test``."""

    def __init__(self, session: Session) -> None:
        self.session = session
        self.known: dict[tuple[str, int], str] = {}

    def of(self, type_: str, target: int, reason: str) -> str:
        key = (type_, target)
        if key not in self.known:
            self.known[key] = self._name(type_, target)
        return f"{self.known[key]} ({reason})"

    def _name(self, type_: str, target: int) -> str:
        if type_ == "opportunity":
            opp = self.session.get(Opportunity, target)
            return f"{opp.external_id} {opp.name}" if opp else f"opportunity {target} (removed)"
        if type_ == "account":
            account = self.session.get(Account, target)
            return account.name if account else f"account {target} (removed)"
        contact = self.session.get(Contact, target)
        if contact is None:
            return f"contact {target} (removed)"
        first = contact.addresses[0].address if contact.addresses else ""
        return f"{contact.name} <{first}>" if first else contact.name


# --- after a CRM load ------------------------------------------------------------------------


def queue(
    session: Session,
    addresses: Iterable[str] = (),
    domains: Iterable[str] = (),
    opportunity_ids: Iterable[int] = (),
) -> int:
    """Queue what a CRM load changed, for the daemon to re-match the activities it touches
    (in the load's transaction); returns how many changes are queued. Always a new row,
    even for a value already waiting: a re-match running meanwhile read the CRM before this
    change, and takes away only the rows it read."""
    wanted = {("address", a) for a in addresses}
    wanted |= {("domain", d) for d in domains}
    wanted |= {("opportunity", str(i)) for i in opportunity_ids}
    now = datetime.now(UTC)
    rows = [{"kind": k, "value": v, "queued_at": now} for k, v in sorted(wanted)]
    insert_rows(session, RematchRequest, rows)
    return len(rows)


def pending(session: Session) -> int:
    return int(session.scalar(select(func.count()).select_from(RematchRequest)) or 0)


def queued_activities(session: Session, settings: Settings) -> tuple[list[int], list[int]]:
    """The activities that the queued CRM changes touch, and the ids of the requests read
    (those to take off the queue once they are re-matched).

    An activity recorded more than :data:`FRESH_AFTER` after the last request was queued
    was matched against the changed CRM already (a pass reads the CRM again once it is
    ``lookups.VIEW_SECONDS`` old), and is left out: a company that loads its CRM and then
    imports years of mail does not re-match all of it once more, for nothing. The times
    compared are the clock's when the request was queued and the batch's (``created_at``):
    a pass run with a clock of its own (a test's) is compared by that clock."""
    by_kind: dict[str, set[str]] = defaultdict(set)
    taken: list[int] = []
    last: datetime | None = None
    for request_id, kind, value, queued_at in session.execute(
        select(
            RematchRequest.id, RematchRequest.kind, RematchRequest.value, RematchRequest.queued_at
        )
    ):
        by_kind[kind].add(value)
        taken.append(request_id)
        last = queued_at if last is None else max(last, queued_at)
    if last is None:
        return [], []
    ids = touched(session, by_kind["address"], by_kind["domain"])
    deals = [int(v) for v in by_kind["opportunity"] if v.isdigit()]
    ids |= _concerning(session, settings, deals)
    cutoff = last + FRESH_AFTER
    older: list[int] = []
    for chunk in chunked(sorted(ids), LOOKUP_CHUNK):
        older.extend(
            session.scalars(
                select(Activity.id).where(
                    one_of(session, Activity.id, chunk), Activity.created_at < cutoff
                )
            )
        )
    return sorted(older), taken


def clear_queue(session: Session, taken: list[int]) -> None:
    """Take these requests off the queue (a load that queued more meanwhile is re-matched
    next time)."""
    for chunk in chunked(taken, LOOKUP_CHUNK):
        session.execute(delete(RematchRequest).where(one_of(session, RematchRequest.id, chunk)))


def run_queued(
    sessions: sessionmaker[Session], settings: Settings, stop: Callable[[], bool] = lambda: False
) -> Rematched | None:
    """Re-match the activities that the queued CRM changes touch, CHUNK activities a
    transaction (a long re-match never holds the database for long), then take the requests
    read off the queue; None when nothing was queued. Stopped (``stop()``) or killed
    between chunks, the requests stay and the next run re-matches them all again: a
    re-match of what is already right changes nothing."""
    with sessions() as session:
        ids, taken = queued_activities(session, settings)
    if not taken:
        return None
    done = Rematched()
    for chunk in chunked(ids, CHUNK):
        if stop():
            return done
        with sessions.begin() as session:
            part = rematch(session, settings, chunk)
        done.examined += part.examined
        done.changes.extend(part.changes)
        done.excluded_now.extend(part.excluded_now)
    with sessions.begin() as session:
        clear_queue(session, taken)
    return done
