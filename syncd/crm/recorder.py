"""Idempotent writes of activities, participants, sightings, links, cursors, quarantine and
tasks. Knows no provider and no matching rule: it stores what it is handed.

The caller owns the transaction: :func:`record_batch` writes a batch *and* its cursor in the
session it is given, and the sync job commits them together. Re-recording the same items
(after a crash, or from a second mailbox) adds only what is missing: the item key is unique,
a mailbox sees an activity once, and a link is unique per (activity, type, target).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import Table, delete, insert, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from syncd.crm.models import (
    Activity,
    ActivityKind,
    ActivityParticipant,
    ActivityStatus,
    Base,
    Link,
    Mailbox,
    MailboxState,
    QuarantineEntry,
    Sighting,
    SourceCursor,
    Task,
    TaskResolution,
    TaskRule,
    ThreadKey,
    WriterState,
)
from syncd.items import (
    RAW_KEPT,
    SNIPPET_CHARS,
    Cursor,
    Item,
    LinkReason,
    LinkType,
    MailItem,
    MeetingItem,
    Quarantined,
    TaskState,
    TaskStatus,
    conversation_keys,
    fit,
)
from syncd.matching.matcher import Match, Relink

_CHUNK = 500  # keys per IN (...) list


def _insert_rows(session: Session, model: type[Base], rows: list[dict[str, Any]]) -> dict[str, int]:
    """Insert many rows; returns key -> id where the table has keys (activities).

    On PostgreSQL this is COPY (bench/import_local.py: row-by-row INSERTs cost the server
    ~30 us a row, COPY a few); elsewhere one executemany, with RETURNING (id, key) for keyed
    rows (in no particular order: parameter order would make SQLite insert row by row).
    """
    if not rows:
        return {}
    table: Table = Base.metadata.tables[model.__tablename__]
    keyed = "key" in table.c
    if session.get_bind().dialect.name == "postgresql":
        _copy_rows(session, table, rows)
        if not keyed:
            return {}
        return {
            str(key): int(row_id)
            for chunk in _chunks([r["key"] for r in rows])
            for key, row_id in session.execute(
                select(table.c.key, table.c.id).where(table.c.key.in_(chunk))
            )
        }
    if not keyed:
        session.execute(insert(table), rows)
        return {}
    result = session.execute(insert(table).returning(table.c.id, table.c.key), rows)
    return {str(key): int(row_id) for row_id, key in result}


def _insert_new(session: Session, model: type[Base], key: str) -> Any:
    """INSERT that skips rows whose ``key`` is already stored (ON CONFLICT DO NOTHING)."""
    table = Base.metadata.tables[model.__tablename__]
    if session.get_bind().dialect.name == "postgresql":
        return postgresql.insert(table).on_conflict_do_nothing(index_elements=[key])
    return sqlite.insert(table).on_conflict_do_nothing(index_elements=[key])


def _copy_rows(session: Session, table: Table, rows: list[dict[str, Any]]) -> None:
    """PostgreSQL COPY ... FROM STDIN on the session's own connection and transaction."""
    columns = list(rows[0])
    for column in columns:  # names come from our own code, never from input; checked anyway
        assert column in table.c, column
    raw: Any = session.connection().connection.dbapi_connection  # a psycopg connection
    sql = f'COPY "{table.name}" ({", ".join(columns)}) FROM STDIN'
    try:
        with raw.cursor() as cursor, cursor.copy(sql) as copy:
            for row in rows:
                copy.write_row([row[c] for c in columns])
    except Exception as exc:  # the driver's own error, raised as SQLAlchemy raises one
        raise DBAPIError(sql, None, exc) from exc


@dataclass(frozen=True)
class Decision:
    """An item the sync job decided to log, with what the matcher linked it to."""

    item: Item
    match: Match


@dataclass
class BatchResult:
    new_activities: int = 0
    new_sightings: int = 0
    updated_meetings: int = 0
    relinked: int = 0  # activities of earlier batches whose deal a conversation changed
    activity_ids: dict[str, int] = field(default_factory=dict)  # key -> id


