"""IMAP IDLE (RFC 2177): a thread that tells the daemon when new mail arrives in INBOX.

``KIND.watch`` names :func:`watch`; the daemon starts it for a mailbox whose settings ask for
``idle`` and starts it again when it has died. The sync itself stays the folder's
(:mod:`.folder`): the watcher only says when to run it.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from datetime import UTC, datetime

from imapclient import IMAPClient

from syncd.connectors.base import AuthError, MailboxSpec
from syncd.connectors.imap import ImapSettings
from syncd.connectors.imap.parse import announces_mail
from syncd.connectors.imap.session import ImapSession
from syncd.connectors.kind import typed

log = logging.getLogger("syncd.imap")


class IdleWatcher(threading.Thread):
    """IMAP IDLE on INBOX: calls ``on_change`` when mail arrives. Re-issues IDLE every few
    minutes (servers drop it after 29 min, Gmail sooner) and reconnects on error, backing
    off up to a minute; a refused login ends it."""

    REISSUE = 300.0  # seconds of one IDLE command

    def __init__(
        self, spec: MailboxSpec, on_change: Callable[[str], None], stop: threading.Event
    ) -> None:
        super().__init__(name=f"idle-{spec.name}", daemon=True)
        self.spec = spec
        self.on_change = on_change
        self.stopping = stop

    def run(self) -> None:
        delay = 1.0
        while not self.stopping.is_set():
            try:
                self._watch_once()
                delay = 1.0
            except AuthError as exc:
                log.warning("IDLE for %r stopped: %s", self.spec.name, exc)
                return
            except Exception as exc:  # dropped: back off and watch again
                log.info("IDLE for %r dropped (%s); again in %.0f s", self.spec.name, exc, delay)
                self.stopping.wait(delay)
                delay = min(delay * 2, 60.0)

    def _watch_once(self) -> None:
        """One connection: IDLE on INBOX, again and again, until ``stop`` is set."""
        session = ImapSession(self.spec, counted=False)  # never a poll's slot (.session)
        try:
            client = session.connect()
            client.select_folder("INBOX", readonly=True)
            while not self.stopping.is_set():
                self._idle(client)
        finally:
            session.close()

    def _idle(self, client: IMAPClient) -> None:
        """One IDLE command, until :attr:`REISSUE` seconds have passed or ``stop`` is set."""
        client.idle()
        started = datetime.now(UTC)
        try:
            while not self.stopping.is_set():
                if announces_mail(client.idle_check(timeout=1.0)):
                    self.on_change(self.spec.name)
                if (datetime.now(UTC) - started).total_seconds() > self.REISSUE:
                    break
        finally:
            client.idle_done()


def watch(
    spec: MailboxSpec, on_change: Callable[[str], None], stop: threading.Event
) -> IdleWatcher | None:
    """Start watching the mailbox for new mail when its settings ask for ``idle``."""
    if not typed(spec.settings, ImapSettings).idle:
        return None
    watcher = IdleWatcher(spec, on_change, stop)
    watcher.start()
    return watcher
