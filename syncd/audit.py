"""The gap audit (``syncd audit``, and the daemon every ``audit.interval_hours``): per mailbox
and folder, what the provider holds up to where syncd's cursor stands, against what syncd
saw of it: logged (a sighting), skipped with a reason (``skips``) or quarantined. What the
provider holds that syncd has no record of is *missing*: the answer to "status says ok but
mail is missing".

The provider's side is the kind's ``holdings`` (:func:`syncd.connectors.registry.holdings`):
IMAP ``UID SEARCH`` up to the cursor's UID, a Maildir's files up to the cursor's file. Items
after the cursor are the next poll's, never gaps. Gmail's and Graph's cursors (a history id,
a delta link) hold no position a listing can be bounded by, so those kinds list by time, in
the window :func:`window` passes them among the cursors under :data:`WINDOW`.

Memory stays flat in the mailbox's size: the provider lists in chunks (IMAP a window of
UIDs, a Maildir its listing as it is read, Gmail and Graph their pages), and syncd's records
are looked up :data:`CHUNK` held ids at a time, one query a table (the id as
:func:`syncd.items.fit` stores it, among the chunk's), in a short read of its own.

The cursors are read first, the records after the provider has listed what they bound: every
item up to a cursor was recorded in the transaction that moved the cursor there, so it is
found. A pass that commits meanwhile moves cursors past the listing's bounds and adds
records; it never takes one away, so a later look-up only finds more, and an item is never
reported missing wrongly. A retry of a quarantined item moves it to the logged or skipped
(its entry dropped in the same transaction): the tables are read quarantine first, then
skips, then sightings, so whichever side of that commit each query falls on, the item is
found in one of them.

Each audit's result is kept per source (``audits``, with the first :data:`LIMIT` missing
ids) and exported as the gauge ``syncd_audit_missing_items{mailbox,folder}``.
"""

from __future__ import annotations

import heapq
import logging
from collections.abc import Callable
from contextlib import closing
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from prometheus_client import Gauge
from sqlalchemy import delete, select
from sqlalchemy.orm import InstrumentedAttribute, Session, sessionmaker

from syncd.config import Settings
from syncd.connectors.base import ConnectorError, MailboxSpec
from syncd.connectors.kind import AUDIT_WINDOW as WINDOW
from syncd.connectors.registry import Held, holdings
from syncd.crm.models import (
    AuditResult,
    Mailbox,
    QuarantineEntry,
    Sighting,
    SkippedItem,
    SourceCursor,
)
from syncd.crm.rows import one_of
from syncd.decide import describe
from syncd.items import fit
from syncd.sync import mailbox_spec

log = logging.getLogger("syncd.audit")

LIMIT = 20  # missing ids listed (and kept) per folder
CHUNK = 5000  # held ids looked up in syncd's records at once (one query a table)
# a backfill's floor is "now - since_days" when its last pass ran, a little after that
# pass's start: the window starts this much later, so it never reaches mail never meant to
# be read
WINDOW_MARGIN = timedelta(hours=1)
MISSING = Gauge(
    "syncd_audit_missing_items",
    "Items the provider holds up to syncd's cursor that syncd has no record of (last audit).",
    ["mailbox", "folder"],
)


@dataclass(frozen=True)
class FolderAudit:
    folder: str  # the source's name (imap:INBOX, maildir:INBOX)
    held: int  # what the provider holds up to the cursor
    logged: int
    skipped: int
    quarantined: int
    missing: int
    missing_ids: tuple[str, ...]  # the first ``limit``


@dataclass
class MailboxAudit:
    mailbox: str
    folders: list[FolderAudit] = field(default_factory=list)
    error: str | None = None  # why the provider could not be asked
    audited: bool = True  # False: the kind cannot list what it holds

    @property
    def missing(self) -> int:
        return sum(f.missing for f in self.folders)


@dataclass(frozen=True)
class _Seen:
    """What syncd recorded of a chunk of held ids: those logged, skipped and quarantined."""

    logged: frozenset[str]
    skipped: frozenset[str]
    quarantined: frozenset[str]


