"""The gap audit (``syncd audit``, and the daemon every ``audit.interval_hours``): per mailbox
and folder, what the provider holds up to where syncd's cursor stands, against what syncd
saw of it: logged (a sighting), skipped with a reason (``skips``) or quarantined. What the
provider holds that syncd has no record of is *missing*: the answer to "status says ok but
mail is missing".

The provider's side is the kind's ``holdings`` (:func:`syncd.connectors.registry.holdings`):
IMAP ``UID SEARCH`` up to the cursor's UID, a Maildir's files up to the cursor's file. Items
after the cursor are the next poll's, never gaps. Gmail's and Graph's cursors (a history id,
a delta link) hold no position a listing can be bounded by, so those kinds list by time, in
the window :func:`window` passes them among the cursors under :data:`WINDOW`. syncd's side
is read before the provider is asked, cursors first: a pass that commits meanwhile only adds
to what syncd saw.

Each audit's result is kept per source (``audits``, with the first :data:`LIMIT` missing
ids) and exported as the gauge ``syncd_audit_missing_items{mailbox,folder}``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from prometheus_client import Gauge
from sqlalchemy import delete, select
from sqlalchemy.orm import Session, sessionmaker

from syncd.config import Settings
from syncd.connectors.base import ConnectorError, MailboxSpec
from syncd.connectors.kind import AUDIT_WINDOW as WINDOW
from syncd.connectors.registry import holdings
from syncd.crm.models import (
    AuditResult,
    Mailbox,
    QuarantineEntry,
    Sighting,
    SkippedItem,
    SourceCursor,
)
from syncd.decide import describe
from syncd.items import fit
from syncd.sync import mailbox_spec

log = logging.getLogger("syncd.audit")

LIMIT = 20  # missing ids listed (and kept) per folder
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
    """What syncd recorded of one mailbox: provider ids logged, skipped and quarantined."""

    logged: frozenset[str]
    skipped: frozenset[str]
    quarantined: frozenset[str]


def _seen(session: Session, mailbox_id: int) -> _Seen:
    """Provider ids are unique within a mailbox (they name their folder), so an item
    logged from another source of the mailbox counts too."""

    def ids(column: object, table: type) -> frozenset[str]:
        return frozenset(
            session.scalars(select(column).where(table.mailbox_id == mailbox_id))  # type: ignore[attr-defined, call-overload]
        )

    return _Seen(
        logged=ids(Sighting.provider_id, Sighting),
        skipped=ids(SkippedItem.provider_id, SkippedItem),
        quarantined=ids(QuarantineEntry.provider_id, QuarantineEntry),
    )


def _compare(folder: str, held: list[str], seen: _Seen, limit: int) -> FolderAudit:
    logged = skipped = quarantined = 0
    missing: list[str] = []
    for raw in held:
        pid = fit(raw)
        if pid in seen.logged:
            logged += 1
        elif pid in seen.skipped:
            skipped += 1
        elif pid in seen.quarantined:
            quarantined += 1
        else:
            missing.append(raw)
    return FolderAudit(
        folder, len(held), logged, skipped, quarantined, len(missing), tuple(missing[:limit])
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
        seen = _seen(session, mailbox.id)
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
    except Exception as exc:  # the provider failed: said, and the next audit asks again
        result.error = str(exc) if isinstance(exc, ConnectorError) else describe(exc)
        return result
    if held is None:
        result.audited = False
        return result
    result.folders = [_compare(f, ids, seen, limit) for f, ids in sorted(held.items())]
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