def _chunks(values: Sequence[Any]) -> list[Sequence[Any]]:
    return [values[i : i + _CHUNK] for i in range(0, len(values), _CHUNK)]


_CONTROL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


def clean(text: str | None) -> str | None:
    """Text as every database stores it: no NUL (PostgreSQL refuses it) and no other
    control character (tabs and line breaks stay); each becomes U+FFFD."""
    return _CONTROL.sub("\ufffd", text) if text else text


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


def _existing(session: Session, keys: list[str]) -> dict[str, Activity]:
    found: dict[str, Activity] = {}
    for chunk in _chunks(keys):
        for a in session.scalars(select(Activity).where(Activity.key.in_(chunk))):
            found[a.key] = a
    return found


def _meeting_status(item: MeetingItem) -> ActivityStatus:
    return "cancelled" if item.cancelled else "confirmed"


def _update_meeting(activity: Activity, item: MeetingItem) -> bool:
    """A rescheduled, renamed or cancelled meeting updates its activity in place."""
    changes = {
        "subject": clean(item.subject),
        "occurred_at": item.start,
        "ends_at": item.end,
        "status": _meeting_status(item),
    }
    changed = False
    for attr, value in changes.items():
        if getattr(activity, attr) != value:
            setattr(activity, attr, value)
            changed = True
    return changed


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
) -> BatchResult:
    """Store one batch and the cursor after it, in the caller's transaction."""
    result = BatchResult()
    unique: dict[str, Decision] = {}
    for d in decisions:
        unique.setdefault(d.item.key, d)
    existing = _existing(session, list(unique))

    new = [d for key, d in unique.items() if key not in existing]
    if new:
        rows = [_activity_row(d, body_policy, now) for d in new]
        # RETURNING (id, key), in no particular order: asking for parameter order would make
        # SQLite insert row by row (bench/import_local.py)
        ids = _insert_rows(session, Activity, rows)
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
        _insert_rows(session, ActivityParticipant, participants)
        links = [
            {
                "activity_id": ids[d.item.key],
                "type": lk.type,
                "target_id": lk.target_id,
                "reason": lk.reason,
            }
            for d in new
            for lk in d.match.links
        ]
        _insert_rows(session, Link, links)
        _insert_rows(
            session,
            ThreadKey,
            [
                {"activity_id": ids[d.item.key], "key": key}
                for d in new
                for key in conversation_keys(d.item)
            ],
        )
        result.activity_ids.update(ids)

    seen = [d for key, d in unique.items() if key in existing]
    if seen:
        _merge_seen(session, seen, existing, result)

    _add_sightings(session, mailbox_id, source, unique, result, now)
    _quarantine(session, mailbox_id, source, quarantined, now)
    if removed_uids:
        _cancel_removed(session, mailbox_id, removed_uids, now)
    if task_states:
        owner = session.scalar(select(Mailbox.user_id).where(Mailbox.id == mailbox_id))
        assert owner is not None
        apply_calendar_task_states(session, task_states, now, owner)
    if cursor is not None:  # None: items read again outside a pass (quarantine retry)
        set_cursor(session, mailbox_id, source, cursor, now)
    if result.new_sightings:
        session.execute(
            update(Mailbox)
            .where(Mailbox.id == mailbox_id)
            .values(items_logged=Mailbox.items_logged + result.new_sightings)
        )
    return result


