"""One IMAP folder as a mail source: its cursor, its new UIDs, and who reads them.

The cursor (:class:`UidCursor`) is UIDVALIDITY + the last UID stored (RFC 3501 §2.3.1.1) +
HIGHESTMODSEQ where the server has CONDSTORE (RFC 7162). A poll of an unchanged folder is
one STATUS command. A changed UIDVALIDITY raises :class:`CursorExpired`: the folder is read
again and item keys keep anything from being logged twice.

New messages are read in groups of UIDs (:mod:`syncd.connectors.imap.fetch`: runs cut by
count and by ``limits.batch_bytes``, each one batch, sizes known before any body is
fetched). :meth:`ImapFolder.digested` hands each batch's items to a digest where they are
read (the historical import's people). A read of at least
:data:`PARALLEL_MIN` new messages is spread over the parse pool
(:mod:`syncd.connectors.parsepool`, ``sync.parse_processes``): groups of :data:`TASK_UIDS`
UIDs or more, smaller toward the end of the folder (:func:`tapered`: the workers end it
together), each fetched and parsed by a worker process on a connection of its own, their
batches
yielded here in UID order with the same cursors as a read in this process, so that the
sync job records them exactly as before. A smaller read (a poll with a few new messages)
stays in this process, where it costs no connection and no hand-over.

Connections: the workers' connections count against ``sync.imap_connections`` like the
passes' own. A parallel read takes, besides its pass's slot, as many of the server's free
slots as it can use, at most :data:`MAX_WORKER_CONNECTIONS` (servers limit connections per
account too: Dovecot allows 10 per user and client address by default, Gmail 15; a mailbox
then holds at most its pass's, its IDLE's and these), and never waits for one: with none
free, the folder is read in this process. Where every worker has a slot, a worker keeps its
connection from one group to its next (a server loads a folder's index for each new
connection: about 0.1 s at 65,000 messages in Dovecot); the read's last groups close theirs,
and a kept one no group takes is closed within ``fetch.KEEP_SECONDS`` (one second) of the
read's end. Otherwise a worker's connection is opened for its group and closed after it.
Either way no more connections are open during a read than its slots. A task whose worker
dies is read again here (nothing lost, nothing twice: batches are yielded once, in order).
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
import uuid
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from imapclient import IMAPClient

from syncd.connectors import parsepool
from syncd.connectors.base import CursorExpired, MailboxSpec
from syncd.connectors.imap import fetch
from syncd.connectors.imap.fetch import (
    MAX_UIDS_PER_COMMAND,
    Digest,
    Group,
    Read,
    Run,
    first_bytes,
    read_in_worker,
    read_runs,
    run_size,
)
from syncd.connectors.imap.session import ImapSession, Slots
from syncd.items import Batch, Cursor, MailItem, Quarantined

log = logging.getLogger("syncd.imap")

PARALLEL_MIN = 1000  # new messages: a read of fewer stays in this process
TASK_UIDS = 500  # UIDs a worker reads in one task at least (on a connection of its own)
TASKS_PER_WORKER = 4  # a large read is cut into about this many tasks a worker, no fewer
DIGESTED_TASK_UIDS = 5000  # UIDs of a task at most when only its digests come back
MAX_WORKER_CONNECTIONS = 4  # connections a parallel read of one folder opens at once


class UidCursor:
    """Where a folder's sync stands, against the folder's STATUS now. Stored as JSON
    ``{"uv": UIDVALIDITY, "uid": the last UID stored, "ms": HIGHESTMODSEQ, "next": UIDNEXT}``,
    where ``ms`` and ``next`` are the folder's as they were when its newest UID was stored
    (before that, what they were at the last complete pass)."""

    def __init__(self, folder: str, stored: dict[str, Any], status: Mapping[bytes, int]) -> None:
        self.folder = folder
        self.stored = stored  # the stored cursor's value; {} before the first pass
        self.uidvalidity = int(status[b"UIDVALIDITY"])
        self.uidnext = int(status[b"UIDNEXT"])
        self.modseq = status.get(b"HIGHESTMODSEQ")

    def check(self) -> None:
        """CursorExpired when the folder's UIDVALIDITY is not the stored one."""
        if self.stored and self.stored["uv"] != self.uidvalidity:
            raise CursorExpired(
                f"UIDVALIDITY of {self.folder!r} changed from {self.stored['uv']} "
                f"to {self.uidvalidity}"
            )

    def unchanged(self) -> bool:
        """Nothing happened since the last complete pass: the same HIGHESTMODSEQ (where the
        server has CONDSTORE) or the same UIDNEXT."""
        stored = self.stored
        return bool(stored) and (
            (self.modseq is not None and stored.get("ms") == self.modseq)
            or stored.get("next") == self.uidnext
        )

    @property
    def last(self) -> int:
        """The last UID stored (0: none yet)."""
        return int(self.stored.get("uid", 0))

    def at(self, uid: int, final: bool) -> Cursor:
        """The cursor once ``uid`` is stored; ``final``: it is the newest UID of this pass,
        so the folder's HIGHESTMODSEQ and UIDNEXT now are stored with it."""
        return Cursor(
            json.dumps(
                {
                    "uv": self.uidvalidity,
                    "uid": uid,
                    "ms": self.modseq if final else self.stored.get("ms"),
                    "next": self.uidnext if final else self.stored.get("next"),
                }
            )
        )


