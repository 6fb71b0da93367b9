"""``syncd explain``: what happened to one message or meeting, and why (read-only).

An item is found by its Message-ID (or a meeting's ``ical:UID``), by an activity's id, or by
a mailbox and the provider's id of the item in it. The answer says, for each place syncd
keeps a trace of it:

- **logged**: the activity, each of its links with the rule that made it, the mailboxes
  that saw it, and its follow-up tasks;
- **skipped**: in which mailbox, and which exclusion (``skips``, written in the batch's
  transaction with the item's key);
- **quarantined**: in which mailbox, and why;
- **not seen** by any mailbox, with where to look.

The same item may be all of these at once: logged from one mailbox, skipped as a copy in
another folder, quarantined in a third.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from sqlalchemy import select
from sqlalchemy.orm import Session

from syncd.crm.models import (
    Account,
    Activity,
    Contact,
    DroppedItem,
    Link,
    Mailbox,
    Opportunity,
    QuarantineEntry,
    Sighting,
    SkippedItem,
    Task,
)
from syncd.crm.skips import COPY, stored_key
from syncd.items import fit, thread_mark
from syncd.matching.addresses import normalize_message_id

Verdict = Literal["logged", "deleted", "skipped", "quarantined", "not seen"]

# the rule behind each link reason (syncd.matching.matcher; "manual": an admin's)
RULES: dict[tuple[str, str], str] = {
    ("contact", "address"): "a participant's address is this contact's",
    ("account", "contact"): "the account of a contact on it",
    ("account", "domain"): "a participant's address is at one of this account's domains",
    ("opportunity", "tag"): "the subject or the text names the deal ([OPP-n])",
    ("opportunity", "contact-role"): (
        "the most recently active open deal on which a participant has a role"
    ),
    ("opportunity", "account"): "the most recently active open deal of the account",
    ("opportunity", "thread"): "a message of the same conversation is linked to this deal",
}

# what each skip reason means, and what changes it (syncd.matching.exclusions)
SKIPS: dict[str, str] = {
    "excluded label": (
        "it is in a folder or has a label syncd leaves out (exclusions.folders, exclusions.labels)"
    ),
    "bulk": "it is bulk or mailing-list mail (List-Id, List-Unsubscribe, Precedence)",
    "auto-reply": "it is an automatic reply (Auto-Submitted, X-Autoreply)",
    "private": "its sender marked it private (Sensitivity); syncd never logs those",
    "blocklisted": (
        "a participant's address or domain is on the exclusion lists (exclusions.addresses, "
        "exclusions.domains)"
    ),
    "internal-only": "only the company's own people are on it (company.domains)",
    "no CRM participant": (
        "nobody on it is a CRM contact or at a CRM account's domain: load the contact or the "
        "account ('syncd crm load'), then log the past again ('syncd import mail --since')"
    ),
    "invitation-reply": "it is an attendee's answer to an invitation (the meeting is logged)",
    "outside the window": (
        "it was sent before the mailbox's first date (--since); 'syncd import mail --since "
        "DATE' logs older mail"
    ),
    COPY: "the same message was logged from another folder of this mailbox",
    "deleted": (
        "an admin deleted it from the CRM ('syncd activity delete'); it is never logged again"
    ),
    "nocrm": (
        "a salesperson removed its conversation from the CRM (a forward to a dropbox with "
        "dropbox.nocrm_word in its note); none of it is logged again"
    ),
    "forwarded": (
        "it is a forward to a dropbox: the messages it forwards are logged, never the forward"
    ),
    "refused": (
        "it came to a dropbox from someone who is not a CRM user: only users' mail is logged "
        "from a dropbox (load them with 'syncd crm load users')"
    ),
}


@dataclass
class Explanation:
    """What syncd knows of one item; ``verdict`` is the strongest: logged, skipped,
    quarantined, else not seen."""

    asked: str
    key: str | None = None
    activity: dict[str, Any] | None = None
    deleted: dict[str, Any] | None = None  # deleted by an admin: never logged again
    skipped: list[dict[str, Any]] = field(default_factory=list)
    quarantined: list[dict[str, Any]] = field(default_factory=list)

    @property
    def verdict(self) -> Verdict:
        if self.activity is not None:
            return "logged"
        if self.deleted is not None:
            return "deleted"
        if self.skipped:
            return "skipped"
        if self.quarantined:
            return "quarantined"
        return "not seen"

    def as_dict(self) -> dict[str, Any]:
        return {
            "asked": self.asked,
            "verdict": self.verdict,
            "key": self.key,
            "activity": self.activity,
            "deleted": self.deleted,
            "skipped": self.skipped,
            "quarantined": self.quarantined,
        }


class NotFound(LookupError):
    """An activity id or a mailbox that does not exist (exit 2)."""


def key_of(target: str) -> str:
    """The item key a Message-ID (with or without its <>) or an ``ical:``/``mid:`` key names."""
    text = target.strip()
    if text.startswith(("mid:", "ical:", "hash:")):
        return fit(text)
    return fit(f"mid:{normalize_message_id(text)}")


def explain(
    session: Session,
    target: str | None = None,
    *,
    mailbox: str | None = None,
    provider_id: str | None = None,
) -> Explanation:
    """Explain ``target`` (an activity id, a Message-ID or a key), or the item
    ``provider_id`` of ``mailbox``."""
    mailboxes = {i: name for i, name in session.execute(select(Mailbox.id, Mailbox.name))}
    if mailbox is not None:
        box = next((i for i, n in mailboxes.items() if n == mailbox), None)
        if box is None:
            raise NotFound(f"no mailbox named {mailbox!r}; see 'syncd mailbox list'")
        return _by_provider_id(session, mailboxes, box, provider_id or "", mailbox)
    if target is None:
        raise NotFound("name a Message-ID, an activity id, or --mailbox and --provider-id")
    if target.strip().isdigit():
        activity = session.get(Activity, int(target))
        if activity is None:
            raise NotFound(f"no activity {target}; see 'syncd activities' for the ids")
        found = Explanation(target, activity.key)
    else:
        found = Explanation(target, key_of(target))
        activity = session.scalar(select(Activity).where(Activity.key == found.key))
    if activity is not None:
        found.activity = _activity(session, mailboxes, activity)
    dropped = session.get(DroppedItem, found.key)
    by = "an admin"
    if dropped is None and found.key:  # its conversation removed with #nocrm (a dropbox)
        dropped = session.get(DroppedItem, thread_mark(found.key))
        by = "a salesperson (#nocrm)"
    if dropped is not None:
        found.deleted = {
            "at": dropped.dropped_at.isoformat(),
            "subject": dropped.subject,
            "by": by,
        }
    kept = [found.key, stored_key(found.key or "")]  # and as skips once kept it, in clear
    for skip in session.scalars(select(SkippedItem).where(SkippedItem.key.in_(kept))):
        found.skipped.append(_skip(mailboxes, skip))
    return found


def _by_provider_id(
    session: Session, mailboxes: dict[int, str], box: int, provider_id: str, name: str
) -> Explanation:
    found = Explanation(f"{name} {provider_id}")
    pid = fit(provider_id)
    sighting = session.scalar(
        select(Sighting).where(Sighting.mailbox_id == box, Sighting.provider_id == pid)
    )
    if sighting is not None:
        activity = session.get(Activity, sighting.activity_id)
        if activity is not None:
            found.key = activity.key
            found.activity = _activity(session, mailboxes, activity)
    for skip in session.scalars(
        select(SkippedItem).where(SkippedItem.mailbox_id == box, SkippedItem.provider_id == pid)
    ):
        found.key = found.key or skip.key
        found.skipped.append(_skip(mailboxes, skip))
    for entry in session.scalars(
        select(QuarantineEntry).where(
            QuarantineEntry.mailbox_id == box, QuarantineEntry.provider_id == pid
        )
    ):
        found.quarantined.append(
            {
                "mailbox": name,
                "source": entry.source,
                "provider_id": entry.provider_id,
                "reason": entry.reason,
                "since": entry.created_at.isoformat(),
                "attempts": entry.attempts,
            }
        )
    return found


def _skip(mailboxes: dict[int, str], skip: SkippedItem) -> dict[str, Any]:
    return {
        "mailbox": mailboxes.get(skip.mailbox_id, "?"),
        "source": skip.source,
        "provider_id": skip.provider_id,
        "reason": skip.reason,
        "why": SKIPS.get(skip.reason, skip.reason),
        "seen_at": skip.seen_at.isoformat(),
    }


def _name(session: Session, kind: str, target_id: int) -> str:
    """A linked record's name (a deal's with its external id); '?' when it is gone."""
    if kind == "opportunity":
        deal = session.get(Opportunity, target_id)
        return f"{deal.external_id} {deal.name}" if deal is not None else "?"
    if kind == "contact":
        contact = session.get(Contact, target_id)
        return contact.name if contact is not None else "?"
    account = session.get(Account, target_id)
    return account.name if account is not None else "?"


def _activity(session: Session, mailboxes: dict[int, str], a: Activity) -> dict[str, Any]:
    links = []
    for lk in session.scalars(select(Link).where(Link.activity_id == a.id).order_by(Link.id)):
        name = _name(session, lk.type, lk.target_id)
        links.append(
            {
                "type": lk.type,
                "id": lk.target_id,
                "name": name,
                "reason": lk.reason,
                "rule": RULES.get((lk.type, lk.reason), lk.reason),
            }
        )
    sightings = [
        {
            "mailbox": mailboxes.get(s.mailbox_id, "?"),
            "source": s.source,
            "provider_id": s.provider_id,
            "seen_at": s.seen_at.isoformat(),
        }
        for s in session.scalars(
            select(Sighting).where(Sighting.activity_id == a.id).order_by(Sighting.id)
        )
    ]
    tasks = [
        {"title": t.title, "due": t.due.isoformat(), "status": t.status, "rule": t.rule}
        for t in session.scalars(select(Task).where(Task.activity_id == a.id).order_by(Task.id))
    ]
    return {
        "id": a.id,
        "key": a.key,
        "kind": a.kind,
        "subject": a.subject,
        "occurred_at": a.occurred_at.isoformat(),
        "direction": a.direction,
        "status": a.status,
        "links": links,
        "note": a.match_note,
        "sightings": sightings,
        "tasks": tasks,
    }
