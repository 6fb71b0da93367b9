"""``syncd run``: the scheduler loop, signals, push watchers, and systemd notify/watchdog.

Every mailbox is polled at its interval (``poll_interval`` in its settings, else
``sync.poll_interval``); a failing one backs off exponentially up to ``sync.max_backoff``;
a parked one waits for an admin (``syncd mailbox reauth NAME`` or ``resume NAME``). A mailbox
with ``idle`` is also watched (IMAP IDLE) and synced as soon as new mail arrives: its watcher
is started when the mailbox is not parked, started anew when its settings or credentials
change (a reauth), stopped while it is parked, and started again with backoff when it dies.
SIGTERM or SIGINT lets the batch in hand commit, then the daemon exits 0. Under systemd
(``Type=notify``) it sends READY=1 once the database is checked, WATCHDOG=1 after every
batch and every idle tick, STATUS= lines, and STOPPING=1, never waiting on the socket.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import signal
import socket
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from types import FrameType

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from syncd import limits
from syncd.config import Settings
from syncd.connectors.base import ConnectorError, Watcher, WatcherFactory
from syncd.connectors.registry import open_watcher
from syncd.crm.models import Mailbox
from syncd.sync import SyncJob, mailbox_spec, typed_settings

log = logging.getLogger("syncd.daemon")

CHECK_EVERY = 5.0  # seconds: how soon a reauth, a resume or a new mailbox is noticed
WATCH_BACKOFF_MAX = 300.0  # seconds between two starts of a watcher that keeps dying
WATCH_STABLE = 60.0  # a watcher alive this long has its backoff forgotten


def _watchdog_interval() -> float:
    usec = os.environ.get("WATCHDOG_USEC")
    return max(int(usec) / 2e6, 0.5) if usec and usec.isdigit() else 30.0


class Notifier:
    """sd_notify(3) that never blocks: one non-blocking datagram per message to
    ``$NOTIFY_SOCKET`` (a path, or ``@name`` in the abstract namespace). A message that
    does not fit (nobody drains the socket) is dropped: a stalled supervisor must never
    stall syncd, nor keep SIGTERM from stopping it. Without NOTIFY_SOCKET it does nothing.
    """

    def __init__(self, address: str | None = None) -> None:
        address = os.environ.get("NOTIFY_SOCKET", "") if address is None else address
        self.address: str | None = None
        self.sock: socket.socket | None = None
        self.dropped = 0
        if not address:
            return
        if address.startswith("@"):
            address = "\0" + address[1:]
        elif not address.startswith("/"):
            log.warning(
                "NOTIFY_SOCKET %r is neither a socket path nor an abstract name (@name): "
                "systemd will not hear from syncd; check the unit's Type= and NotifyAccess=",
                address,
            )
            return
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        self.sock.setblocking(False)
        self.address = address

    def notify(self, message: str) -> bool:
        """Send ``message``; False when it was dropped."""
        if self.sock is None or self.address is None:
            return False
        try:
            self.sock.sendto(message.encode(), socket.MSG_DONTWAIT, self.address)
        except BlockingIOError:
            self.dropped += 1
            if self.dropped == 1:
                log.warning(
                    "the systemd notify socket is full (nobody reads it): dropping %r and "
                    "any later message that does not fit",
                    message,
                )
            return False
        except OSError as exc:  # the supervisor went away: syncd runs on
            log.debug("cannot notify systemd (%s): %s", message, exc)
            return False
        return True

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None


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


class Daemon:
    def __init__(
        self,
        sessions: sessionmaker[Session],
        settings: Settings,
        *,
        watcher_factory: WatcherFactory = open_watcher,
        notifier: Notifier | None = None,
    ) -> None:
        self.sessions = sessions
        self.settings = settings
        self.stopping = threading.Event()
        self.wake = threading.Event()  # set by signals and by push watchers (IMAP IDLE)
        self.pushed: set[str] = set()
        self.lock = threading.Lock()
        self.watches: dict[str, _Watch] = {}
        self.watcher_factory = watcher_factory
        self.notifier = notifier if notifier is not None else Notifier()
        self.tick = _watchdog_interval()
        self.progress = time.monotonic()  # the last heartbeat of the loop or a batch

    def _signal(self, signum: int, _frame: FrameType | None) -> None:
        log.info(
            "received %s: finishing the batch in hand, then stopping", signal.Signals(signum).name
        )
        self.stopping.set()
        self.wake.set()

    def on_push(self, name: str) -> None:
        """A watcher saw new mail: sync that mailbox now, whatever its interval."""
        with self.lock:
            self.pushed.add(name)
        self.wake.set()

    # --- push watchers ------------------------------------------------------------------

    def refresh_watchers(self) -> float | None:
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
            watch.watcher = self.watcher_factory(spec, self.on_push, watch.stop)
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

    def stop_watchers(self, grace: float = 3.0) -> None:
        """Stop every watcher; wait for them ``grace`` seconds in all (they are daemon
        threads: one stuck in a connect does not hold the exit)."""
        for watch in self.watches.values():
            watch.stop.set()
        deadline = time.monotonic() + grace
        for watch in self.watches.values():
            join = getattr(watch.watcher, "join", None)
            if callable(join):
                join(timeout=max(0.0, deadline - time.monotonic()))

    # --- the loop -----------------------------------------------------------------------

    def notify(self, message: str) -> None:
        self.notifier.notify(message)

    def _pushes(self, mailbox: Mailbox) -> bool:
        """Whether the mailbox asks for a push watcher (``idle``): its kind's push."""
        try:
            return typed_settings(mailbox, self.settings).idle
        except ConnectorError:
            return False  # its sync names the problem

    def _interval(self, mailbox: Mailbox) -> int:
        """The mailbox's own poll interval, else the config's (also when its stored
        settings are not valid: its sync names the problem)."""
        try:
            own = typed_settings(mailbox, self.settings).poll_interval
        except ConnectorError:
            own = None
        return own or self.settings.sync.poll_interval

    def due(self, now: datetime) -> tuple[list[str], datetime]:
        """The mailboxes to sync now, and when the next one falls due."""
        ready: list[str] = []
        next_at = now + timedelta(seconds=self.settings.sync.poll_interval)
        with self.lock:
            pushed, self.pushed = self.pushed, set()
        with self.sessions() as session:
            for m in session.scalars(select(Mailbox).order_by(Mailbox.name)):
                if m.state == "parked":
                    continue
                if m.name in pushed:
                    ready.append(m.name)
                    continue
                interval = self._interval(m)
                if m.state == "failing" and m.failures:
                    interval = min(interval * 2 ** (m.failures - 1), self.settings.sync.max_backoff)
                at = m.last_attempt + timedelta(seconds=interval) if m.last_attempt else now
                if at <= now:
                    ready.append(m.name)
                else:
                    next_at = min(next_at, at)
        return ready, next_at

    def _feed_watchdog(self) -> None:
        """WATCHDOG=1 while syncd makes progress, also inside one long batch (each item's
        parse is bounded by ``limits.parse_seconds``, a batch is not): a batch of slow but
        legal items must not get a working daemon killed. A daemon stuck for real (no
        heartbeat and no item read for two ticks) is left to the watchdog."""
        while not self.stopping.wait(self.tick):
            latest = max(self.progress, limits.last_progress())
            if time.monotonic() - latest < 2 * self.tick:
                self.notify("WATCHDOG=1")

    def run(self) -> int:
        previous = {
            sig: signal.signal(sig, self._signal) for sig in (signal.SIGTERM, signal.SIGINT)
        }
        feeder = threading.Thread(target=self._feed_watchdog, name="watchdog", daemon=True)
        feeder.start()
        try:
            self._loop()
        finally:
            self.stopping.set()
            feeder.join(timeout=1)
            self.stop_watchers()
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        self.notify("STOPPING=1")
        log.info("syncd daemon stopped")
        self.notifier.close()
        return 0

    def _loop(self) -> None:
        self.notify("READY=1")
        self.notify("STATUS=polling mailboxes")
        log.info("syncd daemon started")
        while not self.stopping.is_set():
            now = datetime.now(UTC)
            restart_at: float | None = None
            try:
                restart_at = self.refresh_watchers()
                ready, next_at = self.due(now)
            except Exception as exc:  # the database is away: say so and try again
                log.error("cannot read mailboxes from the CRM database: %s", exc)
                ready, next_at = [], now + timedelta(seconds=self.tick)
            for name in ready:
                if self.stopping.is_set():
                    break
                self._sync(name)
            self._heartbeat()
            self.notify("STATUS=idle")
            wait = min((next_at - datetime.now(UTC)).total_seconds(), self.tick, CHECK_EVERY)
            if restart_at is not None:
                wait = min(wait, restart_at - time.monotonic())
            self.wake.wait(max(0.05, wait))
            self.wake.clear()

    def _heartbeat(self) -> None:
        self.progress = time.monotonic()
        self.notify("WATCHDOG=1")

    def _sync(self, name: str) -> None:
        self.notify(f"STATUS=syncing {name}")
        try:
            report = SyncJob(
                self.sessions,
                self.settings,
                name,
                stop=self.stopping.is_set,
                heartbeat=self._heartbeat,
            ).run()
        except Exception as exc:
            log.error("mailbox %r: %s", name, exc)
            return
        log.info(
            "mailbox %r: %s, %d new activities, %d sightings, %d quarantined, "
            "%d tasks changed, %d written",
            name,
            report.state,
            report.new_activities,
            report.new_sightings,
            report.quarantined,
            report.tasks_changed,
            report.tasks_written,
        )