def _merge_seen(
    session: Session, seen: list[Decision], existing: dict[str, Activity], result: BatchResult
) -> None:
    """An activity seen again: update a changed meeting, add links it did not have yet.
    Every tag any copy carries is kept (one copy's body may be cut short, another's not);
    other deal links are left to the conversation's settling (matcher.settle)."""
    ids = [existing[d.item.key].id for d in seen]
    have: dict[tuple[int, LinkType, int], LinkReason] = {}
    for chunk in _chunks(ids):
        for activity_id, type_, target_id, reason in session.execute(
            select(Link.activity_id, Link.type, Link.target_id, Link.reason).where(
                Link.activity_id.in_(chunk)
            )
        ):
            have[(activity_id, type_, target_id)] = reason
    links = []
    keys: set[tuple[int, str]] = set()
    for chunk in _chunks(ids):
        keys.update(
            session.execute(
                select(ThreadKey.activity_id, ThreadKey.key).where(ThreadKey.activity_id.in_(chunk))
            ).all()
        )
    for d in seen:
        activity = existing[d.item.key]
        result.activity_ids[d.item.key] = activity.id
        if isinstance(d.item, MeetingItem) and _update_meeting(activity, d.item):
            result.updated_meetings += 1
        for lk in d.match.links:
            if lk.type == "opportunity" and lk.reason != "tag":
                continue  # settled for the whole conversation, after this batch
            known = have.get((activity.id, lk.type, lk.target_id))
            if known is None:
                have[(activity.id, lk.type, lk.target_id)] = lk.reason
                links.append(
                    {
                        "activity_id": activity.id,
                        "type": lk.type,
                        "target_id": lk.target_id,
                        "reason": lk.reason,
                    }
                )
            elif lk.reason == "tag" and known != "tag":  # this copy names the deal itself
                have[(activity.id, lk.type, lk.target_id)] = "tag"
                session.execute(
                    update(Link)
                    .where(
                        Link.activity_id == activity.id,
                        Link.type == "opportunity",
                        Link.target_id == lk.target_id,
                    )
                    .values(reason="tag")
                )
    if links:
        session.execute(insert(Link), links)
    # another mailbox's copy may know more of its conversation (another provider's thread id)
    new_keys = []
    for d in seen:
        activity_id = existing[d.item.key].id
        for key in conversation_keys(d.item):
            if (activity_id, key) not in keys:
                keys.add((activity_id, key))
                new_keys.append({"activity_id": activity_id, "key": key})
    if new_keys:
        session.execute(insert(ThreadKey), new_keys)


def relink(session: Session, changes: Sequence[Relink]) -> int:
    """Apply what the matcher settled for conversations: replace each activity's deal link
    (a tag link is never touched) and its note, a few statements for all of them. Returns
    how many activities changed."""
    if not changes:
        return 0
    moved = [c for c in changes if c.deal_changed]
    for chunk in _chunks([c.activity_id for c in moved]):
        session.execute(
            delete(Link).where(
                Link.activity_id.in_(chunk), Link.type == "opportunity", Link.reason != "tag"
            )
        )
    rows = [
        {
            "activity_id": c.activity_id,
            "type": "opportunity",
            "target_id": c.opportunity[0],
            "reason": c.opportunity[1],
        }
        for c in moved
        if c.opportunity is not None
    ]
    if rows:
        session.execute(insert(Link), rows)
    notes = [{"id": c.activity_id, "match_note": c.note} for c in changes if c.note_changed]
    if notes:
        session.execute(update(Activity), notes)  # by primary key, executemany
    # an open task of a moved activity is rewritten by its owner's follow-up rules: have
    # them run at that owner's next pass, whichever mailbox moved it
    for chunk in _chunks([c.activity_id for c in moved]):
        owners = select(Task.user_id).where(Task.activity_id.in_(chunk), Task.status == "open")
        session.execute(
            update(Mailbox).where(Mailbox.user_id.in_(owners)).values(followups_at=None)
        )
    return len(changes)


def _add_sightings(
    session: Session,
    mailbox_id: int,
    source: str,
    unique: dict[str, Decision],
    result: BatchResult,
    now: datetime,
) -> None:
    ids = list(result.activity_ids.values())
    have: set[int] = set()
    for chunk in _chunks(ids):
        have.update(
            session.scalars(
                select(Sighting.activity_id).where(
                    Sighting.mailbox_id == mailbox_id, Sighting.activity_id.in_(chunk)
                )
            )
        )
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
    _insert_rows(session, Sighting, rows)
    result.new_sightings = len(rows)


