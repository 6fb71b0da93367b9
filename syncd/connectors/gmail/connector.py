"""The Gmail connector: one mailbox's client, its sources and its task writer.

A ``kind = "gmail"`` mailbox is read through one :class:`~.client.GmailClient` (its
settings are :class:`~syncd.connectors.gmail.GmailSettings`; the secret is the service
account's key, or ``{"refresh_token", "client_secret"}``, as JSON, stored encrypted): the
source ``gmail:mail`` (:mod:`.mail`), the source ``gcal:primary`` and the follow-up tasks
written into that calendar (:mod:`.calendar`).
"""

from __future__ import annotations

from syncd.connectors.base import CalendarSource, MailboxSpec, MailSource, TaskWriter
from syncd.connectors.contacts import AddressBook
from syncd.connectors.gmail.calendar import GoogleCalendar, GoogleTaskWriter
from syncd.connectors.gmail.client import GmailClient
from syncd.connectors.gmail.mail import GmailMail
from syncd.connectors.gmail.people import people_books


class GmailConnector:
    def __init__(self, spec: MailboxSpec) -> None:
        self.spec = spec
        self.client = GmailClient(spec)

    def mail_sources(self) -> list[MailSource]:
        return [GmailMail(self.client, self.spec)]

    def calendar_sources(self) -> list[CalendarSource]:
        return [GoogleCalendar(self.client, self.spec)]

    def task_writer(self) -> TaskWriter | None:
        return GoogleTaskWriter(self.client)

    def address_books(self) -> list[AddressBook]:
        """Google People: the user's contacts and "Other contacts" (the contacts scopes)."""
        return people_books(self.client)

    def close(self) -> None:
        pass
