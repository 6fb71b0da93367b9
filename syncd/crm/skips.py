"""The ``skips`` rows: items a pass read and did not log, with why (an exclusion rule, or a
copy of an item the mailbox logged from another folder). With the sightings and the
quarantine, they are what ``syncd audit`` counts as seen. Written by the recorder, in the
batch's transaction."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from syncd.batching import chunked
from syncd.crm.models import SkippedItem
from syncd.crm.rows import IN_LIMIT, insert_rows, one_of
from syncd.items import fit

COPY = "a copy of an item this mailbox logged"

Skip = tuple[str, str, str]  # an item not logged: its provider id, why, and its key


def stored_key(key: str) -> str:
    """The key a skip keeps: only a hash of it (a Message-ID may name a domain that was
    forgotten, ``syncd forget``, and a skipped message may be skipped for any reason);
    ``syncd explain`` hashes the key it looks for the same way."""
    fitted = fit(key)
    return "hash:" + hashlib.sha256(fitted.encode("utf-8", "surrogatepass")).hexdigest()[:40]


def add(
    session: Session,
    mailbox_id: int,
    source: str,
    skipped: Sequence[Skip],
    now: datetime,
) -> None:
    """(provider id, reason, key) of the items of this source read and not logged: once
    each (the first reason stays). The key (``mid:`` and the Message-ID, ``ical:`` and the
    UID) is what ``syncd explain`` finds a message by."""
    wanted: dict[str, tuple[str, str]] = {}
    for provider_id, reason, key in skipped:
        wanted.setdefault(fit(provider_id), (reason[:200], stored_key(key)))
    if not wanted:
        return
    for chunk in chunked(list(wanted), IN_LIMIT):
        for known in session.scalars(
            select(SkippedItem.provider_id).where(
                SkippedItem.mailbox_id == mailbox_id,
                SkippedItem.source == source,
                one_of(session, SkippedItem.provider_id, chunk),
            )
        ):
            wanted.pop(known, None)
    if wanted:
        insert_rows(
            session,
            SkippedItem,
            [
                {
                    "mailbox_id": mailbox_id,
                    "source": source,
                    "provider_id": pid,
                    "reason": reason,
                    "key": key,
                    "seen_at": now,
                }
                for pid, (reason, key) in wanted.items()
            ],
        )
