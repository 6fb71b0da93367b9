"""The Outlook address book of a Microsoft mailbox: ``graph:contacts``, the contacts the user
saved in their default Contacts folder, read by contact delta through the mailbox's
:class:`~.client.GraphClient` (its tokens, slots, retries and refusals).

Graph documents contact delta per folder only (``/users/{id}/contactFolders/{id}/contacts
/delta``, contact-delta.md; ``/contacts/delta`` is undocumented), so the default folder's id
is read first from ``/users/{id}/contacts``, "the default contacts folder" (the
``parentFolderId`` of one of its contacts; a folder with none has nothing to read yet).
Each delta page is one batch carrying its ``@odata.nextLink``, the last one the
``@odata.deltaLink`` (a pass stopped between pages goes on from the page it reached, as
the mail and calendar deltas do); a contact deleted since is ``@removed``. The properties
are those of Graph's ``contact`` (msgraph-sdk's model): displayName, givenName, surname,
emailAddresses (name, address) and companyName. A delta token Graph no longer knows (410
``syncStateNotFound``) is :class:`CursorExpired`, raised by the client, and the book is read
whole again. It needs the permission ``Contacts.Read``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote, urlencode

from syncd.connectors.base import ConnectorError, MailboxSpec
from syncd.connectors.contacts import Card, CardBatch, card
from syncd.connectors.kind import typed
from syncd.connectors.microsoft import MicrosoftSettings
from syncd.connectors.microsoft.client import GraphClient
from syncd.items import Cursor

# the properties read; a cursor made with others reads the folder again (the links carry
# the $select they were made with)
SELECT = "displayName,givenName,surname,emailAddresses,companyName"


class GraphContacts:
    """The default Contacts folder by contact delta; the cursor is the next or delta link
    (``delta``: which of the two)."""

    name = "graph:contacts"

    def __init__(self, client: GraphClient, spec: MailboxSpec) -> None:
        self.client = client
        settings = typed(spec.settings, MicrosoftSettings)
        self.page = settings.page_size or max(10, min(spec.batch_size, 1000))

    def _folder(self) -> str | None:
        """The default Contacts folder's id, from one of its contacts; None when empty."""
        query = urlencode({"$top": 1, "$select": "parentFolderId"})
        _, found = self.client.request("GET", self.client.user_url(f"/contacts?{query}"))
        first = (found.get("value") or [{}])[0]
        return str(first["parentFolderId"]) if first.get("parentFolderId") else None

    def changes(self, cursor: Cursor | None) -> Iterator[CardBatch]:
        state = json.loads(cursor.value) if cursor and cursor.value else {}
        stored = state.get("link") if state.get("select") == SELECT else None
        link = stored
        if not link:
            folder = self._folder()
            if folder is None:
                return
            path = f"/contactFolders/{quote(folder, safe='')}/contacts/delta"
            link = self.client.user_url(f"{path}?{urlencode({'$select': SELECT})}")
        headers = {"Prefer": f"odata.maxpagesize={self.page}"}
        while link:
            _, page = self.client.request("GET", link, headers=headers)
            cards, removed = _read(page.get("value") or [])
            following = page.get("@odata.nextLink")
            after = following or page.get("@odata.deltaLink")
            if not after:
                raise ConnectorError(f"{self.client.where()}: a contacts delta page without a link")
            # a quiet poll (the stored delta link's own page, empty and last) stores
            # nothing; any other last page stores its delta link, or the page before it
            # would be asked again at every pass
            quiet = link == stored and bool(state.get("delta"))
            if cards or removed or following or not quiet:
                kept = {"link": after, "select": SELECT, "delta": following is None}
                yield CardBatch(cards, Cursor(json.dumps(kept)), removed)
            link = following


def _read(contacts: list[Any]) -> tuple[tuple[Card, ...], tuple[str, ...]]:
    """A page's cards, and the ids of the contacts removed since."""
    cards: list[Card] = []
    removed: list[str] = []
    for contact in contacts:
        if not isinstance(contact, dict) or not contact.get("id"):
            continue
        if "@removed" in contact:
            removed.append(str(contact["id"]))
            continue
        found = card(
            str(contact["id"]),
            str(contact.get("displayName") or ""),
            [
                str((e or {}).get("address") or "")
                for e in contact.get("emailAddresses") or []
                if isinstance(e, dict)
            ],
            str(contact.get("givenName") or ""),
            str(contact.get("surname") or ""),
            str(contact.get("companyName") or ""),
        )
        if found is not None:
            cards.append(found)
    return tuple(cards), tuple(removed)
