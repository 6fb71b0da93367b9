"""Writing a user's pending follow-up tasks into the calendar of one of their mailboxes.

Runs after the transaction that decided the tasks has committed; each task carries the uid
chosen when it was planned, so a retry rewrites the same calendar entry. A writer with
``put_many`` gets the tasks in chunks (a Graph ``$batch`` saves round trips), any other one
task at a time; every chunk is marked written (or refused) in its own transaction.

A calendar that refuses the tasks puts the *writer*, not the mailbox, in ``failing``: mail
goes on being read and logged, and the tasks are written at a later pass. A refused
sign-in (:class:`~syncd.connectors.base.AuthError`) parks the mailbox, as for reading.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime

from sqlalchemy.orm import Session, sessionmaker

from syncd.batching import chunked
from syncd.connectors.base import (
    AuthError,
    BatchTaskWriter,
    Connector,
    ConnectorError,
    TaskWriter,
)
from syncd.crm.mailboxes import mark_writer
from syncd.crm.models import Task, WriterState
from syncd.crm.tasks import mark_written, tasks_to_write
from syncd.items import TaskItem
from syncd.report import SyncReport

log = logging.getLogger("syncd.sync")

PUT_MANY_CHUNK = 100  # tasks per put_many call
Put = Callable[[list[TaskItem]], list[str | None]]


def task_item(task: Task) -> TaskItem:
    """A stored task as a connector writes it."""
    return TaskItem(
        uid=task.uid,
        title=task.title,
        description=task.description,
        due=task.due,
        status=task.status,
        created=task.created_at,
        sequence=task.version - 1,
        categories=("CRM",),
    )


def _putter(writer: TaskWriter) -> tuple[Put, int]:
    """How to hand the writer a chunk of tasks, and how many a chunk holds."""
    if isinstance(writer, BatchTaskWriter):
        return (lambda items: list(writer.put_many(items))), PUT_MANY_CHUNK
    return (lambda items: [writer.put(items[0])]), 1


class TaskWriteBack:
    """Writes one mailbox's pending tasks; fills the writer's part of ``report``.
    ``heartbeat()`` is called and ``stop()`` asked after every chunk."""

    def __init__(
        self,
        sessions: sessionmaker[Session],
        report: SyncReport,
        mailbox_id: int,
        user_id: int,
        *,
        now: Callable[[], datetime],
        stop: Callable[[], bool],
        heartbeat: Callable[[], None],
    ) -> None:
        self.sessions = sessions
        self.report = report
        self.mailbox_id = mailbox_id
        self.user_id = user_id
        self.now = now
        self.stop = stop
        self.heartbeat = heartbeat

    def run(self, connector: Connector) -> None:
        writer = self._open(connector)
        if writer is None:
            return
        with self.sessions() as session:
            pending = tasks_to_write(session, self.user_id, self.mailbox_id)
        put, size = _putter(writer)
        for chunk in chunked(pending, size):
            error = self._write(put, chunk)
            if error:
                self._state("failing", error)
                return
            self.report.tasks_written += len(chunk)
            self.heartbeat()  # a long write-back under throttling keeps the watchdog fed
            if self.stop():  # the rest is written at the next pass
                self.report.stopped = True
                return
        if pending:
            self._state("ok", None)

    def _open(self, connector: Connector) -> TaskWriter | None:
        """The connector's task writer; None without a calendar (tasks then live in the CRM
        only) or when it cannot be opened (the writer is then failing)."""
        try:
            return connector.task_writer()
        except (ConnectorError, OSError) as exc:
            self._state("failing", f"cannot open the calendar for tasks: {exc}")
            return None

    def _write(self, put: Put, chunk: list[Task]) -> str | None:
        """Put one chunk and mark each of its tasks written (or refused, with the error,
        which is returned) in one transaction."""
        refs: list[str | None]
        try:
            refs, error = put([task_item(task) for task in chunk]), None
        except AuthError:
            raise  # a refused sign-in parks the mailbox, as for reading
        except (ConnectorError, OSError) as exc:
            refs, error = [None] * len(chunk), f"cannot write task to the calendar: {exc}"
        with self.sessions.begin() as session:
            for task, ref in zip(chunk, refs, strict=True):
                mark_written(session, task.id, task.version, self.mailbox_id, ref, error)
        return error

    def _state(self, state: WriterState, error: str | None) -> None:
        self.report.writer_state, self.report.writer_error = state, error
        if error:
            log.warning("mailbox %r: tasks not written: %s", self.report.mailbox, error)
        with self.sessions.begin() as session:
            mark_writer(session, self.mailbox_id, state=state, now=self.now(), error=error)
