"""The push watchers of ``syncd run`` (IMAP IDLE): one per mailbox that asks for one
(``idle``) and is not parked; started anew when its settings or credentials change (a
reauth), stopped while it is parked, started again with backoff when it dies. A watcher
calls ``on_push(name)`` from its own thread when new mail arrives; the daemon's loop syncs
that mailbox at once."""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from syncd.config import Settings
from syncd.connectors.base import ConnectorError, Watcher, WatcherFactory
from syncd.crm.models import Mailbox
from syncd.sync import mailbox_spec, typed_settings

log = logging.getLogger("syncd.daemon")

WATCH_BACKOFF_MAX = 300.0  # seconds between two starts of a watcher that keeps dying
WATCH_STABLE = 60.0  # a watcher alive this long has its backoff forgotten


@dataclass
class _Watch:
    """The push watcher of one mailbox, as the daemon keeps it."""

    fingerprint: str  # of the settings and credentials it was started with
    stop: threading.Event
    watcher: Watcher | None = None  # None: the kind has none, or it could not start
    started: float = 0.0  # time.monotonic() of the last start
    failures: int = 0  # starts in a row that failed or died
    retry_at: float | None = None  # when it is started again (monotonic); None: not planned


def _fingerprint(mailbox: Mailbox) -> str:
    """Changes when the mailbox's settings or its credentials change (a reauth stores a
    new encrypted secret)."""
    text = json.dumps([mailbox.kind, mailbox.settings, mailbox.secret], sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def _alive(watcher: Watcher) -> bool:
    is_alive = getattr(watcher, "is_alive", None)
    return bool(is_alive()) if callable(is_alive) else True


class Watchers:
    """The watchers of the daemon's mailboxes, by mailbox name."""

    def __init__(
        self,
        sessions: sessionmaker[Session],
        settings: Settings,
        factory: WatcherFactory,
        on_push: Callable[[str], None],
    ) -> None:
        self.sessions, self.settings = sessions, settings
        self.factory, self.on_push = factory, on_push
        self.watches: dict[str, _Watch] = {}

    def _pushes(self, mailbox: Mailbox) -> bool:
        """Whether the mailbox asks for a push watcher (``idle``): its kind's push."""
        try:
            return typed_settings(mailbox, self.settings).idle
        except ConnectorError:
            return False  # its sync names the problem

    def refresh(self) -> float | None:
        """Keep one push watcher per mailbox that asks for one (``idle = true``) and is not
        parked: start it, start it anew when the mailbox's settings or credentials changed,
        stop it while the mailbox is parked or no longer wants it, and start a dead one again
        after a backoff (1 s, 2 s, 4 s ... up to WATCH_BACKOFF_MAX). A watcher that dies also
        asks for a sync of its mailbox at once: if the login is refused, that sync parks the
        mailbox with a status naming the fix, and the watcher waits for it.
        Returns when the next planned restart is due (time.monotonic()), if any."""
        now = time.monotonic()
        with self.sessions() as session:
            wanted = self._wanting_watchers(session)
            for name in [n for n in self.watches if n not in wanted]:
                self._retire(name, "parked or no longer asks for idle")
            for mailbox in wanted.values():
                watch = self._current_watch(mailbox)
                if watch is None:
                    self._start(mailbox, _Watch(_fingerprint(mailbox), threading.Event()), now)
                else:
                    self._tend(mailbox, watch, now)
        planned = [w.retry_at for w in self.watches.values() if w.retry_at is not None]
        return min(planned) if planned else None

    def _wanting_watchers(self, session: Session) -> dict[str, Mailbox]:
        """The mailboxes that ask for a push watcher and are not parked, by name."""
        return {
            m.name: m
            for m in session.scalars(select(Mailbox))
            if m.state != "parked" and self._pushes(m)
        }

    def _current_watch(self, mailbox: Mailbox) -> _Watch | None:
        """The mailbox's watch, unless there is none or it was started with other settings
        or credentials (it is then retired)."""
        watch = self.watches.get(mailbox.name)
        if watch is not None and watch.fingerprint != _fingerprint(mailbox):
            self._retire(mailbox.name, "its settings or credentials changed")
            return None
        return watch

    def _tend(self, mailbox: Mailbox, watch: _Watch, now: float) -> None:
        """Start a watcher again once its backoff is over; notice one that died; forget
        the failures of one that has stayed up WATCH_STABLE."""
        if watch.retry_at is not None:
            if now >= watch.retry_at:
                self._start(mailbox, watch, now)
        elif watch.watcher is not None and not _alive(watch.watcher):
            self._schedule(mailbox.name, watch, now, "stopped")
            self.on_push(mailbox.name)  # a sync now finds out why (a refused login parks it)
        elif watch.failures and now - watch.started >= WATCH_STABLE:
            watch.failures = 0

    def _start(self, mailbox: Mailbox, watch: _Watch, now: float) -> None:
        self.watches[mailbox.name] = watch
        watch.stop = threading.Event()  # a fresh one: the old thread may still be leaving
        watch.started, watch.retry_at, watch.watcher = now, None, None
        try:
            spec = mailbox_spec(mailbox, self.settings)
            watch.watcher = self.factory(spec, self.on_push, watch.stop)
        except Exception as exc:  # the mailbox still gets its polls
            self._schedule(mailbox.name, watch, now, f"cannot start: {exc}")
            return
        if watch.watcher is not None:
            log.info("mailbox %r: watching for new mail", mailbox.name)

    def _schedule(self, name: str, watch: _Watch, now: float, what: str) -> None:
        watch.failures += 1
        delay = min(2.0 ** (watch.failures - 1), WATCH_BACKOFF_MAX)
        watch.retry_at = now + delay
        watch.watcher = None
        log.warning(
            "mailbox %r: the new-mail watcher %s; started again in %.0f s (it is still "
            "polled meanwhile)",
            name,
            what,
            delay,
        )

    def _retire(self, name: str, why: str) -> None:
        watch = self.watches.pop(name)
        watch.stop.set()
        if watch.watcher is not None:
            log.info("mailbox %r: new-mail watcher stopped: %s", name, why)

    def stop_all(self, grace: float = 3.0) -> None:
        """Stop every watcher; wait for them ``grace`` seconds in all (they are daemon
        threads: one stuck in a connect does not hold the exit)."""
        for watch in self.watches.values():
            watch.stop.set()
        deadline = time.monotonic() + grace
        for watch in self.watches.values():
            join = getattr(watch.watcher, "join", None)
            if callable(join):
                join(timeout=max(0.0, deadline - time.monotonic()))
