"""Recording a batch (:func:`record_batch`): idempotent writes of the activities of one
batch of items, with their participants, links, conversation keys and sightings, of the
items it quarantined, of the meetings removed from a calendar and the task states it
reported, and of the cursor after the batch; and the cursors themselves. Knows no provider
and no matching rule: it stores what it is handed.

The caller owns the transaction: :func:`record_batch` writes a batch *and* its cursor in the
session it is given, and the sync job commits them together. Re-recording the same items
(after a crash, or from a second mailbox) adds only what is missing: the item key is unique,
a mailbox sees an activity once, and a link is unique per (activity, type, target).

The other writes of CRM tables: :mod:`syncd.crm.conversations` (the deals a conversation's
settling changed), :mod:`syncd.crm.tasks` (follow-up tasks), :mod:`syncd.crm.mailboxes`
(mailbox rows and their state), :mod:`syncd.crm.quarantine` (its entries).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session

from syncd.batching import chunked
from syncd.crm import conversations, quarantine, skips
from syncd.crm.models import (
    Activity,
    ActivityKind,
    ActivityParticipant,
    ActivityStatus,
    Link,
    LoggedFor,
    Mailbox,
    Sighting,
    SourceCursor,
    ThreadKey,
)
from syncd.crm.rows import IN_LIMIT, clean, insert_rows, one_of
from syncd.crm.skips import Skip
from syncd.crm.tasks import apply_calendar_task_states
from syncd.items import (
    SNIPPET_CHARS,
    Cursor,
    Item,
    LinkReason,
    LinkType,
    MailItem,
    MeetingItem,
    Quarantined,
    TaskState,
    conversation_keys,
    fit,
)
from syncd.matching.matcher import LinkDecision, Match


@dataclass(frozen=True)
class Decision:
    """An item the sync job decided to log, with what the matcher linked it to."""

    item: Item
    match: Match
    behalf: int | None = None  # a dropbox's item: the user it is logged for (its sighting)


@dataclass
class BatchResult:
    """What recording a batch changed, and the activity id of each of its item keys."""

    new_activities: int = 0
    new_sightings: int = 0
    updated_meetings: int = 0
    relinked: int = 0  # activities of earlier batches whose deal a conversation changed
    activity_ids: dict[str, int] = field(default_factory=dict)  # key -> id
    # the new activities as the settling sees them (syncd.settle: not read back)
    stored: conversations.Stored = field(default_factory=conversations.Stored)


def record_batch(
    session: Session,
    *,
    mailbox_id: int,
    source: str,
    decisions: Sequence[Decision],
    quarantined: Sequence[Quarantined],
    cursor: Cursor | None,
    body_policy: str,
    now: datetime,
    removed_uids: Sequence[str] = (),
    task_states: Sequence[TaskState] = (),
    skipped: Sequence[Skip] = (),
) -> BatchResult:
    """Store one batch and the cursor after it, in the caller's transaction. ``skipped``:
    (provider id, reason) of the items read and not logged (``syncd audit`` counts them)."""
    result = BatchResult()
    unique: dict[str, Decision] = {}
    copies: list[Skip] = []
    for d in decisions:
        if unique.setdefault(d.item.key, d) is not d:  # the same item twice in this batch
            copies.append((d.item.provider_id, skips.COPY, d.item.key))
    existing = _existing(session, list(unique))
    new = [d for key, d in unique.items() if key not in existing]
    _add_new(session, new, body_policy, now, result)
    seen = [(existing[key], d) for key, d in unique.items() if key in existing]
    _merge_seen(session, seen, result)
    copies.extend(_add_sightings(session, mailbox_id, source, unique, existing, result, now))
    _add_logged_for(session, decisions, result)
    skips.add(session, mailbox_id, source, [*skipped, *copies], now)
    quarantine.add_entries(session, mailbox_id, source, quarantined, now)
    _cancel_removed(session, mailbox_id, removed_uids, now)
    apply_calendar_task_states(session, mailbox_id, task_states, now)
    if cursor is not None:  # None: items read again outside a pass (quarantine retry)
        set_cursor(session, mailbox_id, source, cursor, now)
    _count_logged(session, mailbox_id, result.new_sightings)
    return result


# --- activities new and seen again ------------------------------------------------------


def _existing(session: Session, keys: list[str]) -> dict[str, int]:
    """key -> id of the activities already stored."""
    query = select(Activity.key, Activity.id)
    found = (
        session.execute(query.where(one_of(session, Activity.key, c)))
        for c in chunked(keys, IN_LIMIT)
    )
    return {key: activity_id for rows in found for key, activity_id in rows}


def _add_new(
    session: Session, new: list[Decision], body_policy: str, now: datetime, result: BatchResult
) -> None:
    """Activities not stored yet, with their participants, links and conversation keys."""
    if not new:
        return
    rows = [_activity_row(d, body_policy, now) for d in new]
    ids = insert_rows(session, Activity, rows)
    result.new_activities = len(ids)
    participants = [
        {
            "activity_id": ids[d.item.key],
            "address": p.address,
            "name": clean(p.name[:200]),
            "role": p.role,
            "contact_id": p.contact_id,
            "user_id": p.user_id,
        }
        for d in new
        for p in d.match.participants
    ]
    insert_rows(session, ActivityParticipant, participants)
    insert_rows(
        session, Link, [_link_row(ids[d.item.key], lk) for d in new for lk in d.match.links]
    )
    keys: list[dict[str, Any]] = []
    for d, row in zip(new, rows, strict=True):
        activity_id = ids[d.item.key]
        links = [(lk.type, lk.target_id, lk.reason) for lk in d.match.links]
        when = row["occurred_at"].astimezone(UTC)
        node = conversations.thread_node(activity_id, row["key"], when, row["match_note"], links)
        held = result.stored.keys[activity_id] = conversation_keys(d.item)
        result.stored.nodes[activity_id] = node
        keys.extend({"activity_id": activity_id, "key": key} for key in held)
    insert_rows(session, ThreadKey, keys)
    result.activity_ids.update(ids)


def _activity_row(d: Decision, body_policy: str, now: datetime) -> dict[str, Any]:
    item = d.item
    kind: ActivityKind
    status: ActivityStatus
    if isinstance(item, MailItem):
        kind, when, ends, text, status = "email", item.sent_at, None, item.body, "confirmed"
        thread_key = item.thread_key
    else:
        kind, when, ends, text = "meeting", item.start, item.end, item.description
        status = _meeting_status(item)
        thread_key = fit(f"ical:{item.uid}")
    if when.tzinfo is None or (ends is not None and ends.tzinfo is None):
        raise ValueError(f"item {item.provider_id!r} has a time without a time zone")
    text = clean(text) or ""
    snippet = " ".join(text.split())[:SNIPPET_CHARS] if body_policy in ("snippet", "full") else None
    return {
        "key": item.key,
        "kind": kind,
        "subject": clean(item.subject),
        "occurred_at": when,
        "ends_at": ends,
        "direction": d.match.direction,
        "thread_key": thread_key,
        "status": status,
        "snippet": snippet,
        "body": text if body_policy == "full" else None,
        "match_note": d.match.note,
        "created_at": now,
    }


def _link_row(activity_id: int, lk: LinkDecision) -> dict[str, Any]:
    return {
        "activity_id": activity_id,
        "type": lk.type,
        "target_id": lk.target_id,
        "reason": lk.reason,
    }


def _meeting_status(item: MeetingItem) -> ActivityStatus:
    return "cancelled" if item.cancelled else "confirmed"


def _merge_seen(session: Session, seen: list[tuple[int, Decision]], result: BatchResult) -> None:
    """An activity seen again (id, decision): update a changed meeting, add the links and
    conversation keys it did not have yet."""
    if not seen:
        return
    for activity_id, d in seen:
        result.activity_ids[d.item.key] = activity_id
    meetings = [(i, d.item) for i, d in seen if isinstance(d.item, MeetingItem)]
    result.updated_meetings += _update_meetings(session, meetings)
    _merge_links(session, seen)
    _add_thread_keys(session, seen)


_MEETING_FIELDS = ("subject", "occurred_at", "ends_at", "status")


def _update_meetings(session: Session, meetings: list[tuple[int, MeetingItem]]) -> int:
    """A rescheduled, renamed or cancelled meeting updates its activity in place (only the
    fields that changed). Returns how many changed."""
    columns = [Activity.id, *(getattr(Activity, name) for name in _MEETING_FIELDS)]
    stored: dict[int, tuple[Any, ...]] = {}
    for chunk in chunked([activity_id for activity_id, _ in meetings], IN_LIMIT):
        stored.update(
            (row[0], row[1:])
            for row in session.execute(select(*columns).where(one_of(session, Activity.id, chunk)))
        )
    changed = 0
    for activity_id, item in meetings:
        wanted = (clean(item.subject), item.start, item.end, _meeting_status(item))
        pairs = zip(_MEETING_FIELDS, wanted, stored[activity_id], strict=True)
        if changes := {name: value for name, value, old in pairs if old != value}:
            session.execute(update(Activity).where(Activity.id == activity_id).values(changes))
            changed += 1
    return changed


def _merge_links(session: Session, stored: list[tuple[int, Decision]]) -> None:
    """The links of these copies that their activities lack. Every tag any copy carries is
    kept (one copy's body may be cut short, another's not); other deal links are left to
    the conversation's settling (matcher.settle)."""
    ids = [activity_id for activity_id, _ in stored]
    have = _stored_links(session, ids)
    vetoed = conversations.vetoes(session, ids)  # removed by an admin: never again
    rows = []
    for activity_id, d in stored:
        for lk in d.match.links:
            if lk.type == "opportunity" and lk.reason not in ("tag", "manual"):
                continue  # settled for the whole conversation, after this batch
            if (activity_id, lk.type, lk.target_id) in vetoed:
                continue
            known = have.get((activity_id, lk.type, lk.target_id))
            if known is None:
                have[(activity_id, lk.type, lk.target_id)] = lk.reason
                rows.append(_link_row(activity_id, lk))
            elif lk.reason in ("tag", "manual") and known not in ("tag", "manual"):
                # the item names the deal itself (a tag), or a dropbox's forward named it
                have[(activity_id, lk.type, lk.target_id)] = lk.reason
                session.execute(
                    update(Link)
                    .where(
                        Link.activity_id == activity_id,
                        Link.type == "opportunity",
                        Link.target_id == lk.target_id,
                    )
                    .values(reason=lk.reason)
                )
    insert_rows(session, Link, rows)


