"""Dropbox mailboxes: the salesperson's way in. A salesperson puts the dropbox (``crm@...``)
in BCC, or forwards a thread to it, and the mail is logged, from any mail client.

A dropbox is a mailbox of any kind added with ``--dropbox``. Its pass reads whole messages
(``syncd.config.ReadLimits``: each item keeps its bytes) and sorts each one
(:func:`sort_batch`) before the usual decision and recording:

- **refused**: a message whose sender is not a CRM user is never logged (skipped as
  ``refused``, with a warning naming the sender): anyone can write to the dropbox;
- **BCC'd** (nothing forwarded in it): the message itself is logged as the sender's own,
  as if their own mailbox had read it;
- **forwarded**: each forwarded original, inline (Gmail, Outlook, Apple Mail, Thunderbird)
  or attached as ``message/rfc822`` (``syncd.connectors.forwards``), is logged with its own
  participants, date and Message-ID (so a copy another mailbox reads is the same activity);
  ``[OPP-n]`` in the forward's subject or the first line of the salesperson's note links
  the deal by hand (reason ``manual``: the conversation follows it, no re-match undoes it);
- ``#nocrm`` (``dropbox.nocrm_word``) in the note removes the forwarded conversation from the
  CRM instead (:func:`mute`): its activities are deleted, and none of its messages is ever
  logged again, from any mailbox (skipped as ``nocrm``).

What a dropbox logs is logged on behalf of the salesperson who sent it: its sighting names
that user (``sightings.user_id``) and it counts as theirs (``syncd activities --user``),
never as the dropbox's own user's. The dropbox's own addresses (``dropbox.addresses``) are
never participants. A dropbox's items are logged even without a CRM participant, like an
item with a force label: the salesperson asked for it (private and blocklisted ones never
are). A dropbox has no calendar, address books or follow-ups of its own.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from syncd.config import LimitSettings, Settings
from syncd.connectors.forwards import unpack
from syncd.connectors.mime import UnreadableMessage, read_message
from syncd.crm import conversations
from syncd.crm.corrections import remove_activities
from syncd.crm.models import Activity, DroppedItem
from syncd.crm.recorder import Decision
from syncd.crm.skips import Skip
from syncd.items import MailItem, Quarantined, conversation_keys, thread_mark
from syncd.matching.matcher import CrmIndex, LinkDecision, UserRef

log = logging.getLogger("syncd.dropbox")

MUTE_SUBJECT = "(a conversation removed with {word})"


@dataclass
class Sorted:
    """A dropbox batch sorted: what to log (each with the user it is logged for, and the deal
    names a forward chose), the conversations to remove, what was refused or unreadable."""

    items: list[MailItem] = field(default_factory=list)
    behalf: dict[str, int] = field(default_factory=dict)  # item key -> user id
    deals: dict[str, list[str]] = field(default_factory=dict)  # item key -> tag names
    muted: list[MailItem] = field(default_factory=list)
    skipped: list[Skip] = field(default_factory=list)
    quarantined: list[Quarantined] = field(default_factory=list)


def sort_batch(
    items: Iterable[MailItem],
    users: dict[str, UserRef],
    settings: Settings,
    index: CrmIndex,
    mailbox: str,
) -> Sorted:
    """Sort a dropbox's messages (see the module's docstring). No message stops the batch: one
    that cannot be unpacked is quarantined with its reason and its bytes."""
    done = Sorted()
    word = settings.dropbox.nocrm_word.lower()
    limits = LimitSettings(**settings.limits.model_dump())  # the originals keep no bytes
    for item in items:
        sender = item.sender
        user = users.get(sender.address) if sender is not None else None
        if user is None:
            who = sender.address if sender is not None else "no sender"
            log.warning(
                "dropbox %r: refused %r from %s: not a CRM user (only users' mail is logged)",
                mailbox,
                item.provider_id,
                who,
            )
            done.skipped.append((item.provider_id, "refused", item.key))
            continue
        try:
            unpacked = unpack(item.raw, limits=limits) if item.raw is not None else None
        except (UnreadableMessage, ValueError) as exc:
            reason = f"dropbox: the forward cannot be unpacked: {exc}"
            done.quarantined.append(Quarantined(item.provider_id, reason, item.raw, "rfc822"))
            continue
        if unpacked is None or not unpacked.originals:  # BCC'd: the sender's own message
            own = _without_dropbox(item, settings)
            done.items.append(own)
            done.behalf[own.key] = user.id
            continue
        for problem in unpacked.problems:
            log.info("dropbox %r: %r: %s", mailbox, item.provider_id, problem)
        first_line = next((ln for ln in unpacked.note.splitlines() if ln.strip()), "")
        named = [*index.tags(item.subject), *index.tags(first_line)]
        muted = word in unpacked.note.lower()
        for n, data in enumerate(unpacked.originals, 1):
            read = read_message(
                data, f"{item.provider_id}#forward-{n}", item.sent_at, limits=limits
            )
            if isinstance(read, Quarantined):
                done.quarantined.append(read)
                continue
            original = _without_dropbox(read, settings)
            if muted:
                done.muted.append(original)
                continue
            done.items.append(original)
            done.behalf[original.key] = user.id
            if named:
                done.deals[original.key] = list(dict.fromkeys(t.lower() for t in named))
    return done


def _without_dropbox(item: MailItem, settings: Settings) -> MailItem:
    """The item as logged: no bytes kept, and the dropbox's own addresses not participants."""
    own = set(settings.dropbox.addresses)
    people = tuple(p for p in item.participants if p.address not in own)
    if people == item.participants and item.raw is None:
        return item
    return replace(item, participants=people, raw=None)