def _quarantine(
    session: Session, mailbox_id: int, source: str, entries: Sequence[Quarantined], now: datetime
) -> None:
    if not entries:
        return
    # ids as stored (fitted): an id too long or holding a NUL is compared by its hash
    ids = {fit(q.provider_id): q for q in entries}
    have = {
        provider_id
        for chunk in _chunks(list(ids))
        for provider_id in session.scalars(
            select(QuarantineEntry.provider_id).where(
                QuarantineEntry.mailbox_id == mailbox_id,
                QuarantineEntry.source == source,
                QuarantineEntry.provider_id.in_(chunk),
            )
        )
    }
    rows = []
    for provider_id, q in ids.items():
        if provider_id not in have:
            have.add(provider_id)
            rows.append(
                {
                    "mailbox_id": mailbox_id,
                    "source": source,
                    "provider_id": provider_id,
                    "reason": clean(q.reason),
                    "created_at": now,
                    "raw": q.raw if q.raw is not None and len(q.raw) <= RAW_KEPT else None,
                    "format": q.format,
                    "attempts": 1,
                    "updated_at": now,
                }
            )
    if rows:
        session.execute(insert(QuarantineEntry), rows)


def _cancel_removed(session: Session, mailbox_id: int, uids: Sequence[str], now: datetime) -> None:
    """A meeting gone from the calendar before it started is cancelled; a past one stays.
    ``uids`` are iCalendar UIDs, or the provider's ids when only those come back (Graph's
    ``@removed`` entries)."""
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


def set_cursor(
    session: Session, mailbox_id: int, source: str, cursor: Cursor, now: datetime
) -> None:
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
    row = session.get(SourceCursor, (mailbox_id, source))
    if row is not None:
        session.delete(row)


# --- tasks ------------------------------------------------------------------------------


@dataclass(frozen=True)
class TaskPlan:
    """What a follow-up rule decided about one task (see syncd.followups)."""

    uid: str
    rule: TaskRule
    user_id: int
    activity_id: int
    contact_id: int | None
    opportunity_id: int | None
    title: str
    description: str
    due: datetime
    status: TaskStatus
    resolution: TaskResolution | None = None


def apply_task_plans(session: Session, plans: Sequence[TaskPlan], now: datetime) -> int:
    """Create new tasks and move existing ones to a new status; returns how many changed."""
    if not plans:
        return 0
    existing = {
        t.uid: t for t in session.scalars(select(Task).where(Task.uid.in_([p.uid for p in plans])))
    }
    changed = 0
    new_rows: list[dict[str, Any]] = []
    for plan in plans:
        task = existing.get(plan.uid)
        if task is None:
            new_rows.append(
                {
                    "uid": plan.uid,
                    "rule": plan.rule,
                    "user_id": plan.user_id,
                    "activity_id": plan.activity_id,
                    "contact_id": plan.contact_id,
                    "opportunity_id": plan.opportunity_id,
                    "title": clean(plan.title),
                    "description": clean(plan.description),
                    "due": plan.due,
                    "status": plan.status,
                    "resolution": plan.resolution,
                    "created_at": now,
                    "updated_at": now,
                    "version": 1,
                    "written_version": 0,
                }
            )
            changed += 1
        elif task.status != plan.status and task.status == "open":
            task.status = plan.status
            task.resolution = plan.resolution
            task.updated_at = now
            task.version += 1
            changed += 1
        elif task.status == plan.status == "open" and (
            task.opportunity_id != plan.opportunity_id or task.description != plan.description
        ):  # its activity moved to another deal: the calendar entry says so too
            task.opportunity_id = plan.opportunity_id
            task.title = clean(plan.title) or ""
            task.description = clean(plan.description) or ""
            task.updated_at = now
            task.version += 1
            changed += 1
    if new_rows:
        # two mailboxes of one user may plan the same task at once (two processes on
        # PostgreSQL): the uid is the task, whoever stores it first
        session.execute(_insert_new(session, Task, "uid"), new_rows)
    session.flush()
    return changed