def _stored_links(
    session: Session, activity_ids: list[int]
) -> dict[tuple[int, LinkType, int], LinkReason]:
    """(activity id, type, target id) -> reason of every link of these activities."""
    query = select(Link.activity_id, Link.type, Link.target_id, Link.reason)
    found = (
        session.execute(query.where(one_of(session, Link.activity_id, chunk)))
        for chunk in chunked(activity_ids, IN_LIMIT)
    )
    return {(a, type_, target): reason for rows in found for a, type_, target, reason in rows}


def _add_thread_keys(session: Session, stored: list[tuple[int, Decision]]) -> None:
    """Another mailbox's copy may know more of its conversation (another provider's thread
    id): the keys its activity lacks."""
    query = select(ThreadKey.activity_id, ThreadKey.key)
    have: set[tuple[int, str]] = set()
    for chunk in chunked([activity_id for activity_id, _ in stored], IN_LIMIT):
        found = session.execute(query.where(one_of(session, ThreadKey.activity_id, chunk)))
        have.update((activity_id, key) for activity_id, key in found)
    rows = []
    for activity_id, d in stored:
        for key in conversation_keys(d.item):
            if (activity_id, key) not in have:
                have.add((activity_id, key))
                rows.append({"activity_id": activity_id, "key": key})
    insert_rows(session, ThreadKey, rows)