def steer(decisions: list[Decision], sorted_: Sorted, index: CrmIndex) -> list[Decision]:
    """The decisions as the dropbox makes them: each for the user who sent it, and a deal a
    forward names linked by hand (``manual``) in place of the deals weaker rules chose."""
    steered = []
    for d in decisions:
        key = d.item.key
        names = sorted_.deals.get(key, [])
        chosen = [opp.id for name in names if (opp := index.opportunity_by_tag(name)) is not None]
        match = d.match
        if chosen:
            kept = [
                lk
                for lk in match.links
                if lk.type != "opportunity" or (lk.reason == "tag" and lk.target_id not in chosen)
            ]
            manual = [LinkDecision("opportunity", opp_id, "manual") for opp_id in chosen]
            match = replace(match, links=(*kept, *manual))
        steered.append(Decision(d.item, match, sorted_.behalf.get(key)))
    return steered


def deal_names(sorted_: Sorted) -> set[str]:
    """Every tag name a forward of this batch names (the index looks them up)."""
    return {name for names in sorted_.deals.values() for name in names}


def mute(session: Session, settings: Settings, items: list[MailItem], now: datetime) -> int:
    """Remove the conversations of these items from the CRM (``#nocrm``), in the batch's
    transaction: every stored activity of them is deleted (``syncd activity delete``'s way:
    tasks cancelled, deals restated, the rest settled), and their conversation keys are kept
    as dropped whole threads, so none of their messages is logged again. Returns how many
    activities were removed."""
    if not items:
        return 0
    keys = {key for item in items for key in conversation_keys(item)}
    found = {n.id for c in conversations.thread_components(session, keys) for n in c}
    activities = [a for a in session.scalars(select(Activity).where(Activity.id.in_(found)))]
    for _, key in conversations.thread_keys_of(session, sorted(found)):
        keys.add(key)
    subject = MUTE_SUBJECT.format(word=settings.dropbox.nocrm_word)
    for key in sorted(keys):
        mark = thread_mark(key)
        if session.get(DroppedItem, mark) is None:
            session.add(DroppedItem(key=mark, dropped_at=now, subject=subject, whole_thread=True))
    session.flush()
    removed = remove_activities(session, settings, activities, now)
    log.info(
        "%d activit(ies) of a conversation removed with %s (%d sighting(s))",
        len(activities),
        settings.dropbox.nocrm_word,
        removed.sightings,
    )
    return len(activities)