def _seen(session: Session, mailbox_id: int, ids: list[str]) -> _Seen:
    """Of ``ids`` (as stored), those the mailbox's records hold. Provider ids are unique
    within a mailbox (they name their folder), so an item logged from another source of the
    mailbox counts too. Quarantine first, sightings last: see the module's docstring."""

    def found(
        mailbox: InstrumentedAttribute[int], pid: InstrumentedAttribute[str]
    ) -> frozenset[str]:
        return frozenset(
            session.scalars(select(pid).where(mailbox == mailbox_id, one_of(session, pid, ids)))
        )

    quarantined = found(QuarantineEntry.mailbox_id, QuarantineEntry.provider_id)
    skipped = found(SkippedItem.mailbox_id, SkippedItem.provider_id)
    logged = found(Sighting.mailbox_id, Sighting.provider_id)
    return _Seen(logged=logged, skipped=skipped, quarantined=quarantined)


class _Tally:
    """One folder's audit as its chunks are compared: the counts, and the first ``limit``
    missing ids (in the order the provider lists them; smallest first for a listing in no
    order, whatever order it came in)."""

    def __init__(self, folder: str, ordered: bool, limit: int) -> None:
        self.folder, self.ordered, self.limit = folder, ordered, limit
        self.pending: list[str] = []  # held ids not looked up yet
        self.held = self.logged = self.skipped = self.quarantined = self.missing = 0
        self.missing_ids: list[str] = []

    def compare(self, sessions: sessionmaker[Session], mailbox_id: int, *, rest: bool) -> None:
        """Look up the pending ids :data:`CHUNK` at a time (``rest``: the last of them too)."""
        while len(self.pending) >= CHUNK or (rest and self.pending):
            raw, self.pending = self.pending[:CHUNK], self.pending[CHUNK:]
            pids = [fit(r) for r in raw]
            with sessions() as session:
                seen = _seen(session, mailbox_id, sorted(set(pids)))
            self._count(raw, pids, seen)

    def _count(self, raw: list[str], pids: list[str], seen: _Seen) -> None:
        missing: list[str] = []
        for one, pid in zip(raw, pids, strict=True):
            if pid in seen.logged:
                self.logged += 1
            elif pid in seen.skipped:
                self.skipped += 1
            elif pid in seen.quarantined:
                self.quarantined += 1
            else:
                missing.append(one)
        self.held += len(raw)
        self.missing += len(missing)
        if self.ordered:
            self.missing_ids.extend(missing[: self.limit - len(self.missing_ids)])
        elif missing:
            self.missing_ids = heapq.nsmallest(self.limit, [*self.missing_ids, *missing])

    def result(self) -> FolderAudit:
        return FolderAudit(
            self.folder,
            self.held,
            self.logged,
            self.skipped,
            self.quarantined,
            self.missing,
            tuple(self.missing_ids),
        )


def window(spec: MailboxSpec, caught_up_at: datetime | None) -> str | None:
    """The time window a kind with ``since_days`` (Gmail, Graph: a first sync of the last
    ``since_days``, then a history or delta; IMAP given ``--since``: a first read from that
    date) is audited in: up to ``caught_up_at``, the
    start of the mailbox's last pass that read everything (what the provider held before it
    was in the history or delta that pass read to its end; a cursor's own update time is no
    bound: a message can arrive between the read and the commit), from ``since_days``
    before it, plus :data:`WINDOW_MARGIN`. None for other kinds and before a complete pass."""
    days = spec.settings.since_days
    if caught_up_at is None or days is None:
        return None
    lower = caught_up_at - timedelta(days=days) + WINDOW_MARGIN
    return f"{lower.isoformat()}/{caught_up_at.isoformat()}"


