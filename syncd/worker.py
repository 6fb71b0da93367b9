"""Scale-out on PostgreSQL: ``syncd worker`` processes on any number of machines share the
passes of every mailbox through a Procrastinate job queue kept in the CRM database.

This module owns the queue: its tables (:func:`upgrade_queue`, run by ``syncd db
upgrade``), its three tasks and the worker that runs them (:func:`run_worker`).

- ``syncd.pass``: one pass of one mailbox (:class:`syncd.sync.SyncJob` with the
  ``sync.pass_budget``). Deferred with the mailbox as its ``queueing_lock`` (at most one
  pass of a mailbox waits in the queue) and its ``lock`` (at most one runs, on one worker).
  The mailbox's lease (``syncd.crm.leases``) is a second guard: a pass that finds the
  mailbox held elsewhere does nothing. A pass that yielded (its budget ran out) or was
  stopped (SIGTERM) is deferred again at once, for whichever worker is free.
- ``syncd.schedule``: a periodic task (every ``SCHEDULE_EVERY`` seconds, deferred once per
  tick whatever the number of workers) that defers a pass of each mailbox that is due
  (the rule of ``syncd run``: ``Daemon.due``), leaving out those whose lease is held, and
  first puts back in the queue the passes of workers that stopped sending heartbeats
  (killed, or their machine lost): another worker picks them up; and defers
  ``syncd.rematch`` when ``syncd crm load`` queued activities to re-match.
- ``syncd.rematch``: re-matches what a CRM load changed (``syncd.crm.rematch``; the
  daemon's job under ``syncd run``), one at a time.

SIGTERM or SIGINT: the passes in hand finish their batch, the worker exits 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from threading import Event

from procrastinate import App, JobContext, PsycopgConnector
from procrastinate.exceptions import AlreadyEnqueued, ConnectorException
from procrastinate.schema import SchemaManager
from sqlalchemy import Connection, select, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from syncd import metrics
from syncd.config import Settings
from syncd.connectors.base import ConnectorError
from syncd.connectors.transport import mask_urls
from syncd.crm.database import DatabaseError, describe_error, make_engine, safe_url
from syncd.crm.leases import new_owner
from syncd.crm.models import Mailbox
from syncd.crm.rematch import pending, run_queued
from syncd.daemon import Daemon, Notifier
from syncd.decide import describe
from syncd.notify import watchdog_interval
from syncd.report import SyncReport
from syncd.sync import SyncJob

log = logging.getLogger("syncd.worker")

QUEUE = "syncd"
PASS_TASK = "syncd.pass"
SCHEDULE_TASK = "syncd.schedule"
REMATCH_TASK = "syncd.rematch"
SCHEDULE_EVERY = 5  # seconds between two looks at what is due
STALLED_AFTER = 30.0  # seconds without a heartbeat after which a worker is taken for dead
_UPGRADE_LOCK = 0x5359_4E43_5100  # pg_advisory_xact_lock key: one queue upgrade at a time
_CONTEXT_KEY = "syncd"

SQLITE_REFUSED = (
    "syncd worker needs PostgreSQL (the job queue lives there), and the database is "
    "{url}; on one machine run 'syncd run' instead, or set [database] url to "
    "postgresql+psycopg://USER@HOST/DB, run 'syncd db upgrade', then start the workers"
)


class QueueError(Exception):
    """The job queue cannot be used as it is; the message names the fix."""


def is_postgresql(url: str) -> bool:
    return make_url(url).get_backend_name() == "postgresql"


def _conninfo(url: str) -> str:
    """The libpq connection string of a SQLAlchemy URL (with its password: never logged)."""
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


def _queue_present(conn: Connection) -> bool:
    return conn.scalar(text("SELECT to_regclass('procrastinate_jobs')")) is not None


def upgrade_queue(url: str) -> bool:
    """Create the job queue's tables (Procrastinate's schema) in the CRM database when they
    are missing; True when it created them. Nothing on SQLite (no queue there), nothing
    when they exist: run it as often as you like, also from several machines at once."""
    if not is_postgresql(url):
        return False
    engine = make_engine(url)
    try:
        with engine.begin() as conn:
            conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _UPGRADE_LOCK})
            if _queue_present(conn):
                return False
            conn.exec_driver_sql(SchemaManager.get_schema().replace("%", "%%"))
    except SQLAlchemyError as exc:
        raise DatabaseError(
            f"cannot create the job queue in {safe_url(url)}: {describe_error(exc, url)}"
        ) from None
    finally:
        engine.dispose()
    log.info("database %s: the job queue's tables were created", safe_url(url))
    return True


def refuse_sqlite(url: str) -> None:
    """QueueError naming the fix unless the database is PostgreSQL (the queue lives there)."""
    if not is_postgresql(url):
        raise QueueError(SQLITE_REFUSED.format(url=safe_url(url)))


def check_queue(url: str) -> None:
    """QueueError naming the fix unless the queue's tables exist."""
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            present = _queue_present(conn)
    except SQLAlchemyError as exc:
        raise DatabaseError(
            f"cannot read the job queue in {safe_url(url)}: {describe_error(exc, url)}"
        ) from None
    finally:
        engine.dispose()
    if not present:
        raise QueueError(
            f"the database {safe_url(url)} has no job queue yet; create it with "
            "'syncd db upgrade', then start the workers"
        )


