"""``syncd run``: the scheduler loop, signals, and systemd notify/watchdog.

Every mailbox is polled at its interval (``poll_interval`` in its settings, else
``sync.poll_interval``); a failing one backs off exponentially up to ``sync.max_backoff``;
a parked one waits for an admin (``syncd mailbox resume NAME``). A mailbox with ``idle``
is also watched (IMAP IDLE) and synced as soon as new mail arrives. SIGTERM or SIGINT lets the
batch in hand commit, then the daemon exits 0. Under systemd (``Type=notify``) it sends
READY=1 once the database is checked, WATCHDOG=1 after every batch and every idle tick,
STATUS= lines, and STOPPING=1.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from datetime import UTC, datetime, timedelta
from types import FrameType
from typing import Any

import sdnotify
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from syncd.config import Settings
from syncd.connectors.base import open_watcher
from syncd.crm.models import Mailbox
from syncd.sync import SyncJob, mailbox_spec

log = logging.getLogger("syncd.daemon")


def _watchdog_interval() -> float:
    usec = os.environ.get("WATCHDOG_USEC")
    return max(int(usec) / 2e6, 0.5) if usec and usec.isdigit() else 30.0


class Daemon:
    def __init__(self, sessions: sessionmaker[Session], settings: Settings) -> None:
        self.sessions = sessions
        self.settings = settings
        self.stopping = threading.Event()
        self.wake = threading.Event()  # set by signals and by push watchers (IMAP IDLE)
        self.pushed: set[str] = set()
        self.lock = threading.Lock()
        self.watchers: dict[str, Any] = {}
        self.notifier = sdnotify.SystemdNotifier()
        self.tick = _watchdog_interval()

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

    def start_watchers(self) -> None:
        """One push watcher per mailbox that asks for one (``idle = true``), started once."""
        with self.sessions() as session:
            for m in session.scalars(select(Mailbox)):
                if m.name in self.watchers or m.state == "parked" or not m.settings.get("idle"):
                    continue
                try:
                    self.watchers[m.name] = open_watcher(
                        mailbox_spec(m, self.settings), self.on_push, self.stopping
                    )
                except Exception as exc:  # the mailbox still gets its polls
                    log.warning("mailbox %r: cannot watch for new mail: %s", m.name, exc)
                    self.watchers[m.name] = None

    def notify(self, message: str) -> None:
        self.notifier.notify(message)

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
                interval = int(m.settings.get("poll_interval", self.settings.sync.poll_interval))
                if m.state == "failing" and m.failures:
                    interval = min(interval * 2 ** (m.failures - 1), self.settings.sync.max_backoff)
                at = m.last_attempt + timedelta(seconds=interval) if m.last_attempt else now
                if at <= now:
                    ready.append(m.name)
                else:
                    next_at = min(next_at, at)
        return ready, next_at

    def run(self) -> int:
        signal.signal(signal.SIGTERM, self._signal)
        signal.signal(signal.SIGINT, self._signal)
        self.notify("READY=1")
        self.notify("STATUS=polling mailboxes")
        log.info("syncd daemon started")
        while not self.stopping.is_set():
            now = datetime.now(UTC)
            try:
                self.start_watchers()
                ready, next_at = self.due(now)
            except Exception as exc:  # the database is away: say so and try again
                log.error("cannot read mailboxes from the CRM database: %s", exc)
                ready, next_at = [], now + timedelta(seconds=self.tick)
            for name in ready:
                if self.stopping.is_set():
                    break
                self.notify(f"STATUS=syncing {name}")
                try:
                    report = SyncJob(
                        self.sessions,
                        self.settings,
                        name,
                        stop=self.stopping.is_set,
                        heartbeat=lambda: self.notify("WATCHDOG=1"),
                    ).run()
                except Exception as exc:
                    log.error("mailbox %r: %s", name, exc)
                    continue
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
            self.notify("WATCHDOG=1")
            self.notify("STATUS=idle")
            wait = (next_at - datetime.now(UTC)).total_seconds()
            self.wake.wait(max(0.05, min(wait, self.tick)))
            self.wake.clear()
        self.notify("STOPPING=1")
        log.info("syncd daemon stopped")
        return 0