def apply_calendar_task_states(
    session: Session, states: Sequence[TaskState], now: datetime, user_id: int
) -> None:
    """The user completed or deleted a task in their calendar: the CRM follows. A state is
    matched by the task's uid, or by the calendar's id for it where only that came back,
    among this user's tasks only: no one else's calendar (an invitation can carry any uid)
    can close them."""
    uids = [s.uid for s in states if s.uid]
    refs = [s.ref for s in states if s.ref]
    found = list(
        session.scalars(
            select(Task).where(
                Task.user_id == user_id, or_(Task.uid.in_(uids), Task.calendar_ref.in_(refs))
            )
        )
    )
    by_uid = {t.uid: t for t in found}
    by_ref = {t.calendar_ref: t for t in found if t.calendar_ref}
    for state in states:
        task = by_uid.get(state.uid) or (by_ref.get(state.ref) if state.ref else None)
        if task is None or task.status != "open" or state.status == "open":
            continue
        task.status = state.status
        task.resolution = "calendar"
        task.updated_at = now
        task.version += 1
        task.written_version = task.version  # the calendar already says so


def tasks_to_write(session: Session, user_id: int, mailbox_id: int) -> list[Task]:
    """Tasks of this user whose latest version is not yet in this mailbox's calendar."""
    return list(
        session.scalars(
            select(Task)
            .where(
                Task.user_id == user_id,
                Task.written_version < Task.version,
                or_(Task.mailbox_id.is_(None), Task.mailbox_id == mailbox_id),
            )
            .order_by(Task.id)
        )
    )


def mark_written(
    session: Session,
    task_id: int,
    version: int,
    mailbox_id: int,
    ref: str | None,
    error: str | None,
) -> None:
    values: dict[str, Any] = {"write_error": error}
    if error is None:
        values.update(written_version=version, mailbox_id=mailbox_id, calendar_ref=ref)
    session.execute(update(Task).where(Task.id == task_id).values(**values))


# --- mailboxes --------------------------------------------------------------------------


def remove_mailbox(session: Session, name: str) -> bool:
    """Disconnect a mailbox (its cursors, sightings and quarantine go with it; its
    activities stay). False when there is no such mailbox."""
    removed = session.execute(delete(Mailbox).where(Mailbox.name == name))
    return bool(removed.rowcount)  # type: ignore[attr-defined]


def resume_mailbox(session: Session, name: str) -> bool:
    """Retry a parked or failing mailbox at the next poll. False when there is none."""
    done = session.execute(
        update(Mailbox)
        .where(Mailbox.name == name)
        .values(state="ok", failures=0, last_attempt=None)
    )
    return bool(done.rowcount)  # type: ignore[attr-defined]


def store_secret(session: Session, name: str, secret_token: str) -> bool:
    """A mailbox's new credentials (already encrypted), retried at the next poll."""
    done = session.execute(
        update(Mailbox)
        .where(Mailbox.name == name)
        .values(secret=secret_token, state="ok", failures=0, last_attempt=None)
    )
    return bool(done.rowcount)  # type: ignore[attr-defined]


def add_mailbox(
    session: Session,
    *,
    name: str,
    kind: str,
    user_id: int,
    settings: dict[str, Any],
    secret_token: str | None = None,
) -> Mailbox:
    """``secret_token`` is already encrypted (syncd.secrets): clear text never gets here."""
    mailbox = Mailbox(
        name=name,
        kind=kind,
        user_id=user_id,
        settings=settings,
        secret=secret_token,
        state="ok",
        failures=0,
        items_logged=0,
    )
    session.add(mailbox)
    session.flush()
    return mailbox


def mark_followups(session: Session, mailbox_id: int, now: datetime) -> None:
    """When the follow-up rules last looked at this mailbox's user."""
    session.execute(update(Mailbox).where(Mailbox.id == mailbox_id).values(followups_at=now))


def mark_writer(
    session: Session, mailbox_id: int, *, state: WriterState, now: datetime, error: str | None
) -> None:
    """The task write-back's own state; it never changes the mailbox's."""
    session.execute(
        update(Mailbox)
        .where(Mailbox.id == mailbox_id)
        .values(writer_state=state, writer_error=error, writer_at=now)
    )


def mark_mailbox(
    session: Session, mailbox_id: int, *, state: MailboxState, now: datetime, error: str | None
) -> None:
    mailbox = session.get(Mailbox, mailbox_id)
    assert mailbox is not None
    mailbox.last_attempt = now
    mailbox.state = state
    mailbox.last_error = error
    if state == "ok":
        mailbox.last_success = now
        mailbox.failures = 0
    else:
        mailbox.failures = (mailbox.failures or 0) + 1
