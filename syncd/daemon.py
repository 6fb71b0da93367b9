"""``syncd run``: the scheduler loop, signals, and systemd notify/watchdog.

Every mailbox is polled at its interval (``poll_interval`` in its settings, else
``sync.poll_interval``); a failing one backs off exponentially up to ``sync.max_backoff``;
a parked one waits for an admin (``syncd mailbox resume NAME``). SIGTERM or SIGINT lets the
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

import sdnotify
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from syncd.config import Settings
from syncd.crm.models import Mailbox
from syncd.sync import SyncJob

log = logging.getLogger("syncd.daemon")


def _watchdog_interval() -> float:
    usec = os.environ.get("WATCHDOG_USEC")
    return max(int(usec) / 2e6, 0.5) if usec and usec.isdigit() else 30.0


class Daemon:
    def __init__(self, sessions: sessionmaker[Session], settings: Settings) -> None:
        self.sessions = sessions
        self.settings = settings
        self.stopping = threading.Event()
        self.notifier = sdnotify.SystemdNotifier()
        self.tick = _watchdog_interval()

    def _signal(self, signum: int, _frame: FrameType | None) -> None:
        log.info(
            "received %s: finishing the batch in hand, then stopping", signal.Signals(signum).name
        )
        self.stopping.set()

    def notify(self, message: str) -> None:
        self.notifier.notify(message)

    def due(self, now: datetime) -> tuple[list[str], datetime]:
        """The mailboxes to sync now, and when the next one falls due."""
        ready: list[str] = []
        next_at = now + timedelta(seconds=self.settings.sync.poll_interval)
        with self.sessions() as session:
            for m in session.scalars(select(Mailbox).order_by(Mailbox.name)):
                if m.state == "parked":
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
            self.stopping.wait(max(0.05, min(wait, self.tick)))
        self.notify("STOPPING=1")
        log.info("syncd daemon stopped")
        return 0