def default_concurrency(settings: Settings) -> int:
    """Passes one worker runs at once: ``sync.workers``, else sized to the machine (passes
    mostly wait on servers and the database)."""
    return settings.sync.workers or min(8, 2 * (os.cpu_count() or 1))


@dataclass
class Runtime:
    """What the tasks of one worker process share (given to them in the job context)."""

    sessions: sessionmaker[Session]
    settings: Settings
    stalled_after: float = STALLED_AFTER
    stopping: Event = field(default_factory=Event)
    loop: asyncio.AbstractEventLoop | None = None  # the worker's, once it runs

    def rematch_waiting(self) -> bool:
        """Whether a CRM load queued activities to re-match."""
        with self.sessions() as session:
            return pending(session) > 0

    def due(self) -> list[str]:
        """The mailboxes due for a pass (the rule of ``syncd run``), less those whose lease
        is held: a pass is running (or its holder's lease has not run out yet)."""
        now = datetime.now(UTC)
        with self.sessions() as session:
            held = set(
                session.scalars(
                    select(Mailbox.name).where(
                        Mailbox.lease_owner.is_not(None), Mailbox.lease_until >= now
                    )
                )
            )
        ready, _next = Daemon(self.sessions, self.settings, notifier=Notifier("")).due(now)
        return [name for name in ready if name not in held]


def _runtime(context: JobContext) -> Runtime:
    found = context.additional_context[_CONTEXT_KEY]
    assert isinstance(found, Runtime)
    return found


async def defer_pass(app: App, mailbox: str) -> bool:
    """Queue a pass of ``mailbox``; False when one is already waiting."""
    try:
        await app.configure_task(
            PASS_TASK, queue=QUEUE, lock=f"mailbox:{mailbox}", queueing_lock=f"mailbox:{mailbox}"
        ).defer_async(mailbox=mailbox)
    except AlreadyEnqueued:
        return False
    return True


def describe_pass(report: SyncReport, owner: str, started: datetime, seconds: float) -> str:
    """The log line of one pass: the mailbox, what it did, who ran it, when."""
    r = report
    if r.busy:
        did = f"left to {r.busy}, which holds it"
    elif not r.ok:
        did = f"{r.state}: {mask_urls(r.error or '')}"
    else:
        did = (
            f"ok, {r.new_activities} new activities, {r.new_sightings} sightings, "
            f"{r.quarantined} quarantined, {r.tasks_changed} tasks changed, "
            f"{r.tasks_written} written"
        )
        if r.stopped:
            did += "; stopped (the worker is stopping), it goes on elsewhere"
        elif r.yielded:
            did += "; its pass budget ran out, it goes on at once"
    when = started.isoformat(timespec="milliseconds")
    return f"mailbox {r.mailbox!r}: {did} (pass by {owner} at {when}, {seconds:.2f} s)"


def sync_pass(context: JobContext, mailbox: str) -> str:
    """The ``syncd.pass`` task: one pass of one mailbox (runs in a worker thread)."""
    rt = _runtime(context)
    owner, started, clock = new_owner(), datetime.now(UTC), time.monotonic()
    try:
        report = SyncJob(
            rt.sessions,
            rt.settings,
            mailbox,
            budget=rt.settings.sync.pass_budget,
            owner=owner,
            stop=rt.stopping.is_set,
        ).run()
    except (ConnectorError, DatabaseError) as exc:  # removed meanwhile; the database away
        log.error("mailbox %r: pass not done: %s", mailbox, exc)
        return "not done"
    seconds = time.monotonic() - clock
    metrics.observe_pass(report, seconds)
    log.info("%s", describe_pass(report, owner, started, seconds))
    if (report.yielded or report.stopped) and not report.busy:
        assert rt.loop is not None
        asyncio.run_coroutine_threadsafe(defer_pass(context.app, mailbox), rt.loop).result()
    return report.state if not report.busy else "busy"


async def schedule(context: JobContext, timestamp: int) -> str:
    """The ``syncd.schedule`` task: requeue the passes of dead workers, then defer a pass
    of every mailbox that is due and has none waiting or running."""
    del timestamp  # the tick it was deferred for: every tick does the same
    rt = _runtime(context)
    manager = context.app.job_manager
    for job in await manager.get_stalled_jobs(
        queue=QUEUE, seconds_since_heartbeat=rt.stalled_after
    ):
        await manager.retry_job(job)
        what = job.task_kwargs.get("mailbox")
        if what is not None:
            log.warning(
                "mailbox %r: its worker stopped sending heartbeats (killed, or its machine "
                "lost); the pass goes to another worker",
                what,
            )
    queued = {
        job.task_kwargs.get("mailbox")
        for status in ("todo", "doing")
        for job in await manager.list_jobs_async(queue=QUEUE, task=PASS_TASK, status=status)
    }
    deferred = 0
    for name in await asyncio.to_thread(rt.due):
        if name not in queued:
            deferred += await defer_pass(context.app, name)
    if await asyncio.to_thread(rt.rematch_waiting):
        with contextlib.suppress(AlreadyEnqueued):  # at most one waits, and one runs
            await context.app.configure_task(
                REMATCH_TASK, queue=QUEUE, lock=REMATCH_TASK, queueing_lock=REMATCH_TASK
            ).defer_async()
    return f"{deferred} passes deferred"


