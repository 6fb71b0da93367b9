"""``syncd run``: the scheduler loop, its pool of sync workers, push watchers, signals, and
systemd notify/watchdog.

The loop (the main thread) is the one place that decides what is due: every mailbox is
polled at its interval (``poll_interval`` in its settings, else ``sync.poll_interval``); a
failing one backs off exponentially up to ``sync.max_backoff``; a parked one waits for an
admin (``syncd mailbox reauth NAME`` or ``resume NAME``). Due mailboxes wait in one queue
and run on a pool of ``sync.workers`` threads (0: four a CPU this process may use, at most
32: a pass mostly waits on its provider and the database, and 32 bounds the connections and
memory), one pass of a mailbox at a time (its lease, ``syncd.crm.leases``, also keeps other
processes off it: a pass that finds it held is left to that holder and counts as no
failure). Every pass has ``sync.pass_budget`` seconds; one that used it up (a long first
import) yields at a batch boundary and queues again behind the mailboxes already waiting,
so the others are polled on time. A mailbox with ``idle`` is also watched (IMAP IDLE): its
watcher is started when the mailbox is not parked, started anew when its settings or
credentials change (a reauth), stopped while it is parked, and started again with backoff
when it dies. A push jumps the queue; when every worker is busy, the longest-running pass
is asked to make room at its next batch boundary (it goes on at its next turn).
SIGTERM or SIGINT lets every pass commit the batch in hand, then the daemon exits 0. Under
systemd (``Type=notify``) it sends READY=1 once the database is checked, WATCHDOG=1 while
the loop and every pass make progress, STATUS= lines (how many passes run), and
STOPPING=1, never waiting on the socket.
"""

from __future__ import annotations

import logging
import queue
import signal
import threading
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from types import FrameType

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from syncd import limits, metrics
from syncd.config import Settings
from syncd.connectors.base import ConnectorError, WatcherFactory
from syncd.connectors.parsepool import usable_cpus
from syncd.connectors.registry import open_watcher
from syncd.crm.models import Mailbox
from syncd.decide import describe
from syncd.notify import Notifier, watchdog_interval
from syncd.report import SyncReport
from syncd.sync import SyncJob, typed_settings
from syncd.watchers import Watchers

__all__ = ["Daemon", "Notifier", "pool_size"]

log = logging.getLogger("syncd.daemon")

CHECK_EVERY = 5.0  # seconds: how soon a reauth, a resume or a new mailbox is noticed
AUDIT_CHECK = 600.0  # seconds between two looks for gap audits that are due
REMATCH_CHECK = 10.0  # seconds between two looks for re-matches a CRM load queued


def pool_size(workers: int) -> int:
    """``sync.workers``, or for 0 four threads a CPU this process may use, at most 32."""
    return workers or min(32, 4 * usable_cpus())


