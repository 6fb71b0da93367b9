"""The Microsoft kind's connector: one mailbox's Graph session and what reads and writes it.

Sources: ``graph:inbox`` and ``graph:sentitems`` (:mod:`.mail`), ``graph:calendar``
(:mod:`.calendar`) and, when follow-ups go to To Do, ``graph:todo`` (:mod:`.tasks`: the
tasks the user completed). The task writer is To Do or calendar events (``tasks``). The
session, its tokens and its retries are :mod:`.client`; the parsing is :mod:`.parse`.
"""

from __future__ import annotations

from syncd.connectors.base import CalendarSource, MailboxSpec, MailSource, TaskWriter
from syncd.connectors.contacts import AddressBook
from syncd.connectors.kind import typed
from syncd.connectors.microsoft import MicrosoftSettings
from syncd.connectors.microsoft.calendar import GraphCalendar
from syncd.connectors.microsoft.client import GraphClient
from syncd.connectors.microsoft.contacts import GraphContacts
from syncd.connectors.microsoft.mail import FOLDERS, GraphMail
from syncd.connectors.microsoft.tasks import EventTasks, TodoTasks


class MicrosoftConnector:
    def __init__(self, spec: MailboxSpec) -> None:
        self.spec = spec
        self.client = GraphClient(spec)
        self.mode = typed(spec.settings, MicrosoftSettings).tasks
        self.todo = TodoTasks(self.client, spec) if self.mode == "todo" else None

    def mail_sources(self) -> list[MailSource]:
        return [GraphMail(self.client, self.spec, folder) for folder in FOLDERS]

    def calendar_sources(self) -> list[CalendarSource]:
        sources: list[CalendarSource] = [GraphCalendar(self.client, self.spec)]
        if self.todo is not None:
            sources.append(self.todo)
        return sources

    def task_writer(self) -> TaskWriter | None:
        return self.todo if self.todo is not None else EventTasks(self.client)

    def address_books(self) -> list[AddressBook]:
        """The default Contacts folder (application permission Contacts.Read)."""
        return [GraphContacts(self.client, self.spec)]

    def close(self) -> None:
        self.client.con.session.close()
