"""Storing one batch of a source: its decisions, quarantined items, removals, task states
and the cursor after it, in one transaction with the settling of the conversations it
touched (``syncd.settle``).

The batch's transaction also renews the pass's lease on its mailbox (``syncd.crm.leases``):
a pass that lost it to another commits nothing more.

When the database refuses the batch (one item it cannot take must not stop the mailbox),
the batch is stored again item by item, each in a savepoint: what is refused is
quarantined with its reason, the rest is stored, and the cursor still moves past it.
A database that is away (:class:`~sqlalchemy.exc.OperationalError`) is never an item's
fault: it goes up to the caller.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy.exc import OperationalError, StatementError
from sqlalchemy.orm import Session, sessionmaker

from syncd.crm import recorder
from syncd.crm.leases import Lease
from syncd.crm.skips import Skip
from syncd.decide import PassIndex, describe
from syncd.items import Batch, MailItem, MeetingItem, Quarantined
from syncd.settle import settle_touched

log = logging.getLogger("syncd.sync")

# what the database raises for a value of one item it cannot take
REFUSED = (StatementError, ValueError, OverflowError)

AnyBatch = Batch[MailItem] | Batch[MeetingItem]


@dataclass(frozen=True)
class Target:
    """Where a source's batches go: one source of one mailbox, with its body policy."""

    mailbox: str  # its name, for the log
    mailbox_id: int
    source: str
    body_policy: str
    now: Callable[[], datetime]
    lease: Lease | None = None  # renewed by each batch; lost, the batch is not committed


def record(
    sessions: sessionmaker[Session],
    target: Target,
    batch: AnyBatch,
    decisions: list[recorder.Decision],
    quarantined: list[Quarantined],
    index: PassIndex,
    skipped: Sequence[Skip] = (),
    then: Callable[[Session], object] | None = None,
) -> recorder.BatchResult:
    """Store a batch, settle the conversations it touched, and move the cursor: one
    transaction. Refused, the batch is stored item by item instead (the refused ones are
    added to ``quarantined``). ``skipped``: (provider id, reason) of the items not logged.
    ``then``: more to do in the batch's transaction, after it is stored (a dropbox's
    ``#nocrm``)."""
    try:
        with sessions.begin() as session:
            result = store(session, target, decisions, quarantined, batch, skipped)
            if decisions:  # what was just stored is settled as recorded, not read back
                result.relinked = settle_touched(session, index.get(), decisions, result.stored)
            if then is not None:
                then(session)
            _fence(session, target)
            return result
    except OperationalError:
        raise  # the database itself (locked, gone), not an item
    except REFUSED as exc:
        log.warning(
            "mailbox %r: batch refused (%s); storing it item by item", target.mailbox, describe(exc)
        )
        index.forget()  # what the failed transaction taught the index is void
    with sessions.begin() as session:
        result, kept = store_one_by_one(session, target, batch, decisions, quarantined, skipped)
        if kept:
            result.relinked = settle_touched(session, index.get(), kept)
        if then is not None:
            then(session)
        _fence(session, target)
    return result


def _fence(session: Session, target: Target) -> None:
    """Renew the pass's lease in the batch's transaction (LeaseLost: another pass holds
    the mailbox now, and this batch must not commit)."""
    if target.lease is not None:
        target.lease.fence(session, target.now())


def store(
    session: Session,
    target: Target,
    decisions: Sequence[recorder.Decision],
    quarantined: Sequence[Quarantined],
    batch: AnyBatch | None,
    skipped: Sequence[Skip] = (),
) -> recorder.BatchResult:
    """recorder.record_batch for this source; with ``batch``, also its removals, task
    states and cursor."""
    return recorder.record_batch(
        session,
        mailbox_id=target.mailbox_id,
        source=target.source,
        decisions=decisions,
        quarantined=quarantined,
        cursor=batch.cursor if batch else None,
        body_policy=target.body_policy,
        now=target.now(),
        removed_uids=batch.removed if batch else (),
        task_states=batch.task_states if batch else (),
        skipped=skipped,
    )


def store_one_by_one(
    session: Session,
    target: Target,
    batch: AnyBatch,
    decisions: list[recorder.Decision],
    quarantined: list[Quarantined],
    skipped: Sequence[Skip] = (),
) -> tuple[recorder.BatchResult, list[recorder.Decision]]:
    """Store each decision in a savepoint, quarantine those refused (appended to
    ``quarantined``), then the batch's quarantined items, removals, task states and
    cursor. Returns the totals and the decisions stored."""
    total = recorder.BatchResult()
    kept: list[recorder.Decision] = []
    for d in decisions:
        try:
            with session.begin_nested():
                one = store(session, target, [d], (), None)
        except OperationalError:
            raise
        except REFUSED as exc:
            reason = f"cannot store: {describe(exc)}"
            log.warning("mailbox %r: item %r %s", target.mailbox, d.item.provider_id, reason)
            quarantined.append(Quarantined(d.item.provider_id, reason))
            continue
        kept.append(d)
        total.new_activities += one.new_activities
        total.new_sightings += one.new_sightings
        total.updated_meetings += one.updated_meetings
    rest = store(session, target, [], quarantined, batch, skipped)
    total.new_sightings += rest.new_sightings
    return total, kept
