"""One pass of a mailbox at a time (issue 13): a pass takes its mailbox's lease, a second
pass leaves a held mailbox alone, a pass that lost its lease commits nothing more, a lease
whose holder died is taken over once it has run out, and a pass given a time budget yields
between batches and the next one goes on from its cursor. On SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session, sessionmaker

from syncd.config import Settings
from syncd.connectors.memory.connector import MemoryWorld
from syncd.crm import mailboxes
from syncd.crm.leases import Lease
from syncd.crm.models import Activity, Mailbox, SourceCursor, User
from syncd.items import MailItem, Participant
from syncd.sync import SyncJob

S = sessionmaker[Session]
ANA = "ana@northwind.test"
CARLA = "carla@acme.test"


def item(n: int, when: datetime) -> MailItem:
    return MailItem(
        key=f"mid:{n}@x.test",
        provider_id=f"p{n}",
        message_id=f"{n}@x.test",
        subject=f"Message {n}",
        sent_at=when,
        participants=(Participant(ANA, "", "from"), Participant(CARLA, "", "to")),
        thread_key=f"mid:{n}@x.test",
    )


@pytest.fixture
def world(sessions: S, company, now: datetime) -> MemoryWorld:
    with sessions.begin() as session:
        user_id = session.scalar(select(User.id).where(User.email == ANA))
        assert user_id is not None
        mailboxes.add_mailbox(session, name="mem", kind="memory", user_id=user_id, settings={})
    world = MemoryWorld()
    box = world.mailbox("mem")
    box.mail["INBOX"] = [item(n, now - timedelta(hours=50 - n)) for n in range(1, 41)]
    box.batch_size = 10
    return world


def job(sessions: S, settings: Settings, world: MemoryWorld, now: datetime, **kw) -> SyncJob:
    return SyncJob(
        sessions, settings, "mem", now=lambda: now, connector_factory=world.connector, **kw
    )


def mailbox(sessions: S) -> Mailbox:
    with sessions() as session:
        row = session.scalar(select(Mailbox).where(Mailbox.name == "mem"))
        assert row is not None
        session.expunge(row)
        return row


def logged(sessions: S) -> int:
    with sessions() as session:
        return session.scalar(select(func.count()).select_from(Activity)) or 0


def test_a_held_mailbox_is_left_to_its_holder_and_taken_over_once_its_lease_runs_out(
    sessions, settings, world, now
):
    holder = Lease(mailbox(sessions).id, "elsewhere:1:dead", settings.sync.lease_seconds)
    with sessions.begin() as session:
        assert holder.acquire(session, now) is None
    report = job(sessions, settings, world, now).run()
    assert report.busy == "elsewhere:1:dead"
    assert logged(sessions) == 0
    assert mailbox(sessions).last_attempt is None  # nothing was touched
    later = now + timedelta(seconds=settings.sync.lease_seconds + 1)  # the holder died
    report = job(sessions, settings, world, later).run()
    assert report.ok and report.busy is None
    assert logged(sessions) == 40
    row = mailbox(sessions)
    assert row.lease_owner is None and row.caught_up_at == later


def test_a_pass_that_lost_its_lease_commits_nothing_more(sessions, settings, world, now):
    """Another pass took the mailbox over while this one stalled: this one's next batch is
    not committed and its cursor stays where the other pass put it."""
    stolen: list[bool] = []

    def heartbeat() -> None:
        if not stolen:  # after the first batch, someone else takes the mailbox over
            with sessions.begin() as session:
                session.execute(
                    update(Mailbox).where(Mailbox.name == "mem").values(lease_owner="thief")
                )
            stolen.append(True)

    report = job(sessions, settings, world, now, heartbeat=heartbeat).run()
    assert report.stopped and report.busy == "another pass"
    assert logged(sessions) == 10  # the first batch only
    with sessions() as session:
        assert session.scalar(select(SourceCursor.value)) == "10"
    row = mailbox(sessions)
    assert row.lease_owner == "thief"  # not released: it is the thief's
    assert row.last_attempt is None


def test_a_pass_over_its_budget_yields_and_the_next_goes_on_from_its_cursor(
    sessions, settings, world, now
):
    report = job(sessions, settings, world, now, budget=0.0).run()
    assert report.ok and report.yielded
    assert logged(sessions) == 10
    row = mailbox(sessions)
    assert row.state == "ok" and row.caught_up_at is None and row.lease_owner is None
    passes = 1
    while job(sessions, settings, world, now, budget=0.0).run().yielded:
        passes += 1
    assert passes == 4 and logged(sessions) == 40
    assert mailbox(sessions).caught_up_at == now


def test_a_lease_of_a_dead_process_on_this_machine_is_taken_over_at_once(
    sessions, settings, world, now
):
    """A restarted syncd (the old one was SIGKILLed) need not wait for the lease to run out."""
    import socket
    import subprocess

    gone = subprocess.Popen(["true"])  # a process of this machine that has exited
    gone.wait()
    holder = Lease(mailbox(sessions).id, f"{socket.gethostname()}:{gone.pid}:x", 600)
    with sessions.begin() as session:
        assert holder.acquire(session, now) is None
    report = job(sessions, settings, world, now).run()
    assert report.ok and report.busy is None and logged(sessions) == 40
