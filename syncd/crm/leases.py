"""Mailbox leases: one pass of a mailbox at a time, whoever runs it.

A pass (``syncd sync``, a thread of ``syncd run``, a ``syncd worker`` on another machine)
first takes its mailbox's lease: one conditional UPDATE that succeeds only when nobody
holds it, or its holder let it run out. The lease lasts ``sync.lease_seconds`` and is
renewed by every batch the pass commits: :meth:`Lease.fence` runs inside the batch's own
transaction and refuses to commit it (:class:`LeaseLost`) when another pass took the
mailbox meanwhile (this one stalled past its lease). So two passes never both move a
mailbox's cursor. A holder that died (SIGKILL, a lost machine) is replaced once its lease
has run out; one on this machine whose process is gone is replaced at once (a restarted
``syncd run`` need not wait). Time is each machine's clock: keep them in step (NTP;
``syncd doctor`` checks it).
"""

from __future__ import annotations

import os
import socket
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session

from syncd.crm.models import Mailbox


class LeaseLost(Exception):
    """Another pass holds the mailbox now: what this one has in hand is not committed."""


def new_owner() -> str:
    """A holder's name: the machine and process (for an admin reading ``syncd status``),
    and a random part that tells two passes of one process apart."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def _dead_here(holder: str) -> bool:
    """Whether ``holder`` was a process of this machine that is gone (killed, crashed): its
    lease need not run out before a restarted syncd takes the mailbox back."""
    host, _, rest = holder.partition(":")
    pid = rest.partition(":")[0]
    if host != socket.gethostname() or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except OSError:  # alive, under another user
        return False
    return False


@dataclass(frozen=True)
class Lease:
    mailbox_id: int
    owner: str
    seconds: float
    mailbox: str = ""  # its name, for the messages

    def acquire(self, session: Session, now: datetime) -> str | None:
        """Take the lease; None when taken, else the name of the one who holds it."""
        done = session.execute(
            update(Mailbox)
            .where(
                Mailbox.id == self.mailbox_id,
                or_(
                    Mailbox.lease_owner.is_(None),
                    Mailbox.lease_owner == self.owner,
                    Mailbox.lease_until.is_(None),
                    Mailbox.lease_until < now,
                ),
            )
            .values(lease_owner=self.owner, lease_until=now + timedelta(seconds=self.seconds))
        )
        if done.rowcount:  # type: ignore[attr-defined]
            return None
        holder = session.scalar(select(Mailbox.lease_owner).where(Mailbox.id == self.mailbox_id))
        if holder and _dead_here(holder) and self._take_from(session, holder, now):
            return None
        return holder or "another pass"

    def _take_from(self, session: Session, holder: str, now: datetime) -> bool:
        """Take the lease of a holder known to be dead (only if it still holds it)."""
        done = session.execute(
            update(Mailbox)
            .where(Mailbox.id == self.mailbox_id, Mailbox.lease_owner == holder)
            .values(lease_owner=self.owner, lease_until=now + timedelta(seconds=self.seconds))
        )
        return bool(done.rowcount)  # type: ignore[attr-defined]

    def fence(self, session: Session, now: datetime) -> None:
        """Renew the lease inside the transaction about to commit; LeaseLost when this pass
        no longer holds it (the transaction must then roll back)."""
        done = session.execute(
            update(Mailbox)
            .where(Mailbox.id == self.mailbox_id, Mailbox.lease_owner == self.owner)
            .values(lease_until=now + timedelta(seconds=self.seconds))
        )
        if not done.rowcount:  # type: ignore[attr-defined]
            raise LeaseLost(
                f"mailbox {self.mailbox or self.mailbox_id!r}: another pass took it over (this "
                f"one held it longer than sync.lease_seconds = {self.seconds:g} without "
                "committing); raise sync.lease_seconds if a batch takes that long"
            )

    def release(self, session: Session) -> None:
        """Give the lease back (only if still held by this pass)."""
        session.execute(
            update(Mailbox)
            .where(Mailbox.id == self.mailbox_id, Mailbox.lease_owner == self.owner)
            .values(lease_owner=None, lease_until=None)
        )