def _batch(read: list[Read], cursor: Cursor, digest: Any) -> Batch[MailItem]:
    return Batch(
        items=tuple(r for r in read if isinstance(r, MailItem)),
        cursor=cursor,
        quarantined=tuple(r for r in read if isinstance(r, Quarantined)),
        digest=digest,
    )


def tapered(uids: list[int], size: int, step: int, workers: int) -> Iterator[list[int]]:
    """The UIDs cut into groups of ``size`` (a whole number of runs of ``step``), smaller
    toward the end: each at most half of what is left for each worker (at least one run),
    so that the workers end a folder together instead of one reading the last large
    group while the others wait. A read in this process cuts the same groups, so it yields
    the same batches as the pool's workers."""
    start = 0
    while start < len(uids):
        left = len(uids) - start
        share = -(-left // (2 * workers * step)) * step  # rounded up to whole runs
        take = max(step, min(size, share))
        yield uids[start : start + take]
        start += take


class ImapFolder:
    """One IMAP folder as a mail source."""

    def __init__(self, session: ImapSession, folder: str, spec: MailboxSpec) -> None:
        self.session = session
        self.folder = folder
        self.name = f"imap:{folder}"
        self.spec = spec
        self.limits = spec.limits
        days = spec.settings.since_days  # --since: a first read starts at this date
        self.since = (datetime.now(UTC) - timedelta(days=days)).date() if days else None

    def estimate(self) -> int | None:
        """The folder's message count (STATUS MESSAGES)."""
        status: dict[bytes, int] = self.session.call(
            f"STATUS {self.folder}", lambda c: c.folder_status(self.folder, ["MESSAGES"])
        )
        return status.get(b"MESSAGES")

    def changes(self, cursor: Cursor | None) -> Iterator[Batch[MailItem]]:
        return self._changes(cursor, None)

    def digested(self, cursor: Cursor | None, digest: Digest) -> Iterator[Batch[MailItem]]:
        """:meth:`changes`, each batch's items handed to ``digest`` where they are read
        (:class:`~syncd.connectors.base.Digests`)."""
        return self._changes(cursor, digest)

    def _changes(self, cursor: Cursor | None, digest: Digest | None) -> Iterator[Batch[MailItem]]:
        stored = json.loads(cursor.value) if cursor else {}
        status = self.session.call(f"STATUS {self.folder}", self._status)
        position = UidCursor(self.folder, stored, status)
        position.check()
        if position.unchanged():
            return  # one STATUS round trip
        last = position.last
        uids: list[int] = self.session.call(
            f"SEARCH {self.folder}", lambda c: self._new_uids(c, last)
        )
        if not uids:
            yield Batch((), position.at(last, final=True))
            return
        for uid, read, digested in self._read(uids, position.uidvalidity, digest):
            yield _batch(read, position.at(uid, final=uid == uids[-1]), digested)

    def _read(self, uids: list[int], uidvalidity: int, digest: Digest | None) -> Iterator[Run]:
        """The runs of the new UIDs, in order: read by the parse pool's workers when there
        are enough of them and a connection slot for at least one worker, else here. Both
        cut the same groups, so they yield the same batches."""
        workers = parsepool.size(self.spec.parse_processes)
        size = self._group_size(len(uids), workers, digest is not None)
        cut = list(tapered(uids, size, run_size(self.spec), workers))
        if workers > 1 and len(uids) >= PARALLEL_MIN:
            with self.session.extra_slots(min(workers, MAX_WORKER_CONNECTIONS)) as slots:
                if slots.taken:
                    yield from self._pooled(cut, uidvalidity, digest, workers, slots)
                    return
        for g in cut:
            yield from read_runs(
                self.session, Group(self.spec, self.folder, uidvalidity, tuple(g), digest)
            )

    def _pooled(
        self,
        cut: list[list[int]],
        uidvalidity: int,
        digest: Digest | None,
        workers: int,
        slots: Slots,
    ) -> Iterator[Run]:
        """The groups read by the parse pool's workers, within ``slots`` connections. Where
        every worker has a slot (``slots`` covers the pool), one group waits for each
        worker that ends one, and a worker keeps its connection for its next group of this
        read, but after the read's last groups (one a worker); the slots go back only once
        every connection kept for the read is closed (``fetch.KEPT_FOR`` after the last
        group that kept one: a fraction of a second), from a timer: the pass goes on."""
        token = uuid.uuid4().hex  # this read's: no other read takes its connections
        kept = len(cut) - workers if slots.taken >= workers else 0
        groups = (
            Group(self.spec, self.folder, uidvalidity, tuple(g), digest, n < kept, token)
            for n, g in enumerate(cut)
        )
        closed_by = 0.0  # when the last connection kept for this read is closed
        complete = False
        try:
            with contextlib.closing(
                parsepool.ordered(
                    read_in_worker,
                    groups,
                    processes=self.spec.parse_processes,
                    in_flight=slots.taken + 1 if kept else slots.taken,
                    rescue=self._rescue,
                    # a worker's own connection refused (a server's cap on connections, a
                    # login limit) is read here, on the pass's own
                    raises=(CursorExpired,),
                )
            ) as results:
                for n, runs in enumerate(results):
                    if n < kept:
                        closed_by = time.monotonic() + fetch.KEPT_FOR
                    yield from runs
            complete = True
        finally:
            if kept and not complete:  # stopped early: groups that kept one ended just now
                closed_by = time.monotonic() + fetch.KEPT_FOR
            slots.until = closed_by

    def _group_size(self, uids: int, workers: int, digested: bool) -> int:
        """UIDs a group (a pool task, on a connection of its own) holds: a whole number of
        runs' worth, so that the batches do not depend on it. Every connection a worker
        opens pays for a login, a SELECT and the server's loading of the folder's index
        (which on a large folder costs more than a FETCH of hundreds of messages), so a
        large read is cut into about
        :data:`TASKS_PER_WORKER` tasks a worker, no smaller than :data:`TASK_UIDS` UIDs and
        no larger than what a task may bring back (``limits.batch_bytes`` of messages cut as
        the first FETCH cuts them; :data:`DIGESTED_TASK_UIDS` with a digest). ``full``
        (whole messages) keeps :data:`TASK_UIDS`."""
        spec = self.spec
        step = run_size(spec)
        if spec.body_policy == "full":
            return min(MAX_UIDS_PER_COMMAND, step * max(1, TASK_UIDS // step))
        most = (
            DIGESTED_TASK_UIDS
            if digested
            else max(TASK_UIDS, spec.limits.batch_bytes // first_bytes(spec.body_policy))
        )
        wanted = max(TASK_UIDS, min(most, uids // (workers * TASKS_PER_WORKER)))
        return step * max(1, wanted // step)

    def _rescue(self, group: Group, reason: str) -> list[Run]:
        """A group a worker could not read: read here."""
        log.warning(
            "mailbox %r: %s: %s; read in the main process instead",
            self.spec.name,
            group.describe(),
            reason,
        )
        return list(read_runs(self.session, group))

    # --- commands, run by the session (retried on a dropped connection) ---------------------

    def _status(self, client: IMAPClient) -> dict[bytes, int]:
        what = ["UIDVALIDITY", "UIDNEXT"] + (["HIGHESTMODSEQ"] if self.session.condstore else [])
        status: dict[bytes, int] = client.folder_status(self.folder, what)
        return status

    def _new_uids(self, client: IMAPClient, after: int) -> list[int]:
        """The UIDs after ``after``; a first read (none yet) from ``--since`` on (SEARCH
        SINCE: the internal date, RFC 3501 6.4.4; what the Date header puts earlier is left
        out by the pass as outside the window)."""
        client.select_folder(self.folder, readonly=True)
        query: list[Any] = ["UID", f"{after + 1}:*"]
        if after == 0 and self.since is not None:
            query += ["SINCE", self.since]
        return sorted(u for u in client.search(query) if u > after)
