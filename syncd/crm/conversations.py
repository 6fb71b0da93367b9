"""The stored conversations whose deals the matcher settles
(:func:`syncd.matching.matcher.settle`): read, every activity that shares a conversation key
with a batch's, however many hops away (:func:`thread_components`), and the keys of the
activities that may choose a deal by a weaker rule (:func:`conversation_keys_of_candidates`);
written back, the deal links and notes the settling changed (:func:`relink`).

A conversation key is any key under which another item of the same conversation may name an
activity (:func:`syncd.items.conversation_keys`); they are stored as ``ThreadKey`` rows.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import delete, insert, select, update
from sqlalchemy.orm import Session

from syncd.batching import chunked
from syncd.crm.models import Activity, Link, LinkVeto, Mailbox, Task, ThreadKey
from syncd.crm.rows import LOOKUP_CHUNK, one_of
from syncd.items import LinkReason, LinkType
from syncd.matching.matcher import CrmIndex, Relink, ThreadNode

log = logging.getLogger("syncd.crm")

THREAD_SIZE = 10_000  # activities of one conversation settled at most (a safe bound)


@dataclass
class Stored:
    """The activities the caller's transaction has just stored, as the settling sees them:
    each one's :class:`ThreadNode` and conversation keys, built from what was written
    (``syncd.crm.recorder``), so that :func:`thread_components` does not read them back.
    Only for a transaction whose every insert stands (no savepoint rolled back: an id
    given back could name another activity)."""

    nodes: dict[int, ThreadNode] = field(default_factory=dict)
    keys: dict[int, list[str]] = field(default_factory=dict)


def thread_components(
    session: Session, keys: Iterable[str], stored: Stored | None = None
) -> list[list[ThreadNode]]:
    """The stored conversations that share a thread key with ``keys``: every activity
    reachable through shared keys (its own, its root, its references, the provider's thread
    id), however many hops, grouped into connected conversations, each activity as
    :class:`ThreadNode`. A conversation past THREAD_SIZE activities is not returned at all:
    settling a part of it as if it were the whole would depend on where it was cut.
    ``stored``: activities this transaction stored, taken as they are instead of read."""
    known = stored or Stored()
    edges = _reachable(session, set(keys), known)
    if not edges:
        return []
    nodes = _thread_nodes(session, sorted(a for a in edges if a not in known.nodes))
    nodes.update((a, known.nodes[a]) for a in edges if a in known.nodes)
    return _components(edges, nodes)


def _reachable(session: Session, keys: set[str], known: Stored) -> dict[int, set[str]]:
    """Activity id -> its keys, for every activity reachable from ``keys`` through shared
    keys, breadth first, one query a hop for all of them; a conversation past THREAD_SIZE
    activities is not followed further and none of it is returned (the others are: the
    limit is each conversation's, not the sum of those asked for)."""
    frontier = set(keys)
    seen_keys: set[str] = set()
    edges: dict[int, set[str]] = defaultdict(set)
    parent: dict[int, int] = {}
    size: dict[int, int] = {}
    owner: dict[str, int] = {}  # a key -> an activity that has it

    def root(a: int) -> int:
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    def join(a: int, b: int) -> None:
        ra, rb = root(a), root(b)
        if ra != rb:
            parent[rb] = ra
            size[ra] += size.pop(rb)

    while frontier:
        # a conversation already past the limit is followed no further
        frontier = {
            k for k in frontier - seen_keys if k not in owner or size[root(owner[k])] <= THREAD_SIZE
        }
        if not frontier:
            break
        seen_keys |= frontier
        new = _activities_with_keys(session, frontier) - set(edges)
        frontier = set()
        held = [(a, k) for a in sorted(new & known.keys.keys()) for k in known.keys[a]]
        read = thread_keys_of(session, new - known.keys.keys())
        for activity_id, key in (*held, *read):
            if activity_id not in parent:
                parent[activity_id], size[activity_id] = activity_id, 1
            edges[activity_id].add(key)
            if key in owner:
                join(owner[key], activity_id)
            else:
                owner[key] = activity_id
            frontier.add(key)
    too_big = {r for r, n in size.items() if n > THREAD_SIZE}
    if too_big:
        log.warning(
            "%d conversation(s) of over %d activities left as they are",
            len(too_big),
            THREAD_SIZE,
        )
        edges = defaultdict(set, {a: k for a, k in edges.items() if root(a) not in too_big})
    return edges


def _activities_with_keys(session: Session, keys: Iterable[str]) -> set[int]:
    found: set[int] = set()
    connection = session.connection()
    for chunk in chunked(sorted(keys), LOOKUP_CHUNK):
        found.update(
            connection.scalars(
                select(ThreadKey.activity_id).where(one_of(session, ThreadKey.key, chunk))
            )
        )
    return found


def thread_keys_of(session: Session, activity_ids: Iterable[int]) -> Iterator[tuple[int, str]]:
    """(activity id, key) for every conversation key of these activities."""
    connection = session.connection()
    for chunk in chunked(sorted(activity_ids), LOOKUP_CHUNK):
        yield from connection.execute(
            select(ThreadKey.activity_id, ThreadKey.key).where(
                one_of(session, ThreadKey.activity_id, chunk)
            )
        )


def _components(edges: dict[int, set[str]], nodes: dict[int, ThreadNode]) -> list[list[ThreadNode]]:
    """The nodes grouped into connected conversations over shared keys (union-find on
    activity ids), each group and the groups in the order of their activity ids."""
    parent = {a: a for a in edges}

    def root(a: int) -> int:
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    owner: dict[str, int] = {}
    for activity_id in sorted(edges):
        for key in edges[activity_id]:
            if key in owner:
                parent[root(activity_id)] = root(owner[key])
            else:
                owner[key] = activity_id
    groups: dict[int, list[ThreadNode]] = defaultdict(list)
    for activity_id, node in nodes.items():
        groups[root(activity_id)].append(node)
    return [groups[g] for g in sorted(groups)]


def conversation_keys_of_candidates(
    session: Session, index: CrmIndex, opportunity_ids: Iterable[int]
) -> set[str]:
    """The conversation keys of every activity that may choose one of these deals by a
    weaker rule: those linked to the deal's account or to a contact with a role in it."""
    accounts: set[int] = set()
    contacts: set[int] = set()
    for opp_id in opportunity_ids:
        opp = index.opportunities.get(opp_id)
        if opp is not None:
            accounts.add(opp.account_id)
            contacts.update(opp.contact_ids)
    activity_ids: set[int] = set()
    linked: tuple[tuple[LinkType, set[int]], ...] = (("account", accounts), ("contact", contacts))
    for type_, targets in linked:
        for chunk in chunked(sorted(targets), LOOKUP_CHUNK):
            activity_ids.update(
                session.scalars(
                    select(Link.activity_id).where(
                        Link.type == type_, one_of(session, Link.target_id, chunk)
                    )
                )
            )
    return {key for _, key in thread_keys_of(session, activity_ids)}


def _thread_nodes(session: Session, ids: list[int]) -> dict[int, ThreadNode]:
    base: dict[int, tuple[str, datetime, str | None]] = {}
    links: dict[int, list[tuple[LinkType, int, LinkReason]]] = defaultdict(list)
    connection = session.connection()
    for chunk in chunked(ids, LOOKUP_CHUNK):
        for activity_id, key, when, note in connection.execute(
            select(Activity.id, Activity.key, Activity.occurred_at, Activity.match_note).where(
                one_of(session, Activity.id, chunk)
            )
        ):
            base[activity_id] = (key, when, note)
        for activity_id, type_, target, reason in connection.execute(
            select(Link.activity_id, Link.type, Link.target_id, Link.reason)
            .where(one_of(session, Link.activity_id, chunk))
            .order_by(Link.id)
        ):
            links[activity_id].append((type_, target, reason))
    return {
        activity_id: thread_node(activity_id, key, when, note, links[activity_id])
        for activity_id, (key, when, note) in base.items()
    }


def thread_node(
    activity_id: int,
    key: str,
    when: datetime,
    note: str | None,
    own: list[tuple[LinkType, int, LinkReason]],
) -> ThreadNode:
    """An activity as the settling sees it: its tags, contacts, accounts, and its deal links
    made by other rules than a tag."""
    tags: list[int] = []
    contacts: list[int] = []
    accounts: list[int] = []
    deals: list[tuple[int, LinkReason]] = []
    for type_, target, reason in own:
        if type_ == "contact":
            contacts.append(target)
        elif type_ == "account":
            accounts.append(target)
        elif reason in ("tag", "manual"):  # named by the item itself, or by an admin
            tags.append(target)
        else:
            deals.append((target, reason))
    return ThreadNode(
        id=activity_id,
        key=key,
        when=when,
        tags=tuple(tags),
        contact_ids=tuple(contacts),
        account_ids=tuple(accounts),
        deals=tuple(sorted(deals)),
        note=note,
    )


# --- the deals settled ------------------------------------------------------------------


def relink(session: Session, changes: Sequence[Relink]) -> int:
    """Apply what the matcher settled for conversations: replace each activity's deal link
    (a tag link is never touched) and its note, a few statements for all of them. Returns
    how many activities changed."""
    if not changes:
        return 0
    moved = [c for c in changes if c.deal_changed]
    _replace_deal_links(session, moved)
    notes = [{"id": c.activity_id, "match_note": c.note} for c in changes if c.note_changed]
    if notes:
        session.execute(update(Activity), notes)  # by primary key, executemany
    _rerun_followups(session, [c.activity_id for c in moved])
    return len(changes)


def _replace_deal_links(session: Session, moved: list[Relink]) -> None:
    """Each moved activity's deal link replaced (its tags and an admin's links stay); a
    deal an admin unlinked from it is never linked again."""
    for chunk in chunked([c.activity_id for c in moved], LOOKUP_CHUNK):
        session.execute(
            delete(Link).where(
                one_of(session, Link.activity_id, chunk),
                Link.type == "opportunity",
                Link.reason.not_in(("tag", "manual")),
            )
        )
    vetoed = vetoes(session, [c.activity_id for c in moved])
    rows = [
        {"activity_id": c.activity_id, "type": "opportunity", "target_id": deal, "reason": why}
        for c in moved
        for deal, why in c.deals
        if (c.activity_id, "opportunity", deal) not in vetoed
    ]
    if rows:
        session.execute(insert(Link), rows)


def vetoes(session: Session, activity_ids: list[int]) -> set[tuple[int, str, int]]:
    """(activity id, type, target id) of the links an admin removed from these activities
    (``syncd unlink``): never made again."""
    found: set[tuple[int, str, int]] = set()
    for chunk in chunked(activity_ids, LOOKUP_CHUNK):
        for activity_id, type_, target_id in session.execute(
            select(LinkVeto.activity_id, LinkVeto.type, LinkVeto.target_id).where(
                one_of(session, LinkVeto.activity_id, chunk)
            )
        ):
            found.add((activity_id, type_, target_id))
    return found


def rerun_followups(session: Session, moved: list[int]) -> None:
    """:func:`_rerun_followups`, for a correction made by hand."""
    _rerun_followups(session, moved)


def _rerun_followups(session: Session, moved: list[int]) -> None:
    """An open task of a moved activity is rewritten by its owner's follow-up rules: have
    them run at that owner's next pass, whichever mailbox moved it."""
    for chunk in chunked(moved, LOOKUP_CHUNK):
        owners = select(Task.user_id).where(
            one_of(session, Task.activity_id, chunk), Task.status == "open"
        )
        session.execute(
            update(Mailbox).where(Mailbox.user_id.in_(owners)).values(followups_at=None)
        )
