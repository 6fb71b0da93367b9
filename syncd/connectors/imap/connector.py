"""The ``imap`` kind's connector: IMAP mail and, where the mailbox names a CalDAV server, the
same user's calendars and the follow-up tasks written into them.

Mail sources are INBOX, the Sent folder and the configured extras, each an
:class:`~.folder.ImapFolder` over one :class:`~.session.ImapSession`; calendar sources and
the task writer come from a :class:`~.caldav.CalDavClient` (the ``caldav`` library is only
loaded for a mailbox that has one). New mail is pushed by :mod:`.watch` (IDLE).

Settings of a ``kind = "imap"`` mailbox (:class:`~syncd.connectors.imap.ImapSettings`):
``host``, ``port``, ``tls`` (implicit, starttls, none: loopback only), ``login``, ``auth``
(password or xoauth2), ``folders`` (extras), ``idle``, ``caldav_url``; the password or token
is the mailbox's encrypted secret.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from imapclient import IMAPClient

from syncd.connectors.base import CalendarSource, MailboxSpec, MailSource, TaskWriter
from syncd.connectors.contacts import AddressBook
from syncd.connectors.imap import ImapSettings
from syncd.connectors.imap.folder import ImapFolder
from syncd.connectors.imap.parse import chosen_folders
from syncd.connectors.imap.session import ImapSession
from syncd.connectors.kind import typed
from syncd.connectors.transport import split_credentials

if TYPE_CHECKING:
    from syncd.connectors.imap.caldav import CalDavClient
    from syncd.connectors.imap.carddav import CardDav


class ImapConnector:
    def __init__(self, spec: MailboxSpec) -> None:
        self.spec = spec
        self.settings = typed(spec.settings, ImapSettings)
        self.session = ImapSession(spec)
        self._caldav: CalDavClient | None = None
        self._carddav: CardDav | None = None

    def folders(self) -> list[str]:
        """INBOX, the \\Sent folder (RFC 6154, else a common name), and configured extras."""

        def discover(client: IMAPClient) -> list[str]:
            return chosen_folders(
                client.list_folders(),
                self.settings.folders,
                self.settings.excluded_folders,
                self.spec.name,
            )

        folders: list[str] = self.session.call("LIST", discover)
        return folders

    def mail_sources(self) -> list[MailSource]:
        return [ImapFolder(self.session, f, self.spec) for f in self.folders()]

    def _calendar(self) -> CalDavClient | None:
        if self._caldav is None and self.settings.caldav_url:
            from syncd.connectors.imap.caldav import CalDavClient

            self._caldav = CalDavClient(self.spec)
        return self._caldav

    def calendar_sources(self) -> list[CalendarSource]:
        client = self._calendar()
        return list(client.sources()) if client else []

    def task_writer(self) -> TaskWriter | None:
        client = self._calendar()
        return client.task_writer() if client else None

    def address_books(self) -> list[AddressBook]:
        """The user's CardDAV address books (``carddav_url``, else the CalDAV server's);
        none without either."""
        url = self.settings.carddav_url or self.settings.caldav_url
        if not url or self.spec.secret is None:
            return []
        from syncd.connectors.imap.carddav import CardDav

        self._carddav = CardDav(
            self.spec.name,
            split_credentials(url)[0],
            self.settings.caldav_login or self.settings.login or self.spec.user_email,
            self.spec.secret.reveal(),
            self.settings.timeout,
            self.spec.batch_size,
        )
        return list(self._carddav.books())

    def close(self) -> None:
        self.session.close()
        if self._carddav is not None:
            self._carddav.close()
        client, self._caldav = self._caldav, None
        if client is not None:
            client.close()
