"""CardDAV address books (RFC 6352) of an IMAP user: the people they saved.

Found from the server's root as every client finds them: ``current-user-principal``
(RFC 5397), then ``addressbook-home-set``, then the collections under it whose resource type
is ``addressbook``. Each book is read incrementally with sync-collection (RFC 6578): the
changed resources' hrefs and the removed ones, then their vCards with
``addressbook-multiget`` in chunks; an answer the server cut short (507, RFC 6578 §3.6) is
followed by the rest. A sync token the server refuses (RFC 6578 3.2, the
``DAV:valid-sync-token`` precondition: 403 or 409) is :class:`CursorExpired` and the book is
read again whole. vCards are read by ``vobject`` (:mod:`syncd.connectors.contacts`).

WebDAV is spoken with ``requests`` and the standard library's ElementTree (the ``caldav``
library has no CardDAV, and turns every 403 into a refused login).
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Iterator
from urllib.parse import unquote, urljoin, urlparse

import requests

from syncd.batching import chunked
from syncd.connectors.base import ConnectorError, CursorExpired, refused
from syncd.connectors.contacts import Card, CardBatch, cards_from_vcard
from syncd.connectors.transport import check_url, mask_secret, mask_urls
from syncd.items import Cursor

DAV = "DAV:"
CARD = "urn:ietf:params:xml:ns:carddav"
NS = {"d": DAV, "c": CARD}

_PRINCIPAL = (
    '<?xml version="1.0" encoding="utf-8"?><d:propfind xmlns:d="DAV:">'
    "<d:prop><d:current-user-principal/></d:prop></d:propfind>"
)
_HOME = (
    '<?xml version="1.0" encoding="utf-8"?>'
    '<d:propfind xmlns:d="DAV:" xmlns:c="urn:ietf:params:xml:ns:carddav">'
    "<d:prop><c:addressbook-home-set/></d:prop></d:propfind>"
)
_BOOKS = (
    '<?xml version="1.0" encoding="utf-8"?><d:propfind xmlns:d="DAV:">'
    "<d:prop><d:resourcetype/><d:displayname/></d:prop></d:propfind>"
)


MAX_CONTINUATIONS = 1000  # answers cut short followed in one pass; the next pass goes on


def _sync_body(token: str | None) -> str:
    return (
        '<?xml version="1.0" encoding="utf-8"?><d:sync-collection xmlns:d="DAV:">'
        f"<d:sync-token>{_escape(token or '')}</d:sync-token><d:sync-level>1</d:sync-level>"
        "<d:prop><d:getetag/></d:prop></d:sync-collection>"
    )


def _multiget_body(hrefs: list[str]) -> str:
    refs = "".join(f"<d:href>{_escape(h)}</d:href>" for h in hrefs)
    return (
        '<?xml version="1.0" encoding="utf-8"?>'
        '<c:addressbook-multiget xmlns:d="DAV:" xmlns:c="urn:ietf:params:xml:ns:carddav">'
        f"<d:prop><d:getetag/><c:address-data/></d:prop>{refs}</c:addressbook-multiget>"
    )


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


class CardDav:
    """The CardDAV side of a mailbox: a root URL, a login and the mailbox's password."""

    def __init__(
        self, name: str, url: str, login: str, password: str, timeout: float, batch_size: int
    ) -> None:
        check_url(url, f"mailbox {name!r}: --carddav")
        self.name = name
        self.url = url
        self.password = password
        self.batch_size = batch_size
        self.timeout = timeout
        self.http = requests.Session()
        self.http.auth = (login, password)

    def where(self) -> str:
        return f"mailbox {self.name!r}: CardDAV {self.url}"

    def request(self, method: str, url: str, body: str, depth: str) -> requests.Response:
        headers = {"Content-Type": "application/xml; charset=utf-8", "Depth": depth}
        try:
            response = self.http.request(
                method, url, data=body.encode(), headers=headers, timeout=self.timeout
            )
        except requests.RequestException as exc:
            raise ConnectorError(
                f"{self.where()}: {mask_urls(mask_secret(str(exc), self.password))}"
            ) from exc
        if response.status_code == 401:
            raise refused(self.name, f"{self.where()} refused the login", "set the right password")
        return response

    def multistatus(self, method: str, url: str, body: str, depth: str) -> ET.Element:
        response = self.request(method, url, body, depth)
        if response.status_code != 207:
            raise ConnectorError(
                f"{self.where()}: {method} {urlparse(url).path} answered "
                f"{response.status_code} {response.reason}"
            )
        return self.xml(response)

    def xml(self, response: requests.Response) -> ET.Element:
        """A multistatus answer parsed; one that is not XML is the server's error."""
        try:
            return ET.fromstring(response.content)
        except ET.ParseError as exc:
            raise ConnectorError(f"{self.where()}: the server's answer is not XML: {exc}") from exc

    def _href(self, url: str, body: str, prop: str) -> str | None:
        tree = self.multistatus("PROPFIND", url, body, "0")
        found = tree.find(f".//{prop}/d:href", NS)
        return urljoin(url, found.text.strip()) if found is not None and found.text else None

    def books(self) -> list[CardDavBook]:
        principal = self._href(self.url, _PRINCIPAL, "d:current-user-principal") or self.url
        home = self._href(principal, _HOME, "c:addressbook-home-set") or principal
        tree = self.multistatus("PROPFIND", home, _BOOKS, "1")
        found = []
        for response in tree.findall("d:response", NS):
            href = response.findtext("d:href", "", NS).strip()
            if response.find(".//d:resourcetype/c:addressbook", NS) is not None and href:
                found.append(CardDavBook(self, urljoin(home, href)))
        return found

    def close(self) -> None:
        self.http.close()


