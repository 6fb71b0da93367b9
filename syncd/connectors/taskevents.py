"""Follow-up tasks written as calendar events, and read back: one convention for every
kind that writes a task as an event (Google Calendar, Graph events with ``--tasks events``,
a CalDAV or vdir calendar that takes no VTODO).

- The event is short (:data:`EVENT_MINUTES`) and transparent (not busy), at the task's due
  time, and carries the task's uid (``syncd-…``, :data:`syncd.items.TASK_UID_PREFIX`) in a
  property of its provider (``X-SYNCD-TASK``, a private extended property, Graph's
  ``transactionId``), so that syncd never logs it as a meeting.
- Its title is the task's, with :data:`DONE_PREFIX` once the CRM resolved it.
- Read back (:func:`read_back`): an event the user deleted or cancelled cancels the task; a
  title the user starts with a done mark ("Done", ✓, ✔, ☑) marks it done; anything else
  leaves it open.
"""

from __future__ import annotations

from syncd.items import TASK_UID_PREFIX, TaskItem, TaskState

EVENT_MINUTES = 15
DONE_PREFIX = "Done: "
# how a user marks a task event done in a calendar that has no done state
DONE_MARKS = ("Done", "done", "DONE", "✓", "✔", "☑")


def is_task_uid(uid: str) -> bool:
    """Whether a calendar entry's uid is one of syncd's follow-up tasks."""
    return uid.startswith(TASK_UID_PREFIX)


def event_title(task: TaskItem) -> str:
    """The title of a task's event: "Done: " before it once the task is done."""
    return (DONE_PREFIX if task.status == "done" else "") + task.title


def read_back(uid: str, title: str, *, cancelled: bool) -> TaskState | None:
    """What the user did to the event of task ``uid``: cancelled or deleted it, ticked it
    off by its title, or nothing (None)."""
    if cancelled:
        return TaskState(uid, "cancelled")
    if title.lstrip().startswith(DONE_MARKS):
        return TaskState(uid, "done")
    return None
