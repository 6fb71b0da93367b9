"""Settling conversations after a batch is stored, inside the batch's transaction.

A stored item may change the deal of items stored before it: a reply stored before the
message it answers is relinked when that message arrives, and a newly tagged activity may
reorder the open deals that weaker links chose between (the matcher ranks them by their
latest *tagged* activity). :func:`settle_touched` finds every conversation a batch touched
that way, lets :func:`syncd.matching.matcher.settle` decide each from all of its stored
items, and relinks what changed. A sync pass and ``syncd quarantine retry`` settle alike.
"""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy.orm import Session

from syncd.crm import conversations, lookups, recorder
from syncd.items import MailItem, conversation_keys
from syncd.matching.matcher import CrmIndex, settle


def settle_touched(
    session: Session, index: CrmIndex, decisions: Sequence[recorder.Decision]
) -> int:
    """Decide the deal of every conversation these stored items touched, from all its
    stored items (a reply stored before the message it answers is relinked now), and of
    every item whose candidate deals were reordered by a newly tagged activity. Returns how
    many activities were relinked."""
    keys: set[str] = set()
    for d in decisions:
        keys.update(conversation_keys(d.item))
    reordered = learn_tags(session, index, decisions)
    if reordered:
        keys.update(conversations.conversation_keys_of_candidates(session, index, reordered))
    components = conversations.thread_components(session, keys)
    lookups.fill_deals(
        session,
        index,
        {c for component in components for n in component for c in n.contact_ids},
        {a for component in components for n in component for a in n.account_ids},
    )
    changes = [change for component in components for change in settle(component, index)]
    return conversations.relink(session, changes)


def learn_tags(
    session: Session, index: CrmIndex, decisions: Sequence[recorder.Decision]
) -> list[int]:
    """Teach the index, and the deals' stored evidence (``last_tagged_at``), every tagged
    activity just stored; returns the deals whose rank against another open deal that
    changed (``syncd.crm.lookups.overtakes_another``), in the order learned."""
    tagged = {lk.target_id for d in decisions for lk in d.match.links if lk.reason == "tag"}
    lookups.load_opportunities(session, index, tagged)  # their stored evidence, as it stands
    reordered: list[int] = []
    for d in decisions:
        when = d.item.sent_at if isinstance(d.item, MailItem) else d.item.start
        for lk in d.match.links:
            if lk.reason != "tag":
                continue
            before = index.last_activity.get(lk.target_id)
            if not index.remember(lk.target_id, when):
                continue
            lookups.note_tagged(session, lk.target_id, when)
            if lk.target_id in index.opportunities and lookups.overtakes_another(
                session, lk.target_id, before, when
            ):
                reordered.append(lk.target_id)
    return reordered