class CardDavBook:
    """One address book, read with sync-collection."""

    def __init__(self, dav: CardDav, url: str) -> None:
        self.dav = dav
        self.url = url
        self.name = f"carddav:{unquote(urlparse(url).path).rstrip('/')}"

    def changes(self, cursor: Cursor | None) -> Iterator[CardBatch]:
        """The changes since ``cursor``. A server may cut its answer short (RFC 6578 §3.6:
        a 507 for the collection itself, and a token for what it did send): the rest is
        asked with that token, and each answer's batches carry their own token, so a pass
        stopped between two answers goes on from the second."""
        token = cursor.value if cursor is not None else None
        hold = cursor or Cursor("")
        for _ in range(MAX_CONTINUATIONS):
            new_token, changed, removed, truncated = self._sync(token)
            after = Cursor(new_token) if new_token else hold
            chunks = list(chunked(changed, self.dav.batch_size)) or [[]]
            for n, hrefs in enumerate(chunks):
                last = n == len(chunks) - 1
                yield CardBatch(
                    tuple(self._cards(hrefs)),
                    after if last else hold,
                    tuple(unquote(h) for h in removed) if last else (),
                )
            if not truncated or not new_token or new_token == token:
                return  # all of it; or no new token to go on from: the next pass will
            token, hold = new_token, after

    def _sync(self, token: str | None) -> tuple[str | None, list[str], list[str], bool]:
        """One sync-collection: the new token, the changed and the removed hrefs, and
        whether the server cut the answer short."""
        response = self.dav.request("REPORT", self.url, _sync_body(token), "1")
        if response.status_code in (403, 409) and b"valid-sync-token" in response.content:
            raise CursorExpired(f"{self.dav.where()}: the address book's sync token expired")
        if response.status_code != 207:
            raise ConnectorError(
                f"{self.dav.where()}: sync-collection answered {response.status_code} "
                f"{response.reason}"
            )
        tree = self.dav.xml(response)
        new_token = tree.findtext("d:sync-token", "", NS).strip() or None
        changed: list[str] = []
        removed: list[str] = []
        truncated = False
        own = urlparse(self.url).path.rstrip("/")
        for r in tree.findall("d:response", NS):
            href = r.findtext("d:href", "", NS).strip()
            status = f" {r.findtext('d:status', '', NS)} "
            if href and urlparse(urljoin(self.url, href)).path.rstrip("/") == own:
                truncated = truncated or " 507 " in status  # the collection: cut short
                continue
            if href:
                (removed if " 404 " in status else changed).append(href)
        return new_token, changed, removed, truncated

    def _cards(self, hrefs: list[str]) -> list[Card]:
        if not hrefs:
            return []
        tree = self.dav.multistatus("REPORT", self.url, _multiget_body(hrefs), "1")
        found: list[Card] = []
        for r in tree.findall("d:response", NS):
            data = r.findtext(".//c:address-data", "", NS)
            href = unquote(r.findtext("d:href", "", NS).strip())
            if data:
                found.extend(cards_from_vcard(data, href))
        return found
