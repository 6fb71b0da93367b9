"""Writes of follow-up tasks: what the follow-up rules planned (:class:`TaskPlan`,
:func:`apply_task_plans`), what the user did to a task in their calendar
(:func:`apply_calendar_task_states`), and the task write-back's progress: which tasks a
mailbox's calendar still lacks (:func:`tasks_to_write`) and what writing one did
(:func:`mark_written`).

A task has a ``version`` that every change raises and a ``written_version`` the calendar
holds; the write-back writes the tasks whose two differ. The version is raised by the
database (``version = version + 1``), never from the value a transaction read: two passes
that rewrite one task at once (two mailboxes of a user, on PostgreSQL) give it two versions,
so the second content is written too. The reads the follow-up rules
start from are in :mod:`syncd.crm.queries`; ``syncd tasks`` reads :mod:`syncd.crm.reports`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session

from syncd.crm.models import Mailbox, Task, TaskResolution, TaskRule
from syncd.crm.rows import clean, insert_new
from syncd.items import TaskState, TaskStatus


@dataclass(frozen=True)
class TaskPlan:
    """What a follow-up rule decided about one task (see syncd.followups), or the call list
    about a day's list (syncd.calllist: it has no activity)."""

    uid: str
    rule: TaskRule
    user_id: int
    activity_id: int | None
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
            new_rows.append(_new_task_row(plan, now))
            changed += 1
        elif _follow_plan(task, plan, now):
            changed += 1
    if new_rows:
        # two mailboxes of one user may plan the same task at once (two processes on
        # PostgreSQL): the uid is the task, whoever stores it first
        session.execute(insert_new(session, Task, "uid"), new_rows)
    session.flush()
    return changed


def _new_task_row(plan: TaskPlan, now: datetime) -> dict[str, Any]:
    return {
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


# what closes a task for a while only: an open plan for it opens it again (syncd.calllist);
# a task the user closed in their calendar, or whose activity went, stays closed
REOPENED_BY: frozenset[TaskResolution | None] = frozenset({"empty", "turned off", "expired"})


def _follow_plan(task: Task, plan: TaskPlan, now: datetime) -> bool:
    """An open task closed by its rule, or rewritten with what its rule says of it now (its
    activity moved to another deal; a call list's content changed). A closed task stays as
    it is, unless syncd closed it for a reason that passes (REOPENED_BY: a call list that
    was empty, turned off or out of its day has something again). True when the task
    changed (a new version)."""
    if task.status != plan.status and task.status == "open":
        task.status = plan.status
        task.resolution = plan.resolution
    elif plan.status == "open" != task.status and task.resolution in REOPENED_BY:
        task.status, task.resolution = "open", None
        _rewrite(task, plan)
    elif task.status == plan.status == "open" and (
        task.opportunity_id != plan.opportunity_id
        or task.title != (clean(plan.title) or "")
        or task.description != (clean(plan.description) or "")
        or task.due.astimezone(UTC) != plan.due.astimezone(UTC)  # in a DST fold, zones differ
    ):  # the calendar entry says what its rule says now
        _rewrite(task, plan)
    else:
        return False
    task.updated_at = now
    task.version = raised()
    return True


def raised() -> Any:
    """A task's next version, as the database has it when the change is stored: another
    transaction's change committed meanwhile is counted, never overwritten with the same
    number."""
    return Task.version + 1


def _rewrite(task: Task, plan: TaskPlan) -> None:
    task.opportunity_id = plan.opportunity_id
    task.title = clean(plan.title) or ""
    task.description = clean(plan.description) or ""
    task.due = plan.due


def apply_calendar_task_states(
    session: Session, mailbox_id: int, states: Sequence[TaskState], now: datetime
) -> None:
    """The user completed or deleted a task in this mailbox's calendar: the CRM follows. A
    state is matched by the task's uid, or by the calendar's id for it where only that came
    back, among the mailbox owner's tasks only: no one else's calendar (an invitation can
    carry any uid) can close them."""
    if not states:
        return
    user_id = session.scalar(select(Mailbox.user_id).where(Mailbox.id == mailbox_id))
    assert user_id is not None
    by_uid, by_ref = _user_tasks(session, user_id, states)
    for state in states:
        task = by_uid.get(state.uid) or (by_ref.get(state.ref) if state.ref else None)
        if task is not None and task.status == "open" and state.status != "open":
            task.status = state.status
            task.resolution = "calendar"
            task.updated_at = now
            task.version = raised()
            task.written_version = raised()  # the calendar already says so


def _user_tasks(
    session: Session, user_id: int, states: Sequence[TaskState]
) -> tuple[dict[str, Task], dict[str, Task]]:
    """This user's tasks these states name, by uid and by the calendar's id for them."""
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
    return by_uid, by_ref


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
    """What writing a task to this mailbox's calendar did: the version it now holds and the
    calendar's id for it, or the error that kept it out (retried at the next pass)."""
    values: dict[str, Any] = {"write_error": error}
    if error is None:
        values.update(written_version=version, mailbox_id=mailbox_id, calendar_ref=ref)
    session.execute(update(Task).where(Task.id == task_id).values(**values))
