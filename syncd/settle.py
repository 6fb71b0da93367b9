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

from syncd.crm import conversations, recorder
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
    reordered = learn_tags(index, decisions)
    if reordered:
        keys.update(conversations.conversation_keys_of_candidates(session, index, reordered))
    changes = [
        change
        for component in conversations.thread_components(session, keys)
        for change in settle(component, index)
    ]
    return conversations.relink(session, changes)


def learn_tags(index: CrmIndex, decisions: Sequence[recorder.Decision]) -> list[int]:
    """Teach the index every tagged activity just stored; returns the deals whose rank
    against another open deal that changed (see :func:`reorders`), in the order learned."""
    reordered: list[int] = []
    for d in decisions:
        when = d.item.sent_at if isinstance(d.item, MailItem) else d.item.start
        for lk in d.match.links:
            if lk.reason != "tag":
                continue
            before = index.last_activity.get(lk.target_id)
            if index.remember(lk.target_id, when) and reorders(index, lk.target_id, before):
                reordered.append(lk.target_id)
    return reordered


def reorders(index: CrmIndex, opp_id: int, before: datetime | None) -> bool:
    """Whether a deal's newer tagged activity changes its rank against any other open deal
    (an item may have candidates at several accounts, so every open deal counts): then
    what weaker links chose may change."""
    after = index.last_activity.get(opp_id)
    if opp_id not in index.opportunities or after is None:
        return False
    return any(
        _overtakes(before, after, index.last_activity.get(other.id))
        for other in index.opportunities.values()
        if other.id != opp_id and other.status == "open"
    )


def _overtakes(before: datetime | None, after: datetime, theirs: datetime | None) -> bool:
    """Whether a deal whose latest tagged activity moved from ``before`` to ``after`` was
    behind or tied with another deal (latest ``theirs``; None: no tagged activity, the
    floor) and is now ahead of it or tied."""
    was_behind_or_tied = before is None or (theirs is not None and before <= theirs)
    now_ahead_or_tied = theirs is None or theirs <= after
    return was_behind_or_tied and now_ahead_or_tied
