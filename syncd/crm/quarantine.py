"""Reads and writes of the quarantine: the items a connector could not read, each with its
reason and, when it was small enough, the bytes as read (``raw``) and the parser that reads
them (``format``), so that ``syncd quarantine retry`` can read it again after an upgrade.

The entries are added with the batch that met them (:func:`add_entries`, called by
:func:`syncd.crm.recorder.record_batch`), listed and read for ``syncd quarantine``, and
dropped or kept with a new reason after a retry.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypedDict

from sqlalchemy import delete, func, insert, select, update
from sqlalchemy.orm import Session

from syncd.batching import chunked
from syncd.crm.models import ForgottenDigest, Mailbox, QuarantineEntry
from syncd.crm.rows import IN_LIMIT, clean
from syncd.items import RAW_KEPT, Quarantined, fit
from syncd.matching.forgotten import forgotten_in


class QuarantineRow(TypedDict):
    """One entry in ``syncd quarantine list`` (and ``show``)."""

    id: int
    mailbox: str
    source: str
    provider_id: str
    reason: str  # the connector's or parser's own words: anything, one line
    format: str | None  # the parser that reads ``raw`` again (rfc822, ical, ...)
    size: int | None
    retryable: bool
    attempts: int
    created_at: str
    updated_at: str | None


@dataclass(frozen=True)
class Entry:
    """One quarantined item, without its bytes (they may be megabytes: see :func:`raw`)."""

    id: int
    mailbox: str
    mailbox_id: int
    source: str
    provider_id: str
    reason: str
    format: str | None
    size: int | None  # bytes kept; None when none were
    attempts: int
    created_at: datetime
    updated_at: datetime | None

    @property
    def retryable(self) -> bool:
        return self.size is not None and self.format is not None

    def as_dict(self) -> QuarantineRow:
        return {
            "id": self.id,
            "mailbox": self.mailbox,
            "source": self.source,
            "provider_id": self.provider_id,
            "reason": self.reason,
            "format": self.format,
            "size": self.size,
            "retryable": self.retryable,
            "attempts": self.attempts,
            "created_at": self.created_at.isoformat(),
            "updated_at": self.updated_at.isoformat() if self.updated_at else None,
        }


def add_entries(
    session: Session, mailbox_id: int, source: str, entries: Sequence[Quarantined], now: datetime
) -> None:
    """The items the connector could not read, each kept once per (mailbox, source, id)."""
    if not entries:
        return
    # ids as stored (fitted): an id too long or holding a NUL is compared by its hash
    ids = {fit(q.provider_id): q for q in entries}
    have = {
        provider_id
        for chunk in chunked(ids, IN_LIMIT)
        for provider_id in session.scalars(
            select(QuarantineEntry.provider_id).where(
                QuarantineEntry.mailbox_id == mailbox_id,
                QuarantineEntry.source == source,
                QuarantineEntry.provider_id.in_(chunk),
            )
        )
    }
    new = [(provider_id, q) for provider_id, q in ids.items() if provider_id not in have]
    digests = set(session.scalars(select(ForgottenDigest.digest))) if new else set()
    rows = [
        {
            "mailbox_id": mailbox_id,
            "source": source,
            "provider_id": provider_id,
            "created_at": now,
            "format": q.format,
            "attempts": 1,
            "updated_at": now,
            **_kept(q, digests),
        }
        for provider_id, q in new
    ]
    if rows:
        session.execute(insert(QuarantineEntry), rows)


def _kept(q: Quarantined, digests: set[str]) -> dict[str, Any]:
    """The reason and bytes kept of an item: none of the bytes of one that holds a
    forgotten address or domain (``syncd forget``), which its reason never names."""
    raw = q.raw if q.raw is not None and len(q.raw) <= RAW_KEPT else None
    reason = clean(q.reason) or ""
    if digests:
        for word in forgotten_in(reason, digests):
            reason = reason.replace(word, "[forgotten]")
        if raw is not None and forgotten_in(raw.decode("utf-8", "replace"), digests):
            raw = None
    return {"reason": reason, "raw": raw}


def _query() -> Any:
    return (
        select(
            QuarantineEntry.id,
            Mailbox.name,
            QuarantineEntry.mailbox_id,
            QuarantineEntry.source,
            QuarantineEntry.provider_id,
            QuarantineEntry.reason,
            QuarantineEntry.format,
            func.length(QuarantineEntry.raw),
            QuarantineEntry.attempts,
            QuarantineEntry.created_at,
            QuarantineEntry.updated_at,
        )
        .join(Mailbox, Mailbox.id == QuarantineEntry.mailbox_id)
        .order_by(QuarantineEntry.id)
    )


def _entry(row: Any) -> Entry:
    return Entry(
        id=row[0],
        mailbox=row[1],
        mailbox_id=row[2],
        source=row[3],
        provider_id=row[4],
        reason=row[5],
        format=row[6],
        size=None if row[7] is None else int(row[7]),
        attempts=row[8] or 1,
        created_at=row[9],
        updated_at=row[10],
    )


def entries(
    session: Session, mailbox: str | None = None, ids: Sequence[int] | None = None
) -> list[Entry]:
    """The entries, oldest first: all, one mailbox's, or those with these ids."""
    query = _query()
    if mailbox is not None:
        query = query.where(Mailbox.name == mailbox)
    if ids is not None:
        query = query.where(QuarantineEntry.id.in_(list(ids)))
    return [_entry(row) for row in session.execute(query)]


def raw(session: Session, entry_id: int) -> bytes | None:
    """The bytes kept of an entry (None when none were)."""
    value = session.scalar(select(QuarantineEntry.raw).where(QuarantineEntry.id == entry_id))
    return bytes(value) if value is not None else None


def counts(session: Session) -> dict[str, int]:
    """Mailbox name -> how many of its items are quarantined (only those with some)."""
    return {
        name: int(n)
        for name, n in session.execute(
            select(Mailbox.name, func.count(QuarantineEntry.id))
            .join(QuarantineEntry, QuarantineEntry.mailbox_id == Mailbox.id)
            .group_by(Mailbox.name)
        )
    }


def resolved(session: Session, entry_id: int, mailbox_id: int) -> None:
    """The item was read again and recorded: drop its entry, and have the follow-up rules
    run at the mailbox's next pass (the item may call for a task)."""
    session.execute(delete(QuarantineEntry).where(QuarantineEntry.id == entry_id))
    session.execute(update(Mailbox).where(Mailbox.id == mailbox_id).values(followups_at=None))


def failed_again(session: Session, entry_id: int, reason: str, now: datetime) -> None:
    """A retry could not read the item either: keep the entry with the new reason."""
    session.execute(
        update(QuarantineEntry)
        .where(QuarantineEntry.id == entry_id)
        .values(
            reason=clean(reason) or "unreadable",
            attempts=func.coalesce(QuarantineEntry.attempts, 1) + 1,
            updated_at=now,
        )
    )