def rematch_queued(context: JobContext) -> str:
    """The ``syncd.rematch`` task: re-match what ``syncd crm load`` queued (the daemon's
    job under ``syncd run``; ``syncd.crm.rematch``)."""
    rt = _runtime(context)
    try:
        done = run_queued(rt.sessions, rt.settings, rt.stopping.is_set)
    except SQLAlchemyError as exc:  # the queue stays: the next tick tries again
        log.warning("re-matching after a CRM load failed (tried again): %s", describe(exc))
        return "failed"
    if done is None:
        return "nothing queued"
    log.info(
        "re-matched %d activities after a CRM load: %d links of %d activities changed",
        done.examined,
        len(done.changes),
        done.activities_changed,
    )
    return f"{done.examined} activities re-matched"


def make_app(url: str, pool_size: int) -> App:
    """The Procrastinate app on the CRM database, with syncd's two tasks."""
    app = App(
        connector=PsycopgConnector(conninfo=_conninfo(url), min_size=1, max_size=pool_size),
        periodic_defaults={"max_delay": 60},
    )
    app.task(name=PASS_TASK, queue=QUEUE, pass_context=True)(sync_pass)
    app.task(name=REMATCH_TASK, queue=QUEUE, pass_context=True)(rematch_queued)
    scheduler = app.task(
        name=SCHEDULE_TASK, queue=QUEUE, pass_context=True, queueing_lock=SCHEDULE_TASK
    )(schedule)
    app.periodic(cron=f"* * * * * */{SCHEDULE_EVERY}", periodic_id="polls")(scheduler)
    return app


def run_worker(
    url: str,
    settings: Settings,
    sessions: sessionmaker[Session],
    *,
    concurrency: int,
    stalled_after: float = STALLED_AFTER,
) -> int:
    """Run one worker until SIGTERM or SIGINT; returns the exit code: 0 when it was asked
    to stop, 1 when the database went away under it. The caller has checked the queue
    (:func:`check_queue`)."""
    rt = Runtime(sessions, settings, stalled_after)
    if logging.getLogger().getEffectiveLevel() > logging.DEBUG:
        logging.getLogger("procrastinate").setLevel(logging.WARNING)  # one line a pass
    metrics.serve(settings, sessions)
    notifier = Notifier()
    try:
        code = asyncio.run(_work(make_app(url, concurrency + 4), rt, concurrency, notifier))
    except ConnectorException as exc:
        log.error("the job queue in %s cannot be reached: %s", safe_url(url), exc)
        code = 1
    finally:
        notifier.notify("STOPPING=1")
        notifier.close()
    log.info("syncd worker stopped")
    return code


async def _feed_watchdog(notifier: Notifier) -> None:
    """WATCHDOG=1 while the worker's event loop answers (it runs the heartbeats)."""
    while True:
        notifier.notify("WATCHDOG=1")
        await asyncio.sleep(watchdog_interval())


async def _work(app: App, rt: Runtime, concurrency: int, notifier: Notifier) -> int:
    """The worker until it is asked to stop (0), or its queue fails under it (1)."""
    rt.loop = asyncio.get_running_loop()
    name = f"{socket.gethostname()}:{os.getpid()}"
    async with app.open_async():
        worker = asyncio.create_task(
            app.run_worker_async(
                queues=[QUEUE],
                name=name,
                concurrency=concurrency,
                additional_context={_CONTEXT_KEY: rt},
                install_signal_handlers=False,
                update_heartbeat_interval=rt.stalled_after / 3,
                stalled_worker_timeout=rt.stalled_after,
                fetch_job_polling_interval=min(5.0, rt.stalled_after / 3),
                delete_jobs="successful",
            )
        )

        def stop(signum: int) -> None:
            log.info(
                "received %s: finishing the batches in hand, then stopping",
                signal.Signals(signum).name,
            )
            rt.stopping.set()
            worker.cancel()

        for sig in (signal.SIGTERM, signal.SIGINT):
            rt.loop.add_signal_handler(sig, stop, sig)
        watchdog = asyncio.create_task(_feed_watchdog(notifier))
        notifier.notify("READY=1")
        log.info("syncd worker %s started: %d passes at once", name, concurrency)
        try:
            await worker
        except asyncio.CancelledError:
            if not rt.stopping.is_set():
                raise
        finally:
            watchdog.cancel()
    if rt.stopping.is_set():
        return 0
    log.error("the job queue stopped this worker (see above); exiting so it is restarted")
    return 1
