"""Mail sources of the Microsoft kind: ``graph:inbox`` and ``graph:sentitems``, each read by
message delta (one delta link per folder).

Message delta reads what the body policy needs (``bodyPreview`` for ``snippet``, ``body``
as text for ``full``) and a message's sensitivity as PidTagSensitivity, expanded on the
delta itself (:func:`~syncd.connectors.microsoft.parse.delta_query`). The first sync reads
the messages of the last ``since_days`` days; the next page is fetched while one is
recorded.

A dropbox (``syncd.dropbox``; its limits a ``ReadLimits`` with ``keep_raw``) needs each
message's bytes, to unpack the forwards in them: each message a delta page gives is read
whole, as MIME (``GET /users/{id}/messages/{id}/$value``, "Get MIME content of a message"),
three at a time beside the prefetch (the mailbox's four slots), and parsed as every MIME
connector parses mail (:func:`syncd.connectors.mime.read_message`), its item keeping the
bytes, Graph's ``conversationId``, categories and sensitivity. One over
``limits.message_bytes`` is quarantined unread (by its Content-Length, else once that much
is read), one that cannot be read with its bytes (``rfc822``); none stops the batch.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote, urlencode

from syncd.config import ReadLimits
from syncd.connectors.base import ConnectorError, MailboxSpec
from syncd.connectors.kind import typed
from syncd.connectors.microsoft import MicrosoftSettings
from syncd.connectors.microsoft.client import MAX_IN_FLIGHT, GraphClient, ItemRefused, TooLarge
from syncd.connectors.microsoft.parse import delta_query, is_private, mail_item, quarantined
from syncd.connectors.mime import read_message
from syncd.items import Batch, Cursor, MailItem, Quarantined
from syncd.limits import OverLimit, size

FOLDERS = ("inbox", "sentitems")
TEXT_BODY = 'outlook.body-content-type="text"'
MIME_READERS = MAX_IN_FLIGHT - 1  # $value downloads at once: every slot but the prefetch's


@dataclass(frozen=True)
class _Read:
    """What one delta page gave: the items to log, and those quarantined."""

    items: tuple[MailItem, ...]
    held: tuple[Quarantined, ...]


class GraphMail:
    """One mail folder by message delta; the cursor is the next or delta link, and which
    query made it (a changed body policy, or an older syncd's query, reads the folder again:
    the links carry the query they were made with)."""

    def __init__(self, client: GraphClient, spec: MailboxSpec, folder: str) -> None:
        self.client, self.spec, self.folder = client, spec, folder
        self.name = f"graph:{folder}"
        settings = typed(spec.settings, MicrosoftSettings)
        self.page = settings.page_size or max(10, min(spec.batch_size, 1000))
        self.since = timedelta(days=settings.since_days)
        self.policy = spec.body_policy
        # a dropbox's: each message read whole, as MIME, its item keeping the bytes (so the
        # delta itself needs no body)
        self.whole = isinstance(spec.limits, ReadLimits) and spec.limits.keep_raw
        self.query = delta_query("metadata" if self.whole else self.policy)
        self.query_id = hashlib.sha256(urlencode(self.query).encode()).hexdigest()[:16]

    def _first_link(self) -> str:
        # no $filter on receivedDateTime: Graph caps a filtered delta at 5,000 messages; the
        # window is applied here instead, so a busy mailbox loses nothing of it
        return self.client.user_url(
            f"/mailFolders/{self.folder}/messages/delta?{urlencode(self.query)}"
        )

    def estimate(self) -> int | None:
        """The folder's message count (``totalItemCount`` of the mailFolder)."""
        url = self.client.user_url(f"/mailFolders/{self.folder}?$select=totalItemCount")
        _, answer = self.client.request("GET", url)
        total = answer.get("totalItemCount")
        return int(total) if total is not None else None

    def changes(self, cursor: Cursor | None) -> Iterator[Batch[MailItem]]:
        state = json.loads(cursor.value) if cursor else {}
        if state.get("query") != self.query_id:
            state = {}
        link = state.get("link") or self._first_link()
        synced = bool(state.get("synced"))
        floor = None if synced else datetime.now(UTC) - self.since
        prefer = [f"odata.maxpagesize={self.page}"]
        if self.policy == "full" and not self.whole:
            prefer.append(TEXT_BODY)  # a header: not carried in the links, sent every time
        headers = {"Prefer": ", ".join(prefer)}
        # the next page is fetched while this one is parsed and recorded (two of the
        # mailbox's four slots at most): the network wait and the CRM's work overlap
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="graph-prefetch") as pool:
            ahead = pool.submit(self.client.request, "GET", link, headers=headers)
            try:
                yield from self._pages(ahead, pool, headers, floor, synced)
            finally:
                ahead.cancel()

    def _pages(
        self,
        ahead: Future[tuple[int, Any]],
        pool: ThreadPoolExecutor,
        headers: dict[str, str],
        floor: datetime | None,
        synced: bool,
    ) -> Iterator[Batch[MailItem]]:
        while True:
            _, page = ahead.result()
            following = page.get("@odata.nextLink")
            if following:
                ahead = pool.submit(self.client.request, "GET", following, headers=headers)
            read = self._read(page.get("value", []), floor)
            final = page.get("@odata.deltaLink")
            state = self._state(following, final, synced)
            # a quiet poll (an empty last page of a synced folder) stores nothing
            if read.items or read.held or not (synced and final and not page.get("value")):
                yield Batch(read.items, Cursor(json.dumps(state)), read.held)
            if not following:
                return

    def _state(self, following: str | None, final: str | None, synced: bool) -> dict[str, Any]:
        """The cursor after a page: its next link, or the delta link once the folder is read."""
        if following:
            return {"link": following, "synced": synced, "query": self.query_id}
        if final:
            return {"link": final, "synced": True, "query": self.query_id}
        raise ConnectorError(f"{self.client.where()}: a delta page without a link")

    def _read(self, messages: list[Any], floor: datetime | None) -> _Read:
        """A page's messages: drafts, moves and deletions skipped (what was logged stays
        logged), those sent before ``floor`` (the first sync's window) left out, the
        unreadable quarantined."""
        if self.whole:
            return self._read_whole(messages, floor)
        items: list[MailItem] = []
        held: list[Quarantined] = []
        for message in messages:
            if not isinstance(message, dict):
                held.append(quarantined(message, "not a Graph message", "graph-message"))
            elif "@removed" in message or message.get("isDraft"):
                continue
            else:
                try:
                    item = mail_item(message, self.policy, limits=self.spec.limits)
                except ValueError as exc:
                    held.append(quarantined(message, str(exc), "graph-message"))
                    continue
                if floor is None or item.sent_at >= floor:
                    items.append(item)
        return _Read(tuple(items), tuple(held))

    # --- a dropbox: messages read whole, as MIME ----------------------------------------------

    def _read_whole(self, messages: list[Any], floor: datetime | None) -> _Read:
        """A dropbox's page: as :meth:`_read`, but each message read as MIME (``$value``),
        those before ``floor`` left out by their Graph dates before anything is downloaded
        (and by their own Date after)."""
        wanted: list[dict[str, Any]] = []
        held: list[Quarantined] = []
        for message in messages:
            if not isinstance(message, dict) or not message.get("id"):
                held.append(quarantined(message, "not a Graph message", "graph-message"))
            elif "@removed" in message or message.get("isDraft"):
                continue
            elif floor is None or (_graph_date(message) or floor) >= floor:
                wanted.append(message)
        items: list[MailItem] = []
        with ThreadPoolExecutor(MIME_READERS, thread_name_prefix="graph-mime") as readers:
            for message, data in zip(wanted, readers.map(self._download, wanted), strict=True):
                read = self._mime_item(message, data)
                if isinstance(read, Quarantined):
                    held.append(read)
                elif floor is None or read.sent_at >= floor:
                    items.append(read)
        return _Read(tuple(items), tuple(held))

    def _download(self, message: dict[str, Any]) -> bytes | Quarantined:
        """A message's MIME content (``GET /users/{id}/messages/{id}/$value``), or why it
        cannot be read: over ``limits.message_bytes`` (unread), or refused by Graph."""
        provider_id = str(message["id"])
        url = self.client.user_url(f"/messages/{quote(provider_id, safe='')}/$value")
        limit = self.spec.limits.message_bytes
        try:
            return self.client.download(url, limit)
        except TooLarge as exc:
            found = f"the message is {'' if exc.whole else 'over '}{size(exc.size)}"
            return Quarantined(provider_id, str(OverLimit("message_bytes", found, size(limit))))
        except ItemRefused as exc:
            return Quarantined(provider_id, f"its MIME content cannot be read: {exc}")

    def _mime_item(
        self, message: dict[str, Any], data: bytes | Quarantined
    ) -> MailItem | Quarantined:
        """The item of a message's MIME, keeping its bytes (the limits' ``keep_raw``), with
        what Graph knows beside it: ``conversationId`` (the thread key the JSON path keeps),
        the categories (labels) and PidTagSensitivity (a private message stays private, and
        if it cannot be read its content is not kept)."""
        if isinstance(data, Quarantined):
            return data
        provider_id = str(message["id"])
        private = is_private(message)
        when = _graph_date(message) or datetime.now(UTC)
        read = read_message(data, provider_id, when, limits=self.spec.limits)
        if isinstance(read, Quarantined):
            if private:
                reason = f"{read.reason} (marked private: its content is not kept)"
                return Quarantined(provider_id, reason)
            return read
        labels = tuple(str(c) for c in message.get("categories") or ())
        return dataclasses.replace(
            read,
            provider_thread_id=message.get("conversationId") or read.provider_thread_id,
            private=read.private or private,
            labels=labels or read.labels,
        )


def _graph_date(message: dict[str, Any]) -> datetime | None:
    """A Graph message's ``sentDateTime``, else its ``receivedDateTime`` (None: neither)."""
    for key in ("sentDateTime", "receivedDateTime"):
        try:
            stamp = datetime.fromisoformat(str(message.get(key) or "").replace("Z", "+00:00"))
        except ValueError:
            continue
        return stamp if stamp.tzinfo else stamp.replace(tzinfo=UTC)
    return None
