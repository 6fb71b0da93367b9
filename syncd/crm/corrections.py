"""Corrections an admin makes by hand: ``syncd link`` and ``syncd unlink``.

- **link** gives an activity a link of reason ``manual`` to a deal, a contact or an
  account. A manual link is never replaced: not by a later copy of the activity, nor by its
  conversation's settling (a manual deal link counts there as the activity's own tag: the
  other messages of the conversation follow it), nor by a re-match. Linking a deal replaces
  the activity's weaker deal links (account, contact role, thread); its tags stay.
- **unlink** removes a link, whatever made it, and remembers that it was removed
  (``link_vetoes``): the same link is never made again for that activity. Linking it by
  hand later lifts the veto.

Both settle the activity's conversation again and have its owner's follow-up rules run
again at the next pass (an open task names the deal). One transaction each, the caller's.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session

from syncd.batching import chunked
from syncd.config import Settings
from syncd.crm import conversations, lookups
from syncd.crm.models import (
    Account,
    AccountDomain,
    Activity,
    Contact,
    ContactAddress,
    DroppedItem,
    Link,
    LinkVeto,
    Mailbox,
    Opportunity,
    Sighting,
    Task,
)
from syncd.crm.rows import LOOKUP_CHUNK
from syncd.crm.tasks import raised
from syncd.items import LinkType
from syncd.matching.addresses import normalize_address, normalize_domain
from syncd.settle import settle_activities, settle_keys


class CorrectionError(LookupError):
    """An activity or a record that does not exist, or a correction that cannot be made:
    the message names it and the fix (exit 2)."""


@dataclass(frozen=True)
class Target:
    """What a link points to."""

    type: LinkType
    id: int
    name: str


def target_of(
    session: Session,
    *,
    opportunity: str | None = None,
    contact: str | None = None,
    account: str | None = None,
) -> Target:
    """The one record named (a deal by external id, a contact by address, an account by
    domain or name)."""
    given = [v for v in (opportunity, contact, account) if v]
    if len(given) != 1:
        raise CorrectionError("name one of --opportunity, --contact or --account")
    if opportunity:
        deal = session.scalar(select(Opportunity).where(Opportunity.external_id == opportunity))
        if deal is None:
            raise CorrectionError(
                f"no opportunity {opportunity!r}; give its external id as loaded "
                "('syncd crm load opportunities FILE')"
            )
        return Target("opportunity", deal.id, f"{deal.external_id} {deal.name}")
    if contact:
        address = normalize_address(contact)
        person = session.scalar(
            select(Contact).join(ContactAddress).where(ContactAddress.address == address)
        )
        if person is None:
            raise CorrectionError(
                f"no contact has the address {address!r} ('syncd crm load contacts FILE')"
            )
        return Target("contact", person.id, person.name)
    assert account is not None
    found = session.scalar(
        select(Account).join(AccountDomain).where(AccountDomain.domain == normalize_domain(account))
    ) or session.scalar(select(Account).where(Account.name == account))
    if found is None:
        raise CorrectionError(f"no account {account!r}; give one of its domains or its exact name")
    return Target("account", found.id, found.name)


def _activity(session: Session, activity_id: int) -> Activity:
    activity = session.get(Activity, activity_id)
    if activity is None:
        raise CorrectionError(
            f"no activity {activity_id}; see 'syncd activities' (or 'syncd explain "
            "MESSAGE-ID') for the ids"
        )
    return activity


def link(
    session: Session, settings: Settings, activity_id: int, target: Target, now: datetime
) -> str:
    """Link the activity to ``target`` by hand; what was done, in a sentence."""
    activity = _activity(session, activity_id)
    session.execute(
        delete(LinkVeto).where(
            LinkVeto.activity_id == activity.id,
            LinkVeto.type == target.type,
            LinkVeto.target_id == target.id,
        )
    )
    if target.type == "opportunity":  # the weaker deal links give way; tags stay
        session.execute(
            delete(Link).where(
                Link.activity_id == activity.id,
                Link.type == "opportunity",
                Link.target_id != target.id,
                Link.reason.not_in(("tag", "manual")),
            )
        )
    existing = session.scalar(
        select(Link).where(
            Link.activity_id == activity.id,
            Link.type == target.type,
            Link.target_id == target.id,
        )
    )
    if existing is None:
        session.add(
            Link(activity_id=activity.id, type=target.type, target_id=target.id, reason="manual")
        )
        done = "linked"
    elif existing.reason in ("manual", "tag"):  # a tag is the item's own word: it stays one
        done = f"already linked ({existing.reason})"
    else:
        done = f"kept (was {existing.reason})"
        existing.reason = "manual"
    session.flush()
    _follow(session, settings, activity.id)
    return f"activity {activity.id} {done} to {target.type} {target.name} (manual)"


def unlink(
    session: Session, settings: Settings, activity_id: int, target: Target, now: datetime
) -> str:
    """Remove the activity's link to ``target`` and remember it; what was done."""
    activity = _activity(session, activity_id)
    linked = session.scalar(
        select(Link).where(
            Link.activity_id == activity.id,
            Link.type == target.type,
            Link.target_id == target.id,
        )
    )
    was_tag = linked is not None and linked.reason == "tag"
    if linked is not None:
        session.delete(linked)
    vetoed = session.scalar(
        select(LinkVeto.id).where(
            LinkVeto.activity_id == activity.id,
            LinkVeto.type == target.type,
            LinkVeto.target_id == target.id,
        )
    )
    if vetoed is None:
        session.add(
            LinkVeto(activity_id=activity.id, type=target.type, target_id=target.id, created_at=now)
        )
    session.flush()
    if was_tag:  # the deal's "latest tagged activity" evidence, without this one
        lookups.restate_tagged(session, [target.id])
    _follow(session, settings, activity.id)
    was = "unlinked from" if linked is not None else "was not linked to"
    return (
        f"activity {activity.id} {was} {target.type} {target.name}; "
        "it will not be linked to it again (syncd link lifts that)"
    )


