"""Rows in bulk (syncd.crm.rows.insert_rows, the recorder's lean path): what it writes reads
back exactly as what SQLAlchemy's own INSERT writes, the ids it returns name their rows, a
row the database refuses raises what it raised before (so a refused batch is stored item by
item), and an activity seen again is merged. Every test runs on SQLite and PostgreSQL."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy import Table, event, insert, literal_column, select
from sqlalchemy.exc import IntegrityError, StatementError
from sqlalchemy.orm import Session, sessionmaker

from syncd.crm import recorder
from syncd.crm.models import (
    Activity,
    ActivityParticipant,
    Base,
    Link,
    Mailbox,
    QuarantineEntry,
    Sighting,
    SourceCursor,
    ThreadKey,
    User,
)
from syncd.crm.rows import insert_rows, statement_sizes
from syncd.items import Batch, Cursor, MailItem, MeetingItem, Participant
from syncd.matching.matcher import LinkDecision, Match, ParticipantMatch
from syncd.store import REFUSED, Target, store, store_one_by_one

S = sessionmaker[Session]
TABLES: dict[type[Base], Table] = {
    model: Base.metadata.tables[model.__tablename__]
    for model in (Activity, ActivityParticipant, Link, ThreadKey, Sighting)
}

PARIS = ZoneInfo("Europe/Paris")
TIMES = [
    datetime(2026, 1, 15, 9, 30, tzinfo=PARIS),  # winter, +01:00
    datetime(2026, 7, 15, 9, 30, 0, 123456, tzinfo=PARIS),  # summer, +02:00
    datetime(2026, 3, 1, 23, 59, 59, 999999, tzinfo=timezone(timedelta(hours=5, minutes=30))),
    datetime(2025, 12, 31, 20, 0, tzinfo=timezone(timedelta(hours=-8))),  # next day in UTC
    datetime(2026, 5, 4, 12, 0, 0, 1, tzinfo=ZoneInfo("America/St_Johns")),  # -02:30
    datetime(1970, 1, 1, tzinfo=UTC),
    datetime(2099, 12, 31, 23, 59, 59, tzinfo=UTC),
]
TEXTS = ["", "Grüße aus Köln — 東京 😀 naïve", "x" * 100_000, "two\nlines\tand a tab", "plain"]


def activity_rows(prefix: str, now: datetime) -> list[dict[str, Any]]:
    rows = []
    for n, when in enumerate(TIMES):
        text = TEXTS[n % len(TEXTS)]
        rows.append(
            {
                "key": f"{prefix}:{n}@x.test",
                "kind": "meeting" if n % 2 else "email",
                "subject": text,
                "occurred_at": when,
                "ends_at": when + timedelta(minutes=45) if n % 2 else None,
                "direction": "inbound",
                "thread_key": f"{prefix}:thread@x.test",
                "status": "confirmed",
                "snippet": text[:300] if n % 3 else None,
                "body": text if n % 3 == 1 else None,
                "match_note": "two deals: [OPP-1] and [OPP-2]" if n == 2 else None,
                "created_at": now,  # one object for the whole batch, as the recorder does
            }
        )
    return rows


@pytest.fixture
def mailbox_id(sessions: S) -> int:
    with sessions.begin() as session:
        user = User(email="ana@northwind.test", name="Ana")
        box = Mailbox(name="mem", kind="memory", user=user, settings={})
        session.add(box)
        session.flush()
        return box.id


def orm_rows(session: Session, model: type[Base], where: Any) -> list[dict[str, Any]]:
    """Every column but the id, as the ORM reads it back."""
    table = TABLES[model]
    columns = [c.key for c in table.columns if c.key != "id"]
    found = session.scalars(select(model).where(where).order_by(table.c.id))
    return [{c: getattr(obj, c) for c in columns} for obj in found]


def raw_rows(session: Session, model: type[Base], where: Any) -> list[tuple[Any, ...]]:
    """Every column but the id as the driver hands it back (no type's result processing):
    on SQLite, the stored text of each time."""
    table = TABLES[model]
    columns: list[Any] = [literal_column(c.name) for c in table.columns if c.key != "id"]
    found = session.execute(select(*columns).select_from(table).where(where).order_by(table.c.id))
    return [tuple(row) for row in found]


def test_activities_written_lean_read_back_as_sqlalchemys_insert_writes_them(sessions, now):
    with sessions.begin() as session:
        ids = insert_rows(session, Activity, activity_rows("lean", now))
        session.execute(insert(TABLES[Activity]), activity_rows("core", now))
    with sessions() as session:
        lean = orm_rows(session, Activity, Activity.key.startswith("lean:"))
        core = orm_rows(session, Activity, Activity.key.startswith("core:"))
        assert len(lean) == len(TIMES) == len(ids)
        for row in [*lean, *core]:
            row["key"] = row["key"].split(":", 1)[1]
            row["thread_key"] = row["thread_key"].split(":", 1)[1]
        assert lean == core
        # the instants are kept, read back in UTC; no text is cut or changed
        assert [r["occurred_at"] for r in lean] == TIMES
        assert all(r["occurred_at"].utcoffset() == timedelta(0) for r in lean)
        assert lean[2]["subject"] == "x" * 100_000 and lean[0]["subject"] == ""
        assert lean[1]["subject"] == TEXTS[1] and lean[1]["ends_at"] == TIMES[1] + timedelta(
            minutes=45
        )
        raw_lean = raw_rows(session, Activity, Activity.key.startswith("lean:"))
        raw_core = raw_rows(session, Activity, Activity.key.startswith("core:"))
        # what the database holds is the same too (SQLite compares times as text)
        assert [r[2:6] + r[7:] for r in raw_lean] == [r[2:6] + r[7:] for r in raw_core]


def test_rows_of_the_other_tables_read_back_as_sqlalchemys_insert_writes_them(
    sessions, mailbox_id, now
):
    with sessions.begin() as session:
        ids = insert_rows(session, Activity, activity_rows("a", now)[:2])
        first, second = ids["a:0@x.test"], ids["a:1@x.test"]

        def each(activity_id: int) -> dict[type[Base], list[dict[str, Any]]]:
            return {
                ActivityParticipant: [
                    {
                        "activity_id": activity_id,
                        "address": f"{n}@acme.test",
                        "name": name,
                        "role": "to",
                        "contact_id": None,
                        "user_id": None,
                    }
                    for n, name in enumerate(["", "Zoë Ångström", "李小龍", 'O\'Brien "Bob"'])
                ],
                Link: [
                    {
                        "activity_id": activity_id,
                        "type": "account",
                        "target_id": 7,
                        "reason": "domain",
                    }
                ],
                ThreadKey: [
                    {"activity_id": activity_id, "key": k} for k in ("mid:root@x.test", "gm:19a")
                ],
                Sighting: [
                    {
                        "activity_id": activity_id,
                        "mailbox_id": mailbox_id,
                        "source": "INBOX/Ünïcode",
                        "provider_id": "42",
                        "seen_at": t,
                    }
                    for t in TIMES[2:3]
                ],
            }

        for model, rows in each(first).items():
            assert insert_rows(session, model, rows) == {}
        for model, rows in each(second).items():
            session.execute(insert(TABLES[model]), rows)
    with sessions() as session:
        for model in (ActivityParticipant, Link, ThreadKey, Sighting):
            column = TABLES[model].c.activity_id
            lean = orm_rows(session, model, column == first)
            core = orm_rows(session, model, column == second)
            assert lean, model
            assert [{**r, "activity_id": 0} for r in lean] == [
                {**r, "activity_id": 0} for r in core
            ]
            raw_lean = raw_rows(session, model, column == first)
            raw_core = raw_rows(session, model, column == second)
            assert [r[1:] for r in raw_lean] == [r[1:] for r in raw_core]
        assert session.scalar(select(Sighting.seen_at)) == TIMES[2]


def test_the_ids_returned_name_their_own_rows_across_statements(sessions, now):
    template = activity_rows("t", now)[0]
    rows = [{**template, "key": f"k{n}@x.test"} for n in range(2_345)]
    with sessions.begin() as session:
        ids = insert_rows(session, Activity, rows)
        later = Activity(**{**template, "key": "later@x.test"})
        session.add(later)
        session.flush()  # the id the table's default gives next is still free
        assert later.id not in ids.values()
    with sessions() as session:
        stored = {key: i for key, i in session.execute(select(Activity.key, Activity.id))}
    assert len(ids) == len(set(ids.values())) == 2_345
    assert ids == {key: i for key, i in stored.items() if key != "later@x.test"}


@given(count=st.integers(0, 20_000), most=st.integers(1, 5_000))
def test_statement_sizes_are_powers_of_two_that_add_up_to_the_rows(count, most):
    sizes = statement_sizes(count, most)
    assert sum(sizes) == count
    assert all(size & (size - 1) == 0 and size <= most for size in sizes)
    assert sizes == sorted(sizes, reverse=True)
    assert len(set(sizes)) <= most.bit_length()
    page = 1 << (most.bit_length() - 1)  # as few statements as powers of two allow
    assert sizes[: count // page] == [page] * (count // page)
    assert len(sizes) == count // page + bin(count % page).count("1")


def test_batches_of_every_size_send_few_distinct_inserts(sessions, now):
    """The driver keeps each statement it prepared: INSERTs of as many texts as batch sizes
    would grow the process with every new size (bench/import_local.py)."""
    template = activity_rows("s", now)[0]
    sent: set[str] = set()

    def seen(conn: Any, cursor: Any, statement: str, *_: Any) -> None:
        if statement.startswith("INSERT INTO activities"):
            sent.add(statement)

    engine = sessions.kw["bind"]
    event.listen(engine, "before_cursor_execute", seen)
    stored = 0
    try:
        for size in range(1, 1_100, 37):
            rows = [{**template, "key": f"s{stored + n}@x.test"} for n in range(size)]
            with sessions.begin() as session:
                assert len(insert_rows(session, Activity, rows)) == size
            stored += size
    finally:
        event.remove(engine, "before_cursor_execute", seen)
    with sessions() as session:
        assert session.query(Activity).count() == stored
    if engine.dialect.name == "sqlite":  # PostgreSQL copies: one COPY text a table
        assert 1 <= len(sent) <= 10, len(sent)


def test_a_refused_row_raises_the_error_it_raised_before(sessions, db_url, now):
    rows = activity_rows("dup", now)
    with sessions.begin() as session:
        insert_rows(session, Activity, rows[:1])
        with pytest.raises(StatementError) as lean, session.begin_nested():
            insert_rows(session, Activity, rows)  # its first key is stored already
        if db_url.startswith("sqlite"):  # what session.execute(insert(...)) raises
            with pytest.raises(StatementError) as core, session.begin_nested():
                session.execute(insert(TABLES[Activity]), rows)
            assert type(lean.value) is type(core.value) is IntegrityError
        else:  # PostgreSQL writes them with COPY; its error keeps the driver's class, so a
            # timeout or a deadlock is an OperationalError (the database, not an item)
            assert type(lean.value) is IntegrityError
        orphan = {"activity_id": 10**9, "address": "a@b.test", "name": "", "role": "to"}
        with pytest.raises(REFUSED), session.begin_nested():  # a foreign key refuses it
            insert_rows(session, ActivityParticipant, [orphan])
        # the transaction goes on after the refused savepoints
        assert session.scalars(select(Activity.key)).all() == ["dup:0@x.test"]


def mail(n: int, when: datetime, **kw: Any) -> MailItem:
    return MailItem(
        key=f"mid:{n}@x.test",
        provider_id=f"p{n}",
        message_id=f"{n}@x.test",
        subject=f"Mail {n}",
        sent_at=when,
        participants=(Participant("ana@northwind.test", "Ana", "from"),),
        thread_key="mid:1@x.test",
        **kw,
    )


def decision(item: MailItem | MeetingItem, *links: LinkDecision, contact: int | None = None):
    return recorder.Decision(
        item,
        Match(
            participants=(ParticipantMatch("carla@acme.test", "Carla", "to", contact_id=contact),),
            links=links,
            direction="outbound",
        ),
    )


def test_a_batch_with_a_row_the_database_refuses_is_stored_item_by_item(sessions, mailbox_id, now):
    target = Target("mem", mailbox_id, "INBOX", "snippet", lambda: now)
    decisions = [
        decision(mail(1, now)),
        decision(mail(2, now), contact=10**9),  # no such contact: a foreign key refuses it
        decision(mail(3, now)),
    ]
    batch = Batch(items=tuple(d.item for d in decisions), cursor=Cursor("3"))
    quarantined: list[Any] = []
    with sessions.begin() as session:
        with pytest.raises(REFUSED), session.begin_nested():
            store(session, target, decisions, quarantined, batch)
        result, kept = store_one_by_one(session, target, batch, decisions, quarantined)
    assert [d.item.key for d in kept] == ["mid:1@x.test", "mid:3@x.test"]
    assert result.new_activities == result.new_sightings == 2
    with sessions() as session:
        assert session.scalars(select(Activity.key).order_by(Activity.key)).all() == [
            "mid:1@x.test",
            "mid:3@x.test",
        ]
        reason = session.scalar(select(QuarantineEntry.reason))
        assert reason is not None and reason.startswith("cannot store: the CRM database refused")
        assert session.scalar(select(SourceCursor.value)) == "3"


def test_an_activity_seen_again_is_merged_once(sessions, mailbox_id, now):
    def record(*decisions: recorder.Decision, source: str = "INBOX") -> recorder.BatchResult:
        with sessions.begin() as session:
            return recorder.record_batch(
                session,
                mailbox_id=mailbox_id,
                source=source,
                decisions=decisions,
                quarantined=(),
                cursor=None,
                body_policy="full",
                now=now,
            )

    start = now + timedelta(days=2)
    meeting = MeetingItem(
        key="ical:m1@x.test",
        uid="m1@x.test",
        recurrence_id=None,
        provider_id="m1",
        subject="Kick-off",
        start=start,
        end=start + timedelta(hours=1),
        participants=(Participant("ana@northwind.test", "Ana", "organizer"),),
    )
    tag = LinkDecision("opportunity", 5, "tag")
    first = record(decision(mail(1, now)), decision(meeting))
    assert (first.new_activities, first.new_sightings, first.updated_meetings) == (2, 2, 0)
    moved = replace(
        meeting,
        subject="Kick-off (moved)",
        start=(start + timedelta(hours=3)).astimezone(PARIS),
        end=start + timedelta(hours=4),
    )
    again = record(
        decision(mail(1, now, provider_thread_id="19a"), tag), decision(moved), source="Archive"
    )
    assert (again.new_activities, again.new_sightings, again.updated_meetings) == (0, 0, 1)
    assert again.activity_ids == first.activity_ids
    assert record(decision(moved)).updated_meetings == 0
    with sessions() as session:
        stored = session.scalars(select(Activity).where(Activity.key == meeting.key)).one()
        assert (stored.subject, stored.occurred_at, stored.ends_at, stored.status) == (
            "Kick-off (moved)",
            start + timedelta(hours=3),
            start + timedelta(hours=4),
            "confirmed",
        )
        mail_id = first.activity_ids["mid:1@x.test"]
        links = session.execute(
            select(Link.type, Link.target_id).where(Link.activity_id == mail_id)
        )
        assert links.all() == [("opportunity", 5)]
        keys = session.scalars(select(ThreadKey.key).where(ThreadKey.activity_id == mail_id))
        assert sorted(keys) == ["mid:1@x.test", "provider-thread:19a"]
        assert session.scalar(select(Sighting.source).where(Sighting.activity_id == mail_id)) == (
            "INBOX"
        )
