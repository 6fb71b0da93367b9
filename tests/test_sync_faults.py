"""No single item stops its mailbox, and a calendar that refuses tasks never stops mail
(issue 9, points 11 and 14). Through the in-memory connector kind, on SQLite and PostgreSQL.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session, sessionmaker

import syncd.decide
from syncd.config import Settings
from syncd.connectors.base import ConnectorError
from syncd.connectors.memory.connector import MemoryWorld
from syncd.crm import mailboxes, recorder
from syncd.crm.models import (
    Activity,
    ActivityParticipant,
    Mailbox,
    QuarantineEntry,
    SourceCursor,
    Task,
    User,
)
from syncd.items import MailItem, Participant, Quarantined, TaskState
from syncd.sync import SyncReport, sync_mailbox

S = sessionmaker[Session]
ANA = "ana@northwind.test"
CARLA = "carla@acme.test"


def item(n: int, when: datetime, subject: str = "Hello", sender: str = ANA, **kw) -> MailItem:
    to = CARLA if sender == ANA else ANA
    return MailItem(
        key=f"mid:{n}@x.test",
        provider_id=f"p{n}",
        message_id=f"{n}@x.test",
        subject=subject,
        sent_at=when,
        participants=(Participant(sender, "", "from"), Participant(to, "", "to")),
        thread_key=f"mid:{n}@x.test",
        **kw,
    )


@pytest.fixture
def world(sessions: S, company) -> MemoryWorld:
    with sessions.begin() as session:
        user_id = session.scalar(select(User.id).where(User.email == ANA))
        assert user_id is not None
        mailboxes.add_mailbox(session, name="mem", kind="memory", user_id=user_id, settings={})
    return MemoryWorld()


def run(sessions: S, settings: Settings, world: MemoryWorld, now: datetime) -> SyncReport:
    return sync_mailbox(
        sessions, settings, "mem", now=lambda: now, connector_factory=world.connector
    )


def subjects(sessions: S) -> set[str]:
    with sessions() as session:
        return set(session.scalars(select(Activity.subject)))


def quarantine(sessions: S) -> dict[str, str]:
    with sessions() as session:
        return dict(
            session.execute(select(QuarantineEntry.provider_id, QuarantineEntry.reason)).all()
        )


def test_an_item_the_database_refuses_is_quarantined_and_the_rest_logged(
    sessions, settings, world, now
):
    box = world.mailbox("mem")
    naive = (now - timedelta(hours=1)).replace(tzinfo=None)  # no database may store it
    box.mail["INBOX"] = [
        item(1, now - timedelta(hours=3), "First"),
        item(2, naive, "Broken"),
        item(3, now - timedelta(hours=2), "Third\x00with a NUL"),
    ]
    report = run(sessions, settings, world, now)
    assert report.ok, report.error
    assert subjects(sessions) == {"First", "Third\ufffdwith a NUL"}
    reasons = quarantine(sessions)
    assert list(reasons) == ["p2"]
    assert reasons["p2"] == "cannot store: ValueError: item 'p2' has a time without a time zone"
    with sessions() as session:
        cursor = session.scalar(select(SourceCursor.value).where(SourceCursor.source == "INBOX"))
    assert cursor == "3"  # the pass went past it
    box.mail["INBOX"].append(item(4, now - timedelta(minutes=5), "After"))
    assert run(sessions, settings, world, now).ok
    assert "After" in subjects(sessions)


def test_an_item_whose_matching_fails_is_quarantined(sessions, settings, world, now, monkeypatch):
    real = syncd.decide.match

    def fragile(it, index):
        if it.subject == "Poison":
            raise AttributeError("'Group' object has no attribute 'local_part'")
        return real(it, index)

    monkeypatch.setattr(syncd.decide, "match", fragile)
    world.mailbox("mem").mail["INBOX"] = [
        item(1, now - timedelta(hours=3), "Before"),
        item(2, now - timedelta(hours=2), "Poison"),
        item(3, now - timedelta(hours=1), "After"),
    ]
    report = run(sessions, settings, world, now)
    assert report.ok and report.quarantined == 1
    assert subjects(sessions) == {"Before", "After"}
    assert quarantine(sessions) == {
        "p2": "cannot match: AttributeError: 'Group' object has no attribute 'local_part'"
    }


def test_values_that_fit_no_column_are_fitted_and_logged_once(sessions, settings, world, now):
    """A 600-character Message-ID, a NUL in a key, a 410-character address: stored on both
    databases (a stable hash where a value does not fit, never a truncation), and logged
    once however often they are read."""
    long_id = "x" * 600 + "@acme.test"
    long_address = "y" * 400 + "@acme.test"
    box = world.mailbox("mem")
    box.mail["INBOX"] = [
        MailItem(
            key=f"mid:{long_id}",
            provider_id="p1",
            message_id=long_id,
            subject="Long id",
            sent_at=now - timedelta(hours=2),
            participants=(Participant(CARLA, "", "from"), Participant(ANA, "", "to")),
            thread_key=f"mid:{long_id}",
        ),
        MailItem(
            key="mid:nul\x00@acme.test",
            provider_id="p2\x00",
            message_id="nul\x00@acme.test",
            subject="Nul key",
            sent_at=now - timedelta(hours=1),
            participants=(
                Participant(CARLA, "Carla\x00", "from"),
                Participant(ANA, "", "to"),
                Participant(long_address, "", "cc"),
            ),
            thread_key="mid:nul\x00@acme.test",
        ),
    ]
    assert run(sessions, settings, world, now).ok
    box.batch_size = 1
    box.mail["Again"] = list(box.mail["INBOX"])  # the same mail in another folder
    assert run(sessions, settings, world, now).ok
    assert quarantine(sessions) == {}
    with sessions() as session:
        keys = sorted(session.scalars(select(Activity.key)))
        addresses = set(session.scalars(select(ActivityParticipant.address)))
    assert len(keys) == 2 and all(k.startswith("hash:") for k in keys)
    assert long_address not in addresses and all(len(a) <= 320 for a in addresses)


def test_a_database_error_is_described_without_sql_or_values(sessions):
    secret_value = "s3cr3t-value"
    with pytest.raises(DBAPIError) as caught, sessions() as session:
        session.execute(text("SELECT * FROM no_such_table WHERE x = :v"), {"v": secret_value})
    described = syncd.decide.describe(caught.value)
    assert described.startswith("the CRM database refused it (")
    assert secret_value not in described and "SELECT" not in described


def test_mail_dated_out_of_range_is_quarantined_and_rules_go_on(sessions, settings, world, now):
    box = world.mailbox("mem")
    box.mail["Sent"] = [
        item(1, datetime(9999, 12, 31, 23, 0, tzinfo=UTC), "Year 9999"),
        item(2, datetime(1900, 1, 1, tzinfo=UTC), "Year 1900"),
        item(3, now - timedelta(days=8), "Unanswered"),
    ]
    report = run(sessions, settings, world, now)
    assert report.ok, report.error
    assert subjects(sessions) == {"Unanswered"}
    reasons = quarantine(sessions)
    assert sorted(reasons) == ["p1", "p2"]
    assert reasons["p1"].startswith("date out of range: 9999-12-31T23:00:00+00:00")
    with sessions() as session:  # the follow-up rules still ran
        assert [t.title for t in session.scalars(select(Task))] == [
            "Follow up with Carla Díaz: Unanswered"
        ]


def test_another_users_calendar_cannot_close_a_task(sessions, settings, world, now):
    box = world.mailbox("mem")
    box.mail["Sent"] = [item(1, now - timedelta(days=8), "Unanswered")]
    assert run(sessions, settings, world, now).ok
    with sessions.begin() as session:
        task = session.scalars(select(Task)).one()
        ben = session.scalar(select(User.id).where(User.email == "ben@northwind.test"))
        assert ben is not None
        mailboxes.add_mailbox(session, name="ben", kind="memory", user_id=ben, settings={})

    def calendar_says_done(mailbox: str) -> None:
        with sessions.begin() as session:
            mailbox_id = session.scalar(select(Mailbox.id).where(Mailbox.name == mailbox))
            assert mailbox_id is not None
            recorder.record_batch(
                session,
                mailbox_id=mailbox_id,
                source="calendar",
                decisions=[],
                quarantined=[],
                cursor=None,
                body_policy="snippet",
                now=now,
                task_states=[TaskState(task.uid, "done")],
            )

    calendar_says_done("ben")  # ben's calendar says the task is done: it is not his task
    with sessions() as session:
        assert session.scalars(select(Task.status)).one() == "open"
    calendar_says_done("mem")
    with sessions() as session:
        assert session.scalars(select(Task.status)).one() == "done"


def test_control_characters_from_crm_names_never_reach_a_task(sessions, settings, world, now):
    """issue 10: raw control characters of a CRM name were written into task files."""
    from syncd.crm.models import Contact

    with sessions.begin() as session:
        contact = session.scalars(select(Contact).where(Contact.name == "Carla Díaz")).one()
        contact.name = "Carla\x1b[31m\x07 Díaz"
    box = world.mailbox("mem")
    box.mail["Sent"] = [item(1, now - timedelta(days=8), "Proposal\x00 [draft]")]
    assert run(sessions, settings, world, now).ok
    (task,) = box.tasks.values()
    for written in (task.title, task.description):
        assert not any(ord(c) < 32 and c not in "\n\t" for c in written), repr(written)
    assert "Carla" in task.title and "Díaz" in task.title


def test_a_calendar_that_refuses_tasks_never_stops_mail(sessions, settings, world, now):
    box = world.mailbox("mem")
    old = now - timedelta(days=8)  # an unanswered email: a follow-up task falls due
    box.mail["Sent"] = [item(1, old, "Proposal")]
    box.writer_fault = ConnectorError("calendar folder /srv/cal is read-only")
    report = run(sessions, settings, world, now)
    assert report.ok and report.writer_state == "failing"
    with sessions() as session:
        mailbox = session.scalars(select(Mailbox)).one()
        assert (mailbox.state, mailbox.writer_state) == ("ok", "failing")
        assert "read-only" in (mailbox.writer_error or "")
        task = session.scalars(select(Task)).one()
        assert task.written_version == 0 and "read-only" in (task.write_error or "")
    # mail goes on being logged while the writer fails
    box.mail["INBOX"] = [item(2, now - timedelta(hours=1), "New lead", sender=CARLA)]
    assert run(sessions, settings, world, now).ok
    assert "New lead" in subjects(sessions)
    box.writer_fault = None
    report = run(sessions, settings, world, now + timedelta(minutes=11))
    assert report.ok and report.writer_state == "ok"
    assert [t.title for t in box.tasks.values()] == ["Follow up with Carla Díaz: Proposal"]
    with sessions() as session:
        mailbox = session.scalars(select(Mailbox)).one()
        assert (mailbox.writer_state, mailbox.writer_error) == ("ok", None)


def test_a_provider_fault_fails_only_that_pass(sessions, settings, world, now):
    box = world.mailbox("mem")
    box.mail["INBOX"] = [item(1, now - timedelta(hours=1), "One")]
    box.fault = ConnectorError("server went away")
    report = run(sessions, settings, world, now)
    assert report.state == "failing" and report.error == "server went away"
    box.fault = None
    assert run(sessions, settings, world, now).ok
    assert subjects(sessions) == {"One"}


def test_an_item_quarantined_again_under_a_long_or_nul_id_stops_nothing(sessions, world, now):
    """The same unreadable item read twice (a cursor reset, a CalDAV href made of an
    attacker's UID) is one quarantine entry, whatever its id holds."""
    with sessions() as session:
        mailbox_id = session.scalar(select(Mailbox.id).where(Mailbox.name == "mem"))
    ids = ["x" * 700, "nul\x00id", "plain"]
    for _ in range(2):
        with sessions.begin() as session:
            recorder.record_batch(
                session,
                mailbox_id=mailbox_id,
                source="calendar",
                decisions=[],
                quarantined=[Quarantined(i, "unreadable") for i in ids],
                cursor=None,
                body_policy="snippet",
                now=now,
            )
    assert len(quarantine(sessions)) == 3


def test_a_reply_joined_only_by_the_providers_thread_id_closes_the_follow_up(
    sessions, settings, world, now
):
    """Gmail threads a reply by subject even without References: its thread id joins the
    conversation, so the salesperson is not told to follow up on mail already answered."""
    box = world.mailbox("mem")
    box.mail["Sent"] = [
        item(1, now - timedelta(days=8), "Pricing", provider_thread_id="g-77"),
        item(2, now - timedelta(days=8), "Agenda"),  # never answered
    ]
    box.mail["INBOX"] = [
        item(3, now - timedelta(days=7), "Re: Pricing", sender=CARLA, provider_thread_id="g-77")
    ]
    assert run(sessions, settings, world, now).ok
    with sessions() as session:
        titles = sorted(t.title for t in session.scalars(select(Task)))
    assert titles == ["Follow up with Carla Díaz: Agenda"]
