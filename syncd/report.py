"""What one sync pass of one mailbox did: :class:`SyncReport`, as ``syncd sync``, the daemon
and the tests read it (``syncd.sync`` fills it; the task write-back adds its own part)."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from syncd.crm.models import MailboxState, WriterState
from syncd.items import ExclusionReason


@dataclass
class SyncReport:
    mailbox: str
    state: MailboxState = "ok"
    error: str | None = None
    new_activities: int = 0
    new_sightings: int = 0
    quarantined: int = 0
    excluded: Counter[ExclusionReason] = field(default_factory=Counter)
    updated: int = 0  # meetings changed or removed, task states read back
    contacts_added: int = 0  # new people saved in the user's address books (contacts.sync)
    tasks_changed: int = 0
    tasks_written: int = 0
    writer_state: WriterState = "ok"  # the task write-back's own (a calendar may refuse it)
    writer_error: str | None = None
    stopped: bool = False  # asked to stop (SIGTERM): the mailbox is left as it was
    yielded: bool = False  # its time budget ran out: the rest is read by the next pass
    busy: str | None = None  # another pass (named) holds the mailbox: nothing was done

    @property
    def ok(self) -> bool:
        return self.state == "ok"
