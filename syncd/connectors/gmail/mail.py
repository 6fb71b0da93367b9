"""The source ``gmail:mail``: Gmail read incrementally by history id.

A first sync lists messages newer than the window (``since_days``) and fetches them raw in
batch requests of up to 100; its cursor remembers the page and the position in it, so a
crash mid-backfill resumes there. Then ``history.list`` from the history id taken before
the backfill; a 404 raises :class:`CursorExpired`. SPAM, TRASH, CHAT and drafts are never
read; a message taken out of Spam or Trash later (a history record removing SPAM or TRASH)
is read then, like a new one, and so is a message the user gives a label of their own (so
that a "CRM" label applied after arrival forces it in). Gmail's threadId is kept as a
second thread key.

Labels: messages carry label *ids*; a user label's id (``Label_12``) is not its name ("No
CRM"). Items carry the names of user labels and the ids of system labels (INBOX, SENT), so
that ``exclusions.labels`` and ``exclusions.force_labels`` match
(:meth:`GmailClient.label_names`).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Generator, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

from syncd.batching import chunked
from syncd.connectors.base import MailboxSpec
from syncd.connectors.gmail import GmailSettings
from syncd.connectors.gmail.client import BATCH, UNITS, GmailClient, expiring
from syncd.connectors.gmail.parse import never_read, read_message, to_read
from syncd.connectors.kind import typed
from syncd.items import Batch, Cursor, MailItem, Quarantined

# history record types read: new mail, and label changes that can make a message loggable
HISTORY_TYPES = ["messageAdded", "labelAdded", "labelRemoved"]
PAGE = 500  # ids a page of messages.list or history.list holds

Read = tuple[list[MailItem], list[Quarantined], int]  # items, quarantined, ids covered


def _cursor(state: dict[str, Any]) -> Cursor:
    return Cursor(json.dumps(state))


class GmailMail:
    """All mail but Spam, Trash, Chat and drafts (see the module's docstring)."""

    name = "gmail:mail"

    def __init__(self, client: GmailClient, spec: MailboxSpec) -> None:
        self.client = client
        self.spec = spec
        self.batch_size = max(BATCH, spec.batch_size // BATCH * BATCH)
        self.since = timedelta(days=typed(spec.settings, GmailSettings).since_days)

    # --- reading messages ---------------------------------------------------------------------

    def _read_one(
        self, message_id: str, message: dict[str, Any] | None
    ) -> tuple[MailItem | Quarantined | None, int]:
        """(the item, why it is quarantined, or None when it is not read; raw bytes held)."""
        if message is None or never_read(message):
            return None, 0
        read, length = read_message(message_id, message, self.spec.limits)
        if isinstance(read, MailItem):
            read = dataclasses.replace(
                read, labels=self.client.label_names(message.get("labelIds", []))
            )
        return read, length

    def _read(self, ids: list[str]) -> Iterator[tuple[int, MailItem | Quarantined | None, int]]:
        """Each of ``ids`` in order: (its position, what it gave, the raw bytes it held).
        A batch request asks for as many messages as the batch bytes hold at the size of
        the largest of the previous request (at most 100): Gmail's listing carries no
        sizes, and asking for them costs as much quota as the messages."""
        budget = self.spec.limits.batch_bytes
        start, per_request = 0, BATCH
        while start < len(ids):
            chunk = ids[start : start + per_request]
            raw = self.client.fetch_raw(chunk)
            largest = 0
            for n, message_id in enumerate(chunk, start=start):
                read, length = self._read_one(message_id, raw.pop(message_id, None))
                largest = max(largest, length)  # each reply let go once it is read
                yield n, read, length
            start += len(chunk)
            # a request's replies are held at once, in base64 (4/3 of the message) about three
            # times over (the HTTP body, its parts, the JSON): as many as fit the batch bytes
            per_request = max(1, min(BATCH, budget // max(4 * largest, 1)))

    def _items(self, ids: list[str]) -> Iterator[Read]:
        """Read ``ids`` in order: (items, quarantined, how many of ``ids`` they cover), each
        time the raw bytes read reach ``limits.batch_bytes`` (before the next request goes
        out) and once at the end (so at least once). A message over
        ``limits.message_bytes`` is quarantined unread, by the length of its ``raw``."""
        budget = self.spec.limits.batch_bytes
        items: list[MailItem] = []
        quarantined: list[Quarantined] = []
        held = 0  # raw bytes read since the last yield
        for n, read, length in self._read(ids):
            if isinstance(read, Quarantined):
                quarantined.append(read)
            elif read is not None:
                items.append(read)
            held += length
            if held >= budget and n + 1 < len(ids):  # the batch holds enough
                yield items, quarantined, n + 1
                items, quarantined, held = [], [], 0
        yield items, quarantined, len(ids)

    # --- the passes ---------------------------------------------------------------------------

    def estimate(self) -> int | None:
        """The mailbox's message count (``users.getProfile`` messagesTotal)."""
        users = self.client.gmail.users()
        profile = self.client.execute(UNITS["getProfile"], lambda: users.getProfile(userId="me"))
        total = profile.get("messagesTotal")
        return int(total) if total is not None else None

    def changes(self, cursor: Cursor | None) -> Iterator[Batch[MailItem]]:
        state = json.loads(cursor.value) if cursor else {}
        if "h" not in state or state.get("backfill"):
            state = yield from self._backfill(state)
        yield from self._history(str(state["h"]))

    def _backfill(self, state: dict[str, Any]) -> Generator[Batch[MailItem], None, dict[str, Any]]:
        """The messages newer than the window, page by page; the cursor holds the page and
        how many of its ids are read. Returns the state history goes on from."""
        users = self.client.gmail.users()
        if "h" not in state:  # the history id comes first: what changes meanwhile is kept
            profile = self.client.execute(
                UNITS["getProfile"], lambda: users.getProfile(userId="me")
            )
            state = {"h": profile["historyId"], "backfill": True, "page": None, "skip": 0}
        after = int((datetime.now(UTC) - self.since).timestamp())
        skip = int(state.get("skip", 0))
        for page, listing in self.client.pages(
            UNITS["list"],
            users.messages().list,
            state.get("page"),
            userId="me",
            q=f"after:{after}",
            maxResults=PAGE,
        ):
            ids = [str(m["id"]) for m in listing.get("messages", [])]
            done = skip
            for chunk in chunked(ids[skip:], self.batch_size):
                for items, quarantined, covered in self._items(chunk):
                    state = {**state, "page": page, "skip": done + covered}
                    yield Batch(tuple(items), _cursor(state), tuple(quarantined))
                done += len(chunk)
            skip = 0
        state = {"h": state["h"]}  # the backfill is complete: history from here on
        yield Batch((), _cursor(state))
        return state

    def _history_ids(self, start: str) -> tuple[str, list[str]]:
        """(the latest history id, the messages to read since ``start``, once each)."""
        added: list[str] = []
        latest = start
        users = self.client.gmail.users()
        pages = self.client.pages(
            UNITS["history"],
            users.history().list,
            userId="me",
            startHistoryId=start,
            historyTypes=HISTORY_TYPES,
            maxResults=PAGE,
        )
        for _page, response in expiring(pages, 404, f"Gmail history id {start} is too old"):
            for record in response.get("history", []):
                added.extend(to_read(record, self.client.is_user_label))
            latest = str(response.get("historyId", latest))
        return latest, list(dict.fromkeys(added))

    def _history(self, start: str) -> Iterator[Batch[MailItem]]:
        """What changed since history id ``start``; only the batch that ends the delta
        carries the latest history id, so a crash between two reads the delta again."""
        latest, ids = self._history_ids(start)
        if latest == start and not ids:
            return
        done = 0
        for chunk in list(chunked(ids, self.batch_size)) or [[]]:
            for items, quarantined, covered in self._items(chunk):
                final = done + covered >= len(ids)
                yield Batch(
                    tuple(items), _cursor({"h": latest if final else start}), tuple(quarantined)
                )
            done += len(chunk)