@dataclass
class _Pass:
    """A pass in flight on a worker."""

    name: str
    pushed: bool  # started for a push (it is never asked to make room for another)
    started: float = field(default_factory=time.monotonic)
    # its last batch, for the watchdog: None before its first (connecting, waiting for one
    # of its server's connections, logging in: the connector's own timeouts bound that)
    beat: float | None = None
    make_room: threading.Event = field(default_factory=threading.Event)  # for a push
    again: bool = False  # a push came while it ran: it runs again first thing


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
        self.wake = threading.Event()  # set by signals, push watchers and ended passes
        self.pushed: set[str] = set()
        self.lock = threading.Lock()  # pushed and running: the workers and watchers share them
        self.queue: deque[str] = deque()  # due mailboxes waiting for a worker, in turn
        self.waiting: set[str] = set()  # what the queue holds
        self.urgent: set[str] = set()  # the pushed ones among them
        self.running: dict[str, _Pass] = {}
        self.ended: queue.SimpleQueue[tuple[_Pass, SyncReport | None]] = queue.SimpleQueue()
        self.held: dict[str, float] = {}  # not queued before then (monotonic): busy, errors
        self.workers = 1  # set by run() from sync.workers
        self.shown = ""  # the last STATUS= sent
        self.watchers = Watchers(sessions, settings, watcher_factory, self.on_push)
        self.notifier = notifier if notifier is not None else Notifier()
        self.tick = watchdog_interval()
        self.progress = time.monotonic()  # the last heartbeat of the loop or a batch
        self.audit_at = 0.0  # when the due gap audits are looked for next (monotonic)
        self.auditing: Future[object] | None = None
        self.rematch_at = 0.0  # when the queued re-matches are looked for next (monotonic)
        self.rematching: Future[object] | None = None

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

    # --- the loop -----------------------------------------------------------------------

    def notify(self, message: str) -> None:
        self.notifier.notify(message)

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
        with self.sessions() as session:
            for m in session.scalars(select(Mailbox).order_by(Mailbox.name)):
                if m.state == "parked":
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

    def _alive(self) -> bool:
        """Whether the loop and every pass in flight made progress within two ticks: a batch
        or the loop's heartbeat, or an item read (each item's parse is bounded by
        ``limits.parse_seconds``, a batch is not: a batch of slow but legal items must not
        get a working daemon killed)."""
        now, parsed = time.monotonic(), limits.last_progress()
        with self.lock:
            beats = [self.progress, *(p.beat for p in self.running.values() if p.beat)]
        return all(now - max(beat, parsed) < 2 * self.tick for beat in beats)

    def _feed_watchdog(self) -> None:
        """WATCHDOG=1 every tick while syncd makes progress (:meth:`_alive`). A daemon stuck
        for real (a loop or a pass with no heartbeat and no item read for two ticks) is left
        to the watchdog."""
        while True:
            if self._alive():
                self.notify("WATCHDOG=1")
            if self.stopping.wait(self.tick):
                return

    def run(self) -> int:
        previous = {
            sig: signal.signal(sig, self._signal) for sig in (signal.SIGTERM, signal.SIGINT)
        }
        self.workers = pool_size(self.settings.sync.workers)
        self.notify("READY=1")
        feeder = threading.Thread(target=self._feed_watchdog, name="watchdog", daemon=True)
        feeder.start()
        pool = ThreadPoolExecutor(self.workers, thread_name_prefix="sync")
        try:
            self._loop(pool)
        finally:
            self.stopping.set()
            self.notify("STOPPING=1")
            with self.lock:
                left = len(self.running)
            if left:
                log.info("waiting for %d passes to commit the batch in hand", left)
                self.notify(f"STATUS=stopping: {left} passes commit the batch in hand")
            pool.shutdown(wait=True)
            feeder.join(timeout=1)
            self.watchers.stop_all()
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        log.info("syncd daemon stopped")
        self.notifier.close()
        return 0

    def _loop(self, pool: ThreadPoolExecutor) -> None:
        log.info("syncd daemon started: %d workers", self.workers)
        check_at = 0.0  # when the due mailboxes and the watchers are looked at (monotonic)
        while not self.stopping.is_set():
            self._collect()
            if time.monotonic() >= check_at:
                check_at = self._check()
            self._take_pushes()
            self._dispatch(pool)
            self._audit(pool)
            self._rematch(pool)
            self._heartbeat()
            self._status()
            self.wake.wait(max(0.05, min(check_at - time.monotonic(), self.tick)))
            self.wake.clear()

    def _audit(self, pool: ThreadPoolExecutor) -> None:
        """Every AUDIT_CHECK, the gap audits that are due (``audit.interval_hours`` after
        a mailbox's last one; ``syncd.audit``) run on the pool, one batch at a time."""
        clock = time.monotonic()
        if clock < self.audit_at or not self.settings.audit.interval_hours:
            return
        if self.auditing is not None and not self.auditing.done():
            return
        self.audit_at = clock + AUDIT_CHECK
        self.auditing = pool.submit(self._run_audits)

    def _rematch(self, pool: ThreadPoolExecutor) -> None:
        """Every REMATCH_CHECK, the activities that a ``syncd crm load`` changed (queued by
        the load) are re-matched on the pool (``syncd.crm.rematch``), one at a time."""
        clock = time.monotonic()
        if clock < self.rematch_at:
            return
        if self.rematching is not None and not self.rematching.done():
            return
        self.rematch_at = clock + REMATCH_CHECK
        self.rematching = pool.submit(self._run_rematch)

    def _run_rematch(self) -> None:
        from syncd.crm.rematch import run_queued

        try:
            done = run_queued(self.sessions, self.settings, self.stopping.is_set)
        except Exception as exc:  # never stops the daemon; the queue stays for the next look
            log.warning("re-matching after a CRM load failed (tried again): %s", describe(exc))
            return
        if done is not None:
            log.info(
                "re-matched %d activities after a CRM load: %d links of %d activities changed",
                done.examined,
                len(done.changes),
                done.activities_changed,
            )

    def _run_audits(self) -> None:
        from syncd.audit import run_due

        try:
            # it logs each gap; it stops between two mailboxes when the daemon stops
            run_due(self.sessions, self.settings, datetime.now(UTC), self.stopping.is_set)
        except Exception as exc:  # an audit never stops the daemon; the next one tries again
            log.warning("gap audit failed: %s", exc)

    def _check(self) -> float:
        """Queue the mailboxes that are due and tend the watchers; returns when to look
        again (monotonic): at the next one due, within CHECK_EVERY (a reauth, a resume or
        a new mailbox is noticed that soon)."""
        now, wait = datetime.now(UTC), CHECK_EVERY
        try:
            restart_at = self.watchers.refresh()
            ready, next_at = self.due(now)
        except Exception as exc:  # the database is away: say so and try again
            log.error("cannot read mailboxes from the CRM database: %s", exc)
            return time.monotonic() + min(self.tick, CHECK_EVERY)
        clock = time.monotonic()
        for name in ready:
            if name not in self.running and self.held.get(name, 0.0) <= clock:
                self._enqueue(name)
        wait = min(wait, (next_at - datetime.now(UTC)).total_seconds())
        if restart_at is not None:
            wait = min(wait, restart_at - clock)
        return clock + max(wait, 0.05)

    def _enqueue(self, name: str, first: bool = False) -> None:
        if name in self.waiting:
            if not first:
                return
            self.queue.remove(name)
        self.waiting.add(name)
        self.queue.appendleft(name) if first else self.queue.append(name)

    def _take_pushes(self) -> None:
        """Pushed mailboxes (not parked) go first; one running now goes again right after."""
        with self.lock:
            pushed, self.pushed = self.pushed, set()
            for name in [n for n in pushed if n in self.running]:
                self.running[name].again = True
                pushed.discard(name)
        if not pushed:
            return
        try:
            with self.sessions() as session:
                found = session.scalars(
                    select(Mailbox.name).where(Mailbox.name.in_(pushed), Mailbox.state != "parked")
                )
                pushed = set(found)
        except Exception as exc:  # the database is away: the loop says so at its next check
            log.debug("cannot read pushed mailboxes: %s", exc)
        for name in sorted(pushed):
            self.held.pop(name, None)
            self.urgent.add(name)
            self._enqueue(name, first=True)

    def _dispatch(self, pool: ThreadPoolExecutor) -> None:
        """Start waiting mailboxes on free workers; when pushes wait for a worker, ask as
        many of the longest-running passes (not pushed ones) to make room."""
        with self.lock:
            while self.queue and len(self.running) < self.workers:
                name = self.queue.popleft()
                self.waiting.discard(name)
                job = self.running[name] = _Pass(name, pushed=name in self.urgent)
                self.urgent.discard(name)
                pool.submit(self._pass, job)
            asked = [p for p in self.running.values() if p.make_room.is_set()]
            others = sorted(
                (p for p in self.running.values() if not p.pushed and not p.make_room.is_set()),
                key=lambda p: p.started,
            )
        for job in others[: len(self.urgent) - len(asked)]:
            log.info("mailbox %r: making room for new mail pushed to another mailbox", job.name)
            job.make_room.set()

    def _collect(self) -> None:
        """Passes that ended: one that yielded its turn (or made room) queues again behind
        those waiting; a mailbox that is busy elsewhere, or whose pass raised, waits."""
        while True:
            try:
                job, report = self.ended.get_nowait()
            except queue.Empty:
                return
            with self.lock:
                del self.running[job.name]
            if self.stopping.is_set():
                continue
            if report is None:
                self.held[job.name] = time.monotonic() + CHECK_EVERY
            elif report.busy:
                self.held[job.name] = time.monotonic() + self.settings.sync.poll_interval
            elif report.yielded or (report.stopped and job.make_room.is_set()):
                self._enqueue(job.name)
            if job.again:  # pushed while it ran: again, unless that pass parked it
                with self.lock:
                    self.pushed.add(job.name)

    def _status(self) -> None:
        with self.lock:
            names = sorted(self.running)
        if not names and not self.queue:
            status = "STATUS=idle"
        else:
            shown = ", ".join(names[:5]) + (", ..." if len(names) > 5 else "")
            status = (
                f"STATUS={len(names)} of {self.workers} workers syncing ({shown}), "
                f"{len(self.queue)} waiting"
            )
        if status != self.shown:
            self.shown = status
            self.notify(status)

    def _heartbeat(self) -> None:
        self.progress = time.monotonic()

    def _beat(self, job: _Pass) -> None:
        job.beat = time.monotonic()  # one float: safe from any worker thread

    def _pass(self, job: _Pass) -> None:
        """One pass, on a worker thread; the loop hears of its end through ``ended``."""
        started, report = time.monotonic(), None
        try:
            report = SyncJob(
                self.sessions,
                self.settings,
                job.name,
                stop=lambda: self.stopping.is_set() or job.make_room.is_set(),
                heartbeat=lambda: self._beat(job),
                budget=self.settings.sync.pass_budget,
            ).run()
            self._log(report)
            metrics.observe_pass(report, time.monotonic() - started)
        except Exception as exc:
            log.error("mailbox %r: %s", job.name, exc)
        finally:
            self.ended.put((job, report))
            self.wake.set()

    def _log(self, report: SyncReport) -> None:
        if report.busy:
            return  # the pass said who holds the mailbox
        log.info(
            "mailbox %r: %s%s, %d new activities, %d sightings, %d quarantined, "
            "%d tasks changed, %d written",
            report.mailbox,
            report.state,
            " (its turn is over: more next turn)" if report.yielded or report.stopped else "",
            report.new_activities,
            report.new_sightings,
            report.quarantined,
            report.tasks_changed,
            report.tasks_written,
        )