@dataclass(frozen=True)
class Deleted:
    """What ``syncd activity delete`` removed."""

    activity_id: int
    subject: str
    links: int
    sightings: int
    tasks_cancelled: int  # cancelled in the calendars at their owners' next pass
    relinked: int  # other activities of its conversation whose deal was decided again


def delete_activity(
    session: Session, settings: Settings, activity_id: int, now: datetime
) -> Deleted:
    """Delete an activity with its participants, links, sightings and conversation keys;
    its follow-up tasks are cancelled (kept, without it, until the calendar has the
    cancellation); its key is kept (``dropped_items``), so no mailbox logs it again. The
    deals it tagged are restated and its conversation settled again without it."""
    activity = _activity(session, activity_id)
    links, subject = len(activity.links), activity.subject
    if session.get(DroppedItem, activity.key) is None:
        session.add(DroppedItem(key=activity.key, dropped_at=now, subject=activity.subject))
    removed = remove_activities(session, settings, [activity], now)
    return Deleted(activity_id, subject, links, removed.sightings, removed.tasks, removed.relinked)


@dataclass(frozen=True)
class Removed:
    sightings: int  # of the mailboxes that had seen them
    tasks: int  # their open tasks, cancelled (in the calendars at the owners' next pass)
    relinked: int  # other activities of their conversations whose deal was decided again


def remove_activities(
    session: Session, settings: Settings, activities: list[Activity], now: datetime
) -> Removed:
    """Remove these activities (``syncd activity delete``, ``syncd forget``): their tasks
    cancelled and kept without them until the calendar has the cancellation, the deals they
    tagged restated, their conversations settled again, and the follow-up rules of the
    mailboxes that saw them run again at their next pass (an answer may be gone)."""
    ids = [a.id for a in activities]
    if not ids:
        return Removed(0, 0, 0)
    keys = {key for _, key in conversations.thread_keys_of(session, ids)}
    tagged = sorted(
        {
            lk.target_id
            for a in activities
            for lk in a.links
            if lk.type == "opportunity" and lk.reason == "tag"
        }
    )
    seen: list[int] = []
    tasks: list[Task] = []
    for chunk in chunked(ids, LOOKUP_CHUNK):
        seen.extend(
            session.scalars(select(Sighting.mailbox_id).where(Sighting.activity_id.in_(chunk)))
        )
        tasks.extend(session.scalars(select(Task).where(Task.activity_id.in_(chunk))))
    cancelled = 0
    for task in tasks:
        if task.status == "open":  # a done one stays done, in the calendar too
            task.status, task.resolution = "cancelled", "activity deleted"
            task.version = raised()
            task.updated_at = now
            cancelled += 1
        task.activity_id = None
    for activity in activities:
        session.delete(activity)
    session.flush()
    if tagged:
        lookups.restate_tagged(session, tagged)
    relinked = settle_keys(session, lookups.base_index(session, settings), keys)
    if seen:
        session.execute(
            update(Mailbox).where(Mailbox.id.in_(sorted(set(seen)))).values(followups_at=None)
        )
    return Removed(len(seen), cancelled, relinked)


def _follow(session: Session, settings: Settings, activity_id: int) -> None:
    """The conversation settled again around the correction; the follow-up rules of the
    owners of its open tasks run again at their next pass."""
    settle_activities(session, lookups.base_index(session, settings), [activity_id])
    conversations.rerun_followups(session, [activity_id])