def audit_mailbox(
    sessions: sessionmaker[Session], settings: Settings, name: str, limit: int = LIMIT
) -> MailboxAudit:
    """One mailbox's audit (nothing stored: :func:`audit` stores it)."""
    result = MailboxAudit(name)
    with sessions() as session:
        mailbox = session.scalar(select(Mailbox).where(Mailbox.name == name))
        if mailbox is None:
            raise LookupError(f"no mailbox named {name!r}; see 'syncd mailbox list'")
        cursors = {
            c.source: c.value
            for c in session.scalars(
                select(SourceCursor).where(SourceCursor.mailbox_id == mailbox.id)
            )
        }
        mailbox_id = mailbox.id
        try:
            spec = mailbox_spec(mailbox, settings)
        except Exception as exc:  # a secret or settings that do not open: the pass says so too
            result.error = str(exc)
            return result
        bounds = window(spec, mailbox.caught_up_at)
        if bounds is not None:
            cursors[WINDOW] = bounds
    try:
        held = holdings(spec, cursors)
    except Exception as exc:  # the kind failed to start: said, and the next audit asks again
        result.error = str(exc) if isinstance(exc, ConnectorError) else describe(exc)
        return result
    if held is None:
        result.audited = False
        return result
    tallies: dict[str, _Tally] = {}
    with closing(held):
        while True:
            try:
                chunk: Held | None = next(held, None)
            except Exception as exc:  # the provider failed: said, and the next audit asks again
                result.error = str(exc) if isinstance(exc, ConnectorError) else describe(exc)
                return result
            if chunk is None:
                break
            tally = tallies.get(chunk.source)
            if tally is None:
                tally = tallies[chunk.source] = _Tally(chunk.source, chunk.ordered, limit)
            tally.pending.extend(chunk.ids)
            tally.compare(sessions, mailbox_id, rest=False)
    for tally in tallies.values():
        tally.compare(sessions, mailbox_id, rest=True)
    result.folders = [tallies[f].result() for f in sorted(tallies)]
    return result


def audit(
    sessions: sessionmaker[Session],
    settings: Settings,
    names: list[str],
    now: datetime,
    limit: int = LIMIT,
    stop: Callable[[], bool] = lambda: False,
) -> list[MailboxAudit]:
    """Audit these mailboxes, keep each result and set the gauge; ``stop()`` is asked
    before each mailbox (the daemon stopping)."""
    results = []
    for name in names:
        if stop():
            break
        result = audit_mailbox(sessions, settings, name, limit)
        results.append(result)
        if result.error is not None:
            log.warning("audit of mailbox %r failed: %s", name, result.error)
            continue
        if not result.audited:
            continue
        _store(sessions, result, now, limit)
        for f in result.folders:
            MISSING.labels(mailbox=name, folder=f.folder).set(f.missing)
            if f.missing:
                log.warning(
                    "mailbox %r folder %r: %d item(s) the provider holds were never logged, "
                    "skipped or quarantined (first: %s); run 'syncd audit %s'",
                    name,
                    f.folder,
                    f.missing,
                    ", ".join(f.missing_ids[:3]),
                    name,
                )
    return results


def _store(
    sessions: sessionmaker[Session], result: MailboxAudit, now: datetime, limit: int
) -> None:
    with sessions.begin() as session:
        mailbox_id = session.scalar(select(Mailbox.id).where(Mailbox.name == result.mailbox))
        if mailbox_id is None:
            return  # removed meanwhile
        session.execute(delete(AuditResult).where(AuditResult.mailbox_id == mailbox_id))
        rows = result.folders or [FolderAudit("", 0, 0, 0, 0, 0, ())]  # "" : nothing read yet
        for f in rows:
            session.add(
                AuditResult(
                    mailbox_id=mailbox_id,
                    source=f.folder,
                    audited_at=now,
                    held=f.held,
                    logged=f.logged,
                    skipped=f.skipped,
                    quarantined=f.quarantined,
                    missing=f.missing,
                    missing_ids=[fit(i) for i in f.missing_ids[:limit]],
                )
            )


def run_due(
    sessions: sessionmaker[Session],
    settings: Settings,
    now: datetime,
    stop: Callable[[], bool] = lambda: False,
) -> list[MailboxAudit]:
    """The audits due now (for the daemon): every mailbox that has read everything once
    (``caught_up_at``), is not parked, and was last audited ``audit.interval_hours`` ago
    or never. ``audit.interval_hours = 0`` turns them off."""
    hours = settings.audit.interval_hours
    if hours == 0:
        return []
    every = timedelta(hours=hours)
    with sessions() as session:
        candidates = session.execute(
            select(Mailbox.id, Mailbox.name).where(
                Mailbox.caught_up_at.is_not(None), Mailbox.state != "parked"
            )
        ).all()
        last: dict[int, datetime] = {}
        for mailbox_id, when in session.execute(
            select(AuditResult.mailbox_id, AuditResult.audited_at)
        ):
            last[mailbox_id] = min(when, last.get(mailbox_id, when))
    due = [name for mailbox_id, name in candidates if _due(last.get(mailbox_id), now, every)]
    return audit(sessions, settings, sorted(due), now, stop=stop)


def _due(last: datetime | None, now: datetime, every: timedelta) -> bool:
    return last is None or not (timedelta(0) <= now - last < every)
