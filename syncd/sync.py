"""One sync job: one mailbox, each of its sources: connector -> filter -> matcher -> recorder,
then the follow-up rules, then the tasks written into the user's calendar.

The same function runs under ``syncd sync``, the daemon and (later) a scale-out worker.
Each batch and the cursor after it commit in one transaction; calendar writes happen only
after the transaction that decided them, with a uid chosen beforehand.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta

from sqlalchemy import select
from sqlalchemy.exc import OperationalError, StatementError
from sqlalchemy.orm import Session, sessionmaker

from syncd.config import Settings
from syncd.connectors.base import (
    AuthError,
    CalendarSource,
    Connector,
    ConnectorError,
    CursorExpired,
    MailboxSpec,
    MailSource,
)
from syncd.connectors.kind import KindSettings, SettingsError
from syncd.connectors.registry import kind, open_connector
from syncd.crm import queries, recorder
from syncd.crm.database import DatabaseError
from syncd.crm.models import Mailbox, MailboxState, User, WriterState
from syncd.followups import RULES, WorkingTime, plan, task_uid
from syncd.items import (
    ADDRESS_LENGTH,
    EARLIEST,
    FUTURE_YEARS,
    Batch,
    ExclusionReason,
    Item,
    MailItem,
    MeetingItem,
    Quarantined,
    TaskItem,
    conversation_keys,
    fit,
    latest,
)
from syncd.matching.exclusions import exclusion, label_hit, mail_exclusion
from syncd.matching.matcher import CrmIndex, match, settle
from syncd.secrets import SecretBox, SecretsError

log = logging.getLogger("syncd.sync")
FOLLOWUPS_EVERY = timedelta(minutes=10)


@dataclass
class SyncReport:
    mailbox: str
    state: MailboxState = "ok"
    error: str | None = None
    new_activities: int = 0
    new_sightings: int = 0
    quarantined: int = 0
    excluded: Counter[ExclusionReason] = field(default_factory=Counter)
    updated: int = 0  # meetings changed or removed, task states read back
    tasks_changed: int = 0
    tasks_written: int = 0
    writer_state: WriterState = "ok"  # the task write-back's own (a calendar may refuse it)
    writer_error: str | None = None
    stopped: bool = False

    @property
    def ok(self) -> bool:
        return self.state == "ok"


def decide(
    items: Iterable[Item],
    index: CrmIndex,
    settings: Settings,
    excluded: Counter[ExclusionReason],
    quarantined: list[Quarantined] | None = None,
) -> list[recorder.Decision]:
    """Filter and match a batch. A mail that carries an invitation is logged as the meeting.
    An item whose matching fails goes to ``quarantined`` (when given) with its reason; it
    never stops the batch. The result does not depend on how items are cut into batches."""
    decisions = []
    for raw_item, forced in _expand(items, settings, excluded):
        try:
            item = fit_item(raw_item, datetime.now(UTC))
            m = match(item, index)
            excluded_by = exclusion(item, m, index, forced)
        except Exception as exc:  # one item never stops its mailbox
            if quarantined is None:
                raise
            reason = str(exc) if isinstance(exc, OutOfRange) else f"cannot match: {_describe(exc)}"
            log.warning("item %r not logged: %s", raw_item.provider_id, reason)
            quarantined.append(Quarantined(raw_item.provider_id, reason))
            continue
        if excluded_by:
            excluded[excluded_by.reason] += 1
            continue
        decisions.append(recorder.Decision(item, m))
    return decisions


class OutOfRange(ValueError):
    """An item whose time no rule can work with (before 1970, or years ahead)."""


def fit_item(item: Item, now: datetime) -> Item:
    """The item as the CRM can keep it: keys and ids that fit their columns (a stable hash
    where they do not), addresses that fit theirs, and a time between 1970 and
    ``items.latest`` (else :class:`OutOfRange`, and the item is quarantined: no rule ever
    sees year 9999). A meeting's end counts too: the rules work from it."""
    times = [item.sent_at] if isinstance(item, MailItem) else [item.start, item.end]
    for when in times:
        if when.tzinfo is not None and not (EARLIEST <= when <= latest(now)):
            raise OutOfRange(
                f"date out of range: {when.isoformat()} (syncd keeps 1970 to now + "
                f"{FUTURE_YEARS} years)"
            )
    people = item.participants
    if any(len(p.address) > ADDRESS_LENGTH or not p.address.isprintable() for p in people):
        people = tuple(
            replace(p, address=fit(p.address, 0)[5:37] + "@invalid.invalid")
            if len(p.address) > ADDRESS_LENGTH or not p.address.isprintable()
            else p
            for p in people
        )
    if isinstance(item, MailItem):
        return replace(
            item,
            key=fit(item.key),
            provider_id=fit(item.provider_id),
            thread_key=fit(item.thread_key),
            related_keys=tuple(fit(k) for k in item.related_keys),
            participants=people,
        )
    return replace(item, key=fit(item.key), provider_id=fit(item.provider_id), participants=people)


