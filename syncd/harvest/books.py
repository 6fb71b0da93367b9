"""The daemon keeps the import's knowledge current: with ``contacts.sync = true``, every pass
also reads the user's address books from their sync tokens (Google People and other
contacts, Graph contacts, CardDAV) and adds each new person saved there as a CRM contact,
under the historical import's skip rules (internal, role addresses, the exclusions).

Each batch of cards, the contacts it adds and the book's cursor (``contacts:<book>`` among
the mailbox's cursors) commit in one transaction, which also renews the pass's lease. An
expired sync token reads the book again whole (adding is idempotent: a person already on a
contact adds nothing). A card removed from a book never removes a CRM contact: the CRM's
records are the admin's, and a salesperson tidying an address book must not erase them.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy.orm import Session, sessionmaker

from syncd.config import Settings
from syncd.connectors.base import Connector, ConnectorError, CursorExpired
from syncd.connectors.contacts import AddressBook, HasAddressBooks
from syncd.crm import recorder
from syncd.crm.leases import Lease
from syncd.harvest.apply import apply
from syncd.harvest.collect import see_card
from syncd.harvest.decide import Policy, decide
from syncd.harvest.known import known_crm
from syncd.harvest.people import People, merge_key

log = logging.getLogger("syncd.harvest")


def sync_address_books(
    sessions: sessionmaker[Session],
    settings: Settings,
    connector: Connector,
    *,
    mailbox: str,
    mailbox_id: int,
    user_email: str,
    lease: Lease | None,
    now: Callable[[], datetime],
) -> int:
    """Read the connector's address books from their cursors; the contacts added."""
    if not settings.contacts.sync or not isinstance(connector, HasAddressBooks):
        return 0
    reader = _Reader(sessions, settings, mailbox, mailbox_id, user_email, lease, now)
    try:
        for book in connector.address_books():
            reader.read(book)
    except ConnectorError as exc:  # a scope not granted, a book server down: mail goes on
        log.warning("mailbox %r: address book not read: %s", mailbox, exc)
    if reader.added:
        log.info("mailbox %r: %d contacts added from its address books", mailbox, reader.added)
    return reader.added


@dataclass
class _Reader:
    sessions: sessionmaker[Session]
    settings: Settings
    mailbox: str
    mailbox_id: int
    user_email: str
    lease: Lease | None
    now: Callable[[], datetime]
    added: int = 0

    def read(self, book: AddressBook) -> None:
        source = f"contacts:{book.name}"
        try:
            self._read(book, source)
        except CursorExpired as exc:
            log.info("mailbox %r %s: %s; reading it again", self.mailbox, book.name, exc)
            with self.sessions.begin() as session:
                recorder.reset_cursor(session, self.mailbox_id, source)
            self._read(book, source)

    def _read(self, book: AddressBook, source: str) -> None:
        own = frozenset({merge_key(self.user_email)})
        with self.sessions() as session:
            cursor = recorder.get_cursor(session, self.mailbox_id, source)
        for batch in book.changes(cursor):
            people = People()
            for card in batch.cards:
                see_card(people, card, self.mailbox, own)
            people.join_linked()
            with self.sessions.begin() as session:
                if batch.cards:  # a quiet poll's empty page only moves the cursor
                    crm = known_crm(session, self.settings, people=people)
                    verdicts = decide(people, Policy(), crm)
                    done = apply(
                        session, None, verdicts, {self.mailbox: people}, update_names=False
                    )
                    self.added += done.contacts_created
                recorder.set_cursor(session, self.mailbox_id, source, batch.cursor, self.now())
                if self.lease is not None:
                    self.lease.fence(session, self.now())
