"""Past mail and meetings logged on request (``syncd import mail --since DATE``): the same
pass as the daemon's (:class:`syncd.sync.SyncJob` with ``past=``), over the sync window
widened back to the date, with its own cursors (``past:<source>``, so the daemon's are never
moved) and without the follow-up rules or the task write-back (no task for a conversation
of last year). What was logged already is not logged again (items are keyed); what is older
than the date is left out; the mailbox's state is left to the daemon.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from datetime import datetime

from syncd.connectors.base import MailboxSpec
from syncd.items import Batch, MailItem, MeetingItem

PREFIX = "past:"
MAX_DAYS = 3650  # the widest calendar window a kind's settings take


def widen(spec: MailboxSpec, since: datetime, now: datetime) -> MailboxSpec:
    """The spec with its windows reaching back to ``since``: the calendar's past days, and
    the first-sync window of a kind that has one (Gmail, Graph: ``since_days``)."""
    days = min(MAX_DAYS, max(1, (now - since).days + 1))
    update: dict[str, int] = {"calendar_past_days": max(days, spec.settings.calendar_past_days)}
    if "since_days" in type(spec.settings).model_fields:
        update["since_days"] = days
    return replace(spec, settings=spec.settings.model_copy(update=update))


def _when(item: MailItem | MeetingItem) -> datetime:
    return item.sent_at if isinstance(item, MailItem) else item.start


def within(
    batches: Iterator[Batch[MailItem]] | Iterator[Batch[MeetingItem]], since: datetime
) -> Iterator[Batch[MailItem] | Batch[MeetingItem]]:
    """The batches with the items older than ``since`` left out (their cursors unchanged)."""
    for batch in batches:
        kept = tuple(i for i in batch.items if _when(i) >= since)
        yield batch if len(kept) == len(batch.items) else replace(batch, items=kept)  # type: ignore[arg-type]