def _describe(exc: BaseException) -> str:
    """An exception as one line a user may read: never the SQL or parameters of a database
    error (they may hold anything an item carried)."""
    if isinstance(exc, StatementError):
        orig = exc.orig
        if orig is None:
            return f"the CRM database refused it ({exc.__class__.__name__})"
        text = str(orig).splitlines()[0] if str(orig) else ""
        return f"the CRM database refused it ({orig.__class__.__name__}: {text[:200]})"
    text = str(exc).splitlines()[0] if str(exc) else ""
    return f"{exc.__class__.__name__}: {text[:300]}"


def _expand(
    items: Iterable[Item], settings: Settings, excluded: Counter[ExclusionReason]
) -> Iterator[tuple[Item, bool]]:
    """Items that pass the checks needing no CRM, each with whether a label forces it in."""
    rules = settings.exclusions
    for item in items:
        forced = label_hit(item, rules.force_labels) is not None
        if isinstance(item, MeetingItem):
            if label_hit(item, rules.labels):
                excluded["excluded label"] += 1
            else:
                yield item, forced
            continue
        excluded_by = mail_exclusion(item, rules.labels, forced)
        if excluded_by:
            excluded[excluded_by.reason] += 1
        elif item.invitations:
            for invite in item.invitations:
                if invite.method == "REPLY":
                    excluded["invitation-reply"] += 1  # an attendee's answer, not a meeting
                else:
                    yield invite, forced
        else:
            yield item, forced


