"""Mail sources of the Microsoft kind: ``graph:inbox`` and ``graph:sentitems``, each read by
message delta (one delta link per folder).

Message delta reads what the body policy needs (``bodyPreview`` for ``snippet``, ``body``
as text for ``full``) and a message's sensitivity as PidTagSensitivity, expanded on the
delta itself (:func:`~syncd.connectors.microsoft.parse.delta_query`). The first sync reads
the messages of the last ``since_days`` days; the next page is fetched while one is
recorded.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlencode

from syncd.connectors.base import ConnectorError, MailboxSpec
from syncd.connectors.kind import typed
from syncd.connectors.microsoft import MicrosoftSettings
from syncd.connectors.microsoft.client import GraphClient
from syncd.connectors.microsoft.parse import delta_query, mail_item, quarantined
from syncd.items import Batch, Cursor, MailItem, Quarantined

FOLDERS = ("inbox", "sentitems")
TEXT_BODY = 'outlook.body-content-type="text"'


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
        self.query = delta_query(self.policy)
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
        if self.policy == "full":
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
