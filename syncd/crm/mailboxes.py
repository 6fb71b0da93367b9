"""Writes of mailbox rows: a mailbox added, removed, resumed or given new credentials
(``syncd mailbox ...``), and the state a sync pass leaves it in: its own
(:func:`mark_mailbox`), its task write-back's (:func:`mark_writer`) and when the follow-up
rules last ran for its user (:func:`mark_followups`).

What a batch adds to a mailbox (its cursors, how many items it logged) is written with the
batch, by :func:`syncd.crm.recorder.record_batch`; the reports read mailboxes in
:mod:`syncd.crm.reports`.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import delete, update
from sqlalchemy.orm import Session

from syncd.crm.models import Mailbox, MailboxState, WriterState


def add_mailbox(
    session: Session,
    *,
    name: str,
    kind: str,
    user_id: int,
    settings: dict[str, Any],
    secret_token: str | None = None,
) -> Mailbox:
    """``secret_token`` is already encrypted (syncd.secrets): clear text never gets here."""
    mailbox = Mailbox(
        name=name,
        kind=kind,
        user_id=user_id,
        settings=settings,
        secret=secret_token,
        state="ok",
        failures=0,
        items_logged=0,
    )
    session.add(mailbox)
    session.flush()
    return mailbox


def remove_mailbox(session: Session, name: str) -> bool:
    """Disconnect a mailbox (its cursors, sightings and quarantine go with it; its
    activities stay). False when there is no such mailbox."""
    removed = session.execute(delete(Mailbox).where(Mailbox.name == name))
    return bool(removed.rowcount)  # type: ignore[attr-defined]


def resume_mailbox(session: Session, name: str) -> bool:
    """Retry a parked or failing mailbox at the next poll. False when there is none."""
    done = session.execute(
        update(Mailbox)
        .where(Mailbox.name == name)
        .values(state="ok", failures=0, last_attempt=None)
    )
    return bool(done.rowcount)  # type: ignore[attr-defined]


def store_secret(session: Session, name: str, secret_token: str) -> bool:
    """A mailbox's new credentials (already encrypted), retried at the next poll."""
    done = session.execute(
        update(Mailbox)
        .where(Mailbox.name == name)
        .values(secret=secret_token, state="ok", failures=0, last_attempt=None)
    )
    return bool(done.rowcount)  # type: ignore[attr-defined]


def mark_mailbox(
    session: Session,
    mailbox_id: int,
    *,
    state: MailboxState,
    now: datetime,
    error: str | None,
    caught_up: datetime | None = None,
) -> None:
    """The state a pass leaves the mailbox in; failures in a row lengthen the wait before
    its next poll (syncd.daemon). ``caught_up``: the start of a pass that read everything
    (one that yielded its turn has more to read)."""
    mailbox = session.get(Mailbox, mailbox_id)
    assert mailbox is not None
    mailbox.last_attempt = now
    mailbox.state = state
    mailbox.last_error = error
    if caught_up is not None:
        mailbox.caught_up_at = caught_up
    if state == "ok":
        mailbox.last_success = now
        mailbox.failures = 0
    else:
        mailbox.failures = (mailbox.failures or 0) + 1


def mark_writer(
    session: Session, mailbox_id: int, *, state: WriterState, now: datetime, error: str | None
) -> None:
    """The task write-back's own state; it never changes the mailbox's."""
    session.execute(
        update(Mailbox)
        .where(Mailbox.id == mailbox_id)
        .values(writer_state=state, writer_error=error, writer_at=now)
    )


def mark_followups(session: Session, mailbox_id: int, now: datetime) -> None:
    """When the follow-up rules last looked at this mailbox's user."""
    session.execute(update(Mailbox).where(Mailbox.id == mailbox_id).values(followups_at=now))