# --- what else a batch carries ----------------------------------------------------------


def _add_sightings(
    session: Session,
    mailbox_id: int,
    source: str,
    unique: dict[str, Decision],
    existing: dict[str, int],
    result: BatchResult,
    now: datetime,
) -> list[Skip]:
    """This mailbox saw these activities (once each, however often it reads them).
    Returns the copies not sighted (another copy, in another folder, has the sighting).
    Only activities stored before this batch can have one already."""
    have: dict[int, str] = {}
    for chunk in chunked(existing.values(), IN_LIMIT):
        found = session.execute(
            select(Sighting.activity_id, Sighting.provider_id).where(
                Sighting.mailbox_id == mailbox_id, one_of(session, Sighting.activity_id, chunk)
            )
        )
        have.update({activity_id: provider_id for activity_id, provider_id in found})
    rows = [
        {
            "activity_id": result.activity_ids[key],
            "mailbox_id": mailbox_id,
            "source": source,
            "provider_id": fit(d.item.provider_id),
            "seen_at": now,
        }
        for key, d in unique.items()
        if result.activity_ids[key] not in have
    ]
    insert_rows(session, Sighting, rows)
    result.new_sightings = len(rows)
    return [
        (d.item.provider_id, skips.COPY, d.item.key)
        for key, d in unique.items()
        if have.get(result.activity_ids[key], fit(d.item.provider_id)) != fit(d.item.provider_id)
    ]


