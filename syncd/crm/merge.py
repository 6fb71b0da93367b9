"""Two contacts made one by hand (issue 15): ``syncd contact merge KEEP OTHER``.

``contact merge KEEP OTHER`` makes two contacts one: the same person under two
addresses. OTHER's addresses, deal roles, activity links, participants, tasks, vetoes and
import counts move to KEEP, never doubling a row (one role a deal, one link an activity);
KEEP keeps its name and account unless it has none. Contacts at different accounts are
merged too, with a warning naming both: a person who changed companies is still one
person. OTHER is removed.

Like the removals of :mod:`syncd.crm.records_edit`, it runs in the caller's transaction,
settles the conversations it touched, and raises
:class:`~syncd.crm.corrections.CorrectionError` for a contact that does not exist.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session

from syncd.batching import chunked
from syncd.config import Settings
from syncd.crm.corrections import CorrectionError
from syncd.crm.models import (
    Account,
    ActivityParticipant,
    Contact,
    ContactAddress,
    ContactKnowledge,
    Link,
    LinkVeto,
    OpportunityContact,
    Task,
)
from syncd.crm.records_edit import addresses_of, changed, contact_named, follow, linked
from syncd.crm.rows import IN_LIMIT
from syncd.matching.addresses import normalize_address


@dataclass
class Merged:
    """What ``syncd contact merge`` moved from the other contact to the one kept."""

    kept: str
    merged: str  # the other contact's name; it is removed
    addresses_moved: list[str] = field(default_factory=list)
    took: list[str] = field(default_factory=list)  # fields the kept contact had empty
    roles_moved: int = 0
    roles_dropped: int = 0  # the kept contact had a role in that deal already
    links_moved: int = 0
    links_dropped: int = 0  # the activity was linked to both, or vetoed for the kept one
    participants_moved: int = 0
    tasks_moved: int = 0
    vetoes_moved: int = 0
    vetoes_dropped: int = 0  # one already on the kept one, or lifted by a manual link
    knowledge_moved: int = 0  # what imports counted, one row a mailbox (added up)
    relinked: int = 0
    warnings: list[str] = field(default_factory=list)


def merge_contacts(session: Session, settings: Settings, keep: str, other: str) -> Merged:
    """Merge the contact that has ``other`` into the one that has ``keep`` (see the
    module's docstring)."""
    kept, gone = contact_named(session, keep), contact_named(session, other)
    if kept.id == gone.id:
        raise CorrectionError(
            f"{normalize_address(keep)!r} and {normalize_address(other)!r} are both addresses "
            f"of contact {kept.name!r}: nothing to merge"
        )
    done = Merged(kept.name, gone.name)
    here, there = kept.account_id, gone.account_id
    if here is not None and there is not None and here != there:
        names = dict(
            session.execute(
                select(Account.id, Account.name).where(Account.id.in_([here, there]))
            ).all()
        )
        done.warnings.append(
            f"contact {kept.name!r} is at account {names[here]!r} and {gone.name!r} at "
            f"{names[there]!r}: merged, at {names[here]!r}; the activities keep their "
            "account links"
        )
    _take_fields(kept, gone, done)
    done.addresses_moved = addresses_of(session, gone.id)
    session.execute(
        update(ContactAddress)
        .where(ContactAddress.contact_id == gone.id)
        .values(contact_id=kept.id)
    )
    _move_roles(session, kept.id, gone.id, done)
    _move_links(session, kept.id, gone.id, done)
    done.participants_moved = changed(
        session,
        update(ActivityParticipant)
        .where(ActivityParticipant.contact_id == gone.id)
        .values(contact_id=kept.id),
    )
    done.tasks_moved = changed(
        session, update(Task).where(Task.contact_id == gone.id).values(contact_id=kept.id)
    )
    _move_knowledge(session, kept.id, gone.id, done)
    session.execute(delete(Contact).where(Contact.id == gone.id))
    on = linked(session, "contact", kept.id) | set(
        session.scalars(
            select(ActivityParticipant.activity_id).where(ActivityParticipant.contact_id == kept.id)
        )
    )
    done.relinked = follow(session, settings, on)  # its roles may choose other deals now
    return done


def _take_fields(kept: Contact, gone: Contact, done: Merged) -> None:
    """What the kept contact has empty, from the other; which import it belongs to."""
    if not kept.name.strip() and gone.name.strip():
        kept.name, kept.first_name, kept.last_name = gone.name, gone.first_name, gone.last_name
        done.took.append("name")
    if kept.account_id is None and gone.account_id is not None:
        kept.account_id = gone.account_id
        done.took.append("account")
    for attr in ("title", "phone"):
        if not getattr(kept, attr) and getattr(gone, attr):
            setattr(kept, attr, getattr(gone, attr))
            done.took.append(attr)
    if kept.import_id != gone.import_id:  # no one import's undo may take the other's person
        kept.import_id = None


def _move_roles(session: Session, kept: int, gone: int, done: Merged) -> None:
    """The other's roles in deals, to the kept contact; one role a deal (the kept one's,
    or the other's where the kept one has none written)."""
    own = dict(
        session.execute(
            select(OpportunityContact.opportunity_id, OpportunityContact.role).where(
                OpportunityContact.contact_id == kept
            )
        ).all()
    )
    for opp_id, role in session.execute(
        select(OpportunityContact.opportunity_id, OpportunityContact.role).where(
            OpportunityContact.contact_id == gone
        )
    ).all():
        if opp_id not in own:
            continue
        if not own[opp_id] and role:
            session.execute(
                update(OpportunityContact)
                .where(
                    OpportunityContact.opportunity_id == opp_id,
                    OpportunityContact.contact_id == kept,
                )
                .values(role=role)
            )
        done.roles_dropped += changed(
            session,
            delete(OpportunityContact).where(
                OpportunityContact.opportunity_id == opp_id, OpportunityContact.contact_id == gone
            ),
        )
    done.roles_moved = changed(
        session,
        update(OpportunityContact)
        .where(OpportunityContact.contact_id == gone)
        .values(contact_id=kept),
    )


def _move_links(session: Session, kept: int, gone: int, done: Merged) -> None:
    """The other's links and vetoes, to the kept contact: one link and one veto an
    activity (a link made by hand stays one). Where an activity would then have both a link
    and a veto for the person, a link made by hand lifts the veto (as ``syncd link`` does);
    any other link gives way to it (as after ``syncd unlink``)."""
    links: dict[int, dict[int, str]] = {kept: {}, gone: {}}
    for activity_id, target, reason in session.execute(
        select(Link.activity_id, Link.target_id, Link.reason).where(
            Link.type == "contact", Link.target_id.in_([kept, gone])
        )
    ).all():
        links[target][activity_id] = reason
    vetoed: dict[int, set[int]] = {kept: set(), gone: set()}
    for activity_id, target in session.execute(
        select(LinkVeto.activity_id, LinkVeto.target_id).where(
            LinkVeto.type == "contact", LinkVeto.target_id.in_([kept, gone])
        )
    ).all():
        vetoed[target].add(activity_id)
    manual = {a for t in (kept, gone) for a, why in links[t].items() if why == "manual"}
    clash = (vetoed[kept] | vetoed[gone]) & (links[kept].keys() | links[gone].keys())
    blocked = clash - manual
    done.vetoes_dropped += _drop(session, LinkVeto, clash & manual, [kept, gone])
    done.links_dropped += _drop(session, Link, blocked, [kept, gone])
    both = (links[kept].keys() & links[gone].keys()) - blocked
    for chunk in chunked(sorted(both & manual), IN_LIMIT):
        session.execute(
            update(Link)
            .where(Link.activity_id.in_(chunk), Link.type == "contact", Link.target_id == kept)
            .values(reason="manual")
        )
    done.links_dropped += _drop(session, Link, both, [gone])
    done.links_moved = changed(
        session,
        update(Link).where(Link.type == "contact", Link.target_id == gone).values(target_id=kept),
    )
    twice = (vetoed[kept] & vetoed[gone]) - manual
    done.vetoes_dropped += _drop(session, LinkVeto, twice, [gone])
    done.vetoes_moved = changed(
        session,
        update(LinkVeto)
        .where(LinkVeto.type == "contact", LinkVeto.target_id == gone)
        .values(target_id=kept),
    )


def _drop(
    session: Session,
    model: type[Link] | type[LinkVeto],
    activity_ids: set[int],
    contacts: list[int],
) -> int:
    """The links (or vetoes) of these activities to these contacts removed; how many."""
    dropped = 0
    for chunk in chunked(sorted(activity_ids), IN_LIMIT):
        dropped += changed(
            session,
            delete(model).where(
                model.activity_id.in_(chunk),
                model.type == "contact",
                model.target_id.in_(contacts),
            ),
        )
    return dropped


def _move_knowledge(session: Session, kept: int, gone: int, done: Merged) -> None:
    """What imports counted of the other, to the kept contact: one row a mailbox, the
    two added up where both have one (the first seen the earlier, the last seen the later)."""
    own = {
        k.mailbox: k
        for k in session.scalars(
            select(ContactKnowledge).where(ContactKnowledge.contact_id == kept)
        )
    }
    for theirs in session.scalars(
        select(ContactKnowledge).where(
            ContactKnowledge.contact_id == gone, ContactKnowledge.mailbox.in_(sorted(own))
        )
    ).all():
        mine = own[theirs.mailbox]
        seen = [t for t in (mine.first_seen, theirs.first_seen) if t is not None]
        last = [t for t in (mine.last_seen, theirs.last_seen) if t is not None]
        mine.first_seen = min(seen) if seen else None
        mine.last_seen = max(last) if last else None
        mine.sent += theirs.sent
        mine.received += theirs.received
        mine.meetings += theirs.meetings
        if mine.import_id != theirs.import_id:  # no one import's undo takes both counts
            mine.import_id = None
        session.delete(theirs)
        done.knowledge_moved += 1
    session.flush()
    done.knowledge_moved += changed(
        session,
        update(ContactKnowledge).where(ContactKnowledge.contact_id == gone).values(contact_id=kept),
    )
