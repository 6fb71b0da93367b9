"""A task's version is raised by the database, not from what a transaction read: two passes
that rewrite one task at once (two mailboxes of one user, on PostgreSQL) give it two
versions, so the calendar gets the content that was stored last. SQLite and PostgreSQL."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from syncd.crm.models import Mailbox, Task, User
from syncd.crm.tasks import TaskPlan, apply_task_plans, mark_written, tasks_to_write

NOW = datetime(2026, 12, 2, 9, 0, tzinfo=UTC)


def test_two_rewrites_at_once_leave_the_last_content_to_be_written(
    sessions: sessionmaker[Session],
) -> None:
    with sessions.begin() as session:
        session.add(User(id=1, email="ana@northwind.test", name="Ana"))
        session.flush()
        session.add(Mailbox(id=1, name="ana", kind="maildir", user_id=1))
    plan = TaskPlan(
        uid="call-list-ana-2026-12-02",
        rule="call-list",
        user_id=1,
        activity_id=None,
        contact_id=None,
        opportunity_id=None,
        title="Calls today",
        description="1. Carla",
        due=NOW + timedelta(hours=1),
        status="open",
    )
    with sessions.begin() as session:
        apply_task_plans(session, [plan], NOW)
    with sessions.begin() as session:
        (task,) = tasks_to_write(session, 1, 1)
        mark_written(session, task.id, task.version, 1, "ref-1", None)

    # pass B reads the task; pass A rewrites it, commits, and its content is written;
    # then B stores its own content, from the task as it read it (version 1)
    second = sessions()
    read = list(second.scalars(select(Task)))  # held: the session keeps it as it read it
    assert [t.version for t in read] == [1]
    if second.get_bind().dialect.name == "sqlite":  # its transaction would hold A up
        second.commit()  # (what it read is kept: sessions do not expire on commit)
    try:
        with sessions.begin() as session:
            apply_task_plans(session, [replace(plan, description="1. Carla\n2. Dan")], NOW)
        with sessions.begin() as session:
            (task,) = tasks_to_write(session, 1, 1)
            assert task.description == "1. Carla\n2. Dan"
            mark_written(session, task.id, task.version, 1, "ref-1", None)
        changed = apply_task_plans(second, [replace(plan, description="1. Eve")], NOW)
        second.commit()
    finally:
        second.close()
    assert changed == 1

    with sessions() as session:
        waiting = tasks_to_write(session, 1, 1)
        assert [(t.description, t.version, t.written_version) for t in waiting] == [
            ("1. Eve", 3, 2)
        ]