def _reorders(index: CrmIndex, opp_id: int, before: datetime | None) -> bool:
    """Whether a deal's newer tagged activity changes its rank against any other open deal
    (an item may have candidates at several accounts, so every open deal counts): then
    what weaker links chose may change."""
    after = index.last_activity.get(opp_id)
    if opp_id not in index.opportunities or after is None:
        return False
    for other in index.opportunities.values():
        if other.id == opp_id or other.status != "open":
            continue
        theirs = index.last_activity.get(other.id)  # None: no tagged activity, the floor
        was_ahead_or_tied = before is None or (theirs is not None and before <= theirs)
        now_ahead_or_tied = theirs is None or theirs <= after
        if was_ahead_or_tied and now_ahead_or_tied:
            return True
    return False


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
    batch size and limits, its secret opened."""
    where = f"mailbox {mailbox.name!r}"
    typed = typed_settings(mailbox, settings)
    return MailboxSpec(
        name=mailbox.name,
        kind=mailbox.kind,
        user_email=mailbox.user.email,
        settings=typed,
        batch_size=settings.sync.batch_size,
        body_policy=typed.body or settings.sync.body,
        limits=settings.limits,
        home=settings.home,
        secret=(
            SecretBox(settings.home).decrypt(mailbox.secret, where) if mailbox.secret else None
        ),
    )


class SyncJob:
    """Syncs one mailbox. ``stop()`` is asked after every batch; ``heartbeat()`` is called
    after every batch too (the daemon feeds the systemd watchdog from it)."""

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
    ) -> None:
        self.sessions = sessions
        self.settings = settings
        self.name = mailbox_name
        self.now = now
        self.stop = stop
        self.heartbeat = heartbeat
        self.connector_factory = connector_factory
        self.report = SyncReport(mailbox_name)
        self._index: CrmIndex | None = None

    def _crm_index(self) -> CrmIndex:
        """Loaded once a pass, and only when a source has something to match."""
        if self._index is None:
            with self.sessions() as session:
                self._index = queries.load_index(session, self.settings)
        return self._index

    def run(self) -> SyncReport:
        with self.sessions() as session:
            mailbox = session.scalar(select(Mailbox).where(Mailbox.name == self.name))
            if mailbox is None:
                raise ConnectorError(f"no mailbox named {self.name!r}; see 'syncd mailbox list'")
            self.mailbox_id, self.user_id = mailbox.id, mailbox.user_id
            try:
                spec = mailbox_spec(mailbox, self.settings)
            except SecretsError as exc:
                self._fail("parked", str(exc))
                return self.report
        try:
            connector = self.connector_factory(spec)
            try:
                self._sync_sources(connector, spec)
                if not self.report.stopped:
                    self._followups()
                    self._write_tasks(connector)
            finally:
                connector.close()
        except AuthError as exc:
            self._fail("parked", str(exc))
        except DatabaseError:
            raise  # the CRM database, not the mailbox: the caller says so, nothing is failing
        except OperationalError as exc:  # the database went away mid-pass: likewise
            raise DatabaseError(_describe(exc)) from exc
        except (ConnectorError, OSError) as exc:
            self._fail("failing", str(exc))
        except Exception as exc:  # one bad mailbox never stalls the others
            log.error("mailbox %r: unexpected error: %s", self.name, _describe(exc))
            log.debug("mailbox %r: unexpected error", self.name, exc_info=True)
            self._fail("failing", _describe(exc))
        else:
            if not self.report.stopped:
                with self.sessions.begin() as session:
                    recorder.mark_mailbox(
                        session, self.mailbox_id, state="ok", now=self.now(), error=None
                    )
        return self.report

    def _fail(self, state: MailboxState, error: str) -> None:
        self.report.state, self.report.error = state, error
        log.warning("mailbox %r %s: %s", self.name, state, error)
        with self.sessions.begin() as session:
            recorder.mark_mailbox(
                session, self.mailbox_id, state=state, now=self.now(), error=error
            )

    def _sync_sources(self, connector: Connector, spec: MailboxSpec) -> None:
        sources: list[MailSource | CalendarSource] = [
            *connector.mail_sources(),
            *connector.calendar_sources(),
        ]
        for source in sources:
            with self.sessions() as session:
                cursor = recorder.get_cursor(session, self.mailbox_id, source.name)
            try:
                self._consume(source.name, source.changes(cursor), spec)
            except CursorExpired as exc:
                log.info("mailbox %r source %r: %s; reading it again", self.name, source.name, exc)
                with self.sessions.begin() as session:
                    recorder.reset_cursor(session, self.mailbox_id, source.name)
                self._consume(source.name, source.changes(None), spec)
            if self.report.stopped:
                return

    def _consume(
        self,
        source: str,
        batches: Iterator[Batch[MailItem]] | Iterator[Batch[MeetingItem]],
        spec: MailboxSpec,
    ) -> None:
        for batch in batches:
            quarantined = list(batch.quarantined)
            index = self._crm_index() if batch.items else None
            decisions = (
                decide(batch.items, index, self.settings, self.report.excluded, quarantined)
                if index is not None
                else []
            )
            try:
                with self.sessions.begin() as session:
                    result = self._record(session, source, batch, decisions, quarantined, spec)
            except OperationalError:
                raise  # the database itself (locked, gone), not an item
            except (StatementError, ValueError, OverflowError) as exc:
                # one item the database refuses must not stop the mailbox: store the batch
                # again item by item, each in a savepoint, and quarantine what is refused
                log.warning(
                    "mailbox %r: batch refused (%s); storing it item by item",
                    self.name,
                    _describe(exc),
                )
                self._index = None  # what the failed transaction taught the index is void
                with self.sessions.begin() as session:
                    result = self._record_one_by_one(
                        session, source, batch, decisions, quarantined, spec
                    )
            self.report.new_activities += result.new_activities
            self.report.new_sightings += result.new_sightings
            self.report.updated += (
                result.updated_meetings
                + len(batch.removed)
                + len(batch.task_states)
                + result.relinked
            )
            self.report.quarantined += len(quarantined)
            self.heartbeat()
            if self.stop():
                self.report.stopped = True
                return

    def _record(
        self,
        session: Session,
        source: str,
        batch: Batch[MailItem] | Batch[MeetingItem],
        decisions: list[recorder.Decision],
        quarantined: list[Quarantined],
        spec: MailboxSpec,
    ) -> recorder.BatchResult:
        """Store a batch, settle the conversations it touched, and move the cursor: one
        transaction (the caller's)."""
        result = self._store(session, source, spec, decisions, quarantined, batch)
        if decisions:
            result.relinked = self._settle(session, decisions)
        return result

    def _store(
        self,
        session: Session,
        source: str,
        spec: MailboxSpec,
        decisions: Sequence[recorder.Decision],
        quarantined: Sequence[Quarantined],
        batch: Batch[MailItem] | Batch[MeetingItem] | None,
    ) -> recorder.BatchResult:
        """recorder.record_batch for this mailbox; with ``batch``, also its removals, task
        states and cursor."""
        return recorder.record_batch(
            session,
            mailbox_id=self.mailbox_id,
            source=source,
            decisions=decisions,
            quarantined=quarantined,
            cursor=batch.cursor if batch else None,
            body_policy=spec.body_policy,
            now=self.now(),
            removed_uids=batch.removed if batch else (),
            task_states=batch.task_states if batch else (),
        )

    def _record_one_by_one(
        self,
        session: Session,
        source: str,
        batch: Batch[MailItem] | Batch[MeetingItem],
        decisions: list[recorder.Decision],
        quarantined: list[Quarantined],
        spec: MailboxSpec,
    ) -> recorder.BatchResult:
        total = recorder.BatchResult()
        kept: list[recorder.Decision] = []
        for d in decisions:
            try:
                with session.begin_nested():
                    one = self._store(session, source, spec, [d], (), None)
            except OperationalError:
                raise
            except (StatementError, ValueError, OverflowError) as exc:
                reason = f"cannot store: {_describe(exc)}"
                log.warning("mailbox %r: item %r %s", self.name, d.item.provider_id, reason)
                quarantined.append(Quarantined(d.item.provider_id, reason))
                continue
            kept.append(d)
            total.new_activities += one.new_activities
            total.new_sightings += one.new_sightings
            total.updated_meetings += one.updated_meetings
        rest = self._store(session, source, spec, [], quarantined, batch)
        total.new_sightings += rest.new_sightings
        if kept:
            total.relinked = self._settle(session, kept)
        return total

    def _settle(self, session: Session, decisions: list[recorder.Decision]) -> int:
        """Decide the deal of every conversation this batch touched, from all its stored
        items (a reply stored before the message it answers is relinked now), and of every
        item whose candidate deals were reordered by a newly tagged activity."""
        index = self._crm_index()
        keys: set[str] = set()
        reordered: list[int] = []
        for d in decisions:
            keys.update(conversation_keys(d.item))
            when = d.item.sent_at if isinstance(d.item, MailItem) else d.item.start
            for lk in d.match.links:
                if lk.reason == "tag":
                    before = index.last_activity.get(lk.target_id)
                    if index.remember(lk.target_id, when) and _reorders(
                        index, lk.target_id, before
                    ):
                        reordered.append(lk.target_id)
        if reordered:
            keys.update(queries.conversation_keys_of_candidates(session, index, reordered))
        changes = [
            change
            for component in queries.thread_components(session, keys)
            for change in settle(component, index)
        ]
        return recorder.relink(session, changes)

    def _followups(self) -> None:
        """Run the rules after a pass that changed something, else at most every
        FOLLOWUPS_EVERY (deadlines pass without new mail; a quiet poll stays cheap)."""
        now = self.now()
        since = now - timedelta(days=self.settings.followups.lookback_days)
        changed = self.report.new_activities or self.report.new_sightings or self.report.updated
        with self.sessions.begin() as session:
            mailbox = session.get(Mailbox, self.mailbox_id)
            assert mailbox is not None
            last = mailbox.followups_at
            if not changed and last is not None and timedelta(0) <= now - last < FOLLOWUPS_EVERY:
                return
            recorder.mark_followups(session, self.mailbox_id, now)
            candidates = queries.followup_candidates(session, self.user_id, since)
            if not candidates:
                return
            working = {
                u.id: WorkingTime.for_user(self.settings, u.timezone, u.working_hours)
                for u in session.scalars(select(User))
            }
            uids = [task_uid(rule, c.activity_key) for c in candidates for rule in RULES]
            existing = queries.task_status_by_uid(session, uids)
            deals = queries.task_deal_by_uid(session, uids)
            plans = plan(candidates, self.settings, working, existing, now, deals)
            self.report.tasks_changed += recorder.apply_task_plans(session, plans, now)

    def _write_tasks(self, connector: Connector) -> None:
        """Write pending tasks into the user's calendar. A calendar that refuses them puts
        the writer, not the mailbox, in ``failing``: mail goes on being read and logged,
        and the tasks are written at a later pass."""
        try:
            writer = connector.task_writer()
        except (ConnectorError, OSError) as exc:
            self._writer_state("failing", f"cannot open the calendar for tasks: {exc}")
            return
        if writer is None:
            return  # without a calendar, tasks live in the CRM only
        with self.sessions() as session:
            pending = recorder.tasks_to_write(session, self.user_id, self.mailbox_id)
        items = [
            TaskItem(
                uid=task.uid,
                title=task.title,
                description=task.description,
                due=task.due,
                status=task.status,
                created=task.created_at,
                sequence=task.version - 1,
                categories=("CRM",),
            )
            for task in pending
        ]
        put_many = getattr(writer, "put_many", None)
        step = 100 if put_many else 1  # a writer with put_many saves round trips ($batch)
        for start in range(0, len(pending), step):
            chunk = pending[start : start + step]
            refs: list[str | None]
            try:
                if put_many:
                    refs, error = list(put_many(items[start : start + step])), None
                else:
                    refs, error = [writer.put(items[start])], None
            except AuthError:
                raise  # a refused sign-in parks the mailbox, as for reading
            except (ConnectorError, OSError) as exc:
                refs, error = [None] * len(chunk), f"cannot write task to the calendar: {exc}"
            with self.sessions.begin() as session:
                for task, ref in zip(chunk, refs, strict=True):
                    recorder.mark_written(
                        session, task.id, task.version, self.mailbox_id, ref, error
                    )
            if error:
                self._writer_state("failing", error)
                return
            self.report.tasks_written += len(chunk)
            self.heartbeat()  # a long write-back under throttling keeps the watchdog fed
            if self.stop():  # the rest is written at the next pass
                self.report.stopped = True
                return
        if pending:
            self._writer_state("ok", None)

    def _writer_state(self, state: WriterState, error: str | None) -> None:
        self.report.writer_state, self.report.writer_error = state, error
        if error:
            log.warning("mailbox %r: tasks not written: %s", self.name, error)
        with self.sessions.begin() as session:
            recorder.mark_writer(session, self.mailbox_id, state=state, now=self.now(), error=error)


def sync_mailbox(
    sessions: sessionmaker[Session], settings: Settings, mailbox_name: str, **kwargs: object
) -> SyncReport:
    return SyncJob(sessions, settings, mailbox_name, **kwargs).run()  # type: ignore[arg-type]
