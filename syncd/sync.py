"""One sync job: one mailbox, each of its sources: connector -> filter -> matcher -> recorder,
then the follow-up rules, then the tasks written into the user's calendar.

The same function runs under ``syncd sync``, the daemon and a scale-out worker. A pass
first takes its mailbox's lease (``syncd.crm.leases``): a mailbox another pass holds is
left to it (``report.busy``). Each batch and the cursor after it commit in one
transaction, which also renews the lease; calendar writes happen only after the
transaction that decided them, with a uid chosen beforehand. A pass given a time budget
yields between batches once it is spent (``report.yielded``): the next pass goes on from
the cursor, so one long first import never holds a worker for hours.

This module owns the pass itself (:class:`SyncJob`: sources, cursors, the mailbox's state,
when the rules run) and what a connector is given (:func:`mailbox_spec`). Its steps live
beside it, each in a module named after it:

==================  =====================================================================
``syncd.decide``    per item: exclusions, fitting to the CRM, matching, quarantine
``syncd.store``     a batch and its cursor in one transaction; item by item when refused
``syncd.settle``    the conversations a stored batch touched, and the tags it taught
``syncd.followups`` the follow-up rules (pure)
``syncd.writeback`` the pending tasks written into the user's calendar
``syncd.report``    :class:`SyncReport`, what a pass did
==================  =====================================================================
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime, timedelta

from sqlalchemy import select
from sqlalchemy.exc import OperationalError, SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from syncd import calllist, dropbox, logs, metrics, past
from syncd.config import BodyPolicy, ReadLimits, Settings
from syncd.connectors.base import (
    AuthError,
    CalendarSource,
    Connector,
    ConnectorError,
    CursorExpired,
    MailboxSpec,
    MailSource,
)
from syncd.connectors.kind import BackfillSettings, KindSettings, SettingsError
from syncd.connectors.registry import kind, open_connector
from syncd.crm import queries, recorder
from syncd.crm.autocreate import create_contacts
from syncd.crm.database import DatabaseError
from syncd.crm.leases import Lease, LeaseLost, new_owner
from syncd.crm.mailboxes import mark_followups, mark_mailbox
from syncd.crm.models import Mailbox, MailboxState, User
from syncd.crm.skips import Skip
from syncd.crm.tasks import apply_task_plans
from syncd.decide import PassIndex, decide, describe
from syncd.followups import ACTIVITY_RULES, WorkingTime, plan, task_uid
from syncd.harvest.books import sync_address_books
from syncd.items import Batch, Cursor, Item, MailItem, MeetingItem, Quarantined
from syncd.report import SyncReport
from syncd.secrets import SecretBox, SecretsError
from syncd.store import Target, record
from syncd.writeback import TaskWriteBack

log = logging.getLogger("syncd.sync")
FOLLOWUPS_EVERY = timedelta(minutes=10)


def typed_settings(mailbox: Mailbox, settings: Settings) -> KindSettings:
    """The mailbox's settings, typed by its kind, over the config's (the calendar window;
    the folders to exclude add up). ConnectorError names a stored value that is not valid."""
    own = dict(mailbox.settings)
    merged = {
        "calendar_past_days": settings.sync.calendar_past_days,
        "calendar_future_days": settings.sync.calendar_future_days,
        **own,
        "excluded_folders": [*settings.exclusions.folders, *own.get("excluded_folders", [])],
    }
    try:
        where = f"mailbox {mailbox.name!r}: its stored settings"
        typed = kind(mailbox.kind).read_settings(merged, where)
    except SettingsError as exc:
        raise ConnectorError(f"{exc}; fix them with 'syncd mailbox remove' and 'add'") from None
    return typed


def mailbox_spec(mailbox: Mailbox, settings: Settings) -> MailboxSpec:
    """What the connector gets: its typed settings (:func:`typed_settings`), the config's
    batch size and limits, the cap on sync connections to its server
    (``sync.imap_connections``, used by the IMAP connector), its secret opened."""
    where = f"mailbox {mailbox.name!r}"
    typed = typed_settings(mailbox, settings)
    limits = settings.limits
    if typed.dropbox:  # whole messages, kept with their items: their forwards are unpacked
        limits = ReadLimits(**settings.limits.model_dump(), keep_raw=True)
    return MailboxSpec(
        name=mailbox.name,
        kind=mailbox.kind,
        user_email=mailbox.user.email,
        settings=typed,
        batch_size=settings.sync.batch_size,
        body_policy="full" if typed.dropbox else stored_body(typed, settings),
        limits=limits,
        home=settings.home,
        server_connections=settings.sync.imap_connections,
        parse_processes=settings.sync.parse_processes,
        secret=(
            SecretBox(settings.home).decrypt(mailbox.secret, where) if mailbox.secret else None
        ),
    )


def stored_body(typed: KindSettings, settings: Settings) -> BodyPolicy:
    """What the CRM keeps of a message's body: the mailbox's policy, else the config's (a
    dropbox reads whole messages, and keeps no more than that either)."""
    return typed.body or settings.sync.body


class SyncJob:
    """Syncs one mailbox. ``stop()`` is asked after every batch; ``heartbeat()`` is called
    after every batch too (the daemon feeds the systemd watchdog from it). ``budget``:
    seconds after which the pass yields at the next batch boundary (None: never).
    ``owner`` names the pass in the mailbox's lease (default: a new unique name). ``past``:
    log the past back to this date instead (``syncd import mail``, :mod:`syncd.past`)."""

    lease: Lease  # taken by run() before anything else

    def __init__(
        self,
        sessions: sessionmaker[Session],
        settings: Settings,
        mailbox_name: str,
        *,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
        stop: Callable[[], bool] = lambda: False,
        heartbeat: Callable[[], None] = lambda: None,
        connector_factory: Callable[[MailboxSpec], Connector] = open_connector,
        budget: float | None = None,
        owner: str | None = None,
        past: datetime | None = None,
    ) -> None:
        self.sessions = sessions
        self.settings = settings
        self.name = mailbox_name
        self.now = now
        self.stop = stop
        self.heartbeat = heartbeat
        self.connector_factory = connector_factory
        self.report = SyncReport(mailbox_name)
        self.index = PassIndex(sessions, settings)  # filled per batch, if anything is matched
        self.budget = budget
        self.floor: datetime | None = None  # mail before it is outside the window
        self.past = past  # syncd import mail --since: see syncd.past
        self.dropbox = False  # a dropbox mailbox (syncd.dropbox): set with its spec
        self.owner = owner or new_owner()
        self.started = now()
        self.clock = time.monotonic()

    def run(self) -> SyncReport:
        """The pass, under the mailbox's lease; what is logged meanwhile is about this
        mailbox (``syncd.logs``)."""
        with logs.about(self.name):
            return self._leased()

    def _leased(self) -> SyncReport:
        self.started, self.clock = self.now(), time.monotonic()
        lease = self._take_lease()
        if lease is None:
            return self.report
        try:
            return self._run()
        except LeaseLost as exc:
            log.warning("%s; this pass stops", exc)
            self.report.busy = "another pass"
            self.report.stopped = True
            return self.report
        finally:
            try:
                with self.sessions.begin() as session:
                    lease.release(session)
            except SQLAlchemyError as exc:  # the database went away: the lease runs out
                log.warning("mailbox %r: its lease is left to run out: %s", self.name, exc)

    def _take_lease(self) -> Lease | None:
        """The mailbox's lease, or None when another pass holds it (``report.busy``)."""
        with self.sessions.begin() as session:
            mailbox_id = session.scalar(select(Mailbox.id).where(Mailbox.name == self.name))
            if mailbox_id is None:
                raise ConnectorError(f"no mailbox named {self.name!r}; see 'syncd mailbox list'")
            self.lease = Lease(mailbox_id, self.owner, self.settings.sync.lease_seconds, self.name)
            holder = self.lease.acquire(session, self.now())
        if holder is not None:
            log.info("mailbox %r: being synced by %s; left to it", self.name, holder)
            self.report.busy = holder
            return None
        return self.lease

    def _run(self) -> SyncReport:
        spec = self._spec()
        if spec is None:
            return self.report
        try:
            self._pass(spec)
        except (DatabaseError, LeaseLost):
            raise  # the CRM database, or another pass took the mailbox: nothing is failing
        except OperationalError as exc:  # the database went away mid-pass: likewise
            raise DatabaseError(describe(exc)) from exc
        except Exception as exc:  # one bad mailbox never stalls the others
            self._fail(*self._failure(exc))
        else:
            if not self.report.stopped and self.past is None:
                caught_up = None if self.report.yielded else self.started
                with self.sessions.begin() as session:
                    self.lease.fence(session, self.now())
                    mark_mailbox(
                        session,
                        self.mailbox_id,
                        state="ok",
                        now=self.now(),
                        error=None,
                        caught_up=caught_up,
                    )
        return self.report

    def _spec(self) -> MailboxSpec | None:
        """The mailbox's spec; None when its secret cannot be opened or its stored settings
        are not valid for its kind (it is then parked, with the error naming the key)."""
        with self.sessions() as session:
            mailbox = session.scalar(select(Mailbox).where(Mailbox.name == self.name))
            if mailbox is None:
                raise ConnectorError(f"no mailbox named {self.name!r}; see 'syncd mailbox list'")
            self.mailbox_id, self.user_id = mailbox.id, mailbox.user_id
            self.dropbox = bool((mailbox.settings or {}).get("dropbox"))
            try:
                spec = mailbox_spec(mailbox, self.settings)
                return spec if self.past is None else past.widen(spec, self.past, self.now())
            except (SecretsError, ConnectorError) as exc:
                self._fail("parked", str(exc))
                return None

    def _pass(self, spec: MailboxSpec) -> None:
        days = spec.settings.since_days
        if days is not None and not isinstance(spec.settings, BackfillSettings):
            # a kind that reads whole folders (local, imap): mail older than --since is
            # left out at every pass (a backfill kind lists its window itself)
            self.floor = self.now() - timedelta(days=days)
        connector = self.connector_factory(spec)
        try:
            self._sync_sources(connector, spec)
            if spec.settings.dropbox:
                return  # no calendar, address books or follow-ups of its own: syncd.dropbox
            if not (self.report.stopped or self.report.yielded or self.past):
                self.report.contacts_added = sync_address_books(
                    self.sessions,
                    self.settings,
                    connector,
                    mailbox=self.name,
                    mailbox_id=self.mailbox_id,
                    user_email=spec.user_email,
                    lease=self.lease,
                    now=self.now,
                )
                self._followups()
                self._write_tasks(connector)
        finally:
            connector.close()

    def _failure(self, exc: Exception) -> tuple[MailboxState, str]:
        """The state a pass that raised ``exc`` leaves the mailbox in, and why."""
        if isinstance(exc, AuthError):
            return "parked", str(exc)
        if isinstance(exc, ConnectorError | OSError):
            return "failing", str(exc)
        log.error("mailbox %r: unexpected error: %s", self.name, describe(exc))
        log.debug("mailbox %r: unexpected error", self.name, exc_info=exc)
        return "failing", describe(exc)

    def _fail(self, state: MailboxState, error: str) -> None:
        self.report.state, self.report.error = state, error
        log.warning("mailbox %r %s: %s", self.name, state, error)
        if self.past is not None:
            return  # the import says so; the mailbox's state is the daemon's
        with self.sessions.begin() as session:
            self.lease.fence(session, self.now())
            mark_mailbox(session, self.mailbox_id, state=state, now=self.now(), error=error)

    def _sync_sources(self, connector: Connector, spec: MailboxSpec) -> None:
        sources: list[MailSource | CalendarSource] = [*connector.mail_sources()]
        if not spec.settings.dropbox:  # a dropbox's calendar is nobody's meetings
            sources.extend(connector.calendar_sources())
        stored = stored_body(spec.settings, self.settings)
        for source in sources:
            name = source.name if self.past is None else past.PREFIX + source.name
            target = Target(self.name, self.mailbox_id, name, stored, self.now, self.lease)
            with self.sessions() as session:
                cursor = recorder.get_cursor(session, self.mailbox_id, name)
            try:
                self._consume(target, self._changes(source, cursor))
            except CursorExpired as exc:
                log.info("mailbox %r source %r: %s; reading it again", self.name, name, exc)
                with self.sessions.begin() as session:
                    recorder.reset_cursor(session, self.mailbox_id, name)
                self._consume(target, self._changes(source, None))
            if self.report.stopped or self.report.yielded:
                return

    def _changes(
        self, source: MailSource | CalendarSource, cursor: Cursor | None
    ) -> Iterator[Batch[MailItem]] | Iterator[Batch[MeetingItem]]:
        batches = source.changes(cursor)
        return batches if self.past is None else past.within(batches, self.past)  # type: ignore[return-value]

    def _consume(
        self, target: Target, batches: Iterator[Batch[MailItem]] | Iterator[Batch[MeetingItem]]
    ) -> None:
        """Decide and record each batch; each is timed (from asking the connector for it to
        its commit) and its skipped items counted for the metrics, and what is logged
        meanwhile (the connector's reading too) is about this mailbox (``syncd.logs``)."""
        with logs.about(self.name):
            started = time.monotonic()
            for batch in batches:
                skipped = dict(self.report.excluded)
                quarantined = list(batch.quarantined)
                not_logged: list[Skip] = []  # (provider id, why, key): syncd audit, explain
                items: Sequence[Item] = batch.items
                sorted_ = None
                if self.dropbox and batch.items:
                    sorted_ = self._sort(batch.items)  # type: ignore[arg-type]
                    items, not_logged = sorted_.items, sorted_.skipped
                    quarantined.extend(sorted_.quarantined)
                    for _, why, _key in sorted_.skipped:  # each word as it is counted
                        if why == "refused":
                            self.report.excluded["refused"] += 1
                        elif why == "forwarded":
                            self.report.excluded["forwarded"] += 1
                        else:
                            self.report.excluded["nocrm"] += 1
                index = self.index.load(items) if items else None
                if sorted_ is not None:  # the deals its forwards name, in the index decided by
                    self.index.load_tags(dropbox.deal_names(sorted_))
                decisions = (
                    decide(
                        items,
                        self.index.get(),
                        self.settings,
                        self.report.excluded,
                        quarantined,
                        not_logged,
                        self.floor,
                        forced=sorted_ is not None,
                    )
                    if index is not None
                    else []
                )
                muted: Callable[[Session], object] | None = None
                if sorted_ is not None:
                    decisions = dropbox.steer(decisions, sorted_, self.index.get())
                    muted = self._muter(sorted_)
                then = self._then(decisions, muted)
                result = record(
                    self.sessions,
                    target,
                    batch,
                    decisions,
                    quarantined,
                    self.index,
                    not_logged,
                    then=then,
                )
                self._count(result, batch, quarantined)
                metrics.observe_batch(
                    self.name,
                    time.monotonic() - started,
                    {r: n - skipped.get(r, 0) for r, n in self.report.excluded.items()},
                )
                self.heartbeat()
                if self.stop():
                    self.report.stopped = True
                    return
                if self.budget is not None and time.monotonic() - self.clock >= self.budget:
                    log.info(
                        "mailbox %r: pass budget of %g s spent; the next pass goes on from here",
                        self.name,
                        self.budget,
                    )
                    self.report.yielded = True
                    return
                started = time.monotonic()

    def _sort(self, items: Sequence[MailItem]) -> dropbox.Sorted:
        """A dropbox's batch sorted (``syncd.dropbox``), its inline forwards found among the
        stored mail (they carry no Message-ID of their own)."""
        index = self.index.get()
        sorted_ = dropbox.sort_batch(items, index.users, self.settings, index, self.name)
        with self.sessions() as session:
            dropbox.resolve_inline(session, sorted_)
        return sorted_

    def _muter(self, sorted_: dropbox.Sorted) -> Callable[[Session], object] | None:
        """What removes the conversations a batch's forwards said #nocrm of, in the batch's
        transaction (and the rest of the pass checks every item against them)."""
        if not sorted_.muted:
            return None

        def mute(session: Session) -> object:
            self.index.mark_dropped()
            return dropbox.mute(session, self.settings, sorted_.muted, self.now())

        return mute

    def _then(
        self, decisions: list[recorder.Decision], muted: Callable[[Session], object] | None
    ) -> Callable[[Session], object] | None:
        """What a stored batch does next in its transaction: a dropbox's #nocrm, and the
        contacts its mail completes the evidence of (``matching.create_contacts``)."""
        if muted is None and (self.settings.matching.create_contacts == "never" or not decisions):
            return None

        def then(session: Session) -> object:
            if muted is not None:
                muted(session)
            if self.settings.matching.create_contacts == "never":
                return None
            try:  # contacts not made this time are made by the next evidence: never a stop
                with session.begin_nested():
                    return create_contacts(session, self.settings, self.index.get(), decisions)
            except OperationalError:
                raise
            except Exception as exc:
                log.warning("mailbox %r: no contact made now: %s", self.name, describe(exc))
                return None

        return then

    def _count(
        self,
        result: recorder.BatchResult,
        batch: Batch[MailItem] | Batch[MeetingItem],
        quarantined: list[Quarantined],
    ) -> None:
        self.report.new_activities += result.new_activities
        self.report.new_sightings += result.new_sightings
        self.report.updated += (
            result.updated_meetings + len(batch.removed) + len(batch.task_states) + result.relinked
        )
        self.report.quarantined += len(quarantined)

    def _followups(self) -> None:
        """Run the rules after a pass that changed something, else at most every
        FOLLOWUPS_EVERY (deadlines pass without new mail; a quiet poll stays cheap)."""
        now = self.now()
        with self.sessions.begin() as session:
            if not self._rules_due(session, now):
                return
            self.lease.fence(session, now)
            mark_followups(session, self.mailbox_id, now)
            self.report.tasks_changed += self._apply_rules(session, now)

    def _rules_due(self, session: Session, now: datetime) -> bool:
        mailbox = session.get(Mailbox, self.mailbox_id)
        assert mailbox is not None
        report, last = self.report, mailbox.followups_at
        changed = report.new_activities or report.new_sightings or report.updated
        return bool(changed) or last is None or not (timedelta(0) <= now - last < FOLLOWUPS_EVERY)

    def _apply_rules(self, session: Session, now: datetime) -> int:
        """Plan the tasks of the user's recent activities, a chunk at a time, then their
        call list of today (``syncd.calllist``: it lists the follow-ups just planned), and
        store them; returns how many tasks changed."""
        since = now - timedelta(days=self.settings.followups.lookback_days)
        users = {u.id: u for u in session.scalars(select(User))}
        working = {
            u.id: WorkingTime.for_user(self.settings, u.timezone, u.working_hours, u.holidays)
            for u in users.values()
        }
        changed = 0
        for candidates in queries.followup_candidates(session, self.user_id, since):
            uids = [task_uid(rule, c.activity_key) for c in candidates for rule in ACTIVITY_RULES]
            existing = queries.task_status_by_uid(session, uids)
            deals = queries.task_deal_by_uid(session, uids)
            plans = plan(candidates, self.settings, working, existing, now, deals)
            changed += apply_task_plans(session, plans, now)
        user, wt = users[self.user_id], working[self.user_id]
        day = calllist.today(user.email, wt, now)
        on = calllist.enabled(self.settings.call_list, user.call_list)
        facts = None
        if on and calllist.due(day, wt, now):
            facts = queries.call_list_facts(
                session, self.settings, user.id, (day.start, day.end), now
            )
        lists = queries.call_lists(session, user.id, day.uid)
        plans = calllist.plan(user.id, day, self.settings, facts, lists, on=on)
        return changed + apply_task_plans(session, plans, now)

    def _write_tasks(self, connector: Connector) -> None:
        """Write pending tasks into the user's calendar (``syncd.writeback``)."""
        TaskWriteBack(
            self.sessions,
            self.report,
            self.mailbox_id,
            self.user_id,
            now=self.now,
            stop=self.stop,
            heartbeat=self.heartbeat,
        ).run(connector)


def sync_mailbox(
    sessions: sessionmaker[Session], settings: Settings, mailbox_name: str, **kwargs: object
) -> SyncReport:
    return SyncJob(sessions, settings, mailbox_name, **kwargs).run()  # type: ignore[arg-type]
