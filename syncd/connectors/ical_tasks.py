"""syncd's follow-up tasks in iCalendar (RFC 5545): a task written as a VTODO, or as a
short VEVENT where a calendar takes no VTODO, stamped with the ``X-SYNCD-TASK`` property;
read back, a component with that stamp is the task's state, never a meeting."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import icalendar

from syncd.connectors.taskevents import EVENT_MINUTES, event_title, read_back
from syncd.items import TaskItem, TaskState, TaskStatus

SYNCD_TASK_PROP = "X-SYNCD-TASK"
PRODID = "-//syncd//syncd follow-up tasks//EN"
_TODO_STATUS: dict[str, TaskStatus] = {"COMPLETED": "done", "CANCELLED": "cancelled"}
_STATUS_TODO = {"open": "NEEDS-ACTION", "done": "COMPLETED", "cancelled": "CANCELLED"}


def task_state(task_uid: str, status: str, summary: str = "", event: bool = False) -> TaskState:
    """The state of syncd's task ``task_uid`` (its ``X-SYNCD-TASK``) read back: a VTODO's
    STATUS (done, cancelled, else open); a VEVENT's as every task event's
    (:func:`syncd.connectors.taskevents.read_back`: cancelled, a done mark, else open)."""
    if event:
        found = read_back(task_uid, summary, cancelled=status.upper() == "CANCELLED")
        return found or TaskState(uid=task_uid, status="open")
    return TaskState(uid=task_uid, status=_TODO_STATUS.get(status.upper(), "open"))


def task_to_ical(task: TaskItem, as_event: bool = False) -> bytes:
    """A follow-up task as a VTODO (or a short VEVENT where a calendar takes no VTODO)."""
    cal = icalendar.Calendar()
    cal.add("PRODID", PRODID)
    cal.add("VERSION", "2.0")
    component: Any = icalendar.Event() if as_event else icalendar.Todo()
    component.add("UID", task.uid)
    component.add("DTSTAMP", datetime.now(UTC))
    component.add("CREATED", task.created.astimezone(UTC))
    component.add("SUMMARY", event_title(task) if as_event else task.title)
    component.add("DESCRIPTION", task.description)
    component.add("SEQUENCE", task.sequence)
    due = task.due.astimezone(UTC)
    if as_event:
        component.add("DTSTART", due)
        component.add("DTEND", due + timedelta(minutes=EVENT_MINUTES))
        component.add("TRANSP", "TRANSPARENT")
        if task.status == "cancelled":
            component.add("STATUS", "CANCELLED")
    else:
        component.add("DUE", due)
        component.add("STATUS", _STATUS_TODO[task.status])
        if task.status == "done":
            component.add("COMPLETED", datetime.now(UTC))
    if task.categories:
        component.add("CATEGORIES", list(task.categories))
    component.add(SYNCD_TASK_PROP, task.uid)
    cal.add_component(component)
    return bytes(cal.to_ical())