def _add_logged_for(session: Session, decisions: Sequence[Decision], result: BatchResult) -> None:
    """The salespeople a dropbox logged these items for (every copy's sender, each once)."""
    wanted = {
        (result.activity_ids[d.item.key], d.behalf)
        for d in decisions
        if d.behalf is not None and d.item.key in result.activity_ids
    }
    if not wanted:
        return
    have: set[tuple[int, int]] = set()
    for chunk in chunked(sorted({a for a, _ in wanted}), IN_LIMIT):
        found = session.execute(
            select(LoggedFor.activity_id, LoggedFor.user_id).where(
                one_of(session, LoggedFor.activity_id, chunk)
            )
        )
        have.update((a, u) for a, u in found)
    rows = [{"activity_id": a, "user_id": u} for a, u in sorted(wanted - have)]
    insert_rows(session, LoggedFor, rows)


def _cancel_removed(session: Session, mailbox_id: int, uids: Sequence[str], now: datetime) -> None:
    """A meeting gone from the calendar before it started is cancelled; a past one stays.
    ``uids`` are iCalendar UIDs, or the provider's ids when only those come back (Graph's
    ``@removed`` entries)."""
    if not uids:
        return
    by_provider_id = select(Sighting.activity_id).where(
        Sighting.mailbox_id == mailbox_id, Sighting.provider_id.in_([fit(u) for u in uids])
    )
    patterns = [
        Activity.id.in_(by_provider_id),
        *(Activity.key == fit(f"ical:{u}") for u in uids),
        *(
            Activity.key.startswith(f"ical:{u}#", autoescape=True)
            for u in uids
            if len(u) < 400 and u.isprintable()
        ),
    ]
    sighted = select(Sighting.activity_id).where(Sighting.mailbox_id == mailbox_id)
    session.execute(
        update(Activity)
        .where(or_(*patterns), Activity.occurred_at > now, Activity.id.in_(sighted))
        .values(status="cancelled")
    )


def _count_logged(session: Session, mailbox_id: int, new_sightings: int) -> None:
    if new_sightings:
        session.execute(
            update(Mailbox)
            .where(Mailbox.id == mailbox_id)
            .values(items_logged=Mailbox.items_logged + new_sightings)
        )


# --- cursors ----------------------------------------------------------------------------


def set_cursor(
    session: Session, mailbox_id: int, source: str, cursor: Cursor, now: datetime
) -> None:
    """Where the next read of this source starts (written with the batch before it)."""
    row = session.get(SourceCursor, (mailbox_id, source))
    if row is None:
        session.add(
            SourceCursor(mailbox_id=mailbox_id, source=source, value=cursor.value, updated_at=now)
        )
    else:
        row.value = cursor.value
        row.updated_at = now
    session.flush()


def get_cursor(session: Session, mailbox_id: int, source: str) -> Cursor | None:
    row = session.get(SourceCursor, (mailbox_id, source))
    return Cursor(row.value) if row else None


def reset_cursor(session: Session, mailbox_id: int, source: str) -> None:
    """The source is read from its start at the next pass (its cursor expired)."""
    row = session.get(SourceCursor, (mailbox_id, source))
    if row is not None:
        session.delete(row)
