"""The Google People address books of a Gmail mailbox: ``gpeople:contacts``, the contacts
the user saved (``people.connections.list`` of ``people/me``), and ``gpeople:other-contacts``,
the "Other contacts" Google made from the user's interactions (``otherContacts.list``).

Both are read through the mailbox's :class:`~.client.GmailClient` (its credentials, retries
and refusals), with the People service built from the discovery document that ships with
google-api-python-client, at the People endpoint (``https://people.googleapis.com/``, or the
one beside a custom ``api_endpoint``, as Calendar's is). They need the scopes
``contacts.readonly`` and ``contacts.other.readonly``.

Each book is read whole with ``requestSyncToken``, then incrementally with the
``nextSyncToken`` of the last page [people.v1.json]; one page (up to 1,000 people) is one
batch, and only the last batch carries the new cursor (a pass stopped before it reads the
book again from its last token). A person deleted since comes back with
``metadata.deleted``: a removal. A token Google no longer takes (they "expire 7 days after
the full sync"; refused with 400 and reason ``EXPIRED_SYNC_TOKEN``) is
:class:`CursorExpired` and the book is read whole again.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from functools import partial
from typing import Any

from googleapiclient.errors import HttpError

from syncd.connectors.base import AuthError, CursorExpired, refused
from syncd.connectors.contacts import AddressBook, Card, CardBatch, card
from syncd.connectors.gmail.client import GmailClient
from syncd.connectors.gmail.signin import CONTACT_SCOPES
from syncd.items import Cursor

PAGE = 1000  # people a page holds, at most [pageSize in people.v1.json]
# the fields each book is asked for; a cursor made with other fields is not continued (a
# sync token must be used with the parameters of the call that made it)
CONTACT_FIELDS = "names,emailAddresses,organizations"
OTHER_FIELDS = "names,emailAddresses"  # otherContacts' readMask takes no organizations


def _reason(exc: HttpError) -> tuple[str, str]:
    """(the ErrorInfo reasons, the message) of a Google error answer, in lower case."""
    try:
        error = json.loads(exc.content or b"{}").get("error", {})
    except ValueError:
        return "", ""
    reasons = " ".join(str(d.get("reason", "")) for d in error.get("details") or [])
    return reasons.lower(), str(error.get("message", "")).lower()


class _Call:
    """One People request for :meth:`GmailClient.execute`, whose refusals that mean
    something here are raised as such: an expired sync token is CursorExpired, a token
    without the contacts scopes a refused sign-in naming them (neither is retried)."""

    def __init__(self, book: _Book, make: Callable[[], Any]) -> None:
        self.book, self.make = book, make

    def execute(self) -> Any:
        try:
            return self.make().execute()
        except HttpError as exc:
            reasons, message = _reason(exc)
            status = exc.resp.status
            if status == 400 and ("expired_sync_token" in reasons or "sync token" in message):
                raise CursorExpired(f"{self.book.where()}: the sync token expired") from None
            if status == 403 and ("scope" in reasons or "scopes" in message):
                raise self.book.unscoped() from None
            raise


class _Book:
    """One People listing by sync token; the subclasses say which."""

    name: str
    fields: str

    def __init__(self, client: GmailClient, service: Any) -> None:
        self.client, self.service = client, service

    def where(self) -> str:
        return f"mailbox {self.client.spec.name!r}: Google People ({self.name})"

    def unscoped(self) -> AuthError:
        return refused(
            self.client.spec.name,
            f"{self.where()}: access denied (403: the sign-in lacks the contacts scopes)",
            "grant " + " and ".join(CONTACT_SCOPES),
        )

    def request(self, **query: Any) -> Any:
        raise NotImplementedError

    def people(self, response: dict[str, Any]) -> list[dict[str, Any]]:
        raise NotImplementedError

    def changes(self, cursor: Cursor | None) -> Iterator[CardBatch]:
        state = json.loads(cursor.value) if cursor and cursor.value else {}
        token = state.get("token") if state.get("fields") == self.fields else None
        hold = cursor or Cursor("")
        query: dict[str, Any] = {"pageSize": PAGE, "requestSyncToken": True}
        if token:
            query["syncToken"] = token
        page = None
        while True:
            make = partial(self.request, pageToken=page, **query)
            response = self.client.execute(0, partial(_Call, self, make))  # People's own quota
            cards, removed = self._read(self.people(response))
            page = response.get("nextPageToken")
            if page:
                yield CardBatch(cards, hold, removed)
                continue
            after = response.get("nextSyncToken")
            done = {"token": after, "fields": self.fields} if after else state
            yield CardBatch(cards, Cursor(json.dumps(done)) if done else hold, removed)
            return

    @staticmethod
    def _read(people: list[dict[str, Any]]) -> tuple[tuple[Card, ...], tuple[str, ...]]:
        """A page's cards, and the resource names of the people deleted since."""
        cards: list[Card] = []
        removed: list[str] = []
        for person in people:
            resource = str(person.get("resourceName") or "")
            if not resource:
                continue
            if (person.get("metadata") or {}).get("deleted"):
                removed.append(resource)
                continue
            name = _primary(person.get("names"))
            found = card(
                resource,
                str(name.get("displayName") or ""),
                [str(e.get("value") or "") for e in person.get("emailAddresses") or []],
                str(name.get("givenName") or ""),
                str(name.get("familyName") or ""),
                str(_primary(person.get("organizations")).get("name") or ""),
            )
            if found is not None:
                cards.append(found)
        return tuple(cards), tuple(removed)


def _primary(values: Any) -> dict[str, Any]:
    """The field value the person marks primary, else the first; {} when there is none."""
    values = [v for v in values or [] if isinstance(v, dict)]
    marked = [v for v in values if (v.get("metadata") or {}).get("primary")]
    return (marked or values or [{}])[0]


class GoogleContacts(_Book):
    """The contacts the user saved: ``people.connections.list`` of ``people/me``."""

    name = "gpeople:contacts"
    fields = CONTACT_FIELDS

    def request(self, **query: Any) -> Any:
        return (
            self.service.people()
            .connections()
            .list(resourceName="people/me", personFields=self.fields, **query)
        )

    def people(self, response: dict[str, Any]) -> list[dict[str, Any]]:
        return list(response.get("connections") or [])


class GoogleOtherContacts(_Book):
    """The user's "Other contacts": ``otherContacts.list``."""

    name = "gpeople:other-contacts"
    fields = OTHER_FIELDS

    def request(self, **query: Any) -> Any:
        return self.service.otherContacts().list(readMask=self.fields, **query)

    def people(self, response: dict[str, Any]) -> list[dict[str, Any]]:
        return list(response.get("otherContacts") or [])


def people_books(client: GmailClient, endpoint: str | None = None) -> list[AddressBook]:
    """The mailbox's two People address books, at ``endpoint`` (by default beside the
    mailbox's ``api_endpoint``: People's base is the same shape as Gmail's)."""
    base = endpoint or client.endpoint.replace("gmail.googleapis.com", "people.googleapis.com")
    service = client._build("people", "v1", base, client.http_for(CONTACT_SCOPES))
    return [GoogleContacts(client, service), GoogleOtherContacts(client, service)]
