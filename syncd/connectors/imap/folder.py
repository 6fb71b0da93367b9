"""One IMAP folder as a mail source: its cursor, the sizes of its new messages, their FETCH.

The cursor (:class:`UidCursor`) is UIDVALIDITY + the last UID stored (RFC 3501 §2.3.1.1) +
HIGHESTMODSEQ where the server has CONDSTORE (RFC 7162). A poll of an unchanged folder is
one STATUS command. A changed UIDVALIDITY raises :class:`CursorExpired`: the folder is read
again and item keys keep anything from being logged twice.

New messages are read in groups of at most :data:`MAX_UIDS_PER_COMMAND` UIDs: their
RFC822.SIZE first, so that a message over ``limits.message_bytes`` is quarantined without
its body ever being fetched, then in batches cut by count and by ``limits.batch_bytes``.
syncd only ever sends ``BODY.PEEK`` (it never marks mail as read) and fetches only what the
body policy needs (:func:`~syncd.connectors.imap.parse.fetch_attributes`).
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any

from imapclient import IMAPClient

from syncd.batching import by_size, chunked
from syncd.connectors.base import CursorExpired, MailboxSpec, too_large
from syncd.connectors.imap.parse import (
    fetch_attributes,
    has_calendar_part,
    mail_item,
    provider_id,
)
from syncd.connectors.imap.session import ImapSession
from syncd.items import Batch, Cursor, MailItem, Quarantined

MAX_UIDS_PER_COMMAND = 1000  # keeps a FETCH well under Dovecot's 64 KB command line

Read = MailItem | Quarantined


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


def _batch(read: list[Read], cursor: Cursor) -> Batch[MailItem]:
    return Batch(
        items=tuple(r for r in read if isinstance(r, MailItem)),
        cursor=cursor,
        quarantined=tuple(r for r in read if isinstance(r, Quarantined)),
    )


class ImapFolder:
    """One IMAP folder as a mail source."""

    def __init__(self, session: ImapSession, folder: str, spec: MailboxSpec) -> None:
        self.session = session
        self.folder = folder
        self.name = f"imap:{folder}"
        self.batch_size = min(spec.batch_size, MAX_UIDS_PER_COMMAND)
        self.policy = spec.body_policy
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
        for group in chunked(uids, MAX_UIDS_PER_COMMAND):
            for run, read in self._read_group(group, position.uidvalidity):
                yield _batch(read, position.at(run[-1], final=run[-1] == uids[-1]))

    def _read_group(
        self, group: list[int], uidvalidity: int
    ) -> Iterator[tuple[list[int], list[Read]]]:
        """One command's worth of new UIDs: their sizes, then runs of them cut by count and
        by bytes, each fetched and read when the one before has been taken."""
        sizes: dict[int, int] = self.session.call(
            f"FETCH {self.folder} RFC822.SIZE",
            partial(self._sizes, uids=group, uidvalidity=uidvalidity),
        )
        limit = self.limits.message_bytes
        # what each message holds in memory once fetched; one over the limit is not
        weights = [n if (n := sizes.get(u, 0)) <= limit else 0 for u in group]
        for start, end in by_size(weights, self.batch_size, self.limits.batch_bytes):
            run = group[start:end]
            yield run, self._read_run(run, sizes, uidvalidity)

    def _read_run(self, run: list[int], sizes: dict[int, int], uidvalidity: int) -> list[Read]:
        """Fetch and read the messages of one batch; one over the size limit is quarantined
        without its body being fetched."""
        limit = self.limits.message_bytes
        wanted = [u for u in run if u in sizes and sizes[u] <= limit]
        data: dict[int, Any] = (
            self.session.call(
                f"FETCH {self.folder}",
                partial(self._fetch, uids=wanted, uidvalidity=uidvalidity),
            )
            if wanted
            else {}
        )
        read: list[Read] = []
        for uid in run:
            if sizes.get(uid, 0) > limit:  # its body is never fetched
                pid = provider_id(self.folder, uidvalidity, uid)
                read.append(Quarantined(pid, too_large(sizes[uid], limit)))
            elif uid in data:
                read.append(self._item(uid, data[uid], uidvalidity))
        return read

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

    def _select(self, client: IMAPClient, uidvalidity: int) -> None:
        selected = client.select_folder(self.folder, readonly=True)
        if selected[b"UIDVALIDITY"] != uidvalidity:
            raise CursorExpired(f"UIDVALIDITY of {self.folder!r} changed during the sync")

    def _sizes(self, client: IMAPClient, uids: list[int], uidvalidity: int) -> dict[int, int]:
        """RFC822.SIZE of each message: what it would cost to fetch, before any body is."""
        self._select(client, uidvalidity)
        sizes: dict[int, int] = {}
        for uid, d in client.fetch(uids, [b"RFC822.SIZE"]).items():
            size = d.get(b"RFC822.SIZE")
            sizes[uid] = size if isinstance(size, int) else 0  # unknown: checked once read
        return sizes

    def _fetch(self, client: IMAPClient, uids: list[int], uidvalidity: int) -> dict[int, Any]:
        self._select(client, uidvalidity)
        data: dict[int, Any] = client.fetch(uids, fetch_attributes(self.policy))
        if self.policy != "full":  # invitations need their text/calendar part: whole message
            whole = [u for u, d in data.items() if has_calendar_part(d.get(b"BODYSTRUCTURE"))]
            if whole:
                for uid, d in client.fetch(whole, [b"BODY.PEEK[]"]).items():
                    data[uid][b"BODY[]"] = d[b"BODY[]"]
        return data

    def _item(self, uid: int, d: dict[bytes, Any], uidvalidity: int) -> Read:
        return mail_item(provider_id(self.folder, uidvalidity, uid), d, self.limits)
