"""One sync job: one mailbox, each of its sources: connector -> filter -> matcher -> recorder,
then the follow-up rules, then the tasks written into the user's calendar.

The same function runs under ``syncd sync``, the daemon and (later) a scale-out worker.
Each batch and the cursor after it commit in one transaction; calendar writes happen only
after the transaction that decided them, with a uid chosen beforehand.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from sqlalchemy import select
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
    open_connector,
)
from syncd.crm import queries, recorder
from syncd.crm.models import Mailbox, User
from syncd.followups import RULE_MEETING_NOTES, RULE_NO_REPLY, WorkingTime, plan, task_uid
from syncd.items import Batch, Item, MailItem, MeetingItem, TaskItem
from syncd.matching.exclusions import exclusion, label_hit, mail_exclusion
from syncd.matching.matcher import CrmIndex, match, remembered_keys
from syncd.secrets import SecretBox, SecretsError

log = logging.getLogger("syncd.sync")
FOLLOWUPS_EVERY = timedelta(minutes=10)


@dataclass
class SyncReport:
    mailbox: str
    state: str = "ok"
    error: str | None = None
    new_activities: int = 0
    new_sightings: int = 0
    quarantined: int = 0
    excluded: Counter[str] = field(default_factory=Counter)
    updated: int = 0  # meetings changed or removed, task states read back
    tasks_changed: int = 0
    tasks_written: int = 0
    stopped: bool = False

    @property
    def ok(self) -> bool:
        return self.state == "ok"


def decide(
    items: Iterable[Item], index: CrmIndex, settings: Settings, excluded: Counter[str]
) -> list[recorder.Decision]:
    """Filter and match a batch. A mail that carries an invitation is logged as the meeting.
    The result does not depend on how items are cut into batches."""
    decisions = []
    for item, forced in _expand(items, settings, excluded):
        m = match(item, index)
        reason = exclusion(item, m, index, forced)
        if reason:
            excluded[reason.split(":")[0]] += 1
            continue
        decisions.append(recorder.Decision(item, m))
        # later items of this very batch see this one (the thread rule, "most recent")
        when = item.sent_at if isinstance(item, MailItem) else item.start
        index.remember(remembered_keys(item), m.opportunity_id, when)
    return decisions


def _expand(
    items: Iterable[Item], settings: Settings, excluded: Counter[str]
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
        reason = mail_exclusion(item, rules.labels, forced)
        if reason:
            excluded[reason.split(":")[0]] += 1
        elif item.invitations:
            for invite in item.invitations:
                if invite.method == "REPLY":
                    excluded["invitation-reply"] += 1  # an attendee's answer, not a meeting
                else:
                    yield invite, forced
        else:
            yield item, forced


def mailbox_spec(mailbox: Mailbox, settings: Settings) -> MailboxSpec:
    """What the connector gets: the mailbox's settings over the config's, its secret opened."""
    merged = {
        "calendar_past_days": settings.sync.calendar_past_days,
        "calendar_future_days": settings.sync.calendar_future_days,
        "state_dir": str(settings.home),
        **mailbox.settings,
        # the mailbox's own exclusions add to the config's
        "excluded_folders": [
            *settings.exclusions.folders,
            *mailbox.settings.get("excluded_folders", []),
        ],
    }
    return MailboxSpec(
        name=mailbox.name,
        kind=mailbox.kind,
        user_email=mailbox.user.email,
        settings=merged,
        batch_size=settings.sync.batch_size,
        body_policy=str(mailbox.settings.get("body", settings.sync.body)),
        secret=(
            SecretBox(settings.home).decrypt(mailbox.secret, f"mailbox {mailbox.name!r}")
            if mailbox.secret
            else None
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
        except (ConnectorError, OSError) as exc:
            self._fail("failing", str(exc))
        except Exception as exc:  # one bad mailbox never stalls the others
            log.exception("mailbox %r: unexpected error", self.name)
            self._fail("failing", f"{exc.__class__.__name__}: {exc}")
        else:
            if not self.report.stopped:
                with self.sessions.begin() as session:
                    recorder.mark_mailbox(
                        session, self.mailbox_id, state="ok", now=self.now(), error=None
                    )
        return self.report

    def _fail(self, state: str, error: str) -> None:
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
            decisions = (
                decide(batch.items, self._crm_index(), self.settings, self.report.excluded)
                if batch.items
                else []
            )
            with self.sessions.begin() as session:
                result = recorder.record_batch(
                    session,
                    mailbox_id=self.mailbox_id,
                    source=source,
                    decisions=decisions,
                    quarantined=batch.quarantined,
                    cursor=batch.cursor,
                    body_policy=spec.body_policy,
                    now=self.now(),
                    removed_uids=batch.removed,
                    task_states=batch.task_states,
                )
            self.report.new_activities += result.new_activities
            self.report.new_sightings += result.new_sightings
            self.report.updated += (
                result.updated_meetings + len(batch.removed) + len(batch.task_states)
            )
            self.report.quarantined += len(batch.quarantined)
            self.heartbeat()
            if self.stop():
                self.report.stopped = True
                return

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
            mailbox.followups_at = now
            candidates = queries.followup_candidates(session, self.user_id, since)
            if not candidates:
                return
            working = {
                u.id: WorkingTime.for_user(self.settings, u.timezone, u.working_hours)
                for u in session.scalars(select(User))
            }
            uids = [
                task_uid(rule, c.activity_key)
                for c in candidates
                for rule in (RULE_NO_REPLY, RULE_MEETING_NOTES)
            ]
            existing = queries.task_status_by_uid(session, uids)
            plans = plan(candidates, self.settings, working, existing, now)
            self.report.tasks_changed += recorder.apply_task_plans(session, plans, now)

    def _write_tasks(self, connector: Connector) -> None:
        writer = connector.task_writer()
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
                status=task.status,  # type: ignore[arg-type]
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
            except (ConnectorError, OSError) as exc:
                refs, error = [None] * len(chunk), f"cannot write task to the calendar: {exc}"
            with self.sessions.begin() as session:
                for task, ref in zip(chunk, refs, strict=True):
                    recorder.mark_written(
                        session, task.id, task.version, self.mailbox_id, ref, error
                    )
            if error:
                raise ConnectorError(error)
            self.report.tasks_written += len(chunk)
            self.heartbeat()  # a long write-back under throttling keeps the watchdog fed
            if self.stop():  # the rest is written at the next pass
                self.report.stopped = True
                return


def sync_mailbox(
    sessions: sessionmaker[Session], settings: Settings, mailbox_name: str, **kwargs: object
) -> SyncReport:
    return SyncJob(sessions, settings, mailbox_name, **kwargs).run()  # type: ignore[arg-type]
