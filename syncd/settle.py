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
from datetime import datetime

from sqlalchemy.orm import Session

from syncd.crm import conversations, lookups, recorder
from syncd.items import conversation_keys
from syncd.matching.matcher import CrmIndex, Relink, ThreadNode, settle


def settle_touched(
    session: Session,
    index: CrmIndex,
    decisions: Sequence[recorder.Decision],
    stored: conversations.Stored | None = None,
) -> int:
    """Decide the deal of every conversation these stored items touched, from all its
    stored items (a reply stored before the message it answers is relinked now), and of
    every item whose candidate deals were reordered by a newly tagged activity. Returns how
    many activities were relinked. ``stored``: the activities the transaction has just
    stored, as recorded (``BatchResult.stored``; they are not read back)."""
    keys: set[str] = set()
    for d in decisions:
        keys.update(conversation_keys(d.item))
    reordered = learn_tags(session, index, decisions)
    if reordered:
        keys.update(conversations.conversation_keys_of_candidates(session, index, reordered))
    return settle_keys(session, index, keys, stored)


def settle_activities(session: Session, index: CrmIndex, activity_ids: Sequence[int]) -> int:
    """Decide again the deal of the conversations of these stored activities (a link made
    or removed by hand: the conversation follows it); how many activities were relinked."""
    keys = {key for _, key in conversations.thread_keys_of(session, activity_ids)}
    return settle_keys(session, index, keys)


def settle_keys(
    session: Session,
    index: CrmIndex,
    keys: set[str],
    stored: conversations.Stored | None = None,
) -> int:
    """Decide again the deal of the stored conversations that hold these thread keys."""
    components = conversations.thread_components(session, keys, stored)
    lookups.fill_deals(
        session,
        index,
        {c for component in components for n in component for c in n.contact_ids},
        {a for component in components for n in component for a in n.account_ids},
    )
    changes = [change for component in components for change in settle(component, index)]
    return conversations.relink(session, _without_vetoed(session, components, changes))


def _without_vetoed(
    session: Session, components: list[list[ThreadNode]], changes: list[Relink]
) -> list[Relink]:
    """A deal an admin removed from an activity (``syncd unlink``) is never its deal again:
    the activity gets none instead, and a change to what it has already is no change."""
    vetoed = conversations.vetoes(session, [c.activity_id for c in changes if c.deals])
    if not vetoed:
        return changes
    current = {n.id: n.deals for component in components for n in component}
    kept = []
    for c in changes:
        allowed = tuple(d for d in c.deals if (c.activity_id, "opportunity", d[0]) not in vetoed)
        if allowed != c.deals:
            moved = allowed != current.get(c.activity_id, ())
            if not moved and not c.note_changed:
                continue
            c = Relink(c.activity_id, allowed, c.note, moved, c.note_changed)
        kept.append(c)
    return kept


def learn_tags(
    session: Session, index: CrmIndex, decisions: Sequence[recorder.Decision]
) -> list[int]:
    """Restate the stored evidence (``last_tagged_at``) of every deal these stored items
    name by tag, from all its stored tagged activities (a meeting moved earlier lowers it),
    and teach the index; returns the deals whose rank against another open deal that
    changed (``syncd.crm.lookups.reranks``), by id. The deals are restated first and
    their ranks compared after, so what a batch teaches does not depend on the order of
    its items."""
    tagged = sorted({lk.target_id for d in decisions for lk in d.match.links if lk.reason == "tag"})
    if not tagged:
        return []
    lookups.load_opportunities(session, index, set(tagged))  # their evidence as it stood
    now = lookups.restate_tagged(session, tagged)
    moved: list[tuple[int, datetime | None, datetime | None]] = []
    for opp_id in tagged:
        before, after = index.last_activity.get(opp_id), now.get(opp_id)
        if before != after:
            index.set_last_activity(opp_id, after)
            moved.append((opp_id, before, after))
    return [
        opp_id
        for opp_id, before, after in moved
        if opp_id in index.opportunities and lookups.reranks(session, opp_id, before, after)
    ]
