"""A group of an IMAP folder's new UIDs fetched and read as mail items, in this process or in
a worker of the parse pool (:mod:`syncd.connectors.parsepool`).

A :class:`Group` is what one FETCH command may name (at most :data:`MAX_UIDS_PER_COMMAND`
UIDs) and everything needed to read it anywhere: the mailbox's spec (its settings and its
secret), the folder, and the UIDVALIDITY the main process found. Reading it
(:func:`read_runs`): the RFC822.SIZE of each message first, so that one over
``limits.message_bytes`` is quarantined without its body ever being fetched; then runs of
the group cut by count and by ``limits.batch_bytes`` (each run one batch), each fetched with
only what the body policy needs (:func:`~.parse.fetch_attributes`) and read
(:func:`~.parse.mail_item`). An invitation needs its whole message: BODYSTRUCTURE is asked
in a second FETCH, only for the messages whose first answer cannot rule one out
(:func:`~.parse.needs_structure`), and the whole message of those that hold one in a third.

Every command selects the folder readonly first and checks its UIDVALIDITY against the
group's: a folder rebuilt since the main process read it raises
:class:`~syncd.connectors.base.CursorExpired`, in a worker as in this process. syncd only
ever sends ``BODY.PEEK`` (it never marks mail as read).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial
from typing import Any

from imapclient import IMAPClient

from syncd.batching import by_size
from syncd.connectors.base import CursorExpired, MailboxSpec, too_large
from syncd.connectors.imap.parse import (
    fetch_attributes,
    has_calendar_part,
    mail_item,
    needs_structure,
    provider_id,
)
from syncd.connectors.imap.session import ImapSession
from syncd.items import MailItem, Quarantined

MAX_UIDS_PER_COMMAND = 1000  # keeps a FETCH well under Dovecot's 64 KB command line

Read = MailItem | Quarantined
Run = tuple[int, list[Read]]  # the last UID of a run (a batch) and what was read of it


@dataclass(frozen=True)
class Group:
    """New UIDs of one folder, in order, to be read as runs: a parse pool task."""

    spec: MailboxSpec
    folder: str
    uidvalidity: int
    uids: tuple[int, ...]

    def describe(self) -> str:
        return f"UIDs {self.uids[0]}-{self.uids[-1]} of {self.folder!r}"


def read_runs(session: ImapSession, group: Group) -> Iterator[Run]:
    """The group's runs, each fetched and read when the one before has been taken."""
    folder, uv, uids = group.folder, group.uidvalidity, list(group.uids)
    limits = group.spec.limits
    sizes: dict[int, int] = session.call(
        f"FETCH {folder} RFC822.SIZE", partial(_sizes, folder=folder, uids=uids, uidvalidity=uv)
    )
    limit = limits.message_bytes
    # what each message holds in memory once fetched; one over the limit is not
    weights = [n if (n := sizes.get(u, 0)) <= limit else 0 for u in uids]
    batch_size = min(group.spec.batch_size, MAX_UIDS_PER_COMMAND)
    for start, end in by_size(weights, batch_size, limits.batch_bytes):
        run = uids[start:end]
        yield run[-1], _read_run(session, group, run, sizes)


def read_in_worker(group: Group) -> list[Run]:
    """A parse pool task: the group read on a connection of the worker's own (not counted
    against ``sync.imap_connections`` here: the main process holds a slot for it), opened
    for the task and closed after it."""
    session = ImapSession(group.spec, counted=False)
    try:
        return list(read_runs(session, group))
    finally:
        session.close()


def _read_run(
    session: ImapSession, group: Group, run: list[int], sizes: dict[int, int]
) -> list[Read]:
    """Fetch and read the messages of one run; one over the size limit is quarantined
    without its body being fetched."""
    folder, uv = group.folder, group.uidvalidity
    limits = group.spec.limits
    limit = limits.message_bytes
    wanted = [u for u in run if u in sizes and sizes[u] <= limit]
    data: dict[int, Any] = (
        session.call(
            f"FETCH {folder}",
            partial(
                _fetch, folder=folder, uids=wanted, uidvalidity=uv, policy=group.spec.body_policy
            ),
        )
        if wanted
        else {}
    )
    read: list[Read] = []
    for uid in run:
        pid = provider_id(folder, uv, uid)
        if sizes.get(uid, 0) > limit:  # its body is never fetched
            read.append(Quarantined(pid, too_large(sizes[uid], limit)))
        elif uid in data:
            read.append(mail_item(pid, data[uid], limits))
    return read


# --- commands, run by the session (retried on a dropped connection) -----------------------------


def _select(client: IMAPClient, folder: str, uidvalidity: int) -> None:
    selected = client.select_folder(folder, readonly=True)
    if selected[b"UIDVALIDITY"] != uidvalidity:
        raise CursorExpired(f"UIDVALIDITY of {folder!r} changed during the sync")


def _sizes(client: IMAPClient, folder: str, uids: list[int], uidvalidity: int) -> dict[int, int]:
    """RFC822.SIZE of each message: what it would cost to fetch, before any body is."""
    _select(client, folder, uidvalidity)
    sizes: dict[int, int] = {}
    for uid, d in client.fetch(uids, [b"RFC822.SIZE"]).items():
        size = d.get(b"RFC822.SIZE")
        sizes[uid] = size if isinstance(size, int) else 0  # unknown: checked once read
    return sizes


def _fetch(
    client: IMAPClient, folder: str, uids: list[int], uidvalidity: int, policy: str
) -> dict[int, Any]:
    """What the policy needs of each message; the whole message of an invitation."""
    _select(client, folder, uidvalidity)
    data: dict[int, Any] = client.fetch(uids, fetch_attributes(policy))
    unsure = [u for u, d in data.items() if needs_structure(d, policy)]
    if unsure:
        structures = client.fetch(unsure, [b"BODYSTRUCTURE"])
        whole = [u for u, d in structures.items() if has_calendar_part(d.get(b"BODYSTRUCTURE"))]
        if whole:
            for uid, d in client.fetch(whole, [b"BODY.PEEK[]"]).items():
                if uid in data:
                    data[uid][b"BODY[]"] = d[b"BODY[]"]
    return data
