"""``syncd quarantine retry``: quarantined items read again with the code as it is now.

An item goes to the quarantine when its connector cannot read it; the bytes as read are kept
with it (up to 10 MB) along with the name of the parser that reads them (``format``). After
an upgrade, a retry parses those bytes again through :func:`syncd.connectors.base.reparse`
and sends what it reads down the same pipeline as a sync: the exclusions and the matcher
(:func:`syncd.decide.decide`), then :func:`syncd.crm.recorder.record_batch` without moving
any cursor, then the conversations it touches are settled as a sync settles them
(:func:`syncd.settle.settle_touched`). The entry is
dropped in that same transaction. An item still unreadable keeps its entry, with the new
reason and one more attempt.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Literal

from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session, sessionmaker

from syncd.config import Settings
from syncd.connectors.base import ConnectorError, Reread, RereadContext
from syncd.connectors.registry import reparse
from syncd.crm import quarantine as store
from syncd.crm import recorder
from syncd.crm.models import Mailbox
from syncd.decide import PassIndex, decide
from syncd.items import RAW_KEPT, ExclusionReason
from syncd.settle import settle_touched
from syncd.sync import typed_settings

# what a retry did with an entry (``syncd quarantine retry`` counts them)
Status = Literal["logged", "not logged", "still unreadable", "not retryable"]


@dataclass(frozen=True)
class Outcome:
    entry: store.Entry
    status: Status
    detail: str

    @property
    def ok(self) -> bool:
        """The item was read: logged, or deliberately not (bulk mail, private...)."""
        return self.status in ("logged", "not logged")


def why_not_retryable(entry: store.Entry) -> str:
    """Why an entry cannot be retried, and what is left to do about it."""
    if entry.size is None:
        return (
            f"syncd kept no copy of it (it was larger than {RAW_KEPT // (1024 * 1024)} MB, its "
            "connector does not keep one, or it was quarantined before syncd kept copies); "
            f"it can only be read again from the mailbox itself, where it is {entry.provider_id!r}"
        )
    return "no parser was recorded for it (its format is unknown); it stays listed for the record"


def reason_of(exc: BaseException) -> str:
    """An exception as one line fit for the quarantine and for an admin: a parser's own
    message as is, never the SQL or parameters of a database error."""
    if isinstance(exc, DBAPIError):
        orig = exc.orig if exc.orig is not None else exc
        first = str(orig).splitlines()[0] if str(orig) else ""
        return f"the CRM database refused it ({orig.__class__.__name__}: {first[:200]})"
    text = " ".join(str(exc).split())[:300]
    if isinstance(exc, ValueError | ConnectorError) and text:  # written for an admin
        return text
    return f"{exc.__class__.__name__}: {text}" if text else exc.__class__.__name__


class Retrier:
    """Retries entries one by one, each in its own transaction; the CRM index is loaded once
    (only if an entry is read) and learns from every item recorded."""

    def __init__(
        self,
        sessions: sessionmaker[Session],
        settings: Settings,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.sessions = sessions
        self.settings = settings
        self.now = now
        self.index = PassIndex(sessions, settings)

    def retry(self, entries: Sequence[store.Entry]) -> Iterator[Outcome]:
        for entry in entries:
            yield self.retry_one(entry)

    def _context(self, session: Session, entry: store.Entry, now: datetime) -> RereadContext:
        mailbox = session.get(Mailbox, entry.mailbox_id)
        sync = self.settings.sync
        past, future, body = sync.calendar_past_days, sync.calendar_future_days, sync.body
        if mailbox is not None:
            try:
                own = typed_settings(mailbox, self.settings)
            except ConnectorError:
                pass  # read with the config's values; the mailbox's sync names the problem
            else:
                past, future = own.calendar_past_days, own.calendar_future_days
                body = own.body or body
        return RereadContext(
            provider_id=entry.provider_id,
            body_policy=body,
            received=entry.created_at,
            window=(now - timedelta(days=past), now + timedelta(days=future)),
            limits=self.settings.limits,  # a limit raised since is what makes a retry read it
        )

    def retry_one(self, entry: store.Entry) -> Outcome:
        if not entry.retryable or entry.format is None:
            return Outcome(entry, "not retryable", why_not_retryable(entry))
        now = self.now()
        with self.sessions() as session:
            data = store.raw(session, entry.id)
            ctx = self._context(session, entry, now)
            mailbox = session.get(Mailbox, entry.mailbox_id)
        if data is None:
            return Outcome(entry, "not retryable", why_not_retryable(entry))
        if mailbox is not None and (mailbox.settings or {}).get("dropbox"):
            return Outcome(
                entry,
                "not retryable",
                "a dropbox's message is read by the dropbox's rules only as it arrives (its "
                "sender, its forwards, #nocrm): send or forward it to the dropbox again",
            )
        excluded: Counter[ExclusionReason] = Counter()
        try:
            reread = reparse(entry.format, data, ctx)
            decisions = (
                decide(reread.items, self.index.load(reread.items), self.settings, excluded)
                if reread.items
                else []
            )
        except Exception as exc:  # still unreadable (or unmatchable): keep it, say why
            return self._failed(entry, reason_of(exc), now)
        try:
            with self.sessions.begin() as session:
                result = recorder.record_batch(
                    session,
                    mailbox_id=entry.mailbox_id,
                    source=entry.source,
                    decisions=decisions,
                    quarantined=(),
                    cursor=None,  # read outside a pass: no cursor moves
                    body_policy=ctx.body_policy,
                    now=now,
                )
                if decisions:  # as a sync pass settles them
                    settle_touched(session, self.index.get(), decisions)
                if reread.problem:
                    store.failed_again(session, entry.id, reread.problem, now)
                else:
                    store.resolved(session, entry.id, entry.mailbox_id)
        except Exception as exc:  # nothing of it was stored
            self.index.forget()  # what the failed transaction taught the index is void
            return self._failed(entry, reason_of(exc), now)
        return self._outcome(entry, reread, result, excluded)

    def _failed(self, entry: store.Entry, reason: str, now: datetime) -> Outcome:
        with self.sessions.begin() as session:
            store.failed_again(session, entry.id, reason, now)
        return Outcome(entry, "still unreadable", f"{reason} (attempt {entry.attempts + 1})")

    @staticmethod
    def _outcome(
        entry: store.Entry,
        reread: Reread,
        result: recorder.BatchResult,
        excluded: Counter[ExclusionReason],
    ) -> Outcome:
        if reread.problem:
            logged = (
                f"; the rest of it is logged ({len(reread.items)} items)" if reread.items else ""
            )
            return Outcome(
                entry,
                "still unreadable",
                f"{reread.problem} (attempt {entry.attempts + 1}){logged}",
            )
        if result.activity_ids:
            return Outcome(
                entry,
                "logged",
                f"{result.new_activities} new activities, {result.new_sightings} new sightings",
            )
        if excluded:
            reasons = ", ".join(f"{why} ({n})" if n > 1 else why for why, n in excluded.items())
            return Outcome(entry, "not logged", f"read, and not logged by the rules: {reasons}")
        return Outcome(entry, "not logged", "read; it holds nothing to log")
